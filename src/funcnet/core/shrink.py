"""Physical slicing of MLP neurons and attention heads, for every family in the adapter registry.

Everything here is driven by the adapter's fields (``gate`` / ``up`` / ``gate_up`` / ``down``,
``q`` / ``k`` / ``v`` / ``qkv`` / ``qkv_layout`` / ``o_proj``) and by :func:`weight_out_in` /
:func:`is_conv1d`; no family names appear. Shrunk modules are *replaced* by new ``nn.Linear`` /
``Conv1D`` modules of the new shape (the old ones are left untouched).

:func:`layer_spec` describes a layer's shapes as plain JSON (saved in ``config.json``), and
:func:`funcnet_apply_spec` rebuilds those shapes on a freshly built dense model. The latter uses
only torch / transformers: its source is copied verbatim into the modeling file of a saved pruned
model, so that folder loads without funcnet.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from funcnet.core.adapters import ArchAdapter, HeadConfig, is_conv1d, weight_out_in
from funcnet.errors import FuncnetError

#: adapter fields naming projections that pruning may reshape
MODULE_FIELDS = ("gate", "up", "gate_up", "down", "q", "k", "v", "qkv", "o_proj")
#: int attributes of an attention module that follow its head count (set when present)
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "num_key_value_heads", "num_key_value_groups", "split_size")


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


def _new_like(old: nn.Module, out_f: int, in_f: int, bias: bool) -> nn.Module:
    w = old.weight
    if is_conv1d(old):
        new = type(old)(out_f, in_f)  # Conv1D(nf=out, nx=in), always has a bias
        new = new.to(device=w.device, dtype=w.dtype)
    else:
        new = nn.Linear(in_f, out_f, bias=bias, device=w.device, dtype=w.dtype)
    new.train(old.training)
    return new


@torch.no_grad()
def slice_module(
    mod: nn.Module,
    out_idx: torch.Tensor | None = None,
    in_idx: torch.Tensor | None = None,
    bias_delta: torch.Tensor | None = None,
    weight_delta: torch.Tensor | None = None,
) -> nn.Module:
    """A new module keeping output rows ``out_idx`` and input columns ``in_idx`` of ``mod``.

    ``bias_delta`` (length = new out features) is added to the bias; a bias is created when the
    module had none. ``weight_delta`` ([new out, new in], out x in orientation) is added to the
    sliced weight (in float64, then cast back).
    """
    W = weight_out_in(mod)
    if out_idx is not None:
        W = W.index_select(0, out_idx.to(W.device))
    if in_idx is not None:
        W = W.index_select(1, in_idx.to(W.device))
    if weight_delta is not None:
        if tuple(weight_delta.shape) != tuple(W.shape):
            raise FuncnetError(f"weight delta of shape {tuple(weight_delta.shape)} for a weight of {tuple(W.shape)}")
        W = (W.double() + weight_delta.to(device=W.device, dtype=torch.float64)).to(W.dtype)
    old_b = getattr(mod, "bias", None)
    b = None
    if old_b is not None:
        b = old_b.index_select(0, out_idx.to(old_b.device)) if out_idx is not None else old_b.clone()
    if bias_delta is not None:
        delta = bias_delta.to(device=W.device, dtype=torch.float64)
        b = (delta if b is None else b.double() + delta).to(W.dtype)
    new = _new_like(mod, W.shape[0], W.shape[1], b is not None)
    new.weight.copy_(W.t() if is_conv1d(mod) else W)
    if b is not None:
        new.bias.copy_(b)
    elif getattr(new, "bias", None) is not None:  # Conv1D always has one
        new.bias.zero_()
    return new


def _idx(x: Sequence[int] | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long).reshape(-1)


@torch.no_grad()
def slice_mlp(
    adapter: ArchAdapter, layer: nn.Module, keep: Sequence[int] | torch.Tensor, bias_delta: torch.Tensor | None = None,
    weight_delta: torch.Tensor | None = None,
) -> None:
    """Keep MLP neurons ``keep`` of ``layer``: rows of gate/up (or fused gate_up, or fc_in), columns
    of the down projection; ``bias_delta`` is added to the down projection's bias and
    ``weight_delta`` ([out, len(keep)], kept neurons in ascending order) to its kept columns."""
    keep = torch.sort(_idx(keep)).values
    width = adapter.n_neurons(layer)
    if keep.numel() == 0 or int(keep.max()) >= width or int(keep.min()) < 0:
        raise FuncnetError(f"cannot keep neurons {keep.tolist()[:5]}... of a layer with {width} neurons")
    if adapter.gate_up is not None:
        mod = layer.get_submodule(adapter.gate_up)
        _set(layer, adapter.gate_up, slice_module(mod, out_idx=torch.cat([keep, keep + width])))
    for path in (adapter.gate, adapter.up):
        if path is not None:
            _set(layer, path, slice_module(layer.get_submodule(path), out_idx=keep))
    _set(layer, adapter.down, slice_module(layer.get_submodule(adapter.down), in_idx=keep, bias_delta=bias_delta,
                                           weight_delta=weight_delta))


def head_rows(adapter: ArchAdapter, hc: HeadConfig) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Row indices of each query head, each key head and each value head in the projection(s).

    For ``separate`` layout the indices are into q / k / v; for ``fused`` and ``interleaved`` into qkv.
    """
    d, nq, nkv = hc.head_dim, hc.n_heads, hc.n_kv_heads
    ar = torch.arange(d)
    if adapter.qkv_layout == "separate":
        return ([ar + h * d for h in range(nq)], [ar + g * d for g in range(nkv)], [ar + g * d for g in range(nkv)])
    if adapter.qkv_layout == "fused":
        return (
            [ar + h * d for h in range(nq)],
            [ar + (nq + g) * d for g in range(nkv)],
            [ar + (nq + nkv + g) * d for g in range(nkv)],
        )
    if adapter.qkv_layout == "interleaved":
        if nq != nkv:
            raise FuncnetError("interleaved qkv layout with grouped key/value heads is not supported")
        return (
            [ar + h * 3 * d for h in range(nq)],
            [ar + h * 3 * d + d for h in range(nq)],
            [ar + h * 3 * d + 2 * d for h in range(nq)],
        )
    raise FuncnetError(f"unknown qkv layout '{adapter.qkv_layout}'")


