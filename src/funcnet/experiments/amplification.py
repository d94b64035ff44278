"""Amplification: scale or shift a network's neurons over a grid of values."""
from __future__ import annotations

from typing import Sequence

from funcnet.core.progress import progress_bar
from funcnet.errors import FuncnetError
from funcnet.experiments.common import measure, selection_size, top_networks
from funcnet.experiments.schema import AmplificationResult
from funcnet.intervene import amplify
from funcnet.networks.functional import FunctionalNetworks


def amplification_experiment(lm, nets: FunctionalNetworks, texts: dict[str, list[str]], *,
                             networks: Sequence[int] | None = None, top: int = 3,
                             factors: Sequence[float] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0), how: str = "scale",
                             threshold: float = 3.6, window: int = 128, max_windows: int = 8,
                             progress: bool = True) -> AmplificationResult:
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
        curves.append({"network": int(i), "n_neurons": selection_size(sel), "points": pts})
    bar.close()
    best = {}
    for d in texts:
        cands = [(c["network"], p["value"], p["metrics"][d]["ppl"]) for c in curves for p in c["points"]]
        net, val, ppl = min(cands, key=lambda x: x[2])
        # the lowest-perplexity setting tried, and whether it beats the unmodified (dense) model: with
        # the identity (x1 / +0) off the grid the lowest point can still be worse than dense
        best[d] = {"network": net, "value": val, "ppl": ppl, "baseline_ppl": base[d]["ppl"],
                   "better_than_dense": bool(ppl < base[d]["ppl"])}
    return AmplificationResult(how=how, baseline=base, curves=curves, best=best, domains=list(texts),
                               params={"threshold": threshold, "window": window, "max_windows": max_windows})
