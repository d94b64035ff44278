"""Tests of funcnet.networks.canica: synthetic sources, reproducibility, reductions, reference recipe,
input checks, scikit-learn estimator conventions."""
from __future__ import annotations

import inspect
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import funcnet.networks as networks_pkg
import funcnet.networks.canica as ica_mod
from funcnet.errors import FuncnetError
from funcnet.networks.canica import (
    CanICA,
    ICAConvergenceWarning,
    amari_distance,
    fastica,
    ColumnBlocks,
    estimate_fit_bytes,
    fit_many,
    fit_seeds,
    initial_unmixing,
    match_maps,
    subspace_overlap,
)

N_NEURONS = 800


def make_data(k=6, n_neurons=N_NEURONS, n_subjects=8, tokens=60, noise=0.3, seed=0, n_noise_dims=0):
    """k sparse Laplace maps over neurons, mixed by random time courses, plus noise.

    Returns (X [tokens, neurons], S [k, neurons], A [tokens, k], subject lengths)."""
    rng = np.random.default_rng(seed)
    S = rng.laplace(size=(k, n_neurons)) * (rng.random((k, n_neurons)) < 0.15)
    T = n_subjects * tokens
    A = rng.normal(size=(T, k)) * rng.uniform(1.0, 2.0, size=k)
    X = A @ S + noise * rng.normal(size=(T, n_neurons))
    if n_noise_dims:  # extra Gaussian (non-identifiable) structure
        X += rng.normal(size=(T, n_noise_dims)) @ rng.normal(size=(n_noise_dims, n_neurons)) * 0.1
    return X, S, A, [tokens] * n_subjects


def standardized_truth(X, S):
    """The true maps of the z-scored data: S / std (per neuron)."""
    return S / X.std(axis=0)


def split(X, lengths):
    return np.split(X, np.cumsum(lengths)[:-1])


class Chunks:
    """A minimal streamed input: iter_chunks() yields float16/float32 chunks."""

    def __init__(self, X, size, dtype=np.float32):
        self.X, self.size, self.dtype = X, size, dtype
        self.passes = 0

    def iter_chunks(self):
        self.passes += 1
        for s in range(0, len(self.X), self.size):
            yield self.X[s:s + self.size].astype(self.dtype)


# ------------------------------------------------------------------ recovery
@pytest.mark.parametrize("method", ["canica", "reference"])
def test_recovers_sparse_sources(method):
    X, S, _, lengths = make_data()
    est = CanICA(n_components=6, n_init=3, method=method).fit(split(X, lengths))
    r, pairs = match_maps(est.components_, standardized_truth(X, S))
    assert r >= 0.95, r
    assert pairs[:, 2].min() >= 0.9
    # maps are z-scored across neurons and their heavy (sparse) tail is positive
    c = est.components_
    assert np.allclose(c.mean(axis=1), 0, atol=1e-8) and np.allclose(c.std(axis=1), 1, atol=1e-6)
    assert (((c**3).mean(axis=1)) > 0).all()
    assert est.stability_.min() > 0.8
    assert est.components_.shape == (6, N_NEURONS) and est.subspace_.shape == (N_NEURONS, 6)
    assert np.allclose(est.subspace_.T @ est.subspace_, np.eye(6), atol=1e-6)
    assert est.explained_variance_.shape == (6,) and (np.diff(est.explained_variance_) <= 1e-9).all()


def test_amari_no_worse_than_sklearn():
    from sklearn.decomposition import FastICA

    X, S, _, _ = make_data(k=8, seed=3)
    est = CanICA(n_components=8, n_init=1, method="reference").fit(X)
    V = est.subspace_.numpy()
    # V = S_std^T B + noise: the true mixing of the spatial ICA problem, by least squares
    St = standardized_truth(X, S)
    B = np.linalg.lstsq(St.T - St.T.mean(0), V - V.mean(0), rcond=None)[0]      # [k sources, k features]
    ours = fastica(V, 8, "cube", random_state=0)
    W_ours = ours.unmixing[0].numpy() @ ours.whitening.numpy()
    sk = FastICA(n_components=8, fun="cube", whiten="unit-variance", random_state=0, max_iter=300).fit(V)
    d_ours, d_sk = amari_distance(W_ours, B.T), amari_distance(sk.components_, B.T)
    assert d_ours <= d_sk * 1.1 + 0.01, (d_ours, d_sk)
    assert d_ours < 0.1
    # the helper: 0 for a scaled permutation, > 0 otherwise
    P = np.eye(4)[[2, 0, 3, 1]] * 3.0
    assert amari_distance(P, np.eye(4)) == pytest.approx(0.0)
    assert amari_distance(np.ones((4, 4)) + np.eye(4), np.eye(4)) > 0.3


# ------------------------------------------------------------------ reproducibility
def test_same_seed_identical_and_other_seed_matches():
    X, S, _, lengths = make_data(seed=1)
    subj = split(X, lengths)
    a = CanICA(n_components=6, n_init=3, random_state=5).fit(subj)
    b = CanICA(n_components=6, n_init=3, random_state=5).fit(subj)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-10)
    np.testing.assert_array_equal(a.seeds_, b.seeds_)
    c = CanICA(n_components=6, n_init=3, random_state=6).fit(subj)
    assert not np.array_equal(a.seeds_, c.seeds_)
    assert match_maps(a.components_, c.components_)[0] >= 0.99
    # run 0 uses random_state itself; the other seeds are derived from it
    assert a.seeds_[0] == 5 and len(set(a.seeds_.tolist())) == 3


