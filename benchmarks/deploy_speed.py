"""Serving benchmark in llama.cpp: dense vs pruned (FLAP, --multiple-of 32, bias compensation) at f32,
Q8_0 and Q4_K_M; for each GGUF file its size, prompt and generation tokens per second and its
perplexity on the built-in *eval* split, all measured in llama.cpp (llama-cpp-python, CPU).

Also checks, for the pruned f32 files, that llama.cpp matches PyTorch on the first eval window
(largest logit difference, same next token everywhere).

    python benchmarks/deploy_speed.py                         # SmolLM2-135M, 0.2 and 0.5, all three types
    python benchmarks/deploy_speed.py --quick                 # fewer tokens (a few minutes on 2 busy cores)
    python benchmarks/deploy_speed.py --model PATH --ratios 0.2 --types f32 q8_0

Needs llama-cpp-python (make setup-deploy). Writes benchmarks/results/deploy_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from funcnet.core.models import load_model
from funcnet.data.corpus import load_corpus
from funcnet.export import llama_cpp_available, write_gguf
from funcnet.prune import prune


def _llm(path, n_ctx, threads, logits_all=False):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=logits_all, n_threads=threads,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, verbose=False, seed=0)


def _ppl(path, windows, threads):
    llm = _llm(path, len(windows[0]) + 8, threads, logits_all=True)
    nll, n = 0.0, 0
    for w in windows:
        llm.reset()
        llm.eval(list(map(int, w)))
        lg = torch.as_tensor(np.array(llm.scores[: len(w)], dtype=np.float64))
        lp = torch.log_softmax(lg[:-1], -1)
        nll -= float(lp[torch.arange(len(w) - 1), torch.as_tensor(w[1:])].sum())
        n += len(w) - 1
    return float(np.exp(nll / n))


def _speed(path, prompt, n_gen, threads, repeats=2):
    best_p, best_g = 0.0, 0.0
    for _ in range(repeats):
        llm = _llm(path, len(prompt) + n_gen + 8, threads)
        t0 = time.perf_counter()
        llm.eval(list(map(int, prompt)))
        t1 = time.perf_counter()
        for _ in range(n_gen):  # greedy decoding, one token at a time
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        t2 = time.perf_counter()
        best_p, best_g = max(best_p, len(prompt) / (t1 - t0)), max(best_g, n_gen / (t2 - t1))
    return best_p, best_g


def _check(lm, path, window, threads):
    with torch.no_grad():
        want = lm.model(torch.tensor([window])).logits[0].double().numpy()
    llm = _llm(path, len(window) + 8, threads, logits_all=True)
    llm.eval(list(map(int, window)))
    got = np.array(llm.scores[: len(window)], dtype=np.float64)
    return float(np.abs(got - want).max()), bool((got.argmax(-1) == want.argmax(-1)).all())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    ap.add_argument("--types", nargs="+", default=["f32", "q8_0", "q4_k_m"])
    ap.add_argument("--windows", type=int, default=16, help="eval windows of --window tokens for perplexity")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens for the prompt speed")
    ap.add_argument("--gen", type=int, default=64, help="generated tokens for the generation speed")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="--windows 4 --prompt 128 --gen 16")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "deploy_speed.json"))
    args = ap.parse_args(argv)
    if not llama_cpp_available():
        print("llama-cpp-python is not installed (make setup-deploy)", file=sys.stderr)
        return 2
    if args.quick:
        args.windows, args.prompt, args.gen = 4, 128, 16
    ev = load_corpus("builtin", split="eval")
    lm = load_model(args.model)
    ids = lm.tokenizer("\n\n".join(d.text if hasattr(d, "text") else str(d) for d in ev.documents))["input_ids"]
    windows = [ids[i * args.window:(i + 1) * args.window] for i in range(args.windows)]
    prompt = ids[-args.prompt:]
    rows, checks = [], []
    tmp = Path(tempfile.mkdtemp(prefix="funcnet-deploy-"))
    for ratio in [0.0, *args.ratios]:
        m = load_model(args.model)
        if ratio:
            prune(m, ratio, method="flap", calib="builtin", multiple_of=32)
        f32 = write_gguf(m, tmp / f"r{ratio}-f32.gguf", outtype="f32")
        if ratio:
            checks.append({"ratio": ratio, **dict(zip(("max_logit_diff", "same_argmax"),
                                                      _check(m, f32, windows[0], args.threads)))})
        for t in args.types:
            path = f32 if t == "f32" else write_gguf(m, tmp / f"r{ratio}-{t}.gguf", quant=t)
            p_tps, g_tps = _speed(path, prompt, args.gen, args.threads)
            row = {"ratio": ratio, "type": t, "size_mib": round(path.stat().st_size / 2**20, 1),
                   "prompt_tok_s": round(p_tps, 1), "gen_tok_s": round(g_tps, 1),
                   "ppl_eval": round(_ppl(path, windows, args.threads), 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del m
    info = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
            "load_average": os.getloadavg(), "threads": args.threads, "model": args.model,
            "windows": args.windows, "window": args.window, "prompt": args.prompt, "gen": args.gen,
            "llama_cpp_python": __import__("llama_cpp").__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"info": info, "rows": rows, "checks": checks}, indent=1))
    print(json.dumps({"info": info, "checks": checks}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
