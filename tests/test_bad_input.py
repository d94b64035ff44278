"""Bad input, one table: every case a user can cause ends in ONE line ``funcnet: error: ...`` and exit 2
(the Python API raises FuncnetError), with no traceback, nothing written or overwritten, and, for the
argument checks, before the model loads (the model loader is replaced by one that fails the test).

Each CLI case runs in-process in a fresh working folder; the shared fixtures (a tiny saved model, a
store recorded on it with ``funcnet record``, a networks file, damaged copies of each) are built once.
Issue 13 lists the cases; the numbers (n) below are its failures that had to be fixed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from conftest import tiny_saved
from funcnet.cli import main
from funcnet.errors import FuncnetError

ERR = "funcnet: error:"


# ----------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="module")
def W(tmp_path_factory):
    """Build every input once: paths by name (model, other, store, nets, damaged copies, texts)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    w = tmp_path_factory.mktemp("bad-input")
    p: dict[str, Path] = {"root": w}
    p["model"] = tiny_saved(w, "llama", n_layers=4)
    p["other"] = tiny_saved(w, "llama", seed=1, n_layers=4)  # same shape, another model
    p["store"] = w / "store"
    assert main(["record", "--model", str(p["model"]), "--out", str(p["store"]), "--max-tokens", "600",
                 "--max-length", "32"]) == 0
    p["store01"] = w / "store01"  # layers 0-1 only
    assert main(["record", "--model", str(p["model"]), "--out", str(p["store01"]), "--max-tokens", "300",
                 "--max-length", "32", "--layers", "0-1"]) == 0
    p["nets"] = w / "nets.safetensors"
    assert main(["networks", "--model", str(p["model"]), "--store", str(p["store"]), "--out", str(p["nets"]),
                 "-k", "2", "--n-init", "1"]) == 0
    p["pruned"] = w / "pruned"
    assert main(["prune", "--model", str(p["model"]), "--method", "magnitude", "--protect", "0,0", "--ratio", "0.3",
                 "--out", str(p["pruned"])]) == 0
    p["fnf"] = w / "victim.fnf"
    assert main(["fingerprint", "profile", "--model", str(p["model"]), "--out", str(p["fnf"]), "--n-seeds", "1",
                 "--n-components", "2", "--max-length", "32"]) == 0

    # damaged and foreign inputs
    p["trunc"] = _copy(p["model"], w / "trunc")
    f = p["trunc"] / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)
    p["pruned_bad"] = _copy(p["pruned"], w / "pruned_bad")  # config widths that do not match the weights
    cfg = json.loads((p["pruned_bad"] / "config.json").read_text())
    mods = cfg["funcnet_pruned"]["layers"][0]["modules"]
    mods["mlp.down_proj"][1] = mods["mlp.gate_proj"][0] = mods["mlp.up_proj"][0] = 50
    cfg["intermediate_sizes"][0] = 50
    (p["pruned_bad"] / "config.json").write_text(json.dumps(cfg))
    p["store_badhdr"] = _copy(p["store"], w / "store_badhdr")
    npy = sorted((p["store_badhdr"] / "acts").glob("*.npy"))[0]
    b = bytearray(npy.read_bytes())
    b[10:40] = b"garbage!!" * 3 + b"xxx"
    npy.write_bytes(bytes(b))
    p["store_nomani"] = _copy(p["store"], w / "store_nomani")
    (p["store_nomani"] / "manifest.json").unlink()
    p["store_nan"] = _copy(p["store"], w / "store_nan")
    a = np.load(sorted((p["store_nan"] / "acts").glob("*.npy"))[0], mmap_mode="r+")
    a[5, 3] = 0x7FC0 if a.dtype == np.uint16 else np.nan  # bfloat16 (the CLI's store dtype) is kept as raw bits
    a.flush()
    del a
    p["nets_corrupt"] = w / "nets_corrupt.safetensors"
    p["nets_corrupt"].write_bytes(p["nets"].read_bytes()[:1000])
    p["fnf_trunc"] = w / "trunc.fnf"
    p["fnf_trunc"].write_bytes(p["fnf"].read_bytes()[: p["fnf"].stat().st_size // 2])
    p["fnf_garbage"] = w / "garbage.fnf"
    p["fnf_garbage"].write_text("not a profile\n")
    p["notmodel"] = w / "notmodel"
    p["notmodel"].mkdir()
    (p["notmodel"] / "readme.txt").write_text("hi")
    import transformers as t

    p["t5"] = w / "t5"
    t.T5Config(num_layers=1, d_model=32, num_heads=4, d_ff=64, vocab_size=128).save_pretrained(p["t5"])
    p["gptj"] = w / "gptj"
    t.GPTJConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=128, rotary_dim=4, bos_token_id=1,
                 eos_token_id=2).save_pretrained(p["gptj"])
    p["empty_txt"] = w / "empty.txt"
    p["empty_txt"].write_text("")
    p["blank_txt"] = w / "blank.txt"
    p["blank_txt"].write_text("\n\n   \n\t\n")
    p["long_txt"] = w / "long.txt"
    p["long_txt"].write_text(("functional networks " * 10_000)[:200_000] + "\n")
    yield p
    transformers.utils.logging.enable_progress_bar()


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots``: (size, mtime) of files, None for folders."""
    snap = {}
    for r in roots:
        for q in [r, *r.rglob("*")]:
            st = q.lstat()
            snap[str(q)] = (st.st_size, st.st_mtime_ns) if q.is_file() else None
    return snap


def _no_model_load(monkeypatch):
    """The model loader fails the test: an argument error must come before any loading."""
    import funcnet.cli._common as common
    import funcnet.core.models as models

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the argument check")

    monkeypatch.setattr(models, "load_model", boom)
    monkeypatch.setattr(common, "load_model", boom)


def _user_out(T: Path, W) -> None:
    """A folder funcnet wrote (a copy of the store) with a user's notes.txt in it."""
    _copy(W["store"], T / "out")
    (T / "out" / "notes.txt").write_text("mine")


def _user_pruned(T: Path, W) -> None:
    _copy(W["pruned"], T / "out")
    (T / "out" / "notes.txt").write_text("mine")


def _readonly_parent(T: Path, W, monkeypatch) -> None:
    """--out inside a folder that cannot be written (as root, chmod is not enough: os.access says no)."""
    ro = T / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if Path(path) == ro else real(path, mode, *a, **k))