# ------------------------------------------------------------------ reductions
def test_incremental_and_randomized_match_exact():
    X, S, _, lengths = make_data(k=6, seed=2, n_noise_dims=20)
    subj = split(X, lengths)
    warnings.simplefilter("ignore", ICAConvergenceWarning)   # only the subspaces matter here
    exact = CanICA(n_components=6, n_init=1, reduction="exact").fit(subj)
    assert exact.reduction_ == "exact"
    # small MIGP buffer: forces many shrink steps
    migp = CanICA(n_components=6, n_init=1, reduction="incremental", migp_rows=24).fit(subj)
    rand = CanICA(n_components=6, n_init=1, reduction="randomized").fit(subj)
    assert subspace_overlap(exact.subspace_, migp.subspace_) > 0.95
    assert subspace_overlap(exact.subspace_, rand.subspace_) > 0.99
    # the reference recipe on a single matrix, MIGP over token blocks
    ref_e = CanICA(n_components=6, n_init=1, method="reference").fit(X)
    ref_m = CanICA(n_components=6, n_init=1, method="reference", reduction="incremental", migp_rows=32).fit(X)
    assert subspace_overlap(ref_e.subspace_, ref_m.subspace_) > 0.95
    # the helper itself
    Q = np.linalg.qr(np.random.default_rng(0).normal(size=(50, 6)))[0]
    assert subspace_overlap(Q, Q @ np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))[0]) == pytest.approx(1.0)
    assert subspace_overlap(Q[:, :3], np.linalg.qr(np.c_[Q, np.eye(50)[:, :3]])[0][:, 6:]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("do_cca", [True, False])
def test_canica_subspace_reproduces_multipca_recipe(do_cca):
    """nilearn's MultiPCA steps written out in numpy (exact SVDs instead of its randomized ones):
    z-score each subject, its top-k right singular vectors (rows V^T, or S V^T without CCA),
    stack, top-k right singular vectors of the stack."""
    X, _, _, _ = make_data(k=5, n_neurons=300, seed=6, n_noise_dims=30)
    lengths = [40, 90, 25, 70, 55]                        # unequal subjects, one shorter than 2k
    subj = split(X[: sum(lengths)], lengths)
    k = 15
    rows = []
    for A in subj:
        Z = (A - A.mean(0)) / A.std(0)
        _, s, Vt = np.linalg.svd(Z, full_matrices=False)
        rows.append(Vt[:k] if do_cca else s[:k, None] * Vt[:k])
    _, _, Vg = np.linalg.svd(np.concatenate(rows), full_matrices=False)
    warnings.simplefilter("ignore", ICAConvergenceWarning)   # only the subspace matters here
    est = CanICA(n_components=k, n_init=1, do_cca=do_cca).fit(subj)
    assert subspace_overlap(est.subspace_, Vg[:k].T) > 0.99999
    # pooling all tokens first gives a different subspace: the per-subject steps are not a no-op
    Z = (X[: sum(lengths)] - X[: sum(lengths)].mean(0)) / X[: sum(lengths)].std(0)
    assert subspace_overlap(est.subspace_, np.linalg.svd(Z, full_matrices=False)[2][:k].T) < 0.999


# ------------------------------------------------------------------ the papers' recipe
def _reference_recompute(X, k, seed):
    """Straightforward re-computation: z-score, full SVD, top-k left singular vectors of the
    neuron x token matrix, (ZCA-)whitened, scikit-learn FastICA cube from the same start, z-score."""
    from sklearn.decomposition import FastICA

    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1
    Z = (X - mu) / sd
    U, s, _ = np.linalg.svd(Z.T, full_matrices=False)
    U = U[:, :k]
    U = U * np.sign(U[np.abs(U).argmax(0), np.arange(k)])      # sign convention: max |entry| positive
    Uc = U - U.mean(0)
    d, E = np.linalg.eigh(Uc.T @ Uc / len(Uc))
    Xw = Uc @ (E / np.sqrt(d)) @ E.T                              # symmetric whitening
    w0 = initial_unmixing(seed, k).numpy()
    ica = FastICA(n_components=k, fun="cube", whiten=False, w_init=w0, max_iter=300, tol=1e-4, algorithm="parallel")
    Sx = ica.fit_transform(Xw).T                                  # [k, neurons]
    return (Sx - Sx.mean(1, keepdims=True)) / Sx.std(1, keepdims=True)


@pytest.mark.parametrize("data", ["sources", "noisier"])
def test_reference_mode_reproduces_recipe(data):
    if data == "sources":
        X, _, _, _ = make_data(k=6, n_neurons=500, n_subjects=6, seed=4)
        k = 6
    else:  # more components than sources, a dead neuron
        X, _, _, _ = make_data(k=5, n_neurons=400, n_subjects=8, noise=0.8, seed=5)
        X[:, 17] = 0.0
        k = 7
    est = CanICA(n_components=k, n_init=1, method="reference", random_state=666).fit(X)
    assert est.converged_.all()
    ref = _reference_recompute(X, k, 666)
    r = np.abs(np.sum(est.components_ * ref, axis=1) / X.shape[1])     # map by map, same order
    assert r.min() >= 0.99, r


# ------------------------------------------------------------------ stability
def test_stability_separates_sources_from_noise():
    # 4 true sources, 8 components asked: 4 components are fitted to Gaussian noise
    # (not standardized, so that the noise is Gaussian over neurons; bootstrap resamples of the
    # subjects move the noise subspace, as in ICASSO, while the sources stay put)
    X, S, _, lengths = make_data(k=4, seed=7, noise=1.0)
    params = dict(n_components=8, n_init=2, n_bootstrap=4, random_state=0, standardize=False, max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ICAConvergenceWarning)
        est = CanICA(**params).fit(split(X, lengths))
    truth = S
    r = np.abs(np.corrcoef(est.components_, truth)[:8, 8:]).max(axis=1)
    is_src = r > 0.9
    assert is_src.sum() == 4
    assert est.stability_[is_src].min() > 0.8
    assert est.stability_[~is_src].max() < est.stability_[is_src].min() - 0.3
    assert (est.reproducibility_[is_src] == 1).all()
    # sorted by stability, the sources come first
    assert is_src[:4].all() and (np.diff(est.stability_) <= 1e-12).all()
    # min_stability keeps only the stable ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ICAConvergenceWarning)
        kept = CanICA(**params, min_stability=0.7).fit(split(X, lengths))
    assert kept.components_.shape == (4, N_NEURONS)


def test_bootstrap_runs_are_pooled():
    X, S, _, lengths = make_data(seed=8)
    est = CanICA(n_components=6, n_init=2, n_bootstrap=2).fit(split(X, lengths))
    assert len(est.n_iter_) == 4 and len(est.seeds_) == 4
    assert match_maps(est.components_, standardized_truth(X, S))[0] >= 0.95
    assert est.stability_.min() > 0.7


# ------------------------------------------------------------------ input checks
def test_bad_inputs():
    X, _, _, lengths = make_data(seed=9, n_subjects=2)
    with pytest.raises(FuncnetError, match="exceeds the rank"):
        CanICA(n_components=500, n_init=1, method="reference").fit(X[:50])
    with pytest.raises(FuncnetError, match="exceeds the numerical rank"):
        low = np.random.default_rng(0).normal(size=(200, 3)) @ np.random.default_rng(1).normal(size=(3, 100))
        CanICA(n_components=10, n_init=1, method="reference").fit(low)
    bad = X.copy()
    bad[5, 7] = np.nan
    bad[9, 7] = np.inf
    bad[11, 30] = np.nan
    with pytest.raises(FuncnetError, match=r"3 NaN/inf values in 2 neuron\(s\) \(first at token 5, neuron 7\)") as e:
        CanICA(n_components=4, n_init=1).fit(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(FuncnetError, match="empty"):
        CanICA(n_components=2).fit(np.zeros((0, 10)))
    with pytest.raises(FuncnetError, match="empty"):
        CanICA(n_components=2).fit([])
    with pytest.raises(FuncnetError, match="n_components"):
        CanICA(n_components=0).fit(X)
    with pytest.raises(FuncnetError, match="2-D"):
        CanICA(n_components=2).fit(np.zeros(10))
    with pytest.raises(FuncnetError, match="all 5 neurons are constant"):
        CanICA(n_components=2).fit(np.ones((20, 5)))
    with pytest.raises(FuncnetError, match="method"):
        CanICA(method="nilearn").fit(X)


def test_constant_neurons_get_zero_loading():
    X, S, _, lengths = make_data(seed=10)
    X[:, [3, 40, 41]] = 2.5          # dead / constant neurons
    est = CanICA(n_components=6, n_init=2).fit(split(X, lengths))
    assert est.constant_[[3, 40, 41]].all() and est.constant_.sum() == 3
    assert (est.components_[:, [3, 40, 41]] == 0).all()
    assert est.scale_[3] == 1.0
    keep = ~est.constant_
    assert np.allclose(est.components_[:, keep].std(axis=1), 1)
    assert match_maps(est.components_[:, keep], standardized_truth(X[:, keep], S[:, keep]))[0] > 0.95


def test_convergence_warning_once_with_count():
    X, _, _, lengths = make_data(seed=11)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        est = CanICA(n_components=6, n_init=3, max_iter=2).fit(split(X, lengths))
    msgs = [x for x in w if issubclass(x.category, ICAConvergenceWarning)]
    assert len(msgs) == 1 and "3 of 3 FastICA runs did not converge" in str(msgs[0].message)
    assert not est.converged_.any() and (est.n_iter_ == 2).all()


# ------------------------------------------------------------------ streaming and dtypes
def test_streamed_input_matches_in_memory():
    X, S, _, lengths = make_data(seed=12)
    X = X.astype(np.float32)
    mem = CanICA(n_components=6, n_init=2, method="reference").fit(X)
    src = Chunks(X, 256, dtype=np.float16)          # float16 chunks, upcast chunk by chunk
    stream = CanICA(n_components=6, n_init=2, method="reference", reduction="incremental").fit(src)
    assert src.passes == 2                           # statistics pass + one MIGP pass
    assert not hasattr(stream, "time_courses_")
    np.testing.assert_allclose(stream.mean_, mem.mean_, atol=2e-3)
    r, pairs = match_maps(stream.components_, mem.components_)
    assert pairs[:, 2].min() > 0.995
    # canica: chunks are subjects, same as passing the list of chunks
    src32 = Chunks(X, lengths[0])
    a = CanICA(n_components=6, n_init=2).fit(src32)
    b = CanICA(n_components=6, n_init=2).fit(split(X, lengths))
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-5)
    # transform of a stream = transform of the array
    np.testing.assert_allclose(b.transform(src32), b.transform(X), atol=1e-4)


def test_subjects_argument_and_torch_input():
    X, _, _, lengths = make_data(seed=13)
    a = CanICA(n_components=6, n_init=2).fit(split(X, lengths))
    b = CanICA(n_components=6, n_init=2).fit(torch.from_numpy(X), subjects=lengths)
    labels = np.repeat(np.arange(len(lengths)), lengths)
    c = CanICA(n_components=6, n_init=2).fit(X, subjects=labels)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-8)
    np.testing.assert_allclose(a.components_, c.components_, atol=1e-8)
    assert a.n_subjects_ == len(lengths) and a.n_tokens_ == X.shape[0]
    with pytest.raises(FuncnetError, match="subjects="):
        CanICA(n_components=6).fit(X, subjects=[5, 5])


