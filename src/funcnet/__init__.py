"""funcnet: functional networks of neurons in large language models.

Record MLP neuron activations, decompose them with group ICA (CanICA) into functional networks,
lesion / preserve / amplify them, prune a model by keeping them, and fingerprint derived models.

Subpackages, lowest first (docs/design.md): ``core`` (adapters, models, pruned format, forward
loop), ``data`` (corpus, store, record), ``networks`` (CanICA, FunctionalNetworks),
``intervene`` / ``evaluate``, then ``prune``, ``fingerprint`` and ``experiments`` (independent of
each other), ``report``, ``explore`` and ``cli``.
"""
from __future__ import annotations

import importlib

from funcnet import _compat
from funcnet._version import __version__
from funcnet.core.adapters import ArchAdapter, get_adapter, register_adapter, supported_families
from funcnet.core.models import DEFAULT_MODEL, LoadedModel, load_model
from funcnet.errors import FuncnetError

_compat.install()

__all__ = [
    "__version__", "ArchAdapter", "get_adapter", "register_adapter", "supported_families",
    "FuncnetError", "DEFAULT_MODEL", "LoadedModel", "load_model",
]

_SUBMODULES = ("core", "data", "networks", "intervene", "evaluate", "prune", "fingerprint", "experiments", "report",
               "explore", "corpus", "ica", "store")


def __getattr__(name):  # lazy access to the heavier sub-APIs
    if name == "record":
        return importlib.import_module("funcnet.data.record").record
    if name in _SUBMODULES:
        return importlib.import_module(f"funcnet.{name}")
    raise AttributeError(f"module 'funcnet' has no attribute '{name}'")
