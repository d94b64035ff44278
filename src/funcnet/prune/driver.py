"""``prune()``: calibration, scores, selection, compensation and shrink in one call."""
from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from funcnet._defaults import DEFAULT_HEADS_METHOD, DEFAULT_METHOD
from funcnet._version import __version__
from funcnet.core.models import LoadedModel, as_loaded
from funcnet.errors import FuncnetError
from funcnet.prune.calibration import CalibStats, calibration_stats
from funcnet.prune.compensation import (
    DEFAULT_COMPENSATION,
    DEFAULT_LS_FN_REGRESSORS,
    DEFAULT_MAX_COVARIANCE_BYTES,
    DEFAULT_RIDGE,
    _apply_in_chunks,
    _resolve_compensation,
    apply_selection,
)
from funcnet.core.shrink import update_config
from funcnet.prune.layerwise import _ls_shrink, calibration_inputs, compensate_layerwise, layerwise_pass
from funcnet.prune.network_scores import imp_fn, imp_fn_threshold, networks_for_pruning
from funcnet.prune.registry import DEFAULT_ALLOCATION, compute_importance, get_method
from funcnet.prune.scores import Importance, _load_networks, _networks_checked
from funcnet.prune.selection import (
    DEFAULT_PROTECT,
    Selection,
    _check_ratio,
    _parse_protect,
    param_counts,
    select,
)

log = logging.getLogger(__name__)

#: options of a ``fn`` / ``fn-threshold`` run that go to :func:`networks_for_pruning` (under that name)
_NETWORK_OPTIONS = {"n_groups": "n_groups", "group_size": "group_size", "n_components": "n_components",
                    "fn_method": "method", "n_init": "n_init", "fn_max_length": "max_length"}


def _solve_dtype(dtype) -> torch.dtype:
    """float32 / float64 (names or torch dtypes) for the least-squares solves."""
    names = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
             torch.float64: torch.float64}
    if dtype not in names:
        raise FuncnetError(f"solve_dtype must be float32 or float64, got {dtype!r}")
    return names[dtype]


@dataclass
class PruneResult:
    lm: LoadedModel
    report: dict
    selection: Selection
    importance: Importance
    stats: CalibStats | None

    @property
    def model(self):
        return self.lm.model