def layer_head_config(adapter: ArchAdapter, model: nn.Module, layer: nn.Module) -> HeadConfig:
    """The head configuration of one (possibly already shrunk) layer."""
    base = adapter.head_config(model)
    attn_path = adapter.o_proj.rpartition(".")[0]
    attn = layer.get_submodule(attn_path) if attn_path else layer
    n_q = weight_out_in(layer.get_submodule(adapter.o_proj)).shape[1] // base.head_dim
    heads = getattr(attn, "_funcnet_heads", None)
    n_kv = heads[1] if heads else base.n_kv_heads
    return HeadConfig(n_q, n_kv, base.head_dim)


@torch.no_grad()
def slice_heads(
    adapter: ArchAdapter,
    layer: nn.Module,
    hc: HeadConfig,
    keep_kv: Sequence[int],
    bias_delta: torch.Tensor | None = None,
) -> HeadConfig:
    """Keep whole key/value groups ``keep_kv`` (with all their query heads) of ``layer``.

    Slices q/k/v rows (separate, fused [q; k; v] or interleaved per-head layouts) and o_proj
    columns, adds ``bias_delta`` to the o_proj bias, and updates the attention module's head
    attributes. Returns the new head configuration.
    """
    keep_kv = sorted(int(g) for g in keep_kv)
    if not keep_kv or keep_kv[-1] >= hc.n_kv_heads or keep_kv[0] < 0:
        raise FuncnetError(f"cannot keep key/value groups {keep_kv} of a layer with {hc.n_kv_heads}")
    gs = hc.group_size
    keep_q = [g * gs + j for g in keep_kv for j in range(gs)]
    qr, kr, vr = head_rows(adapter, hc)
    q_idx = torch.cat([qr[h] for h in keep_q])
    k_idx = torch.cat([kr[g] for g in keep_kv])
    v_idx = torch.cat([vr[g] for g in keep_kv])
    if adapter.qkv_layout == "separate":
        for path, idx in ((adapter.q, q_idx), (adapter.k, k_idx), (adapter.v, v_idx)):
            _set(layer, path, slice_module(layer.get_submodule(path), out_idx=idx))
    elif adapter.qkv_layout == "fused":
        idx = torch.cat([q_idx, k_idx, v_idx])
        _set(layer, adapter.qkv, slice_module(layer.get_submodule(adapter.qkv), out_idx=idx))
    else:  # interleaved: keep each kept head's [q_h; k_h; v_h] block in order
        idx = torch.cat([torch.cat([qr[h], kr[h], vr[h]]) for h in keep_q])
        _set(layer, adapter.qkv, slice_module(layer.get_submodule(adapter.qkv), out_idx=idx))
    o_cols = torch.cat([torch.arange(hc.head_dim) + h * hc.head_dim for h in keep_q])
    _set(layer, adapter.o_proj, slice_module(layer.get_submodule(adapter.o_proj), in_idx=o_cols, bias_delta=bias_delta))
    new = HeadConfig(len(keep_q), len(keep_kv), hc.head_dim)
    attrs, cfg = _head_attrs(adapter, layer, new)
    _apply_attn(layer, adapter.o_proj.rpartition(".")[0], attrs, cfg)
    attn = layer.get_submodule(adapter.o_proj.rpartition(".")[0])
    attn._funcnet_heads = (new.n_heads, new.n_kv_heads)
    return new


def _head_attrs(adapter: ArchAdapter, layer: nn.Module, hc: HeadConfig) -> tuple[dict, dict]:
    attn_path = adapter.o_proj.rpartition(".")[0]
    attn = layer.get_submodule(attn_path) if attn_path else layer
    values = {
        "num_heads": hc.n_heads,
        "num_attention_heads": hc.n_heads,
        "num_key_value_heads": hc.n_kv_heads,
        "num_key_value_groups": hc.n_heads // hc.n_kv_heads,
        "split_size": hc.n_heads * hc.head_dim,
    }
    attrs = {k: v for k, v in values.items() if isinstance(getattr(attn, k, None), int)}
    cfg = {}
    if getattr(attn, "config", None) is not None:
        cfg = {"num_attention_heads": hc.n_heads, "num_key_value_heads": hc.n_kv_heads}
    return attrs, cfg


