"""``funcnet demo``: the whole exploration on the bundled default model and built-in corpus, at a
size that finishes in about 10 minutes on 2 CPU cores, then the HTML report."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from funcnet.cli._common import StagePrinter, add_model_argument, model_or_spec
from funcnet.cli._lazy import lazy_module

pipeline = lazy_module("funcnet.explore")
report = lazy_module("funcnet.report")


def _cmd_demo(args) -> int:
    t0 = time.time()
    print(f"funcnet demo: {args.size} size on {args.model}; the report will be {Path(args.out) / 'report.html'}",
          file=sys.stderr, flush=True)
    stages = StagePrinter()
    out = pipeline.explore(model_or_spec(args), args.out, size=args.size, seed=args.seed, on_stage=stages, extra_stages=1)
    stages.next("HTML report")
    page = report.write_report(out)
    print(f"demo finished in {time.time() - t0:.0f} s: results in {out}, report {page}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="run the exploration on the default model and built-in corpus, write the report")
    add_model_argument(p)
    p.add_argument("--out", default="funcnet-demo")
    p.add_argument("--size", default="demo", choices=["demo", "full"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
