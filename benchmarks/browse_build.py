"""Network browser build time and page sizes.

Records ``--tokens`` tokens of the built-in corpus (random documents of every domain) (every layer's ``neurons`` signal) from a model,
finds ``--k`` networks over all layers together (``whole`` mode, or ``--synthetic`` random heavy-tailed
maps when only the build is of interest), then times ``build_site`` alone and reports its seconds,
peak RSS, the number of files and the largest one (the issue's target: 128 networks of SmolLM2 over
16k tokens in under 2 minutes on 2 cores, no file over 1 MB).

    python benchmarks/browse_build.py [--model smollm2-135m] [--tokens 16384] [--k 128] [--synthetic]
                                      [--networks FILE] [--keep DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from funcnet.core.models import load_model
from funcnet.data.corpus import load_corpus
from funcnet.data.record import record
from funcnet.networks import Decomposition, FunctionalNetworks, decompose
from funcnet.report.browse import build_site, page_sizes


def synthetic_networks(store, lm, k: int, seed: int = 0, keys: int = 60) -> FunctionalNetworks:
    """``k`` random z-scored maps over every (layer, neuron) column, each with ``keys`` columns at z ~ 5
    (so each network has about that many key neurons at the default threshold 3.6)."""
    rng = np.random.default_rng(seed)
    cols = np.concatenate([np.stack([np.full(store.width(l), l), np.zeros(store.width(l)), np.arange(store.width(l))], 1)
                           for l in store.layers]).astype(np.int32)
    maps = rng.standard_normal((k, len(cols))).astype(np.float32)
    for i in range(k):
        maps[i, rng.choice(len(cols), keys, replace=False)] = rng.uniform(4.0, 7.0, keys)
    dec = Decomposition(maps, cols, rng.uniform(0.5, 1.0, k).astype(np.float32), unit="whole")
    return FunctionalNetworks([dec], ["neurons"], lm.adapter.neurons_per_layer(lm.model), model_identity=lm.identity,
                              model_spec=lm.spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--synthetic", action="store_true", help="random heavy-tailed maps instead of group ICA")
    ap.add_argument("--networks", default=None, help="use this networks file (recorded store still made here)")
    ap.add_argument("--keep", default=None, help="write store and site under this folder (kept)")
    ap.add_argument("--json", default=None, help="write the figures as JSON here")
    a = ap.parse_args()
    os.environ.setdefault("FUNCNET_NO_PROGRESS", "1")
    root = Path(a.keep or tempfile.mkdtemp(prefix="browse-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = load_model(a.model)
    t1 = time.perf_counter()
    # documents drawn at random from every domain (prose, code, math), 128 tokens each at most
    corpus = load_corpus("builtin", max_docs=a.tokens // 100 + 8, seed=0)
    store = record(lm, corpus, out=root / "store", max_tokens=a.tokens, max_length=128, resume=True, progress=False)
    t2 = time.perf_counter()
    if a.networks:
        nets = FunctionalNetworks.load(a.networks, model=lm)
    elif a.synthetic:
        nets = synthetic_networks(store, lm, a.k)
    else:
        nets = decompose(store, mode="whole", n_components=a.k, n_init=1, progress=False,
                         model_identity=lm.identity, neurons_per_layer=lm.adapter.neurons_per_layer(lm.model))
    t3 = time.perf_counter()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    site = build_site(nets, lm, store, root / "site", corpus=corpus, overwrite=True, progress=False)
    t4 = time.perf_counter()
    sizes = page_sizes(site)
    big = max(sizes, key=sizes.get)
    pages = [k for k in sizes if k.endswith(".html")]
    res = {
        "model": a.model, "tokens": store.n_tokens, "networks": nets.n_networks,
        "networks_source": "file" if a.networks else "synthetic" if a.synthetic else "whole-mode group ICA",
        "load_s": round(t1 - t0, 2), "record_s": round(t2 - t1, 2), "networks_s": round(t3 - t2, 2),
        "build_s": round(t4 - t3, 2), "files": len(sizes), "pages": len(pages),
        "largest_file": big, "largest_file_kb": round(sizes[big] / 1024, 1),
        "largest_page_kb": round(max(sizes[p] for p in pages) / 1024, 1),
        "largest_network_data_kb": round(max(v for k, v in sizes.items() if k.startswith("data/net/")) / 1024, 1),
        "site_total_mb": round(sum(sizes.values()) / 2**20, 2),
        "peak_rss_mb_before_build": round(rss0, 0),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "machine": platform.machine(),
        "python": platform.python_version(), "site": str(site),
    }
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