@dataclass
class Case:
    id: str
    argv: list[str]            # {name} = a shared input of W; {T} = this case's working folder
    msg: str                   # a fragment (regex) of the one error line
    before_load: bool = False  # the model must never load (the loader fails the test)
    setup: Callable | None = None
    fix: list[str] | None = None  # the corrected command: must now succeed (nothing left blocks it)
    marks: tuple = field(default_factory=tuple)


M = ["--model", "{model}"]
CASES = [
    # ---- models
    Case("unknown-model-path", ["info", "--model", "{T}/no-such-model"], "model path not found"),
    Case("unknown-model-id", ["info", "--model", "no-such-org/no-such-model-xyz"], "unknown model|not reachable|cannot"),
    Case("not-a-model-folder", ["info", "--model", "{notmodel}"], "holds no model"),
    Case("model-is-a-file", ["info", "--model", "{empty_txt}"], "is a file, not a model folder"),
    Case("non-causal-model", ["info", "--model", "{t5}"], "not a causal language model|unsupported architecture"),
    Case("unsupported-architecture", ["info", "--model", "{gptj}"], "unsupported architecture 'gptj'"),
    Case("missing-gguf", ["info", "--model", "{T}/x.gguf"], "GGUF file not found"),
    Case("truncated-safetensors (3)", ["info", "--model", "{trunc}"], r"cannot load model .*deserializing header"),
    Case("pruned-config-width-mismatch (3)", ["eval", "--model", "{pruned_bad}", "--max-windows", "1"],
         r"cannot load pruned model .*config.json gives .* the shape \[.*\] but model.safetensors holds"),
    Case("two-models-named", ["info", "{model}", "--model", "{other}"], "two models named"),
    # ---- corpora
    Case("empty-corpus-file", ["record", *M, "--corpus", "{empty_txt}", "--out", "{T}/s"], "is empty"),
    Case("blank-corpus-file", ["record", *M, "--corpus", "{blank_txt}", "--out", "{T}/s"], "is empty"),
    Case("missing-corpus-file", ["record", *M, "--corpus", "{T}/missing.txt", "--out", "{T}/s"], "not found"),
    Case("unknown-builtin-domain", ["record", *M, "--corpus", "builtin:no-such-domain", "--out", "{T}/s"],
         "no-such-domain"),
    # ---- record arguments (4): before the model loads, no store left behind
    Case("record-batch-size-0 (3,4)", ["record", *M, "--batch-size", "0", "--out", "{T}/s"], "batch_size must be a positive",
         before_load=True, fix=["record", *M, "--max-tokens", "64", "--max-length", "32", "--out", "{T}/s"]),
    Case("record-max-tokens-0 (4)", ["record", *M, "--max-tokens", "0", "--out", "{T}/s"], "max_tokens must be a positive",
         before_load=True),
    Case("record-max-length-0", ["record", *M, "--max-length", "0", "--out", "{T}/s"], "max_length must be a positive",
         before_load=True),
    Case("record-unknown-signal", ["record", *M, "--signals", "neuronz", "--out", "{T}/s"], "unknown signal",
         before_load=True),
    Case("record-bad-split", ["record", *M, "--split", "train", "--out", "{T}/s"], "argument --split: invalid choice",
         before_load=True),
    Case("record-bad-layers", ["record", *M, "--layers", "a-b", "--out", "{T}/s"], "cannot read layers"),
    Case("record-layer-out-of-range", ["record", *M, "--layers", "7", "--out", "{T}/s"], "layer 7 is out of range"),
    Case("record-existing-store", ["record", *M, "--out", "{store}"], "already exists; pass --resume", before_load=True),
    Case("record-resume-other-model", ["record", "--model", "{other}", "--out", "{store}", "--resume",
                                       "--max-tokens", "600", "--max-length", "32"], "cannot resume .*different model"),
    # ---- --overwrite and output folders (2): refused, the user's files intact
    Case("record-overwrite-cwd (2)", ["record", *M, "--out", ".", "--overwrite"], "working folder", before_load=True,
         setup=lambda T, W, mp: (T / "notes.txt").write_text("mine")),
    Case("prune-overwrite-cwd (2)", ["prune", *M, "--out", ".", "--overwrite"], "working folder", before_load=True,
         setup=lambda T, W, mp: (T / "notes.txt").write_text("mine")),
    Case("record-overwrite-parent (2)", ["record", *M, "--out", "..", "--overwrite"], "parent of the working folder",
         before_load=True),
    Case("prune-overwrite-root (2)", ["prune", *M, "--out", "/", "--overwrite"], "filesystem root", before_load=True),
    Case("record-overwrite-user-notes (2)", ["record", *M, "--out", "{T}/out", "--overwrite"], "notes.txt",
         before_load=True, setup=lambda T, W, mp: _user_out(T, W)),
    Case("prune-overwrite-user-notes (2)", ["prune", *M, "--out", "{T}/out", "--overwrite"], "notes.txt",
         before_load=True, setup=lambda T, W, mp: _user_pruned(T, W)),
    Case("prune-overwrite-foreign-folder (2)", ["prune", *M, "--out", "{notmodel}", "--overwrite"],
         "funcnet did not write it", before_load=True),
    Case("prune-existing-out", ["prune", *M, "--out", "{pruned}"], "exists; pass --overwrite", before_load=True),
    Case("prune-readonly-out (3,4)", ["prune", *M, "--out", "{T}/ro/pruned"], "cannot write output folder",
         before_load=True, setup=lambda T, W, mp: _readonly_parent(T, W, mp)),
    Case("record-readonly-out", ["record", *M, "--out", "{T}/ro/s"], "cannot write store folder", before_load=True,
         setup=lambda T, W, mp: _readonly_parent(T, W, mp)),
    Case("networks-existing-out", ["networks", *M, "--out", "{nets}"], "exists; pass --overwrite", before_load=True),
    Case("networks-out-is-a-folder", ["networks", *M, "--out", "{notmodel}", "--overwrite"], "is a folder",
         before_load=True),
    # ---- prune arguments: before the model loads
    Case("prune-ratio-0", ["prune", *M, "--ratio", "0", "--out", "{T}/p"], r"--ratio must be in \(0, 1\)", before_load=True),
    Case("prune-ratio-1", ["prune", *M, "--ratio", "1", "--out", "{T}/p"], r"--ratio must be in \(0, 1\)", before_load=True),
    Case("prune-ratio-negative", ["prune", *M, "--ratio=-0.1", "--out", "{T}/p"], r"--ratio must be in \(0, 1\)",
         before_load=True),
    Case("prune-ratio-nan", ["prune", *M, "--ratio", "nan", "--out", "{T}/p"], r"--ratio must be in \(0, 1\)",
         before_load=True),
    Case("prune-ratio-abc", ["prune", *M, "--ratio", "abc", "--out", "{T}/p"], "argument --ratio: invalid float value",
         before_load=True),
    Case("prune-unknown-method", ["prune", *M, "--method", "nope", "--out", "{T}/p"], "argument --method: invalid choice",
         before_load=True),
    Case("prune-unknown-compensation", ["prune", *M, "--compensation", "nope", "--out", "{T}/p"],
         "argument --compensation: invalid choice", before_load=True),
    Case("prune-batch-size-0 (4)", ["prune", *M, "--batch-size", "0", "--out", "{T}/p"], "--batch-size must be a positive",
         before_load=True),
    Case("prune-calib-tokens-0", ["prune", *M, "--calib-tokens", "0", "--out", "{T}/p"], "--calib-tokens must be",
         before_load=True),
    Case("prune-missing-networks-file", ["prune", *M, "--method", "fn", "--networks", "{T}/none.safetensors",
                                         "--out", "{T}/p"], "networks file not found", before_load=True),
    Case("prune-networks-from-other-model", ["prune", "--model", "{other}", "--method", "fn", "--networks", "{nets}",
                                             "--protect", "0,0", "--out", "{T}/p"], "computed on another model"),
    Case("prune-corrupt-networks-file", ["prune", *M, "--method", "fn", "--networks", "{nets_corrupt}",
                                         "--protect", "0,0", "--out", "{T}/p"], "cannot read networks file"),
    Case("prune-missing-calib-file", ["prune", *M, "--calib", "{T}/missing.txt", "--out", "{T}/p"], "not found"),
    # ---- networks and stores
    Case("networks-store-from-other-model", ["networks", "--model", "{other}", "--store", "{store}", "--out", "{T}/n.st"],
         "recorded from another model"),
    Case("networks-memory-budget-0", ["networks", *M, "--memory-budget-gb", "0", "--out", "{T}/n.st"],
         "--memory-budget-gb must be positive", before_load=True),
    Case("networks-missing-workdir", ["networks", *M, "--workdir", "{T}/nowhere", "--out", "{T}/n.st"],
         "--workdir .* is not a folder", before_load=True),
    Case("networks-store-with-nan", ["networks", *M, "--store", "{store_nan}", "--out", "{T}/n.st", "-k", "2",
                                     "--n-init", "1"], "NaN"),
    Case("networks-damaged-chunk-header (3)", ["networks", *M, "--store", "{store_badhdr}", "--out", "{T}/n.st"],
         r"store .* is damaged: cannot read acts/L000.neurons.npy"),
    Case("networks-store-without-manifest (6)", ["networks", *M, "--store", "{store_nomani}", "--out", "{T}/n.st"],
         "incomplete or damaged"),
    Case("record-into-store-without-manifest (6)", ["record", *M, "--out", "{store_nomani}"], "incomplete or damaged",
         before_load=True),
    Case("info-store-without-manifest (6)", ["info", "--model", "{store_nomani}"], "activation store .* incomplete or damaged"),
    Case("networks-layers-beyond-model (5)", ["networks", *M, "--store", "{store}", "--layers", "7", "--out", "{T}/n.st"],
         "layer 7 is out of range: the model has 4 layers"),
    Case("networks-layers-not-in-store (5)", ["networks", *M, "--store", "{store01}", "--layers", "3", "--out",
                                              "{T}/n.st"], "store .* holds layers 0, 1, not 3"),
    Case("networks-max-tokens-0 (4)", ["networks", *M, "--max-tokens", "0", "--out", "{T}/n.st"], "--max-tokens must be",
         before_load=True),
    Case("networks-components-0", ["networks", *M, "-k", "0", "--out", "{T}/n.st"], "--n-components must be",
         before_load=True),
    Case("networks-unknown-signal", ["networks", *M, "--signals", "x", "--out", "{T}/n.st"], "unknown signal",
         before_load=True),
    # ---- eval
    Case("eval-batch-size-0", ["eval", *M, "--batch-size", "0"], "--batch-size must be a positive", before_load=True),
    Case("eval-max-windows-0", ["eval", *M, "--max-windows", "0"], "--max-windows must be", before_load=True),
    Case("eval-window-abc", ["eval", *M, "--window", "abc"], "--window must be an integer", before_load=True),
    Case("eval-window-1", ["eval", *M, "--window", "1"], "--window must be at least 2", before_load=True),
    # ---- fingerprints
    Case("fingerprint-missing-profile", ["fingerprint", "compare", "{T}/none.fnf", *M], "does not exist",
         before_load=True),
    Case("fingerprint-garbage-profile", ["fingerprint", "compare", "{fnf_garbage}", *M], "corrupted or not a fingerprint",
         before_load=True),
    Case("fingerprint-truncated-profile", ["fingerprint", "compare", "{fnf_trunc}", *M], "corrupted or not a fingerprint",
         before_load=True),
    Case("fingerprint-n-seeds-0", ["fingerprint", "profile", *M, "--out", "{T}/v.fnf", "--n-seeds", "0"],
         "n_seeds must be at least 1", before_load=True),
    # ---- model-loading options (every command that loads a model): one line, before the model loads
    Case("load-bad-dtype", ["record", *M, "--dtype", "float8", "--out", "{T}/s"],
         "--dtype 'float8' is not a dtype funcnet loads; choose from float32, float16, bfloat16, auto",
         before_load=True),
    Case("load-bad-dtype-prune", ["prune", *M, "--dtype", "int8", "--out", "{T}/p"], "--dtype 'int8' is not a dtype",
         before_load=True),
    Case("load-device-and-device-map", ["prune", *M, "--device", "cpu", "--device-map", "auto", "--out", "{T}/p"],
         "--device and --device-map exclude each other", before_load=True),
    Case("load-max-memory-malformed", ["eval", *M, "--device-map", "auto", "--max-memory", "0=lots,cpu=1GiB"],
         "--max-memory '0=lots,cpu=1GiB': cannot read '0=lots'", before_load=True),
    Case("load-max-memory-no-pairs", ["networks", *M, "--device-map", "auto", "--max-memory", "70GiB",
                                      "--out", "{T}/n.st"], "--max-memory '70GiB': cannot read", before_load=True),
    Case("load-max-memory-without-device-map", ["record", *M, "--max-memory", "cpu=1GiB", "--out", "{T}/s"],
         "--max-memory applies only with --device-map", before_load=True),
    Case("load-offload-folder-without-device-map", ["eval", *M, "--offload-folder", "{T}/off"],
         "--offload-folder applies only with --device-map", before_load=True),
    Case("load-device-map-bad-json", ["fingerprint", "profile", *M, "--device-map", '{{"model": 0', "--out",
                                      "{T}/v.fnf"], "--device-map: JSON is not valid JSON", before_load=True),
    Case("load-device-map-bad-device", ["explore", *M, "--device-map", '{{"model": "gpu7"}}', "--out", "{T}/r"],
         "device_map entry 'model': 'gpu7' is not a device", before_load=True),
    Case("load-unknown-device", ["fingerprint", "compare", "{fnf}", *M, "--device", "gpu"], "'gpu' is not a device",
         before_load=True),
    Case("load-cuda-missing", ["eval", *M, "--device", "cuda"], "no CUDA device is available", before_load=True,
         marks=(pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="a CUDA device is here"),)),
    Case("record-bad-store-dtype", ["record", *M, "--store-dtype", "int8", "--out", "{T}/s"],
         "argument --store-dtype: invalid choice", before_load=True),
    # ---- command line
    Case("unknown-command", ["no-such-command"], "invalid choice", before_load=True),
    Case("missing-required-out", ["record", *M], "the following arguments are required: --out", before_load=True),
]


