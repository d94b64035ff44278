"""Pruning benchmark: every method at every ratio, one table; plus dense-vs-pruned speed and memory.

The dense model is loaded once; calibration statistics (builtin calib split, packed 128-token
windows) and the functional networks (per-layer group ICA on the calib split, cached on disk) are
computed once and shared by every method. Each (ratio, method) prunes a deep copy of the dense
model and is evaluated on the builtin *eval* split:

* perplexity at 128-token windows per domain (prose, code, math; the first ``--windows`` windows),
* perplexity at 512-token windows (prose; ``--windows512`` windows),
* next-token top-1 accuracy (all 128-token windows of the three domains together),
* achieved ratio of the ``--of`` denominator and the equivalent all-parameter ratio.

Method names: ``dense``, ``random``, ``magnitude``, ``wanda-sp``, ``flap``, ``fn`` (library
default functional-network importance, bias compensation), ``fn-nocomp`` (the same without
compensation), ``fn-threshold`` (the reference rule: keep the union of key neurons |z| > T, with T
found by bisection so the achieved ratio lands on the target), and explicit score variants
``fn:SCORE`` (e.g. ``fn:max_abs_z``, ``fn:frequency``, ``fn:fn-flap``, ``fn:fn-cond``; ``flap:cond``);
a ``+nocomp`` suffix drops compensation from any method, ``+ls`` / ``+ls-fn`` picks least-squares
compensation (``+ls@0.1``: ridge 0.1), ``/uniform`` or ``/global`` another allocation (``fn/uniform+ls``).

``--eval-split dev`` evaluates on held-out *calibration* documents instead (the last documents of
each calib domain): what any choice of variant is made on, so that the eval split stays untouched.

    python benchmarks/prune_table.py                      # SmolLM2-135M, full table (~30-40 min on 2 cores)
    python benchmarks/prune_table.py --quick              # end-to-end check (3-10 min on 2 busy cores)
    python benchmarks/prune_table.py --model gemma3-270m --ratios 0.2 0.5 --methods dense flap fn ...
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import funcnet
from funcnet import prune as P
from funcnet.core._io import cache_dir
from funcnet.data.corpus import load_corpus
from funcnet.evaluate import perplexity
from funcnet.networks import FunctionalNetworks
from funcnet.prune import networks_for_pruning, pruning_keep_masks

DOMAINS = ("prose", "code", "math")
DEFAULT_METHODS = ("dense", "random", "magnitude", "wanda-sp", "flap", "fn", "fn-nocomp", "fn:max_abs_z",
                   "fn:max_abs_z+nocomp", "fn-threshold")
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.5)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------ methods
COMP_SUFFIXES = {"nocomp": "none", "bias": "bias", "ls": "ls", "ls-fn": "ls-fn"}


def parse_method(name: str) -> dict:
    """'fn:fn-flap+nocomp' -> {base: fn, score: fn-flap, comp: "none"}; '+ls' / '+ls-fn' pick
    least-squares compensation ('+ls@0.1': with ridge 0.1); no suffix: bias compensation."""
    comp, ridge = "bias", None
    base = name
    head, plus, suffix = base.rpartition("+")
    if plus and suffix.partition("@")[0] in COMP_SUFFIXES:
        suffix, _, r = suffix.partition("@")
        base, comp = head, COMP_SUFFIXES[suffix]
        ridge = float(r) if r else None
    if base == "fn-nocomp":
        base, comp = "fn", "none"
    alloc = None
    if "/" in base:  # e.g. fn/uniform+ls: the method's scores with another allocation
        base, _, alloc = base.partition("/")
    score, fn_kw = None, {}
    if ":" in base:  # fn:SCORE or flap:cond, with ,key=value options
        base, _, score = base.partition(":")
        score, *opts = score.split(",")
        for o in opts:  # e.g. fn:fn-flap,z_power=2
            k, _, v = o.partition("=")
            fn_kw[k] = float(v)
    out = {"name": name, "base": base, "score": score, "comp": comp}
    if ridge is not None:
        out["ridge"] = ridge
    if alloc:
        out["allocation"] = alloc
    if fn_kw:
        out["fn_kw"] = fn_kw
    return out


def networks_cached(lm, calib, *, n_groups, group_size, n_components, fn_method, seed, refresh=False):
    """Functional networks of ``lm`` on the calib split, cached in $FUNCNET_CACHE/prune_bench."""
    key = f"{lm.identity[:16]}-g{n_groups}x{group_size}-k{n_components}-{fn_method}-s{seed}"
    path = cache_dir() / "prune_bench" / f"networks-{key}.safetensors"
    if path.exists() and not refresh:
        log(f"networks: reusing {path}")
        return FunctionalNetworks.load(path, model=lm), path, 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    nets = networks_for_pruning(lm, calib, n_groups=n_groups, group_size=group_size, n_components=n_components,
                                method=fn_method, n_init=1, seed=seed,
                                progress=os.environ.get("FUNCNET_NO_PROGRESS") != "1")
    dt = time.perf_counter() - t0
    nets.save(path)
    log(f"networks: {nets.n_networks} maps in {dt:.0f} s -> {path}")
    return nets, path, dt


def threshold_masks(lm, nets, ratio, of, *, comp="bias", protect=(3, 2), iters=50, mx=None, check=True):
    """Bisection on T (reference rule |z| > T) so the achieved ratio of ``of`` lands on ``ratio``.

    The union of key neurons over all maps and groups with |z| > T is exactly the set of neurons
    whose largest |z| exceeds T, so the bisection works on ``score_per_neuron`` and the final masks
    come from ``pruning_keep_masks`` (checked equal)."""
    mx = nets.score_per_neuron() if mx is None else mx
    covered = {int(l) for d in nets.decompositions for l in np.unique(d.columns[:, 0])}

    def masks_at(T):
        return {l: (v > T if l in covered else np.ones(len(v), bool)) for l, v in mx.items()}

    def removed(T):
        imp = P.imp_fn_threshold(lm, keep_masks=masks_at(T))
        sel = P.select(lm, imp, None, of=of, protect=protect, bias_compensation=comp not in (False, "none"))
        return sel.predicted_removed / sel.denominator

    lo, hi = 0.0, float(max(v.max() for v in mx.values())) + 1.0  # removed(lo) small, removed(hi) large
    for _ in range(iters):
        mid = (lo + hi) / 2
        if removed(mid) < ratio:
            lo = mid
        else:
            hi = mid
    T = lo if abs(removed(lo) - ratio) <= abs(removed(hi) - ratio) else hi
    mine = masks_at(T)
    if check:  # the same masks as the reference rule (slow: one pass over every map)
        ref = pruning_keep_masks(nets, lm, threshold=T)
        assert all(np.array_equal(ref[l], mine[l]) for l in ref), "threshold masks disagree with pruning_keep_masks"
    return mine, T


# ------------------------------------------------------------------------------------ evaluation
def eval_sets(split: str) -> dict[str, list[str]]:
    out = {}
    for d in DOMAINS:
        if split == "eval":
            out[d] = list(load_corpus("builtin", split="eval", domain=d).texts)
        else:  # dev: last calib documents of the domain (calibration stats use the first packed tokens)
            out[d] = list(load_corpus("builtin", split="calib", domain=d).texts)[::-1]
    return out


def evaluate(lm, sets, *, windows, windows512, batch_size=8) -> dict:
    res, nll_tok, correct, count = {}, 0.0, 0.0, 0
    t0 = time.perf_counter()
    for d in DOMAINS:
        r = perplexity(lm, sets[d], window=128, max_windows=windows, batch_size=batch_size, progress=False)
        res[f"ppl128_{d}"] = r.ppl
        correct += r.accuracy * r.n_tokens
        count += r.n_tokens
        nll_tok += r.nll * r.n_tokens
    res["accuracy"] = correct / count
    res["ppl128_all"] = math.exp(nll_tok / count)
    if windows512:
        r = perplexity(lm, sets["prose"], window=512, max_windows=windows512, batch_size=2, progress=False)
        res["ppl512_prose"] = r.ppl
    res["eval_seconds"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------------ speed / memory
CHILD = r"""
import json, os, resource, sys, time
import torch
mode, path, spec, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import funcnet
from funcnet.data.corpus import load_corpus
from funcnet.evaluate import tokenize_stream
if mode == "dense":
    lm = funcnet.load_model(spec)
