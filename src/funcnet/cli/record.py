"""`funcnet record`."""
from __future__ import annotations

from funcnet._defaults import CLI_STORE_DTYPE, STORE_DTYPES
from funcnet.cli._common import add_model_argument, model_or_spec
from funcnet.cli._lazy import lazy_module

data = lazy_module("funcnet.data")


# ---------------------------------------------------------------------------- CLI
def _cmd_record(args) -> int:
    store = data.record(
        model_or_spec(args), args.corpus, out=args.out, signals=args.signals, layers=args.layers, split=args.split,
        max_tokens=args.max_tokens, max_length=args.max_length, mode=args.mode, batch_size=args.batch_size,
        store_dtype=args.store_dtype, resume=args.resume, overwrite=args.overwrite,
    )
    s = store.summary()
    print(f"recorded {s['n_tokens']:,} tokens x {s['layers']} layers ({', '.join(s['signals'])}) "
          f"from {s['n_documents']} documents -> {s['path']} ({s['size_mb']} MB, {s['dtype']})")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("record", help="record neuron activations over a corpus into an on-disk store")
    add_model_argument(p)
    p.add_argument("--corpus", default="builtin", help="corpus spec (builtin[:domain], file, folder, wikitext2)")
    p.add_argument("--split", default="calib", choices=["calib", "eval", "all"])
    p.add_argument("--signals", default="neurons", help="comma list of neurons,gate,up,residual,heads")
    p.add_argument("--layers", default="all", help="all, 0-5, or 0,3,-1")
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--max-length", type=int, default=128, help="tokens per document / window")
    p.add_argument("--mode", default="documents", choices=["documents", "packed"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--store-dtype", default=CLI_STORE_DTYPE, choices=list(STORE_DTYPES),
                   help=f"how the store keeps the values (default {CLI_STORE_DTYPE}: cannot overflow; float16 stops "
                        "at 65,504 and is refused when a value is larger; float32 is twice the size). The model's "
                        "own dtype is --dtype")
    p.add_argument("--out", required=True, help="output store folder")
    p.add_argument("--resume", action="store_true", help="continue an interrupted recording")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=_cmd_record)
