"""Library modules for the command line, imported when a command first uses them, not when its
arguments are parsed: an argument error answers without importing torch.

``lazy_module(name)`` returns a stand-in whose first attribute access imports the module with
:func:`importlib.import_module` (the ordinary import, so every other importer sees the same module
objects); nothing is put in ``sys.modules`` early, so imports elsewhere are never interleaved with
a half-run package."""
from __future__ import annotations

import importlib
from types import ModuleType


class _LazyModule:
    __slots__ = ("_name", "_module")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


def lazy_module(name: str) -> _LazyModule:
    if not name.startswith("funcnet."):
        raise ValueError(f"lazy_module is for funcnet's own modules, not {name}")
    return _LazyModule(name)