def test_transform_time_courses():
    X, S, A, lengths = make_data(seed=14, noise=0.1)
    est = CanICA(n_components=6, n_init=2, standardize=False).fit(X)
    tc = est.time_courses_
    assert tc.shape == (X.shape[0], 6)
    np.testing.assert_allclose(est.transform(X), tc)
    # each time course follows one true mixing column
    C = np.abs(np.corrcoef(tc.T, A.T)[:6, 6:])
    assert C.max(axis=1).min() > 0.95
    # least squares: reconstructing the standardized data from maps and time courses is optimal
    Z = (X - est.mean_) / est.scale_
    resid = Z - tc @ est.components_
    assert np.abs(resid @ est.components_.T).max() < 1e-6 * np.abs(Z @ est.components_.T).max()
    with pytest.raises(FuncnetError, match="neurons"):
        est.transform(X[:, :10])
    assert est.mixing_ is est.time_courses_
    streamed = CanICA(n_components=6, n_init=1).fit(Chunks(X, lengths[0]))
    assert not hasattr(streamed, "mixing_") and not hasattr(streamed, "time_courses_")
    assert streamed.transform(X).shape == (X.shape[0], 6)


def test_fastica_batched_runs_equal_single_runs():
    X, _, _, _ = make_data(seed=15)
    V = CanICA(n_components=6, n_init=1, method="reference").fit(X).subspace_
    batch = fastica(V, 6, random_state=3, n_runs=3)
    for r, seed in enumerate([3] + []):
        one = fastica(V, 6, w_init=initial_unmixing(seed, 6))
        np.testing.assert_allclose(batch.sources[r].numpy(), one.sources[0].numpy(), atol=1e-8)
    mixed = fastica(V, 6, random_state=3, n_runs=3, mixed_precision=True)
    for r in range(3):
        assert np.abs(np.corrcoef(mixed.sources[r].numpy(), batch.sources[r].numpy())[:6, 6:]).max(1).min() > 0.999
    lc = fastica(V, 6, "logcosh", random_state=0)
    assert lc.converged.all()
    with pytest.raises(FuncnetError, match="fun"):
        fastica(V, 6, "tanh")


