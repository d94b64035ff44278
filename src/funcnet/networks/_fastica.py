"""FastICA in torch: whitening, batched parallel (symmetric) fixed-point iteration, seeded
starting matrices, and the sign / scale conventions of the returned maps."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from funcnet.errors import FuncnetError
from funcnet.networks._utils import _eigh, _resolve_seed, _run_seeds, _svd, _to_tensor

__all__ = ["FastICAResult", "ICAConvergenceWarning", "fastica", "initial_unmixing"]


class ICAConvergenceWarning(UserWarning):
    """Some FastICA runs stopped at ``max_iter`` before reaching ``tol``."""


def initial_unmixing(seed: int, k: int, dtype=torch.float64) -> torch.Tensor:
    """The FastICA starting matrix used for a run with ``seed``: standard normal k x k drawn on
    the CPU with ``torch.Generator().manual_seed(seed)`` (so CPU and CUDA runs start alike)."""
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    return torch.randn(k, k, generator=g, dtype=torch.float64).to(dtype)



def _canon_signs(V: torch.Tensor) -> torch.Tensor:
    """Flip columns so that each column's largest-|.| entry is positive (like sklearn's svd_flip)."""
    if V.shape[1] == 0:
        return V
    idx = V.abs().argmax(dim=0)
    s = torch.sign(V[idx, torch.arange(V.shape[1], device=V.device)])
    s[s == 0] = 1
    return V * s


def _zscore_rows_(A: torch.Tensor) -> torch.Tensor:
    """Z-score the rows of A in place (A is [.., maps, neurons]: no copies of it)."""
    A.sub_(A.mean(dim=-1, keepdim=True))
    sd = A.std(dim=-1, keepdim=True, unbiased=False)
    return A.div_(torch.where(sd > 0, sd, torch.ones_like(sd)))


def _skew_signs(Z: torch.Tensor) -> torch.Tensor:
    """+1/-1 per row of z-scored maps so that the heaviest tail is positive (skewness > 0; ties
    broken by |max| >= |min|)."""
    sk = (Z**3).mean(dim=-1)
    tail = Z.max(dim=-1).values + Z.min(dim=-1).values
    s = torch.where(sk.abs() > 1e-12, torch.sign(sk), torch.sign(tail))
    s[s == 0] = 1
    return s



# ============================================================================ FastICA
@dataclass
class FastICAResult:
    """Output of :func:`fastica` (torch tensors on the compute device)."""

    sources: torch.Tensor      # [runs, k, samples]
    unmixing: torch.Tensor     # [runs, k, k] acting on the whitened data
    whitening: torch.Tensor    # [k, features]: whitened = whitening @ (x - mean)
    mean: torch.Tensor         # [features]
    n_iter: np.ndarray         # [runs]
    converged: np.ndarray      # [runs] bool


def _sym_decorrelation(W: torch.Tensor) -> torch.Tensor:
    """W <- (W W^T)^{-1/2} W, batched over leading dimensions.

    Computed as the polar factor U V^T of the SVD W = U S V^T: the same matrix, but stable when
    W is ill-conditioned (the eigh form squares the condition number and overflows in float32;
    the raw FastICA update routinely has condition numbers > 100 on LLM activations)."""
    U, _, Vh = _svd(W)
    return U @ Vh


def _whiten(X: torch.Tensor, k: int):
    """X [samples, features] -> (Xw [k, samples] with unit covariance, K [k, features], mean).

    For k == features the symmetric (ZCA) whitening C^{-1/2} is used: it is unique, so a given
    starting matrix gives the same run whatever the signs of the input columns' eigenvectors.
    """
    mean = X.mean(dim=0)
    Xc = X - mean
    n, p = Xc.shape
    C = Xc.T @ Xc / n
    d, E = _eigh(C)
    d, E = d.flip(0), E.flip(1)
    if bool(d[min(k, p) - 1] <= d[0] * 1e-12):
        raise FuncnetError(f"FastICA input has rank below n_components={k}")
    if k == p:
        K = (E / torch.sqrt(d)) @ E.T
    else:
        E = _canon_signs(E[:, :k])
        K = (E / torch.sqrt(d[:k])).T
    return K @ Xc.T, K, mean


def _fastica_iterate(Xw: torch.Tensor, W0: torch.Tensor, fun: str, max_iter: int, tol: float):
    """Batched parallel FastICA: Xw [k, n] whitened, W0 [R, k, k]. Converged runs stop updating.
    Everything runs in Xw's dtype (the decorrelation by SVD is stable in float32 too)."""
    R = W0.shape[0]
    n = Xw.shape[1]
    cd = Xw.dtype
    W = _sym_decorrelation(W0.to(cd))
    n_iter = np.full(R, max_iter, dtype=np.int64)
    conv = np.zeros(R, dtype=bool)
    active = torch.arange(R, device=W.device)
    XwT = Xw.T
    for it in range(max_iter):
        Wa = W[active]
        Y = Wa @ Xw                                 # [r, k, n]
        if fun == "cube":
            Y2 = Y * Y
            gp = 3.0 * Y2.mean(dim=-1)
            G = Y2.mul_(Y)
        else:  # logcosh, alpha = 1
            G = torch.tanh(Y)
            gp = (1.0 - G * G).mean(dim=-1)
        del Y
        W1 = (G @ XwT).div_(n).sub_(gp.unsqueeze(-1) * Wa)
        del G
        W1 = _sym_decorrelation(W1)
        lim = ((W1 * Wa).sum(dim=-1).abs() - 1.0).abs().amax(dim=-1)
        W[active] = W1
        done = (lim < tol).cpu().numpy()
        if done.any():
            ids = active.cpu().numpy()[done]
            n_iter[ids] = it + 1
            conv[ids] = True
            active = active[torch.as_tensor(~done, device=W.device)]
            if active.numel() == 0:
                break
    return W, n_iter, conv


