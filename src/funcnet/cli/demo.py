"""``funcnet demo``: the whole exploration on the bundled default model and built-in corpus, at a
size that finishes in about 10 minutes on 2 CPU cores, then the HTML report."""
from __future__ import annotations

import time
from funcnet.cli._common import add_model_argument, model_or_spec
from funcnet.explore import explore
from funcnet.report.html import write_report


def _cmd_demo(args) -> int:

    t0 = time.time()
    out = explore(model_or_spec(args), args.out, size=args.size, seed=args.seed)
    report = write_report(out)
    print(f"demo finished in {time.time() - t0:.0f} s: results in {out}, report {report}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="run the exploration on the default model and built-in corpus, write the report")
    add_model_argument(p)
    p.add_argument("--out", default="funcnet-demo")
    p.add_argument("--size", default="demo", choices=["demo", "full"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
