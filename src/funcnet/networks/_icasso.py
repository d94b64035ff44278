"""ICASSO stability clustering of pooled FastICA runs, and the helpers that compare maps and
subspaces (matched |r|, principal angles, Amari distance)."""
from __future__ import annotations

import numpy as np
import torch

from funcnet.errors import FuncnetError

__all__ = ["amari_distance", "match_maps", "subspace_overlap"]

_REPRO_R = 0.9              # |r| threshold of ``reproducibility_``


# ============================================================================ comparison helpers
def _as_np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def subspace_overlap(A, B) -> float:
    """Mean squared canonical correlation (cos^2 of the principal angles) between the column
    spaces of A [n, a] and B [n, b]; 1 = the smaller space lies inside the other, 0 = orthogonal.
    Rows-as-maps input ([k, n] with k < n) is accepted and transposed."""
    A, B = _as_np(A), _as_np(B)
    if A.shape[0] < A.shape[1]:
        A = A.T
    if B.shape[0] < B.shape[1]:
        B = B.T
    if A.shape[0] != B.shape[0]:
        raise FuncnetError(f"subspaces live in different dimensions: {A.shape[0]} and {B.shape[0]}")
    qa, _ = np.linalg.qr(A)
    qb, _ = np.linalg.qr(B)
    s = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.mean(np.clip(s, 0, 1) ** 2))


def _corr(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    A = A - A.mean(axis=1, keepdims=True)
    B = B - B.mean(axis=1, keepdims=True)
    A = A / np.maximum(np.linalg.norm(A, axis=1, keepdims=True), 1e-300)
    B = B / np.maximum(np.linalg.norm(B, axis=1, keepdims=True), 1e-300)
    return A @ B.T


def match_maps(A, B) -> tuple[float, np.ndarray]:
    """Match the maps (rows) of A [a, n] to those of B [b, n] one-to-one by |Pearson r|
    (Hungarian algorithm). Returns (mean matched |r| over the min(a, b) pairs, pairs [m, 3]
    with columns (row in A, row in B, |r|))."""
    from scipy.optimize import linear_sum_assignment

    A, B = _as_np(A), _as_np(B)
    if A.ndim == 1:
        A = A[None]
    if B.ndim == 1:
        B = B[None]
    if A.shape[1] != B.shape[1]:
        raise FuncnetError(f"maps have different lengths: {A.shape[1]} and {B.shape[1]}")
    C = np.abs(_corr(A, B))
    ri, ci = linear_sum_assignment(-C)
    pairs = np.stack([ri, ci, C[ri, ci]], axis=1)
    return float(C[ri, ci].mean()) if len(ri) else 0.0, pairs


def amari_distance(W, A) -> float:
    """Amari distance of the unmixing W [k, m] against the true mixing A [m, k]: 0 when W A is
    a scaled permutation, normalized to [0, 1]."""
    P = np.abs(_as_np(W) @ _as_np(A))
    k = P.shape[0]
    if k < 2:
        return 0.0
    rows = (P.sum(axis=1) / P.max(axis=1) - 1).sum()
    cols = (P.sum(axis=0) / P.max(axis=0) - 1).sum()
    return float((rows + cols) / (2 * k * (k - 1)))


# ============================================================================ ICASSO
_CORR_BLOCK = 1 << 16       # neurons per block when correlating float32 maps in float64


def _abs_corr(Z) -> np.ndarray:
    """|r| between the pooled z-scored maps Z [maps, n] (numpy or torch, any device): |Z Z^T| / n
    as a float64 numpy matrix [maps, maps]. Only this small matrix leaves the device; float32 maps
    are correlated in float64 blocks of neurons (no float64 copy of all maps)."""
    if isinstance(Z, np.ndarray) or (Z.device.type == "cpu" and Z.dtype == torch.float64):
        Zn = Z if isinstance(Z, np.ndarray) else Z.numpy()
        return np.abs(Zn @ Zn.T) / Zn.shape[1]     # (as before: one float64 GEMM on the host)
    n = Z.shape[1]
    if Z.dtype == torch.float64:
        C = Z @ Z.T
    else:
        C = torch.zeros(Z.shape[0], Z.shape[0], dtype=torch.float64, device=Z.device)
        for s in range(0, n, _CORR_BLOCK):
            b = Z[:, s:s + _CORR_BLOCK].double()
            C += b @ b.T
            del b
    return (C.abs() / n).cpu().numpy()


def _icasso(Z: np.ndarray | None, n_runs: int, k: int, C: np.ndarray | None = None):
    """Cluster the pooled z-scored maps Z [n_runs*k, n] into k clusters (average linkage on
    1 - |r|; ``C``: their |r| matrix from :func:`_abs_corr`, instead of Z). Returns centrotype
    indices, Iq, reproducibility, cluster sizes, labels."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if C is None:
        C = _abs_corr(Z)
    np.fill_diagonal(C, 1.0)
    C = np.clip(C, 0.0, 1.0)
    D = 1.0 - C
    np.fill_diagonal(D, 0.0)
    L = linkage(squareform(D, checks=False), method="average")
    labels = fcluster(L, t=k, criterion="maxclust") - 1
    n_clusters = int(labels.max()) + 1
    cent, iq, rep, size = [], [], [], []
    run_of = np.repeat(np.arange(n_runs), k)
    for c in range(n_clusters):
        idx = np.flatnonzero(labels == c)
        if len(idx) == 0:
            continue
        sub = C[np.ix_(idx, idx)]
        ct = idx[int(np.argmax(sub.sum(axis=1)))]
        m = len(idx)
        intra = (sub.sum() - m) / (m * (m - 1)) if m > 1 else 0.0
        others = np.flatnonzero(labels != c)
        extra = C[np.ix_(idx, others)].mean() if len(others) else 0.0
        best = np.zeros(n_runs)
        np.maximum.at(best, run_of, C[ct])
        cent.append(ct)
        iq.append(intra - extra)
        rep.append(float((best >= _REPRO_R).mean()))
        size.append(m)
    return np.array(cent), np.array(iq), np.array(rep), np.array(size), labels
