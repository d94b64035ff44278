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
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import NotFittedError as _SkNotFittedError

from funcnet.core.progress import progress_enabled
from funcnet.errors import FuncnetError
from funcnet.networks._fastica import (FastICAResult, ICAConvergenceWarning, _canon_signs, _skew_signs,
                                       _zscore_rows_, fastica, initial_unmixing)
from funcnet.networks._icasso import _abs_corr, _icasso, amari_distance, match_maps, subspace_overlap
from funcnet.networks._reduction import (_CACHE_BYTES, _GRAM_MAX, ColumnBlocks, _CanICARows, _Data, _DiskRows,
                                         _ReferenceRows, _column_stats, _disk_has_room, _reduce_dual_columns,
                                         _reduce_exact, _reduce_migp, _reduce_randomized, _stats_pass)
from funcnet.networks._utils import _lapack_threads, _resolve_seed, _run_seeds

__all__ = [
    "CanICA",
    "NotFittedError",
    "ICAConvergenceWarning",
    "FastICAResult",
    "fastica",
    "initial_unmixing",
    "subspace_overlap",
    "match_maps",
    "amari_distance",
    "fit_many",
    "fit_seeds",
    "ColumnBlocks",
    "estimate_fit_bytes",
]


# ============================================================================ estimator
class NotFittedError(FuncnetError, _SkNotFittedError):
    """A :class:`CanICA` used before ``fit``: both funcnet's error and scikit-learn's NotFittedError."""


