"""Arguments every command names the same way, and how a command loads its model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from funcnet._defaults import DEFAULT_MODEL
from funcnet.cli._lazy import lazy_module
from funcnet.errors import FuncnetError

core = lazy_module("funcnet.core")


def load_model(spec, **kw):
    """:func:`funcnet.core.models.load_model` (imported when a command first loads a model)."""
    return core.models.load_model(spec, **kw)

MODEL_HELP = "model spec: HF id, folder, .gguf or alias"


def add_model_argument(p: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL, required: bool = False,
                       help: str = MODEL_HELP) -> None:
    """``--model SPEC`` (how every command names the model it works on) and ``--trust-remote-code``."""
    if required:
        p.add_argument("--model", required=True, help=help)
    else:
        p.add_argument("--model", default=default, help=f"{help} (default {default or DEFAULT_MODEL})")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow running Python code shipped in the model folder (as in transformers and vLLM); "
                        "without it such a model is refused")


def load(args, spec=None, **kw):
    """The command's model, loaded with its --dtype / --device and --trust-remote-code."""
    for k in ("dtype", "device"):
        if getattr(args, k, None) is not None and k not in kw:
            kw[k] = getattr(args, k)
    return load_model(spec if spec is not None else args.model,
                      trust_remote_code=getattr(args, "trust_remote_code", False), **kw)


def model_or_spec(args):
    """The model spec as given (the library loads it after its own argument checks), or, with
    --trust-remote-code, the model loaded here with that permission."""
    return load(args) if getattr(args, "trust_remote_code", False) else args.model


class StagePrinter:
    """Prints "[i/n] stage" lines on stderr; remembers where it is so the caller can add its own stages."""

    def __init__(self) -> None:
        self.i, self.n = 0, 0

    def __call__(self, i: int, n: int, name: str) -> None:
        self.i, self.n = i, n
        print(f"[{i}/{n}] {name}", file=sys.stderr, flush=True)

    def next(self, name: str) -> None:
        self(self.i + 1, self.n, name)


def check_positive(args, *names: str, allow_zero: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, a count option below 1 (or below 0 for names in ``allow_zero``)."""
    for name in names:
        v = getattr(args, name, None)
        low = 0 if name in allow_zero else 1
        if v is not None and v < low:
            what = "a positive number" if low else "zero or more"
            raise FuncnetError(f"--{name.replace('_', '-')} must be {what}, got {v}")


def check_out(args, *, is_dir: bool = True, what: str = "output folder") -> Path:
    """``--out``, checked before the model loads: not a protected folder, not an existing path without
    --overwrite, with --overwrite only funcnet's own output, and a place that can be written."""
    return core._io.check_output(args.out, overwrite=getattr(args, "overwrite", False), is_dir=is_dir, what=what)
