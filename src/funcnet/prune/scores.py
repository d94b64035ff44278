"""Importance scores of MLP neurons (and key/value groups): random, magnitude, Wanda-sp, FLAP
(WIFV, conditional), higher = keep; and the one check of functional networks against the model."""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

from funcnet.core import shrink
from funcnet.core.adapters import HeadConfig, weight_out_in
from funcnet.core.models import LoadedModel
from funcnet.errors import FuncnetError
from funcnet.networks import FunctionalNetworks
from funcnet.prune._linalg import _ridge_solve, _strongest
from funcnet.prune.calibration import CalibStats


@dataclass
class Importance:
    """Per-layer scores, higher = keep. ``heads`` scores whole key/value groups."""

    neurons: dict[int, np.ndarray]
    heads: dict[int, np.ndarray] | None = None
    keep_masks: dict[int, np.ndarray] | None = None
    method: str = ""


def _as_importance(scores: dict, method: str = "") -> Importance:
    """``{layer: scores}`` (any keys / array types) as float64 :class:`Importance`."""
    return Importance({int(k): np.asarray(v, dtype=np.float64) for k, v in scores.items()}, None, method=method)


def _w(layer, path) -> torch.Tensor:
    """The weight [out, in] of module ``path`` of ``layer``, float64 on the CPU."""
    return weight_out_in(layer.get_submodule(path)).detach().to("cpu", torch.float64)


def _down_sq(ad, layer) -> torch.Tensor:
    """||W_down[:, j]||^2 of every neuron j of ``layer`` (float64)."""
    return (_w(layer, ad.down) ** 2).sum(0)


def _group_channel_scores(ch: np.ndarray, hc) -> np.ndarray:
    """Mean of per-channel scores over each key/value group's query-head channels."""
    return ch.reshape(hc.n_kv_heads, -1).mean(1)


def _head_config(lm: LoadedModel, i: int) -> HeadConfig:
    """Attention heads of layer ``i`` as they are now (pruned layers may have fewer)."""
    return shrink.layer_head_config(lm.adapter, lm.model, lm.layers[i])


def _only(layers):
    """``layers=`` of a score function as a set (None: every layer)."""
    return None if layers is None else {int(i) for i in layers}


def imp_random(lm: LoadedModel, stats=None, *, seed: int = 0, heads: bool = False, layers=None, **_) -> Importance:
    """Uniform random scores, drawn per layer from (``seed``, layer) so that a layer's scores do not
    depend on the others' widths (the one-pass layer-by-layer path scores layer i after shrinking
    layers < i); ``layers``: only these."""
    only = _only(layers)
    todo = [i for i in range(lm.n_layers) if only is None or i in only]
    neurons = {i: np.random.default_rng([seed, i]).random(lm.adapter.n_neurons(lm.layers[i])) for i in todo}
    hs = {i: np.random.default_rng([seed, i, 1]).random(_head_config(lm, i).n_kv_heads) for i in todo} if heads else None
    return Importance(neurons, hs, method="random")


def imp_magnitude(lm: LoadedModel, stats=None, *, heads: bool = False, layers=None, **_) -> Importance:
    ad = lm.adapter
    neurons, hs = {}, {} if heads else None
    only = _only(layers)
    for i, layer in enumerate(lm.layers):
        if only is not None and i not in only:
            continue
        w = ad.n_neurons(layer)
        sq = _down_sq(ad, layer)
        if ad.gate_up is not None:
            gu = (_w(layer, ad.gate_up) ** 2).sum(1)
            sq = sq + gu[:w] + gu[w:]
        for p in (ad.gate, ad.up):
            if p is not None:
                sq = sq + (_w(layer, p) ** 2).sum(1)
        neurons[i] = sq.sqrt().numpy()
        if heads:
            o = (_w(layer, ad.o_proj) ** 2).sum(0).numpy()
            hs[i] = np.sqrt(_group_channel_scores(o, _head_config(lm, i)))
    return Importance(neurons, hs, method="magnitude")


def _need(stats, heads):
    if stats is None:
        raise FuncnetError("this method needs calibration statistics (pass calib=...)")
    if heads and not stats.head_sum:
        raise FuncnetError("head importance needs calibration statistics recorded with heads=True")


def imp_wanda_sp(lm: LoadedModel, stats: CalibStats | None = None, *, heads: bool = False, layers=None,
                 **_) -> Importance:
    """Wanda-sp: mean over output rows of |W[:, j]| * ||x_j||_2; ``layers``: only these."""
    _need(stats, heads)
    ad = lm.adapter
    neurons, hs = {}, {} if heads else None
    only = _only(layers)
    for i, layer in enumerate(lm.layers):
        if only is not None and i not in only:
            continue
        norm = np.sqrt(stats.sq_norm(i))
        neurons[i] = _w(layer, ad.down).abs().mean(0).numpy() * norm
        if heads:
            ch = _w(layer, ad.o_proj).abs().mean(0).numpy() * np.sqrt(stats.sq_norm(i, "heads"))
            hs[i] = _group_channel_scores(ch, _head_config(lm, i))
    return Importance(neurons, hs, method="wanda-sp")


