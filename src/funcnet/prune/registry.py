"""The pruning-method registry: one :class:`PruningMethod` record per name (its score function,
whether it needs calibration statistics, their covariance and functional networks, its default
allocation). :func:`prune` decides what a run computes from these records only; a new method is
one :func:`register_method` call.

:data:`METHODS` (name -> score function), :data:`NEEDS_CALIB` (methods that always need
statistics) and :data:`DEFAULT_ALLOCATION` (name -> allocation) are live views of the registry."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, MutableMapping, MutableSet
from dataclasses import dataclass

from funcnet.core.models import as_loaded
from funcnet.errors import FuncnetError
from funcnet.prune.calibration import CalibStats
from funcnet.prune.network_scores import (
    _fn_needs_covariance,
    _fn_needs_stats,
    imp_fn,
    imp_fn_threshold,
)
from funcnet.prune.obs import imp_fn_obs, imp_obs
from funcnet.prune.scores import (
    Importance,
    _as_importance,
    _flap_needs_covariance,
    imp_flap,
    imp_magnitude,
    imp_random,
    imp_wanda_sp,
)
from funcnet.prune.selection import ALLOCATIONS

#: a requirement: a constant, or a function of the method's keyword options (``score=`` ...)
Requirement = bool | Callable[..., bool]


@dataclass(frozen=True)
class PruningMethod:
    """A pruning method: ``score(lm, stats, *, seed, heads, **options) -> Importance`` (or a
    ``{layer: scores}`` dict), higher = keep.

    ``needs_stats`` / ``needs_covariance`` / ``needs_networks``: whether the score needs calibration
    statistics (:func:`calibration_stats`), their neuron covariance (``covariance=True``) and
    functional networks, each a bool or a function of the method's keyword options (e.g. ``fn``
    needs statistics for its score "fn-flap" but not for "max_abs_z"). ``exact_ratio``: False when
    the score's keep masks decide the size (the ratio is then an outcome, as for ``fn-threshold``).
    ``default_allocation``: ``global`` or ``uniform`` (:func:`select`)."""

    name: str
    score: Callable[..., Importance | dict]
    needs_stats: Requirement = False
    default_allocation: str = "global"
    description: str = ""
    needs_covariance: Requirement = False
    needs_networks: Requirement = False
    exact_ratio: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise FuncnetError(f"a pruning method needs a non-empty name, got {self.name!r}")
        if not callable(self.score):
            raise FuncnetError(f"the score of pruning method '{self.name}' must be callable")
        if self.default_allocation not in ALLOCATIONS:
            raise FuncnetError(f"unknown allocation '{self.default_allocation}' for method '{self.name}'; "
                               f"choose from {', '.join(ALLOCATIONS)}")

    def stats_needed(self, **options) -> bool:
        """Whether scoring with ``options`` needs calibration statistics."""
        return _holds(self.needs_stats, options)

    def covariance_needed(self, **options) -> bool:
        """Whether scoring with ``options`` needs the neurons' covariance in the statistics."""
        return _holds(self.needs_covariance, options)

    def networks_needed(self, **options) -> bool:
        """Whether scoring with ``options`` needs functional networks."""
        return _holds(self.needs_networks, options)


def _holds(req: Requirement, options: dict) -> bool:
    return bool(req(**options) if callable(req) else req)


_REGISTRY: dict[str, PruningMethod] = {}


def register_method(name: str, score: Callable[..., Importance | dict], *, needs_stats: Requirement = False,
                    default_allocation: str = "global", description: str = "",
                    needs_covariance: Requirement = False, needs_networks: Requirement = False,
                    exact_ratio: bool = True, replace: bool = False) -> PruningMethod:
    """Add a pruning method under ``name`` (``replace=True`` to redefine an existing one); it is
    then available to :func:`prune`, :func:`compute_importance` and :data:`METHODS`."""
    if name in _REGISTRY and not replace:
        raise FuncnetError(f"pruning method '{name}' is already registered (replace=True to redefine it)")
    rec = PruningMethod(name, score, needs_stats, default_allocation, description, needs_covariance,
                        needs_networks, exact_ratio)
    _REGISTRY[name] = rec
    return rec


def get_method(method: str | Callable) -> PruningMethod:
    """The record of ``method``: a registered name, a registered score function, or any other
    score function (a method that needs nothing, named after the function)."""
    if callable(method):
        for rec in _REGISTRY.values():
            if rec.score is method:
                return rec
        return PruningMethod(getattr(method, "__name__", "custom") or "custom", method)
    rec = _REGISTRY.get(method)
    if rec is None:
        raise FuncnetError(f"unknown pruning method '{method}'; choose from {', '.join(_REGISTRY)}")
    return rec