def prune(
    model,
    ratio: float | None = 0.2,
    *,
    of: str = "mlp",
    method: str | Callable | None = None,
    calib=None,
    tokenizer=None,
    calib_tokens: int = 8192,
    max_length: int = 128,
    batch_size: int = 8,
    heads: bool = False,
    bias_compensation: bool = True,
    allocation: str | None = None,
    protect=DEFAULT_PROTECT,
    seed: int = 0,
    stats: CalibStats | None = None,
    importance: Importance | dict | None = None,
    keep_masks: dict | None = None,
    networks=None,
    compensation: str | None = None,
    ridge: float = DEFAULT_RIDGE,
    ls_max_regressors: int = DEFAULT_LS_FN_REGRESSORS,
    max_covariance_bytes: int = DEFAULT_MAX_COVARIANCE_BYTES,
    multiple_of: int = 1,
    layerwise: bool | None = None,
    solve_dtype: str = "float32",
    **method_kw,
) -> PruneResult:
    """Prune ``model`` (a LoadedModel, a spec, or a model with ``tokenizer=``) in place.

    ``method``: a registered name or a score function; default :data:`DEFAULT_METHOD`
    (:data:`DEFAULT_HEADS_METHOD` with ``heads=True``), the choice of the pruning protocol.

    ``importance`` (``{layer: scores}`` or :class:`Importance`) or ``keep_masks`` (``{layer: bool
    array}``) bypass the method's own scoring (how ``fn`` results plug in). ``compensation`` is one
    of :data:`COMPENSATIONS` (default :data:`DEFAULT_COMPENSATION`, or ``none`` when
    ``bias_compensation=False``); ``ls`` / ``ls-fn`` need the neurons' covariance: taken from
    ``stats`` when it has one (``calibration_stats(covariance=True)``), else computed here from
    ``calib`` within ``max_covariance_bytes`` (in one pass when it fits, else in chunks of layers,
    each calibrated on the dense model and shrunk before the next, last layers first); ``ls-fn``
    also needs ``networks``. ``multiple_of`` rounds every pruned layer's MLP width to a multiple
    of it (see :func:`select`; 1, the default, keeps exact widths; ``funcnet prune`` uses 32 so that
    llama.cpp's quantized blocks fit, see docs/deploy.md).

    ``layerwise`` (default: whenever statistics are computed here from ``calib``): least-squares
    compensation, and scores that need the covariance, run layer by layer
    (:mod:`funcnet.prune.layerwise`): one pass over the calibration text for the selection's statistics
    (sums on the model's device; layer by layer with each layer's covariance when the score needs it)
    and one layer-by-layer pass that computes each pruned layer's dense covariance on its device,
    solves its compensation in ``solve_dtype`` and shrinks it. One pass instead of two with a uniform
    allocation (counts known up front: each layer scored, chosen, solved and shrunk as the pass
    reaches it) or when every free layer's float32 covariance fits ``max_covariance_bytes`` (kept
    from the first pass); at most one layer's covariance is accumulated at a time.
    ``layerwise=False``: the earlier path (float64 covariance of all pruned layers on the host, in
    chunks of ``max_covariance_bytes``, one calibration pass per chunk).

    Stages: what the run needs (calibration statistics, their covariance, functional networks) is
    read off the method's :class:`~funcnet.prune.registry.PruningMethod` record for ``method_kw``
    (e.g. ``score=``) and off the compensation; given ``networks`` are checked against the model
    once, given ``stats`` are used as they are, the rest is computed here (statistics from
    ``calib``, networks with :func:`networks_for_pruning`); then scores, :func:`select` and
    compensation + shrink."""

    if method is None:  # the recommended method (docs/pruning.md, "The protocol")
        method = DEFAULT_HEADS_METHOD if heads else DEFAULT_METHOD
    if int(multiple_of) != multiple_of or int(multiple_of) < 1:
        raise FuncnetError(f"multiple_of must be an integer >= 1, got {multiple_of}")
    solve_torch_dtype = _solve_dtype(solve_dtype)  # checked before the model loads
    lm = as_loaded(model, tokenizer)
    comp = _resolve_compensation(compensation if compensation is not None else
                                 (DEFAULT_COMPENSATION if bias_compensation else "none"), bias_compensation)
    bias_compensation = comp != "none"
    if comp.startswith("ls") and stats is not None and not stats.has_covariance and calib is None:
        raise FuncnetError(f"compensation '{comp}' needs calibration statistics recorded with covariance=True "
                           "(or calib= to compute the covariance here)")
    # what the run needs: from the method's registry record (unless scores are given) and the compensation
    if keep_masks is not None:
        rec, name = None, "fn-threshold"
    elif importance is not None:
        rec, name = None, getattr(importance, "method", "") or "fn"
    else:
        rec = get_method(method)
        name = rec.name
        if rec.exact_ratio:
            _check_ratio(ratio)
    scores_need_stats = rec is not None and rec.stats_needed(**method_kw)
    scores_need_cov = rec is not None and rec.covariance_needed(**method_kw)
    scores_need_networks = rec is not None and rec.networks_needed(**method_kw)
    if scores_need_cov and stats is not None and not stats.has_covariance:
        raise FuncnetError(f"method '{name}' with score '{method_kw.get('score')}' needs calibration statistics "
                           "recorded with covariance=True (or calib= instead of stats= to compute them here)")
    if comp == "ls-fn" and networks is None and not scores_need_networks:
        raise FuncnetError("compensation 'ls-fn' needs functional networks (networks=, --networks)")
    checked = None  # networks checked against the (still dense) model once: the stages reuse them
    if networks is not None and (scores_need_networks or comp == "ls-fn"):
        networks = checked = _load_networks(networks, lm)
    t0 = time.time()
    before = param_counts(lm)
    # networks first: a layer-by-layer scoring pass needs them (they do not depend on the statistics)
    if networks is None and scores_need_networks:
        if calib is None:
            raise FuncnetError(f"method '{name}' needs functional networks (networks=) or calibration text (calib=)")
        fkw = {k: method_kw.pop(k) for k in _NETWORK_OPTIONS if k in method_kw}
        # computed from this model: nothing to check
        networks = checked = networks_for_pruning(lm, calib, seed=seed,
                                                  **{_NETWORK_OPTIONS[k]: v for k, v in fkw.items()})
    lw = (calib is not None) if layerwise is None else bool(layerwise)
    if lw and calib is None and (stats is None or comp.startswith("ls")):
        raise FuncnetError("layer-by-layer pruning needs calibration text (calib=)")
    score_fn = rec.score if rec is not None else None
    by_layer = rec is not None and "layers" in inspect.signature(score_fn).parameters
    need_pass = stats is None and (bias_compensation or scores_need_stats)
    prot = set(_parse_protect(protect, lm.n_layers))
    free = [i for i in range(lm.n_layers) if i not in prot]
    pre_alloc = allocation or (DEFAULT_ALLOCATION.get(name, "global") if rec is not None else None)
    # one pass (counts known up front): each layer scored, chosen, solved and shrunk as the pass reaches it
    inline = (lw and need_pass and comp == "ls" and pre_alloc == "uniform" and not heads and by_layer
              and keep_masks is None and importance is None)
    # one pass (global allocation): every free layer's covariance kept on its device when the budget holds them
    keep_covs = (lw and need_pass and comp.startswith("ls") and not inline and not (scores_need_cov and not by_layer)
                 and sum(lm.adapter.n_neurons(lm.layers[i]) ** 2 * 4 for i in free) <= max_covariance_bytes)
    lw_scores = lw and need_pass and by_layer and (scores_need_cov or inline)
    if lw and scores_need_cov and stats is None and not by_layer:
        log.warning("method '%s' cannot score one layer at a time: its covariance is computed for all layers", name)
    passes = 0
    lw_imp = sel = None
    kept_covs: dict = {}
    if lw and need_pass and (lw_scores or inline or keep_covs):
        # the selection's statistics layer by layer: each free layer scored with its own statistics
        # (calib is there: checked above for every layer-by-layer run without statistics)
        inputs, ident = calibration_inputs(lm, calib, calib_tokens=calib_tokens, max_length=max_length,
                                           batch_size=batch_size)
        parts: dict = {"neurons": {}, "heads": {}}
        kw0 = dict(method_kw)
        if networks is not None:
            kw0["networks"] = networks
        if inline:  # the uniform allocation's counts depend on the widths only, not on the scores
            sel = select(lm, Importance({i: np.zeros(lm.adapter.n_neurons(lm.layers[i])) for i in range(lm.n_layers)},
                                        None), ratio, of=of, allocation="uniform", protect=protect,
                         bias_compensation=bias_compensation, multiple_of=multiple_of)
            widths = [lm.adapter.n_neurons(layer) for layer in lm.layers]
            counts = {i: widths[i] - len(sel.keep_neurons[i]) for i in range(lm.n_layers)}

        def on_layer(i, st):
            if keep_covs and i in free:
                kept_covs[i] = st.neuron_cov[i]
            if i in prot or not (lw_scores or inline):  # protected layers are never cut: no scores needed
                return
            with _networks_checked(checked):
                part = compute_importance(rec.score, lm, st, seed=seed, heads=heads, layers=[i], **kw0)
            parts["neurons"][i] = part.neurons[i]
            if heads and part.heads:
                parts["heads"][i] = part.heads[i]
            parts["method"] = part.method
            if inline and counts[i]:  # as select() does: the lowest scores go (stable order)
                gone = np.argsort(np.asarray(part.neurons[i], dtype=np.float64), kind="stable")[: counts[i]]
                sel.keep_neurons[i] = np.setdiff1d(np.arange(widths[i]), gone)
                _ls_shrink(lm, i, sel.keep_neurons[i], st, ridge=ridge, solve_dtype=solve_torch_dtype)

        cov_layers = free if (scores_need_cov or comp.startswith("ls")) else []
        stats = layerwise_pass(lm, inputs, heads=heads, covariance_layers=cov_layers, on_layer=on_layer,
                               desc="prune, layer by layer" if inline else "statistics, layer by layer")
        stats.identity = ident
        passes += 1
        del inputs
        if inline:
            update_config(lm)
        if lw_scores:
            lw_imp = Importance(parts["neurons"], parts["heads"] if heads else None,
                                method=parts.get("method", name))
    elif need_pass:
        if calib is None:
            raise FuncnetError(f"method '{name}'{f' with compensation {comp!r}' if bias_compensation else ''} "
                               "needs calibration text (calib=)")
        cov_layers = None
        if not lw and (comp.startswith("ls") or scores_need_cov):
            cov_layers = list(free)
            if sum(lm.adapter.n_neurons(lm.layers[i]) ** 2 * 8 for i in cov_layers) > max_covariance_bytes:
                cov_layers = None  # too big for one pass: compensation in chunks after selection
                if scores_need_cov:
                    log.warning("the covariance exceeds max_covariance_bytes: method '%s' scores without it", name)
        elif lw and scores_need_cov:
            cov_layers = list(free)
        stats = calibration_stats(lm, calib, calib_tokens=calib_tokens, max_length=max_length,
                                  batch_size=batch_size, heads=heads, covariance=cov_layers is not None,
                                  covariance_layers=cov_layers)
        passes += 1
    with _networks_checked(checked):
        if lw_imp is not None:
            imp = lw_imp
        elif keep_masks is not None:
            imp = imp_fn_threshold(lm, keep_masks=keep_masks)
        elif importance is not None:
            imp = importance if isinstance(importance, Importance) else imp_fn(lm, importance=importance)
        else:
            kw = dict(method_kw)
            if networks is not None:
                kw["networks"] = networks
            imp = compute_importance(rec.score, lm, stats, seed=seed, heads=heads, **kw)
        alloc = "uniform" if inline else allocation or DEFAULT_ALLOCATION.get(imp.method or name, "global")
        if not inline:
            sel = select(lm, imp, ratio, of=of, allocation=alloc, protect=protect, heads=heads,
                         bias_compensation=bias_compensation, multiple_of=multiple_of)
        pruned_layers = [i for i in range(lm.n_layers)
                         if len(sel.keep_neurons[i]) < lm.adapter.n_neurons(lm.layers[i])]
        if inline:
            pass  # shrunk during the pass
        elif comp.startswith("ls") and lw and kept_covs and all(i in kept_covs for i in pruned_layers):
            compensate_layerwise(lm, sel, None, compensation=comp, ridge=ridge, networks=networks,
                                 max_regressors=ls_max_regressors, heads_stats=stats,
                                 solve_dtype=solve_torch_dtype, covs=kept_covs)
        elif comp.startswith("ls") and lw and any(not stats.has_cov(i) for i in pruned_layers):
            inputs, _ = calibration_inputs(lm, calib, calib_tokens=calib_tokens, max_length=max_length,
                                           batch_size=batch_size)
            compensate_layerwise(lm, sel, inputs, compensation=comp, ridge=ridge, networks=networks,
                                 max_regressors=ls_max_regressors, heads_stats=stats,
                                 solve_dtype=solve_torch_dtype)
            passes += 1
            del inputs
        elif comp.startswith("ls") and any(not stats.has_cov(i) for i in pruned_layers):
            _apply_in_chunks(lm, sel, calib, comp, pruned_layers, max_covariance_bytes, ridge=ridge,
                             networks=networks, max_regressors=ls_max_regressors, calib_tokens=calib_tokens,
                             max_length=max_length, batch_size=batch_size, heads=heads)
        else:
            apply_selection(lm, sel, stats, compensation=comp, ridge=ridge, networks=networks,
                            max_regressors=ls_max_regressors)
    after = param_counts(lm)
    achieved = (before[of] - after[of]) / before[of]
    report = {
        "method": imp.method or name,
        "ratio": None if ratio is None else float(ratio),
        "denominator": of,
        "denominator_meaning": {
            "mlp": "parameters of the MLP projections", "attn+mlp": "parameters of MLP and attention projections",
            "all": "all model parameters"}[of],
        "achieved_ratio": achieved,
        "achieved_ratios": {k: (before[k] - after[k]) / before[k] for k in before},
        "allocation": alloc,
        "multiple_of": int(multiple_of),
        "heads": bool(heads),
        "kept_neurons_per_layer": [int(len(sel.keep_neurons[i])) for i in range(lm.n_layers)],
        "kept_neurons": {str(i): sel.keep_neurons[i].tolist() for i in range(lm.n_layers)},
        "kept_heads": ({str(i): v for i, v in sel.keep_heads.items()} if sel.keep_heads else None),
        "kept_heads_per_layer": list(lm.model.config.num_attention_heads_per_layer),
        "kept_kv_heads_per_layer": list(lm.model.config.num_key_value_heads_per_layer),
        "calibration": stats.identity if stats is not None else None,
        "params_before": before,
        "params_after": after,
        "bias_compensation": bool(bias_compensation),
        "compensation": comp,
        "ridge": float(ridge) if comp.startswith("ls") else None,
        "protected_layers": sel.protected,
        "seed": seed,
        "layerwise": lw,
        "calibration_passes": passes,
        "base_model": {"spec": lm.spec, "family": lm.adapter.family},
        "funcnet_version": __version__,
        "seconds": round(time.time() - t0, 2),
    }
    lm.info["pruning_report"] = report
    return PruneResult(lm, report, sel, imp, stats)


