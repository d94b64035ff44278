"""The pruning-method registry: a name -> its score function."""
from __future__ import annotations

from typing import Callable

import numpy as np

from funcnet.core.models import as_loaded
from funcnet.errors import FuncnetError
from funcnet.prune.calibration import CalibStats
from funcnet.prune.network_scores import imp_fn, imp_fn_threshold
from funcnet.prune.scores import Importance, imp_flap, imp_magnitude, imp_random, imp_wanda_sp


#: name -> importance callable ``(lm, stats, *, seed, heads, **kw) -> Importance``
METHODS: dict[str, Callable[..., Importance]] = {
    "random": imp_random,
    "magnitude": imp_magnitude,
    "wanda-sp": imp_wanda_sp,
    "flap": imp_flap,
    "fn": imp_fn,
    "fn-threshold": imp_fn_threshold,
}


#: methods whose scores need calibration statistics
NEEDS_CALIB = {"wanda-sp", "flap"}


#: allocation each method uses by default (as in the papers)
DEFAULT_ALLOCATION = {"flap": "global", "fn": "global", "wanda-sp": "uniform", "magnitude": "uniform", "random": "uniform"}


def compute_importance(method: str | Callable, lm, stats: CalibStats | None = None, *, seed: int = 0,
                       heads: bool = False, **kw) -> Importance:
    lm = as_loaded(lm)
    fn = method if callable(method) else METHODS.get(method)
    if fn is None:
        raise FuncnetError(f"unknown pruning method '{method}'; choose from {', '.join(METHODS)}")
    imp = fn(lm, stats, seed=seed, heads=heads, **kw)
    if isinstance(imp, dict):
        imp = Importance({int(k): np.asarray(v, dtype=np.float64) for k, v in imp.items()})
    for i, layer in enumerate(lm.layers):
        if i in imp.neurons and len(imp.neurons[i]) != lm.adapter.n_neurons(layer):
            raise FuncnetError(
                f"importance of layer {i} has {len(imp.neurons[i])} scores but the layer has {lm.adapter.n_neurons(layer)} neurons"
            )
    return imp
