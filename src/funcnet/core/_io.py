"""Small I/O helpers shared by every module: atomic writes, hashing, seeding."""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from funcnet._version import __version__
from funcnet.errors import FuncnetError


#: the file funcnet writes into every output folder it creates: which entries it wrote, so that
#: ``--overwrite`` replaces only funcnet's own output and never a folder holding anything else
OUTPUT_MARKER = ".funcnet-output.json"


def protected_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` may never be replaced or filled as an output folder (None if it may): the
    filesystem root, the home folder, the working folder or one of its parents."""
    p = Path(path).expanduser().absolute().resolve()
    if p == Path(p.anchor):
        return "the filesystem root"
    if p == Path.home().resolve():
        return "the home folder"
    cwd = Path.cwd().resolve()
    if p == cwd:
        return "the working folder"
    if p in cwd.parents:
        return "a parent of the working folder"
    return None


def mark_output(folder: str | os.PathLike, kind: str, entries) -> None:
    """Record in ``folder`` that funcnet wrote it (``kind``) and which top-level entries (names or
    glob patterns) are its own."""
    Path(folder, OUTPUT_MARKER).write_text(json.dumps(
        {"kind": kind, "entries": sorted(set(entries) | {OUTPUT_MARKER}), "funcnet_version": __version__}, indent=1))


def foreign_entries(folder: str | os.PathLike, *, known: Iterator[str] | None = None) -> list[str] | None:
    """Entries of ``folder`` that funcnet did not write, or None when funcnet did not write the folder
    at all (no marker and, for outputs of older versions, not every entry among ``known`` names)."""
    folder = Path(folder)
    names = sorted(e.name for e in folder.iterdir())
    marker = folder / OUTPUT_MARKER
    if marker.is_file():
        try:
            allowed = list(json.loads(marker.read_text()).get("entries", [])) + [OUTPUT_MARKER]
        except (OSError, ValueError, AttributeError):
            return None
    elif known is not None:
        allowed = list(known)
        if not names or any(not any(fnmatch.fnmatchcase(n, a) for a in allowed) for n in names):
            return None
    else:
        return None
    return [n for n in names if not any(fnmatch.fnmatchcase(n, a) for a in allowed)]


def check_output(path: str | os.PathLike, *, overwrite: bool = False, is_dir: bool = True, what: str = "output",
                 owned=None) -> Path:
    """Check an output path before any work is done; returns it as an absolute path.

    Refused: a protected folder (:func:`protected_reason`), an existing path without ``overwrite``,
    with ``overwrite`` anything funcnet did not write (``owned(path)`` -> None when it did, else the
    reason; by default a folder whose marker names all of its entries), a file where a folder is
    expected (or the reverse), and a place that cannot be written."""
    p = Path(path).expanduser().absolute()
    why = protected_reason(p)
    if why is not None:
        raise FuncnetError(f"{what} '{path}' is {why}; choose a new folder for --out")
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise FuncnetError(f"{what} '{path}' exists; pass --overwrite to replace it (or choose another --out)")
        if is_dir != p.is_dir():
            raise FuncnetError(f"{what} '{path}' is a {'file' if is_dir else 'folder'}; choose another --out")
        reason = owned(p) if owned is not None else _owned_folder(p)
        if reason is not None:
            raise FuncnetError(f"will not replace '{path}': {reason}")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise FuncnetError(f"cannot write {what} '{path}': no write permission in '{parent}'")
    return p


def _owned_folder(p: Path) -> str | None:
    if not p.is_dir():
        return None
    extra = foreign_entries(p)
    if extra is None:
        return f"funcnet did not write it (no {OUTPUT_MARKER}); remove it yourself or choose another --out"
    if extra:
        return f"it holds files funcnet did not write ({', '.join(extra[:5])}); choose another --out"
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success rename it onto ``path`` atomically.

    On any exception the temporary file/folder is removed and ``path`` is left untouched. An existing
    folder is replaced only when funcnet wrote it and it holds nothing else (see :func:`check_output`);
    it is moved aside first and deleted only after the new one is in place.
    """
    path = Path(path).expanduser().absolute()
    if is_dir:
        why = protected_reason(path)
        if why is not None:
            raise FuncnetError(f"'{path}' is {why}; choose a new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual permissions
    try:
        yield tmp
        if is_dir and path.exists():
            reason = _owned_folder(path)
            if reason is not None:
                raise FuncnetError(f"will not replace '{path}': {reason}")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (never leaves a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default))


def json_default(o: Any):
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths; anything else as its str()."""
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


_json_default = json_default


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def file_digest(path: str | os.PathLike, *, quick: bool = True) -> str:
    """sha256 of a file; ``quick`` hashes size + first and last MiB (enough to key a cache)."""
    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if quick and size > 4 << 20:
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
        else:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """funcnet's cache folder: ``$FUNCNET_CACHE`` or ``~/.cache/funcnet``."""
    root = os.environ.get("FUNCNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "funcnet"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the Hugging Face Hub accepts a TCP connection within ``timeout`` seconds.

    Runs in a daemon thread so that a hanging DNS lookup cannot block longer than ``timeout``.
    """
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    import socket
    import threading

    ok: list[bool] = []

    def probe():
        try:
            conn = socket.create_connection((host, 443), timeout=timeout)
        except OSError:
            return
        if conn is not None:      # None only when a test replaced the socket function
            conn.close()
            ok.append(True)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.2)
    return bool(ok)
