"""Experiments of the first paper, as functions and commands: recurrence, lesion, preservation,
amplification and network anatomy. Each writes a JSON result (and figures) into a results folder
that ``funcnet report`` turns into one HTML page.

All metrics are token perplexity and next-token top-1 accuracy over non-overlapping windows of
the built-in evaluation split, per domain (see :mod:`funcnet.evaluate`).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from funcnet.core.progress import progress_bar
from funcnet.errors import FuncnetError
from funcnet.networks.functional import FunctionalNetworks, decompose, iou_matrix
from funcnet.data.corpus import load_corpus
from funcnet.data.record import record
from funcnet.evaluate import perplexity
from funcnet.intervene import amplify
from funcnet.intervene import inhibit, random_fraction as rand_frac
from funcnet.intervene import preserve, random_like

DOMAINS = ("prose", "code", "math")


# ---------------------------------------------------------------------------- helpers
def eval_domains(domains: Sequence[str] = DOMAINS, corpus: str = "builtin", max_docs: int | None = 40) -> dict[str, list[str]]:
    """Evaluation texts per domain (the built-in eval split by default)."""

    out = {}
    for d in domains:
        c = load_corpus(corpus, split="eval", domain=d, max_docs=max_docs)
        out[d] = c.texts
    return out


def measure(lm, texts: dict[str, list[str]], *, window: int = 128, max_windows: int = 8, batch_size: int = 8) -> dict:
    """{domain: {"ppl": .., "accuracy": ..}} of the model as it is now (interventions included)."""

    out = {}
    for d, t in texts.items():
        r = perplexity(lm, t, window=window, max_windows=max_windows, batch_size=batch_size, progress=False)
        out[d] = {"ppl": r.ppl, "accuracy": r.accuracy, "n_tokens": r.n_tokens}
    return out


def _random_control(sel, lm, seed: int):
    """Random neurons, as many per layer as ``sel``, avoiding ``sel`` where the layer has room."""

    try:
        return random_like(sel, lm, seed=seed, match="layer", exclude=True)
    except FuncnetError:  # the selection covers more than half a layer: draw from the whole layer
        return random_like(sel, lm, seed=seed, match="layer")


def _sel_size(sel) -> int:
    return int(sum(len(v) for v in sel.values()))


def _total_neurons(lm) -> int:
    return int(sum(lm.adapter.neurons_per_layer(lm.model)))


def top_networks(nets: FunctionalNetworks, n: int, *, min_keys: int = 1, **thr) -> list[int]:
    """The ``n`` most stable networks that have at least ``min_keys`` key neurons."""
    order = np.argsort(-np.nan_to_num(nets.stability, nan=-1.0), kind="stable")
    out = []
    for i in order:
        if len(nets.key_neurons(int(i), **thr)) >= min_keys:
            out.append(int(i))
        if len(out) == n:
            break
    return out


def _summ(values: list[dict], domains) -> dict:
    res = {}
    for d in domains:
        p = np.array([v[d]["ppl"] for v in values], float)
        a = np.array([v[d]["accuracy"] for v in values], float)
        res[d] = {"ppl_mean": float(p.mean()), "ppl_std": float(p.std(ddof=1)) if len(p) > 1 else 0.0,
                  "acc_mean": float(a.mean()), "acc_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                  "ppl": p.tolist(), "accuracy": a.tolist()}
    return res


# ---------------------------------------------------------------------------- lesion
def lesion_experiment(lm, nets: FunctionalNetworks, texts: dict[str, list[str]], *, networks: Sequence[int] | None = None,
                      top: int = 5, n_random: int = 5, random_fraction: float = 0.15, seed: int = 0,
                      window: int = 128, max_windows: int = 8, threshold: float = 3.6, progress: bool = True) -> dict:
    """Inhibit each selected network, and all of them together; compare with ``n_random`` random
    neuron sets of the same size per layer, and with a random ``random_fraction`` of all neurons."""


    thr = dict(threshold=threshold)
    ids = list(networks) if networks is not None else top_networks(nets, top, **thr)
    if not ids:
        raise FuncnetError(f"no network has key neurons at |z| > {threshold}")
    total = _total_neurons(lm)
    domains = list(texts)
    conds = [(f"net {i}", [i]) for i in ids] + ([(f"all {len(ids)}", ids)] if len(ids) > 1 else [])
    n_evals = 1 + len(conds) * (1 + n_random) + n_random
    bar = progress_bar(total=n_evals, desc="lesion", enabled=progress)
    base = measure(lm, texts, window=window, max_windows=max_windows)
    bar.update()
    rows = []
    for name, group in conds:
        sel = nets.to_layer_indices(group, **thr)
        with inhibit(lm, sel):
            les = measure(lm, texts, window=window, max_windows=max_windows)
        bar.update()
        rnd = []
        for r in range(n_random):
            with inhibit(lm, _random_control(sel, lm, seed + r)):
                rnd.append(measure(lm, texts, window=window, max_windows=max_windows))
            bar.update()
        n = _sel_size(sel)
        rows.append({"name": name, "networks": list(map(int, group)), "n_neurons": n, "fraction": n / total,
                     "lesioned": les, "random": _summ(rnd, domains)})
    frac = []
    for r in range(n_random):
        with inhibit(lm, rand_frac(lm, random_fraction, seed=seed + 100 + r)):
            frac.append(measure(lm, texts, window=window, max_windows=max_windows))
        bar.update()
    bar.close()
    return {"experiment": "lesion", "baseline": base, "conditions": rows, "domains": domains,
            "random_fraction": {"fraction": random_fraction, "result": _summ(frac, domains)},
            "params": {"threshold": threshold, "n_random": n_random, "seed": seed, "window": window,
                       "max_windows": max_windows, "total_neurons": total}}


# ---------------------------------------------------------------------------- preservation
def preservation_experiment(lm, store, texts: dict[str, list[str]], *, ks: Sequence[int] = (10, 32, 64, 128, 256),
                            mode: str = "whole", n_init: int = 3, n_random: int = 3, seed: int = 0,
                            threshold: float = 3.6, window: int = 128, max_windows: int = 8,
                            progress: bool = True, nets_by_k: dict | None = None) -> dict:
    """Keep only the union of the networks of a k-component decomposition (mask every other MLP
    neuron); compare with keeping a random set of the same size per layer."""

    base = measure(lm, texts, window=window, max_windows=max_windows)
    total = _total_neurons(lm)
    rows = []
    for k in ks:
        t0 = time.time()
        nets = (nets_by_k or {}).get(k) or decompose(store, mode=mode, n_components=k, n_init=n_init,
                                                      random_state=seed, progress=progress)
        sel = nets.to_layer_indices(threshold=threshold)
        n = _sel_size(sel)
        if n == 0:
            rows.append({"k": k, "n_neurons": 0, "fraction": 0.0, "preserved": None, "random": None})
            continue
        with preserve(lm, sel):
            kept = measure(lm, texts, window=window, max_windows=max_windows)
        rnd = []
        full = {l: np.arange(w) for l, w in enumerate(lm.adapter.neurons_per_layer(lm.model))}
        for r in range(n_random):
            rs = random_like(sel, lm, seed=seed + r, match="layer")
            with preserve(lm, {l: rs.get(l, np.zeros(0, int)) for l in full}):
                rnd.append(measure(lm, texts, window=window, max_windows=max_windows))
        rows.append({"k": int(k), "n_neurons": n, "fraction": n / total, "preserved": kept,
                     "random": _summ(rnd, list(texts)), "seconds": time.time() - t0})
    return {"experiment": "preserve", "baseline": base, "rows": rows, "domains": list(texts),
            "params": {"mode": mode, "threshold": threshold, "n_init": n_init, "n_random": n_random,
                       "window": window, "max_windows": max_windows, "total_neurons": total}}


# ---------------------------------------------------------------------------- amplification
def amplification_experiment(lm, nets: FunctionalNetworks, texts: dict[str, list[str]], *,
                             networks: Sequence[int] | None = None, top: int = 3,
                             factors: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0), how: str = "scale",
                             threshold: float = 3.6, window: int = 128, max_windows: int = 8,
                             progress: bool = True) -> dict:
    """Scale (``how="scale"``: x * f) or shift (``how="add"``: x + f) a network's neurons over a grid
    of values; the metric per domain for each value."""


    if how not in ("scale", "add"):
        raise FuncnetError(f"how must be 'scale' or 'add', got '{how}'")
    ids = list(networks) if networks is not None else top_networks(nets, top, threshold=threshold)
    base = measure(lm, texts, window=window, max_windows=max_windows)
    bar = progress_bar(total=len(ids) * len(factors), desc="amplify", enabled=progress)
    curves = []
    for i in ids:
        sel = nets.to_layer_indices([i], threshold=threshold)
        pts = []
        for f in factors:
            kw = {"factor": float(f)} if how == "scale" else {"add": float(f)}
            if (how == "scale" and f == 1.0) or (how == "add" and f == 0.0):
                pts.append({"value": float(f), "metrics": base})
            else:
                with amplify(lm, sel, **kw):
                    pts.append({"value": float(f), "metrics": measure(lm, texts, window=window, max_windows=max_windows)})
            bar.update()
        curves.append({"network": int(i), "n_neurons": _sel_size(sel), "points": pts})
    bar.close()
    best = {}
    for d in texts:
        cands = [(c["network"], p["value"], p["metrics"][d]["ppl"]) for c in curves for p in c["points"]]
        net, val, ppl = min(cands, key=lambda x: x[2])
        # the lowest-perplexity setting tried, and whether it beats the unmodified (dense) model: with
        # the identity (x1 / +0) off the grid the lowest point can still be worse than dense
        best[d] = {"network": net, "value": val, "ppl": ppl, "baseline_ppl": base[d]["ppl"],
                   "better_than_dense": bool(ppl < base[d]["ppl"])}
    return {"experiment": "amplify", "how": how, "baseline": base, "curves": curves, "best": best,
            "domains": list(texts), "params": {"threshold": threshold, "window": window, "max_windows": max_windows}}


# ---------------------------------------------------------------------------- recurrence
def recurrence_experiment(lm, *, domains: Sequence[str] = DOMAINS, corpus: str = "builtin", n_template: int = 24,
                          n_individual: int = 8, k_template: int = 10, k_individual: int = 10, max_length: int = 128,
                          threshold: float = 3.6, iou_threshold: float = 0.2, n_init: int = 3, seed: int = 0,
                          workdir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Template networks from a group decomposition of ``n_template`` texts per domain; individual
    networks from decompositions of ``n_individual`` other single texts per domain; IoU of their
    key-neuron sets. Counts, per template, the individual networks with IoU > ``iou_threshold``."""
    import tempfile


    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="funcnet-recurrence-"))
    templates, individuals, t_sets, i_sets = [], [], [], []
    for d in domains:
        c = load_corpus(corpus, split="calib", domain=d)
        need = n_template + n_individual
        if len(c) < need:
            raise FuncnetError(f"domain '{d}' has {len(c)} texts; recurrence needs {need}")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(c), need, replace=False))
        sub = c.subset(pick)
        store = record(lm, sub, out=work / f"store-{d}", max_length=max_length, resume=True, progress=progress)
        tdocs = list(range(n_template))
        idocs = list(range(n_template, need))
        tnets = decompose(_DocView(store, tdocs), mode="whole", n_components=k_template, n_init=n_init,
                          random_state=seed, progress=False)
        for n in range(tnets.n_networks):
            ids = tnets.global_ids(n, threshold=threshold)
            templates.append({"id": f"{d}/{n}", "domain": d, "network": n, "n_keys": int(len(ids)),
                              "stability": float(tnets.stability[n])})
            t_sets.append(ids)
        for doc in idocs:
            inets = decompose(_DocView(store, [doc]), mode="whole", n_components=k_individual, n_init=1,
                              method="reference", random_state=seed, progress=False)
            for n in range(inets.n_networks):
                ids = inets.global_ids(n, threshold=threshold)
                individuals.append({"id": f"{d}/t{doc}/{n}", "domain": d, "text": int(pick[doc]), "network": n,
                                    "n_keys": int(len(ids))})
                i_sets.append(ids)
    M = iou_matrix(t_sets, i_sets)
    table = []
    for ti, t in enumerate(templates):
        counts = {d: int(sum(M[ti, j] > iou_threshold for j, ind in enumerate(individuals) if ind["domain"] == d))
                  for d in domains}
        totals = {d: int(sum(1 for ind in individuals if ind["domain"] == d)) for d in domains}
        table.append({"template": t["id"], "counts": counts, "totals": totals, "max_iou": float(M[ti].max())})
    return {"experiment": "recurrence", "domains": list(domains), "templates": templates, "individuals": individuals,
            "iou": M.tolist(), "iou_threshold": iou_threshold, "table": table,
            "params": {"n_template": n_template, "n_individual": n_individual, "k_template": k_template,
                       "k_individual": k_individual, "threshold": threshold, "max_length": max_length}}


