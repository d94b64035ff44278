"""Pruning protocol: every method over several calibration draws (mean +- sd), on held-out and
out-of-domain text, with a transfer section and a calibration-size sweep (docs/pruning.md).

Sections (``--sections``, default all):

* ``main``: each of ``--draws`` calibration draws (disjoint sets of documents of the builtin *calib*
  split, shuffled so every draw mixes prose, code and math) gives its own statistics (with
  covariance) and its own functional networks; every method prunes a copy of the dense model at
  every ratio (of MLP parameters), plus ``--heads-ratio`` of attention+MLP with heads; each model
  is evaluated on the builtin *eval* split (prose, code, math) and on ``debian`` text (licences and
  package READMEs, which no part of funcnet was built or tuned on): perplexity and next-token
  accuracy per domain over ``--windows`` 128-token windows each (documents in a fixed shuffled
  order).
* ``transfer``: the same with calibration drawn from *prose only*, for ``--transfer-methods`` at
  ``--transfer-ratios``: code, math and debian are then all out of the calibration's domain.
* ``sweep``: calibration of 16 / 64 / 256 / 1024 sequences of 128 tokens (draw 0) for
  ``--sweep-methods`` at ``--sweep-ratio``.
* ``time``: end-to-end ``prune(calib=...)`` (layer by layer, statistics included) per
  ``--time-methods`` at 20%, the time a user waits.

Every row is written to the JSON as it finishes; a rerun with the same ``--json`` skips the rows
it holds (resume). ``--report FILE`` prints the tables of a results file.

    python benchmarks/prune_protocol.py --model smollm2-135m              # ~1.5 h on 2 idle cores
    python benchmarks/prune_protocol.py --model gemma3-270m --sections main --ratios 0.2 0.5
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from prune_table import load_avg, log, parse_method  # noqa: E402

import funcnet  # noqa: E402
from funcnet import prune as P  # noqa: E402
from funcnet.core._io import cache_dir  # noqa: E402
from funcnet.data.corpus import Corpus, Document, load_corpus, read_debian_text  # noqa: E402
from funcnet.errors import FuncnetError  # noqa: E402
from funcnet.evaluate import perplexity  # noqa: E402
from funcnet.networks import FunctionalNetworks  # noqa: E402

IN_DOMAINS = ("prose", "code", "math")
EVAL_DOMAINS = IN_DOMAINS + ("debian",)
METHODS = ("random", "random+ls", "magnitude", "magnitude+ls", "wanda-sp", "wanda-sp+ls", "flap", "flap+ls",
           "fn", "fn+ls", "fn:fn-cond+ls", "obs+ls", "fn-obs+ls")
TRANSFER_METHODS = ("wanda-sp", "flap", "wanda-sp+ls", "flap+ls", "fn+ls", "obs+ls", "fn-obs+ls")
SWEEP_METHODS = ("wanda-sp+ls", "obs+ls", "fn-obs+ls")
TIME_METHODS = ("flap+ls", "wanda-sp+ls", "obs+ls", "fn-obs+ls")


# ------------------------------------------------------------------------------------ text
def calib_draws(n: int, *, domain: str | None = None, seed: int = 1234):
    """``n`` disjoint sets of calib-split documents (one shuffled order dealt round-robin), each
    kept in that shuffled order so that its first tokens mix the domains."""
    c = load_corpus("builtin", split="calib", domain=domain)
    perm = np.random.default_rng(seed).permutation(len(c))
    return [c.subset(perm[d::n]) for d in range(n)]


def debian_corpus(sources: list[str] | None = None):
    """The 'debian' corpus, pinned to ``sources`` (the documents a run used) when given: it depends
    on the packages installed, so a resumed run reads the files it started with (dedup already done),
    and stops with one line when one of them is gone."""
    if not sources:
        return load_corpus("debian")
    docs = []
    for i, src in enumerate(sources):
        f = Path(src.removeprefix("debian:"))
        text = read_debian_text(f)
        if text is None:
            raise SystemExit(f"the pinned debian corpus needs {f}, which this machine lacks; run with a new --json")
        docs.append(Document(text, i, src, "debian"))
    return Corpus("debian", docs)


def eval_sets(seed: int = 0, info: dict | None = None, debian_sources: list[str] | None = None) -> dict:
    """The evaluation texts per domain (documents in a fixed shuffled order). ``info`` receives each
    corpus's document count, identity and (debian) sources: the 'debian' corpus depends on the
    packages installed, so runs are comparable on it only when its identity matches."""
    out = {}
    for d in EVAL_DOMAINS:
        c = debian_corpus(debian_sources) if d == "debian" else load_corpus("builtin", split="eval", domain=d)
        out[d] = [c.texts[i] for i in np.random.default_rng(seed).permutation(len(c))]
        if info is not None:
            info[d] = {"documents": len(c), "identity": c.identity[:16]}
            if d == "debian":
                info[d]["sources"] = [doc.source for doc in c.documents]
    return out


def evaluate(lm, sets, windows: int) -> dict:
    res, nll, tok, hit = {}, 0.0, 0, 0.0
    t0 = time.perf_counter()
    for d, texts in sets.items():
        r = perplexity(lm, texts, window=128, max_windows=windows, batch_size=8, progress=False)
        res[f"ppl_{d}"], res[f"acc_{d}"] = r.ppl, r.accuracy
        if d in IN_DOMAINS:
            nll, tok, hit = nll + r.nll * r.n_tokens, tok + r.n_tokens, hit + r.accuracy * r.n_tokens
    res["ppl_in"], res["acc_in"] = math.exp(nll / tok), hit / tok
    res["eval_seconds"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------------ pruning
def networks_for(lm, corpus, seed: int):
    key = f"{lm.identity[:16]}-{corpus.identity[:16]}-g4x16-k64-reference-s{seed}"
    path = cache_dir() / "prune_bench" / f"protocol-networks-{key}.safetensors"
    if path.exists():
        return FunctionalNetworks.load(path, model=lm)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    nets = P.networks_for_pruning(lm, corpus, n_groups=4, group_size=16, n_components=64, method="reference",
                                  seed=seed, progress=False)
    nets.save(path)
    log(f"networks: {nets.n_networks} maps in {time.perf_counter() - t0:.0f} s")
    return nets


def prune_copy(lm, spec: dict, ratio: float, *, of: str, heads: bool, stats, nets, seed: int, cache: dict):
    """Prune a deep copy of ``lm`` with the benchmark method ``spec``; returns (pruned lm, report)."""
    plm = type(lm)(model=copy.deepcopy(lm.model), tokenizer=lm.tokenizer, adapter=lm.adapter, spec=lm.spec,
                   source=lm.source)
    kw = {}
    if spec["base"] == "fn" and not heads:  # scores shared by every ratio of a draw
        key = (spec["score"], id(stats))
        if key not in cache:
            cache[key] = P.compute_importance("fn", lm, stats, networks=nets,
                                              **({"score": spec["score"]} if spec["score"] else {}))
        kw["importance"] = cache[key]
    elif spec["score"]:
        kw["score"] = spec["score"]
    if spec.get("allocation"):
        kw["allocation"] = spec["allocation"]
    if spec["comp"].startswith("ls") and "ridge" in spec:
        kw["ridge"] = spec["ridge"]
    res = P.prune(plm, ratio, of=of, method=spec["base"], stats=stats, compensation=spec["comp"], heads=heads,
                  seed=seed, networks=nets if spec["base"].startswith("fn") else None, **kw)
    return plm, res.report


# ------------------------------------------------------------------------------------ results
def row_key(r) -> tuple:
    return (r["section"], r["method"], r["ratio"], r["heads"], r["draw"], r.get("calib_seqs"))


def mean_sd(vals):
    v = np.asarray([x for x in vals if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def cell(m, s, n, nd=2):
    if not np.isfinite(m):
        return "-"
    f = (lambda x: f"{x:.3g}" if x >= 1e4 else f"{x:.{nd}f}")
    return f"{f(m)} ± {f(s)}" if n > 1 else f(m)


def groups(rows, section):
    out = {}
    for r in rows:
        if r["section"] == section:
            out.setdefault((r["method"], r["ratio"], r["heads"], r.get("calib_seqs")), []).append(r)
    return out


def ratio_table(rows, section, metric, *, lower=True, nd=2) -> str:
    g = groups(rows, section)
    settings = sorted({(k[1], k[2]) for k in g if k[0] != "dense"})
    methods = list(dict.fromkeys(k[0] for k in g if k[0] != "dense"))
    name = lambda s: f"{s[0]:.0%}" + (" +heads" if s[1] else "")  # noqa: E731
    lines = ["| method | " + " | ".join(name(s) for s in settings) + " |", "|---|" + "---|" * len(settings)]
    dense = [r for k, v in g.items() if k[0] == "dense" for r in v]
    if dense:
        m, s, n = mean_sd([r[metric] for r in dense])
        lines.append("| dense | " + " | ".join(cell(m, s, 1, nd) for _ in settings) + " |")
    best = {}
    for st in settings:
        vals = [(mean_sd([r[metric] for r in g[(mm, st[0], st[1], None)]])[0], mm) for mm in methods
                if (mm, st[0], st[1], None) in g]
        vals = [v for v in vals if np.isfinite(v[0])]
        if vals:
            best[st] = (min if lower else max)(vals)[1]
    for mm in methods:
        cells = []
        for st in settings:
            v = g.get((mm, st[0], st[1], None))
            if not v:
                cells.append("n/a")
                continue
            c = cell(*mean_sd([r[metric] for r in v]), nd)
            cells.append(f"**{c}**" if best.get(st) == mm else c)
        lines.append(f"| {mm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def domain_table(rows, section, ratio, heads=False) -> str:
    g = groups(rows, section)
    dense = [r for r in rows if r["method"] == "dense"]
    if dense:
        g[("dense", 0.0, False, None)] = dense
    methods = list(dict.fromkeys((["dense"] if dense else []) + [k[0] for k in g if k[1] == ratio and k[2] == heads]))
    head = [f"ppl {d}" for d in EVAL_DOMAINS] + [f"acc {d}" for d in EVAL_DOMAINS]
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for mm in methods:
        v = g.get((mm, 0.0, False, None)) if mm == "dense" else g.get((mm, ratio, heads, None))
        if not v:
            continue
        cells = [cell(*mean_sd([r[f"ppl_{d}"] for r in v])) for d in EVAL_DOMAINS]
        cells += [cell(*mean_sd([r[f"acc_{d}"] for r in v]), nd=4) for d in EVAL_DOMAINS]
        lines.append(f"| {mm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(rows) -> str:
    g = groups(rows, "sweep")
    sizes = sorted({k[3] for k in g})
    methods = list(dict.fromkeys(k[0] for k in g))
    lines = ["| method | " + " | ".join(f"{s} seqs: in-domain / debian" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for mm in methods:
        cells = []
        for s in sizes:
            v = [r for k, rr in g.items() if k[0] == mm and k[3] == s for r in rr]
            cells.append(f"{v[0]['ppl_in']:.2f} / {v[0]['ppl_debian']:.2f}" if v else "-")
        lines.append(f"| {mm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows, section="main") -> str:
    """Per setting: the lowest mean in-domain perplexity, its margin over the runner-up and the
    largest sd of the two (the 'wins by more than the spread' test)."""
    g = groups(rows, section)
    out = []
    for st in sorted({(k[1], k[2]) for k in g if k[0] != "dense"}):
        vals = sorted((mean_sd([r["ppl_in"] for r in v]) + (k[0],)) for k, v in g.items()
                      if (k[1], k[2]) == st and k[0] != "dense")
        if len(vals) < 2:
            continue
        (m1, s1, _, a), (m2, s2, _, b) = vals[0], vals[1]
        ok = "yes" if m2 - m1 > max(s1, s2) else "no"
        out.append(f"| {st[0]:.0%}{' +heads' if st[1] else ''} | {a} {m1:.2f} | {b} {m2:.2f} | {m2 - m1:.2f} | "
                   f"{max(s1, s2):.2f} | {ok} |")
    return "\n".join(["| setting | lowest | runner-up | margin | larger sd | wins by more than the spread |",
                      "|---|---|---|---|---|---|"] + out)


def rank_table(rows, section="main") -> str:
    """Mean rank of each method over the MLP-only ratios, per metric (1 = best): in-domain perplexity,
    Debian perplexity, in-domain accuracy; the methods present at every ratio only."""
    g = groups(rows, section)
    ratios = sorted({k[1] for k in g if k[0] != "dense" and not k[2]})
    methods = [m for m in dict.fromkeys(k[0] for k in g if k[0] != "dense")
               if all((m, r, False, None) in g for r in ratios)]
    lines = ["| method | in-domain ppl | Debian ppl | accuracy | all three |", "|---|---|---|---|---|"]
    ranks = {m: [] for m in methods}
    for metric, lower in (("ppl_in", True), ("ppl_debian", True), ("acc_in", False)):
        per = {m: [] for m in methods}
        for r in ratios:
            vals = {m: mean_sd([x[metric] for x in g[(m, r, False, None)]])[0] for m in methods}
            order = sorted(methods, key=lambda m: vals[m] if lower else -vals[m])
            for k, m in enumerate(order):
                per[m].append(k + 1)
        for m in methods:
            ranks[m].append(float(np.mean(per[m])))
    for m in sorted(methods, key=lambda m: np.mean(ranks[m])):
        lines.append(f"| {m} | " + " | ".join(f"{x:.1f}" for x in ranks[m]) + f" | {np.mean(ranks[m]):.1f} |")
    return "\n".join(lines)


def report(data) -> str:
    rows = data["rows"]
    a, e = data["args"], data["env"]
    parts = [f"## {a['model']}: {a['draws']} calibration draws of {a['calib_tokens']} tokens, eval "
             f"{a['windows']} x 128 tokens per domain\n"]
    if any(r["section"] == "main" for r in rows):
        parts += ["### perplexity, builtin eval split (prose+code+math tokens together), mean ± sd over draws\n",
                  ratio_table(rows, "main", "ppl_in"),
                  "\n### perplexity on Debian licences and READMEs (never seen by funcnet)\n",
                  ratio_table(rows, "main", "ppl_debian"),
                  "\n### next-token accuracy, builtin eval split\n",
                  ratio_table(rows, "main", "acc_in", lower=False, nd=4),
                  "\n### lowest method per setting\n", verdict(rows),
                  "\n### mean rank over the ratios (MLP only; 1 = best)\n", rank_table(rows)]
        for ratio, heads in sorted({(r["ratio"], r["heads"]) for r in rows if r["section"] == "main" and r["ratio"]}):
            parts += [f"\n### per domain at {ratio:.0%}{' with heads' if heads else ''}\n",
                      domain_table(rows, "main", ratio, heads)]
    if any(r["section"] == "transfer" for r in rows):
        for ratio in sorted({r["ratio"] for r in rows if r["section"] == "transfer" and r["ratio"]}):
            parts += [f"\n### transfer: calibrated on prose only, {ratio:.0%}\n", domain_table(rows, "transfer", ratio)]
    if any(r["section"] == "sweep" for r in rows):
        parts += [f"\n### calibration size (draw 0, {a['sweep_ratio']:.0%}): ppl in-domain / debian\n", sweep_table(rows)]
    if any(r["section"] == "time" for r in rows):
        parts += ["\n### end-to-end prune(calib=...) at 20%, layer by layer, statistics included\n",
                  "| method | seconds | calibration passes | x first |", "|---|---|---|---|"]
        t = [r for r in rows if r["section"] == "time"]
        for r in t:
            parts.append(f"| {r['method']} | {r['prune_seconds']:.1f} | {r['passes']} | "
                         f"{r['prune_seconds'] / t[0]['prune_seconds']:.2f} |")
    parts.append(f"\n{e['date']}, {e['host']}, {e['cpu_count']} CPUs, torch threads {e['torch_threads']}, load "
                 f"{e['load_avg_start']} -> {e.get('load_avg_end', '?')}; command: {e['command']}")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sections", nargs="+", default=["main", "transfer", "sweep", "time"],
                    choices=["main", "transfer", "sweep", "time"])
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--heads-ratio", type=float, default=0.2, help="ratio of attn+mlp with heads (0: skip)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--transfer-methods", nargs="+", default=list(TRANSFER_METHODS))
    ap.add_argument("--transfer-ratios", type=float, nargs="+", default=[0.2, 0.5])
    ap.add_argument("--sweep-methods", nargs="+", default=list(SWEEP_METHODS))
    ap.add_argument("--sweep-sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    ap.add_argument("--sweep-ratio", type=float, default=0.2)
    ap.add_argument("--time-methods", nargs="+", default=list(TIME_METHODS))
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--windows", type=int, default=8, help="128-token windows per eval domain")
    ap.add_argument("--json", default=None)
    ap.add_argument("--debian-sources", default=None, metavar="TXT",
                    help="pin the debian corpus to these document sources (one per line); a resumed --json "
                         "pins the ones it recorded")
    ap.add_argument("--report", default=None, metavar="JSON")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    path = Path(args.json or Path(__file__).parent / "results" / f"prune_protocol-{Path(args.model).name}.json")
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = old.get("rows", [])
    done = {row_key(r) for r in rows}
    env = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "load_avg_start": load_avg(), "command": " ".join(sys.argv)}
    old_env = dict(old.get("env", {}))
    if old_env:  # a resumed run keeps the earlier runs' environments and their debian documents
        env["earlier_runs"] = old_env.pop("earlier_runs", []) + [
            {k: v for k, v in old_env.items() if k != "eval_corpora"}]
    pinned = old_env.get("eval_corpora", {}).get("debian", {}).get("sources")
    if args.debian_sources:
        pinned = Path(args.debian_sources).read_text().split()

    def write(partial=True):
        data = {"args": vars(args), "env": env, "rows": rows, "partial": partial}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=float))
        os.replace(tmp, path)
        return data

    lm = funcnet.load_model(args.model)
    env["eval_corpora"] = {}
    sets = eval_sets(info=env["eval_corpora"], debian_sources=pinned)
    cov_layers = range(3, lm.n_layers - 2)  # the default protection (3 first, 2 last layers)

    def run(section, draw, corpus_draw, methods, ratios, *, heads_ratio=0.0, calib_tokens=None, calib_seqs=None):
        todo = [(m, r, False) for r in ratios for m in methods] + \
               ([(m, heads_ratio, True) for m in methods] if heads_ratio else [])
        todo = [t for t in todo if (section, t[0], t[1], t[2], draw, calib_seqs) not in done]
        if section == "main" and ("main", "dense", 0.0, False, 0, None) not in done and draw == 0:
            rows.append(dict(section="main", method="dense", ratio=0.0, heads=False, draw=0, **evaluate(lm, sets, args.windows)))
            done.add(row_key(rows[-1]))
            write()
        if not todo:
            return
        t0 = time.perf_counter()
        stats = P.calibration_stats(lm, corpus_draw, calib_tokens=calib_tokens or args.calib_tokens, max_length=128,
                                    covariance=True, covariance_layers=cov_layers, heads=bool(heads_ratio))
        log(f"{section} draw {draw}: statistics of {stats.n_tokens} tokens in {time.perf_counter() - t0:.0f} s")
        nets = networks_for(lm, corpus_draw, seed=draw) if any(m.startswith("fn") for m, _, _ in todo) else None
        cache: dict = {}
        for m, ratio, heads in todo:
            spec = parse_method(m)
            t0 = time.perf_counter()
            try:
                plm, rep = prune_copy(lm, spec, ratio, of="attn+mlp" if heads else "mlp", heads=heads, stats=stats,
                                      nets=nets, seed=draw, cache=cache)
            except FuncnetError as e:
                log(f"{section} {m} {ratio:.0%}{' heads' if heads else ''}: skipped ({e})")
                continue
            dt = time.perf_counter() - t0
            ev = evaluate(plm, sets, args.windows)
            rows.append(dict(section=section, method=m, ratio=ratio, heads=heads, draw=draw, calib_seqs=calib_seqs,
                             calib_tokens=stats.n_tokens, achieved=rep["achieved_ratio"], prune_seconds=dt, **ev))
            done.add(row_key(rows[-1]))
            log(f"{section} d{draw} {ratio:.0%}{' heads' if heads else ''} {m}: ppl in {ev['ppl_in']:.2f} debian "
                f"{ev['ppl_debian']:.2f} acc {ev['acc_in']:.4f} ({dt:.0f}+{ev['eval_seconds']:.0f} s, load {load_avg()})")
            write()
            del plm

    if "main" in args.sections:
        for d, c in enumerate(calib_draws(args.draws)):
            run("main", d, c, args.methods, args.ratios, heads_ratio=args.heads_ratio)
    if "transfer" in args.sections:
        for d, c in enumerate(calib_draws(args.draws, domain="prose")):
            run("transfer", d, c, args.transfer_methods, args.transfer_ratios)
    if "sweep" in args.sections:
        c = calib_draws(args.draws)[0]
        for s in args.sweep_sizes:
            run("sweep", 0, c, args.sweep_methods, [args.sweep_ratio], calib_tokens=128 * s, calib_seqs=s)
    if "time" in args.sections:
        c = calib_draws(args.draws)[0]
        for m in args.time_methods:
            if ("time", m, 0.2, False, 0, None) in done:
                continue
            spec = parse_method(m)
            plm = type(lm)(model=copy.deepcopy(lm.model), tokenizer=lm.tokenizer, adapter=lm.adapter, spec=lm.spec,
                           source=lm.source)
            t0 = time.perf_counter()
            res = P.prune(plm, 0.2, method=spec["base"], calib=c, calib_tokens=args.calib_tokens,
                          compensation=spec["comp"], seed=0)
            dt = time.perf_counter() - t0
            rows.append(dict(section="time", method=m, ratio=0.2, heads=False, draw=0, prune_seconds=dt,
                             passes=res.report["calibration_passes"], load=load_avg()))
            done.add(row_key(rows[-1]))
            log(f"time {m}: {dt:.0f} s, {res.report['calibration_passes']} passes")
            write()
            del plm, res
    env["load_avg_end"] = load_avg()
    print(report(write(partial=False)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
