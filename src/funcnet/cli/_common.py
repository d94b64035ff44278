"""Arguments every command names the same way, and how a command loads its model."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from funcnet._defaults import DEFAULT_MODEL, DEVICE_MAP_NAMES, MODEL_DTYPES
from funcnet.cli._lazy import lazy_module
from funcnet.errors import FuncnetError

core = lazy_module("funcnet.core")


def load_model(spec, **kw):
    """:func:`funcnet.core.models.load_model` (imported when a command first loads a model)."""
    return core.models.load_model(spec, **kw)

MODEL_HELP = "model spec: HF id, folder, .gguf or alias"


def add_model_argument(p: argparse.ArgumentParser, *, default: str | None = DEFAULT_MODEL, required: bool = False,
                       help: str = MODEL_HELP, loading: bool = True, device_help: str = "") -> None:
    """``--model SPEC`` (how every command names the model it works on), ``--trust-remote-code`` and,
    with ``loading``, the model-loading options (:func:`add_load_arguments`)."""
    if required:
        p.add_argument("--model", required=True, help=help)
    else:
        p.add_argument("--model", default=default, help=f"{help} (default {default or DEFAULT_MODEL})")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow running Python code shipped in the model folder (as in transformers and vLLM); "
                        "without it such a model is refused")
    if loading:
        add_load_arguments(p, device_help=device_help)


def add_load_arguments(p: argparse.ArgumentParser, *, device_help: str = "") -> None:
    """The options of every command that loads a model: ``--dtype``, ``--device`` or ``--device-map``
    (with ``--max-memory`` and ``--offload-folder``). :func:`load_options` checks and converts them."""
    g = p.add_argument_group("model loading")
    g.add_argument("--dtype", default=None, metavar="{" + ",".join(MODEL_DTYPES) + "}",
                   help="the model's dtype (default: the checkpoint's own, as transformers' dtype='auto'; GGUF files "
                        "and the bundled aliases: float32)")
    g.add_argument("--device", default=None,
                   help="put the whole model on this device: cpu (default), cuda, cuda:1, mps" + device_help)
    g.add_argument("--device-map", default=None, metavar="MAP",
                   help=f"spread the model over devices (accelerate): {', '.join(DEVICE_MAP_NAMES)}, a device, or a "
                        "JSON object of module -> device (a string or a .json file)")
    g.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help='with --device-map: memory per device, e.g. "0=70GiB,1=70GiB,cpu=100GiB"')
    g.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="with --device-map: folder for the weights offloaded to disk")


_SIZE_RE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", re.IGNORECASE)
_MEMORY_KEY_RE = re.compile(r"\d+|cpu|mps|disk|(cuda|xpu|npu):\d+")


def parse_max_memory(text: str) -> dict:
    """``"0=70GiB,1=70GiB,cpu=100GiB"`` -> ``{0: "70GiB", 1: "70GiB", "cpu": "100GiB"}`` (accelerate's
    ``max_memory``: GPU indices as ints, sizes as strings, plain numbers as bytes)."""
    out: dict = {}
    for part in [x.strip() for x in str(text).split(",")]:
        key, eq, size = (y.strip() for y in part.partition("="))
        if not (eq and _MEMORY_KEY_RE.fullmatch(key) and _SIZE_RE.fullmatch(size)):
            raise FuncnetError(f"--max-memory '{text}': cannot read '{part}'; give DEVICE=SIZE pairs separated by "
                               "commas, e.g. 0=70GiB,1=70GiB,cpu=100GiB")
        k = int(key) if key.isdigit() else key
        if k in out:
            raise FuncnetError(f"--max-memory '{text}': device {key} is named twice")
        out[k] = int(size) if size.isdigit() else size.replace(" ", "")
    return out


def parse_device_map(text: str):
    """``--device-map``: a named strategy (auto, balanced, ...), a device (``cpu``, ``cuda:0``), or a JSON
    object of module -> device, given as a string or as a ``.json`` file."""
    t = str(text).strip()
    if t in DEVICE_MAP_NAMES:
        return t
    if t.startswith("{"):
        src, raw = "JSON", t
    elif t.endswith(".json") or Path(t).is_file():
        try:
            src, raw = f"file {t}", Path(t).read_text()
        except OSError as e:
            raise FuncnetError(f"--device-map: cannot read {t}: {e.strerror or e}") from e
    else:
        return t  # a device name, checked with --device's rules
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        raise FuncnetError(f"--device-map: {src} is not valid JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(d, dict) or not d:
        raise FuncnetError(f"--device-map: {src} must be a JSON object of module name -> device, e.g. "
                           '{"model.embed_tokens": 0, "model.layers": 0, "lm_head": "cpu"}')
    return d


def load_options(args) -> dict:
    """The model-loading options of ``args``, checked (before any model loads) and converted for
    :func:`funcnet.core.models.load_model`: dtype, device, device_map, max_memory, offload_folder
    (only those given). Errors are one line each."""
    opts: dict = {}
    dtype = getattr(args, "dtype", None)
    if dtype is not None:
        aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
        dtype = aliases.get(str(dtype).lower(), str(dtype).lower())
        if dtype not in MODEL_DTYPES:
            raise FuncnetError(f"--dtype '{args.dtype}' is not a dtype funcnet loads; choose from "
                               f"{', '.join(MODEL_DTYPES)}")
        opts["dtype"] = dtype
    device, dmap = getattr(args, "device", None), getattr(args, "device_map", None)
    if device is not None and dmap is not None:
        raise FuncnetError("--device and --device-map exclude each other: --device puts the whole model on one "
                           "device, --device-map spreads it over several; give one")
    if dmap is not None:
        opts["device_map"] = parse_device_map(dmap)
    if device is not None:
        opts["device"] = str(device).strip()
    for flag, name in (("--max-memory", "max_memory"), ("--offload-folder", "offload_folder")):
        if getattr(args, name, None) is not None and dmap is None:
            raise FuncnetError(f"{flag} applies only with --device-map (e.g. --device-map auto)")
    if getattr(args, "max_memory", None) is not None:
        opts["max_memory"] = parse_max_memory(args.max_memory)
    if getattr(args, "offload_folder", None) is not None:
        opts["offload_folder"] = args.offload_folder
    if "device" in opts or "device_map" in opts:
        core.models.check_placement(**{k: v for k, v in opts.items() if k != "dtype"})
    return opts


def load(args, spec=None, **kw):
    """The command's model, loaded with its --dtype, --device / --device-map (--max-memory,
    --offload-folder) and --trust-remote-code."""
    for k, v in load_options(args).items():
        kw.setdefault(k, v)
    return load_model(spec if spec is not None else args.model,
                      trust_remote_code=getattr(args, "trust_remote_code", False), **kw)


def model_or_spec(args):
    """The model spec as given (the library loads it after its own argument checks; with loading
    options, as a :class:`funcnet.core.models.ModelSpec` that carries them), or, with
    --trust-remote-code, the model loaded here with that permission."""
    if getattr(args, "trust_remote_code", False):
        return load(args)
    opts = load_options(args)
    return core.models.ModelSpec(args.model, **opts) if opts else args.model


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
