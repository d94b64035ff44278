"""`funcnet fingerprint profile` and `funcnet fingerprint compare`."""
from __future__ import annotations

from pathlib import Path

from funcnet.cli._common import add_model_argument, model_or_spec
from funcnet._defaults import FINGERPRINT_ALPHA as ALPHA, FINGERPRINT_SIGNALS as SIGNAL_CHOICES
from funcnet.cli._lazy import lazy_module

fp = lazy_module("funcnet.fingerprint")


# =============================================================================== CLI
def _cmd_profile(args) -> int:
    probes = fp.read_probes(args.probes) if args.probes else None
    prof = fp.profile(model_or_spec(args), probes, signals=args.signals, n_components=args.n_components,
                   n_seeds=args.n_seeds, threshold=args.threshold, max_length=args.max_length, seed=args.seed)
    prof.save(args.out)
    size = Path(args.out).stat().st_size
    print(f"profile of {prof.model['spec']}: {len(prof.probes)} probes, {prof.meta['n_tokens']} tokens, "
          f"{prof.n_seeds} seeds x {prof.n_networks} networks ({prof.params['signals']}, {prof.model['n_units']} units) "
          f"-> {args.out} ({size / 1024:.0f} KiB, {prof.meta['timing_s']['total']:.1f} s)")
    return 0


def _cmd_compare(args) -> int:
    res = fp.compare(args.profile, model_or_spec(args), n_null=args.n_null, alpha=args.alpha)
    if args.json:
        res.to_json(args.json)
    if args.plot:
        fp.plot_matched(res, args.plot)
    print(res.summary(n_pairs=args.top_pairs))
    print(f"\n({res.timing['total_s']:.1f} s)")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("fingerprint", help="functional-network fingerprints: is a suspect model derived from a victim?")
    sp = p.add_subparsers(dest="fingerprint_command", metavar="{profile,compare}")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    pp = sp.add_parser("profile", help="record a victim model's networks on probe texts into a profile file")
    add_model_argument(pp, help="victim model spec: HF id, folder, .gguf or alias")
    pp.add_argument("--out", required=True, help="output profile file (e.g. victim.fnf)")
    pp.add_argument("--probes", default=None, help="probe texts: .jsonl or text file with blank-line separated texts")
    pp.add_argument("--signals", default="residual", choices=list(SIGNAL_CHOICES))
    pp.add_argument("--n-components", type=int, default=None, help="networks per ICA seed (default 64, capped by data)")
    pp.add_argument("--n-seeds", type=int, default=3)
    pp.add_argument("--threshold", type=float, default=3.6, help="key units: map z above this")
    pp.add_argument("--max-length", type=int, default=256)
    pp.add_argument("--seed", type=int, default=0)
    pp.set_defaults(func=_cmd_profile)

    pc = sp.add_parser("compare", help="compare a victim profile with a suspect model: score, p-value, verdict")
    pc.add_argument("profile", help="victim profile file from `funcnet fingerprint profile`")
    add_model_argument(pc, required=True, help="suspect model spec: HF id, folder, .gguf or alias")
    pc.add_argument("--json", default=None, help="write the full result as JSON here")
    pc.add_argument("--plot", default=None, help="write a plot of the best matched time courses (PNG)")
    pc.add_argument("--n-null", type=int, default=200)
    pc.add_argument("--alpha", type=float, default=ALPHA)
    pc.add_argument("--top-pairs", type=int, default=10, help="matched pairs to print")
    pc.set_defaults(func=_cmd_compare)
