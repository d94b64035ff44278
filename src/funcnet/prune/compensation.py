"""Compensation of the removed neurons (none, FLAP's bias, least-squares reconstruction from the
kept neurons, or from their functional-network co-members) and the physical shrink."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from funcnet._defaults import (COMPENSATIONS, DEFAULT_COMPENSATION, DEFAULT_MAX_COVARIANCE_BYTES,  # noqa: F401
                               DEFAULT_RIDGE)
from funcnet.core import shrink
from funcnet.core.models import as_loaded
from funcnet.core.shrink import update_config
from funcnet.errors import FuncnetError
from funcnet.prune._linalg import _ridge_solve, _strongest
from funcnet.prune.calibration import CalibStats, calibration_stats
from funcnet.prune.scores import _head_config, _load_networks, _w
from funcnet.prune.selection import Selection

log = logging.getLogger(__name__)


#: compensations (defined in funcnet._defaults with their defaults, for the command line):
#: ``none``: drop removed neurons; ``bias`` (FLAP): replace each removed neuron's input by its
#: calibration mean, folded into the down projection's bias; ``ls``: replace the removed inputs by
#: their least-squares reconstruction from all kept neurons of the layer (x_R ~ A x_K + c, ridge),
#: folded into the kept down-projection columns and the bias; ``ls-fn``: the same, but each removed
#: neuron is reconstructed only from kept neurons that share a functional network with it.

#: ``ls-fn``: at most this many regressors per removed neuron (its strongest network co-members)
DEFAULT_LS_FN_REGRESSORS = 128


def _resolve_compensation(compensation: str | None, bias_compensation: bool) -> str:
    comp = compensation if compensation is not None else ("bias" if bias_compensation else "none")
    if comp not in COMPENSATIONS:
        raise FuncnetError(f"unknown compensation '{comp}'; choose from {', '.join(COMPENSATIONS)}")
    return comp


def compensation(lm, selection: Selection, stats: CalibStats) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """FLAP's bias compensation: for each layer W_down[:, pruned] @ mean(x_pruned) (and
    W_o[:, pruned cols] @ mean for heads), as float64 vectors."""
    lm = as_loaded(lm)
    return _mlp_bias_terms(lm, selection, stats), _head_bias_terms(lm, selection, stats)


def _mlp_bias_terms(lm, selection: Selection, stats: CalibStats) -> dict[int, torch.Tensor]:
    """W_down[:, pruned] @ mean(x_pruned) per layer with pruned neurons."""
    ad = lm.adapter
    mlp = {}
    for i, layer in enumerate(lm.layers):
        pruned = np.setdiff1d(np.arange(ad.n_neurons(layer)), selection.keep_neurons[i])
        if len(pruned):
            W = _w(layer, ad.down)[:, torch.as_tensor(pruned)]
            mlp[i] = W @ torch.as_tensor(stats.mean(i)[pruned], dtype=torch.float64)
    return mlp


def _head_bias_terms(lm, selection: Selection, stats: CalibStats) -> dict[int, torch.Tensor]:
    """W_o[:, pruned key/value groups' channels] @ their means per layer with pruned groups."""
    ad = lm.adapter
    attn = {}
    for i, layer in enumerate(lm.layers):
        if selection.keep_heads and selection.keep_heads.get(i) is not None:
            hc = _head_config(lm, i)
            kept = selection.keep_heads[i]
            if len(kept) < hc.n_kv_heads:
                if i not in stats.head_sum:
                    raise FuncnetError("head compensation needs calibration statistics recorded with heads=True")
                per_group = hc.group_size * hc.head_dim
                cols = np.concatenate([np.arange(g * per_group, (g + 1) * per_group)
                                       for g in range(hc.n_kv_heads) if g not in kept])
                Wo = _w(layer, ad.o_proj)[:, torch.as_tensor(cols)]
                attn[i] = Wo @ torch.as_tensor(stats.mean(i, "heads")[cols], dtype=torch.float64)
    return attn


def reconstruction(lm, selection: Selection, stats: CalibStats, *, mode: str = "ls", ridge: float = DEFAULT_RIDGE,
                   networks=None, max_regressors: int = DEFAULT_LS_FN_REGRESSORS, fn_threshold: float = 3.6
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per pruned layer, (A [removed, kept], c [removed]) such that the removed neurons' inputs are
    approximated by x_R ~ A x_K + c (float64; removed and kept in ascending neuron order).

    ``bias``: A = 0, c = mean(x_R). ``ls``: the least-squares (ridge) regression of x_R on all kept
    neurons, from the dense model's calibration covariance: A = C_RK (C_KK + ridge diag(C_KK))^-1,
    c = mean_R - A mean_K. This minimizes E||W_R (x_R - A x_K - c)||^2 for any W_R, so the folded
    update W_K += W_R A, b += W_R c is the best linear replacement of the removed neurons.
    ``ls-fn``: the same regression per removed neuron, restricted to the (at most ``max_regressors``
    strongest) kept neurons that share a functional network with it (key, |z| > ``fn_threshold``,
    in a common map); a removed neuron in no network with a kept one gets its mean (as ``bias``)."""
    lm = as_loaded(lm)
    ad = lm.adapter
    if mode not in ("bias", "ls", "ls-fn"):
        raise FuncnetError(f"no reconstruction for compensation '{mode}'")
    if mode == "ls-fn":
        if networks is None:
            raise FuncnetError("compensation 'ls-fn' needs functional networks (networks=)")
        networks = _load_networks(networks, lm)
    out = {}
    for i, layer in enumerate(lm.layers):
        w = ad.n_neurons(layer)
        keep = np.asarray(selection.keep_neurons[i], dtype=np.int64)
        rem = np.setdiff1d(np.arange(w), keep)
        if not len(rem):
            continue
        mean = torch.as_tensor(stats.mean(i), dtype=torch.float64)
        if mode == "bias":
            out[i] = (torch.zeros(len(rem), len(keep), dtype=torch.float64), mean[rem])
            continue
        C = torch.as_tensor(stats.cov(i), dtype=torch.float64)
        kt, rt = torch.as_tensor(keep), torch.as_tensor(rem)
        if mode == "ls":
            A = _ridge_solve(C[kt][:, kt], C[rt][:, kt], ridge)
        else:
            strength = networks.comembership(i, w, threshold=fn_threshold)[np.ix_(rem, keep)]
            A = torch.zeros(len(rem), len(keep), dtype=torch.float64)
            for a, r in enumerate(rem):
                cand = _strongest(strength[a], max_regressors)
                if not len(cand):
                    continue
                ct = torch.as_tensor(cand)
                S = kt[ct]
                A[a, ct] = _ridge_solve(C[S][:, S], C[int(r), S][None, :], ridge)[0]
        out[i] = (A, mean[rt] - A @ mean[kt])
    return out


def compensation_terms(lm, selection: Selection, stats: CalibStats | None, *, mode: str = "bias",
                       ridge: float = DEFAULT_RIDGE, networks=None, max_regressors: int = DEFAULT_LS_FN_REGRESSORS,
                       fn_threshold: float = 3.6) -> tuple[dict, dict, dict]:
    """(mlp bias deltas, attention bias deltas, down-projection weight deltas of the kept columns)
    for compensation ``mode``, all float64. Heads always get bias compensation (unless ``none``)."""
    lm = as_loaded(lm)
    if mode == "none":
        return {}, {}, {}
    if stats is None:
        raise FuncnetError(f"compensation '{mode}' needs calibration statistics (or compensation='none')")
    attn_b = _head_bias_terms(lm, selection, stats)
    if mode == "bias":
        return _mlp_bias_terms(lm, selection, stats), attn_b, {}
    ad = lm.adapter
    mlp_b, mlp_w = {}, {}
    for i, (A, c) in reconstruction(lm, selection, stats, mode=mode, ridge=ridge, networks=networks,
                                    max_regressors=max_regressors, fn_threshold=fn_threshold).items():
        layer = lm.layers[i]
        rem = np.setdiff1d(np.arange(ad.n_neurons(layer)), selection.keep_neurons[i])
        W_R = _w(layer, ad.down)[:, torch.as_tensor(rem)]
        mlp_b[i] = W_R @ c
        mlp_w[i] = W_R @ A
    return mlp_b, attn_b, mlp_w


@torch.no_grad()
def apply_selection(lm, selection: Selection, stats: CalibStats | None = None, *, bias_compensation: bool = True,
                    compensation: str | None = None, ridge: float = DEFAULT_RIDGE, networks=None,
                    max_regressors: int = DEFAULT_LS_FN_REGRESSORS) -> None:
    """Physically shrink the model in place, with ``compensation`` (default: ``bias`` when
    ``bias_compensation``, else ``none``; see :data:`COMPENSATIONS`)."""
    lm = as_loaded(lm)
    ad = lm.adapter
    mode = _resolve_compensation(compensation, bias_compensation)
    comp_mlp, comp_attn, comp_w = compensation_terms(lm, selection, stats, mode=mode, ridge=ridge, networks=networks,
                                                     max_regressors=max_regressors)
    for i, layer in enumerate(lm.layers):
        if selection.keep_heads and selection.keep_heads.get(i) is not None:
            hc = _head_config(lm, i)
            if len(selection.keep_heads[i]) < hc.n_kv_heads:
                shrink.slice_heads(ad, layer, hc, selection.keep_heads[i], comp_attn.get(i))
        if len(selection.keep_neurons[i]) < ad.n_neurons(layer):
            shrink.slice_mlp(ad, layer, selection.keep_neurons[i], comp_mlp.get(i), comp_w.get(i))
    update_config(lm)


def _apply_in_chunks(lm, sel: Selection, calib, comp: str, layers: list[int], max_bytes: int, *, ridge, networks,
                     max_regressors, calib_tokens, max_length, batch_size, heads) -> None:
    """Least-squares compensation with a bounded covariance memory: chunks of layers (each at most
    ``max_bytes`` of float64 covariance, at least one layer), last chunk first; each chunk is
    calibrated on the model whose earlier layers are still dense, so its statistics are the dense
    model's, and shrunk before the next."""
    ad = lm.adapter
    chunks, cur, size = [], [], 0
    for i in sorted(layers):
        b = ad.n_neurons(lm.layers[i]) ** 2 * 8
        if cur and size + b > max_bytes:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += b
    if cur:
        chunks.append(cur)
    log.info("least-squares compensation in %d chunk(s) of layers", len(chunks))
    widths = [ad.n_neurons(l) for l in lm.layers]
    for chunk in reversed(chunks):
        st = calibration_stats(lm, calib, calib_tokens=calib_tokens, max_length=max_length, batch_size=batch_size,
                               heads=heads, layers=chunk, covariance=True)
        sub = dataclasses.replace(
            sel, keep_neurons={i: (sel.keep_neurons[i] if i in chunk else np.arange(widths[i])) for i in range(len(widths))},
            keep_heads=({i: (v if i in chunk else None) for i, v in sel.keep_heads.items()} if sel.keep_heads else None))
        apply_selection(lm, sub, st, compensation=comp, ridge=ridge, networks=networks, max_regressors=max_regressors)
        del st
    # heads of layers without pruned neurons
    rest = [i for i in range(len(widths)) if i not in layers and sel.keep_heads and sel.keep_heads.get(i) is not None]
    if rest:
        st = calibration_stats(lm, calib, calib_tokens=calib_tokens, max_length=max_length, batch_size=batch_size,
                               heads=True, layers=rest)
        sub = dataclasses.replace(sel, keep_neurons={i: np.arange(ad.n_neurons(l)) for i, l in enumerate(lm.layers)},
                                  keep_heads={i: (v if i in rest else None) for i, v in sel.keep_heads.items()})
        apply_selection(lm, sub, st, compensation="bias")