def test_fit_many_parallel_equals_sequential():
    X1, _, _, l1 = make_data(seed=16)
    X2, _, _, _ = make_data(seed=17)
    params = dict(n_components=6, n_init=2)
    res = fit_many([split(X1, l1), lambda: X2], params, n_jobs=2, progress=False)
    assert len(res) == 2 and all(isinstance(r, CanICA) for r in res)
    np.testing.assert_allclose(res[0].components_, CanICA(**params).fit(split(X1, l1)).components_, atol=1e-10)
    np.testing.assert_allclose(res[1].components_, CanICA(**params).fit(X2).components_, atol=1e-10)
    with pytest.raises(FuncnetError, match="input 1"):
        fit_many([X1, np.zeros((0, 5))], params, progress=False)


def test_sklearn_style_params():
    est = CanICA(n_components=7, reduction="incremental")
    p = est.get_params()
    assert p["n_components"] == 7 and p["reduction"] == "incremental" and p["dtype"] == "float64"
    assert set(p) == set(inspect.signature(CanICA).parameters)     # every parameter, declared once
    assert est.set_params(n_init=3) is est and est.n_init == 3
    assert not hasattr(est, "components_")
    # scikit-learn's NotFittedError, and funcnet's error too
    with pytest.raises(SkNotFittedError, match="not fitted"):
        est.transform(np.zeros((3, 4)))
    with pytest.raises(FuncnetError, match="not fitted"):
        est.transform(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="Invalid parameter 'n_comps'"):
        est.set_params(n_comps=3)


