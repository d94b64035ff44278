"""`funcnet networks`."""
from __future__ import annotations

import os
import time

from funcnet.cli._common import add_model_argument, check_out, check_positive, load, load_options
from funcnet._defaults import NETWORK_MODES as MODES
from funcnet.cli._lazy import lazy_module
from funcnet.errors import FuncnetError

core = lazy_module("funcnet.core")
data = lazy_module("funcnet.data")
networks = lazy_module("funcnet.networks")


def _complete_store(path) -> bool:
    """True when ``path`` is a finished activation store (then only the model's identity is needed)."""
    if not path or not data.store.looks_like_store(path):
        return False
    try:
        return data.store.ActivationStore.open(path).complete
    except Exception:  # a damaged store: the recording path reports it
        return False


def _cmd_networks(args) -> int:
    # arguments and --out before the model loads
    check_positive(args, "max_tokens", "max_length", "n_components", "window", "groups", "group_size", "n_init", "top")
    sig = data.parse_signals(args.signals)
    out = check_out(args, is_dir=False, what="output file")
    opts = load_options(args)
    if args.memory_budget_gb is not None and not args.memory_budget_gb > 0:
        raise FuncnetError(f"--memory-budget-gb must be positive, got {args.memory_budget_gb}")
    if args.workdir is not None and not os.path.isdir(args.workdir):
        raise FuncnetError(f"--workdir {args.workdir!r} is not a folder")
    if _complete_store(args.store):
        # a finished store: the model's identity and widths come from its config and weight-file
        # headers (no weights loaded), at the dtype the store was recorded with unless --dtype says
        manifest = data.store.ActivationStore.open(args.store).manifest
        lm = core.models.model_outline(args.model, dtype=opts.get("dtype") or manifest.get("model_dtype"),
                                       trust_remote_code=args.trust_remote_code)
        widths = lm.neurons_per_layer()
    else:
        lm = load(args)
        widths = lm.adapter.neurons_per_layer(lm.model)
    layers = None if str(args.layers).strip().lower() in ("all", "") else data.parse_layers(args.layers, lm.n_layers)
    t0 = time.time()
    store = networks.ensure_store(lm, args.corpus, store=args.store, signals=sig, layers=args.layers, split=args.split,
                         max_tokens=args.max_tokens, max_length=args.max_length)
    t1 = time.time()
    nets = networks.decompose(store, mode=args.mode, n_components=args.n_components, layers=layers, signals=sig,
                     window=args.window,
                     n_groups=args.groups, group_size=args.group_size, method=args.method, n_init=args.n_init,
                     random_state=args.seed, device=args.device or "cpu", checkpoint=args.checkpoint, tol=args.tol,
                     model_identity=lm.identity, neurons_per_layer=widths,
                     **({"workdir": args.workdir} if args.workdir else {}), memory_budget=None if args.memory_budget_gb is None else int(args.memory_budget_gb * 2**30))
    t2 = time.time()
    nets.save(out)
    thr = dict(threshold=args.threshold, positive_only=args.positive_only)
    print(nets.summary(top=args.top, min_stability=args.min_stability, **thr))
    print(f"recording {t1 - t0:.1f} s, decomposition {t2 - t1:.1f} s -> {args.out}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("networks", help="find functional networks (group ICA) and save them")
    add_model_argument(p, device_help="; also where the decomposition runs (default cpu)")
    p.add_argument("--corpus", default="builtin")
    p.add_argument("--split", default="calib", choices=["calib", "eval", "all"])
    p.add_argument("--store", default=None, help="activation store to reuse (recorded there if missing)")
    p.add_argument("--signals", default="neurons")
    p.add_argument("--layers", default="all")
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--n-components", "-k", type=int, default=64)
    p.add_argument("--mode", default="per-layer", choices=list(MODES))
    p.add_argument("--window", type=int, default=3, help="layers per window in window mode")
    p.add_argument("--groups", type=int, default=None, help="number of text groups (each decomposed separately)")
    p.add_argument("--group-size", type=int, default=None, help="texts per group")
    p.add_argument("--method", default="canica", choices=["canica", "reference"])
    p.add_argument("--n-init", type=int, default=10)
    p.add_argument("--tol", type=float, default=1e-4,
                   help="FastICA tolerance (scikit-learn's and the papers' 1e-4; 1e-3 is about 1.5x faster, docs/ica.md)")
    p.add_argument("--threshold", type=float, default=3.6)
    p.add_argument("--positive-only", action="store_true")
    p.add_argument("--min-stability", type=float, default=None)
    p.add_argument("--checkpoint", default=None, help="folder for per-group results (resumable)")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="bytes the concurrent per-layer CPU fits may take together (default: half the available memory)")
    p.add_argument("--workdir", default=None,
                   help="folder for CanICA's on-disk row cache when a fit's rows pass 1 GiB (default: the temp folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=10, help="rows in the summary table")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_networks)