else:
    from funcnet.prune import load_pruned
    lm = load_pruned(path)
def vm(key):  # /proc/self/status VmHWM / VmRSS in MB: per address space, so reset by exec (ru_maxrss is not:
    # a child forked from a large parent would report the parent's peak)
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
rss_load = vm("VmHWM")
ids = tokenize_stream(lm.tokenizer, load_corpus("builtin", split="eval", domain="prose").texts)
batch = ids[: 8 * 128].reshape(8, 128)
base = lm.model.base_model
with torch.inference_mode():
    base(input_ids=batch, use_cache=False)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        base(input_ids=batch, use_cache=False)
    prefill = reps * batch.numel() / (time.perf_counter() - t0)
    prompt = ids[:32].reshape(1, 32)
    kw = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    lm.model.generate(prompt, **dict(kw, max_new_tokens=4, min_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        out = lm.model.generate(prompt, **kw)
    gen = reps * 32 / (time.perf_counter() - t0)
text = lm.tokenizer.decode(out[0, 32:])
print(json.dumps({"prefill_tok_s": prefill, "gen_tok_s": gen, "rss_after_load_mb": rss_load,
                  "peak_rss_mb": vm("VmHWM"), "rss_end_mb": vm("VmRSS"),
                  "params": sum(p.numel() for p in lm.model.parameters()), "sample": text}))
"""


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file() and f.suffix == ".safetensors")


def speed_child(mode, path, spec, reps) -> dict:
    env = dict(os.environ, FUNCNET_NO_PROGRESS="1")
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), spec, str(reps)], capture_output=True,
                       text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def speed_section(lm, spec, stats, nets, *, method, ratios, of, reps, score=None) -> list[dict]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="funcnet-prune-bench-"))
    try:
        dense_dir = tmp / "dense"
        lm.model.save_pretrained(dense_dir)
        r = speed_child("dense", dense_dir, spec, reps)
        r.update(model="dense", ratio=0.0, size_mb=dir_size(dense_dir) / 2**20)
        rows.append(r)
        log(f"speed dense: {r['prefill_tok_s']:.0f} prefill tok/s, {r['gen_tok_s']:.1f} gen tok/s")
        for ratio in ratios:
            m = copy.deepcopy(lm.model)
            plm = type(lm)(model=m, tokenizer=lm.tokenizer, adapter=lm.adapter, spec=lm.spec, source=lm.source)
            kw = {"networks": nets} if method.startswith("fn") else {}
            if score:
                kw["score"] = score
            res = P.prune(plm, ratio, of=of, method=method, stats=stats, **kw)
            out = tmp / f"{method}-{ratio}"
            P.save_pruned(plm, lm.tokenizer, out, res.report)
            del m, plm, res
            r = speed_child("pruned", out, spec, reps)
            r.update(model=f"{method}{'' if not score else ':' + score} {int(round(ratio * 100))}%", ratio=ratio,
                     size_mb=dir_size(out) / 2**20)
            rows.append(r)
            log(f"speed {r['model']}: {r['prefill_tok_s']:.0f} prefill tok/s, {r['gen_tok_s']:.1f} gen tok/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


# ------------------------------------------------------------------------------------ tables
def fmt(x, nd=2):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if x >= 1000:
        return f"{x:.3g}" if x >= 1e5 else f"{x:.0f}"
    return f"{x:.{nd}f}"


def main_table(rows, of) -> str:
    head = ["ratio", "method", "ppl prose@128", "ppl code@128", "ppl math@128", "ppl prose@512", "accuracy",
            f"achieved ({of})", "achieved (all)", "T", "prune s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    opt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        cells = ["-" if not r["ratio"] else f"{r['ratio']:.0%}", r["method"], fmt(r["ppl128_prose"]),
                 fmt(r["ppl128_code"]), fmt(r["ppl128_math"]), fmt(r.get("ppl512_prose")), f"{r['accuracy']:.4f}",
                 opt(r.get("achieved"), ".4f"), opt(r.get("achieved_all"), ".4f"), opt(r.get("threshold"), ".3f"),
                 fmt(r.get("prune_seconds"), 1), fmt(r.get("eval_seconds"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pivot_table(rows) -> str:
    """ppl@128 over all three domains' tokens (x dense), one row per method, one column per ratio."""
    dense = next((r for r in rows if r["method"] == "dense"), None)
    ratios = sorted({r["ratio"] for r in rows if r["ratio"]})
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    by = {(r["method"], r["ratio"]): r for r in rows}
    lines = ["| method | " + " | ".join(f"{x:.0%}" for x in ratios) + " |", "|---|" + "---|" * len(ratios)]
    if dense:
        lines.append(f"| dense | " + " | ".join(fmt(dense["ppl128_all"]) for _ in ratios) + " |")
    for m in methods:
        cells = []
        best = {x: min(r["ppl128_all"] for (mm, rr), r in by.items() if rr == x and mm != "dense") for x in ratios}
        for x in ratios:
            r = by.get((m, x))
            if r is None:
                cells.append("-")
                continue
            c = fmt(r["ppl128_all"]) + (f" ({r['ppl128_all'] / dense['ppl128_all']:.2f}x)" if dense else "")
            cells.append(f"**{c}**" if r["ppl128_all"] == best[x] else c)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(rows) -> str:
    lines = ["| model | params | prefill tok/s (8x128) | generate tok/s (1x32 greedy) | peak RSS after load MB "
             "| peak RSS MB | safetensors MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['prefill_tok_s']:.0f} | {r['gen_tok_s']:.1f} "
                     f"| {r['rss_after_load_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['size_mb']:.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS))
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--of", default="mlp", choices=["mlp", "attn+mlp", "all"])
    ap.add_argument("--windows", type=int, default=8, help="128-token windows per domain")
    ap.add_argument("--windows512", type=int, default=2, help="512-token prose windows (0: skip)")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--ridge", type=float, default=None, help="ridge of +ls / +ls-fn (default: the library's)")
    ap.add_argument("--ls-regressors", type=int, default=None, help="+ls-fn: regressors per removed neuron")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=16)
    ap.add_argument("-k", "--n-components", type=int, default=64)
    ap.add_argument("--fn-method", default="reference", choices=["reference", "canica"])
    ap.add_argument("--eval-split", default="eval", choices=["eval", "dev"])
    ap.add_argument("--speed", default="fn", help="method of the speed/memory section ('none' to skip)")
    ap.add_argument("--speed-ratios", type=float, nargs="+", default=[0.2, 0.5])
    ap.add_argument("--speed-reps", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--quick", action="store_true", help="small end-to-end check")
    ap.add_argument("--json", default=None, help="output JSON (default benchmarks/results/prune_table-MODEL.json)")
    ap.add_argument("--refresh-networks", action="store_true")
    ap.add_argument("--report", default=None, nargs="+", metavar="JSON",
                    help="only print the tables of results files (several: rows merged, later files win)")
    args = ap.parse_args(argv)
    if args.report:
        files = [json.loads(Path(f).read_text()) for f in args.report]
        data = files[-1]
        merged = {}
        for d in files:
            for r in d["rows"]:
                merged[(r["method"], r["ratio"])] = r
        order = list(dict.fromkeys(r["method"] for d in files for r in d["rows"]))
        data = dict(data, rows=sorted(merged.values(), key=lambda r: (r["ratio"], order.index(r["method"]))))
        if data["rows"]:
            print(main_table(data["rows"], data["args"]["of"]))
            print("\nppl@128, all domains together (x dense; bold: lowest at that ratio)\n")
            print(pivot_table(data["rows"]))
        if data.get("speed"):
            print()
            print(speed_table(data["speed"]))
        e = data["env"]
        print(f"\n{e['date']}, {e['cpu_count']} CPUs, torch threads {e['torch_threads']}, load average "
              f"{e['load_avg_start']} -> {e.get('load_avg_end', '?')}, command: {e['command']}")
        return 0
    if args.quick:
        args.ratios = [0.2]
        args.windows, args.windows512, args.calib_tokens = 4, 2, 2048
        args.groups, args.group_size, args.n_components = 2, 8, 16
        args.speed_ratios, args.speed_reps = [0.5], 1
        if args.methods == list(DEFAULT_METHODS):
            args.methods = ["dense", "flap", "fn", "fn-nocomp", "fn-threshold"]

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # speed children inherit it
    t_start = time.perf_counter()
    env = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version(), "load_avg_start": load_avg(), "command": " ".join(sys.argv)}
    log(f"load {args.model} (load average {env['load_avg_start']})")
    t0 = time.perf_counter()
    lm = funcnet.load_model(args.model)
    env["load_seconds"] = time.perf_counter() - t0
    calib = load_corpus("builtin", split="calib")
    t0 = time.perf_counter()
    specs = [parse_method(m) for m in args.methods if m != "none"]  # --methods none: speed section only
    cov = any(s["comp"].startswith("ls") for s in specs)
    stats = P.calibration_stats(lm, calib, calib_tokens=args.calib_tokens, max_length=128, covariance=cov,
                                covariance_layers=range(3, lm.n_layers - 2) if cov else None)
    env["calib_seconds"] = time.perf_counter() - t0
    log(f"calibration stats{' with covariance' if cov else ''}: {stats.n_tokens} tokens in "
        f"{env['calib_seconds']:.0f} s")
    nets = None
    if any(s["base"].startswith("fn") or s["comp"] == "ls-fn" for s in specs) or args.speed.startswith("fn"):
        nets, nets_path, env["networks_seconds"] = networks_cached(
            lm, calib, n_groups=args.groups, group_size=args.group_size, n_components=args.n_components,
            fn_method=args.fn_method, seed=args.seed, refresh=args.refresh_networks)
        env["networks_file"] = str(nets_path)
    sets = eval_sets(args.eval_split)
    counts = P.param_counts(lm)
    env["params"] = counts

    rows = []
    dense_res = None
    imp_cache: dict = {}  # functional-network importance per score variant (same for every ratio)
    mx_cache: list = []
    for ratio in sorted(args.ratios):
        for s in specs:
            if s["base"] == "dense":
                if dense_res is None:
                    dense_res = evaluate(lm, sets, windows=args.windows, windows512=args.windows512)
                    rows.insert(0, dict(method="dense", ratio=0.0, achieved=0.0, achieved_all=0.0, **dense_res))
                    log(f"dense: {json.dumps({k: round(v, 3) for k, v in dense_res.items()})}")
                continue
            m = copy.deepcopy(lm.model)
            plm = type(lm)(model=m, tokenizer=lm.tokenizer, adapter=lm.adapter, spec=lm.spec, source=lm.source)
            kw, T = {}, None
            t0 = time.perf_counter()
            if s["base"] == "fn-threshold":
                if not mx_cache:
                    mx_cache.append(nets.score_per_neuron())
                masks, T = threshold_masks(plm, nets, ratio, args.of, comp=s["comp"], mx=mx_cache[0],
                                           check=len(mx_cache) == 1)
                mx_cache.append(T)
                kw["keep_masks"] = masks
                r_arg = None
            else:
                r_arg = ratio
                if s["base"] == "fn":
                    key = (s["score"], tuple(sorted(s.get("fn_kw", {}).items())))
                    if key not in imp_cache:
                        fkw = dict(s.get("fn_kw", {}))
                        if s["score"]:
                            fkw["score"] = s["score"]
                        imp_cache[key] = P.compute_importance("fn", lm, stats, networks=nets, **fkw)
                    kw["importance"] = imp_cache[key]
            method = "fn-threshold" if s["base"] == "fn-threshold" else s["base"]
            if s.get("allocation"):
                kw["allocation"] = s["allocation"]
            if s["base"] not in ("fn", "fn-threshold") and s["score"]:
                kw.update(score=s["score"], **s.get("fn_kw", {}))
            if s["comp"].startswith("ls"):
                kw["ridge"] = s.get("ridge", args.ridge if args.ridge is not None else P.DEFAULT_RIDGE)
                if args.ls_regressors:
                    kw["ls_max_regressors"] = args.ls_regressors
            res = P.prune(plm, r_arg, of=args.of, method=method, stats=stats, compensation=s["comp"],
                          seed=args.seed, networks=nets, **kw)
            prune_s = time.perf_counter() - t0
            ev = evaluate(plm, sets, windows=args.windows, windows512=args.windows512)
            row = dict(method=s["name"], ratio=ratio, achieved=res.report["achieved_ratio"],
                       achieved_all=res.report["achieved_ratios"]["all"],
                       achieved_attn_mlp=res.report["achieved_ratios"]["attn+mlp"], threshold=T,
                       prune_seconds=prune_s, allocation=res.report["allocation"],
                       compensation=res.report["compensation"], ridge=res.report.get("ridge"),
                       widths=res.report["kept_neurons_per_layer"], **ev)
            rows.append(row)
            log(f"{ratio:.0%} {s['name']}: ppl128 {ev['ppl128_prose']:.2f}/{ev['ppl128_code']:.2f}/"
                f"{ev['ppl128_math']:.2f} acc {ev['accuracy']:.4f} achieved {row['achieved']:.4f}"
                f"{'' if T is None else f' T={T:.3f}'} ({prune_s:.0f}+{ev['eval_seconds']:.0f} s, load {load_avg()})")
            del m, plm, res
            _write(args, env, rows, [], partial=True)

    speed = []
    if args.speed != "none":
        sp = parse_method(args.speed)
        speed = speed_section(lm, args.model, stats, nets, method=sp["base"], ratios=args.speed_ratios,
                              of=args.of, reps=args.speed_reps, score=sp["score"])
    env["load_avg_end"] = load_avg()
    env["total_seconds"] = time.perf_counter() - t_start
    path = _write(args, env, rows, speed, partial=False)

    print(f"## {args.model}: pruning {', '.join(f'{r:.0%}' for r in sorted(args.ratios))} of {args.of} parameters "
          f"({args.eval_split} split)\n")
    print(f"MLP params {counts['mlp'] / 1e6:.2f}M, attn+MLP {counts['attn+mlp'] / 1e6:.2f}M, all "
          f"{counts['all'] / 1e6:.2f}M; of={args.of}: removing r of {args.of} = r x "
          f"{counts[args.of] / counts['all']:.3f} of all parameters\n")
    if rows:
        print(main_table(rows, args.of))
        print("\nppl@128, all domains together (x dense; bold: lowest at that ratio)\n")
        print(pivot_table(rows))
    if speed:
        print("\n### speed and memory (subprocess per model)\n")
        print(speed_table(speed))
    print(f"\nmachine: {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, load average "
          f"{env['load_avg_start']} -> {env['load_avg_end']}; total {env['total_seconds'] / 60:.1f} min; json {path}")
    return 0


def _write(args, env, rows, speed, partial):
    path = Path(args.json) if args.json else Path(__file__).parent / "results" / (
        f"prune_table-{Path(args.model).name}{'-quick' if args.quick else ''}"
        f"{'' if args.eval_split == 'eval' else '-' + args.eval_split}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"args": vars(args), "env": env, "rows": rows, "speed": speed, "partial": partial}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    sys.exit(main())