def test_group_rows_over_budget_are_decomposed_once_and_cached_on_disk(monkeypatch, tmp_path):
    """Group rows larger than the in-memory cache budget are written once to a float32 file and read
    back at every randomized pass: the (streamed) subjects are read and decomposed twice in all
    (statistics + one pass), not once per pass, and the result is identical to the in-memory cache.
    Without room on the disk each pass re-reads and re-decomposes the subjects (same result)."""
    X, _, _, lengths = make_data(seed=21)
    X = X.astype(np.float32)
    cached_src = Chunks(X, lengths[0])
    cached = CanICA(n_components=6, n_init=2, reduction="randomized").fit(cached_src)
    monkeypatch.setattr(ica_mod, "_CACHE_BYTES", 0)
    made = []
    real_disk = ica_mod._DiskRows

    def spy(*a, **kw):
        made.append(real_disk(*a, **kw))
        return made[-1]

    monkeypatch.setattr(ica_mod, "_DiskRows", spy)
    src = Chunks(X, lengths[0])
    ondisk = CanICA(n_components=6, n_init=2, reduction="randomized", workdir=str(tmp_path)).fit(src)
    assert cached_src.passes == 2 and src.passes == 2
    assert len(made) == 1 and made[0].n_rows == sum(min(6, t) for t in lengths)
    assert not list(tmp_path.iterdir())          # the row file is removed after the fit
    np.testing.assert_array_equal(ondisk.components_, cached.components_)
    monkeypatch.setattr(ica_mod, "_disk_has_room", lambda n, workdir=None: False)
    src = Chunks(X, lengths[0])
    streamed = CanICA(n_components=6, n_init=2, reduction="randomized").fit(src)
    assert src.passes > 2     # stats + every reduction pass
    np.testing.assert_allclose(streamed.components_, cached.components_, atol=1e-4)


def test_exact_reduction_streams_when_rows_exceed_neurons(monkeypatch):
    """The exact group PCA of more group rows than neurons accumulates the Gram matrix in one pass
    over the subjects without keeping their rows (memory independent of the number of subjects);
    with fewer rows than neurons it keeps them for the dual Gram matrix. Same subspace either way."""
    seen = []
    real = ica_mod._reduce_exact

    def spy(producer, N, k, weights, materialized=None):
        seen.append(materialized is not None)
        return real(producer, N, k, weights, materialized)

    monkeypatch.setattr(ica_mod, "_reduce_exact", spy)
    X, _, _, lengths = make_data(k=4, n_neurons=60, n_subjects=8, tokens=30, seed=22)
    src = Chunks(X.astype(np.float32), lengths[0])
    warnings.simplefilter("ignore", ICAConvergenceWarning)
    many = CanICA(n_components=10, n_init=1).fit(src)          # 8 subjects x 10 rows = 80 > 60 neurons
    few = CanICA(n_components=4, n_init=1).fit(src)            # 8 x 4 = 32 < 60
    assert seen == [False, True]
    assert src.passes == 4                                      # stats + one reduction pass, each fit
    rows = np.concatenate([np.linalg.svd((A - A.mean(0)) / A.std(0), full_matrices=False)[2][:10]
                           for A in split(X.astype(np.float32).astype(np.float64), lengths)])
    assert subspace_overlap(many.subspace_, np.linalg.svd(rows, full_matrices=False)[2][:10].T) > 0.9999
    assert few.subspace_.shape == (60, 4)


# ------------------------------------------------------------------ CUDA (same code path; run where a GPU exists)
def test_cuda_requested_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    X, _, _, lengths = make_data(seed=30)
    with pytest.raises(FuncnetError, match="CUDA is not available"):
        CanICA(n_components=4, device="cuda").fit(split(X, lengths))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["canica", "reference"])
def test_cuda_matches_cpu(method):
    """The CUDA path is the CPU code on another device: same subspace, and the same maps from the
    same seeds up to the floating-point differences of the device's kernels."""
    X, S, _, lengths = make_data(k=6, seed=31)
    subj = split(X, lengths) if method == "canica" else X
    cpu = CanICA(n_components=6, n_init=4, method=method, random_state=3).fit(subj)
    gpu = CanICA(n_components=6, n_init=4, method=method, random_state=3, device="cuda").fit(subj)
    assert subspace_overlap(cpu.subspace_, gpu.subspace_) > 0.9999
    assert match_maps(cpu.components_, gpu.components_)[0] > 0.99
    assert match_maps(standardized_truth(X, S), gpu.components_)[0] > 0.95
    ests = fit_many([subj, subj], dict(n_components=6, n_init=2, method=method, random_state=3), device="cuda")
    assert match_maps(ests[0].components_, ests[1].components_)[0] > 0.999


# ------------------------------------------------------------------ scikit-learn estimator conventions
def _expected_failed_checks(estimator):
    return {
        "check_transformer_n_iter": "n_iter_ holds one iteration count per FastICA run (n_init + n_bootstrap "
                                    "runs, pooled by ICASSO): an array, where the check wants a single number",
    }