def _fill(argv, W, T):
    return [a.format(T=T, **{k: str(v) for k, v in W.items()}) for a in argv]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_cli(case: Case, W, tmp_path, monkeypatch, capsys):
    T = tmp_path / "work"
    T.mkdir()
    monkeypatch.chdir(T)
    if case.setup is not None:
        case.setup(T, W, monkeypatch)
    if case.before_load:
        _no_model_load(monkeypatch)
    before = _snapshot(T, W["root"])
    capsys.readouterr()
    try:
        rc = main(_fill(case.argv, W, T))
    except SystemExit as e:  # argparse's errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERR), err
    assert "Traceback" not in err
    import re

    assert re.search(case.msg, lines[0]), lines[0]
    # nothing written, deleted or overwritten: no partial output left to block the corrected command
    assert _snapshot(T, W["root"]) == before
    if case.fix is not None:
        monkeypatch.undo()
        monkeypatch.chdir(T)
        assert main(_fill(case.fix, W, T)) == 0


# ------------------------------------------------------------------------ options that did nothing
def test_networks_layers_with_a_store_are_used_not_ignored(W, tmp_path, capsys):
    """(5) --layers with --store decomposes those layers only (it was ignored: all store layers)."""
    from funcnet.networks import FunctionalNetworks

    out = tmp_path / "n1.safetensors"
    assert main(["networks", "--model", str(W["model"]), "--store", str(W["store"]), "--layers", "1", "--out",
                 str(out), "-k", "2", "--n-init", "1"]) == 0
    assert {d.unit for d in FunctionalNetworks.load(out).decompositions} == {"L01"}


