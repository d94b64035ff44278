"""`funcnet lesion`, `preserve`, `amplify`, `recurrence` and `explore`."""
from __future__ import annotations

from pathlib import Path

from funcnet.cli._common import StagePrinter, add_model_argument, load, model_or_spec
from funcnet._defaults import DOMAINS, EXPLORE_SIZES
from funcnet.cli._lazy import lazy_module

experiments = lazy_module("funcnet.experiments")
pipeline = lazy_module("funcnet.explore")
networks = lazy_module("funcnet.networks")
report = lazy_module("funcnet.report")


# ---------------------------------------------------------------------------- CLI
def _common(p, nets_required=True):
    add_model_argument(p)
    p.add_argument("--corpus", default="builtin", help="corpus for evaluation texts (eval split, per domain)")
    p.add_argument("--domains", default=",".join(DOMAINS))
    if nets_required:
        p.add_argument("--networks", required=True, help="networks file from `funcnet networks`")
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--max-windows", type=int, default=8, help="128-token windows per domain")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="results folder (JSON + figures)")


def _load(args, nets=True):

    lm = load(args)
    texts = experiments.eval_domains([d for d in args.domains.split(",") if d], args.corpus)
    n = networks.FunctionalNetworks.load(args.networks, model=lm) if nets else None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return lm, texts, n


def _ppl_str(v: float, width: int = 0) -> str:
    """A perplexity for the terminal: 2 decimals, or 3 significant digits past 1e5 (a destroyed
    model's 3e12 rather than 3042992632186.10)."""
    v = float(v)
    return f"{v:>{width}.2f}" if abs(v) < 1e5 else f"{v:>{width}.3g}"


def _print_lesion(res: experiments.schema.LesionResult):
    d0 = res.domains[0]
    print(f"baseline ppl ({d0}) {_ppl_str(res.baseline[d0]['ppl'])}")
    print(f"{'condition':>10} {'neurons':>8} {'%':>6} {'lesioned ppl':>13} {'random ppl (mean±sd)':>22}")
    for r in res.conditions:
        rr = r["random"][d0]
        print(f"{r['name']:>10} {r['n_neurons']:>8} {100 * r['fraction']:>6.2f} "
              f"{_ppl_str(r['lesioned'][d0]['ppl'], 13)} {_ppl_str(rr['ppl_mean'], 12)} ± {_ppl_str(rr['ppl_std'])}")
    rf = res.random_fraction
    print(f"random {100 * rf['fraction']:.0f}% of neurons: ppl {_ppl_str(rf['result'][d0]['ppl_mean'])} ± "
          f"{_ppl_str(rf['result'][d0]['ppl_std'])}")


def _cmd_lesion(args):

    lm, texts, nets = _load(args)
    res = experiments.lesion_experiment(lm, nets, texts, top=args.top, n_random=args.n_random, seed=args.seed,
                            threshold=args.threshold, max_windows=args.max_windows)
    experiments.schema.write_result(args.out, res)
    report.make_figures(args.out)
    _print_lesion(res)
    return 0


def _cmd_preserve(args):

    lm, texts, _ = _load(args, nets=False)
    store = networks.ensure_store(lm, args.corpus, store=args.store, signals=["neurons"], max_tokens=args.max_tokens)
    res = experiments.preservation_experiment(lm, store, texts, ks=[int(k) for k in args.ks.split(",")], n_init=args.n_init,
                                  n_random=args.n_random, seed=args.seed, threshold=args.threshold,
                                  max_windows=args.max_windows)
    experiments.schema.write_result(args.out, res)
    report.make_figures(args.out)
    d0 = res.domains[0]
    print(f"dense ppl ({d0}) {_ppl_str(res.baseline[d0]['ppl'])}")
    print(f"{'k':>5} {'kept %':>7} {'ppl kept':>9} {'ppl random':>11}")
    for r in res.rows:
        if r["preserved"] is None:
            print(f"{r['k']:>5} {'0':>7} {'-':>9} {'-':>11}")
            continue
        print(f"{r['k']:>5} {100 * r['fraction']:>7.2f} {_ppl_str(r['preserved'][d0]['ppl'], 9)} "
              f"{_ppl_str(r['random'][d0]['ppl_mean'], 11)}")
    return 0


