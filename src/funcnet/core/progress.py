"""The one progress switch: bars show unless the caller asks for none or ``FUNCNET_NO_PROGRESS=1``."""
from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_enabled(requested: bool = True) -> bool:
    """Whether a progress bar should show: ``requested`` and not switched off by ``FUNCNET_NO_PROGRESS=1``."""
    return bool(requested) and os.environ.get("FUNCNET_NO_PROGRESS") != "1"


def progress_bar(iterable=None, *, enabled: bool = True, **kw) -> tqdm:
    """A tqdm bar on stderr, disabled unless :func:`progress_enabled`."""
    kw.setdefault("file", sys.stderr)
    return tqdm(iterable, disable=not progress_enabled(enabled), **kw)