def test_networks_with_a_finished_store_loads_no_weights(W, tmp_path, monkeypatch):
    """`networks --store S` reads the model's identity and widths from its config and weight-file
    headers (the loader fails the test) and checks them against the store; the networks file carries
    the identity of the loaded model."""
    from funcnet.core.models import load_model
    from funcnet.networks import FunctionalNetworks

    ident = load_model(str(W["model"])).identity
    _no_model_load(monkeypatch)
    out = tmp_path / "n.safetensors"
    assert main(["networks", "--model", str(W["model"]), "--store", str(W["store"]), "--out", str(out), "-k", "2",
                 "--n-init", "1"]) == 0
    nets = FunctionalNetworks.load(out)
    assert nets.model_identity == ident and list(nets.neurons_per_layer) == [64] * 4


def test_model_loading_options_on_every_model_command():
    from funcnet.cli import build_parser

    for name in ("info", "record", "networks", "lesion", "preserve", "amplify", "recurrence", "explore", "eval",
                 "prune", "export", "browse", "demo"):
        p = build_parser([name])
        sub = next(a for a in p._actions if a.dest == "command").choices[name]
        opts = {o for a in sub._actions for o in a.option_strings}
        assert {"--dtype", "--device", "--device-map", "--max-memory", "--offload-folder"} <= opts, name
    p = build_parser(["fingerprint"])
    fp = next(a for a in p._actions if a.dest == "command").choices["fingerprint"]
    for name, sp in next(a for a in fp._actions if a.dest == "fingerprint_command").choices.items():
        assert {"--dtype", "--device-map"} <= {o for a in sp._actions for o in a.option_strings}, name


