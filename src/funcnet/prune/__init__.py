"""Structured pruning of MLP neurons (and optionally attention heads) to an exact size.

Stages, one module each::

    stats = calibration_stats(lm, calib)                 # calibration: streamed per-neuron mean / var / ||x||^2
    imp = compute_importance("flap", lm, stats)          # scores / network_scores via the registry, higher = keep
    sel = select(lm, imp, ratio=0.2, of="mlp")           # selection: exact target, global or uniform allocation
    apply_selection(lm, sel, stats)                      # compensation (bias / least squares) + physical shrink
    save_pruned(lm.model, lm.tokenizer, "out/", report)  # HF folder that loads without funcnet (funcnet.core.pruned)

or all at once (driver): ``result = prune(lm, ratio=0.2, of="mlp", method="flap", calib=texts)``.
``prune`` decides what a run computes (calibration statistics, their covariance, functional
networks) from the method's registry record and the compensation only; networks given to it are
checked against the model once per run (:meth:`funcnet.networks.FunctionalNetworks.check_model`),
networks it computes itself (:func:`networks_for_pruning`) need no check.

Ratio denominators ("of"): ``mlp`` = parameters of all MLP projections, ``attn+mlp`` = those plus
the attention projections (FLAP / LLM-Pruner's convention), ``all`` = every parameter of the model
(embeddings, norms, head included). The achieved ratio counts parameters added by bias
compensation (a bias on each down / output projection that had none), so it is the true net change.

Method registry (:mod:`funcnet.prune.registry`): each name maps to a :class:`PruningMethod` (its
score function ``(lm, stats, *, seed, heads, **options) -> Importance``, whether it needs
statistics, their covariance and networks, as bools or functions of its options, and its default
allocation); :func:`register_method` adds one. :data:`METHODS`, :data:`NEEDS_CALIB` and
:data:`DEFAULT_ALLOCATION` are live views of it. ``Importance.neurons`` is ``{layer:
np.ndarray[width]}`` (higher = keep), optional ``Importance.heads`` is ``{layer:
np.ndarray[n_kv_groups]}``, optional ``Importance.keep_masks`` is ``{layer: bool array}`` for
threshold rules (the ratio is then an outcome, not a target). The functional-network methods
(``fn``, ``fn-threshold``) score with :func:`pruning_importance` / :func:`pruning_keep_masks`
(``networks -> {layer: scores}`` / ``{layer: bool mask}``).
"""
from funcnet.core.pruned import MODELING_NAME, REPORT_NAME, load_pruned, modeling_source, save_pruned
from funcnet.prune.calibration import CalibStats, calibration_stats
from funcnet.prune.compensation import (COMPENSATIONS, DEFAULT_COMPENSATION, DEFAULT_LS_FN_REGRESSORS,
                                        DEFAULT_MAX_COVARIANCE_BYTES, DEFAULT_RIDGE, apply_selection, compensation,
                                        compensation_terms, reconstruction)
from funcnet.prune.driver import PruneResult, prune
from funcnet.prune.network_scores import (DEFAULT_FN_SCORE, FN_SCORES, FN_STATS_SCORES, imp_fn, imp_fn_threshold,
                                          networks_for_pruning, pruning_importance, pruning_keep_masks)
from funcnet.prune.registry import (DEFAULT_ALLOCATION, METHODS, NEEDS_CALIB, PruningMethod, compute_importance,
                                    get_method, register_method)
from funcnet.prune.scores import (Importance, conditional_fluctuation, imp_flap, imp_magnitude, imp_random,
                                  imp_wanda_sp)
from funcnet.prune.selection import ALLOCATIONS, DEFAULT_PROTECT, DENOMINATORS, Selection, param_counts, select

__all__ = [
    "prune", "PruneResult", "save_pruned", "load_pruned", "modeling_source", "calibration_stats", "CalibStats",
    "compute_importance", "Importance", "select", "Selection", "apply_selection", "compensation",
    "compensation_terms", "reconstruction", "param_counts", "pruning_importance", "pruning_keep_masks",
    "networks_for_pruning", "METHODS", "NEEDS_CALIB", "DEFAULT_ALLOCATION", "COMPENSATIONS", "DEFAULT_COMPENSATION",
    "DEFAULT_RIDGE", "DEFAULT_MAX_COVARIANCE_BYTES", "DEFAULT_LS_FN_REGRESSORS", "DENOMINATORS", "ALLOCATIONS",
    "DEFAULT_PROTECT", "FN_SCORES", "FN_STATS_SCORES", "DEFAULT_FN_SCORE", "MODELING_NAME", "REPORT_NAME",
    "imp_random", "imp_magnitude", "imp_wanda_sp", "imp_flap", "imp_fn", "imp_fn_threshold", "conditional_fluctuation",
    "PruningMethod", "register_method", "get_method",
]
