"""Fingerprint statistics: how the matched correlations of a comparison become one score.

A statistic is a function ``fn(absr, top) -> float`` of the matched |rho| values of a comparison
(``absr``: one per matched victim/suspect network pair, sorted descending) and ``top`` (how many of
the best pairs count, at least 1 and at most ``len(absr)``). :func:`funcnet.fingerprint.compare`
applies it everywhere a score is computed: the observed score, the score without the token-identity
control (``raw_score``) and every draw of the null distribution.

Built in: ``"median"`` (the default, :func:`median_statistic`) and ``"mean"``
(:func:`mean_statistic`). Add one with :func:`register_statistic` and select it with
``compare(..., statistic=name)``::

    register_statistic("top-quartile", lambda absr, top: float(np.quantile(absr[:top], 0.25)))
    res = compare("victim.fnf", "suspect", statistic="top-quartile")

The independence p-value's reference scores (:data:`funcnet.fingerprint.REFERENCE_INDEPENDENT`)
and the verdict thresholds were measured with :data:`DEFAULT_STATISTIC`; another statistic needs its
own reference scores (``compare(..., reference=[...])``).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from funcnet.errors import FuncnetError

#: A fingerprint statistic: matched |rho| (sorted descending) and ``top`` -> score.
Statistic = Callable[[np.ndarray, int], float]


def median_statistic(absr: np.ndarray, top: int) -> float:
    """The *median* |rho| of the ``top`` best matched pairs (``absr`` sorted descending), i.e. the
    |rho| that half of the top-k pairs reach. A derived model shares most of the victim's networks;
    an independent one shares a handful of generic ones (quotes, line breaks, code indentation)
    strongly and the rest weakly. The mean of the top k lets that handful lift an independent
    model's score; the median counts how many networks are shared instead."""
    return float(np.median(absr[:top])) if len(absr) else 0.0


def mean_statistic(absr: np.ndarray, top: int) -> float:
    """The *mean* |rho| of the ``top`` best matched pairs (the statistic before the median; on the
    robustness suite it separates derived from independent pairs less well, docs/fingerprint.md)."""
    return float(np.mean(absr[:top])) if len(absr) else 0.0


#: The statistic of the shipped reference scores and verdict thresholds.
DEFAULT_STATISTIC = "median"

_BUILTIN: dict[str, Statistic] = {"median": median_statistic, "mean": mean_statistic}
_STATISTICS: dict[str, Statistic] = dict(_BUILTIN)


def register_statistic(name: str, fn: Statistic, *, replace: bool = False) -> None:
    """Register ``fn(absr, top) -> float`` as the fingerprint statistic ``name`` (see the module
    docstring). A name already registered needs ``replace=True``; the built-in ones cannot be
    replaced (the shipped reference scores were computed with them)."""
    if not isinstance(name, str) or not name.strip():
        raise FuncnetError(f"a statistic name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise FuncnetError(f"statistic {name!r} must be a function (absr, top) -> float, got {type(fn).__name__}")
    if name in _BUILTIN:
        raise FuncnetError(f"statistic {name!r} is built in and cannot be replaced; register it under another name")
    if name in _STATISTICS and not replace:
        raise FuncnetError(f"statistic {name!r} is already registered (pass replace=True to replace it)")
    _STATISTICS[name] = fn


def get_statistic(name: str) -> Statistic:
    """The statistic registered as ``name``."""
    try:
        return _STATISTICS[name]
    except (KeyError, TypeError):
        raise FuncnetError(f"unknown statistic {name!r}; choose {', '.join(available_statistics())} "
                           "(or add one with register_statistic)") from None


def available_statistics() -> tuple[str, ...]:
    """Names of the registered statistics (built-in first, then in registration order)."""
    return tuple(_STATISTICS)