def test_max_memory_and_device_map_parsing(tmp_path):
    from funcnet.cli._common import parse_device_map, parse_max_memory

    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=100GiB") == {0: "70GiB", 1: "70GiB", "cpu": "100GiB"}
    assert parse_max_memory("cpu=1000000,disk=2 TB") == {"cpu": 1000000, "disk": "2TB"}
    with pytest.raises(FuncnetError, match="named twice"):
        parse_max_memory("0=1GiB,0=2GiB")
    assert parse_device_map("auto") == "auto" and parse_device_map("cpu") == "cpu"
    f = tmp_path / "map.json"
    f.write_text('{"model.embed_tokens": 0, "lm_head": "cpu"}')
    assert parse_device_map(str(f)) == {"model.embed_tokens": 0, "lm_head": "cpu"}
    assert parse_device_map('{"": "cpu"}') == {"": "cpu"}
    with pytest.raises(FuncnetError, match="JSON object"):
        parse_device_map("{}")


def test_a_cut_document_is_reported_once(W, tmp_path, caplog):
    """(5) a single 200k-character line cut to max_length tokens: one warning, not silence."""
    import logging

    caplog.set_level(logging.WARNING)
    assert main(["record", "--model", str(W["model"]), "--corpus", str(W["long_txt"]), "--max-length", "32",
                 "--out", str(tmp_path / "s")]) == 0
    cut = [r for r in caplog.records if "were cut" in r.getMessage()]
    assert len(cut) == 1, [r.getMessage() for r in caplog.records]
    assert "1 of 1 documents" in cut[0].getMessage() and "max_length=32" in cut[0].getMessage()