def _cmd_amplify(args):

    lm, texts, nets = _load(args)
    nets_ids = [int(x) for x in args.ids.split(",")] if args.ids else None
    res = experiments.amplification_experiment(lm, nets, texts, networks=nets_ids, top=args.top,
                                   factors=[float(x) for x in args.factors.split(",")], how=args.how,
                                   threshold=args.threshold, max_windows=args.max_windows)
    experiments.schema.write_result(args.out, res)
    report.make_figures(args.out)
    _print_amplify_best(res)
    return 0


def _print_amplify_best(res: experiments.schema.AmplificationResult):
    """Per domain, the best setting, or "none better than dense" when no setting beats the unmodified
    model (also when the identity factor is not on the grid and every setting is worse)."""
    for d, b in res.best.items():
        better = b.get("better_than_dense", b["ppl"] < b["baseline_ppl"])
        if better:
            print(f"{d}: best network {b['network']} at {res.how} {b['value']}: ppl {_ppl_str(b['ppl'])} "
                  f"(dense {_ppl_str(b['baseline_ppl'])})")
        else:
            print(f"{d}: none better than dense (ppl {_ppl_str(b['baseline_ppl'])}; closest: network "
                  f"{b['network']} at {res.how} {b['value']}: ppl {_ppl_str(b['ppl'])})")


def _cmd_recurrence(args):

    lm = load(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    res = experiments.recurrence_experiment(lm, domains=[d for d in args.domains.split(",") if d], corpus=args.corpus,
                                n_template=args.n_template, n_individual=args.n_individual, k_template=args.k,
                                k_individual=args.k, threshold=args.threshold, seed=args.seed,
                                workdir=Path(args.out) / "recurrence-stores")
    experiments.schema.write_result(args.out, res)
    report.make_figures(args.out)
    doms = res.domains
    print(f"{'template':>12} " + " ".join(f"{d:>8}" for d in doms) + "   (individual networks with IoU > "
          f"{res.iou_threshold})")
    for r in res.table:
        print(f"{r['template']:>12} " + " ".join(f"{r['counts'][d]:>3}/{r['totals'][d]:<4}" for d in doms))
    return 0


def _cmd_explore(args):
    stages = StagePrinter()
    out = pipeline.explore(model_or_spec(args), args.out, size=args.size, corpus=args.corpus, seed=args.seed,
                  threshold=args.threshold, on_stage=stages, extra_stages=1)
    stages.next("HTML report")

    print(f"results in {out}; report: {report.write_report(out)}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("lesion", help="inhibit networks vs random neuron sets of the same size")
    _common(p)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--n-random", type=int, default=5)
    p.set_defaults(func=_cmd_lesion)

    p = sub.add_parser("preserve", help="keep only the networks' neurons, for several k")
    _common(p, nets_required=False)
    p.add_argument("--ks", default="10,32,64,128,256")
    p.add_argument("--store", default=None)
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--n-init", type=int, default=4)
    p.add_argument("--n-random", type=int, default=3)
    p.set_defaults(func=_cmd_preserve)

    p = sub.add_parser("amplify", help="scale or shift network neurons over a grid of values")
    _common(p)
    p.add_argument("--ids", default=None, help="comma list of network ids (default: the most stable)")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--factors", default="0,0.5,1,1.5,2,3")
    p.add_argument("--how", default="scale", choices=["scale", "add"])
    p.set_defaults(func=_cmd_amplify)

    p = sub.add_parser("recurrence", help="template vs individual networks: IoU recurrence table")
    add_model_argument(p)
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--domains", default=",".join(DOMAINS))
    p.add_argument("--n-template", type=int, default=40)
    p.add_argument("--n-individual", type=int, default=20)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_recurrence)

    p = sub.add_parser("explore", help="the whole exploration (networks, anatomy, lesion, preserve, amplify, "
                                       "recurrence) + HTML report")
    add_model_argument(p)
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--size", default="demo", choices=list(EXPLORE_SIZES))
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="funcnet-results")
    p.set_defaults(func=_cmd_explore)
