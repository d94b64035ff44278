"""Untrusted model folders: funcnet never runs Python shipped in a model folder (a planted line that
writes a marker file must never run), unless the user passes trust_remote_code."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import funcnet.core  # noqa: F401  (importing funcnet's model layer registers the pruned-model classes)
from conftest import char_tokenizer, tiny_model, tiny_saved
from funcnet.cli import main
from funcnet.core.models import as_loaded, load_model
from funcnet.core.pruned import MODELING_NAME, PRUNED_MODEL_TYPE, load_pruned, save_pruned
from funcnet.errors import FuncnetError
from funcnet.prune import apply_selection, compute_importance, select


def _pruned_folder(tmp_path, family="llama"):
    model = tiny_model(family, n_layers=3, inter=64)
    lm = as_loaded(model, char_tokenizer())
    imp = compute_importance("magnitude", lm)
    apply_selection(lm, select(lm, imp, 0.3, protect=(0, 0)), compensation="none")
    out = tmp_path / f"pruned-{family}"
    save_pruned(lm, lm.tokenizer, out, {"method": "magnitude"})
    return model, out


def _plant(folder, marker):
    """Append a line to every Python file of ``folder`` that writes ``marker`` when the file runs."""
    files = list(folder.glob("*.py"))
    assert files, "the folder has a Python file to plant the line in"
    for f in files:
        f.write_text(f.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pruned_folder_loads_without_running_its_code(tmp_path, monkeypatch, family):
    model, out = _pruned_folder(tmp_path, family)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == PRUNED_MODEL_TYPE and cfg["funcnet_base_model_type"] == model.config.model_type
    marker = tmp_path / "MARKER"
    _plant(out, marker)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hfmod"))
    ids = torch.randint(4, 100, (1, 9))
    with torch.no_grad():
        want = model(ids).logits
        for lm in (load_pruned(out), load_model(str(out))):
            torch.testing.assert_close(lm.model(ids).logits, want, atol=1e-5, rtol=1e-5)
        # plain transformers after `import funcnet`: the registered classes, no remote code
        auto = AutoModelForCausalLM.from_pretrained(str(out))
        torch.testing.assert_close(auto(ids).logits, want, atol=1e-5, rtol=1e-5)
    assert main(["info", "--model", str(out), "--json"]) == 0
    assert not marker.exists(), "code from the model folder ran"
    assert not (tmp_path / "hfmod").exists() or not any((tmp_path / "hfmod").rglob("*.py"))


def test_old_format_pruned_folder_loads_with_funcnet_classes(tmp_path, monkeypatch):
    """funcnet 0.1 wrote the base model_type plus an auto_map to its modeling file."""
    model, out = _pruned_folder(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg["model_type"] = cfg.pop("funcnet_base_model_type")
    (out / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "MARKER"
    _plant(out, marker)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hfmod"))
    ids = torch.randint(4, 100, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(out)).model(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert not marker.exists()


def test_folder_with_custom_code_is_refused_without_trust_remote_code(tmp_path, monkeypatch, capsys):
    d = tiny_saved(tmp_path, "llama")
    (d / "modeling_evil.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    pass\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "MARKER"
    _plant(d, marker)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hfmod"))
    with pytest.raises(FuncnetError, match="trust-remote-code"):
        load_model(str(d))
    capsys.readouterr()
    assert main(["info", "--model", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("funcnet: error:") and "trust-remote-code" in err and "\n" not in err
    assert not marker.exists()
    # the user's explicit choice runs it (the same meaning as transformers' flag)
    lm = load_model(str(d), trust_remote_code=True)
    assert marker.exists() and np.isfinite(lm.model(torch.tensor([[5, 6, 7]])).logits.detach().numpy()).all()


def test_fingerprint_compare_does_not_run_suspect_code(tmp_path, monkeypatch):
    """Examining a model one does not trust is what the fingerprint is for."""
    _, out = _pruned_folder(tmp_path)
    marker = tmp_path / "MARKER"
    _plant(out, marker)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hfmod"))
    r = subprocess.run([sys.executable, "-c", "import funcnet.core.models as m, sys; m.load_model(sys.argv[1])",
                        str(out)], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "hfmod")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists()


# ------------------------------------------------------------------ --overwrite and output folders
def test_save_pruned_never_replaces_what_funcnet_did_not_write(tmp_path, monkeypatch):
    model, out = _pruned_folder(tmp_path)
    # funcnet's own output: replaced
    save_pruned(model, char_tokenizer(), out, {"method": "again"}, overwrite=True)
    assert json.loads((out / "pruning_report.json").read_text())["method"] == "again"
    # a user's file inside it: refused, nothing touched
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FuncnetError, match="did not write.*notes.txt"):
        save_pruned(model, char_tokenizer(), out, {}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    # a folder funcnet never wrote: refused
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_text("x")
    with pytest.raises(FuncnetError, match="funcnet did not write it"):
        save_pruned(model, char_tokenizer(), other, {}, overwrite=True)
    assert (other / "data.bin").exists()
    # the working folder, its parents, home and / are never outputs
    monkeypatch.chdir(other)
    for bad in (".", "..", "/", str(__import__("pathlib").Path.home())):
        with pytest.raises(FuncnetError, match="working folder|parent of the working|home folder|filesystem root"):
            save_pruned(model, char_tokenizer(), bad, {}, overwrite=True)
    assert sorted(p.name for p in other.iterdir()) == ["data.bin"]


def test_record_overwrite_only_replaces_a_store(tmp_path, monkeypatch, char_tok):
    from funcnet.data.record import record

    model = tiny_model("llama")
    texts = ["hello world, this is text. " * 3, "more text here. " * 4]
    out = tmp_path / "store"
    record(model, texts, tokenizer=char_tok, out=out, progress=False)
    with pytest.raises(FuncnetError, match="--resume to continue it or --overwrite"):
        record(model, texts, tokenizer=char_tok, out=out, progress=False)
    record(model, texts, tokenizer=char_tok, out=out, overwrite=True, progress=False)  # its own store: replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FuncnetError, match="notes.txt"):
        record(model, texts, tokenizer=char_tok, out=out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    user = tmp_path / "user"
    user.mkdir()
    (user / "a.txt").write_text("x")
    with pytest.raises(FuncnetError, match="not an activation store funcnet wrote"):
        record(model, texts, tokenizer=char_tok, out=user, overwrite=True, progress=False)
    assert (user / "a.txt").exists()
    monkeypatch.chdir(user)
    with pytest.raises(FuncnetError, match="working folder"):
        record(model, texts, tokenizer=char_tok, out=".", overwrite=True, progress=False)
    assert [p.name for p in user.iterdir()] == ["a.txt"]


@pytest.mark.parametrize("kw, msg", [
    (dict(batch_size=0), "batch_size must be a positive"),
    (dict(max_tokens=0), "max_tokens must be a positive"),
    (dict(max_length=-1), "max_length must be a positive"),
])
def test_record_checks_arguments_before_loading_the_model(tmp_path, kw, msg):
    from funcnet.data.record import record

    # the model spec does not exist: the argument error must come first, before any loading
    with pytest.raises(FuncnetError, match=msg):
        record(str(tmp_path / "no-such-model"), ["text"], out=tmp_path / "s", **kw)
    assert not (tmp_path / "s").exists()


def test_command_line_starts_without_the_heavy_libraries():
    """`funcnet --help` / `--version` / a bad command answer without importing torch or transformers
    (the speed itself is measured in benchmarks/cli_startup.py)."""
    code = ("import sys\nfrom funcnet.cli import main\n"
            "for argv in (['--help'], ['--version'], ['no-such-command']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('heavy' if {'torch', 'transformers'} & set(sys.modules) else 'light')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "light", r.stdout[-500:] + r.stderr[-500:]
    assert "invalid choice" in r.stderr  # the bad command still got a clear message


def test_trust_remote_code_flag_is_on_every_model_command():
    from funcnet.cli import COMMANDS, build_parser

    for name in ("info", "record", "networks", "lesion", "preserve", "amplify", "recurrence", "explore", "eval",
                 "prune", "demo"):
        p = build_parser([name])
        sub = next(a for a in p._actions if a.dest == "command").choices[name]
        opts = {o for a in sub._actions for o in a.option_strings}
        assert {"--model", "--trust-remote-code"} <= opts, name
    assert set(COMMANDS) >= {"info", "record", "prune", "fingerprint", "demo"}
