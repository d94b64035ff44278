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

from ._io import write_json
from .errors import FuncnetError
from .networks import FunctionalNetworks, decompose, iou_matrix

DOMAINS = ("prose", "code", "math")


# ---------------------------------------------------------------------------- helpers
def eval_domains(domains: Sequence[str] = DOMAINS, corpus: str = "builtin", max_docs: int | None = 40) -> dict[str, list[str]]:
    """Evaluation texts per domain (the built-in eval split by default)."""
    from .corpus import load_corpus

    out = {}
    for d in domains:
        c = load_corpus(corpus, split="eval", domain=d, max_docs=max_docs)
        out[d] = c.texts
    return out


def measure(lm, texts: dict[str, list[str]], *, window: int = 128, max_windows: int = 8, batch_size: int = 8) -> dict:
    """{domain: {"ppl": .., "accuracy": ..}} of the model as it is now (interventions included)."""
    from .evaluate import perplexity

    out = {}
    for d, t in texts.items():
        r = perplexity(lm, t, window=window, max_windows=max_windows, batch_size=batch_size, progress=False)
        out[d] = {"ppl": r.ppl, "accuracy": r.accuracy, "n_tokens": r.n_tokens}
    return out


def _random_control(sel, lm, seed: int):
    """Random neurons, as many per layer as ``sel``, avoiding ``sel`` where the layer has room."""
    from .intervene import random_like

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
    from tqdm.auto import tqdm

    from .intervene import inhibit, random_fraction as rand_frac

    thr = dict(threshold=threshold)
    ids = list(networks) if networks is not None else top_networks(nets, top, **thr)
    if not ids:
        raise FuncnetError(f"no network has key neurons at |z| > {threshold}")
    total = _total_neurons(lm)
    domains = list(texts)
    conds = [(f"net {i}", [i]) for i in ids] + ([(f"all {len(ids)}", ids)] if len(ids) > 1 else [])
    n_evals = 1 + len(conds) * (1 + n_random) + n_random
    bar = tqdm(total=n_evals, desc="lesion", disable=not progress or os.environ.get("FUNCNET_NO_PROGRESS") == "1")
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
    from .intervene import preserve, random_like

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
    from tqdm.auto import tqdm

    from .intervene import amplify

    if how not in ("scale", "add"):
        raise FuncnetError(f"how must be 'scale' or 'add', got '{how}'")
    ids = list(networks) if networks is not None else top_networks(nets, top, threshold=threshold)
    base = measure(lm, texts, window=window, max_windows=max_windows)
    bar = tqdm(total=len(ids) * len(factors), desc="amplify",
               disable=not progress or os.environ.get("FUNCNET_NO_PROGRESS") == "1")
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

    from .corpus import load_corpus
    from .record import record

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


# ---------------------------------------------------------------------------- pipeline
SIZES = {
    # demo: a few minutes on 2 idle CPU cores for SmolLM2-135M (4 x 128-token windows per domain per
    # measurement; the full size uses 16)
    "demo": dict(max_tokens=4096, k=32, n_init=4, ks=(10, 32, 64), top=5, n_random=5, max_windows=4,
                 n_template=12, n_individual=4, factors=(0.0, 0.5, 1.5, 2.0), preserve_random=2, amplify_top=3),
    "full": dict(max_tokens=16384, k=64, n_init=10, ks=(10, 32, 64, 128, 256), top=10, n_random=5, max_windows=16,
                 n_template=40, n_individual=20, factors=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0), preserve_random=3,
                 amplify_top=3),
}