# ------------------------------------------------------------------------ the Python API
PY_CASES = [
    ("record-batch-size-0 (3)", lambda W, T: _record(W, T, batch_size=0), "batch_size must be a positive"),
    ("record-max-tokens-0", lambda W, T: _record(W, T, max_tokens=0), "max_tokens must be a positive"),
    ("record-chunk-tokens-0", lambda W, T: _record(W, T, chunk_tokens=0), "chunk_tokens must be a positive"),
    ("record-bad-signal", lambda W, T: _record(W, T, signals="x"), "unknown signal"),
    ("store-open-without-manifest (6)", lambda W, T: _store_open(W["store_nomani"]), "incomplete or damaged"),
    ("store-damaged-header (3)", lambda W, T: _store_open(W["store_badhdr"]).layer(0), "is damaged"),
    ("networks-load-other-model", lambda W, T: _nets_load(W["nets"], W["other"]), "another model"),
    ("networks-load-corrupt", lambda W, T: _nets_load(W["nets_corrupt"]), "cannot read networks file"),
    ("load-truncated-safetensors (3)", lambda W, T: _load(W["trunc"]), "cannot load model"),
    ("load-pruned-width-mismatch (3)", lambda W, T: _load(W["pruned_bad"]), "cannot load pruned model"),
    ("prune-ratio-0", lambda W, T: _prune(W, 0), r"ratio must be in \(0, 1\)"),
    ("prune-ratio-1", lambda W, T: _prune(W, 1), r"ratio must be in \(0, 1\)"),
    ("prune-ratio-negative", lambda W, T: _prune(W, -0.1), r"ratio must be in \(0, 1\)"),
    ("prune-ratio-abc (3)", lambda W, T: _prune(W, "abc"), "ratio must be a number"),
    ("prune-unknown-method", lambda W, T: _prune(W, 0.2, method="nope"), "unknown pruning method"),
    ("prune-unknown-compensation", lambda W, T: _prune(W, 0.2, compensation="nope"), "unknown compensation"),
    ("record-unknown-store-dtype", lambda W, T: _record(W, T, store_dtype="int8"), "unknown store dtype 'int8'"),
    ("record-store-dtype-disagrees", lambda W, T: _record(W, T, store_dtype="float16", dtype="bfloat16"),
     "store_dtype='float16' and dtype='bfloat16' disagree"),
    ("load-device-and-device-map", lambda W, T: _load(W["model"], device="cpu", device_map="auto"), "not both"),
    ("load-max-memory-without-device-map", lambda W, T: _load(W["model"], max_memory={"cpu": "1GiB"}),
     "max_memory applies only with a device_map"),
]


