"""`funcnet export`: a pruned folder (or any model funcnet loads) as GGUF for llama.cpp, a native
Hugging Face folder, or a DeciLM folder for vLLM."""
from __future__ import annotations

from funcnet.cli._common import add_model_argument, load
from funcnet.cli._lazy import lazy_module
from funcnet.errors import FuncnetError

core = lazy_module("funcnet.core")
export = lazy_module("funcnet.export")

#: the choices of --outtype / --quant, spelled here so that parsing imports nothing heavy
#: (tests/test_export.py checks them against funcnet.export.OUTTYPES / QUANT_TYPES)
OUTTYPES = ("f32", "f16", "bf16")
QUANT_CHOICES = ("q2_k", "q3_k_l", "q3_k_m", "q3_k_s", "q4_0", "q4_1", "q4_k_m", "q4_k_s", "q5_0", "q5_1", "q5_k_m",
                 "q5_k_s", "q6_k", "q8_0")


def _cmd_export(args) -> int:
    spec = args.source or args.model
    if not spec:
        raise FuncnetError("name the model to export: funcnet export PRUNED_OR_MODEL --gguf out.gguf")
    if not (args.gguf or args.native or args.decilm):
        raise FuncnetError("choose at least one output: --gguf FILE, --native DIR or --decilm DIR")
    if args.quant and not args.gguf:
        raise FuncnetError("--quant applies to --gguf")
    if args.quant and not export.llama_cpp_available():
        raise FuncnetError("--quant needs llama-cpp-python (make setup-deploy, see docs/deploy.md)")
    outs = [(p, is_dir) for p, is_dir in ((args.gguf, False), (args.native, True), (args.decilm, True)) if p]
    for p, is_dir in outs:  # every output checked before the model loads
        core._io.check_output(p, overwrite=args.overwrite, is_dir=is_dir,
                              what="output folder" if is_dir else "output file")
    lm = load(args, spec)
    if args.gguf:
        export.write_gguf(lm, args.gguf, outtype=args.outtype, quant=args.quant, overwrite=args.overwrite)
        widths = export.gguf_shapes(lm)["feed_forward_length"]
        kind = f"{args.quant.upper()} (quantized by llama.cpp)" if args.quant else args.outtype
        print(f"wrote {args.gguf}: GGUF, architecture deci, {kind}, MLP widths {min(widths)}..{max(widths)}")
    if args.native:
        why = core.pruned.native_reason(lm)
        if why is not None:
            raise FuncnetError(f"cannot write a native folder: {why}")
        core.pruned.save_pruned(lm, lm.tokenizer, args.native, overwrite=args.overwrite, format="native")
        print(f"wrote {args.native}: native {lm.model.config.model_type} folder (loads with plain from_pretrained)")
    if args.decilm:
        export.write_decilm(lm, args.decilm, overwrite=args.overwrite)
        print(f"wrote {args.decilm}: DeciLM / Nemotron-NAS folder (block_configs; not run on vLLM by funcnet)")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("export", help="write a pruned model as GGUF (llama.cpp), a native folder or a DeciLM folder")
    p.add_argument("source", nargs="?", default=None, metavar="PRUNED_OR_MODEL",
                   help="pruned folder or any model spec (or --model)")
    add_model_argument(p, default=None)
    p.add_argument("--gguf", default=None, metavar="FILE", help="write a GGUF file (architecture deci, per-layer widths)")
    p.add_argument("--outtype", choices=OUTTYPES, default="f16", help="GGUF tensor type (default f16)")
    p.add_argument("--quant", choices=QUANT_CHOICES, default=None,
                   help="quantize the GGUF with llama.cpp (needs llama-cpp-python)")
    p.add_argument("--native", default=None, metavar="DIR",
                   help="write a plain folder of the base architecture (every layer the same shape)")
    p.add_argument("--decilm", default=None, metavar="DIR", help="write a DeciLM / Nemotron-NAS folder (vLLM layout)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_export)
