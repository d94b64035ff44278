"""Recording overhead: plain forward vs funcnet recording all layers' neuron signal to disk.

For each token count, two fresh subprocesses run the same tokens (same batches) through
(a) a plain forward of the base model (no hooks, nothing kept) and
(b) ``funcnet.record`` of every layer's ``neurons`` signal into an on-disk float16 store.
Prints seconds, the (b)/(a) ratio, and peak RSS of each process.

    python benchmarks/record_overhead.py [--model smollm2-135m] [--tokens 4096 16384] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, resource, sys, time, tempfile
import torch
import funcnet
from funcnet.data.corpus import load_corpus, tokenize
from funcnet.data.record import record
mode, spec, n_tokens, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lm = funcnet.load_model(spec)
corpus = load_corpus("builtin", split="calib")
tok = tokenize(corpus, lm.tokenizer, max_length=128, mode="packed", max_tokens=n_tokens)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "plain":
    base = lm.model.base_model
    with torch.inference_mode():
        for ids, mask, _ in tok.batches(bs, lm.tokenizer.pad_token_id):
            base(input_ids=ids, attention_mask=mask, use_cache=False)
else:
    out = tempfile.mkdtemp(dir=os.environ.get("BENCH_TMP"))
    record(lm, tok, out=os.path.join(out, "store"), layers="all", batch_size=bs, progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "tokens": tok.n_tokens, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_load_mb": rss0 / 1024}))
"""


def run(mode, spec, n, bs, tmp):
    env = dict(os.environ, FUNCNET_NO_PROGRESS="1", BENCH_TMP=tmp)
    r = subprocess.run([sys.executable, "-c", CHILD, mode, spec, str(n), str(bs)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tokens:
            plain = run("plain", args.model, n, args.batch_size, tmp)
            rec = run("record", args.model, n, args.batch_size, tmp)
            rows.append((n, plain, rec))
    print(f"model {args.model}, batch {args.batch_size} x 128 tokens, all layers' neurons -> float16 store, "
          f"torch threads {os.cpu_count()}")
    print(f"{'tokens':>7} | {'plain s':>8} | {'record s':>8} | {'ratio':>5} | {'plain peak RSS MB':>17} | {'record peak RSS MB':>18}")
    for n, p, r in rows:
        print(f"{p['tokens']:>7} | {p['seconds']:>8.1f} | {r['seconds']:>8.1f} | {r['seconds'] / p['seconds']:>5.2f} | "
              f"{p['peak_rss_mb']:>17.0f} | {r['peak_rss_mb']:>18.0f}")
    if len(rows) >= 2:
        a, b = rows[0][2]["peak_rss_mb"], rows[-1][2]["peak_rss_mb"]
        print(f"record peak RSS at {rows[-1][0]} tokens vs {rows[0][0]}: {100 * (b - a) / a:+.1f}%")


if __name__ == "__main__":
    main()
