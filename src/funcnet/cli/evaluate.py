"""`funcnet eval`."""
from __future__ import annotations

import argparse
import json
from typing import Any, Mapping

from funcnet.cli._common import add_model_argument, check_positive, load
from funcnet._defaults import DEFAULT_MODEL
from funcnet.errors import FuncnetError
from funcnet.cli._lazy import lazy_module

core = lazy_module("funcnet.core")
ev = lazy_module("funcnet.evaluate")


def _format_table(results: Mapping[str, ev.EvalResult]) -> str:
    rows = [("domain", "ppl", "acc", "tokens", "windows", "tok/s")]
    for name, r in results.items():
        rows.append((name, f"{r.ppl:.3f}", f"{r.accuracy:.4f}", str(r.n_tokens), str(r.n_windows),
                     f"{r.tokens_per_s:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(lines)


def _cmd_eval(args) -> int:

    lm = load(args)
    results: dict[str, Any] = {}
    out: dict[str, Any] = {"model": args.model, "identity": lm.identity, "corpus": args.corpus,
                           "window": args.window, "stride": args.stride, "max_windows": args.max_windows}
    if args.corpus != "none":
        domains = ev._corpus_domains(args.corpus, args.domain)
        window = args.window if args.window != "context" else "context"
        results = ev.evaluate_domains(lm, None, domains, window=window, max_windows=args.max_windows,
                                   batch_size=args.batch_size, stride=args.stride,
                                   progress=not args.quiet)
        print(_format_table(results))
        out["domains"] = {k: v.to_dict() for k, v in results.items()}
    if args.tasks:
        res = ev.lm_eval_tasks(lm, None, args.tasks, limit=args.limit, batch_size=args.batch_size,
                            include_path=args.include_path)
        out["lm_eval"] = res.get("results", {})
        for task, metrics in out["lm_eval"].items():
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"{task}: {shown}")
    if args.json:
        core._io.write_json(args.json, json.loads(json.dumps(out, default=str)))
    return 0


def _window_arg(s: str):
    if s in ("context", "max"):
        return "context"
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--window must be an integer or 'context', got '{s}'") from None
    return v


def register_cli(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="perplexity and next-token accuracy per corpus domain (and lm-eval tasks)",
        description="Token perplexity over non-overlapping windows (documents joined with blank lines, "
        "tokenized once) and next-token top-1 accuracy, per domain of the corpus's evaluation split.",
    )
    add_model_argument(p, default=None)
    p.add_argument("--corpus", default="builtin", help="corpus spec (default builtin; 'none' to skip)")
    p.add_argument("--domain", default=None, help="evaluate only this domain")
    p.add_argument("--window", type=_window_arg, default=128, help="window length in tokens, or 'context' (default 128)")
    p.add_argument("--stride", type=int, default=None, help="window stride (default: window, non-overlapping)")
    p.add_argument("--max-windows", type=int, default=None, help="evaluate at most N windows per domain")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks (needs pip install lm-eval)")
    p.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task")
    p.add_argument("--include-path", default=None, help="lm-eval: folder of extra task YAML files")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_handle_eval)


def _handle_eval(args) -> int:
    # arguments and the --json path before the model loads
    check_positive(args, "batch_size", "max_windows", "stride")
    if isinstance(args.window, int) and args.window < 2:
        raise FuncnetError(f"--window must be at least 2 tokens (or 'context'), got {args.window}")
    if args.limit is not None and args.limit <= 0:
        raise FuncnetError(f"--limit must be positive, got {args.limit}")
    if args.json:
        core._io.check_output(args.json, overwrite=True, is_dir=False, what="--json file")
    if args.model is None:

        args.model = DEFAULT_MODEL
    if args.limit is not None and args.limit >= 1:
        args.limit = int(args.limit)
    return _cmd_eval(args)
