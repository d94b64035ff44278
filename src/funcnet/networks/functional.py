"""Functional networks: spatial maps from group ICA, thresholded into key-neuron sets.

A :class:`FunctionalNetworks` object holds one or more *decompositions* (one per layer in per-layer
mode, one for the whole model, one per window of adjacent layers; repeated for every group of
texts). Each decomposition has ``k`` z-scored maps over its columns, and every column is a
(layer, signal, neuron) triple. A *network* is one map; network ids run over all decompositions.

:func:`decompose` builds the object from an activation store (or in-memory arrays).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from funcnet._defaults import NETWORK_MODES
from funcnet.core._io import atomic_path
from funcnet.data.store import SubjectStream
from funcnet.core.progress import progress_enabled
from funcnet.errors import FuncnetError
from funcnet._version import __version__
from funcnet.core._io import cache_dir, sha256_text
from funcnet.core.models import as_loaded, model_identity
from funcnet.data.record import parse_layers, record
from funcnet.data.store import ActivationStore
from funcnet.networks.canica import estimate_fit_bytes, fit_many

FORMAT = "funcnet-networks"
FORMAT_VERSION = 1
THRESHOLD_METHODS = ("z", "top_fraction", "ratio")


@dataclass
class Decomposition:
    """``k`` maps over a set of columns (layer, signal index, neuron)."""

    maps: np.ndarray  # [k, n_columns] float32, z-scored per map, heaviest tail positive
    columns: np.ndarray  # [n_columns, 3] int32: layer, signal index, neuron index
    stability: np.ndarray  # [k]
    group: int = 0
    unit: str = "whole"
    explained_variance: np.ndarray | None = None

    @property
    def k(self) -> int:
        return int(self.maps.shape[0])

    @property
    def layers(self) -> np.ndarray:
        return np.unique(self.columns[:, 0])


@dataclass
class FunctionalNetworks:
    decompositions: list[Decomposition]
    signals: list[str]
    neurons_per_layer: list[int]
    model_identity: str = ""
    model_spec: str = ""
    corpus_identity: str | None = None
    params: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ indexing
    @property
    def n_networks(self) -> int:
        return sum(d.k for d in self.decompositions)

    def __len__(self) -> int:
        return self.n_networks

    def _index(self) -> list[tuple[int, int]]:
        return [(di, c) for di, d in enumerate(self.decompositions) for c in range(d.k)]

    def network(self, net_id: int) -> tuple[Decomposition, int]:
        idx = self._index()
        if not 0 <= int(net_id) < len(idx):
            raise FuncnetError(f"network {net_id} does not exist (0..{len(idx) - 1})")
        di, c = idx[int(net_id)]
        return self.decompositions[di], c

    @property
    def stability(self) -> np.ndarray:
        return np.concatenate([d.stability for d in self.decompositions]) if self.decompositions else np.zeros(0)

    def table(self) -> list[dict]:
        """One row per network: id, unit, group, component, stability."""
        rows, nid = [], 0
        for d in self.decompositions:
            for c in range(d.k):
                rows.append({"id": nid, "unit": d.unit, "group": d.group, "component": c,
                             "stability": float(d.stability[c])})
                nid += 1
        return rows

    def select(self, networks: Iterable[int] | None = None, min_stability: float | None = None,
               groups: Iterable[int] | None = None, units: Iterable[str] | None = None) -> list[int]:
        """Network ids passing the filters (all when no filter is given)."""
        ids = list(range(self.n_networks)) if networks is None else [int(n) for n in networks]
        stab = self.stability
        groups = None if groups is None else set(int(g) for g in groups)
        units = None if units is None else set(units)
        out = []
        for n in ids:
            d, _ = self.network(n)
            if min_stability is not None and stab[n] < min_stability:
                continue
            if groups is not None and d.group not in groups:
                continue
            if units is not None and d.unit not in units:
                continue
            out.append(n)
        return out

    # ------------------------------------------------------------------ thresholding
    def key_mask(self, net_id: int, *, threshold: float = 3.6, method: str = "z", positive_only: bool = False,
                 fraction: float = 0.01, ratio: float = 1.0) -> np.ndarray:
        """Boolean mask over the network's decomposition columns.

        method "z": |z| > threshold (z > threshold with positive_only); "top_fraction": the top
        ``fraction`` of the map's columns by |z| (or z); "ratio": nilearn's rule, the
        ``ratio * n_columns`` largest |values| over all maps of the decomposition together.
        """
        d, c = self.network(net_id)
        m = d.maps[c]
        v = m if positive_only else np.abs(m)
        if method == "z":
            return v > threshold
        if method == "top_fraction":
            if not 0 < fraction <= 1:
                raise FuncnetError(f"top fraction must be in (0, 1], got {fraction}")
            n = max(1, int(round(fraction * m.size)))
            mask = np.zeros(m.size, bool)
            mask[np.argpartition(-v, n - 1)[:n]] = True
            return mask
        if method == "ratio":
            allv = d.maps if positive_only else np.abs(d.maps)
            n = int(round(ratio * d.maps.shape[1]))
            if n <= 0:
                return np.zeros(m.size, bool)
            cut = np.partition(allv.ravel(), allv.size - n)[allv.size - n]
            return v >= cut
        raise FuncnetError(f"unknown threshold method '{method}'; choose from {', '.join(THRESHOLD_METHODS)}")

    def key_neurons(self, net_id: int, **thr) -> np.ndarray:
        """[n, 2] (layer, neuron) pairs of a network's key units (a neuron is key if key in any signal)."""
        d, _ = self.network(net_id)
        cols = d.columns[self.key_mask(net_id, **thr)]
        pairs = np.unique(cols[:, [0, 2]], axis=0) if len(cols) else np.zeros((0, 2), np.int64)
        return pairs.astype(np.int64)

    def global_ids(self, net_id: int, **thr) -> np.ndarray:
        """Key neurons of a network as model-wide neuron ids (for IoU between networks)."""
        offsets = np.concatenate([[0], np.cumsum(self.neurons_per_layer)])
        pairs = self.key_neurons(net_id, **thr)
        return np.sort(offsets[pairs[:, 0]] + pairs[:, 1])

    def masks(self, networks: Iterable[int] | None = None, *, min_stability: float | None = None,
              **thr) -> dict[int, np.ndarray]:
        """Per-layer boolean masks of the union of the selected networks' key neurons."""
        out = {l: np.zeros(n, bool) for l, n in enumerate(self.neurons_per_layer)}
        for n in self.select(networks, min_stability=min_stability):
            for l, j in self.key_neurons(n, **thr):
                out[int(l)][int(j)] = True
        return out

    def to_layer_indices(self, networks: Iterable[int] | None = None, **kw) -> dict[int, np.ndarray]:
        """Per-layer neuron indices of the union of the selected networks (for funcnet.intervene)."""
        return {l: np.flatnonzero(m) for l, m in self.masks(networks, **kw).items() if m.any()}

    def counts_per_layer(self, networks: Iterable[int] | None = None, **kw) -> np.ndarray:
        return np.array([m.sum() for m in self.masks(networks, **kw).values()], dtype=np.int64)

    def score_per_neuron(self, *, positive_only: bool = False, min_stability: float | None = None,
                         networks: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """Largest |z| (or z) each neuron reaches in any selected map: a functional-network importance."""
        out = {l: np.zeros(n, np.float32) for l, n in enumerate(self.neurons_per_layer)}
        for n in self.select(networks, min_stability=min_stability):
            d, c = self.network(n)
            v = d.maps[c] if positive_only else np.abs(d.maps[c])
            for l in np.unique(d.columns[:, 0]):
                sel = d.columns[:, 0] == l
                np.maximum.at(out[int(l)], d.columns[sel, 2], v[sel])
        return out

    def key_frequency(self, networks: Iterable[int] | None = None, *, min_stability: float | None = None,
                      **thr) -> dict[int, np.ndarray]:
        """How many selected networks each neuron is key in."""
        out = {l: np.zeros(n, np.int32) for l, n in enumerate(self.neurons_per_layer)}
        for n in self.select(networks, min_stability=min_stability):
            pairs = self.key_neurons(n, **thr)
            for l in np.unique(pairs[:, 0]):
                np.add.at(out[int(l)], pairs[pairs[:, 0] == l, 1], 1)
        return out

    # ------------------------------------------------------------------ time courses
    def time_courses(self, activations, networks: Iterable[int] | None = None, *, signal: str | None = None,
                     **thr) -> np.ndarray:
        """Mean activation of each network's key neurons per token: ``[tokens, n_selected]``.

        ``activations`` is an :class:`~funcnet.store.ActivationStore` or a dict
        ``{(layer, signal): array[tokens, width]}`` (e.g. from :func:`funcnet.record.collect`).
        """
        ids = self.select(networks)
        sig = signal or self.signals[0]

        def get(layer):
            if hasattr(activations, "layer_float"):
                return activations.layer_float(int(layer), sig)
            key = (int(layer), sig)
            if key not in activations:
                raise FuncnetError(f"activations lack layer {layer} signal '{sig}' needed for the time courses")
            return np.asarray(activations[key], dtype=np.float32)

        cache: dict[int, np.ndarray] = {}
        cols = []
        for n in ids:
            pairs = self.key_neurons(n, **thr)
            if len(pairs) == 0:
                cols.append(None)
                continue
            acc, cnt = None, 0
            for l in np.unique(pairs[:, 0]):
                if l not in cache:
                    cache[l] = get(l)
                part = cache[l][:, pairs[pairs[:, 0] == l, 1]]
                acc = part.sum(1) if acc is None else acc + part.sum(1)
                cnt += part.shape[1]
            cols.append(acc / cnt)
        n_tok = next((c.shape[0] for c in cols if c is not None), 0)
        return np.stack([c if c is not None else np.zeros(n_tok, np.float32) for c in cols], axis=1) if cols \
            else np.zeros((n_tok, 0), np.float32)

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file (maps, columns, stability) with JSON metadata, atomically."""
        from safetensors.numpy import save_file


        path = Path(path)
        tensors, decs = {}, []
        for i, d in enumerate(self.decompositions):
            tensors[f"d{i}.maps"] = np.ascontiguousarray(d.maps, dtype=np.float32)
            tensors[f"d{i}.columns"] = np.ascontiguousarray(d.columns, dtype=np.int32)
            tensors[f"d{i}.stability"] = np.ascontiguousarray(d.stability, dtype=np.float32)
            if d.explained_variance is not None:
                tensors[f"d{i}.explained_variance"] = np.ascontiguousarray(d.explained_variance, dtype=np.float32)
            decs.append({"group": int(d.group), "unit": d.unit})
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "funcnet_version": __version__,
            "signals": self.signals, "neurons_per_layer": [int(x) for x in self.neurons_per_layer],
            "model_identity": self.model_identity, "model_spec": self.model_spec,
            "corpus_identity": self.corpus_identity, "params": self.params, "decompositions": decs,
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"funcnet": json.dumps(meta, default=str)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, model=None) -> "FunctionalNetworks":
        """Read a networks file; with ``model`` given, refuse a file made from another model."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise FuncnetError(f"networks file not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = json.loads((f.metadata() or {}).get("funcnet", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for corrupt files
            raise FuncnetError(f"cannot read networks file {path}: {str(e).splitlines()[0][:160]}") from e
        if meta.get("format") != FORMAT:
            raise FuncnetError(f"{path} is not a funcnet networks file")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise FuncnetError(f"{path} has networks format {meta['format_version']}; this funcnet reads up to {FORMAT_VERSION}")
        decs = []
        for i, d in enumerate(meta["decompositions"]):
            decs.append(Decomposition(
                maps=tensors[f"d{i}.maps"], columns=tensors[f"d{i}.columns"], stability=tensors[f"d{i}.stability"],
                group=d["group"], unit=d["unit"], explained_variance=tensors.get(f"d{i}.explained_variance"),
            ))
        nets = cls(decs, meta["signals"], meta["neurons_per_layer"], meta.get("model_identity", ""),
                   meta.get("model_spec", ""), meta.get("corpus_identity"), meta.get("params", {}))
        if model is not None:
            nets.check_model(model)
        return nets

    def check_model(self, model) -> None:

        mdl = model.model if hasattr(model, "adapter") else model
        ident = model_identity(mdl)
        if self.model_identity and ident != self.model_identity:
            raise FuncnetError(
                f"these networks were computed on another model (identity {self.model_identity}, "
                f"spec '{self.model_spec}'), not on this one ({ident})"
            )
        lm = as_loaded(model)
        if lm.adapter.neurons_per_layer(lm.model) != list(self.neurons_per_layer):
            raise FuncnetError("these networks do not fit this model's layer widths")

    def comembership(self, layer: int, width: int | None = None, *, threshold: float = 3.6,
                     signal: str = "neurons") -> np.ndarray:
        """[width, width] float64 co-membership strength of the ``signal`` units of ``layer``: the sum,
        over every map (of every group) in which both units are key (|z| > threshold), of |z_a| |z_b|;
        zero for pairs that share no functional network."""
        if width is None:
            width = int(self.neurons_per_layer[layer])
        s_idx = self.signals.index(signal) if signal in self.signals else 0
        rows = []
        for d in self.decompositions:
            sel = (d.columns[:, 0] == layer) & (d.columns[:, 1] == s_idx)
            if not sel.any():
                continue
            z = np.zeros((d.k, width), np.float64)
            z[:, d.columns[sel, 2]] = np.abs(d.maps[:, sel])
            z[z <= threshold] = 0.0
            rows.append(z)
        if not rows:
            return np.zeros((width, width))
        Z = np.concatenate(rows)
        return Z.T @ Z

    def summary(self, top: int = 10, min_stability: float | None = None, **thr) -> str:
        """A plain-text summary table."""
        stab = self.stability
        lines = [f"{self.n_networks} networks in {len(self.decompositions)} decompositions "
                 f"({self.params.get('mode', '?')} mode, k={self.params.get('n_components', '?')}, "
                 f"signals {','.join(self.signals)})"]
        if self.n_networks:
            lines.append(f"stability: median {np.median(stab):.2f}, >=0.8: {(stab >= 0.8).sum()}, "
                         f">=0.5: {(stab >= 0.5).sum()}")
        union = self.masks(min_stability=min_stability, **thr)
        total = sum(self.neurons_per_layer)
        n_key = int(sum(m.sum() for m in union.values()))
        lines.append(f"union of key neurons: {n_key} of {total} ({100 * n_key / max(total, 1):.1f}%)")
        lines.append(f"{'id':>5} {'unit':>10} {'group':>5} {'stab':>5} {'keys':>6} {'layers':>8}")
        keep = np.asarray(self.select(min_stability=min_stability), dtype=np.int64)
        order = keep[np.argsort(-stab[keep], kind="stable")][:top]
        for n in order:
            d, c = self.network(int(n))
            pairs = self.key_neurons(int(n), **thr)
            ls = np.unique(pairs[:, 0]) if len(pairs) else []
            span = f"{ls[0]}-{ls[-1]}" if len(ls) else "-"
            lines.append(f"{int(n):>5} {d.unit:>10} {d.group:>5} {stab[n]:>5.2f} {len(pairs):>6} {span:>8}")
        return "\n".join(lines)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two sets of neuron ids."""
    if len(a) == 0 and len(b) == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (len(a) + len(b) - inter)


def iou_matrix(sets_a: Sequence[np.ndarray], sets_b: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([[iou(a, b) for b in sets_b] for a in sets_a], dtype=np.float32).reshape(len(sets_a), len(sets_b))


# ---------------------------------------------------------------------------- decomposition
MODES = NETWORK_MODES


def _units(layers: list[int], mode: str, window: int) -> list[tuple[str, list[int]]]:
    if mode == "per-layer":
        return [(f"L{l:02d}", [l]) for l in layers]
    if mode == "whole":
        return [("whole", list(layers))]
    if mode == "window":
        if window < 1 or window > len(layers):
            raise FuncnetError(f"window of {window} layers does not fit {len(layers)} layers")
        return [(f"L{layers[i]:02d}-L{layers[i + window - 1]:02d}", layers[i:i + window])
                for i in range(0, len(layers) - window + 1)]
    raise FuncnetError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")


def make_groups(doc_ids: Sequence[int], n_groups: int | None, group_size: int | None, seed: int = 0) -> list[np.ndarray]:
    """Split documents into ``n_groups`` disjoint groups of ``group_size`` documents (shuffled, seeded).

    With neither given: one group of all documents. Too few documents for the request: an error.
    """
    docs = np.asarray(sorted(set(int(d) for d in doc_ids)))
    if not n_groups and not group_size:
        return [docs]
    n_groups = n_groups or max(1, len(docs) // group_size)
    group_size = group_size or len(docs) // n_groups
    if group_size < 1 or n_groups * group_size > len(docs):
        raise FuncnetError(
            f"calibration text too short: {n_groups} groups x {group_size} texts needs {n_groups * group_size} "
            f"documents, the corpus has {len(docs)}"
        )
    perm = np.random.default_rng(seed).permutation(docs)
    return [np.sort(perm[g * group_size:(g + 1) * group_size]) for g in range(n_groups)]


def decompose(
    source,
    *,
    mode: str = "per-layer",
    n_components: int = 64,
    layers: Sequence[int] | None = None,
    signals: Sequence[str] = ("neurons",),
    window: int = 3,
    n_groups: int | None = None,
    group_size: int | None = None,
    method: str = "canica",
    n_init: int = 10,
    fun: str = "cube",
    reduction: str = "auto",
    random_state: int = 0,
    device: str = "cpu",
    n_jobs: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    model_identity: str | None = None,
    neurons_per_layer: Sequence[int] | None = None,
    memory_budget: int | None = None,
    **ica_params,
) -> FunctionalNetworks:
    """Decompose recorded activations into functional networks.

    source: an :class:`~funcnet.store.ActivationStore` (streamed from disk). mode: "per-layer"
    (each layer on its own: what pruning uses), "whole" (all layers' neurons together: exploration,
    fingerprints), or "window" (``window`` adjacent layers). Documents are split into ``n_groups``
    groups of ``group_size`` texts, each decomposed separately (the reference unions 80 x 40).
    With ``checkpoint`` (a folder), every finished group is saved and a re-run skips it.
    ``device``: where the ICA runs ("cuda" with several GPUs: fits round-robin over them). On CPU
    the fits run in parallel up to the cores and within ``memory_budget`` bytes (default: half the
    memory available; each fit's bytes estimated from its shape, :func:`funcnet.networks.fit_many`).
    ``workdir`` (an ICA parameter): where CanICA's on-disk row cache goes when a fit's group rows
    pass its 1 GiB memory cache (whole-model ICA of large models).
    """

    store = source
    if not hasattr(store, "source"):
        raise FuncnetError("decompose() needs an activation store (funcnet.record.record(...) or ActivationStore.open)")
    signals = [signals] if isinstance(signals, str) else list(signals)
    for s in signals:
        if s not in store.signals:
            raise FuncnetError(f"store {store.path} has no signal '{s}' (it has {', '.join(store.signals)})")
    layers = list(store.layers if layers is None else layers)
    units = _units(layers, mode, window)
    groups = make_groups(store.tokens["doc_ids"], n_groups, group_size, seed=random_state)
    npl = list(neurons_per_layer) if neurons_per_layer is not None else _neurons_per_layer(store)
    params = dict(mode=mode, n_components=n_components, window=window, n_groups=len(groups),
                  group_size=int(len(groups[0])), method=method, n_init=n_init, fun=fun, reduction=reduction,
                  random_state=random_state, layers=layers, **ica_params)
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt:
        ckpt.mkdir(parents=True, exist_ok=True)
    ica_kw = dict(n_components=n_components, n_init=n_init, fun=fun, method=method, reduction=reduction,
                  device=device, **ica_params)

    decs: list[Decomposition] = []
    show = progress_enabled(progress)
    for g, docs in enumerate(groups):
        gfile = ckpt / f"group_{g:04d}.safetensors" if ckpt else None
        if gfile is not None and gfile.exists():
            part = FunctionalNetworks.load(gfile)
            if part.params.get("ica") == ica_kw and part.params.get("docs") == docs.tolist():
                decs.extend(part.decompositions)
                continue
        group_decs = []
        jobs = []
        for unit, ls in units:
            keys_cols = []
            for l in ls:
                for si, s in enumerate(signals):
                    w = store.width(l, s)
                    keys_cols.append(np.stack([np.full(w, l), np.full(w, si), np.arange(w)], 1))
            cols = np.concatenate(keys_cols).astype(np.int32)
            jobs.append((unit, ls, cols))

        def load_input(job, docs=docs):
            _, ls, _ = job
            srcs = [store.source(ls, s, documents=docs if len(groups) > 1 else None) for s in signals]
            if method == "canica":   # documents = subjects, streamed from disk (memory stays bounded)
                return SubjectStream(srcs)
            if len(srcs) == 1:
                return srcs[0]
            return np.concatenate([s.to_array() for s in srcs], axis=1)

        # each fit's memory from its shape, so that the concurrent CPU fits stay within the budget
        n_tok_g = int(np.isin(np.asarray(store.tokens["doc_ids"]), docs).sum()) if len(groups) > 1 else store.n_tokens
        in_mem = method != "canica" and len(signals) > 1
        fit_bytes = [estimate_fit_bytes(n_tok_g, len(cols), ica_kw, in_memory=in_mem,
                                        subject_tokens=max(1, n_tok_g // max(1, len(docs))))
                     for _, _, cols in jobs]
        ests = fit_many([functools.partial(load_input, j) for j in jobs],
                        {**ica_kw, "random_state": random_state + 1000 * g}, n_jobs=n_jobs, progress=show,
                        desc=f"ICA {mode}" + (f" group {g + 1}/{len(groups)}" if len(groups) > 1 else ""),
                        memory_budget=memory_budget, fit_bytes=fit_bytes)
        results = [
            Decomposition(
                maps=np.asarray(est.components_, dtype=np.float32), columns=cols,
                stability=np.asarray(est.stability_, np.float32), group=g, unit=unit,
                explained_variance=np.asarray(est.explained_variance_, np.float32),
            )
            for est, (unit, _, cols) in zip(ests, jobs)
        ]
        group_decs.extend(results)
        if gfile is not None:
            FunctionalNetworks(group_decs, signals, npl, params={"ica": ica_kw, "docs": docs.tolist()}).save(gfile)
        decs.extend(group_decs)
    return FunctionalNetworks(
        decs, signals, npl, model_identity=model_identity or store.manifest.get("model_identity", ""),
        model_spec=store.manifest.get("model_spec", ""), corpus_identity=store.manifest.get("corpus_identity"),
        params=params,
    )


def _neurons_per_layer(store) -> list[int]:
    n_layers = int(store.manifest.get("n_layers", max(store.layers) + 1))
    widths = [0] * n_layers
    sig = "neurons" if "neurons" in store.signals else store.signals[0]
    for l in store.layers:
        widths[l] = store.width(l, sig)
    return widths


# ---------------------------------------------------------------------------- CLI
def ensure_store(model, corpus: str, *, store: str | None, signals, layers="all", split: str = "calib",
                 max_tokens: int | None = None, max_length: int = 128, batch_size: int = 8):
    """Open ``store`` if it is complete, else record it (resuming). Without ``store``, a cached store
    keyed by model, corpus and recording parameters is reused across runs."""

    if store and Path(store, "manifest.json").exists():
        st = ActivationStore.open(store)
        if st.manifest.get("model_identity") != model.identity:
            raise FuncnetError(f"activation store {store} was recorded from another model "
                               f"({st.manifest.get('model_spec')}); choose another --store")
        # named --layers must be in the store ("all": the store's own layers)
        wanted = [] if str(layers).strip().lower() in ("all", "", "none") else parse_layers(layers, model.n_layers)
        missing = [l for l in wanted if l not in st.layers]
        if missing:
            raise FuncnetError(f"--layers {layers}: store {store} holds layers "
                               f"{', '.join(map(str, st.layers)) or 'none'}, not {', '.join(map(str, missing))}; "
                               "record them into another --store")
        if st.complete:
            for a in st.manifest.get("arrays", {}).values():  # every array readable, before any work
                st.layer(a["layer"], a["signal"])
            st.tokens
            return st
    kw = dict(signals=signals, layers=layers, split=split, max_tokens=max_tokens, max_length=max_length,
              batch_size=batch_size)
    if store:
        return record(model, corpus, out=store, resume=True, **kw)
    corpus_key = getattr(corpus, "identity", None) or str(corpus)
    key = sha256_text(str(model.identity), corpus_key, split, ",".join(signals) if not isinstance(signals, str)
                      else signals, str(layers), str(max_tokens), str(max_length))[:16]
    cached = str(cache_dir() / "stores" / key)
    try:
        return record(model, corpus, out=cached, resume=True, **kw)
    except FuncnetError as e:  # a cached store from an older corpus / funcnet: record it again
        if "cannot resume" not in str(e):
            raise
        return record(model, corpus, out=cached, overwrite=True, **kw)