# scikit-learn's own suite. Its data have 1 to 5 features (neurons: the samples of a spatial ICA, whose
# maps are centred over them), so k = 1; n_init = 2 keeps the ICASSO pooling of several runs in play.
@parametrize_with_checks([CanICA(n_components=1, n_init=2, max_iter=50)],
                         expected_failed_checks=_expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_public_names_importable_from_both_paths():
    for name in ica_mod.__all__:
        assert getattr(networks_pkg, name) is getattr(ica_mod, name), name


def test_clone_get_set_params_round_trip():
    X, _, _, lengths = make_data(n_neurons=200, seed=40)
    est = CanICA(6, n_init=2, fun="logcosh", reduction="exact", dtype=torch.float32, random_state=3)
    est.fit(split(X, lengths))
    twin = clone(est)
    assert twin is not est and not hasattr(twin, "components_")
    assert twin.get_params() == est.get_params() and twin.get_params()["dtype"] is torch.float32
    # params changed by set_params survive clone; a refit of the clone gives the same maps
    twin.set_params(n_init=3, random_state=4)
    assert clone(twin).get_params()["n_init"] == 3
    twin.set_params(n_init=2, random_state=3)
    np.testing.assert_array_equal(twin.fit(split(X, lengths)).components_, est.components_)
    # __init__ stores values unchanged, even invalid ones (checked by fit)
    odd = CanICA(n_components="six", n_init=-1, dtype="float16")
    assert odd.get_params()["n_components"] == "six" and odd.get_params()["n_init"] == -1
    assert repr(CanICA(6, n_init=2)) == "CanICA(n_components=6, n_init=2)"
    # a fitted estimator pickles, and the copy transforms alike
    again = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(again.transform(X[:20]), est.transform(X[:20]))


def test_parameters_after_n_components_are_keyword_only():
    with pytest.raises(TypeError):
        CanICA(6, 3)
    kinds = {n: p.kind for n, p in inspect.signature(CanICA).parameters.items()}
    assert kinds.pop("n_components") is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert set(kinds.values()) == {inspect.Parameter.KEYWORD_ONLY}


def test_pipeline_standard_scaler_then_canica():
    X, S, _, _ = make_data(n_neurons=300, seed=41)
    pipe = Pipeline([("scale", StandardScaler()), ("ica", CanICA(6, n_init=2))])
    tc = pipe.fit_transform(X)
    assert tc.shape == (X.shape[0], 6)
    Z = StandardScaler().fit_transform(X)
    direct = CanICA(6, n_init=2).fit(Z)
    np.testing.assert_array_equal(pipe.named_steps["ica"].components_, direct.components_)
    np.testing.assert_allclose(pipe.transform(X[:50]), direct.transform(Z[:50]), rtol=1e-10, atol=1e-10)
    assert match_maps(pipe.named_steps["ica"].components_, standardized_truth(X, S))[0] >= 0.95
    assert list(pipe.get_feature_names_out()) == [f"canica{i}" for i in range(6)]
    # nested parameters reach the estimator
    pipe.set_params(ica__n_components=4)
    assert pipe.fit(X).named_steps["ica"].components_.shape == (4, 300)


@pytest.mark.parametrize("params, match", [
    (dict(n_components=2.5), "n_components"),
    (dict(n_init=0), "n_init"),
    (dict(n_bootstrap=-1), "n_bootstrap"),
    (dict(max_iter=0), "max_iter"),
    (dict(tol=-1e-3), "tol"),
    (dict(random_state=1.5), "random_state"),
    (dict(standardize="yes"), "standardize"),
    (dict(do_cca=None), "do_cca"),
    (dict(mixed_precision="always"), "mixed_precision"),
    (dict(fun="tanh"), "fun"),
    (dict(reduction="svd"), "reduction"),
    (dict(min_stability="high"), "min_stability"),
    (dict(migp_rows=0), "migp_rows"),
    (dict(dtype="float16"), "dtype"),
    (dict(device="tpu:x"), "device"),
])
def test_bad_parameters_raise_valueerror_at_fit(params, match):
    X, _, _, _ = make_data(n_neurons=50, n_subjects=2, tokens=20, seed=42)
    est = CanICA(**{"n_components": 2, "n_init": 1, **params})     # __init__ accepts anything
    with pytest.raises(ValueError, match=match) as e:                # FuncnetError is a ValueError
        est.fit(X)
    assert isinstance(e.value, FuncnetError) and "\n" not in str(e.value)


def test_sklearn_input_conventions():
    X, _, _, lengths = make_data(n_neurons=100, seed=43)
    est = CanICA(4, n_init=2).fit(X)
    assert est.n_features_in_ == 100 and est.n_components_ == 4
    # a list of rows is one 2-D array (scikit-learn's array-like); a list of 2-D arrays, subjects
    rows = CanICA(4, n_init=2).fit(X.tolist())
    np.testing.assert_array_equal(rows.components_, est.components_)
    assert CanICA(4, n_init=2).fit(split(X, lengths)).n_subjects_ == len(lengths)
    with pytest.raises(ValueError, match="X has 99 features, but CanICA is expecting 100 features"):
        est.transform(X[:, 1:])
    bad = X[:5].copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        est.transform(bad)
    # transform leaves the fitted estimator as it is
    state = dict(vars(est))
    est.transform(X[:7])
    assert vars(est).keys() == state.keys() and all(vars(est)[k] is v for k, v in state.items())
    # informative errors for inputs a spatial ICA cannot take
    with pytest.raises(ValueError, match="n_samples = 1"):
        CanICA(1).fit(X[:1])
    with pytest.raises(ValueError, match=r"at least 2 non-constant neurons, got 1 in 1 feature\(s\)"):
        CanICA(1).fit(X[:, :1])
    with pytest.raises(ValueError, match="exceeds the rank"):
        CanICA(5, method="reference").fit(X[:, :5])   # 5 neurons centred: rank 4
    with pytest.raises(ValueError, match="sparse"):
        CanICA(2).fit(sparse.csr_matrix(X))
    with pytest.raises(ValueError, match="Complex data not supported"):
        CanICA(2).fit(X + 1j)


def test_refit_on_stream_drops_old_time_courses():
    X, _, _, lengths = make_data(n_neurons=200, seed=44)
    est = CanICA(4, n_init=1).fit(X)
    assert est.mixing_.shape == (X.shape[0], 4)
    est.fit(Chunks(X, lengths[0]))
    assert not hasattr(est, "time_courses_") and not hasattr(est, "mixing_")
    np.testing.assert_allclose(est.fit_transform(Chunks(X, lengths[0])), est.transform(X), atol=1e-4)


# ------------------------------------------------------------------ column blocks, one reduction for several seeds
def _wide(seed=40, T=120, N=900):
    """Few tokens, many neurons (the fingerprint's shape): sparse maps mixed by time courses."""
    X, S, _, _ = make_data(k=5, n_neurons=N, n_subjects=1, tokens=T, seed=seed)
    return X.astype(np.float32), S


@pytest.mark.parametrize("wide", [True, False])
def test_column_blocks_equal_the_matrix_in_memory(wide):
    """Fitting the neurons in blocks read one at a time (a layer each) gives the in-memory fit: the token
    Gram matrix summed over blocks when neurons outnumber tokens, the blocks side by side otherwise."""
    X, S = _wide(T=120, N=900) if wide else _wide(T=400, N=150)
    cuts = [0, 300, 310, 700, 900] if wide else [0, 50, 150]
    reads = []

    def block(a, b):
        reads.append((a, b))
        return X[:, a:b]

    params = dict(n_components=5, n_init=1, method="reference", standardize=True, dtype="float32")
    ref = CanICA(**params).fit(X)
    cols = ColumnBlocks([lambda a=a, b=b: block(a, b) for a, b in zip(cuts[:-1], cuts[1:])])
    est = CanICA(**params).fit(cols)
    assert est.components_.shape == ref.components_.shape and est.reduction_ == "exact"
    np.testing.assert_allclose(est.subspace_.abs().numpy(), ref.subspace_.abs().numpy(), atol=1e-5)
    np.testing.assert_allclose(est.components_, ref.components_, atol=2e-4)
    np.testing.assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-4)
    assert match_maps(standardized_truth(X, S), est.components_)[0] > 0.95
    if wide:  # statistics, Gram matrix, projection: three reads of every block, one block at a time
        assert len(reads) == 3 * (len(cuts) - 1)


