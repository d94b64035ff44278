"""Group ICA (CanICA) in torch: standardization, group PCA (exact / randomized / MIGP), batched
FastICA restarts and ICASSO-style stability clustering.

The token x neuron activation matrix of an LLM layer is treated like fMRI data: neurons are
"voxels" (the samples of a *spatial* ICA), tokens are "time points". The result is a set of
spatial maps over neurons (``components_``, k x neurons) with a stability index each.

Two methods:

``method="canica"`` (default, faithful to nilearn's CanICA)
    1. every subject (one text = one document = one 2-D array) is standardized on its own
       (z-score of each neuron over the subject's tokens; a neuron constant within the subject
       becomes 0) and reduced to its top ``k`` components by SVD (rows ``S V^T``);
    2. CCA step (``do_cca``): each of those rows is divided by its norm (rows ``V^T``);
    3. all subjects' rows are stacked and reduced by a group PCA to ``k`` (``reduction``);
    4. FastICA (``fun``, symmetric decorrelation) on the group subspace with neurons as samples,
       ``n_init`` times with seeds derived from ``random_state`` (plus ``n_bootstrap`` runs on
       subject resamples);
    5. instead of nilearn's "keep the sparsest run", ICASSO: all maps of all runs are pooled,
       clustered by average linkage on ``1 - |r|`` into ``k`` clusters, and each cluster's
       centrotype is returned with a stability index.

``method="reference"`` (the papers' recipe)
    concatenate all tokens, z-score every neuron over all tokens (std < eps -> 1), reduce the
    neuron x token matrix to its top-k left singular vectors (neuron x k; computed from the
    neuron x neuron Gram matrix + ``eigh``, not a full SVD), FastICA cube, symmetric
    decorrelation, float64, one run with seed ``random_state``; maps z-scored across neurons.
    With ``n_init > 1`` (or ``n_bootstrap > 0``) the runs are clustered as above.

Documented handling of edge cases
    * constant neurons (std <= 1e-6 x median std over neurons, or exactly constant): their
      standardized activations are 0 (std -> 1), they take no part in the ICA and get loading
      exactly 0 in every map; maps are z-scored over the other neurons;
    * NaN / inf anywhere, an empty input, ``n_components < 1`` or larger than the rank of the
      data: :class:`~funcnet.errors.FuncnetError` with a one-line message;
    * FastICA runs that hit ``max_iter``: one :class:`ICAConvergenceWarning` with the count.

Stability (``stability_``) is ICASSO's cluster quality index
``Iq = mean intra-cluster |r| - mean |r| between the cluster's members and all other maps``
(singleton clusters: intra = 0, so a map found by a single run scores <= 0).
``reproducibility_`` is the fraction of runs that contain a map with ``|r| >= 0.9`` to the
component (its own run included). Components are sorted by ``stability_`` (descending) when
there is more than one run; with a single run there is no stability information, ``stability_``
is NaN and the FastICA order is kept.
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from funcnet.core.progress import progress_enabled
from funcnet.errors import FuncnetError

__all__ = [
    "CanICA",
    "ICAConvergenceWarning",
    "FastICAResult",
    "fastica",
    "initial_unmixing",
    "subspace_overlap",
    "match_maps",
    "amari_distance",
    "fit_many",
]

_BLOCK_ROWS = 8192          # rows per block when streaming an in-memory matrix
_CACHE_BYTES = 1 << 30      # largest group-row matrix kept in memory between reduction passes
_GRAM_MAX = 8192            # largest neuron count for which the neuron x neuron Gram matrix is used
_CONST_RTOL = 1e-6          # a neuron is constant if std <= _CONST_RTOL * median std
_REPRO_R = 0.9              # |r| threshold of ``reproducibility_``


class ICAConvergenceWarning(UserWarning):
    """Some FastICA runs stopped at ``max_iter`` before reaching ``tol``."""


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


# ============================================================================ small helpers


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


def initial_unmixing(seed: int, k: int, dtype=torch.float64) -> torch.Tensor:
    """The FastICA starting matrix used for a run with ``seed``: standard normal k x k drawn on
    the CPU with ``torch.Generator().manual_seed(seed)`` (so CPU and CUDA runs start alike)."""
    g = torch.Generator().manual_seed(int(seed) % (2**63))
    return torch.randn(k, k, generator=g, dtype=torch.float64).to(dtype)


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


# ============================================================================ input handling
class _Data:
    """A re-iterable view of the input as subjects (each a 2-D [tokens, neurons] array).

    In-memory input keeps references to the caller's arrays (no copy); a streamed object is
    re-read (``iter_chunks()``) at every pass and each chunk counts as one subject.
    """

    def __init__(self, X, subjects=None):
        self.stream = None
        self.arrays: list | None = None
        self.index: list | None = None     # per subject: row indices into arrays[0], or None
        if X is None:
            raise FuncnetError("no input data (got None)")
        if hasattr(X, "iter_chunks") and not isinstance(X, (np.ndarray, torch.Tensor)):
            if subjects is not None:
                raise FuncnetError("subjects= cannot be used with streamed input (each chunk is one subject)")
            self.stream = X
            self.in_memory = False
            return
        self.in_memory = True
        if isinstance(X, (list, tuple)):
            if len(X) == 0:
                raise FuncnetError("empty input: the list of subjects is empty")
            if subjects is not None:
                raise FuncnetError("subjects= is only for a single 2-D array (a list already gives the subjects)")
            arrs = []
            for i, a in enumerate(X):
                if not isinstance(a, torch.Tensor):
                    a = np.asarray(a)
                if a.ndim != 2:
                    raise FuncnetError(f"subject {i} must be a 2-D [tokens, neurons] array, got shape {tuple(a.shape)}")
                arrs.append(a)
            widths = {int(a.shape[1]) for a in arrs}
            if len(widths) > 1:
                raise FuncnetError(f"subjects have different neuron counts: {sorted(widths)}")
            self.arrays = arrs
            return
        if not isinstance(X, torch.Tensor):
            X = np.asarray(X)
        if X.ndim != 2:
            raise FuncnetError(f"input must be a 2-D [tokens, neurons] array, got shape {tuple(X.shape)}")
        self.arrays = [X]
        if subjects is not None:
            self.index = self._subject_index(subjects, int(X.shape[0]))

    @staticmethod
    def _subject_index(subjects, n: int) -> list[np.ndarray]:
        s = np.asarray(subjects)
        if s.ndim != 1:
            raise FuncnetError("subjects= must be a 1-D list of lengths or of per-token group labels")
        if len(s) == n:  # per-token labels, subjects in order of first appearance
            _, first, inv = np.unique(s, return_index=True, return_inverse=True)
            order = np.argsort(first)
            rank = np.empty_like(order)
            rank[order] = np.arange(len(order))
            lab = rank[inv]
            srt = np.argsort(lab, kind="stable")
            bounds = np.flatnonzero(np.diff(lab[srt])) + 1
            return list(np.split(srt, bounds))
        if np.issubdtype(s.dtype, np.integer) and (s >= 0).all() and int(s.sum()) == n:
            ends = np.cumsum(s)
            return [np.arange(e - l, e) for l, e in zip(s, ends) if l > 0]
        raise FuncnetError(
            f"subjects= must be lengths summing to the {n} tokens or one group label per token (got {len(s)} values)"
        )

    # -- iteration
    def iter_subjects(self) -> Iterator[tuple[int, Any]]:
        """Yield (token offset, raw 2-D array) per subject (raw: caller's dtype, maybe float16)."""
        if self.stream is not None:
            off = 0
            for c in self.stream.iter_chunks():
                if isinstance(c, tuple):
                    c = c[0]
                if not isinstance(c, torch.Tensor):
                    c = np.asarray(c)
                if c.ndim != 2:
                    raise FuncnetError(f"iter_chunks() must yield 2-D [tokens, neurons] arrays, got shape {tuple(c.shape)}")
                yield off, c
                off += int(c.shape[0])
            return
        if self.index is not None:
            X = self.arrays[0]
            for idx in self.index:
                sel = torch.from_numpy(idx) if isinstance(X, torch.Tensor) else idx
                yield int(idx[0]) if len(idx) else 0, X[sel]
            return
        off = 0
        for a in self.arrays:
            yield off, a
            off += int(a.shape[0])

    def iter_blocks(self, block_rows: int = _BLOCK_ROWS) -> Iterator[tuple[int, int, Any]]:
        """Yield (subject id, token offset, raw row block) with blocks of at most block_rows rows."""
        for sid, (off, a) in enumerate(self.iter_subjects()):
            n = int(a.shape[0])
            for s in range(0, max(n, 1), block_rows):
                yield sid, off + s, a[s:s + block_rows]

    def concatenated(self):
        """All tokens in subject order, as one array (in-memory input only)."""
        if self.index is None and len(self.arrays) == 1:
            return self.arrays[0]
        parts = [a for _, a in self.iter_subjects()]
        if isinstance(parts[0], torch.Tensor):
            return torch.cat([p if isinstance(p, torch.Tensor) else torch.from_numpy(np.asarray(p)) for p in parts])
        return np.concatenate([np.asarray(p) for p in parts])


@dataclass
class _Stats:
    n_tokens: int
    n_features: int
    mean: torch.Tensor      # float64 [N]
    std: torch.Tensor       # float64 [N]
    const: torch.Tensor     # bool [N]
    lengths: list[int]      # tokens per subject
    float64: bool


def _stats_pass(data: _Data, device) -> _Stats:
    """One streaming pass: per-neuron mean / std (Chan's merge in float64), NaN/inf census,
    subject lengths."""
    n = 0
    mean = m2 = None
    lengths: list[int] = []
    bad_total = 0
    bad_cols = None
    first_bad = None
    f64 = None
    width = None
    for sid, off, b in data.iter_blocks():
        if f64 is None:
            f64 = _is_float64(b)
        if width is None:
            width = int(b.shape[1])
            bad_cols = torch.zeros(width, dtype=torch.bool, device=device)
        elif int(b.shape[1]) != width:
            raise FuncnetError(f"chunks have different neuron counts: {width} and {int(b.shape[1])}")
        while len(lengths) <= sid:
            lengths.append(0)
        nb = int(b.shape[0])
        lengths[sid] += nb
        if nb == 0 or width == 0:
            continue
        # float32 (or the caller's float64) blocks, float64 accumulators: no float64 copy of the data
        t = _to_tensor(b, torch.float64 if f64 else torch.float32, device)
        fin = torch.isfinite(t)
        if not bool(fin.all()):
            bad = ~fin
            cnt = int(bad.sum())
            bad_total += cnt
            bad_cols |= bad.any(dim=0)
            if first_bad is None:
                r, c = (int(v) for v in bad.nonzero()[0])
                first_bad = (off + r, c)
            continue
        mb = t.sum(dim=0, dtype=torch.float64) / nb
        d = t - mb.to(t.dtype)
        m2b = (d * d).sum(dim=0, dtype=torch.float64)
        del d
        if mean is None:
            mean, m2 = mb, m2b
        else:
            tot = n + nb
            delta = mb - mean
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n += nb
    if bad_total:
        r, c = first_bad
        raise FuncnetError(
            f"activations contain {bad_total} NaN/inf values in {int(bad_cols.sum())} neuron(s) "
            f"(first at token {r}, neuron {c}); clean or drop them before the ICA"
        )
    n_tok = sum(lengths)
    if width is None or n_tok == 0 or width == 0:
        raise FuncnetError(f"empty input: {n_tok} tokens x {width or 0} neurons")
    std = torch.sqrt(m2 / n)
    ref = torch.median(std)
    thr = _CONST_RTOL * float(ref) if float(ref) > 0 else 0.0
    const = std <= thr
    return _Stats(n_tok, width, mean, std, const, lengths, bool(f64))


# ============================================================================ group matrix producers
class _RowsProducer:
    """Re-iterable source of the row blocks of the matrix the group PCA reduces.

    ``weights`` (bootstrap multiplicities) are per subject, or per token when there is one subject.
    """

    def __init__(self, est: "CanICA", data: _Data, stats: _Stats, cdtype, device, k: int):
        self.est, self.data, self.stats, self.cdtype, self.device, self.k = est, data, stats, cdtype, device, k
        self.keep = (~stats.const).to(cdtype)
        self.mean = stats.mean.to(cdtype)
        self.scale = torch.where(stats.const, torch.ones_like(stats.std), stats.std).to(cdtype)
        self.n_rows = 0
        self.total_ss = 0.0

    def _weights_for(self, weights, sid, off, nb):
        if weights is None:
            return None
        if weights["unit"] == "subject":
            return float(weights["w"][sid])
        return weights["w"][off:off + nb]

    def blocks(self, weights=None) -> Iterator[torch.Tensor]:
        raise NotImplementedError


class _ReferenceRows(_RowsProducer):
    """Globally standardized tokens (the papers' recipe)."""

    def blocks(self, weights=None):
        n_rows, ss = 0, 0.0
        for sid, off, b in self.data.iter_blocks():
            nb = int(b.shape[0])
            if nb == 0:
                continue
            w = self._weights_for(weights, sid, off, nb)
            if w is not None and not isinstance(w, float):
                wt = torch.as_tensor(w, device=self.device)
                sel = wt > 0
                if not bool(sel.any()):
                    continue
                t = _to_tensor(b, self.cdtype, self.device)[sel]
                sw = torch.sqrt(wt[sel].to(self.cdtype))[:, None]
            elif w is not None:
                if w <= 0:
                    continue
                t = _to_tensor(b, self.cdtype, self.device)
                sw = math.sqrt(w)
            else:
                t = _to_tensor(b, self.cdtype, self.device)
                sw = None
            t = (t - self.mean) * self.keep
            if self.est.standardize:
                t = t / self.scale
            if sw is not None:
                t = t * sw
            n_rows += int(t.shape[0])
            ss += float((t.double() ** 2).sum()) if self.cdtype != torch.float64 else float((t**2).sum())
            yield t
        self.n_rows, self.total_ss = n_rows, ss


class _CanICARows(_RowsProducer):
    """Per subject: own standardization, top-k SVD (rows S V^T), CCA row normalization."""

    def blocks(self, weights=None):
        n_rows, ss = 0, 0.0
        k = self.k
        for sid, (off, a) in enumerate(self.data.iter_subjects()):
            nb = int(a.shape[0])
            if nb == 0:
                continue
            w = self._weights_for(weights, sid, off, nb)
            t = _to_tensor(a, self.cdtype, self.device)
            if w is not None and not isinstance(w, float):
                wt = torch.as_tensor(w, device=self.device)
                sel = wt > 0
                t, rw = t[sel], wt[sel].to(self.cdtype)
            else:
                if w is not None and w <= 0:
                    continue
                rw = None
            if t.shape[0] < 2:
                continue
            # one copy of the subject (t - mu), then in place: peak memory ~2x the largest subject
            if rw is None:
                mu = t.mean(dim=0)
                t = t - mu
                var = (t * t).mean(dim=0)
            else:
                tot = rw.sum()
                mu = (t * rw[:, None]).sum(dim=0) / tot
                t = t - mu
                var = (t * t * rw[:, None]).sum(dim=0) / tot
            t.mul_(self.keep)
            if self.est.standardize:
                sd = torch.sqrt(var)
                ref = torch.median(sd[self.keep > 0]) if bool((self.keep > 0).any()) else sd.max()
                sd = torch.where(sd <= _CONST_RTOL * ref, torch.ones_like(sd), sd)
                t.div_(sd)
            if rw is not None:
                t = t * torch.sqrt(rw)[:, None]
            S, Vt = _top_right(t, k)
            if isinstance(w, float):
                S = S * math.sqrt(w)
            good = S > S.max() * (1e-6 if self.cdtype != torch.float64 else 1e-12) if S.numel() else S > 0
            S, Vt = S[good], Vt[good]
            if S.numel() == 0:
                continue
            rows = Vt if self.est.do_cca else Vt * S[:, None]
            if self.est.do_cca and isinstance(w, float) and w != 1.0:
                rows = rows * math.sqrt(w)   # bootstrap multiplicity of the subject
            n_rows += int(rows.shape[0])
            ss += float((rows.double() ** 2).sum())
            yield rows
        self.n_rows, self.total_ss = n_rows, ss


def _top_right(t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k singular values and right singular vectors (rows) of t [rows, N], via the Gram
    matrix of the smaller side and a float64 eigh."""
    R, N = t.shape
    k = min(k, R, N)
    if R <= N:
        # float32 data: float32 eigh of the token Gram matrix (3x faster; the data carry no more)
        K = t @ t.T if t.dtype == torch.float32 else (t @ t.T).double()
        ev, U = _eigh(K)
        ev, U = ev.double(), U.double()
        ev, U = ev.flip(0)[:k], U.flip(1)[:, :k]
        s = torch.sqrt(torch.clamp(ev, min=0))
        inv = torch.where(s > 0, 1.0 / s, torch.zeros_like(s))
        Vt = (U.T.to(t.dtype) @ t) * inv.to(t.dtype)[:, None]
        return s.to(t.dtype), Vt
    G = (t.T @ t).double()
    ev, V = _eigh(G)
    ev, V = ev.flip(0)[:k], V.flip(1)[:, :k]
    return torch.sqrt(torch.clamp(ev, min=0)).to(t.dtype), V.T.to(t.dtype)


# ============================================================================ group PCA
def _coalesce(blocks, min_rows: int = 4096) -> Iterator[torch.Tensor]:
    """Concatenate consecutive small row blocks (e.g. one per 128-token subject) into blocks of at
    least ``min_rows`` rows: one large GEMM per block instead of many small ones, and fewer float64
    accumulations of the N x N Gram matrix (2x faster on CPU for 128-row subjects)."""
    buf, rows = [], 0
    for b in blocks:
        buf.append(b)
        rows += int(b.shape[0])
        if rows >= min_rows:
            yield buf[0] if len(buf) == 1 else torch.cat(buf)
            buf, rows = [], 0
    if buf:
        yield buf[0] if len(buf) == 1 else torch.cat(buf)


def _reduce_exact(producer: _RowsProducer, N: int, k: int, weights, materialized=None):
    blocks = materialized if materialized is not None else producer.blocks(weights)
    if materialized is not None and sum(int(b.shape[0]) for b in materialized) < N:
        M = torch.cat(materialized)          # fewer rows than neurons: the dual (row) Gram matrix
        S, Vt = _top_right(M, M.shape[0])
        return Vt[:k].T.double(), (S.double() ** 2)
    if N <= _GRAM_MAX:
        G = None
        for b in _coalesce(blocks):
            g = b.T @ b
            if G is None:
                G = g.double()
            else:
                G.add_(g)          # in place, promoted to float64 element by element: no N x N temporaries
            del g, b
        if G is None:
            raise FuncnetError("empty input: no rows left to reduce")
        # float32 data: float32 eigh (3x faster; eigenvectors good to ~1e-6 relative)
        ev, V = _eigh(G.to(producer.cdtype))
        ev, V = ev.double(), V.double()
        return V.flip(1)[:, :k], ev.flip(0)
    M = torch.cat(list(blocks))
    S, Vt = _top_right(M, M.shape[0])
    return Vt[:k].T.double(), (S.double() ** 2)


def _reduce_randomized(producer: _RowsProducer, N: int, k: int, weights, seed: int, n_iter: int = 4,
                       materialized=None):
    q = min(N, k + max(10, k // 5))
    g = torch.Generator().manual_seed(seed)
    dev = producer.device
    Q = torch.randn(N, q, generator=g, dtype=torch.float64).to(dev)
    with _lapack_threads(Q):
        Q, _ = torch.linalg.qr(Q)

    def passes():
        return materialized if materialized is not None else producer.blocks(weights)

    for _ in range(n_iter):
        Y = torch.zeros(N, q, dtype=torch.float64, device=dev)
        Qc = Q.to(producer.cdtype)
        for b in passes():
            Y += (b.T @ (b @ Qc)).double()
        with _lapack_threads(Y):
            Q, _ = torch.linalg.qr(Y)
    H = torch.zeros(q, q, dtype=torch.float64, device=dev)
    Qc = Q.to(producer.cdtype)
    for b in passes():
        P = b @ Qc
        H += (P.T @ P).double()
    ev, U = _eigh(H)
    ev, U = ev.flip(0), U.flip(1)
    return (Q @ U)[:, :k], ev


def _reduce_migp(producer: _RowsProducer, N: int, k: int, weights, m: int):
    W = None
    dt = producer.cdtype

    def shrink(W):
        K = (W @ W.T).double()
        ev, U = _eigh(K)
        U = U.flip(1)[:, :m]
        return U.T.to(dt) @ W

    for b in producer.blocks(weights):
        for s in range(0, int(b.shape[0]), m):
            piece = b[s:s + m]
            W = piece if W is None else torch.cat([W, piece])
            if W.shape[0] > m:
                W = shrink(W)
    if W is None:
        raise FuncnetError("empty input: no rows left to reduce")
    S, Vt = _top_right(W, W.shape[0])
    return Vt[:k].T.double(), S.double() ** 2


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
            max_batch_elems: int = 64_000_000) -> FastICAResult:
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
    S = W @ Xw
    return FastICAResult(S, W, K, mean, np.concatenate(its), np.concatenate(convs))


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
def _icasso(Z: np.ndarray, n_runs: int, k: int):
    """Cluster the pooled z-scored maps Z [n_runs*k, n] into k clusters (average linkage on
    1 - |r|). Returns centrotype indices, Iq, reproducibility, cluster sizes, labels."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    nmaps, n = Z.shape
    C = np.abs(Z @ Z.T) / n
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


# ============================================================================ estimator
class CanICA:
    """Group ICA of neuron activations (scikit-learn conventions; see the module docstring).

    Parameters
    ----------
    n_components : number of components k.
    n_init : FastICA restarts on the full data (seeds derived from ``random_state``).
    fun : "cube" or "logcosh" FastICA contrast.
    max_iter, tol : FastICA stopping rule (scikit-learn's).
    random_state : int seed (same seed -> same maps) or None.
    device : "cpu", "cuda" or "cuda:N"; the same code runs on both.
    standardize : z-score each neuron over tokens (constant neurons: std -> 1, i.e. they stay 0);
        False: only centre.
    reduction : "auto" | "exact" (Gram matrix + eigh) | "randomized" (randomized range finder,
        streamed passes) | "incremental" (MIGP: memory O(migp_rows x neurons), one pass).
        "auto" = exact up to 8192 neurons (or when the rows fit and are fewer), else randomized.
    do_cca : CCA step of CanICA (normalize each subject's component rows).
    method : "canica" or "reference" (see the module docstring).
    n_bootstrap : extra runs, each on a resample (with replacement) of the subjects (of the
        tokens when there is a single subject), pooled with the n_init runs for ICASSO.
    min_stability : keep only components with ``stability_ >= min_stability``.
    dtype : precision of the ICA (default float64).
    mixed_precision : iterate FastICA in float32 and polish converged runs in ``dtype``;
        "auto" = True for method="canica", False for method="reference" (exact recipe).
    migp_rows : rows kept by MIGP (default max(4k, 256)).

    Fitted attributes: ``components_`` [k, neurons] (z-scored maps, heaviest tail positive,
    constant neurons 0), ``stability_`` [k], ``reproducibility_`` [k], ``cluster_sizes_`` [k],
    ``source_index_`` [k, 2] (run, component in run) of each returned map, ``order_`` [k] (the
    pre-sort index of each component: cluster id, or FastICA index with one run),
    ``explained_variance_`` / ``explained_variance_ratio_`` [k] of the group PCA,
    ``subspace_`` [neurons, k] orthonormal basis of the reduction, ``mean_`` / ``scale_`` /
    ``constant_`` [neurons] (global standardization), ``n_iter_`` / ``converged_`` [runs],
    ``seeds_`` [runs], ``n_tokens_``, ``n_subjects_``, ``n_features_in_``, ``reduction_``
    (the method used), ``time_courses_`` [tokens, k] when the fit data were in memory, also as
    ``mixing_`` (scikit-learn's name: in a spatial ICA the mixing matrix is the time courses).
    """

    def __init__(self, n_components: int = 20, n_init: int = 10, fun: str = "cube", max_iter: int = 300,
                 tol: float = 1e-4, random_state: int | None = 0, device: str = "cpu", standardize: bool = True,
                 reduction: str = "auto", do_cca: bool = True, method: str = "canica", n_bootstrap: int = 0,
                 min_stability: float | None = None, dtype: torch.dtype = torch.float64,
                 mixed_precision: bool | str = "auto", migp_rows: int | None = None):
        self.n_components = n_components
        self.n_init = n_init
        self.fun = fun
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.device = device
        self.standardize = standardize
        self.reduction = reduction
        self.do_cca = do_cca
        self.method = method
        self.n_bootstrap = n_bootstrap
        self.min_stability = min_stability
        self.dtype = dtype
        self.mixed_precision = mixed_precision
        self.migp_rows = migp_rows

    # ------------------------------------------------------------------ sklearn plumbing
    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in (
            "n_components", "n_init", "fun", "max_iter", "tol", "random_state", "device", "standardize",
            "reduction", "do_cca", "method", "n_bootstrap", "min_stability", "dtype", "mixed_precision",
            "migp_rows")}

    def set_params(self, **params) -> "CanICA":
        for k, v in params.items():
            if k not in self.get_params():
                raise FuncnetError(f"CanICA has no parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        return f"CanICA(n_components={self.n_components}, n_init={self.n_init}, method={self.method!r})"

    def _check_params(self):
        k = self.n_components
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise FuncnetError(f"n_components must be an integer >= 1, got {k!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise FuncnetError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if self.n_bootstrap < 0:
            raise FuncnetError(f"n_bootstrap must be >= 0, got {self.n_bootstrap!r}")
        if self.fun not in ("cube", "logcosh"):
            raise FuncnetError(f"fun must be 'cube' or 'logcosh', got {self.fun!r}")
        if self.method not in ("canica", "reference"):
            raise FuncnetError(f"method must be 'canica' or 'reference', got {self.method!r}")
        if self.reduction not in ("auto", "exact", "randomized", "incremental"):
            raise FuncnetError(
                f"reduction must be 'auto', 'exact', 'randomized' or 'incremental', got {self.reduction!r}")
        if self.dtype not in (torch.float32, torch.float64):
            raise FuncnetError(f"dtype must be torch.float32 or torch.float64, got {self.dtype!r}")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise FuncnetError(f"bad device {self.device!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FuncnetError(f"device {self.device!r} requested but CUDA is not available")
        return dev

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, subjects=None) -> "CanICA":
        """Fit on ``X``: a [tokens, neurons] array / tensor (``subjects=``: lengths or per-token
        labels), a list of per-subject arrays, or an object with ``iter_chunks()`` (streamed, each
        chunk one subject; re-read at each pass)."""
        dev = self._check_params()
        k = int(self.n_components)
        seed = _resolve_seed(self.random_state)
        data = _Data(X, subjects)
        stats = _stats_pass(data, dev)
        N = stats.n_features
        n_active = int((~stats.const).sum())
        if n_active == 0:
            raise FuncnetError(f"all {N} neurons are constant: nothing to decompose")
        n_subj = len(stats.lengths)
        if self.method == "reference":
            bound = min(stats.n_tokens - 1, n_active)
        else:
            bound = min(sum(min(k, max(t - 1, 0)) for t in stats.lengths), n_active)
        if k > bound:
            raise FuncnetError(
                f"n_components={k} exceeds the rank of the data (at most {bound}: {stats.n_tokens} tokens in "
                f"{n_subj} subject(s), {n_active} non-constant neurons)")
        cdtype = torch.float64 if stats.float64 else torch.float32
        Prod = _ReferenceRows if self.method == "reference" else _CanICARows
        producer = Prod(self, data, stats, cdtype, dev, k)

        red = self.reduction
        if red == "auto":
            red = "exact" if N <= _GRAM_MAX else "randomized"
            if red == "randomized" and data.in_memory and self.method == "reference" and stats.n_tokens <= _GRAM_MAX:
                red = "exact"   # dual Gram on the (few) tokens
        self.reduction_ = red
        m = int(self.migp_rows or max(4 * k, 256))

        # canica's group rows (at most k per subject) are kept only when the reduction needs them
        # more than once (randomized: several passes) or all together (exact with fewer rows than
        # neurons: the dual Gram matrix), and only within the budget; the exact reduction of more
        # rows than neurons accumulates the neuron Gram matrix in one streamed pass, so its memory
        # does not grow with the number of subjects
        n_rows_max = sum(min(k, t) for t in stats.lengths)
        row_bytes = n_rows_max * N * (8 if cdtype == torch.float64 else 4)
        need_rows = red == "randomized" or (red == "exact" and n_rows_max < N)
        cache = (self.method == "canica" and need_rows and row_bytes <= _CACHE_BYTES) or (
            red == "exact" and data.in_memory and stats.n_tokens < N)

        def reduce(weights, rseed):
            mat = list(producer.blocks(weights)) if cache else None
            if red == "exact":
                V, ev = _reduce_exact(producer, N, k, weights, mat)
            elif red == "randomized":
                V, ev = _reduce_randomized(producer, N, k, weights, rseed, materialized=mat)
            else:
                V, ev = _reduce_migp(producer, N, k, weights, m)
            tol_rank = (1e-10 if cdtype == torch.float64 else 1e-5) * float(ev[0]) if ev.numel() else 0.0
            rank = int((ev > tol_rank).sum())
            if rank < k:
                raise FuncnetError(f"n_components={k} exceeds the numerical rank {rank} of the data")
            return _canon_signs(V[:, :k]), ev[:k], producer.n_rows, producer.total_ss

        V, ev, n_rows, total_ss = reduce(None, seed)
        self.subspace_ = V.cpu()
        self.explained_variance_ = (ev / max(n_rows - 1, 1)).cpu().numpy()
        self.explained_variance_ratio_ = (ev / total_ss).cpu().numpy() if total_ss > 0 else np.zeros(k)

        # ---------------------------------------------------------- ICA runs
        mixed = self.mixed_precision
        if mixed == "auto":
            mixed = self.method == "canica"
        active = ~stats.const
        seeds = _run_seeds(seed, self.n_init + self.n_bootstrap)
        subspaces = [(V, seeds[: self.n_init])]
        if self.n_bootstrap:
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 7919]))
            for b in range(self.n_bootstrap):
                if n_subj >= 2:
                    w = {"unit": "subject", "w": rng.multinomial(n_subj, np.full(n_subj, 1 / n_subj)).astype(float)}
                else:
                    T = stats.n_tokens
                    w = {"unit": "token", "w": rng.multinomial(T, np.full(T, 1 / T)).astype(np.float64)}
                Vb, _, _, _ = reduce(w, seeds[self.n_init + b])
                subspaces.append((Vb, [seeds[self.n_init + b]]))
        maps, n_iter, conv = [], [], []
        for Vs, sds in subspaces:
            Xi = Vs[active].to(self.dtype)
            W0 = torch.stack([initial_unmixing(s, k) for s in sds])
            res = fastica(Xi, k, self.fun, max_iter=self.max_iter, tol=self.tol, w_init=W0, device=dev,
                          dtype=self.dtype, mixed_precision=bool(mixed))
            maps.append(_zscore_rows_(res.sources).reshape(-1, Xi.shape[0]))
            n_iter.append(res.n_iter)
            conv.append(res.converged)
            del res, Xi       # [runs, k, neurons] float64: 0.5 GB for 10 runs of 46k neurons
        Z = (maps[0] if len(maps) == 1 else torch.cat(maps)).double()
        del maps
        self.n_iter_ = np.concatenate(n_iter)
        self.converged_ = np.concatenate(conv)
        self.seeds_ = np.array(seeds, dtype=np.int64)
        n_bad = int((~self.converged_).sum())
        if n_bad:
            warnings.warn(
                f"{n_bad} of {len(self.converged_)} FastICA runs did not converge within max_iter={self.max_iter} "
                f"(tol={self.tol}); their maps are used as they are", ICAConvergenceWarning, stacklevel=2)

        n_runs = len(self.converged_)
        if n_runs > 1:
            Zn = Z.cpu().numpy()
            cent, iq, rep, size, _ = _icasso(Zn, n_runs, k)
            order = np.lexsort((-size, -iq))          # by stability, then cluster size
            cent, iq, rep, size = cent[order], iq[order], rep[order], size[order]
            sel = torch.as_tensor(cent, device=Z.device)
            Zsel = Z[sel]
            self.stability_ = iq
            self.reproducibility_ = rep
            self.cluster_sizes_ = size
            self.order_ = order
            self.source_index_ = np.stack([cent // k, cent % k], axis=1)
        else:
            Zsel = Z
            self.stability_ = np.full(k, np.nan)
            self.reproducibility_ = np.full(k, np.nan)
            self.cluster_sizes_ = np.ones(k, dtype=np.int64)
            self.order_ = np.arange(k)
            self.source_index_ = np.stack([np.zeros(k, dtype=np.int64), np.arange(k)], axis=1)
        Zsel = Zsel * _skew_signs(Zsel)[:, None]
        comps = torch.zeros(Zsel.shape[0], N, dtype=torch.float64, device=Z.device)
        comps[:, active] = Zsel
        comps = comps.cpu().numpy()

        if self.min_stability is not None:
            if n_runs < 2:
                raise FuncnetError("min_stability needs several runs (n_init > 1 or n_bootstrap > 0)")
            keep = self.stability_ >= self.min_stability
            if not keep.any():
                warnings.warn(f"no component reaches min_stability={self.min_stability}; none kept",
                              UserWarning, stacklevel=2)
            comps = comps[keep]
            for name in ("stability_", "reproducibility_", "cluster_sizes_", "order_", "source_index_"):
                setattr(self, name, getattr(self, name)[keep])
        self.components_ = comps
        self.n_components_ = comps.shape[0]
        self.mean_ = stats.mean.cpu().numpy()
        self.scale_ = torch.where(stats.const, torch.ones_like(stats.std), stats.std).cpu().numpy() \
            if self.standardize else np.ones(N)
        self.constant_ = stats.const.cpu().numpy()
        self.n_tokens_ = stats.n_tokens
        self.n_subjects_ = n_subj
        self.n_features_in_ = N
        self._proj = None
        if data.in_memory:
            self.time_courses_ = self.transform(data.concatenated())
        return self

    # ------------------------------------------------------------------ transform
    def _projector(self) -> np.ndarray:
        if getattr(self, "_proj", None) is None:
            A = self.components_
            if A.shape[0]:
                # torch + one LAPACK thread: numpy's threaded pinv of a k x k matrix can spin
                # for seconds when the cores are busy (the per-layer fits run in parallel)
                gram = torch.from_numpy(A @ A.T)
                with _lapack_threads(gram):
                    self._proj = A.T @ torch.linalg.pinv(gram, hermitian=True).numpy()
            else:
                self._proj = np.zeros((A.shape[1], 0))
        return self._proj

    def transform(self, X) -> np.ndarray:
        """Time courses [tokens, k]: least-squares regression of the standardized activations
        (global ``mean_`` / ``scale_``; constant neurons 0) onto the maps:
        ``Z C^T (C C^T)^+`` with C = ``components_``. Accepts the same inputs as ``fit``
        (a list or a stream gives the tokens of all subjects / chunks in order)."""
        if not hasattr(self, "components_"):
            raise FuncnetError("this CanICA is not fitted yet: call fit() first")
        data = _Data(X)
        P = self._projector()
        keep = ~self.constant_
        out = []
        for _, _, b in data.iter_blocks():
            b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b)
            if b.shape[1] != self.n_features_in_:
                raise FuncnetError(f"transform input has {b.shape[1]} neurons, the fit had {self.n_features_in_}")
            dt = np.float64 if b.dtype == np.float64 else np.float32
            z = (b.astype(dt, copy=False) - self.mean_.astype(dt)) / self.scale_.astype(dt)
            z[:, ~keep] = 0
            out.append(z @ P.astype(dt))
        return np.concatenate(out) if out else np.zeros((0, self.components_.shape[0]))

    @property
    def mixing_(self) -> np.ndarray:
        """[tokens, k] time courses of the fit data (scikit-learn's ``mixing_`` of a spatial ICA);
        only when they were in memory, else use ``transform`` on the tokens of interest."""
        try:
            return self.time_courses_
        except AttributeError:
            raise AttributeError("mixing_ exists only after fitting in-memory data; use transform(X)") from None

    def fit_transform(self, X, y=None, **kw) -> np.ndarray:
        self.fit(X, **kw)
        if hasattr(self, "time_courses_"):
            return self.time_courses_
        return self.transform(X)


# ============================================================================ parallel fits
def _devices(device) -> list[str]:
    dev = str(device)
    if dev == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [dev]


def fit_many(inputs: Sequence[Any], estimator_params: dict | None = None, *, n_jobs: int | None = None,
             device: str | None = None, progress: bool | None = None, desc: str = "ICA") -> list[CanICA]:
    """Independent :class:`CanICA` fits (e.g. one per layer) on a thread pool.

    ``inputs``: anything ``CanICA.fit`` accepts, or zero-argument callables returning it (loaded
    only when that fit starts, so 30 layers need not be in memory together). ``device`` (default:
    ``estimator_params["device"]`` or "cpu"): "cuda" with several GPUs assigns fits round-robin to
    cuda:0, cuda:1, ... ``n_jobs`` default: the number of devices on CUDA, the number of CPU cores
    on CPU. On CPU with n_jobs > 1, torch runs single-threaded inside each fit for the duration
    (one fit per core, no OpenMP barriers: on a busy shared machine this is several times faster
    than 2-thread fits one after the other). Returns the fitted estimators in input order; a failing
    fit raises FuncnetError naming its input index.
    """
    params = dict(estimator_params or {})
    device = device or params.get("device", "cpu")
    devs = _devices(device)
    on_cpu = torch.device(devs[0]).type == "cpu"
    if n_jobs is None:
        n_jobs = min(len(inputs), os.cpu_count() or 1) if on_cpu else len(devs)
    n_jobs = max(1, int(n_jobs))
    show = progress_enabled() if progress is None else progress

    def one(i: int) -> CanICA:
        x = inputs[i]
        if callable(x) and not hasattr(x, "iter_chunks"):
            x = x()
        est = CanICA(**{**params, "device": devs[i % len(devs)]})
        try:
            return est.fit(x)
        except FuncnetError as e:
            raise FuncnetError(f"input {i}: {e}") from None

    results: list = [None] * len(inputs)
    from tqdm.auto import tqdm

    single = _lapack_threads(torch.empty(0)) if on_cpu and n_jobs > 1 else contextlib.nullcontext()
    with single, tqdm(total=len(inputs), desc=desc, disable=not show) as bar:
        if n_jobs == 1:
            for i in range(len(inputs)):
                results[i] = one(i)
                bar.update(1)
        else:
            with ThreadPoolExecutor(max_workers=n_jobs) as pool:
                futs = {pool.submit(one, i): i for i in range(len(inputs))}
                for f in as_completed(futs):
                    results[futs[f]] = f.result()
                    bar.update(1)
    return results