def conditional_fluctuation(lm: LoadedModel, stats: CalibStats, *, ridge: float = 0.1, networks=None,
                            max_regressors: int = 128, fn_threshold: float = 3.6, layers=None) -> dict[int, np.ndarray]:
    """||W[:, j]||^2 * Var(x_j | regressors): the output error of removing neuron j alone when
    least-squares compensation reconstructs it from the regressors (FLAP's WIFV with the variance
    the other neurons cannot explain). Regressors: every other neuron of the layer (``networks``
    None: 1 / (M^-1)_jj with M = C + ridge diag(C)), or neuron j's strongest co-members in its
    functional networks (as ``ls-fn``). Layers without a covariance get WIFV. ``layers``: only these
    (all when None; the layer-by-layer pass scores one layer at a time)."""
    ad = lm.adapter
    if networks is not None:
        networks = _load_networks(networks, lm)
    out = {}
    only = None if layers is None else {int(i) for i in layers}
    for i, layer in enumerate(lm.layers):
        if only is not None and i not in only:
            continue
        w2 = _down_sq(ad, layer)
        if not stats.has_cov(i):
            out[i] = (torch.as_tensor(stats.var(i)) * w2).numpy()
            continue
        C = torch.as_tensor(stats.cov(i)).to("cpu", torch.float64)
        d = torch.diagonal(C).clamp_min(0)
        n = C.shape[0]
        if networks is None:
            M = C.clone()
            M.diagonal().add_(ridge * d + 1e-12 * max(float(d.mean()), 1e-30))
            cond = 1.0 / torch.diagonal(torch.cholesky_inverse(torch.linalg.cholesky(M)))
            cond = (cond - ridge * d).clamp_min(0)  # the residual variance, not counting the ridge on x_j itself
        else:
            strength = networks.comembership(i, n, threshold=fn_threshold)
            np.fill_diagonal(strength, 0.0)
            cond = d.clone()
            for j in range(n):
                cand = _strongest(strength[j], max_regressors)
                if not len(cand):
                    continue
                S = torch.as_tensor(cand)
                a = _ridge_solve(C[S][:, S], C[j, S][None, :], ridge)[0]
                cond[j] = (C[j, j] - a @ C[S, j]).clamp_min(0)
        out[i] = (cond * w2).numpy()
    return out


def imp_flap(lm: LoadedModel, stats: CalibStats | None = None, *, heads: bool = False, score: str | None = None,
             cond_power: float = 1.0, cond_ridge: float = 0.1, layers=None, **_) -> Importance:
    """FLAP's fluctuation metric WIFV = Var(x_j) * ||W[:, j]||^2 (heads: mean over channels).
    ``score="cond"``: WIFV^(1 - cond_power) * conditional WIFV^cond_power (:func:`conditional_fluctuation`,
    needs covariance statistics), the variant that anticipates least-squares compensation.
    ``layers``: score only these (all when None)."""
    _need(stats, heads)
    ad = lm.adapter
    neurons, hs = {}, {} if heads else None
    if score not in (None, "wifv", "cond"):
        raise FuncnetError(f"unknown flap score '{score}' (wifv, cond)")
    cond = conditional_fluctuation(lm, stats, ridge=cond_ridge, layers=layers) if score == "cond" else None
    only = None if layers is None else {int(i) for i in layers}
    for i, layer in enumerate(lm.layers):
        if only is not None and i not in only:
            continue
        neurons[i] = stats.var(i) * _down_sq(ad, layer).numpy()
        if cond is not None:
            neurons[i] = neurons[i] ** (1 - cond_power) * cond[i] ** cond_power
        if heads:
            ch = stats.var(i, "heads") * (_w(layer, ad.o_proj) ** 2).sum(0).numpy()
            hs[i] = _group_channel_scores(ch, _head_config(lm, i))
    return Importance(neurons, hs, method="flap")


def _flap_needs_covariance(score: str | None = None, **_) -> bool:
    """FLAP's score "cond" conditions on the other neurons: it needs their covariance."""
    return score == "cond"


#: the networks object that the running :func:`prune` has checked against its model (at the start,
#: while the model is dense): its stages use it without checking again, also after compensation
#: has shrunk some layers (chunked least squares)
_CHECKED_NETWORKS: ContextVar[object | None] = ContextVar("funcnet_prune_checked_networks", default=None)


@contextmanager
def _networks_checked(networks):
    """Within the block, :func:`_load_networks` takes ``networks`` as already checked."""
    token = _CHECKED_NETWORKS.set(networks)
    try:
        yield networks
    finally:
        _CHECKED_NETWORKS.reset(token)


def _load_networks(networks, lm) -> FunctionalNetworks:
    """A networks file or object, checked against ``lm`` with :meth:`FunctionalNetworks.check_model`
    (refused when made from another model), unless the running :func:`prune` has checked it."""
    if networks is None:
        raise FuncnetError("method 'fn' needs functional networks (--networks FILE)")
    if isinstance(networks, (str, os.PathLike)):
        return FunctionalNetworks.load(networks, model=lm)
    if networks is not _CHECKED_NETWORKS.get():
        networks.check_model(lm)
    return networks