def _record(W, T, **kw):
    from funcnet.data.record import record

    # the model spec does not exist: only an argument error can be the answer
    return record(str(T / "no-such-model"), ["some text"], out=T / "s", **kw)


def _store_open(path):
    from funcnet.data.store import ActivationStore

    return ActivationStore.open(path)


def _nets_load(path, model=None):
    from funcnet.core.models import load_model
    from funcnet.networks import FunctionalNetworks

    return FunctionalNetworks.load(path, model=None if model is None else load_model(str(model)))


def _load(path, **kw):
    from funcnet.core.models import load_model

    return load_model(str(path), **kw)


def _prune(W, ratio, **kw):
    from funcnet.core.models import load_model
    from funcnet.prune import prune

    return prune(load_model(str(W["model"])), ratio, **{"method": "magnitude", "calib": None, **kw})


@pytest.mark.parametrize("cid, call, msg", [c if hasattr(c, "marks") else pytest.param(*c, id=c[0])
                                             for c in PY_CASES])
def test_bad_input_python(cid, call, msg, W, tmp_path):
    before = _snapshot(W["root"])
    with pytest.raises(FuncnetError, match=msg) as exc:
        call(W, tmp_path)
    assert type(exc.value) is not ValueError and "\n" not in str(exc.value)
    assert _snapshot(W["root"]) == before
    assert not (tmp_path / "s").exists()


