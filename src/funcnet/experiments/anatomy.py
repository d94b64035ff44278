"""Anatomy: where a network's key neurons sit, and the tokens where it is most active."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from funcnet.experiments.common import top_networks
from funcnet.experiments.schema import AnatomyResult
from funcnet.networks.functional import FunctionalNetworks


def anatomy(nets: FunctionalNetworks, store, corpus, *, networks: Sequence[int] | None = None, top: int = 8,
            top_tokens: int = 8, context_chars: int = 48, threshold: float = 3.6) -> AnatomyResult:
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
    return AnatomyResult(networks=out, threshold=threshold)
