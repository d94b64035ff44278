"""Input handling and group PCA of CanICA: the re-iterable data view (in-memory subjects or a
stream), the streamed statistics pass, the producers of the rows the group PCA reduces (the
papers' globally standardized tokens, or CanICA's per-subject SVD + CCA rows) and the exact /
randomized / MIGP (incremental) reductions."""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse

from funcnet.errors import FuncnetError
from funcnet.networks._utils import _eigh, _is_float64, _lapack_threads, _to_tensor

_BLOCK_ROWS = 8192          # rows per block when streaming an in-memory matrix
_CACHE_BYTES = 1 << 30      # largest group-row matrix kept in memory between reduction passes
_GRAM_MAX = 8192            # largest neuron count for which the neuron x neuron Gram matrix is used
_CONST_RTOL = 1e-6          # a neuron is constant if std <= _CONST_RTOL * median std


# ============================================================================ input handling
def _check_dense(X, what: str = "input") -> None:
    if sparse.issparse(X):
        raise FuncnetError(f"{what} is a scipy sparse matrix: sparse input is not supported, pass a dense array")


def _check_real(a) -> None:
    if a.is_complex() if isinstance(a, torch.Tensor) else np.iscomplexobj(a):
        raise FuncnetError("Complex data not supported: activations must be real numbers")


def _ndim(a) -> int:
    return a.ndim if isinstance(a, (np.ndarray, torch.Tensor)) else np.ndim(a)


class _Data:
    """A re-iterable view of the input as subjects (each a 2-D [tokens, neurons] array).

    A list (or tuple) of 2-D arrays is a list of subjects; a list of 1-D rows (or of numbers) is
    one 2-D array, as in scikit-learn.

    In-memory input keeps references to the caller's arrays (no copy); a streamed object is
    re-read (``iter_chunks()``) at every pass and each chunk counts as one subject.
    """

    def __init__(self, X, subjects=None):
        self.stream = None
        self.arrays: list | None = None
        self.index: list | None = None     # per subject: row indices into arrays[0], or None
        if X is None:
            raise FuncnetError("no input data (got None)")
        _check_dense(X)
        if hasattr(X, "iter_chunks") and not isinstance(X, (np.ndarray, torch.Tensor)):
            if subjects is not None:
                raise FuncnetError("subjects= cannot be used with streamed input (each chunk is one subject)")
            self.stream = X
            self.in_memory = False
            return
        self.in_memory = True
        if isinstance(X, (list, tuple)) and len(X) and all(_ndim(a) <= 1 for a in X):
            X = np.asarray(X)    # a list of rows (scikit-learn's array-like), not a list of subjects
        if isinstance(X, (list, tuple)):
            if len(X) == 0:
                raise FuncnetError("empty input: the list of subjects is empty")
            if subjects is not None:
                raise FuncnetError("subjects= is only for a single 2-D array (a list already gives the subjects)")
            arrs = []
            for i, a in enumerate(X):
                _check_dense(a, f"subject {i}")
                if not isinstance(a, torch.Tensor):
                    a = np.asarray(a)
                _check_real(a)
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
        _check_real(X)
        if X.ndim != 2:
            raise FuncnetError(f"input must be a 2-D [tokens, neurons] array, got shape {tuple(X.shape)}. Reshape "
                               "your data: X.reshape(-1, 1) for one neuron, X.reshape(1, -1) for one token")
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
                _check_real(c)
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
    n_tok, width, mean, m2, lengths, f64 = _moments(data, device)
    return _finish_stats(n_tok, width, mean, m2, lengths, f64)


def _moments(data: _Data, device, col_offset: int = 0):
    """The streamed pass of :func:`_stats_pass`: (tokens, width, mean, m2, subject lengths, float64)
    in float64 accumulators; NaN/inf are an error (``col_offset``: where these columns start)."""
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
            f"(first at token {r}, neuron {c + col_offset}); clean or drop them before the ICA"
        )
    n_tok = sum(lengths)
    if width == 0:   # (scikit-learn's wording)
        raise FuncnetError(f"empty input: 0 feature(s) (shape=({n_tok}, 0)) while a minimum of 1 is required.")
    if width is None or n_tok == 0:
        raise FuncnetError(f"empty input: {n_tok} tokens x {width or 0} neurons")
    return n_tok, width, mean, m2, lengths, f64


