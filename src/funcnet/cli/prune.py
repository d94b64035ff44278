"""`funcnet prune`."""
from __future__ import annotations

from pathlib import Path

from funcnet._defaults import (ALLOCATIONS, BUILTIN_PRUNING_METHODS, CLI_MULTIPLE_OF, COMPENSATIONS, DEFAULT_HEADS_METHOD,
                               DEFAULT_METHOD,
                               DEFAULT_COMPENSATION, DEFAULT_MAX_COVARIANCE_BYTES, DEFAULT_RIDGE, DENOMINATORS,
                               SAVE_FORMATS)
from funcnet.cli._common import add_model_argument, check_out, check_positive, load
from funcnet.cli._lazy import lazy_module
from funcnet.errors import FuncnetError

core = lazy_module("funcnet.core")
P = lazy_module("funcnet.prune")


# =============================================================================================
# 7. CLI
# =============================================================================================
def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def summary_lines(report: dict) -> list[str]:
    b, a = report["params_before"], report["params_after"]
    widths = report["kept_neurons_per_layer"]
    rows = [("method", f"{report['method']} ({report['allocation']} allocation)"),
            ("target ratio", f"{report['ratio']} of {report['denominator']} parameters"
             if report["ratio"] is not None else "threshold rule"),
            ("achieved ratio", f"{report['achieved_ratio']:.4f} of {report['denominator']}")]
    for k in DENOMINATORS[::-1]:
        rows.append((f"params {k}", f"{_fmt(b[k])} -> {_fmt(a[k])}  (-{(b[k] - a[k]) / b[k]:.2%})"))
    rows.append(("MLP widths", f"{min(widths)}..{max(widths)}"))
    hp = report.get("kept_heads_per_layer") or []
    if hp:
        rows.append(("heads per layer", f"{min(hp)}..{max(hp)}"))
    rows.append(("compensation", report.get("compensation") or ("bias" if report["bias_compensation"] else "none")))
    rows.append(("protected layers", ",".join(map(str, report["protected_layers"])) or "none"))
    w = max(len(k) for k, _ in rows)
    return [f"{k:<{w}}  {v}" for k, v in rows]


def _format_line(fmt: str, why: str | None) -> str:
    """Which folder format ``save_pruned(format=fmt)`` wrote and why."""
    if fmt == "funcnet":
        return ("funcnet format, as asked; " + ("--format auto would write a native folder" if why is None else
                                                 f"a native folder is not possible: {why}"))
    return ("native folder: every layer has the same shapes, loads with plain from_pretrained" if why is None
            else f"funcnet format: {why}")


def _cmd_prune(args) -> int:

    # every argument and --out are checked before the model loads and before any pruning work
    if args.method is None:
        args.method = DEFAULT_HEADS_METHOD if args.heads else DEFAULT_METHOD
    if not (0.0 < args.ratio < 1.0) and args.method != "fn-threshold":
        raise FuncnetError(f"--ratio must be in (0, 1), got {args.ratio}")
    check_positive(args, "batch_size", "calib_tokens", "groups", "group_size", "n_components", "multiple_of")
    if args.ridge < 0 or args.max_covariance_gb <= 0:
        raise FuncnetError(f"--ridge must be >= 0 and --max-covariance-gb > 0, got {args.ridge} and "
                           f"{args.max_covariance_gb}")
    if args.networks and not Path(args.networks).is_file():
        raise FuncnetError(f"networks file not found: {args.networks}")
    out = check_out(args)
    lm = load(args)
    kw = {}
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    if args.method in ("fn", "fn-threshold") and not args.networks:
        kw.update(n_groups=args.groups, group_size=args.group_size, n_components=args.n_components)
    res = P.prune(
        lm, args.ratio, of=args.of, method=args.method, calib=args.calib, calib_tokens=args.calib_tokens,
        batch_size=args.batch_size, heads=args.heads, bias_compensation=not args.no_bias_compensation,
        compensation="none" if args.no_bias_compensation else args.compensation, ridge=args.ridge,
        max_covariance_bytes=int(args.max_covariance_gb * 2**30),
        allocation=args.allocation, protect=args.protect, seed=args.seed, networks=args.networks,
        multiple_of=args.multiple_of, layerwise=not args.no_layerwise, solve_dtype=args.solve_dtype, **kw,
    )
    core.pruned.save_pruned(res.lm, lm.tokenizer, out, res.report, overwrite=args.overwrite, format=args.format)
    for line in summary_lines(res.report):
        print(line)
    print(f"saved to {args.out} ({_format_line(args.format, core.pruned.native_reason(res.lm))})")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("prune", help="prune MLP neurons (and heads) to an exact size and save a smaller model")
    add_model_argument(p)
    p.add_argument("--ratio", type=float, default=0.2, help="fraction of parameters to remove (0 < r < 1)")
    p.add_argument("--of", choices=DENOMINATORS, default="mlp", help="denominator of the ratio")
    p.add_argument("--method", choices=list(BUILTIN_PRUNING_METHODS), default=None,
                   help=f"scoring method (default {DEFAULT_METHOD}; with --heads {DEFAULT_HEADS_METHOD}: "
                        "docs/pruning.md, 'The protocol')")
    p.add_argument("--heads", action="store_true", help="also prune attention heads (whole key/value groups)")
    p.add_argument("--compensation", choices=COMPENSATIONS, default=None,
                   help=f"how removed neurons are compensated (default {DEFAULT_COMPENSATION}): none, bias (FLAP's "
                        "mean), ls (least-squares reconstruction from all kept neurons), ls-fn (from kept "
                        "members of the neuron's functional networks)")
    p.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help="ridge of ls / ls-fn, relative to variances")
    p.add_argument("--no-layerwise", action="store_true",
                   help="least squares the earlier way: every pruned layer's float64 covariance on the host, in chunks "
                        "of --max-covariance-gb, one calibration pass per chunk (default: layer by layer, one or two "
                        "passes)")
    p.add_argument("--solve-dtype", choices=["float32", "float64"], default="float32",
                   help="precision of the layer-by-layer least-squares solves (default float32)")
    p.add_argument("--max-covariance-gb", type=float, default=DEFAULT_MAX_COVARIANCE_BYTES / 2**30,
                   help="ls / ls-fn: memory for covariance statistics; above it layers are done in chunks")
    p.add_argument("--no-bias-compensation", action="store_true", help="= --compensation none")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="global ranking (adaptive widths) or uniform per layer (default: the method's own)")
    p.add_argument("--protect", default="3,2", help="FIRST,LAST layers kept whole (default 3,2)")
    p.add_argument("--calib", default="builtin", help="calibration corpus spec")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--networks", default=None, help="functional networks file (methods fn, fn-threshold)")
    p.add_argument("--threshold", type=float, default=None, help="z threshold T for fn-threshold")
    p.add_argument("--groups", type=int, default=4, help="fn without --networks: groups of calibration texts")
    p.add_argument("--group-size", type=int, default=16, help="fn without --networks: texts per group")
    p.add_argument("-k", "--n-components", type=int, default=64, help="fn without --networks: maps per layer")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--multiple-of", type=int, default=CLI_MULTIPLE_OF,
                   help="round every pruned layer's MLP width to a multiple of this (default 32, what llama.cpp's "
                        "quantized blocks need; 1 = exact widths)")
    p.add_argument("--format", choices=SAVE_FORMATS, default="funcnet",
                   help="funcnet (default): per-layer shapes, loads with funcnet; auto: a native folder of the base "
                        "architecture when every layer has the same shapes (plain from_pretrained), else funcnet; "
                        "native: that or an error")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_prune)