def _update(rec: PruningMethod, field: str, value) -> None:
    _REGISTRY[rec.name] = dataclasses.replace(rec, **{field: value})


class _FieldView(MutableMapping):
    """A live ``{name: field}`` view of the registry; setting an item updates the record (for
    ``score``: registers a new method that needs nothing, as assigning into ``METHODS`` always did)."""

    def __init__(self, field: str):
        self._field = field

    def __getitem__(self, name):
        return getattr(_REGISTRY[name], self._field)

    def __setitem__(self, name, value):
        if name in _REGISTRY:
            _update(_REGISTRY[name], self._field, value)
        elif self._field == "score":
            register_method(name, value)
        else:
            raise FuncnetError(f"unknown pruning method '{name}'; register it first (register_method)")

    def __delitem__(self, name):
        if self._field != "score":
            raise FuncnetError(f"'{self._field}' is part of every pruning method; delete the method from METHODS")
        del _REGISTRY[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(_REGISTRY))

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


class _AlwaysNeedsStats(MutableSet):
    """A live set of the methods whose scores need calibration statistics whatever their options."""

    def __contains__(self, name) -> bool:
        rec = _REGISTRY.get(name)
        return rec is not None and rec.needs_stats is True

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in list(_REGISTRY) if n in self])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def add(self, name) -> None:
        if name not in _REGISTRY:
            raise FuncnetError(f"unknown pruning method '{name}'; register it first (register_method)")
        _update(_REGISTRY[name], "needs_stats", True)

    def discard(self, name) -> None:
        if name in self:
            _update(_REGISTRY[name], "needs_stats", False)

    def __repr__(self) -> str:
        return repr(set(self))


#: name -> importance callable ``(lm, stats, *, seed, heads, **kw) -> Importance`` (a live view)
METHODS: MutableMapping[str, Callable[..., Importance]] = _FieldView("score")

#: methods whose scores always need calibration statistics (a live view; ``fn`` needs them for
#: some scores only: :meth:`PruningMethod.stats_needed`)
NEEDS_CALIB: MutableSet[str] = _AlwaysNeedsStats()

#: allocation each method uses by default (as in the papers; a live view)
DEFAULT_ALLOCATION: MutableMapping[str, str] = _FieldView("default_allocation")


register_method("random", imp_random, default_allocation="uniform", description="uniform random scores (a control)")
register_method("magnitude", imp_magnitude, default_allocation="uniform",
                description="the norm of the neuron's weights in every MLP projection")
register_method("wanda-sp", imp_wanda_sp, needs_stats=True, default_allocation="uniform",
                description="Wanda-sp: mean |W_down[:, j]| x ||x_j||")
register_method("flap", imp_flap, needs_stats=True, needs_covariance=_flap_needs_covariance,
                description="FLAP's fluctuation Var(x_j) ||W_down[:, j]||^2 (score='cond': the variance the "
                            "other neurons cannot explain)")
register_method("fn", imp_fn, needs_stats=_fn_needs_stats, needs_covariance=_fn_needs_covariance,
                needs_networks=True,
                description="functional-network membership (score=, default 'fn-flap': FLAP's fluctuation x max|z|)")
register_method("fn-threshold", imp_fn_threshold, needs_networks=True, exact_ratio=False,
                description="the reference rule: keep the key neurons of the functional networks "
                            "(the ratio is an outcome)")
register_method("obs", imp_obs, needs_stats=True, needs_covariance=True, default_allocation="global-raw",
                description="reconstruction-aware greedy (SlimGPT's batched OBS): the error the kept neurons "
                            "cannot reconstruct, per parameter, ranked across layers")
register_method("fn-obs", imp_fn_obs, needs_stats=True, needs_covariance=True, needs_networks=True,
                default_allocation="global-raw",
                description="obs with the functional networks in the greedy (design='prior': key neurons "
                            "protected by 1 + beta max|z|/T; 'group': a network's key neurons go together)")


def compute_importance(method: str | Callable, lm, stats: CalibStats | None = None, *, seed: int = 0,
                       heads: bool = False, **kw) -> Importance:
    """Scores of ``method`` (a registered name or a score function) for every layer of ``lm``."""
    lm = as_loaded(lm)
    imp = get_method(method).score(lm, stats, seed=seed, heads=heads, **kw)
    if isinstance(imp, dict):
        imp = _as_importance(imp)
    for i, layer in enumerate(lm.layers):
        if i in imp.neurons and len(imp.neurons[i]) != lm.adapter.n_neurons(layer):
            raise FuncnetError(
                f"importance of layer {i} has {len(imp.neurons[i])} scores but the layer has {lm.adapter.n_neurons(layer)} neurons"
            )
    return imp
