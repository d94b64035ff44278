"""Library modules for the command line, imported when a command first uses them, not when its
arguments are parsed: an argument error answers without importing torch. A lazy module is the
real module (``sys.modules`` holds it), executed on its first attribute access
(:class:`importlib.util.LazyLoader`). Only funcnet's top-level subpackages are loaded this way,
since finding a deeper module would import its (heavy) parent package."""
from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    if name.count(".") != 1 or not name.startswith("funcnet."):
        raise ValueError(f"lazy_module loads funcnet's top-level subpackages only, not {name}")
    spec = importlib.util.find_spec(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
