"""Model loading: local folders, bad input errors, CLI exit codes, GGUF cache atomicity."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import tiny_saved
from funcnet.core import models
from funcnet.cli import main
from funcnet.errors import FuncnetError
from funcnet.core.models import load_model


def test_load_local_folder(tmp_path):
    d = tiny_saved(tmp_path, "qwen3")
    lm = load_model(str(d))
    assert lm.adapter.family == "qwen3" and lm.n_layers == 2
    s = lm.summary()
    assert s["neurons_per_layer"] == [64, 64] and s["n_kv_heads"] == 2 and s["n_parameters"] > 0
    model, tok = lm  # unpacks as (model, tokenizer)
    assert tok.pad_token is not None
    assert load_model(str(d)).identity == lm.identity
    assert load_model(str(tiny_saved(tmp_path, "qwen3", seed=1))).identity != lm.identity


def test_unknown_hub_id_fails_fast_offline(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    t0 = time.time()
    with pytest.raises(FuncnetError, match="unknown model 'nobody/no-such-model'.*not reachable"):
        load_model("nobody/no-such-model")
    assert time.time() - t0 < 5


def test_folder_without_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(FuncnetError, match="holds no model"):
        load_model(str(tmp_path))
    with pytest.raises(FuncnetError, match="not found"):
        load_model(str(tmp_path / "missing"))


def test_not_a_causal_lm(tmp_path):
    from transformers import T5Config

    T5Config(num_layers=1, d_model=16, num_heads=2, d_ff=32).save_pretrained(tmp_path)
    with pytest.raises(FuncnetError, match="not a causal language model"):
        load_model(str(tmp_path))


def test_unsupported_causal_family(tmp_path):
    from transformers import BloomConfig

    BloomConfig(n_layer=1, hidden_size=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(FuncnetError, match="unsupported architecture 'bloom'.*llama"):
        load_model(str(tmp_path))


def test_corrupt_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNCNET_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 100)
    with pytest.raises(FuncnetError, match="cannot read GGUF file"):
        load_model(str(bad))
    # nothing half-written is left in the cache
    assert not any((tmp_path / "cache" / "models").glob("broken*")) if (tmp_path / "cache" / "models").exists() else True


def test_killed_cache_write_leaves_no_cache(tmp_path, monkeypatch):
    from funcnet.core._io import atomic_path

    target = tmp_path / "models" / "m"
    with pytest.raises(RuntimeError):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("killed")
    assert not target.exists() and list((tmp_path / "models").iterdir()) == []


def test_cli_info_and_errors(tmp_path, capsys):
    d = tiny_saved(tmp_path, "gpt2")
    assert main(["info", str(d), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "gpt2" and info["n_layers"] == 2
    assert main(["info", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("funcnet: error:") and "\n" not in err
    # every command names its model with --model; info's positional form is kept and must agree
    assert main(["info", "--model", str(d), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "gpt2"
    assert main(["info", str(d), "--model", str(tmp_path / "other")]) == 2
    assert "two models named" in capsys.readouterr().err


def test_cli_subprocess_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "funcnet", "info", str(tmp_path / "missing")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not found" in r.stderr


@pytest.mark.integration
def test_smollm2_alias_loads_from_cache():
    t0 = time.time()
    lm = load_model("smollm2-135m")
    s = lm.summary()
    assert s["family"] == "llama" and s["n_layers"] == 30 and s["neurons_per_layer"][0] == 1536
    assert (s["n_heads"], s["n_kv_heads"]) == (9, 3)
    assert (models.cache_dir() / "models").exists()
    assert time.time() - t0 < 120
