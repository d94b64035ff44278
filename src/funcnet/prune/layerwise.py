"""Layer-by-layer passes over calibration text (as SparseGPT, Wanda and FLAP prune 70B models on one GPU).

The calibration batches' hidden states at the input of layer 0 are captured once (the model's body runs
with every decoder layer replaced by a recorder that keeps the layer's call arguments -- attention
mask, position embeddings -- and passes the hidden states through); then each layer in turn runs over
those hidden states on its own device, with hooks accumulating its statistics, and its outputs become
the next layer's inputs. A whole pass runs every layer once over the calibration text, whatever the
number of layers, and holds the calibration hidden states, one layer's statistics and (on a device
map) one layer's weights on its device.

:func:`layerwise_pass` is the loop; :func:`compensate_layerwise` uses it for least-squares
compensation: at each pruned layer the dense model's covariance of the down-projection inputs is
accumulated on the layer's device in float32 (shifted by the first batch's mean, so that the centring
loses nothing), the ridge solve runs there (Jacobi-scaled Cholesky, float32; float64 on failure), the
layer is shrunk, and the pass moves on with the dense layer's outputs (computed before the shrink), so
every layer's statistics are the dense model's, as in :func:`funcnet.prune.compensation.apply_selection`.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from funcnet.core import shrink
from funcnet.core.adapters import weight_out_in
from funcnet.core.forward import forward_batches
from funcnet.core.progress import progress_bar
from funcnet.core.shrink import update_config
from funcnet.errors import FuncnetError
from funcnet.prune.calibration import CalibStats, _calib_texts, _packed_batches
from funcnet.prune.compensation import _head_bias_terms, apply_selection
from funcnet.prune.scores import _head_config
from funcnet.prune.selection import Selection

log = logging.getLogger(__name__)

__all__ = ["LayerInputs", "capture_layer_inputs", "layerwise_pass", "compensate_layerwise", "layer_device",
           "solve_ls_update"]


class _Stop(Exception):
    pass


@dataclasses.dataclass
class LayerInputs:
    """Calibration batches at the input of the current layer: ``hidden`` (one tensor per batch,
    ``[batch, seq, hidden]``), ``masks`` (bool ``[batch, seq]``, real tokens), and for every layer the
    positional and keyword arguments it is called with (``calls[layer][batch]``, without the hidden
    states; the same tensors are shared between layers)."""

    hidden: list[torch.Tensor]
    masks: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]]

    @property
    def n_tokens(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks))


def layer_device(layer: torch.nn.Module) -> torch.device:
    """Where ``layer`` computes: accelerate's execution device (device maps, offload) or its weights'."""
    hook = getattr(layer, "_hf_hook", None)
    for h in [hook] + list(getattr(hook, "hooks", []) or []):
        ex = getattr(h, "execution_device", None)
        if ex is not None:
            return torch.device(ex) if not isinstance(ex, int) else torch.device("cuda", ex)
    for p in layer.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _check_in_memory(lm) -> None:
    for i, layer in enumerate(lm.layers):
        if any(p.device.type == "meta" for p in layer.parameters()):
            raise FuncnetError(f"layer {i} is offloaded to disk (its weights are on 'meta'): layer-by-layer pruning "
                               "needs every layer in memory (a device map over GPUs and the CPU, no disk offload)")


def capture_layer_inputs(lm, batches: Iterable[tuple]) -> LayerInputs:
    """Run ``batches`` (``(input_ids, attention_mask, ...)``) through the model's body with every decoder
    layer replaced by a recorder: returns layer 0's input hidden states and every layer's call arguments.
    Costs the embeddings only."""
    layers = lm.layers
    hidden, masks = [], []
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in layers]
    saved = []

    def recorder(i):
        def fwd(*args, **kwargs):
            if args:
                h, rest = args[0], args[1:]
            else:
                h, rest = kwargs.pop("hidden_states"), ()
            if i == 0:
                hidden.append(h.detach().clone())
            calls[i].append((rest, kwargs))
            return h
        return fwd

    for i, layer in enumerate(layers):
        saved.append(layer.__dict__.get("forward"))
        layer.forward = recorder(i)
    try:
        def before(batch):
            masks.append(batch[1].bool())

        for _ in forward_batches(lm.model, batches, before=before):
            pass
    finally:
        for layer, f in zip(layers, saved):
            if f is None:
                del layer.forward
            else:
                layer.forward = f
    if not hidden:
        raise FuncnetError("calibration text produced no tokens")
    return LayerInputs(hidden, masks, calls)


def calibration_inputs(lm, calib, *, calib_tokens: int = 8192, max_length: int = 128, batch_size: int = 8
                       ) -> tuple[LayerInputs, dict]:
    """:func:`capture_layer_inputs` over calibration text (the same packed windows as
    :func:`funcnet.prune.calibration.calibration_stats`); returns (inputs, calibration identity)."""
    if lm.tokenizer is None:
        raise FuncnetError("calibration needs a tokenizer")
    texts, corpus, ident = _calib_texts(calib)
    inputs = capture_layer_inputs(lm, _packed_batches(texts, corpus, lm.tokenizer, max_length, calib_tokens,
                                                      batch_size))
    ident["tokens"] = inputs.n_tokens
    return inputs, ident


@torch.inference_mode()
def run_layer(layer, inputs: LayerInputs, i: int, *, before: Callable[[int], None] | None = None) -> None:
    """Run layer ``i`` over every batch of ``inputs`` in place: its outputs become the next layer's inputs
    (kept on the layer's device). ``before(b)`` runs before batch ``b`` (hooks read the mask from there)."""
    dev = layer_device(layer)
    for b, (args, kwargs) in enumerate(inputs.calls[i]):
        if before is not None:
            before(b)
        out = layer(inputs.hidden[b].to(dev), *args, **kwargs)
        inputs.hidden[b] = out[0] if isinstance(out, (tuple, list)) else out


class _Moments:
    """Float64 sums and sums of squares of a signal (real tokens only) on its device, and optionally its
    float32 covariance, accumulated around a shift (the first batch's mean) so that centring loses nothing."""

    def __init__(self, covariance: bool):
        self.covariance = covariance
        self.n = 0
        self.sum = self.sumsq = self.shift = self.ssum = self.xtx = None

    def add(self, x: torch.Tensor) -> None:
        xd = x.to(torch.float64)
        s, q = xd.sum(0), (xd * xd).sum(0)
        if self.sum is None:
            self.sum, self.sumsq = s, q
        else:
            self.sum += s
            self.sumsq += q
        self.n += x.shape[0]
        if self.covariance:
            if self.shift is None:
                self.shift = x.float().mean(0)
            y = x.float() - self.shift
            if self.xtx is None:
                self.xtx = y.t() @ y
                self.ssum = y.to(torch.float64).sum(0)
            else:
                self.xtx.addmm_(y.t(), y)
                self.ssum += y.to(torch.float64).sum(0)

    def cov(self) -> torch.Tensor:
        """Centered covariance (float32, on the signal's device)."""
        n = max(self.n, 1)
        m = (self.ssum / n).float()
        c = self.xtx / n
        c.sub_(torch.outer(m, m))
        return c


def _hook_moments(lm, i: int, state: dict, *, heads: bool, covariance: bool) -> tuple[list, _Moments, _Moments | None]:
    """Hooks on layer ``i`` accumulating its neurons' (and heads') moments over real tokens."""
    ad, layer = lm.adapter, lm.layers[i]
    neur = _Moments(covariance)
    head = _Moments(False) if heads else None

    def cb(acc):
        def f(x):
            m = state["mask"]
            x = x.detach()
            acc.add(x[m.to(x.device)] if m is not None else x.reshape(-1, x.shape[-1]))
        return f

    hs = [ad.register_signal_hook(layer, "neurons", cb(neur))]
    if heads:
        hs.append(ad.register_signal_hook(layer, "heads", cb(head)))
    return hs, neur, head


def layerwise_pass(lm, inputs: LayerInputs, *, heads: bool = False, covariance_layers: Iterable[int] = (),
                   on_layer: Callable[[int, CalibStats], None] | None = None, last_layer: int | None = None,
                   desc: str = "layer by layer") -> CalibStats:
    """Run every layer in turn over ``inputs`` (consumed: they end as the last layer's outputs), with its
    statistics accumulated on its device: float64 sums and squares of the MLP neurons (and o_proj inputs
    when ``heads``), and for ``covariance_layers`` the neurons' float32 covariance, handed to
    ``on_layer(i, stats)`` (a :class:`CalibStats` whose ``neuron_cov`` holds layer ``i`` only) after the
    layer ran over all batches and then dropped. ``on_layer`` may shrink layer ``i``: the next layer's
    inputs are the outputs of the layer as it was when it ran. Stops after ``last_layer``.
    Returns the sums of every layer that ran (``neuron_cov`` empty)."""
    cov_ids = {int(i) for i in covariance_layers}
    n_layers = lm.n_layers if last_layer is None else int(last_layer) + 1
    out = CalibStats(inputs.n_tokens, {}, {}, {}, {})
    state: dict[str, Any] = {"mask": None}
    was_training = lm.model.training
    lm.model.eval()
    try:
        for i in progress_bar(range(n_layers), desc=desc, unit="layer"):
            layer = lm.layers[i]
            handles, neur, head = _hook_moments(lm, i, state, heads=heads, covariance=i in cov_ids)
            try:
                run_layer(layer, inputs, i, before=lambda b: state.__setitem__("mask", inputs.masks[b]))
            finally:
                for h in handles:
                    h.remove()
            out.neuron_sum[i], out.neuron_sumsq[i] = neur.sum.cpu().numpy(), neur.sumsq.cpu().numpy()
            if head is not None:
                out.head_sum[i], out.head_sumsq[i] = head.sum.cpu().numpy(), head.sumsq.cpu().numpy()
            if on_layer is not None:
                st = dataclasses.replace(out, neuron_cov=({i: neur.cov()} if i in cov_ids else {}))
                on_layer(i, st)
            del neur, head
    finally:
        lm.model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------- solves
def solve_ls_update(C: torch.Tensor, mean: torch.Tensor, W: torch.Tensor, keep: torch.Tensor, rem: torch.Tensor,
                    ridge: float, *, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares compensation of one layer on the covariance's device: the down-projection weight
    delta of the kept columns ``W_R A`` ([out, kept]) and bias delta ``W_R c`` ([out]) with
    A = C_RK (C_KK + ridge diag C_KK)^-1, c = mean_R - A mean_K (as
    :func:`funcnet.prune.compensation.reconstruction`, mode ``ls``), computed without A:
    W_R A = (W_R C_RK) M^-1. M is Jacobi-scaled (unit diagonal + ridge) and factored by Cholesky in
    ``dtype`` (float32 by default; float64, then least squares, when that fails). No dense diagonal
    matrices. Returns float64 deltas."""
    dev = C.device
    kt, rt = keep.to(dev), rem.to(dev)
    Ckk = C.index_select(0, kt).index_select(1, kt).to(dtype)
    d = Ckk.diagonal().clamp_min(0)
    floor = 1e-12 * max(float(d.mean()), 1e-30)
    s = (d + floor).sqrt()
    M = Ckk / s[:, None] / s[None, :]  # a new tensor (scaled): M = S^-1 (C_KK + ridge D + floor) S^-1
    M.diagonal().copy_((ridge * d + floor + d) / (s * s))
    W_R = W.index_select(1, rt.to(W.device)).to(dev, dtype)
    C_RK = C.index_select(0, rt).index_select(1, kt).to(dtype)
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0 and dtype != torch.float64:
        log.info("float32 Cholesky failed (info %d): solving in float64", int(info))
        return solve_ls_update(C, mean, W, keep, rem, ridge, dtype=torch.float64)

    def solve(B):  # M^-1 B
        return torch.linalg.lstsq(M, B).solution if int(info) != 0 else torch.cholesky_solve(B, L)

    # fewer right-hand sides: the removed neurons (A^T = S^-1 M^-1 S^-1 C_KR) or the outputs
    # (W_R A = (W_R C_RK S^-1) M^-1 S^-1), whichever is smaller
    if len(rem) <= W_R.shape[0]:
        At = solve((C_RK / s[None, :]).t()) / s[:, None]  # [kept, removed] = A^T
        Z = None
        dW = (W_R @ At.t()).to(torch.float64)
    else:
        Z = solve(((W_R @ C_RK) / s[None, :]).t())
    if Z is not None:
        dW = (Z / s[:, None]).t().to(torch.float64)  # [out, kept] = W_R A
    mean = mean.to(dev, torch.float64)
    db = W_R.to(torch.float64) @ mean[rt] - dW @ mean[kt]  # W_R (mean_R - A mean_K)
    return dW, db


def _ls_shrink(lm, i: int, keep, st: CalibStats, *, ridge: float, solve_dtype: torch.dtype) -> None:
    """Shrink layer ``i`` to the neurons ``keep`` with ``ls`` compensation solved from ``st`` (its
    covariance of layer ``i`` and the means) on the covariance's device."""
    ad, layer = lm.adapter, lm.layers[i]
    width = ad.n_neurons(layer)
    keep = torch.as_tensor(np.asarray(keep, dtype=np.int64))
    rem = torch.as_tensor(np.setdiff1d(np.arange(width), keep.numpy()))
    W = weight_out_in(layer.get_submodule(ad.down)).detach()
    dW, db = solve_ls_update(st.neuron_cov[i], torch.as_tensor(st.mean(i)), W, keep, rem, ridge, dtype=solve_dtype)
    shrink.slice_mlp(ad, layer, keep, db, dW)


def compensate_layerwise(lm, sel: Selection, inputs: LayerInputs | None, *, compensation: str = "ls",
                         ridge: float = 0.3, networks=None, max_regressors: int = 128, heads_stats: CalibStats | None = None,
                         solve_dtype: torch.dtype = torch.float32, covs: dict | None = None) -> list[int]:
    """Shrink ``lm`` to ``sel`` with least-squares compensation (``ls`` / ``ls-fn``) in one layer-by-layer
    pass over ``inputs``: each pruned layer's dense covariance is accumulated on its device, the
    compensation solved and the layer shrunk before the pass moves on. ``covs``: the pruned layers'
    dense covariances when they were kept from an earlier pass (then no pass runs: ``inputs`` may be
    None; ``heads_stats`` gives the means). Heads (when ``sel.keep_heads``) get bias compensation from
    ``heads_stats`` (the means of the o_proj inputs). Returns the pruned layers."""
    ad = lm.adapter
    widths = [ad.n_neurons(l) for l in lm.layers]
    pruned = [i for i in range(lm.n_layers) if len(sel.keep_neurons[i]) < widths[i]]
    head_layers = [i for i in range(lm.n_layers) if sel.keep_heads and sel.keep_heads.get(i) is not None
                   and len(sel.keep_heads[i]) < _head_config(lm, i).n_kv_heads]
    if not pruned and not head_layers:
        return []
    _check_in_memory(lm)
    head_terms = _head_bias_terms(lm, sel, heads_stats) if head_layers else {}

    def on_layer(i: int, st: CalibStats) -> None:  # after layer i ran densely over the calibration batches
        layer = lm.layers[i]
        if i in head_layers:
            shrink.slice_heads(ad, layer, _head_config(lm, i), sel.keep_heads[i], head_terms.get(i))
        if i not in pruned:
            return
        if compensation == "ls":
            _ls_shrink(lm, i, sel.keep_neurons[i], st, ridge=ridge, solve_dtype=solve_dtype)
        else:  # ls-fn: the per-neuron regressions of funcnet.prune.compensation on the host, float64
            host = dataclasses.replace(st, neuron_cov={i: st.neuron_cov[i].to("cpu", torch.float64)})
            sub = dataclasses.replace(
                sel, keep_neurons={j: (sel.keep_neurons[j] if j == i else np.arange(widths[j])) for j in range(len(widths))},
                keep_heads=None)
            apply_selection(lm, sub, host, compensation=compensation, ridge=ridge, networks=networks,
                            max_regressors=max_regressors)

    if covs is not None and all(i in covs for i in pruned):
        for i in sorted(set(pruned) | set(head_layers)):
            on_layer(i, dataclasses.replace(heads_stats, neuron_cov={i: covs[i]} if i in covs else {}))
    else:
        layerwise_pass(lm, inputs, covariance_layers=pruned, on_layer=on_layer,
                       last_layer=max(pruned + head_layers), desc="compensation, layer by layer")
    update_config(lm)
    return pruned
