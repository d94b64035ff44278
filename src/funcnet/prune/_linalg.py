"""Small linear-algebra helpers of the pruning stages."""
from __future__ import annotations

import numpy as np
import torch


def _ridge_solve(S_kk: torch.Tensor, S_rk: torch.Tensor, ridge: float) -> torch.Tensor:
    """A = S_rk (S_kk + ridge diag(S_kk))^-1, S_kk symmetric PSD (float64)."""
    d = torch.diagonal(S_kk).clamp_min(0)
    floor = 1e-12 * max(float(d.mean()), 1e-30)
    M = S_kk.clone()
    M.diagonal().add_(ridge * d + floor)  # no dense diagonal matrix
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0:  # not positive definite (e.g. ridge 0 with collinear neurons): least-norm solution
        return torch.linalg.lstsq(M, S_rk.T, driver="gelsd").solution.T
    return torch.cholesky_solve(S_rk.T, L).T


def _strongest(strength: np.ndarray, most: int) -> np.ndarray:
    """Indices (sorted) of the positive entries of ``strength``, at most ``most`` of the largest."""
    cand = np.flatnonzero(strength > 0)
    if len(cand) > most:
        cand = cand[np.argsort(-strength[cand], kind="stable")[:most]]
    return np.sort(cand)


def _standardize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)
