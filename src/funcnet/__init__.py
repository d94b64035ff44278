"""funcnet: functional networks of neurons in large language models.

Record MLP neuron activations, decompose them with group ICA (CanICA) into functional networks,
lesion / preserve / amplify them, prune a model by keeping them, and fingerprint derived models.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .adapters import ArchAdapter, get_adapter, register_adapter, supported_families
from .errors import FuncnetError
from .models import DEFAULT_MODEL, LoadedModel, load_model

__all__ = [
    "__version__", "ArchAdapter", "get_adapter", "register_adapter", "supported_families",
    "FuncnetError", "DEFAULT_MODEL", "LoadedModel", "load_model",
]


def __getattr__(name):  # lazy access to heavier sub-APIs
    if name == "record":
        from .record import record

        return record
    if name in ("corpus", "ica", "networks", "intervene", "evaluate", "prune", "fingerprint", "report", "store"):
        import importlib

        return importlib.import_module(f"funcnet.{name}")
    raise AttributeError(name)
