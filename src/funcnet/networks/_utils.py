"""Shared helpers of the group-ICA modules: LAPACK thread control, seeds, tensor conversion."""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import torch

from funcnet.errors import FuncnetError


# LAPACK decompositions (eigh / svd) run single-threaded on CPU: on a shared machine with more
# busy threads than cores, OpenMP barrier spinning makes a 1536 x 1536 eigh 30x slower with 2
# threads than with 1 (measured: 43 s vs 1.2 s), and the small batched k x k ones 100x slower.
_thread_lock = threading.Lock()
_thread_users = 0
_thread_saved = 1


@contextlib.contextmanager
def _lapack_threads(t: torch.Tensor):
    global _thread_users, _thread_saved
    if t.device.type != "cpu" or os.environ.get("FUNCNET_LAPACK_THREADS") == "all":
        yield
        return
    with _thread_lock:
        if _thread_users == 0:
            _thread_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _thread_users += 1
    try:
        yield
    finally:
        with _thread_lock:
            _thread_users -= 1
            if _thread_users == 0:
                torch.set_num_threads(_thread_saved)


def _eigh(A: torch.Tensor):
    with _lapack_threads(A):
        return torch.linalg.eigh(A)


def _svd(A: torch.Tensor):
    with _lapack_threads(A):
        return torch.linalg.svd(A, full_matrices=False)


def _resolve_seed(random_state) -> int:
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    raise FuncnetError(f"random_state must be an int or None, got {type(random_state).__name__}")


def _run_seeds(seed: int, n: int) -> list[int]:
    """Seed of run 0 is ``seed`` itself; the others are derived deterministically from it."""
    seeds = [int(seed)]
    for i in range(1, n):
        seeds.append(int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, i]).generate_state(1)[0]))
    return seeds


def _to_tensor(a, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to(device=device, dtype=dtype)
    a = np.asarray(a)
    if a.dtype == np.float16 or not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)


def _is_float64(a) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == torch.float64
    return getattr(a, "dtype", None) == np.float64