def explore(model="smollm2-135m", out: str | os.PathLike = "funcnet-results", *, size: str = "demo",
            corpus: str = "builtin", domains: Sequence[str] = DOMAINS, seed: int = 0, threshold: float = 3.6,
            experiments: Sequence[str] = ("networks", "anatomy", "lesion", "preserve", "amplify", "recurrence"),
            progress: bool = True, **overrides) -> Path:
    """Run the exploration pipeline and write JSON results + figures into ``out``."""
    from .corpus import load_corpus
    from .models import as_loaded
    from .networks import ensure_store
    from .plots import make_figures

    if size not in SIZES:
        raise FuncnetError(f"unknown size '{size}'; choose from {', '.join(SIZES)}")
    P = {**SIZES[size], **overrides}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm = as_loaded(model)
    t_start = time.time()
    run = {"model": lm.summary(), "corpus": corpus, "size": size, "params": P, "seed": seed, "threshold": threshold,
           "timings": {}}
    from . import __version__

    run["funcnet_version"] = __version__
    store = ensure_store(lm, corpus, store=str(out / "store"), signals=["neurons"], max_tokens=P["max_tokens"])
    calib = load_corpus(corpus, split="calib")
    run["store"] = store.summary()
    texts = eval_domains(domains, corpus)
    nets_path = out / "networks.safetensors"

    def timed(name, fn):
        t0 = time.time()
        res = fn()
        run["timings"][name] = round(time.time() - t0, 1)
        write_json(out / "run.json", run)
        return res

    nets = None
    if nets_path.exists():
        nets = FunctionalNetworks.load(nets_path, model=lm)
    elif "networks" in experiments or any(e in experiments for e in ("anatomy", "lesion", "amplify")):
        nets = timed("networks", lambda: decompose(store, mode="whole", n_components=P["k"], n_init=P["n_init"],
                                                    random_state=seed, progress=progress,
                                                    model_identity=lm.identity))
        nets.save(nets_path)
    if nets is not None:
        run["networks"] = {"n": nets.n_networks, "k": P["k"], "mode": "whole",
                           "stability": [float(x) for x in nets.stability],
                           "n_keys": [int(len(nets.key_neurons(i, threshold=threshold))) for i in range(nets.n_networks)]}
    if "anatomy" in experiments:
        write_json(out / "anatomy.json", timed("anatomy", lambda: anatomy(nets, store, calib, top=P["top"],
                                                                          threshold=threshold)))
    if "lesion" in experiments:
        write_json(out / "lesion.json", timed("lesion", lambda: lesion_experiment(
            lm, nets, texts, top=P["top"], n_random=P["n_random"], seed=seed, threshold=threshold,
            max_windows=P["max_windows"], progress=progress)))
    if "preserve" in experiments:
        write_json(out / "preserve.json", timed("preserve", lambda: preservation_experiment(
            lm, store, texts, ks=P["ks"], n_init=max(2, P["n_init"] // 2), n_random=P["preserve_random"], seed=seed,
            threshold=threshold, max_windows=P["max_windows"], progress=progress,
            nets_by_k={P["k"]: nets} if nets is not None else None)))
    if "amplify" in experiments:
        write_json(out / "amplify.json", timed("amplify", lambda: amplification_experiment(
            lm, nets, texts, top=P["amplify_top"], factors=P["factors"], threshold=threshold,
            max_windows=P["max_windows"], progress=progress)))
    if "recurrence" in experiments:
        write_json(out / "recurrence.json", timed("recurrence", lambda: recurrence_experiment(
            lm, domains=domains, corpus=corpus, n_template=P["n_template"], n_individual=P["n_individual"],
            threshold=threshold, seed=seed, workdir=out / "recurrence-stores", progress=progress)))
    run["timings"]["total"] = round(time.time() - t_start, 1)
    write_json(out / "run.json", run)
    make_figures(out, nets=nets)
    return out


# ---------------------------------------------------------------------------- CLI
def _common(p, nets_required=True):
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="builtin", help="corpus for evaluation texts (eval split, per domain)")
    p.add_argument("--domains", default=",".join(DOMAINS))
    if nets_required:
        p.add_argument("--networks", required=True, help="networks file from `funcnet networks`")
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--max-windows", type=int, default=8, help="128-token windows per domain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results folder (JSON + figures)")


def _load(args, nets=True):
    from .models import load_model

    lm = load_model(args.model)
    texts = eval_domains([d for d in args.domains.split(",") if d], args.corpus)
    n = FunctionalNetworks.load(args.networks, model=lm) if nets else None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return lm, texts, n


def _ppl_str(v: float, width: int = 0) -> str:
    """A perplexity for the terminal: 2 decimals, or 3 significant digits past 1e5 (a destroyed
    model's 3e12 rather than 3042992632186.10)."""
    v = float(v)
    return f"{v:>{width}.2f}" if abs(v) < 1e5 else f"{v:>{width}.3g}"


def _print_lesion(res):
    d0 = res["domains"][0]
    print(f"baseline ppl ({d0}) {_ppl_str(res['baseline'][d0]['ppl'])}")
    print(f"{'condition':>10} {'neurons':>8} {'%':>6} {'lesioned ppl':>13} {'random ppl (mean±sd)':>22}")
    for r in res["conditions"]:
        rr = r["random"][d0]
        print(f"{r['name']:>10} {r['n_neurons']:>8} {100 * r['fraction']:>6.2f} "
              f"{_ppl_str(r['lesioned'][d0]['ppl'], 13)} {_ppl_str(rr['ppl_mean'], 12)} ± {_ppl_str(rr['ppl_std'])}")
    rf = res["random_fraction"]
    print(f"random {100 * rf['fraction']:.0f}% of neurons: ppl {_ppl_str(rf['result'][d0]['ppl_mean'])} ± "
          f"{_ppl_str(rf['result'][d0]['ppl_std'])}")


def _cmd_lesion(args):
    from .plots import make_figures

    lm, texts, nets = _load(args)
    res = lesion_experiment(lm, nets, texts, top=args.top, n_random=args.n_random, seed=args.seed,
                            threshold=args.threshold, max_windows=args.max_windows)
    write_json(Path(args.out) / "lesion.json", res)
    make_figures(args.out)
    _print_lesion(res)
    return 0


