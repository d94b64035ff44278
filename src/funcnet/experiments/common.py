"""What every experiment shares: the evaluation texts, the metric, random neuron controls, the
choice of networks, and the mean ± sd summary of repeated measurements.

All metrics are token perplexity and next-token top-1 accuracy over non-overlapping windows of
the built-in evaluation split, per domain (see :mod:`funcnet.evaluate`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from funcnet._defaults import DOMAINS as _DOMAINS
from funcnet.data.corpus import load_corpus
from funcnet.errors import FuncnetError
from funcnet.evaluate import perplexity
from funcnet.experiments.schema import DomainMetrics, DomainSummary
from funcnet.intervene import random_like
from funcnet.networks.functional import FunctionalNetworks

DOMAINS = _DOMAINS


def eval_domains(domains: Sequence[str] = DOMAINS, corpus: str = "builtin", max_docs: int | None = 40) -> dict[str, list[str]]:
    """Evaluation texts per domain (the built-in eval split by default)."""

    out = {}
    for d in domains:
        c = load_corpus(corpus, split="eval", domain=d, max_docs=max_docs)
        out[d] = c.texts
    return out


def measure(lm, texts: dict[str, list[str]], *, window: int = 128, max_windows: int = 8,
            batch_size: int = 8) -> DomainMetrics:
    """{domain: {"ppl": .., "accuracy": .., "n_tokens": ..}} of the model as it is now (interventions included)."""

    out = {}
    for d, t in texts.items():
        r = perplexity(lm, t, window=window, max_windows=max_windows, batch_size=batch_size, progress=False)
        out[d] = {"ppl": r.ppl, "accuracy": r.accuracy, "n_tokens": r.n_tokens}
    return out


def random_control(sel, lm, seed: int):
    """Random neurons, as many per layer as ``sel``, avoiding ``sel`` where the layer has room."""

    try:
        return random_like(sel, lm, seed=seed, match="layer", exclude=True)
    except FuncnetError:  # the selection covers more than half a layer: draw from the whole layer
        return random_like(sel, lm, seed=seed, match="layer")


def selection_size(sel) -> int:
    """Number of neurons of a per-layer selection ``{layer: indices}``."""
    return int(sum(len(v) for v in sel.values()))


def total_neurons(lm) -> int:
    """Number of MLP neurons of the model."""
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


def summarize(values: list[DomainMetrics], domains) -> DomainSummary:
    """Mean, sd (ddof=1; 0 for one value) and the values of perplexity and accuracy, per domain, of
    repeated measurements (e.g. the random controls)."""
    res = {}
    for d in domains:
        p = np.array([v[d]["ppl"] for v in values], float)
        a = np.array([v[d]["accuracy"] for v in values], float)
        res[d] = {"ppl_mean": float(p.mean()), "ppl_std": float(p.std(ddof=1)) if len(p) > 1 else 0.0,
                  "acc_mean": float(a.mean()), "acc_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                  "ppl": p.tolist(), "accuracy": a.tolist()}
    return res
