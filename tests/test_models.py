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


# ----------------------------------------------------------------------------- dtype, placement, identity
def _dtype(lm):
    return next(lm.model.parameters()).dtype


def _saved_in(tmp_path, dtype, family="llama", name=None, **kw):
    """A tiny model saved in ``dtype`` (its config names that dtype) with the char tokenizer."""
    import torch

    from conftest import char_tokenizer, tiny_model

    d = tmp_path / (name or f"tiny-{family}-{str(dtype).split('.')[-1]}")
    tiny_model(family, **kw).to(dtype).save_pretrained(d)
    char_tokenizer().save_pretrained(d)
    return d


def test_default_dtype_is_the_checkpoints_own(tmp_path):
    """dtype=None loads what the checkpoint holds (transformers' "auto"), not always float32."""
    import torch

    bf = _saved_in(tmp_path, torch.bfloat16)
    assert _dtype(load_model(str(bf))) == torch.bfloat16
    assert _dtype(load_model(str(bf), dtype="auto")) == torch.bfloat16
    assert _dtype(load_model(str(bf), dtype="float32")) == torch.float32
    assert _dtype(load_model(str(tiny_saved(tmp_path, "llama")))) == torch.float32  # random-init tests: float32


def test_gguf_cache_folders_stay_float32(tmp_path):
    """The bundled aliases and .gguf files are dequantized once into a float32 cache folder (marked by
    funcnet_cache.json): they load as float32 whatever their config says, so published figures hold."""
    import torch

    d = _saved_in(tmp_path, torch.bfloat16, name="cache")
    (d / "funcnet_cache.json").write_text("{}")
    lm = load_model(str(d))
    assert _dtype(lm) == torch.float32
    assert models.model_outline(str(d)).dtype == torch.float32
    assert _dtype(load_model(str(d), dtype="bfloat16")) == torch.bfloat16


@pytest.mark.parametrize("fam", ["llama", "gpt_neox", "gpt2", "gemma3"])
def test_config_identity_equals_the_loaded_models(tmp_path, fam, monkeypatch):
    """config_identity / model_outline give a model's identity and summary from its config and the
    headers of its weight files; the weights are never loaded (from_pretrained fails the test)."""
    import torch
    import transformers

    d = tiny_saved(tmp_path, fam)
    want = {dt: load_model(str(d), dtype=dt) for dt in (None, "bfloat16", "float16")}
    other = load_model(str(tiny_saved(tmp_path, fam, seed=1))).identity

    def boom(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    monkeypatch.setattr(models, "load_model", boom)
    for dt, lm in want.items():
        assert models.config_identity(str(d), dtype=dt) == lm.identity
    o = models.model_outline(str(d))
    assert o.summary() == want[None].summary() and o.identity != other
    assert o.dtype == torch.float32 and o.n_layers == 2


def test_config_identity_of_sharded_bf16_and_pruned_folders(tmp_path):
    import torch

    from conftest import char_tokenizer, tiny_model
    from funcnet.core.pruned import load_pruned, save_pruned
    from funcnet.prune import prune

    d = tmp_path / "sharded"
    tiny_model("llama").to(torch.bfloat16).save_pretrained(d, max_shard_size="20KB")
    char_tokenizer().save_pretrained(d)
    assert (d / "model.safetensors.index.json").exists()
    assert models.config_identity(str(d)) == load_model(str(d)).identity
    base = load_model(str(tiny_saved(tmp_path, "llama", n_layers=4)))
    res = prune(base, 0.3, method="magnitude", calib=None, protect="0,0", compensation="none",
                bias_compensation=False)
    save_pruned(res.lm, base.tokenizer, tmp_path / "pruned", res.report)
    lp = load_pruned(tmp_path / "pruned")
    o = models.model_outline(str(tmp_path / "pruned"))
    assert o.identity == lp.identity and o.neurons_per_layer() == lp.adapter.neurons_per_layer(lp.model)
    assert len(set(o.neurons_per_layer())) > 1  # per-layer widths read from the pruned config


def test_load_pruned_dtype_and_device_map(tmp_path, monkeypatch):
    """load_pruned: dtype None = the saved dtype; device_map ("cpu", a dict), offload_folder and
    max_memory reach from_pretrained."""
    import torch
    import transformers

    from funcnet.core.pruned import load_pruned, save_pruned
    from funcnet.prune import prune

    base = load_model(str(tiny_saved(tmp_path, "llama", n_layers=4)))
    res = prune(base, 0.3, method="magnitude", calib=None, protect="0,0", compensation="none",
                bias_compensation=False)
    res.lm.model.to(torch.bfloat16)
    save_pruned(res.lm, base.tokenizer, tmp_path / "p", res.report)
    ref = load_pruned(tmp_path / "p")
    assert _dtype(ref) == torch.bfloat16
    assert _dtype(load_pruned(tmp_path / "p", dtype="float32")) == torch.float32
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    want = ref.model(ids).logits
    for dm in ("cpu", {"": "cpu"}):
        lm = load_pruned(tmp_path / "p", device_map=dm)
        assert lm.identity == ref.identity
        torch.testing.assert_close(lm.model(ids).logits, want)
    # a dict that offloads layers to disk: device_map and offload_folder both reach from_pretrained
    dm = {"model.embed_tokens": "cpu", "model.layers": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
          "lm_head": "cpu"}
    seen: dict = {}
    orig = transformers.PreTrainedModel.from_pretrained.__func__

    def spy(cls, *a, **k):
        seen.update(k)
        return orig(cls, *a, **k)

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(spy))
    lm = load_model(str(tmp_path / "p"), device_map=dm, offload_folder=str(tmp_path / "off"))
    assert seen["offload_folder"] == str(tmp_path / "off") and seen["device_map"] == dm
    assert lm.model.hf_device_map["model.layers"] == "disk" and any(p.device.type == "meta" for p in lm.model.parameters())
    assert lm.identity == ref.identity
    torch.testing.assert_close(lm.model(ids).logits, want)
    lm = load_model(str(tmp_path / "p"), device_map="auto", max_memory={"cpu": "1GiB"})
    assert seen["max_memory"]["cpu"] in ("1GiB", 2**30) and lm.identity == ref.identity
    with pytest.raises(FuncnetError, match="not both"):
        load_pruned(tmp_path / "p", device="cpu", device_map="cpu")


