"""Old import paths of funcnet 0.1 (one module per job at the top level) keep working: each is an
alias of the module that now holds its code, with a DeprecationWarning that names the new path.

``import funcnet.corpus`` and ``from funcnet.corpus import load_corpus`` give the module
:mod:`funcnet.data.corpus` itself (same object, private helpers included)."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> new module
MOVED = {
    "funcnet.adapters": "funcnet.core.adapters",
    "funcnet.models": "funcnet.core.models",
    "funcnet._io": "funcnet.core._io",
    "funcnet.shrink": "funcnet.core.shrink",
    "funcnet.corpus": "funcnet.data.corpus",
    "funcnet.store": "funcnet.data.store",
    "funcnet.record": "funcnet.data.record",
    "funcnet.ica": "funcnet.networks.canica",
    "funcnet.plots": "funcnet.report.plots",
    "funcnet.models_cli": "funcnet.cli.info",
    "funcnet.demo": "funcnet.cli.demo",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):  # the target module is already executed
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