def test_column_blocks_bootstrap_and_errors():
    X, _ = _wide(seed=41)
    cols = ColumnBlocks([X[:, :400], X[:, 400:]])
    est = CanICA(n_components=5, n_init=2, n_bootstrap=2, method="reference").fit(cols)
    assert len(est.seeds_) == 4 and np.isfinite(est.stability_).all()
    with pytest.raises(FuncnetError, match="method='reference'"):
        CanICA(n_components=5).fit(cols)
    with pytest.raises(FuncnetError, match="different token counts"):
        CanICA(n_components=5, method="reference").fit(ColumnBlocks([X[:, :400], X[:-1, 400:]]))
    with pytest.raises(FuncnetError, match="randomized"):
        CanICA(n_components=5, method="reference", reduction="randomized").fit(cols)
    bad = X.copy()
    bad[3, 500] = np.nan
    with pytest.raises(FuncnetError, match="neuron 500"):
        CanICA(n_components=5, method="reference").fit(ColumnBlocks([bad[:, :400], bad[:, 400:]]))


@pytest.mark.parametrize("reduction", ["exact", "randomized"])
def test_fit_seeds_equals_one_fit_per_seed(reduction):
    """fit_seeds reads and reduces the data once when the reduction does not depend on the seed, and
    gives exactly the fits CanICA(random_state=s).fit would; a seeded (randomized) reduction is redone."""
    X, _, _, lengths = make_data(seed=42)
    src = Chunks(X.astype(np.float32), lengths[0])
    params = dict(n_components=6, n_init=2, reduction=reduction)
    ests = fit_seeds(src, [3, 1003, 2003], params)
    assert src.passes == (2 if reduction == "exact" else 2 + 2)      # stats + rows (+ one per extra seed)
    for est, s in zip(ests, [3, 1003, 2003]):
        one = CanICA(**params, random_state=s).fit(Chunks(X.astype(np.float32), lengths[0]))
        np.testing.assert_array_equal(est.components_, one.components_)
        np.testing.assert_array_equal(est.stability_, one.stability_)