def _apply_attn(layer: nn.Module, attn_path: str, attrs: dict, cfg: dict) -> None:
    attn = layer.get_submodule(attn_path) if attn_path else layer
    for k, v in attrs.items():
        setattr(attn, k, v)
    if cfg:
        attn.config = copy.copy(attn.config)  # per-layer head counts (some forwards read the config)
        for k, v in cfg.items():
            setattr(attn.config, k, v)


def layers_path(adapter: ArchAdapter, model: nn.Module) -> str:
    """Attribute path of the decoder layers relative to ``model``."""
    target = adapter.get_layers(model)
    for name, mod in model.named_modules():
        if mod is target:
            return name
    raise FuncnetError("cannot locate the decoder layers")  # pragma: no cover


def layer_spec(adapter: ArchAdapter, layer: nn.Module) -> dict:
    """JSON description of the shapes of one layer's projections and its attention attributes."""
    mods = {}
    for f in MODULE_FIELDS:
        path = getattr(adapter, "down" if f == "down" else f)
        if path is None:
            continue
        m = layer.get_submodule(path)
        W = weight_out_in(m)
        mods[path] = [int(W.shape[0]), int(W.shape[1]), getattr(m, "bias", None) is not None, is_conv1d(m)]
    spec = {"modules": mods}
    attn_path = adapter.o_proj.rpartition(".")[0]
    attn = layer.get_submodule(attn_path) if attn_path else layer
    if getattr(attn, "_funcnet_heads", None):
        nq, nkv = attn._funcnet_heads
        hd = weight_out_in(layer.get_submodule(adapter.o_proj)).shape[1] // nq
        attrs, cfg = _head_attrs(adapter, layer, HeadConfig(nq, nkv, hd))
        spec["attn"] = {"path": attn_path, "heads": [nq, nkv], "attrs": attrs, "config": cfg}
    return spec


# --------------------------------------------------------------------------------------------
# Everything below is copied into saved models' modeling file: torch / transformers only.
# --------------------------------------------------------------------------------------------
def funcnet_apply_spec(model, spec):
    """Reshape a freshly built dense model to the per-layer shapes in ``spec`` (from config.json)."""
    import copy as _copy

    from torch import nn as _nn

    def get(root, path):
        for part in [p for p in path.split(".") if p]:
            root = getattr(root, part)
        return root

    layers = get(model, spec["layers_path"])
    for i, ls in enumerate(spec["layers"]):
        layer = layers[i]
        for path, (out_f, in_f, bias, conv1d) in ls["modules"].items():
            parent_path, _, name = path.rpartition(".")
            parent = get(layer, parent_path)
            old = getattr(parent, name)
            w = old.weight
            shape = (in_f, out_f) if conv1d else (out_f, in_f)
            if tuple(w.shape) == tuple(shape) and (getattr(old, "bias", None) is not None) == bool(bias):
                continue
            if conv1d:
                new = type(old)(out_f, in_f).to(device=w.device, dtype=w.dtype)
            else:
                new = _nn.Linear(in_f, out_f, bias=bool(bias), device=w.device, dtype=w.dtype)
            setattr(parent, name, new)
        attn_spec = ls.get("attn")
        if attn_spec:
            attn = get(layer, attn_spec["path"])
            for k, v in attn_spec["attrs"].items():
                setattr(attn, k, v)
            if attn_spec.get("config"):
                attn.config = _copy.copy(attn.config)
                for k, v in attn_spec["config"].items():
                    setattr(attn.config, k, v)
            attn._funcnet_heads = tuple(attn_spec["heads"])
    return model


def update_config(lm) -> None:
    """Record per-layer shapes in the model config (what the saved modeling file rebuilds)."""
    ad, cfg = lm.adapter, lm.model.config
    layers = lm.layers
    specs = [layer_spec(ad, l) for l in layers]
    hcs = [layer_head_config(ad, lm.model, l) for l in layers]
    cfg.funcnet_pruned = {"layers_path": layers_path(ad, lm.model), "layers": specs}
    cfg.intermediate_sizes = [ad.n_neurons(l) for l in layers]
    cfg.num_attention_heads_per_layer = [h.n_heads for h in hcs]
    cfg.num_key_value_heads_per_layer = [h.n_kv_heads for h in hcs]
    cfg.mlp_bias_per_layer = [not bias_missing(l, ad.down) for l in layers]
    cfg.o_bias_per_layer = [not bias_missing(l, ad.o_proj) for l in layers]


def bias_missing(layer, path) -> bool:
    """True when the module at ``path`` of ``layer`` has no bias."""
    return getattr(layer.get_submodule(path), "bias", None) is None