def _finish_stats(n_tok: int, width: int, mean, m2, lengths, f64) -> _Stats:
    n = n_tok
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

    def __init__(self, data: _Data, stats: _Stats, cdtype, device, k: int, *, standardize, do_cca):
        self.data, self.stats, self.cdtype, self.device, self.k = data, stats, cdtype, device, k
        self.standardize, self.do_cca = standardize, do_cca     # the estimator's parameters, as given
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
            if self.standardize:
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
            if self.standardize:
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
            rows = Vt if self.do_cca else Vt * S[:, None]
            if self.do_cca and isinstance(w, float) and w != 1.0:
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


# ============================================================================ column blocks (few tokens, many neurons)
class ColumnBlocks:
    """The columns of one ``[tokens, neurons]`` matrix, given as blocks side by side (e.g. one per
    layer), each read only when needed: what :class:`~funcnet.networks.CanICA` with
    ``method="reference"`` fits when the tokens are few and the neurons many (a fingerprint's
    probe texts over all layers of a large model). The fit holds one block at a time plus the
    token x token Gram matrix and the [neurons, k] subspace; every block is read three times
    (statistics, Gram matrix, projection).

    ``blocks``: a sequence of 2-D arrays / tensors or of zero-argument callables returning them;
    every block must have the same number of rows (tokens).
    """

    def __init__(self, blocks):
        self.blocks = list(blocks)
        if not self.blocks:
            raise FuncnetError("ColumnBlocks needs at least one block")

    def __len__(self) -> int:
        return len(self.blocks)

    def iter_column_blocks(self) -> Iterator[Any]:
        for b in self.blocks:
            a = b() if callable(b) else b
            _check_dense(a, "column block")
            if not isinstance(a, torch.Tensor):
                a = np.asarray(a)
            _check_real(a)
            if a.ndim != 2:
                raise FuncnetError(f"column blocks must be 2-D [tokens, neurons] arrays, got shape {tuple(a.shape)}")
            yield a


def _column_stats(cols: ColumnBlocks, device) -> tuple[_Stats, list[int]]:
    """:func:`_stats_pass` over column blocks (the constant-neuron rule uses the median std over all
    of them); also returns the blocks' widths."""
    means, m2s, widths = [], [], []
    n_tok = f64 = None
    off = 0
    for a in cols.iter_column_blocks():
        n, w, mean, m2, lengths, f = _moments(_Data(a), device, col_offset=off)
        if n_tok is None:
            n_tok, f64 = n, f
        elif n != n_tok:
            raise FuncnetError(f"column blocks have different token counts: {n_tok} and {n}")
        means.append(mean)
        m2s.append(m2)
        widths.append(w)
        off += w
    return _finish_stats(n_tok, off, torch.cat(means), torch.cat(m2s), [n_tok], f64), widths


def _column_rows(cols: ColumnBlocks, stats: _Stats, widths, cdtype, device, *, standardize, weights=None):
    """Per block: (column slice, standardized rows [tokens kept, width]) in cdtype, as the
    reference producer makes them (``weights``: per-token bootstrap multiplicities)."""
    keep = (~stats.const).to(cdtype)
    mean = stats.mean.to(cdtype)
    scale = torch.where(stats.const, torch.ones_like(stats.std), stats.std).to(cdtype)
    sel = sw = None
    if weights is not None:
        wt = torch.as_tensor(weights, device=device)
        sel = wt > 0
        sw = torch.sqrt(wt[sel].to(cdtype))[:, None]
    off = 0
    for a, w in zip(cols.iter_column_blocks(), widths):
        cs = slice(off, off + w)
        off += w
        t = _to_tensor(a, cdtype, device)
        if sel is not None:
            t = t[sel]
        t = t - mean[cs]          # one copy (the block may be the caller's), then in place
        t.mul_(keep[cs])
        if standardize:
            t.div_(scale[cs])
        if sw is not None:
            t.mul_(sw)
        yield cs, t