def _cmd_preserve(args):
    from .networks import ensure_store
    from .plots import make_figures

    lm, texts, _ = _load(args, nets=False)
    store = ensure_store(lm, args.corpus, store=args.store, signals=["neurons"], max_tokens=args.max_tokens)
    res = preservation_experiment(lm, store, texts, ks=[int(k) for k in args.ks.split(",")], n_init=args.n_init,
                                  n_random=args.n_random, seed=args.seed, threshold=args.threshold,
                                  max_windows=args.max_windows)
    write_json(Path(args.out) / "preserve.json", res)
    make_figures(args.out)
    d0 = res["domains"][0]
    print(f"dense ppl ({d0}) {_ppl_str(res['baseline'][d0]['ppl'])}")
    print(f"{'k':>5} {'kept %':>7} {'ppl kept':>9} {'ppl random':>11}")
    for r in res["rows"]:
        if r["preserved"] is None:
            print(f"{r['k']:>5} {'0':>7} {'-':>9} {'-':>11}")
            continue
        print(f"{r['k']:>5} {100 * r['fraction']:>7.2f} {_ppl_str(r['preserved'][d0]['ppl'], 9)} "
              f"{_ppl_str(r['random'][d0]['ppl_mean'], 11)}")
    return 0


def _cmd_amplify(args):
    from .plots import make_figures

    lm, texts, nets = _load(args)
    nets_ids = [int(x) for x in args.ids.split(",")] if args.ids else None
    res = amplification_experiment(lm, nets, texts, networks=nets_ids, top=args.top,
                                   factors=[float(x) for x in args.factors.split(",")], how=args.how,
                                   threshold=args.threshold, max_windows=args.max_windows)
    write_json(Path(args.out) / "amplify.json", res)
    make_figures(args.out)
    _print_amplify_best(res)
    return 0


def _print_amplify_best(res):
    """Per domain, the best setting, or "none better than dense" when no setting beats the unmodified
    model (also when the identity factor is not on the grid and every setting is worse)."""
    for d, b in res["best"].items():
        better = b.get("better_than_dense", b["ppl"] < b["baseline_ppl"])
        if better:
            print(f"{d}: best network {b['network']} at {res['how']} {b['value']}: ppl {_ppl_str(b['ppl'])} "
                  f"(dense {_ppl_str(b['baseline_ppl'])})")
        else:
            print(f"{d}: none better than dense (ppl {_ppl_str(b['baseline_ppl'])}; closest: network "
                  f"{b['network']} at {res['how']} {b['value']}: ppl {_ppl_str(b['ppl'])})")


def _cmd_recurrence(args):
    from .models import load_model
    from .plots import make_figures

    lm = load_model(args.model)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    res = recurrence_experiment(lm, domains=[d for d in args.domains.split(",") if d], corpus=args.corpus,
                                n_template=args.n_template, n_individual=args.n_individual, k_template=args.k,
                                k_individual=args.k, threshold=args.threshold, seed=args.seed,
                                workdir=Path(args.out) / "recurrence-stores")
    write_json(Path(args.out) / "recurrence.json", res)
    make_figures(args.out)
    doms = res["domains"]
    print(f"{'template':>12} " + " ".join(f"{d:>8}" for d in doms) + "   (individual networks with IoU > "
          f"{res['iou_threshold']})")
    for r in res["table"]:
        print(f"{r['template']:>12} " + " ".join(f"{r['counts'][d]:>3}/{r['totals'][d]:<4}" for d in doms))
    return 0


def _cmd_explore(args):
    out = explore(args.model, args.out, size=args.size, corpus=args.corpus, seed=args.seed, threshold=args.threshold)
    from .report import write_report

    print(f"results in {out}; report: {write_report(out)}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("lesion", help="inhibit networks vs random neuron sets of the same size")
    _common(p)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--n-random", type=int, default=5)
    p.set_defaults(func=_cmd_lesion)

    p = sub.add_parser("preserve", help="keep only the networks' neurons, for several k")
    _common(p, nets_required=False)
    p.add_argument("--ks", default="10,32,64,128,256")
    p.add_argument("--store", default=None)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--n-init", type=int, default=4)
    p.add_argument("--n-random", type=int, default=3)
    p.set_defaults(func=_cmd_preserve)

    p = sub.add_parser("amplify", help="scale or shift network neurons over a grid of values")
    _common(p)
    p.add_argument("--ids", default=None, help="comma list of network ids (default: the most stable)")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--factors", default="0,0.5,1,1.5,2,3")
    p.add_argument("--how", default="scale", choices=["scale", "add"])
    p.set_defaults(func=_cmd_amplify)

    p = sub.add_parser("recurrence", help="template vs individual networks: IoU recurrence table")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--domains", default=",".join(DOMAINS))
    p.add_argument("--n-template", type=int, default=40)
    p.add_argument("--n-individual", type=int, default=20)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_recurrence)

    p = sub.add_parser("explore", help="the whole exploration (networks, anatomy, lesion, preserve, amplify, "
                                       "recurrence) + HTML report")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--size", default="demo", choices=list(SIZES))
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="funcnet-results")
    p.set_defaults(func=_cmd_explore)