def fastica(X, n_components: int | None = None, fun: str = "cube", *, max_iter: int = 300, tol: float = 1e-4,
            random_state: int | None = 0, w_init=None, n_runs: int = 1, device="cpu",
            dtype: torch.dtype = torch.float64, mixed_precision: bool = False,
            max_batch_elems: int = 64_000_000, sources_dtype: torch.dtype | None = None) -> FastICAResult:
    """Parallel (symmetric) FastICA of ``X`` [samples, features] in torch, several runs batched.

    For spatial ICA of neurons, samples = neurons and features = the k reduced dimensions.
    Data are centred and whitened (symmetric ZCA whitening when ``n_components == features``),
    then scikit-learn's ``algorithm="parallel"`` fixed point is iterated:
    ``W <- sym_decorrelation(E[g(W x) x^T] - diag(E[g'(W x)]) W)`` until
    ``max_i ||<w_i_new, w_i>| - 1| < tol`` (per run). ``fun``: "cube" (g = u^3) or "logcosh"
    (g = tanh(u)). Run r starts from ``w_init[r]`` if given, else from
    :func:`initial_unmixing` with the r-th seed derived from ``random_state`` (run 0 uses
    ``random_state`` itself). ``mixed_precision`` iterates in float32 and polishes runs that
    converged there in ``dtype`` (same fixed point, several times faster on CPU).
    ``sources_dtype`` (default ``dtype``): the sources are computed in ``dtype`` one run at a
    time and stored in this dtype (float32 halves the [runs, k, samples] result).
    Returns a :class:`FastICAResult`; ``sources[r]`` is [k, samples].
    """
    if fun not in ("cube", "logcosh"):
        raise FuncnetError(f"fun must be 'cube' or 'logcosh', got {fun!r}")
    X = _to_tensor(X, dtype, device)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise FuncnetError(f"fastica needs a non-empty 2-D [samples, features] array, got shape {tuple(X.shape)}")
    if not bool(torch.isfinite(X).all()):
        raise FuncnetError(f"fastica input contains {int((~torch.isfinite(X)).sum())} NaN/inf values")
    n, p = X.shape
    k = p if n_components is None else int(n_components)
    if k < 1 or k > min(n, p):
        raise FuncnetError(f"n_components={k} must be between 1 and min(samples, features)={min(n, p)}")
    Xw, K, mean = _whiten(X, k)
    if w_init is not None:
        W0 = _to_tensor(w_init, dtype, device)
        if W0.ndim == 2:
            W0 = W0.unsqueeze(0)
        if tuple(W0.shape[1:]) != (k, k):
            raise FuncnetError(f"w_init must be [k, k] or [runs, k, k] with k={k}, got {tuple(W0.shape)}")
    else:
        seeds = _run_seeds(_resolve_seed(random_state), n_runs)
        W0 = torch.stack([initial_unmixing(s, k) for s in seeds]).to(device=device, dtype=dtype)
    R = W0.shape[0]
    # batch the runs so that the [runs, k, samples] temporaries stay bounded
    per = max(1, int(max_batch_elems // max(1, k * n)))
    Ws, its, convs = [], [], []
    for s in range(0, R, per):
        W0b = W0[s:s + per]
        if mixed_precision and dtype != torch.float32:
            W32, it32, c32 = _fastica_iterate(Xw.float(), W0b, fun, max_iter, tol)
            W = W32
            it, c = it32.copy(), c32.copy()
            if c32.any():   # polish converged runs in full precision (same fixed point)
                idx = np.flatnonzero(c32)
                budget = max(1, min(50, max_iter))
                W = W.to(dtype)
                Wp, itp, cp = _fastica_iterate(Xw, W[idx], fun, budget, tol)
                W[idx] = Wp
                it[idx] += itp
                c[idx] = cp
        else:
            W, it, c = _fastica_iterate(Xw, W0b, fun, max_iter, tol)
        Ws.append(W)
        its.append(it)
        convs.append(c)
    W = torch.cat(Ws).to(dtype)
    if sources_dtype is None or sources_dtype == dtype:
        S = W @ Xw
    else:
        S = torch.empty(W.shape[0], k, Xw.shape[1], dtype=sources_dtype, device=Xw.device)
        for r in range(W.shape[0]):
            S[r] = W[r] @ Xw
    return FastICAResult(S, W, K, mean, np.concatenate(its), np.concatenate(convs))
