"""The whole exploration of the first paper in one call: networks, anatomy, lesion, preservation,
amplification and recurrence, written as JSON results + figures into one folder (then `funcnet report`).

The experiment functions are re-exported here (``from funcnet.explore import lesion_experiment``);
their results are the typed classes of :mod:`funcnet.experiments.schema`, which also names the files."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

from funcnet._version import __version__
from funcnet.core.models import as_loaded
from funcnet.data.corpus import load_corpus
from funcnet.errors import FuncnetError
from funcnet.experiments import (DOMAINS, amplification_experiment, anatomy, eval_domains, lesion_experiment,
                                 preservation_experiment, recurrence_experiment)
from funcnet.experiments.schema import EXPERIMENTS, NETWORKS_FILE, RunInfo, write_result
from funcnet.networks import FunctionalNetworks, decompose, ensure_store
from funcnet.report.browse import build_site
from funcnet.report.plots import make_figures

__all__ = ["SIZES", "explore", "DOMAINS", "eval_domains", "anatomy", "lesion_experiment", "preservation_experiment",
           "amplification_experiment", "recurrence_experiment"]


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
            progress: bool = True, on_stage: Callable[[int, int, str], None] | None = None,
            extra_stages: int = 0, browser: bool = True, **overrides) -> Path:
    """Run the exploration pipeline and write JSON results + figures into ``out``.

    ``on_stage(i, n, name)`` is called as each stage starts (the CLI prints "[i/n] name"); ``n``
    counts ``extra_stages`` more that the caller runs afterwards (e.g. the report). ``browser``: also
    write the network browser (``out/browser/index.html``, :func:`funcnet.report.browse.build_site`)."""

    if size not in SIZES:
        raise FuncnetError(f"unknown size '{size}'; choose from {', '.join(SIZES)}")
    P = {**SIZES[size], **overrides}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = ["load the model", "record activations (or reuse the store)"]
    if "networks" in experiments or any(e in experiments for e in ("anatomy", "lesion", "amplify")):
        stages.append("functional networks (CanICA)")
    stages += [e for e in ("anatomy", "lesion", "preserve", "amplify", "recurrence") if e in experiments] + ["figures"]
    if browser:
        stages.append("network browser")
    n_stages = len(stages) + extra_stages
    done = iter(range(1, n_stages + 1))

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(next(done), n_stages, name)

    stage(stages[0])
    lm = as_loaded(model)
    t_start = time.time()
    run = RunInfo(model=lm.summary(), corpus=corpus, size=size, params=P, seed=seed, threshold=threshold, timings={})

    run.funcnet_version = __version__
    stage(stages[1])
    store = ensure_store(lm, corpus, store=str(out / "store"), signals=["neurons"], max_tokens=P["max_tokens"])
    calib = load_corpus(corpus, split="calib")
    run.store = store.summary()
    texts = eval_domains(domains, corpus)
    nets_path = out / NETWORKS_FILE

    def timed(name, fn):
        stage(name if name != "networks" else "functional networks (CanICA)")
        t0 = time.time()
        res = fn()
        run.timings[name] = round(time.time() - t0, 1)
        write_result(out, run)
        return res

    nets = None
    if nets_path.exists():
        stage("functional networks (reused)")
        nets = FunctionalNetworks.load(nets_path, model=lm)
    elif "networks" in experiments or any(e in experiments for e in ("anatomy", "lesion", "amplify")):
        nets = timed("networks", lambda: decompose(store, mode="whole", n_components=P["k"], n_init=P["n_init"],
                                                    random_state=seed, progress=progress,
                                                    model_identity=lm.identity))
        nets.save(nets_path)
    if nets is not None:
        run.networks = {"n": nets.n_networks, "k": P["k"], "mode": "whole",
                           "stability": [float(x) for x in nets.stability],
                           "n_keys": [int(len(nets.key_neurons(i, threshold=threshold))) for i in range(nets.n_networks)]}
    if "anatomy" in experiments:
        write_result(out, timed("anatomy", lambda: anatomy(nets, store, calib, top=P["top"], threshold=threshold)))
    if "lesion" in experiments:
        write_result(out, timed("lesion", lambda: lesion_experiment(
            lm, nets, texts, top=P["top"], n_random=P["n_random"], seed=seed, threshold=threshold,
            max_windows=P["max_windows"], progress=progress)))
    if "preserve" in experiments:
        write_result(out, timed("preserve", lambda: preservation_experiment(
            lm, store, texts, ks=P["ks"], n_init=max(2, P["n_init"] // 2), n_random=P["preserve_random"], seed=seed,
            threshold=threshold, max_windows=P["max_windows"], progress=progress,
            nets_by_k={P["k"]: nets} if nets is not None else None)))
    if "amplify" in experiments:
        write_result(out, timed("amplify", lambda: amplification_experiment(
            lm, nets, texts, top=P["amplify_top"], factors=P["factors"], threshold=threshold,
            max_windows=P["max_windows"], progress=progress)))
    if "recurrence" in experiments:
        write_result(out, timed("recurrence", lambda: recurrence_experiment(
            lm, domains=domains, corpus=corpus, n_template=P["n_template"], n_individual=P["n_individual"],
            threshold=threshold, seed=seed, workdir=out / "recurrence-stores", progress=progress)))
    run.timings["total"] = round(time.time() - t_start, 1)
    write_result(out, run)
    stage("figures")
    make_figures(out, nets=nets)
    if browser and nets is not None:
        stage("network browser")
        lesion_file = out / EXPERIMENTS["lesion"].result_file
        build_site(nets, lm, store, out / "browser", lesion=lesion_file if lesion_file.exists() else None,
                   corpus=calib, overwrite=True, progress=progress, seed=seed)
    return out
