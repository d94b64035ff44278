"""Recurrence: do the networks of a group decomposition recur in the networks of single texts?"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from funcnet.data.corpus import load_corpus
from funcnet.data.record import record
from funcnet.errors import FuncnetError
from funcnet.experiments.common import DOMAINS
from funcnet.experiments.schema import RecurrenceResult
from funcnet.networks.functional import decompose, iou_matrix


def recurrence_experiment(lm, *, domains: Sequence[str] = DOMAINS, corpus: str = "builtin", n_template: int = 24,
                          n_individual: int = 8, k_template: int = 10, k_individual: int = 10, max_length: int = 128,
                          threshold: float = 3.6, iou_threshold: float = 0.2, n_init: int = 3, seed: int = 0,
                          workdir: str | os.PathLike | None = None, progress: bool = True) -> RecurrenceResult:
    """Template networks from a group decomposition of ``n_template`` texts per domain; individual
    networks from decompositions of ``n_individual`` other single texts per domain; IoU of their
    key-neuron sets. Counts, per template, the individual networks with IoU > ``iou_threshold``."""


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
    return RecurrenceResult(domains=list(domains), templates=templates, individuals=individuals, iou=M.tolist(),
                            iou_threshold=iou_threshold, table=table,
                            params={"n_template": n_template, "n_individual": n_individual, "k_template": k_template,
                                    "k_individual": k_individual, "threshold": threshold, "max_length": max_length})


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