def test_model_spec_carries_loading_options(tmp_path):
    """A ModelSpec is a str that carries load_model options through any function that takes a spec."""
    import pickle

    import torch

    d = tiny_saved(tmp_path, "llama")
    spec = models.ModelSpec(d, dtype="bfloat16", device=None)
    assert spec == str(d) and spec.load_kwargs == {"dtype": "bfloat16"}
    assert _dtype(models.as_loaded(spec)) == torch.bfloat16
    assert _dtype(load_model(spec, dtype="float16")) == torch.float16  # explicit options win
    back = pickle.loads(pickle.dumps(spec))
    assert isinstance(back, models.ModelSpec) and back.load_kwargs == spec.load_kwargs


def test_offloaded_weights_keep_their_identity(tmp_path):
    """Weights offloaded by accelerate (on 'meta', held by hooks, on the CPU or on disk) keep the
    model's identity: it reads them from the offload hooks' weights map."""
    import copy

    from accelerate import cpu_offload

    d = tiny_saved(tmp_path, "llama", n_layers=4)
    ref = load_model(str(d))
    off = copy.deepcopy(ref.model)
    cpu_offload(off, execution_device="cpu")
    assert next(off.parameters()).device.type == "meta"
    assert models.model_identity(off) == ref.identity
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
          "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    lm = load_model(str(d), device_map=dm, offload_folder=str(tmp_path / "offload"))
    assert any(p.device.type == "meta" for p in lm.model.parameters())
    assert lm.identity == ref.identity == models.config_identity(str(d))


def test_placement_checks_before_loading(tmp_path, monkeypatch):
    import torch
    import transformers

    d = tiny_saved(tmp_path, "llama")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    for kw, msg in [(dict(device="cpu", device_map="auto"), "not both"),
                    (dict(max_memory={"cpu": "1GiB"}), "max_memory applies only with a device_map"),
                    (dict(offload_folder=str(tmp_path)), "offload_folder applies only with a device_map"),
                    (dict(device="gpu"), "'gpu' is not a device"),
                    (dict(device_map={"model": "gpu0"}), "entry 'model'"),
                    (dict(dtype="float8"), "unknown dtype 'float8'")]:
        with pytest.raises(FuncnetError, match=msg):
            load_model(str(d), **kw)
    if not torch.cuda.is_available():
        with pytest.raises(FuncnetError, match="no CUDA device"):
            load_model(str(d), device="cuda")
