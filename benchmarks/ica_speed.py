"""Benchmark funcnet's CanICA against nilearn CanICA, scikit-learn FastICA and the papers' recipe.

Per-layer mode on real SmolLM2-135M activations (down-projection input, 1536 neurons per layer):
each (method, layer) runs in a fresh subprocess so that its peak RSS is its own. Prints, per layer
and method: wall time, peak RSS, subspace overlap with funcnet's group PCA subspace and agreement
of funcnet's *stable* maps (stability >= --stable) with each method's maps (mean best |r|).
The 30-layer figures are EXTRAPOLATED: mean time over the layers run x 30.

    python benchmarks/ica_speed.py --layers 0,15,29 --k 128            # funcnet, reference, sklearn
    python benchmarks/ica_speed.py --layers 15 --k 128 --methods all   # + nilearn (about 1 min / layer)
    python benchmarks/ica_speed.py --npy-dir DIR                       # layer{L}.npy files instead of recording

Activations come from ``funcnet.record.collect`` on ``funcnet.load_model("smollm2-135m")`` and
``funcnet.corpus.load_corpus("builtin:prose")`` tokenized in packed windows of 128 tokens; each
window is one subject for funcnet's CanICA. Needs the ``bench`` extra (nilearn, psutil) for nilearn.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

N_LAYERS_SMOLLM2 = 30
ALL_METHODS = ("funcnet", "funcnet_seed1", "funcnet_ref", "reference", "sklearn", "sklearn_seed1", "sklearn_seed2",
               "nilearn")
DEFAULT_METHODS = ("funcnet", "funcnet_seed1", "funcnet_ref", "reference", "sklearn", "sklearn_seed1", "sklearn_seed2")


# ----------------------------------------------------------------------------- activations
def record_activations(layers: list[int], max_tokens: int, window: int) -> dict[int, np.ndarray]:
    try:
        import funcnet
        from funcnet.data.corpus import load_corpus, tokenize
        from funcnet.data.record import collect
    except ImportError as e:  # the recording API is written by another engineer
        sys.exit(f"ica_speed: the recording API is not available yet ({e}); pass --npy-dir with layer{{L}}.npy files")
    lm = funcnet.load_model("smollm2-135m")
    corpus = load_corpus("builtin:prose")
    tok = tokenize(corpus, lm.tokenizer, max_length=window, mode="packed", max_tokens=max_tokens)
    acts = collect(lm, tok, signals=("neurons",), layers=layers)
    return {l: np.ascontiguousarray(acts[(l, "neurons")], dtype=np.float32) for l in layers}


# ----------------------------------------------------------------------------- methods (in a child)
def _zscore(X: np.ndarray) -> np.ndarray:
    sd = X.std(0)
    sd[sd < 1e-6 * np.median(sd)] = 1
    return (X - X.mean(0)) / sd


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: per address space, so not inherited through fork + exec
    as ru_maxrss is on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _documents(X: np.ndarray, path: str) -> list[np.ndarray]:
    """X split into the documents whose lengths ``--subjects documents`` saved next to it."""
    return np.split(X, np.cumsum(np.load(path + ".docs.npy"))[:-1])


def run_method(method: str, path: str, k: int, n_init: int, window: int, out: str) -> None:
    """``window`` = tokens per funcnet subject; 0 = the whole matrix is one subject (as nilearn gets
    it); -1 = one subject per document (lengths in ``{path}.docs.npy``, as ``decompose`` does)."""
    warnings.simplefilter("ignore")
    X = np.load(path)
    t0 = time.perf_counter()
    res: dict = {}
    if method.startswith("funcnet"):
        from funcnet.networks.canica import CanICA

        if window < 0:
            subjects = _documents(X, path)
        else:
            subjects = [X[s:s + window] for s in range(0, len(X), window)] if window else X
        if method == "funcnet_ref":
            est = CanICA(n_components=k, n_init=1, method="reference", random_state=666).fit(X)
        else:
            est = CanICA(n_components=k, n_init=n_init, random_state=1 if method == "funcnet_seed1" else 0)
            est.fit(subjects)
        res = dict(maps=est.components_, subspace=est.subspace_.numpy(), stability=est.stability_,
                   converged=int(est.converged_.sum()), runs=len(est.converged_))
    elif method == "reference":   # the papers' recipe as written: full SVD, FastICA cube, float64
        import torch
        from sklearn.decomposition import FastICA

        Z = torch.from_numpy(_zscore(X.astype(np.float64)))
        U, _, _ = torch.linalg.svd(Z.T, full_matrices=False)
        Uk = U[:, :k].numpy()
        ica = FastICA(n_components=k, fun="cube", whiten="unit-variance", max_iter=300, tol=1e-4,
                      random_state=666, algorithm="parallel")
        S = ica.fit_transform(Uk).T
        res = dict(maps=S, converged=int(ica.n_iter_ < 300), runs=1)
    elif method.startswith("sklearn"):     # spatial ICA of the z-scored matrix, float64 input
        from sklearn.decomposition import FastICA

        Z = _zscore(X.astype(np.float64))
        seed = int(method.rsplit("seed", 1)[1]) if "seed" in method else 0
        ica = FastICA(n_components=k, fun="cube", whiten="unit-variance", max_iter=300, tol=1e-4, random_state=seed)
        S = ica.fit_transform(Z.T).T
        res = dict(maps=S, converged=int(ica.n_iter_ < 300), runs=1)
    elif method == "nilearn":     # whole matrix as one subject, 4D image over an all-ones mask
        import nibabel as nib
        from nilearn.decomposition import CanICA as NiCanICA

        T, N = X.shape
        shape = (8, 12, 16)
        assert int(np.prod(shape)) == N, f"nilearn wrapper expects {np.prod(shape)} neurons, got {N}"
        affine = np.eye(4)
        def image(A):
            return nib.Nifti1Image(A.T.reshape(*shape, len(A)).astype(np.float32), affine)

        # one 4D image per subject (document) when funcnet gets documents, else the whole matrix
        img = [image(A) for A in _documents(X, path)] if window < 0 else image(X)
        mask = nib.Nifti1Image(np.ones(shape, dtype=np.int8), affine)
        nc = NiCanICA(n_components=k, n_init=n_init, mask=mask, smoothing_fwhm=None, detrend=False,
                      standardize="zscore_sample", random_state=0, threshold=None, verbose=0)
        nc.fit(img)
        comps = nc.components_
        res = dict(maps=np.asarray(comps), runs=n_init, converged=-1)
    else:
        raise SystemExit(f"unknown method {method}")
    res["seconds"] = time.perf_counter() - t0
    res["peak_rss_mb"] = _peak_rss_mb()
    np.savez(out, **{k_: np.asarray(v) for k_, v in res.items()})


# ----------------------------------------------------------------------------- comparisons
def compare(ref: dict, other: dict, stable: float) -> tuple[float, float, int]:
    from funcnet.networks.canica import subspace_overlap

    ov = subspace_overlap(ref["subspace"], other["maps"].T)
    return (ov, *stable_agreement(ref["maps"], ref["stability"], other["maps"], stable))


def stable_agreement(maps: np.ndarray, stability: np.ndarray, other: np.ndarray, stable: float) -> tuple[float, int]:
    """Mean over ``maps`` with stability >= ``stable`` of the best |r| with any map of ``other``."""
    keep = stability >= stable
    if not keep.any():
        return float("nan"), 0
    A = maps[keep]
    A = (A - A.mean(1, keepdims=True)) / A.std(1, keepdims=True)
    B = (other - other.mean(1, keepdims=True)) / np.maximum(other.std(1, keepdims=True), 1e-300)
    r = np.abs(A @ B.T) / A.shape[1]
    return float(r.max(axis=1).mean()), int(keep.sum())


def _open_store(args):
    """The activation store both timed modes decompose: all layers of SmolLM2 on --max-tokens tokens
    of the built-in prose in --window-token packed windows, recorded to disk once (not timed)."""
    import funcnet
    from funcnet.data.record import record
    from funcnet.data.store import ActivationStore

    store_dir = Path(args.store or tempfile.mkdtemp(prefix="funcnet-ica-bench-"))
    t0 = time.perf_counter()
    exists = (store_dir / "manifest.json").exists()
    if not exists or not ActivationStore.open(store_dir).complete:
        lm = funcnet.load_model("smollm2-135m")
        record(lm, "builtin:prose", out=store_dir, max_tokens=args.max_tokens, max_length=args.window, mode="packed",
               resume=exists)
        del lm
    import gc

    gc.collect()
    return ActivationStore.open(store_dir), time.perf_counter() - t0


class _AnonPeak:
    """Peak anonymous RSS (RssAnon, sampled every 50 ms in a thread): process memory without the
    memory-mapped store pages, which VmHWM counts although the kernel can drop them at any time."""

    def __enter__(self):
        import threading

        self.peak, self._stop = 0.0, threading.Event()

        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, self.now())
                self._stop.wait(0.05)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def now() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def _timed_decompose(args, mode: str) -> int:
    """Time what users run (``funcnet networks``): ``funcnet.networks.decompose(store, mode=...)``
    with documents as subjects streamed from the memory-mapped store; per-layer fits run through
    ``fit_many`` (one single-threaded fit per core). Prints wall time, CPU time and peak RSS."""
    import torch

    from funcnet.networks import decompose

    warnings.simplefilter("ignore")
    store, t_rec = _open_store(args)
    rss0 = _peak_rss_mb()
    c0, t0 = time.process_time(), time.perf_counter()
    with _AnonPeak() as anon:
        nets = decompose(store, mode=mode, n_components=args.k, n_init=args.n_init, random_state=0, tol=args.tol,
                         device=args.device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    decs = nets.decompositions
    n_stable = [int((d.stability >= args.stable).sum()) for d in decs]
    n_docs = len(np.unique(store.tokens["doc_ids"]))
    print(f"\n{mode} mode: {len(decs)} decomposition(s) of {store.n_tokens} tokens ({n_docs} documents = subjects) x "
          f"{decs[0].maps.shape[1]} neurons ({len(store.layers)} layers), k={args.k}, n_init={args.n_init} + ICASSO, tol={args.tol}; "
          f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")
    print(f"recording/opening the store {t_rec:.1f} s (not counted); decomposition wall {wall:.1f} s, CPU {cpu:.1f} s; "
          f"peak RSS {_peak_rss_mb():.0f} MB (before: {rss0:.0f} MB; with the memory-mapped store pages), peak anonymous "
          f"RSS {anon.peak:.0f} MB; stable maps (>= {args.stable}) per "
          f"decomposition: median {int(np.median(n_stable))}; load average at the end {os.getloadavg()[0]:.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(mode=mode, tokens=store.n_tokens, documents=n_docs,
                                                  neurons=int(decs[0].maps.shape[1]), decompositions=len(decs),
                                                  k=args.k, n_init=args.n_init, tol=args.tol, wall_s=wall, cpu_s=cpu,
                                                  peak_rss_mb=_peak_rss_mb(), rss_before_mb=rss0,
                                                  peak_anon_rss_mb=anon.peak, n_stable=n_stable,
                                                  load_end=os.getloadavg()[0]), indent=2))
    if args.compare_tol:
        _compare_tol(args, store, mode, nets, wall)
    return 0


def _compare_tol(args, store, mode: str, base, base_wall: float) -> None:
    """Time ``decompose`` again with tol=--compare-tol (seed 0) and with the same tol and seed 1,
    and compare their maps with the first run's stable maps (per decomposition, then averaged):
    is the looser tolerance's difference within the seed-to-seed variation?"""
    from funcnet.networks import decompose

    print(f"\n{'run':22s} {'wall s':>7s} {'CPU s':>7s}  stable-map agreement with tol={args.tol}, seed 0 (>= {args.stable})")
    print(f"{f'tol={args.tol}, seed 0':22s} {base_wall:7.1f} {'':>7s}  1 (itself)")
    for tol, seed in ((args.compare_tol, 0), (args.tol, 1)):
        c0, t0 = time.process_time(), time.perf_counter()
        nets = decompose(store, mode=mode, n_components=args.k, n_init=args.n_init, random_state=seed, tol=tol,
                         device=args.device, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        agr = [stable_agreement(a.maps, a.stability, b.maps, args.stable)[0]
               for a, b in zip(base.decompositions, nets.decompositions)]
        print(f"{f'tol={tol}, seed {seed}':22s} {wall:7.1f} {cpu:7.1f}  {np.nanmean(agr):.3f} (per decomposition "
              f"{np.nanmin(agr):.3f}-{np.nanmax(agr):.3f})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--n-init", type=int, default=10)
    ap.add_argument("--tol", type=float, default=1e-4, help="--whole / --all-layers: FastICA tolerance")
    ap.add_argument("--device", default="cpu", help="--whole / --all-layers: cpu or cuda (all GPUs round-robin)")
    ap.add_argument("--compare-tol", type=float, default=None,
                    help="--whole / --all-layers: also run with this tolerance and with seed 1, and compare the maps")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--window", type=int, default=128, help="tokens per subject (packed window)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma list or 'all' ({', '.join(ALL_METHODS)})")
    ap.add_argument("--stable", type=float, default=0.8, help="stability index of the maps compared")
    ap.add_argument("--npy-dir", default=None, help="read layer{L}.npy [tokens, neurons] instead of recording")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--all-layers", action="store_true",
                    help="time funcnet's per-layer mode on all 30 layers (decompose on a store), not the comparison")
    ap.add_argument("--subjects", choices=("windows", "one", "documents"), default="windows",
                    help="funcnet's subjects: one per --window tokens (default), the whole matrix as one, or the "
                         "documents of the --store (what decompose uses)")
    ap.add_argument("--whole", action="store_true", help="time whole-model mode (all layers' neurons together)")
    ap.add_argument("--store", default=None,
                    help="--whole / --all-layers / --subjects documents: reuse (or create) the activation store in this folder")
    args = ap.parse_args(argv)
    if args.whole or args.all_layers:
        return _timed_decompose(args, "whole" if args.whole else "per-layer")
    layers = [int(x) for x in args.layers.split(",")]
    methods = list(ALL_METHODS) if args.methods == "all" else args.methods.split(",")
    if "funcnet" not in methods:
        methods.insert(0, "funcnet")   # the comparisons are made against funcnet's result

    doc_lengths = None
    if args.subjects == "documents" or args.store:   # the store decompose() reads, rows in document order
        store, _ = _open_store(args)
        docs = store.document_rows()
        order = np.concatenate(docs)
        acts = {l: np.asarray(store.layer(l, "neurons")[order], dtype=np.float32) for l in layers}
        doc_lengths = np.array([len(d) for d in docs])
    elif args.npy_dir:
        acts = {l: np.load(Path(args.npy_dir) / f"layer{l}.npy", mmap_mode="r")[: args.max_tokens] for l in layers}
    else:
        acts = record_activations(layers, args.max_tokens, args.window)
    sub_arg = {"one": 0, "documents": -1}.get(args.subjects, args.window)
    ctx = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for l in layers:
            path = os.path.join(tmp, f"layer{l}.npy")
            np.save(path, np.ascontiguousarray(acts[l], dtype=np.float32))
            if doc_lengths is not None:
                np.save(path + ".docs.npy", doc_lengths)
            T, N = acts[l].shape
            results = {}
            for m in methods:
                out = os.path.join(tmp, f"{m}_{l}.npz")
                p = ctx.Process(target=run_method, args=(m, path, args.k, args.n_init, sub_arg, out))
                p.start()
                p.join()
                if p.exitcode != 0:
                    print(f"layer {l} {m}: failed (exit {p.exitcode})", file=sys.stderr)
                    continue
                results[m] = dict(np.load(out))
                r = results[m]
                print(f"layer {l:2d} {m:14s} {float(r['seconds']):7.2f} s  peak RSS {float(r['peak_rss_mb']):6.0f} MB",
                      flush=True)
            ref = results.get("funcnet")
            for m, r in results.items():
                row = dict(layer=l, method=m, tokens=T, neurons=N, k=args.k, seconds=float(r["seconds"]),
                           peak_rss_mb=float(r["peak_rss_mb"]))
                if ref is not None and m != "funcnet":
                    row["subspace_overlap"], row["stable_map_agreement"], row["n_stable"] = compare(ref, r, args.stable)
                if "stability" in r:
                    row["n_stable"] = int((r["stability"] >= args.stable).sum())
                rows.append(row)
            sk = [r for m, r in results.items() if m.startswith("sklearn")]
            if ref is not None and len(sk) > 1:   # scikit-learn run several times: its maps pooled
                pooled = dict(maps=np.concatenate([r["maps"] for r in sk]))
                ov, ag, ns = compare(ref, pooled, args.stable)
                rows.append(dict(layer=l, method=f"sklearn x{len(sk)} pooled", tokens=T, neurons=N, k=args.k,
                                 seconds=float(np.mean([float(r["seconds"]) for r in sk])),
                                 peak_rss_mb=float(max(float(r["peak_rss_mb"]) for r in sk)),
                                 subspace_overlap=ov, stable_map_agreement=ag, n_stable=ns))

    print()
    print(f"per-layer mode, k={args.k}, n_init={args.n_init} (funcnet, nilearn), tokens={T}, neurons={N}, layers {layers}, "
          f"funcnet subjects: " + {"one": "the whole matrix (as nilearn)", "documents": "the store's documents (as decompose)"}
          .get(args.subjects, f"{args.window}-token windows"))
    print(f"{'method':14s} {'s/layer':>8s} {'30 layers*':>10s} {'peak RSS MB':>11s} {'overlap':>8s} {'stable agr':>10s}")
    for m in methods + sorted({r["method"] for r in rows} - set(methods)):
        rs = [r for r in rows if r["method"] == m]
        if not rs:
            continue
        sec = float(np.mean([r["seconds"] for r in rs]))
        ov = np.mean([r.get("subspace_overlap", np.nan) for r in rs])
        ag = np.mean([r.get("stable_map_agreement", np.nan) for r in rs])
        rss = max(r["peak_rss_mb"] for r in rs)
        print(f"{m:14s} {sec:8.2f} {sec * N_LAYERS_SMOLLM2 / 60:9.1f}m {rss:11.0f} {ov:8.3f} {ag:10.3f}")
    print(f"* extrapolated: mean seconds per layer x {N_LAYERS_SMOLLM2} layers. overlap: subspace overlap with "
          f"funcnet's group PCA subspace; stable agr: mean best-match |r| of funcnet's maps with stability >= "
          f"{args.stable} against the method's maps. Load average at the end: {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs.")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
