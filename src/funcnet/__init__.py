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
from funcnet._defaults import DEFAULT_MODEL
from funcnet._version import __version__
from funcnet.errors import FuncnetError

_compat.install()

#: the top-level API, imported on first use (``import funcnet`` stays light: the command line's
#: ``--help`` starts without torch)
_LAZY = {"ArchAdapter": "funcnet.core.adapters", "get_adapter": "funcnet.core.adapters",
         "register_adapter": "funcnet.core.adapters", "supported_families": "funcnet.core.adapters",
         "LoadedModel": "funcnet.core.loaded", "load_model": "funcnet.core.models"}

__all__ = [
    "__version__", "ArchAdapter", "get_adapter", "register_adapter", "supported_families",
    "FuncnetError", "DEFAULT_MODEL", "LoadedModel", "load_model",
]

_SUBMODULES = ("core", "data", "networks", "intervene", "evaluate", "prune", "fingerprint", "experiments", "report",
               "explore", "corpus", "ica", "store")


def __getattr__(name):  # lazy access to the heavier sub-APIs
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "record":
        return importlib.import_module("funcnet.data.record").record
    if name in _SUBMODULES:
        return importlib.import_module(f"funcnet.{name}")
    raise AttributeError(f"module 'funcnet' has no attribute '{name}'")