def _reduce_dual_columns(cols: ColumnBlocks, stats: _Stats, widths, cdtype, device, k: int, *, standardize,
                         weights=None):
    """The exact reduction of the reference recipe through the token Gram matrix, streamed over
    column blocks: K = sum_b M_b M_b^T (float64 accumulation), one eigh, then V_b = M_b^T U S^-1
    block by block. The same subspace as ``_top_right`` of the concatenated rows (it computes the
    same K and eigh) up to float rounding. Returns (V [N, k] float64, eigenvalues, rows, total ss)."""
    K, ss, n_rows = None, 0.0, 0
    for _, t in _column_rows(cols, stats, widths, cdtype, device, standardize=standardize, weights=weights):
        g = (t @ t.T).double()
        K = g if K is None else K.add_(g)
        for r in range(0, int(t.shape[0]), 256):      # float64 sum of squares, no float64 copy of the block
            ss += float((t[r:r + 256].double() ** 2).sum())
        n_rows = int(t.shape[0])
        del g, t
    if K is None or n_rows == 0:
        raise FuncnetError("empty input: no rows left to reduce")
    # float32 data: float32 eigh of the token Gram matrix, as _top_right does
    ev, U = _eigh(K.to(cdtype))
    ev, U = ev.double().flip(0), U.double().flip(1)
    s = torch.sqrt(torch.clamp(ev, min=0))
    kk = min(k, int(s.numel()))
    inv = torch.where(s[:kk] > 0, 1.0 / s[:kk], torch.zeros_like(s[:kk]))
    Uk = U[:, :kk].T.to(cdtype)
    V = torch.zeros(stats.n_features, kk, dtype=torch.float64, device=device)
    for cs, t in _column_rows(cols, stats, widths, cdtype, device, standardize=standardize, weights=weights):
        V[cs] = ((Uk @ t) * inv.to(cdtype)[:, None]).T.double()
        del t
    return V, s.to(cdtype).double() ** 2, n_rows, ss


# ============================================================================ on-disk row cache
class _DiskRows:
    """The group rows of one reduction written once to a float32 file (float64 for float64 data)
    and read back block by block, the blocks as they were produced (one per subject, at most k
    rows, so the passes compute exactly what they compute on the rows in memory), at every later
    pass: CanICA's per-document decompositions are computed once, however many passes the
    randomized reduction makes, with memory bounded by one block. Re-iterable (``for b in rows``);
    the file is removed by :meth:`close`."""

    def __init__(self, blocks, n_features: int, cdtype, device, workdir=None):
        self.n_features, self.cdtype, self.device = int(n_features), cdtype, device
        self.np_dtype = np.float64 if cdtype == torch.float64 else np.float32
        fd, self.path = tempfile.mkstemp(prefix="funcnet-rows-", suffix=".bin", dir=workdir)
        self.n_rows = 0
        self.sizes: list[int] = []
        try:
            with os.fdopen(fd, "wb") as f:
                for b in blocks:
                    if b.dtype != cdtype:
                        raise FuncnetError(f"row cache: got {b.dtype} rows, expected {cdtype}")
                    f.write(b.detach().cpu().contiguous().numpy().tobytes())
                    self.sizes.append(int(b.shape[0]))
                    self.n_rows += int(b.shape[0])
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.n_rows == 0:
            return
        mm = np.memmap(self.path, dtype=self.np_dtype, mode="r", shape=(self.n_rows, self.n_features))
        s = 0
        for n in self.sizes:
            yield torch.from_numpy(np.array(mm[s:s + n])).to(self.device)
            s += n
        del mm

    def close(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def __del__(self):
        self.close()


def _disk_has_room(n_bytes: int, workdir=None) -> bool:
    try:
        return shutil.disk_usage(workdir or tempfile.gettempdir()).free > 1.1 * n_bytes + (1 << 30)
    except OSError:
        return False
