"""`funcnet browse`: the static network browser of a networks file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from funcnet.cli._common import add_model_argument, load
from funcnet.errors import FuncnetError
from funcnet.cli._lazy import lazy_module

data = lazy_module("funcnet.data")
networks = lazy_module("funcnet.networks")
report = lazy_module("funcnet.report")


def _ids(text: str | None) -> list[int] | None:
    if not text:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        raise FuncnetError(f"cannot read network ids '{text}': use e.g. 0-15,40") from None
    return out


def _counterpart(args):
    """--counterpart, with --counterpart-href / --counterpart-model added to a matching JSON."""
    if not args.counterpart or not (args.counterpart_href or args.counterpart_model):
        return args.counterpart
    p = Path(args.counterpart)
    if p.suffix == ".safetensors" or not p.exists():
        return args.counterpart
    try:
        raw = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FuncnetError(f"counterpart {p} is not JSON: {e}") from e
    meta = dict(raw) if isinstance(raw, dict) else {"pairs": raw}
    if args.counterpart_href:
        meta["href"] = args.counterpart_href
    if args.counterpart_model:
        meta["model"] = args.counterpart_model
    return meta


def _cmd_browse(args) -> int:
    lm = load(args)
    nets = networks.FunctionalNetworks.load(args.networks, model=lm)
    layers = sorted({int(l) for d in nets.decompositions for l in np.unique(d.columns[:, 0])})
    corpus = data.load_corpus(args.corpus, split=args.split) if args.corpus else None
    store = networks.ensure_store(lm, corpus if corpus is not None else "builtin", store=args.store, signals=nets.signals,
                         layers=layers, split=args.split, max_tokens=args.max_tokens, max_length=args.max_length)
    out = report.browse.build_site(nets, lm, store, args.out, lesion=args.lesion, counterpart=_counterpart(args), corpus=corpus,
                     top_contexts=args.top_contexts, per_quantile=args.per_quantile, top_k=args.top_k,
                     select=_ids(args.networks_ids), min_stability=args.min_stability, threshold=args.threshold,
                     positive_only=args.positive_only, seed=args.seed, overwrite=args.overwrite)
    sizes = report.browse.page_sizes(out)
    n_pages = sum(1 for k in sizes if k.startswith("n/"))
    print(f"browser of {n_pages} networks -> {out / 'index.html'} (largest file {max(sizes.values()) / 1024:.0f} KiB)")
    if args.serve is not None:
        print(f"serving {out} on http://127.0.0.1:{args.serve}/ (Ctrl-C stops)")
        report.browse.serve(out, args.serve)
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("browse", help="write a static site with a page per functional network, searchable "
                                      "(opens from disk; --serve PORT serves it on 127.0.0.1)")
    p.add_argument("networks", help="networks file (from `funcnet networks` or a results folder)")
    add_model_argument(p)
    p.add_argument("--out", required=True, help="site folder to write")
    p.add_argument("--store", default=None, help="activation store of the tokens to browse (recorded if missing)")
    p.add_argument("--corpus", default=None, help="corpus to record (and whose domains label the documents); "
                                                  "default: the store's own, else builtin")
    p.add_argument("--split", default="calib")
    p.add_argument("--max-tokens", type=int, default=16384, help="tokens to record when no store is given")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lesion", default=None, help="lesion.json (or a results folder holding one)")
    p.add_argument("--counterpart", default=None, help="another model's networks: a matching JSON (list of "
                   "[i, j, score], or `funcnet fingerprint compare --json`), or a networks file of the same widths")
    p.add_argument("--counterpart-href", default=None, help="the other model's site folder, relative to --out")
    p.add_argument("--counterpart-model", default=None, help="name shown for the other model")
    p.add_argument("--networks-ids", default=None, help="browse only these networks, e.g. 0-15,40")
    p.add_argument("--min-stability", type=float, default=None)
    p.add_argument("--threshold", type=float, default=3.6, help="key neurons: map z above this")
    p.add_argument("--positive-only", action="store_true")
    p.add_argument("--top-contexts", type=int, default=8)
    p.add_argument("--per-quantile", type=int, default=3, help="contexts sampled per activity quantile interval")
    p.add_argument("--top-k", type=int, default=20, help="promoted / suppressed tokens shown")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--serve", type=int, default=None, metavar="PORT", help="then serve the site on 127.0.0.1:PORT")
    p.add_argument("--overwrite", action="store_true", help="replace a site funcnet wrote at --out")
    p.set_defaults(func=_cmd_browse)
