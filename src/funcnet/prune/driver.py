"""``prune()``: calibration, scores, selection, compensation and shrink in one call."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from funcnet._version import __version__
from funcnet.core.models import LoadedModel, as_loaded
from funcnet.errors import FuncnetError
from funcnet.prune.calibration import CalibStats, calibration_stats
from funcnet.prune.compensation import (DEFAULT_COMPENSATION, DEFAULT_LS_FN_REGRESSORS,
                                        DEFAULT_MAX_COVARIANCE_BYTES, DEFAULT_RIDGE, _apply_in_chunks,
                                        _resolve_compensation, apply_selection)
from funcnet.prune.network_scores import imp_fn, imp_fn_threshold, networks_for_pruning
from funcnet.prune.registry import DEFAULT_ALLOCATION, METHODS, NEEDS_CALIB, compute_importance
from funcnet.prune.scores import Importance
from funcnet.prune.selection import DEFAULT_PROTECT, Selection, _parse_protect, param_counts, select





# =============================================================================================
# driver
# =============================================================================================
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
    method: str | Callable = "flap",
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
    **method_kw,
) -> PruneResult:
    """Prune ``model`` (a LoadedModel, a spec, or a model with ``tokenizer=``) in place.

    ``importance`` (``{layer: scores}`` or :class:`Importance`) or ``keep_masks`` (``{layer: bool
    array}``) bypass the method's own scoring (how ``fn`` results plug in). ``compensation`` is one
    of :data:`COMPENSATIONS` (default :data:`DEFAULT_COMPENSATION`, or ``none`` when
    ``bias_compensation=False``); ``ls`` / ``ls-fn`` need the neurons' covariance: taken from
    ``stats`` when it has one (``calibration_stats(covariance=True)``), else computed here from
    ``calib`` within ``max_covariance_bytes`` (in one pass when it fits, else in chunks of layers,
    each calibrated on the dense model and shrunk before the next, last layers first); ``ls-fn``
    also needs ``networks``."""

    lm = as_loaded(model, tokenizer)
    comp = _resolve_compensation(compensation if compensation is not None else
                                 (DEFAULT_COMPENSATION if bias_compensation else "none"), bias_compensation)
    bias_compensation = comp != "none"
    if comp.startswith("ls") and stats is not None and not stats.has_covariance and calib is None:
        raise FuncnetError(f"compensation '{comp}' needs calibration statistics recorded with covariance=True "
                           "(or calib= to compute the covariance here)")
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    if keep_masks is not None:
        name = "fn-threshold"
    elif importance is not None:
        name = getattr(importance, "method", "") or "fn"
    if isinstance(method, str) and method not in METHODS and importance is None and keep_masks is None:
        raise FuncnetError(f"unknown pruning method '{method}'; choose from {', '.join(METHODS)}")
    if keep_masks is None and importance is None and name != "fn-threshold":
        if ratio is None or not (0.0 < float(ratio) < 1.0):
            raise FuncnetError(f"ratio must be in (0, 1), got {ratio}")
    t0 = time.time()
    before = param_counts(lm)
    need_stats = bias_compensation or name in NEEDS_CALIB or (
        name == "fn" and importance is None and method_kw.get("score") in (None, "fn-flap", "fn-flap-freq"))
    if stats is None and need_stats:
        if calib is None:
            raise FuncnetError(
                f"method '{name}'{' with bias compensation' if bias_compensation else ''} needs calibration text (calib=)"
            )
        cov_layers = None
        if comp.startswith("ls"):
            prot = set(_parse_protect(protect, lm.n_layers))
            cov_layers = [i for i in range(lm.n_layers) if i not in prot]
            if sum(lm.adapter.n_neurons(lm.layers[i]) ** 2 * 8 for i in cov_layers) > max_covariance_bytes:
                cov_layers = None  # too big for one pass: chunks after selection
        stats = calibration_stats(lm, calib, calib_tokens=calib_tokens, max_length=max_length,
                                  batch_size=batch_size, heads=heads, covariance=cov_layers is not None,
                                  covariance_layers=cov_layers)
    if keep_masks is not None:
        imp = imp_fn_threshold(lm, keep_masks=keep_masks)
    elif importance is not None:
        imp = importance if isinstance(importance, Importance) else imp_fn(lm, importance=importance)
    else:
        kw = dict(method_kw)
        if networks is None and name in ("fn", "fn-threshold"):
            if calib is None:
                raise FuncnetError(f"method '{name}' needs functional networks (networks=) or calibration text (calib=)")

            fn_keys = ("n_groups", "group_size", "n_components", "fn_method", "n_init", "fn_max_length")
            fkw = {k: kw.pop(k) for k in fn_keys if k in kw}
            if "fn_method" in fkw:
                fkw["method"] = fkw.pop("fn_method")
            if "fn_max_length" in fkw:
                fkw["max_length"] = fkw.pop("fn_max_length")
            networks = networks_for_pruning(lm, calib, seed=seed, **fkw)
        if networks is not None:
            kw["networks"] = networks
        imp = compute_importance(method, lm, stats, seed=seed, heads=heads, **kw)
    alloc = allocation or DEFAULT_ALLOCATION.get(imp.method or name, "global")
    sel = select(lm, imp, ratio, of=of, allocation=alloc, protect=protect, heads=heads,
                 bias_compensation=bias_compensation)
    if comp == "ls-fn" and networks is None:
        raise FuncnetError("compensation 'ls-fn' needs functional networks (networks=, --networks)")
    pruned_layers = [i for i in range(lm.n_layers) if len(sel.keep_neurons[i]) < lm.adapter.n_neurons(lm.layers[i])]
    if comp.startswith("ls") and any(i not in stats.neuron_xtx for i in pruned_layers):
        _apply_in_chunks(lm, sel, calib, comp, pruned_layers, max_covariance_bytes, ridge=ridge, networks=networks,
                         max_regressors=ls_max_regressors, calib_tokens=calib_tokens, max_length=max_length,
                         batch_size=batch_size, heads=heads)
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
        "base_model": {"spec": lm.spec, "family": lm.adapter.family},
        "funcnet_version": __version__,
        "seconds": round(time.time() - t0, 2),
    }
    lm.info["pruning_report"] = report
    return PruneResult(lm, report, sel, imp, stats)


