"""`funcnet export`: a pruned folder (or any model funcnet loads) as GGUF for llama.cpp, a native
Hugging Face folder, or a DeciLM folder for vLLM."""
from __future__ import annotations

from funcnet.cli._common import add_model_argument, load
from funcnet.core._io import check_output
from funcnet.core.pruned import native_reason, save_pruned
from funcnet.errors import FuncnetError
from funcnet.export import OUTTYPES, QUANT_TYPES, gguf_shapes, llama_cpp_available, write_gguf
from funcnet.export.decilm import write_decilm


def _cmd_export(args) -> int:
    spec = args.source or args.model
    if not spec:
        raise FuncnetError("name the model to export: funcnet export PRUNED_OR_MODEL --gguf out.gguf")
    if not (args.gguf or args.native or args.decilm):
        raise FuncnetError("choose at least one output: --gguf FILE, --native DIR or --decilm DIR")
    if args.quant and not args.gguf:
        raise FuncnetError("--quant applies to --gguf")
    if args.quant and not llama_cpp_available():
        raise FuncnetError("--quant needs llama-cpp-python (make setup-deploy, see docs/deploy.md)")
    outs = [(p, is_dir) for p, is_dir in ((args.gguf, False), (args.native, True), (args.decilm, True)) if p]
    for p, is_dir in outs:  # every output checked before the model loads
        check_output(p, overwrite=args.overwrite, is_dir=is_dir, what="output file" if not is_dir else "output folder")
    lm = load(args, spec)
    if args.gguf:
        write_gguf(lm, args.gguf, outtype=args.outtype, quant=args.quant, overwrite=args.overwrite)
        widths = gguf_shapes(lm)["feed_forward_length"]
        kind = f"{args.quant.upper()} (quantized by llama.cpp)" if args.quant else args.outtype
        print(f"wrote {args.gguf}: GGUF, architecture deci, {kind}, MLP widths {min(widths)}..{max(widths)}")
    if args.native:
        why = native_reason(lm)
        if why is not None:
            raise FuncnetError(f"cannot write a native folder: {why}")
        save_pruned(lm, lm.tokenizer, args.native, overwrite=args.overwrite, format="native")
        print(f"wrote {args.native}: native {lm.model.config.model_type} folder (loads with plain from_pretrained)")
    if args.decilm:
        write_decilm(lm, args.decilm, overwrite=args.overwrite)
        print(f"wrote {args.decilm}: DeciLM / Nemotron-NAS folder (block_configs; not run on vLLM by funcnet)")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("export", help="write a pruned model as GGUF (llama.cpp), a native folder or a DeciLM folder")
    p.add_argument("source", nargs="?", default=None, metavar="PRUNED_OR_MODEL",
                   help="pruned folder or any model spec (or --model)")
    add_model_argument(p, default=None)
    p.add_argument("--gguf", default=None, metavar="FILE", help="write a GGUF file (architecture deci, per-layer widths)")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16", help="GGUF tensor type (default f16)")
    p.add_argument("--quant", choices=sorted(QUANT_TYPES), default=None,
                   help="quantize the GGUF with llama.cpp (needs llama-cpp-python)")
    p.add_argument("--native", default=None, metavar="DIR",
                   help="write a plain folder of the base architecture (every layer the same shape)")
    p.add_argument("--decilm", default=None, metavar="DIR", help="write a DeciLM / Nemotron-NAS folder (vLLM layout)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=_cmd_export)
