"""Model perturbations that keep a model's function (or nearly): the derived suspects of the
fingerprint tests and benchmarks (neuron / head permutation, rescaling, int8 noise, pruning)."""
from __future__ import annotations

import math

import torch

from funcnet.core.adapters import get_adapter, weight_out_in
from funcnet.errors import FuncnetError


# =============================================================================== derived suspects
# Function-preserving and near-function-preserving edits of a model, used by the tests and the
# robustness suite (and by users who want to check that the tool sees through them).
@torch.no_grad()
def permute_neurons(model, seed: int = 0):
    """Permute every MLP's neurons (rows of gate/up or fc_in, columns of down) in place."""

    ad = get_adapter(model)
    g = torch.Generator().manual_seed(seed)
    for layer in ad.get_layers(model):
        n = ad.n_neurons(layer)
        perm = torch.randperm(n, generator=g)
        for path in (ad.gate, ad.up):
            if path is None:
                continue
            mod = ad.module(layer, path)
            w = weight_out_in(mod)
            w.copy_(w[perm])
            if getattr(mod, "bias", None) is not None:
                mod.bias.copy_(mod.bias[perm])
        if ad.gate_up is not None:
            w = weight_out_in(ad.module(layer, ad.gate_up))
            w.copy_(torch.cat([w[:n][perm], w[n:][perm]]))
        dw = weight_out_in(ad.down_proj(layer))
        dw.copy_(dw[:, perm])
    return model


@torch.no_grad()
def permute_heads(model, seed: int = 0):
    """Permute attention heads: key/value groups as a whole, and query heads within each group
    (separate q/k/v projections only; other layouts are left unchanged)."""

    ad = get_adapter(model)
    if ad.q is None or ad.k is None or ad.v is None:
        return model
    hc = ad.head_config(model)
    g = torch.Generator().manual_seed(seed + 1)
    d = hc.head_dim
    for layer in ad.get_layers(model):
        gperm = torch.randperm(hc.n_kv_heads, generator=g)
        qheads = []
        for grp in gperm.tolist():
            within = torch.randperm(hc.group_size, generator=g)
            qheads += [grp * hc.group_size + int(i) for i in within]
        qrows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in qheads])
        kvrows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in gperm.tolist()])
        for path, rows in ((ad.q, qrows), (ad.k, kvrows), (ad.v, kvrows)):
            mod = ad.module(layer, path)
            w = weight_out_in(mod)
            w.copy_(w[rows])
            if getattr(mod, "bias", None) is not None:
                mod.bias.copy_(mod.bias[rows])
        # per-head norms (qwen3 / gemma3 q_norm, k_norm) act per head_dim: shared across heads
        ow = weight_out_in(ad.module(layer, ad.o_proj))
        ow.copy_(ow[:, qrows])
    return model


@torch.no_grad()
def rescale_neurons(model, low: float = 0.5, high: float = 2.0, seed: int = 0):
    """Scale each gated MLP neuron's up row by c and its down column by 1/c (function-preserving)."""

    ad = get_adapter(model)
    if not ad.gated or ad.up is None:
        raise FuncnetError("rescale_neurons needs a gated MLP with a separate up projection")
    g = torch.Generator().manual_seed(seed + 2)
    for layer in ad.get_layers(model):
        n = ad.n_neurons(layer)
        c = torch.exp(torch.empty(n).uniform_(math.log(low), math.log(high), generator=g))
        up = ad.module(layer, ad.up)
        weight_out_in(up).mul_(c[:, None])
        if getattr(up, "bias", None) is not None:
            up.bias.mul_(c)
        weight_out_in(ad.down_proj(layer)).div_(c[None, :])
    return model


@torch.no_grad()
def quantize_int8(model):
    """Round-trip every 2-D weight (except embeddings) through symmetric per-output-channel int8."""
    for name, p in model.named_parameters():
        if p.dim() != 2 or "embed" in name or "wte" in name or "wpe" in name or "lm_head" in name:
            continue
        scale = p.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        p.copy_(torch.round(p / scale).clamp(-127, 127) * scale)
    return model


@torch.no_grad()
def prune_lowest_norm(model, ratio: float):
    """Emulated structured pruning: zero the ``ratio`` MLP neurons of each layer with the lowest
    ||up row|| * ||down column|| (weights zeroed, shapes kept)."""

    ad = get_adapter(model)
    for layer in ad.get_layers(model):
        n = ad.n_neurons(layer)
        dw = weight_out_in(ad.down_proj(layer))
        inp = weight_out_in(ad.mlp_input_module(layer))
        imp = dw.norm(dim=0) * inp[:n].norm(dim=1)
        if ad.gated and ad.up is not None:
            imp = imp * weight_out_in(ad.module(layer, ad.up)).norm(dim=1)
        drop = torch.argsort(imp)[: int(round(ratio * n))]
        dw[:, drop] = 0
        for path in (ad.gate, ad.up):
            if path is not None:
                weight_out_in(ad.module(layer, path))[drop] = 0
    return model
