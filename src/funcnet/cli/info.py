"""``funcnet info``: model and activation-store summaries (a model's without loading its weights)."""
from __future__ import annotations

import json

from funcnet.cli._common import add_model_argument, load_options
from funcnet._defaults import DEFAULT_MODEL
from funcnet.errors import FuncnetError
from funcnet.cli._lazy import lazy_module

core = lazy_module("funcnet.core")
data = lazy_module("funcnet.data")


def _cmd_info(args) -> int:
    if args.target is not None and args.model is not None and args.target != args.model:
        raise FuncnetError(f"two models named: '{args.target}' and --model '{args.model}'; name one")
    target = args.model or args.target or DEFAULT_MODEL
    if data.store.looks_like_store(target):  # a damaged store (no manifest) is reported as one, not as "no model"
        print(json.dumps(data.store.ActivationStore.open(target).summary(), indent=2))
        return 0

    # read from the config and the weight files' headers: no weights loaded (--dtype: the dtype it would load in)
    opts = load_options(args)
    s = core.models.model_outline(target, dtype=opts.get("dtype"), trust_remote_code=args.trust_remote_code).summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    npl = s["neurons_per_layer"]
    widths = f"{npl[0]}" if len(set(npl)) == 1 else ",".join(map(str, npl))
    rows = [
        ("model", s["spec"]), ("family", s["family"]), ("architecture", s["architecture"]),
        ("layers", s["n_layers"]), ("neurons per layer", widths), ("total neurons", s["total_neurons"]),
        ("heads / kv heads / head dim", f"{s['n_heads']} / {s['n_kv_heads']} / {s['head_dim']}"),
        ("parameters", f"{s['n_parameters']:,}"), ("MLP parameters", f"{s['mlp_parameters']:,}"),
        ("attention parameters", f"{s['attn_parameters']:,}"), ("dtype", s["dtype"]), ("identity", s["identity"]),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("info", help="summarise a model (family, layers, neurons, parameters) or an activation store")
    add_model_argument(p, default=None, help="model spec (HF id, folder, .gguf or alias) or activation-store folder")
    p.add_argument("target", nargs="?", default=None, help="the same as --model (kept for older scripts)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)
