"""Lesion: inhibit networks and compare with random neuron sets of the same size per layer."""
from __future__ import annotations

from typing import Sequence

from funcnet.core.progress import progress_bar
from funcnet.errors import FuncnetError
from funcnet.experiments.common import (measure, random_control, selection_size, summarize, top_networks, total_neurons)
from funcnet.experiments.schema import LesionResult
from funcnet.intervene import inhibit
from funcnet.intervene import random_fraction as rand_frac
from funcnet.networks.functional import FunctionalNetworks


def lesion_experiment(lm, nets: FunctionalNetworks, texts: dict[str, list[str]], *, networks: Sequence[int] | None = None,
                      top: int = 5, n_random: int = 5, random_fraction: float = 0.15, seed: int = 0,
                      window: int = 128, max_windows: int = 8, threshold: float = 3.6,
                      progress: bool = True) -> LesionResult:
    """Inhibit each selected network, and all of them together; compare with ``n_random`` random
    neuron sets of the same size per layer, and with a random ``random_fraction`` of all neurons."""


    thr = dict(threshold=threshold)
    ids = list(networks) if networks is not None else top_networks(nets, top, **thr)
    if not ids:
        raise FuncnetError(f"no network has key neurons at |z| > {threshold}")
    total = total_neurons(lm)
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
            with inhibit(lm, random_control(sel, lm, seed + r)):
                rnd.append(measure(lm, texts, window=window, max_windows=max_windows))
            bar.update()
        n = selection_size(sel)
        rows.append({"name": name, "networks": list(map(int, group)), "n_neurons": n, "fraction": n / total,
                     "lesioned": les, "random": summarize(rnd, domains)})
    frac = []
    for r in range(n_random):
        with inhibit(lm, rand_frac(lm, random_fraction, seed=seed + 100 + r)):
            frac.append(measure(lm, texts, window=window, max_windows=max_windows))
        bar.update()
    bar.close()
    return LesionResult(baseline=base, conditions=rows, domains=domains,
                        random_fraction={"fraction": random_fraction, "result": summarize(frac, domains)},
                        params={"threshold": threshold, "n_random": n_random, "seed": seed, "window": window,
                                "max_windows": max_windows, "total_neurons": total})