_DTYPES = {torch.float32: torch.float32, torch.float64: torch.float64, "float32": torch.float32,
           "float64": torch.float64, np.float32: torch.float32, np.float64: torch.float64,
           np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
_FUNS = ("cube", "logcosh")
_METHODS = ("canica", "reference")
_REDUCTIONS = ("auto", "exact", "randomized", "incremental")
_SOURCES_F64_BYTES = 1 << 30     # pooled float64 sources past this size are kept in float32 (sources_dtype="auto")


class _Plan:
    """What :meth:`CanICA._plan` settles before the reduction: the data, its statistics, the
    reduction (``reduce(weights, seed)``) and any on-disk row cache (removed by :meth:`close`)."""

    def __init__(self, *, data, columns, widths, stats, cdtype, device, dtype, k, seed):
        self.data, self.columns, self.widths, self.stats = data, columns, widths, stats
        self.cdtype, self.device, self.dtype, self.k, self.seed = cdtype, device, dtype, k, seed
        self.reduce = None
        self.red = None
        self.disk_rows = None
        self.disk_stats = None

    def checked(self, V, ev, n_rows, total_ss):
        k = self.k
        tol_rank = (1e-10 if self.cdtype == torch.float64 else 1e-5) * float(ev[0]) if ev.numel() else 0.0
        rank = int((ev > tol_rank).sum())
        if rank < k:
            raise FuncnetError(f"n_components={k} exceeds the numerical rank {rank} of the data")
        return _canon_signs(V[:, :k]), ev[:k], n_rows, total_ss

    @property
    def seed_free(self) -> bool:
        """The reduction (without bootstrap weights) does not depend on the seed."""
        return self.red in ("exact", "incremental")

    def close(self) -> None:
        if self.disk_rows is not None:
            self.disk_rows.close()
            self.disk_rows = None


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


class CanICA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Group ICA of neuron activations, a scikit-learn transformer (see the module docstring).

    scikit-learn conventions: the parameters below are stored unchanged by ``__init__`` (all but
    ``n_components`` keyword-only) and checked by ``fit`` (a bad value raises
    :class:`~funcnet.errors.FuncnetError`, a ValueError), so ``get_params`` / ``set_params`` /
    ``sklearn.base.clone`` and pipelines work; ``fit(X, y=None)`` returns the estimator;
    ``transform`` before ``fit`` raises scikit-learn's ``NotFittedError`` (also a FuncnetError).
    ``X`` is a [tokens, neurons] array (tokens are the rows, neurons the features): the ICA is
    *spatial*, neurons are its samples, so ``n_components`` must stay below the number of
    non-constant neurons.

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
    dtype : precision of the ICA: "float64" (default) or "float32" (a torch or numpy float
        dtype is accepted too).
    mixed_precision : iterate FastICA in float32 and polish converged runs in ``dtype``;
        "auto" = True for method="canica", False for method="reference" (exact recipe).
    migp_rows : rows kept by MIGP (default max(4k, 256)).
    sources_dtype : dtype of the pooled FastICA sources (all runs' maps, before ICASSO keeps k):
        "auto" (default) = ``dtype``, or float32 when the float64 sources of all runs would pass
        1 GiB; "float32" / "float64" to choose. ``components_`` are float64 either way.
    workdir : folder for the temporary on-disk cache of CanICA's group rows (streamed input past
        the 1 GiB in-memory row cache with the randomized reduction); default: the system's temp
        folder.

    Fitted attributes: ``components_`` [k, neurons] (z-scored maps, heaviest tail positive,
    constant neurons 0), ``stability_`` [k], ``reproducibility_`` [k], ``cluster_sizes_`` [k],
    ``source_index_`` [k, 2] (run, component in run) of each returned map, ``order_`` [k] (the
    pre-sort index of each component: cluster id, or FastICA index with one run),
    ``explained_variance_`` / ``explained_variance_ratio_`` [k] of the group PCA,
    ``subspace_`` [neurons, k] orthonormal basis of the reduction, ``mean_`` / ``scale_`` /
    ``constant_`` [neurons] (global standardization), ``n_iter_`` / ``converged_`` [runs] (one
    value per FastICA run, ICASSO pools several), ``seeds_`` [runs], ``n_components_``,
    ``n_tokens_``, ``n_subjects_``, ``n_features_in_``, ``reduction_`` (the method used),
    ``time_courses_`` [tokens, k] when the fit data were in memory, also as ``mixing_``
    (scikit-learn's name: in a spatial ICA the mixing matrix is the time courses).
    """

    def __init__(self, n_components: int = 20, *, n_init: int = 10, fun: str = "cube", max_iter: int = 300,
                 tol: float = 1e-4, random_state: int | None = 0, device: str = "cpu", standardize: bool = True,
                 reduction: str = "auto", do_cca: bool = True, method: str = "canica", n_bootstrap: int = 0,
                 min_stability: float | None = None, dtype: str | torch.dtype = "float64",
                 mixed_precision: bool | str = "auto", migp_rows: int | None = None,
                 sources_dtype: str | torch.dtype | None = "auto", workdir: str | None = None):
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
        self.sources_dtype = sources_dtype
        self.workdir = workdir

    # ------------------------------------------------------------------ scikit-learn plumbing
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]   # transform keeps the input's float
        return tags

    def _more_tags(self) -> dict:      # the same for scikit-learn < 1.6
        return {"preserves_dtype": [np.float64, np.float32]}

    @property
    def _n_features_out(self) -> int:
        """Number of output columns of ``transform`` (for ``get_feature_names_out``)."""
        return self.components_.shape[0]

    def _check_params(self) -> tuple[torch.device, torch.dtype]:
        """Validate the parameters (at fit time, scikit-learn style); returns (device, dtype)."""
        k = self.n_components
        if not _is_int(k) or k < 1:
            raise FuncnetError(f"n_components must be an integer >= 1, got {k!r}")
        if not _is_int(self.n_init) or self.n_init < 1:
            raise FuncnetError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if not _is_int(self.n_bootstrap) or self.n_bootstrap < 0:
            raise FuncnetError(f"n_bootstrap must be an integer >= 0, got {self.n_bootstrap!r}")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            raise FuncnetError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not _is_real(self.tol) or not self.tol >= 0:
            raise FuncnetError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.random_state is not None and not _is_int(self.random_state):
            raise FuncnetError(f"random_state must be an int or None, got {type(self.random_state).__name__}")
        for name in ("standardize", "do_cca"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise FuncnetError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not (isinstance(self.mixed_precision, (bool, np.bool_)) or self.mixed_precision == "auto"):
            raise FuncnetError(f"mixed_precision must be True, False or 'auto', got {self.mixed_precision!r}")
        if self.fun not in _FUNS:
            raise FuncnetError(f"fun must be 'cube' or 'logcosh', got {self.fun!r}")
        if self.method not in _METHODS:
            raise FuncnetError(f"method must be 'canica' or 'reference', got {self.method!r}")
        if self.reduction not in _REDUCTIONS:
            raise FuncnetError(
                f"reduction must be 'auto', 'exact', 'randomized' or 'incremental', got {self.reduction!r}")
        if self.min_stability is not None and not _is_real(self.min_stability):
            raise FuncnetError(f"min_stability must be a number or None, got {self.min_stability!r}")
        if self.migp_rows is not None and (not _is_int(self.migp_rows) or self.migp_rows < 1):
            raise FuncnetError(f"migp_rows must be an integer >= 1 or None, got {self.migp_rows!r}")
        if not (self.sources_dtype is None or self.sources_dtype == "auto" or self.sources_dtype in _DTYPES):
            raise FuncnetError(f"sources_dtype must be 'auto', 'float32' or 'float64', got {self.sources_dtype!r}")
        if self.workdir is not None and not os.path.isdir(self.workdir):
            raise FuncnetError(f"workdir {self.workdir!r} is not a folder")
        try:
            dtype = _DTYPES[self.dtype]
        except (KeyError, TypeError):
            raise FuncnetError(f"dtype must be 'float32' or 'float64' (or a torch / numpy float dtype), "
                               f"got {self.dtype!r}") from None
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise FuncnetError(f"bad device {self.device!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise FuncnetError(f"device {self.device!r} requested but CUDA is not available")
        return dev, dtype

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, *, subjects=None) -> CanICA:
        """Fit on ``X``: a [tokens, neurons] array / tensor (``subjects=``: lengths or per-token
        labels), a list of per-subject arrays, an object with ``iter_chunks()`` (streamed, each
        chunk one subject; re-read at each pass), or :class:`ColumnBlocks` (the neurons in blocks
        read one at a time; ``method="reference"`` only). ``y`` is ignored. Returns the estimator."""
        plan = self._plan(X, subjects)
        try:
            self._fit_plan(plan, plan.reduce(None, plan.seed), plan.seed)
        finally:
            plan.close()
        return self

    def _plan(self, X, subjects=None) -> "_Plan":
        """Checks, the statistics pass and the reduction to use: everything before the reduction."""
        dev, dtype = self._check_params()
        k = int(self.n_components)
        seed = _resolve_seed(self.random_state)
        columns = isinstance(X, ColumnBlocks)
        if columns:
            if self.method != "reference":
                raise FuncnetError("ColumnBlocks input needs method='reference' (CanICA's per-subject SVD "
                                   "needs all neurons of a subject at once)")
            if subjects is not None:
                raise FuncnetError("subjects= cannot be used with ColumnBlocks input")
            if self.reduction not in ("auto", "exact"):
                raise FuncnetError(f"ColumnBlocks input is reduced exactly (token Gram matrix); "
                                   f"reduction={self.reduction!r} is not available for it")
            data = None
            stats, widths = _column_stats(X, dev)
            if stats.n_tokens >= stats.n_features and stats.n_features <= _GRAM_MAX:
                # few neurons: as in memory (the neuron Gram matrix), the blocks side by side
                parts = list(X.iter_column_blocks())
                if any(isinstance(a, torch.Tensor) for a in parts):
                    X = torch.cat([a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a)) for a in parts],
                                  dim=1)
                else:
                    X = np.concatenate(parts, axis=1)
                del parts
                columns = False
        if not columns:
            data = _Data(X, subjects)
            stats = _stats_pass(data, dev)
            widths = None
        N = stats.n_features
        if stats.n_tokens < 2:
            raise FuncnetError(f"{stats.n_tokens} token(s) (n_samples = {stats.n_tokens}): at least 2 are needed "
                               "to standardize the neurons")
        n_active = int((~stats.const).sum())
        if n_active == 0:
            raise FuncnetError(f"all {N} neurons are constant: nothing to decompose")
        if n_active < 2:
            raise FuncnetError(f"a spatial ICA needs at least 2 non-constant neurons, got {n_active} in {N} "
                               "feature(s)")
        n_subj = len(stats.lengths)
        # the maps are centred over the non-constant neurons (the samples of the spatial ICA): one rank less
        if self.method == "reference":
            bound = min(stats.n_tokens - 1, n_active - 1)
        else:
            bound = min(sum(min(k, max(t - 1, 0)) for t in stats.lengths), n_active - 1)
        if k > bound:
            raise FuncnetError(
                f"n_components={k} exceeds the rank of the data (at most {bound}: {stats.n_tokens} tokens in "
                f"{n_subj} subject(s), {n_active} non-constant neurons, one rank less after centring over neurons)")
        cdtype = torch.float64 if stats.float64 else torch.float32
        plan = _Plan(data=data, columns=X if columns else None, widths=widths, stats=stats, cdtype=cdtype,
                     device=dev, dtype=dtype, k=k, seed=seed)
        if columns:
            red = "exact"

            def reduce(weights, rseed):
                w = None if weights is None else weights["w"]
                V, ev, n_rows, total_ss = _reduce_dual_columns(X, stats, widths, cdtype, dev, k,
                                                               standardize=self.standardize, weights=w)
                return plan.checked(V, ev, n_rows, total_ss)

            plan.reduce, plan.red = reduce, red
            return plan

        Prod = _ReferenceRows if self.method == "reference" else _CanICARows
        producer = Prod(data, stats, cdtype, dev, k, standardize=self.standardize, do_cca=self.do_cca)

        red = self.reduction
        if red == "auto":
            red = "exact" if N <= _GRAM_MAX else "randomized"
            if red == "randomized" and data.in_memory and self.method == "reference" and stats.n_tokens <= _GRAM_MAX:
                red = "exact"   # dual Gram on the (few) tokens
        m = int(self.migp_rows or max(4 * k, 256))

        # canica's group rows (at most k per subject) are kept only when the reduction needs them
        # more than once (randomized: several passes) or all together (exact with fewer rows than
        # neurons: the dual Gram matrix), and only within the budget; the exact reduction of more
        # rows than neurons accumulates the neuron Gram matrix in one streamed pass, so its memory
        # does not grow with the number of subjects. Past the budget, the randomized reduction's
        # rows are written once to a float32 file and read back in blocks at every pass (so each
        # document is decomposed once, not at every pass), if the disk has room.
        n_rows_max = sum(min(k, t) for t in stats.lengths)
        row_bytes = n_rows_max * N * (8 if cdtype == torch.float64 else 4)
        need_rows = red == "randomized" or (red == "exact" and n_rows_max < N)
        cache = (self.method == "canica" and need_rows and row_bytes <= _CACHE_BYTES) or (
            red == "exact" and data.in_memory and stats.n_tokens < N)
        disk = (not cache and self.method == "canica" and red == "randomized" and not data.in_memory
                and _disk_has_room(row_bytes, self.workdir))

        def reduce(weights, rseed):
            if cache:
                mat = list(producer.blocks(weights))
            elif disk and weights is None:
                mat = plan.disk_rows = plan.disk_rows or _DiskRows(producer.blocks(None), N, cdtype, dev,
                                                                   self.workdir)
            else:
                mat = None
            if red == "exact":
                V, ev = _reduce_exact(producer, N, k, weights, mat)
            elif red == "randomized":
                V, ev = _reduce_randomized(producer, N, k, weights, rseed, materialized=mat)
            else:
                V, ev = _reduce_migp(producer, N, k, weights, m)
            if mat is not None and mat is plan.disk_rows:
                n_rows, total_ss = plan.disk_stats = plan.disk_stats or (producer.n_rows, producer.total_ss)
            else:
                n_rows, total_ss = producer.n_rows, producer.total_ss
            return plan.checked(V, ev, n_rows, total_ss)

        plan.reduce, plan.red = reduce, red
        return plan

    def _fit_plan(self, plan: "_Plan", reduced, seed: int) -> None:
        """The ICA runs, ICASSO and the fitted attributes, from the reduction ``reduced``."""
        dev, dtype, stats, k = plan.device, plan.dtype, plan.stats, plan.k
        N = stats.n_features
        n_subj = len(stats.lengths)
        self.reduction_ = plan.red
        V, ev, n_rows, total_ss = reduced
        self.subspace_ = V.cpu()
        self.explained_variance_ = (ev / max(n_rows - 1, 1)).cpu().numpy()
        self.explained_variance_ratio_ = (ev / total_ss).cpu().numpy() if total_ss > 0 else np.zeros(k)

        # ---------------------------------------------------------- ICA runs
        mixed = self.mixed_precision
        if mixed == "auto":
            mixed = self.method == "canica"
        active = ~stats.const
        n_active = int(active.sum())
        seeds = _run_seeds(seed, self.n_init + self.n_bootstrap)
        sdt = self._sources_dtype(dtype, len(seeds), k, n_active)
        subspaces = [(V, seeds[: self.n_init])]
        if self.n_bootstrap:
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 7919]))
            for b in range(self.n_bootstrap):
                if n_subj >= 2:
                    w = {"unit": "subject", "w": rng.multinomial(n_subj, np.full(n_subj, 1 / n_subj)).astype(float)}
                else:
                    T = stats.n_tokens
                    w = {"unit": "token", "w": rng.multinomial(T, np.full(T, 1 / T)).astype(np.float64)}
                Vb, _, _, _ = plan.reduce(w, seeds[self.n_init + b])
                subspaces.append((Vb, [seeds[self.n_init + b]]))
        maps, n_iter, conv = [], [], []
        for Vs, sds in subspaces:
            Xi = Vs[active].to(dtype)
            W0 = torch.stack([initial_unmixing(s, k) for s in sds])
            res = fastica(Xi, k, self.fun, max_iter=self.max_iter, tol=self.tol, w_init=W0, device=dev,
                          dtype=dtype, mixed_precision=bool(mixed), sources_dtype=sdt)
            maps.append(_zscore_rows_(res.sources).reshape(-1, Xi.shape[0]))
            n_iter.append(res.n_iter)
            conv.append(res.converged)
            del res, Xi       # [runs, k, neurons]: 0.5 GB for 10 runs of 46k neurons in float64
        # the pooled sources stay in their dtype and on the compute device (ICASSO needs only their
        # correlations, the k selected maps are copied out)
        Z = maps[0] if len(maps) == 1 else torch.cat(maps)
        del maps
        self.n_iter_ = np.concatenate(n_iter)
        self.converged_ = np.concatenate(conv)
        self.seeds_ = np.array(seeds, dtype=np.int64)
        n_bad = int((~self.converged_).sum())
        if n_bad:
            warnings.warn(
                f"{n_bad} of {len(self.converged_)} FastICA runs did not converge within max_iter={self.max_iter} "
                f"(tol={self.tol}); their maps are used as they are", ICAConvergenceWarning, stacklevel=3)

        n_runs = len(self.converged_)
        if n_runs > 1:
            cent, iq, rep, size, _ = _icasso(None, n_runs, k, C=_abs_corr(Z))
            order = np.lexsort((-size, -iq))          # by stability, then cluster size
            cent, iq, rep, size = cent[order], iq[order], rep[order], size[order]
            sel = torch.as_tensor(cent, device=Z.device)
            Zsel = Z[sel].double()
            self.stability_ = iq
            self.reproducibility_ = rep
            self.cluster_sizes_ = size
            self.order_ = order
            self.source_index_ = np.stack([cent // k, cent % k], axis=1)
        else:
            Zsel = Z.double()
            self.stability_ = np.full(k, np.nan)
            self.reproducibility_ = np.full(k, np.nan)
            self.cluster_sizes_ = np.ones(k, dtype=np.int64)
            self.order_ = np.arange(k)
            self.source_index_ = np.stack([np.zeros(k, dtype=np.int64), np.arange(k)], axis=1)
        del Z
        Zsel = Zsel * _skew_signs(Zsel)[:, None]
        comps = torch.zeros(Zsel.shape[0], N, dtype=torch.float64, device=Zsel.device)
        comps[:, active] = Zsel
        comps = comps.cpu().numpy()

        if self.min_stability is not None:
            if n_runs < 2:
                raise FuncnetError("min_stability needs several runs (n_init > 1 or n_bootstrap > 0)")
            keep = self.stability_ >= self.min_stability
            if not keep.any():
                warnings.warn(f"no component reaches min_stability={self.min_stability}; none kept",
                              UserWarning, stacklevel=3)
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
        if plan.columns is None:    # now, so that transform leaves the estimator unchanged
            self._projector()       # (a ColumnBlocks fit has many neurons: made on first transform)
        if plan.data is not None and plan.data.in_memory:
            self.time_courses_ = self.transform(plan.data.concatenated())
        else:
            self.__dict__.pop("time_courses_", None)      # a refit on a stream: no stale time courses

    def _sources_dtype(self, dtype: torch.dtype, n_runs: int, k: int, n_active: int) -> torch.dtype:
        """dtype of the pooled FastICA sources (the maps of every run, before ICASSO picks k)."""
        sd = self.sources_dtype
        if sd is None or sd == "auto":
            # float32 once the pooled float64 sources would pass 1 GiB (whole-model ICA at 8B widths:
            # 10 runs x 64 maps x 459k neurons = 2.3 GB); below that the ICA's own dtype, as before
            big = n_runs * k * n_active * 8 > _SOURCES_F64_BYTES
            return torch.float32 if big and dtype == torch.float64 else dtype
        return _DTYPES[sd]

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
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit() first")
        data = _Data(X)
        P = self._projector()
        keep = ~self.constant_
        out = []
        for _, _, b in data.iter_blocks():
            b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b)
            if b.shape[1] != self.n_features_in_:
                raise FuncnetError(f"X has {b.shape[1]} features, but {type(self).__name__} is expecting "
                                   f"{self.n_features_in_} features as input (the neurons of the fit)")
            dt = np.float64 if b.dtype == np.float64 else np.float32
            b = b.astype(dt, copy=False)
            if not np.isfinite(b).all():
                raise FuncnetError(f"transform input contains {int((~np.isfinite(b)).sum())} NaN/inf values")
            z = (b - self.mean_.astype(dt)) / self.scale_.astype(dt)
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
        """``fit(X, **kw)``, then the time courses of ``X`` (``time_courses_`` when in memory)."""
        self.fit(X, **kw)
        if hasattr(self, "time_courses_"):
            return self.time_courses_
        return self.transform(X)


# ============================================================================ one reduction, several seeds
def fit_seeds(X, seeds: Sequence[int], estimator_params: dict | None = None, *, subjects=None) -> list[CanICA]:
    """One fitted :class:`CanICA` per seed in ``seeds``, each the same as
    ``CanICA(**estimator_params, random_state=seed).fit(X)``, but the data are read and reduced
    once when the reduction does not depend on the seed (``exact`` or ``incremental``, no bootstrap
    runs): only the FastICA runs differ. What the fingerprint does with its ICA seeds."""
    params = {k: v for k, v in dict(estimator_params or {}).items() if k != "random_state"}
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise FuncnetError("fit_seeds needs at least one seed")
    ests = [CanICA(**params, random_state=s) for s in seeds]
    plan = ests[0]._plan(X, subjects)
    try:
        shared = plan.reduce(None, plan.seed) if plan.seed_free else None
        for est, s in zip(ests, seeds):
            est._fit_plan(plan, shared if shared is not None else plan.reduce(None, s), s)
    finally:
        plan.close()
    return ests


# ============================================================================ memory of a fit
def estimate_fit_bytes(n_tokens: int, n_features: int, estimator_params: dict | None = None, *,
                       in_memory: bool = False, subject_tokens: int | None = None) -> int:
    """Rough peak bytes of one :class:`CanICA` fit on ``n_tokens`` x ``n_features`` float32 data,
    from the shapes alone (what :func:`fit_many` budgets with): the block being read (or the whole
    input when ``in_memory``), the reduction's matrices (neuron Gram matrix, dual rows, randomized
    range, CanICA's cached group rows, at most k per subject of ``subject_tokens`` tokens), and the
    FastICA runs (whitened data, batched iteration temporaries, pooled sources, ICASSO matrix).
    An upper-side estimate: docs/ica.md compares it with measured peaks."""
    p = {**CanICA().get_params(), **dict(estimator_params or {})}
    T, N = int(n_tokens), int(n_features)
    k = int(p["n_components"])
    runs = int(p["n_init"]) + int(p["n_bootstrap"])
    d = 4 if _DTYPES.get(p["dtype"], torch.float64) == torch.float32 else 8
    method, red = p["method"], p["reduction"]
    if red == "auto":
        red = "exact" if N <= _GRAM_MAX else "randomized"
        if red == "randomized" and in_memory and method == "reference" and T <= _GRAM_MAX:
            red = "exact"
    if method == "canica":
        st = max(1, int(subject_tokens or min(T, 8192)))
        rows = min(T, -(-T // st) * min(k, st))
        block = 4 * st * N * 4                       # the subject, centred, its Gram / projections
    else:
        rows = T
        block = 3 * min(T, 8192) * N * 4             # raw block, float32, standardized
    total = (T * N * 4 if in_memory else 0) + block
    if red == "exact":
        total += rows * N * 4 * 3 + rows * rows * 8 * 2 if rows < N else 20 * N * N
    elif red == "randomized":
        q = min(N, k + max(10, k // 5))
        total += 3 * N * q * 8
        if method == "canica":
            total += min(rows * N * 4, _CACHE_BYTES) if rows * N * 4 <= _CACHE_BYTES else 2 * (256 << 20)
    else:
        m = int(p["migp_rows"] or max(4 * k, 256))
        total += 3 * (m + 8192) * N * 4
    n_act = N
    sd = 4 if (runs * k * n_act * 8 > _SOURCES_F64_BYTES and d == 8 and p["sources_dtype"] in (None, "auto")) else d
    if p["sources_dtype"] not in (None, "auto"):
        sd = 4 if _DTYPES[p["sources_dtype"]] == torch.float32 else 8
    total += 4 * N * k * 8                           # subspace, its active rows, whitened data
    total += 3 * min(runs * k * N, 64_000_000) * d   # one batch of FastICA iterations
    total += runs * k * N * sd + 2 * k * N * 8       # pooled sources, the k maps (torch + numpy)
    total += 4 * (runs * k) ** 2 * 8                 # ICASSO's correlation / distance matrices
    if in_memory:
        total += 2 * min(T, 8192) * N * 4 + T * k * 8    # time courses of the fit data
    return int(total)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations now (Linux MemAvailable; else the free pages),
    or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


#: the share of the available memory that concurrent CPU fits may use by default
MEMORY_FRACTION = 0.5


def _cpu_jobs(n_inputs: int, fit_bytes: Sequence[int] | None, budget: int | None, cores: int,
              n_jobs: int | None = None) -> int:
    """Concurrent CPU fits: at most ``n_jobs`` (default: the cores), and at most as many of the
    largest fit as ``budget`` bytes hold (at least one)."""
    jobs = max(1, min(n_inputs, int(n_jobs) if n_jobs is not None else cores))
    if fit_bytes and budget is not None:
        per = max(1, max(int(b) for b in fit_bytes))
        jobs = max(1, min(jobs, int(budget // per)))
    return jobs


def _input_shape(x):
    if callable(x) and not hasattr(x, "iter_chunks"):
        return None
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    if isinstance(x, (list, tuple)) and x and all(getattr(a, "ndim", 0) == 2 for a in x):
        return sum(int(a.shape[0]) for a in x), int(x[0].shape[1])
    return None


# ============================================================================ parallel fits
def _devices(device) -> list[str]:
    dev = str(device)
    if dev == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [dev]


def fit_many(inputs: Sequence[Any], estimator_params: dict | None = None, *, n_jobs: int | None = None,
             device: str | None = None, progress: bool | None = None, desc: str = "ICA",
             memory_budget: int | None = None, shapes: Sequence[tuple[int, int]] | None = None,
             fit_bytes: Sequence[int] | None = None) -> list[CanICA]:
    """Independent :class:`CanICA` fits (e.g. one per layer) on a thread pool.

    ``inputs``: anything ``CanICA.fit`` accepts, or zero-argument callables returning it (loaded
    only when that fit starts, so 30 layers need not be in memory together). ``device`` (default:
    ``estimator_params["device"]`` or "cpu"): "cuda" with several GPUs assigns fits round-robin to
    cuda:0, cuda:1, ... ``n_jobs`` default: the number of devices on CUDA; on CPU, the number of
    cores, bounded by memory: at most ``memory_budget`` bytes (default :data:`MEMORY_FRACTION` of
    the memory available now) divided by the largest fit's estimated bytes
    (:func:`estimate_fit_bytes` of ``shapes`` [(tokens, neurons)] per input, or of the inputs' own
    ``shape``; ``fit_bytes`` gives the bytes directly) fits run at once, never fewer than one. An
    explicit ``n_jobs`` is bounded by the budget too. On CPU with n_jobs > 1, torch runs
    single-threaded inside each fit for the duration (one fit per core, no OpenMP barriers: on a
    busy shared machine this is several times faster than 2-thread fits one after the other).
    Returns the fitted estimators in input order; a failing fit raises FuncnetError naming its
    input index.
    """
    params = dict(estimator_params or {})
    device = device or params.get("device", "cpu")
    devs = _devices(device)
    on_cpu = torch.device(devs[0]).type == "cpu"
    if on_cpu:
        if fit_bytes is None:
            shp = list(shapes) if shapes is not None else [_input_shape(x) for x in inputs]
            if shp and all(s is not None for s in shp):
                fit_bytes = [estimate_fit_bytes(t, n, params) for t, n in shp]
        if memory_budget is None:
            avail = available_memory()
            memory_budget = None if avail is None else int(MEMORY_FRACTION * avail)
        n_jobs = _cpu_jobs(len(inputs), fit_bytes, memory_budget, os.cpu_count() or 1, n_jobs)
    elif n_jobs is None:
        n_jobs = len(devs)
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
