"""Peak memory of the streamed CanICA against the token count (issue goal: independent of it).

Records SmolLM2-135M activations (down-projection input of --layers) on the built-in corpus at
each token count (packed windows, documents = subjects; recording not timed), then runs
``funcnet.networks.decompose`` on the memory-mapped store in a fresh process per (tokens, mode)
and reports wall time, peak anonymous RSS (the process's own memory, sampled every 50 ms) and
VmHWM (which also counts store pages the kernel may drop at any time).

    python benchmarks/ica_memory.py --tokens 16384,65536 --layers 0,15,29

Compare with holding the activations in memory (what nilearn / scikit-learn need): the float32
[tokens, neurons] matrix alone is printed as "in-memory matrix".
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ica_speed import _AnonPeak, _peak_rss_mb  # noqa: E402


def _record(tokens: int, layers: list[int], folder: Path, corpus: str) -> None:
    import funcnet
    from funcnet.data.record import record
    from funcnet.data.store import ActivationStore

    if (folder / "manifest.json").exists() and ActivationStore.open(folder).complete:
        return
    lm = funcnet.load_model("smollm2-135m")
    record(lm, corpus, out=folder, layers=layers, max_tokens=tokens, max_length=128, mode="packed", split="all",
           resume=(folder / "manifest.json").exists())


def _decompose(folder: str, mode: str, k: int, n_init: int, out: str) -> None:
    import numpy as np

    from funcnet.networks import decompose
    from funcnet.data.store import ActivationStore

    warnings.simplefilter("ignore")
    store = ActivationStore.open(folder)
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    with _AnonPeak() as anon:
        nets = decompose(store, mode=mode, n_components=k, n_init=n_init, random_state=0, progress=False)
    wall = time.perf_counter() - t0
    n_docs = len(np.unique(store.tokens["doc_ids"]))
    Path(out).write_text(json.dumps(dict(
        tokens=store.n_tokens, documents=n_docs, mode=mode, decompositions=len(nets.decompositions),
        neurons=int(nets.decompositions[0].maps.shape[1]), wall_s=wall, peak_anon_mb=anon.peak,
        vmhwm_mb=_peak_rss_mb(), rss_before_mb=rss0)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", default="16384,65536")
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--modes", default="per-layer,whole")
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--n-init", type=int, default=10)
    ap.add_argument("--corpus", default="builtin")
    ap.add_argument("--dir", default=None, help="keep the stores here (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")]
    base = Path(args.dir or tempfile.mkdtemp(prefix="funcnet-ica-mem-"))
    ctx = mp.get_context("spawn")
    rows = []
    for T in [int(x) for x in args.tokens.split(",")]:
        folder = base / f"store_{T}"
        p = ctx.Process(target=_record, args=(T, layers, folder, args.corpus))
        p.start()
        p.join()
        if p.exitcode:
            print(f"recording {T} tokens failed (exit {p.exitcode})", file=sys.stderr)
            return 1
        for mode in args.modes.split(","):
            out = base / f"res_{T}_{mode}.json"
            p = ctx.Process(target=_decompose, args=(str(folder), mode, args.k, args.n_init, str(out)))
            p.start()
            p.join()
            if p.exitcode:
                print(f"{mode} at {T} tokens failed (exit {p.exitcode})", file=sys.stderr)
                continue
            r = json.loads(out.read_text())
            r["in_memory_matrix_mb"] = r["tokens"] * r["neurons"] * 4 / 2**20   # one decomposition's input
            rows.append(r)
            print(f"{T:7d} tokens ({r['documents']} documents)  {mode:9s} {r['wall_s']:6.1f} s  peak anonymous RSS "
                  f"{r['peak_anon_mb']:6.0f} MB  VmHWM {r['vmhwm_mb']:6.0f} MB  (one float32 matrix in memory: "
                  f"{r['in_memory_matrix_mb']:.0f} MB)", flush=True)
    print(f"\nSmolLM2-135M, layers {layers} (1536 neurons each), k={args.k}, n_init={args.n_init} + ICASSO, "
          f"documents of the {args.corpus!r} corpus as subjects, store read from disk at every pass.")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
