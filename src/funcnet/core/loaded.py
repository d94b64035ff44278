"""A loaded model with its tokenizer and adapter (:class:`LoadedModel`), and what is read off a
model without loading anything: input device, identity hash, parameter counts, summary, dtype names."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from funcnet.core.adapters import ArchAdapter, get_adapter
from funcnet.errors import FuncnetError
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
            p = _offloaded_value(model, name)  # offloaded by accelerate: its hook holds the value
            if p is None:
                continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].to("cpu", torch.float32)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def _offloaded_value(model, name: str):
    """The value of parameter ``name`` of a model whose weights accelerate offloaded (the parameter is
    on 'meta'; the weights map of its module's hook holds it, on the CPU or on disk), or None."""
    mod_name, _, pname = name.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        return None
    hook = getattr(mod, "_hf_hook", None)
    for h in [hook] + list(getattr(hook, "hooks", []) or []):
        wm = getattr(h, "weights_map", None)
        if wm is None:
            continue
        try:
            v = wm[pname]
        except KeyError:
            continue
        if isinstance(v, torch.Tensor) and v.device.type != "meta":
            return v
    return None


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


#: dtype names funcnet accepts (``--dtype``, ``load_model(dtype=)``), besides ``auto`` and torch dtypes
DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve_dtype(dtype) -> torch.dtype | str:
    """A dtype for ``from_pretrained``: None and ``"auto"`` are ``"auto"`` (the checkpoint's own dtype,
    as its config names it), names and torch dtypes are torch dtypes."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise FuncnetError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPE_NAMES)} or auto")
    return DTYPE_NAMES[dtype]


def _is_loaded(obj) -> bool:
    """A LoadedModel, or anything shaped like one (an HF model in ``.model`` and an adapter)."""
    return isinstance(obj, LoadedModel) or (
        isinstance(getattr(obj, "adapter", None), ArchAdapter) and isinstance(getattr(obj, "model", None), nn.Module))


def wrap_model(model, tokenizer=None) -> LoadedModel:
    """A :class:`LoadedModel` as is, or an in-memory model (and tokenizer) wrapped as one, with its
    architecture adapter. The coercer of in-memory models; ``funcnet.core.models.as_loaded`` also
    loads specs, :func:`unwrap_model` needs no adapter."""
    if _is_loaded(model):
        return model
    if not isinstance(model, nn.Module):
        raise FuncnetError(f"expected a model or LoadedModel, got {type(model).__name__}")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=get_adapter(model),
        spec=getattr(model.config, "_name_or_path", "") or type(model).__name__,
    )


def unwrap_model(model, tokenizer=None) -> tuple[nn.Module, Any]:
    """(HF model, tokenizer) from a LoadedModel (its tokenizer unless ``tokenizer`` is given) or from
    a model and ``tokenizer``; no architecture adapter needed (any causal LM)."""
    if _is_loaded(model):
        return model.model, (tokenizer if tokenizer is not None else model.tokenizer)
    if not isinstance(model, nn.Module):
        raise FuncnetError(f"expected a model or LoadedModel, got {type(model).__name__}")
    return model, tokenizer
