"""Preservation: keep only the union of the networks of a k-component decomposition, for several k."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from funcnet.experiments.common import measure, selection_size, summarize, total_neurons
from funcnet.experiments.schema import PreservationResult
from funcnet.intervene import preserve, random_like
from funcnet.networks.functional import decompose


def preservation_experiment(lm, store, texts: dict[str, list[str]], *, ks: Sequence[int] = (10, 32, 64, 128, 256),
                            mode: str = "whole", n_init: int = 3, n_random: int = 3, seed: int = 0,
                            threshold: float = 3.6, window: int = 128, max_windows: int = 8,
                            progress: bool = True, nets_by_k: dict | None = None) -> PreservationResult:
    """Keep only the union of the networks of a k-component decomposition (mask every other MLP
    neuron); compare with keeping a random set of the same size per layer. ``nets_by_k``: networks
    already decomposed, by k (used instead of decomposing ``store`` again)."""

    base = measure(lm, texts, window=window, max_windows=max_windows)
    total = total_neurons(lm)
    rows = []
    for k in ks:
        t0 = time.time()
        nets = (nets_by_k or {}).get(k) or decompose(store, mode=mode, n_components=k, n_init=n_init,
                                                      random_state=seed, progress=progress)
        sel = nets.to_layer_indices(threshold=threshold)
        n = selection_size(sel)
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
                     "random": summarize(rnd, list(texts)), "seconds": time.time() - t0})
    return PreservationResult(baseline=base, rows=rows, domains=list(texts),
                              params={"mode": mode, "threshold": threshold, "n_init": n_init, "n_random": n_random,
                                      "window": window, "max_windows": max_windows, "total_neurons": total})