# ------------------------------------------------------------------ sources dtype, ICASSO on the device
def test_float32_sources_match_float64():
    """The pooled FastICA sources in float32 (half the memory) give the float64 fit's maps to float32
    rounding and the same ICASSO clusters and stability; "auto" switches to float32 only past 1 GiB of float64 sources."""
    X, _, _, lengths = make_data(seed=43)
    params = dict(n_components=6, n_init=6, random_state=5)
    f64 = CanICA(**params, sources_dtype="float64").fit(split(X, lengths))
    f32 = CanICA(**params, sources_dtype="float32").fit(split(X, lengths))
    auto = CanICA(**params).fit(split(X, lengths))
    np.testing.assert_array_equal(auto.components_, f64.components_)     # small: float64, as before
    # the same clusters (a centrotype may be another run's copy of the same map: they tie to ~1e-8)
    np.testing.assert_array_equal(f32.cluster_sizes_, f64.cluster_sizes_)
    # |dz| <= 4e-4 here: FastICA's tolerance (1e-4), the spread between the runs' copies of a map
    np.testing.assert_allclose(f32.components_, f64.components_, atol=1e-3)
    np.testing.assert_allclose(f32.stability_, f64.stability_, atol=1e-6)
    assert CanICA()._sources_dtype(torch.float64, 10, 64, 459_000) == torch.float32
    assert CanICA()._sources_dtype(torch.float64, 10, 64, 46_000) == torch.float64
    with pytest.raises(FuncnetError, match="sources_dtype"):
        CanICA(n_components=6, sources_dtype="float16").fit(X)


def test_icasso_correlations_from_float32_blocks():
    """ICASSO's |r| matrix: the float64 maps as before (one host GEMM), float32 maps correlated in
    float64 blocks of neurons without a float64 copy of them (what runs on the device)."""
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(12, 3000))
    Z = (Z - Z.mean(1, keepdims=True)) / Z.std(1, keepdims=True)
    ref = np.abs(Z @ Z.T) / Z.shape[1]
    np.testing.assert_array_equal(ica_mod._abs_corr(torch.from_numpy(Z)), ref)
    old = ica_mod._icasso.__globals__["_CORR_BLOCK"]
    try:
        ica_mod._icasso.__globals__["_CORR_BLOCK"] = 1000      # three blocks
        C32 = ica_mod._abs_corr(torch.from_numpy(Z).float())
    finally:
        ica_mod._icasso.__globals__["_CORR_BLOCK"] = old
    assert C32.dtype == np.float64
    np.testing.assert_allclose(C32, ref, atol=1e-6)


# ------------------------------------------------------------------ memory budget of parallel CPU fits
def test_fit_estimate_grows_with_the_shapes():
    p = dict(n_components=64, n_init=10)
    small = estimate_fit_bytes(16_384, 1_536, p)
    wide = estimate_fit_bytes(16_384, 14_336, p)
    assert 0 < small < wide
    assert estimate_fit_bytes(16_384, 14_336, {**p, "n_init": 20}) > wide
    assert estimate_fit_bytes(16_384, 14_336, p, in_memory=True) > wide + 16_384 * 14_336 * 4 - 1
    # 10 runs x 64 maps of 459k neurons: the float32 pooled sources (auto) are counted, not float64
    whole = estimate_fit_bytes(16_384, 458_752, p, subject_tokens=128)
    assert 10 * 64 * 458_752 * 4 < whole < 10 * 64 * 458_752 * 4 + (6 << 30)


def test_concurrent_cpu_fits_are_bounded_by_the_memory_budget(monkeypatch):
    """CPU fits run concurrently up to the cores, but only as many as the memory budget holds of the
    largest fit's estimate (at least one); the budget bounds an explicit n_jobs too."""
    assert ica_mod._cpu_jobs(8, [100] * 8, budget=250, cores=16) == 2
    assert ica_mod._cpu_jobs(8, [100] * 8, budget=10_000, cores=16) == 8
    assert ica_mod._cpu_jobs(3, [100] * 3, budget=10_000, cores=16) == 3
    assert ica_mod._cpu_jobs(8, [100] * 8, budget=50, cores=16) == 1
    assert ica_mod._cpu_jobs(8, [100, 300], budget=650, cores=16, n_jobs=4) == 2
    assert ica_mod._cpu_jobs(8, None, budget=50, cores=4) == 4            # nothing known: the cores
    import threading
    import time

    monkeypatch.setattr(ica_mod.os, "cpu_count", lambda: 8)
    X, _, _, _ = make_data(n_neurons=200, n_subjects=2, tokens=40, seed=44)
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def load():
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.2)
        with lock:
            state["now"] -= 1
        return X

    params = dict(n_components=4, n_init=1)
    per = estimate_fit_bytes(*X.shape, params)
    fit_many([load] * 6, params, shapes=[X.shape] * 6, memory_budget=int(2.5 * per), progress=False)
    assert state["max"] == 2
    state["max"] = 0
    fit_many([load] * 6, params, shapes=[X.shape] * 6, memory_budget=100 * per, progress=False)
    assert state["max"] > 2