def test_planted_code_is_not_run_by_the_cli(tmp_path, monkeypatch, capsys):
    """(1) the full test is tests/test_safety.py; here: a folder naming its own code is refused in one line."""
    d = tiny_saved(tmp_path, "llama")
    (d / "modeling_x.py").write_text(f"open({str(tmp_path / 'MARKER')!r}, 'w').write('ran')\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (d / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hfmod"))
    capsys.readouterr()
    assert main(["info", "--model", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(ERR) and "--trust-remote-code" in err[0]
    assert not (tmp_path / "MARKER").exists()


# ------------------------------------------------------------------------ a real process
def _run(*argv, cwd=None):
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "FUNCNET_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "funcnet", *argv], capture_output=True, text=True, timeout=180,
                          env=env, cwd=cwd)


def test_subprocess_version_and_bad_command_answer_without_traceback():
    """(7) start-up: --version prints the version, a bad command one error line, exit 2."""
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.startswith("funcnet ") and r.stderr == ""
    r = _run("no-such-command")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(ERR) and "invalid choice" in r.stderr and "Traceback" not in r.stderr


def test_subprocess_argument_error_is_one_line_before_loading(tmp_path):
    r = _run("record", "--model", str(tmp_path / "no-such-model"), "--batch-size", "0", "--out", str(tmp_path / "s"))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(ERR)
    assert "batch_size must be a positive" in r.stderr and not (tmp_path / "s").exists()


def test_subprocess_overwrite_dot_keeps_the_users_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    r = _run("prune", "--model", str(tmp_path / "no-such-model"), "--out", ".", "--overwrite", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(ERR) and "working folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"