class _DocView:
    """A view of an activation store restricted to some documents (for :func:`decompose`)."""

    def __init__(self, store, docs: Sequence[int]):
        self._store, self._docs = store, list(docs)
        ids = np.asarray(store.tokens["doc_ids"])
        self._rows = np.flatnonzero(np.isin(ids, self._docs))

    def __getattr__(self, name):
        return getattr(self._store, name)

    @property
    def tokens(self):
        return {k: np.asarray(v)[self._rows] for k, v in self._store.tokens.items()}

    def source(self, layers=None, signal="neurons", *, chunk_tokens=4096, documents=None):
        return self._store.source(layers, signal, chunk_tokens=chunk_tokens,
                                  documents=self._docs if documents is None else documents)


# ---------------------------------------------------------------------------- anatomy
def anatomy(nets: FunctionalNetworks, store, corpus, *, networks: Sequence[int] | None = None, top: int = 8,
            top_tokens: int = 8, context_chars: int = 48, threshold: float = 3.6) -> dict:
    """For each network: key neurons per layer, and the tokens where its time course is highest,
    with their text context (needs the corpus the store was recorded from)."""
    ids = list(networks) if networks is not None else top_networks(nets, top, threshold=threshold)
    tc = nets.time_courses(store, ids, threshold=threshold)
    meta = store.tokens
    doc_ids, spans = np.asarray(meta["doc_ids"]), np.asarray(meta["char_spans"])
    out = []
    for j, n in enumerate(ids):
        pairs = nets.key_neurons(n, threshold=threshold)
        per_layer = np.bincount(pairs[:, 0], minlength=len(nets.neurons_per_layer)).tolist() if len(pairs) else \
            [0] * len(nets.neurons_per_layer)
        order = np.argsort(-tc[:, j])[:top_tokens] if tc.shape[0] else []
        ctx = []
        for t in order:
            doc = int(doc_ids[t])
            a, b = (int(x) for x in spans[t])
            text = corpus.documents[doc].text if corpus is not None and doc < len(corpus) else ""
            ctx.append({"doc": doc, "value": float(tc[t, j]), "token": text[a:b],
                        "left": text[max(0, a - context_chars):a], "right": text[b:b + context_chars // 2]})
        out.append({"network": int(n), "stability": float(nets.stability[n]), "n_keys": int(len(pairs)),
                    "per_layer": per_layer, "top_contexts": ctx})
    return {"experiment": "anatomy", "networks": out, "threshold": threshold}


