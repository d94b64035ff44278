"""GGUF files of (pruned) Llama-family models for llama.cpp, written with the ``gguf`` package.

llama.cpp's ``llama`` architecture builds every layer with layer 0's sizes, so a per-layer-pruned
model is written as ``general.architecture = "deci"`` (DeciLM / Nemotron-NAS): that architecture
reads ``feed_forward_length``, ``attention.head_count`` and ``attention.head_count_kv`` as per-layer
arrays, builds each layer with its own sizes and takes optional ``ffn_down`` / ``attn_output``
biases (what funcnet's compensation adds). Query and key rows are permuted the way llama.cpp's own
converter does (:func:`permute_qk`: Hugging Face's half-split rotary layout to llama.cpp's
interleaved pairs). A ``deci`` layer whose MLP width is 0 is skipped *entirely*, attention included,
so such a layer is refused (:func:`check_gguf_shapes`).

Tokenizer metadata: copied from the GGUF file the model came from when there is one (the bundled
``smollm2-135m``, a ``.gguf`` spec, funcnet's dequantized cache of one), else built from the
Hugging Face tokenizer (BPE tokens, merges, special ids; a non-BPE tokenizer gets its tokens only).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from funcnet.core import models as _models
from funcnet.core._io import atomic_path, check_output
from funcnet.core.adapters import weight_out_in
from funcnet.core.models import LoadedModel, as_loaded
from funcnet.core.shrink import layer_head_config
from funcnet.errors import FuncnetError

log = logging.getLogger(__name__)

#: output types of the GGUF tensors (1-D tensors, norms and biases, are always f32)
OUTTYPES = ("f32", "f16", "bf16")
#: quantization types through llama.cpp's quantizer (``llama_model_quantize``), name -> llama_ftype
QUANT_TYPES = {"q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12,
               "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18}
#: base model types written as ``deci`` GGUF (Llama-shaped: RMSNorm, SiLU-gated MLP, rotary q/k)
GGUF_MODEL_TYPES = ("llama", "mistral", "qwen2")
ARCH = "deci"
#: the layer norms of Llama-shaped decoder layers, in GGUF's names
_NORMS = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def permute_qk(w: torch.Tensor | np.ndarray, n_head: int):
    """Rows of a query / key projection (or bias) from Hugging Face's rotary layout (each head's
    first half paired with its second half) to llama.cpp's (consecutive pairs), as llama.cpp's
    ``convert_hf_to_gguf.py`` (``LlamaModel.permute``) does; ``n_head`` is the heads of that projection."""
    shape = tuple(w.shape)
    if shape[0] % (2 * n_head):
        raise FuncnetError(f"cannot permute {shape[0]} rows into {n_head} heads of pairs")
    x = w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
    x = x.swapaxes(1, 2) if isinstance(x, np.ndarray) else x.transpose(1, 2)
    return x.reshape(shape)


def unpermute_qk(w: torch.Tensor | np.ndarray, n_head: int):
    """The inverse of :func:`permute_qk`."""
    shape = tuple(w.shape)
    x = w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:])
    x = x.swapaxes(1, 2) if isinstance(x, np.ndarray) else x.transpose(1, 2)
    return x.reshape(shape)


def llama_cpp_available() -> bool:
    """Whether ``llama-cpp-python`` is installed (needed for ``quant=`` and the comparison tests)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _base_model_type(cfg) -> str:
    return getattr(cfg, "funcnet_base_model_type", None) or cfg.model_type


def gguf_shapes(lm: LoadedModel) -> dict:
    """Per-layer shapes of the GGUF: ``feed_forward_length``, ``head_count``, ``head_count_kv`` (lists),
    ``head_dim`` and which layers carry ``ffn_down`` / ``attn_output`` biases."""
    ad, model, layers = lm.adapter, lm.model, lm.layers
    hcs = [layer_head_config(ad, model, l) for l in layers]
    return {
        "feed_forward_length": [int(ad.n_neurons(l)) for l in layers],
        "head_count": [h.n_heads for h in hcs],
        "head_count_kv": [h.n_kv_heads for h in hcs],
        "head_dim": int(ad.head_config(model).head_dim),
        "ffn_down_bias": [getattr(l.get_submodule(ad.down), "bias", None) is not None for l in layers],
        "attn_output_bias": [getattr(l.get_submodule(ad.o_proj), "bias", None) is not None for l in layers],
    }


def check_gguf_shapes(lm: LoadedModel) -> dict:
    """:func:`gguf_shapes`, after checking that llama.cpp's ``deci`` architecture can run the model:
    a Llama-shaped family, the default rotary embedding, no layer without MLP neurons but with
    attention. Raises :class:`FuncnetError` otherwise."""
    cfg = lm.model.config
    mt = _base_model_type(cfg)
    if mt not in GGUF_MODEL_TYPES or lm.adapter.gate is None or lm.adapter.q is None:
        raise FuncnetError(f"GGUF export supports Llama-shaped models ({', '.join(GGUF_MODEL_TYPES)}), "
                           f"not '{mt}'")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rtype = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rtype not in (None, "default"):
        raise FuncnetError(f"GGUF export supports the default rotary embedding, not rope_type '{rtype}'")
    shapes = gguf_shapes(lm)
    for i, (w, nq) in enumerate(zip(shapes["feed_forward_length"], shapes["head_count"])):
        if w == 0 and nq > 0:
            raise FuncnetError(f"layer {i} has no MLP neurons but keeps its attention: llama.cpp's deci architecture "
                               "skips such a layer entirely; keep at least multiple_of neurons in every layer")
    return shapes


def _rope_theta(cfg) -> float:
    rope = getattr(cfg, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("rope_theta") is not None:
        return float(rope["rope_theta"])
    return float(getattr(cfg, "rope_theta", 10000.0) or 10000.0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def gguf_tensors(lm: LoadedModel, shapes: dict | None = None) -> dict[str, np.ndarray]:
    """The model's tensors under llama.cpp's names, as float32 arrays ([out, in] for weights; q / k
    rows permuted with :func:`permute_qk`)."""
    shapes = shapes or check_gguf_shapes(lm)
    ad, model = lm.adapter, lm.model
    emb = model.get_input_embeddings().weight
    out = {"token_embd.weight": _np(emb)}
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != emb.data_ptr():
        out["output.weight"] = _np(head.weight)
    base = getattr(model, model.base_model_prefix, model)
    out["output_norm.weight"] = _np(base.norm.weight)
    for i, layer in enumerate(lm.layers):
        nq, nkv = shapes["head_count"][i], shapes["head_count_kv"][i]
        p = f"blk.{i}."
        for gname, hname in _NORMS.items():
            out[p + gname + ".weight"] = _np(layer.get_submodule(hname).weight)
        for gname, path, nh in (("attn_q", ad.q, nq), ("attn_k", ad.k, nkv), ("attn_v", ad.v, None),
                                ("attn_output", ad.o_proj, None), ("ffn_gate", ad.gate, None),
                                ("ffn_up", ad.up, None), ("ffn_down", ad.down, None)):
            mod = layer.get_submodule(path)
            w = _np(weight_out_in(mod))
            b = getattr(mod, "bias", None)
            b = None if b is None else _np(b)
            if nh is not None:
                w = permute_qk(w, nh)
                b = None if b is None else permute_qk(b, nh)
            out[p + gname + ".weight"] = w
            if b is not None:
                out[p + gname + ".bias"] = b
    return out


def source_gguf(lm: LoadedModel) -> Path | None:
    """The GGUF file a model was loaded from (a bundled alias, a ``.gguf`` spec, funcnet's
    dequantized cache of one; for a pruned model, its base model's), or None."""
    specs = [lm.spec, lm.source]
    base = (lm.info.get("pruning_report") or {}).get("base_model") or {}
    specs.append(base.get("spec"))
    for s in [s for s in specs if s]:
        s = str(s)
        if s in _models.ALIASES:
            try:
                return Path(_models.ALIASES[s]())
            except FuncnetError:
                continue
        if s.endswith(".gguf") and Path(s).is_file():
            return Path(s)
        marker = Path(s) / "funcnet_cache.json"
        if marker.is_file():
            try:
                src = Path(json.loads(marker.read_text())["source"])
            except (OSError, ValueError, KeyError):
                continue
            if src.is_file():
                return src
    return None


def _copy_tokenizer(writer, src: Path, n_vocab: int) -> bool:
    import gguf

    reader = gguf.GGUFReader(str(src))
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    toks = fields.get("tokenizer.ggml.tokens")
    if toks is None or len(toks.data) != n_vocab:
        return False
    for k, f in fields.items():
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(k, f.contents(), vt, sub_type=f.types[-1])
        else:
            writer.add_key_value(k, f.contents(), vt)
    return True


def _hf_tokenizer(writer, tok, n_vocab: int) -> None:
    """Tokenizer metadata built from a Hugging Face tokenizer (gguf's ``gpt2`` BPE model)."""
    import gguf

    vocab = tok.get_vocab() if tok is not None else {}
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    added = {}
    if tok is not None:
        added = {t.content: t.special for t in getattr(tok, "added_tokens_decoder", {}).values()}
    for t, i in vocab.items():
        if 0 <= i < n_vocab:
            tokens[i] = t
            types[i] = (gguf.TokenType.CONTROL if added.get(t) else gguf.TokenType.USER_DEFINED) if t in added \
                else gguf.TokenType.NORMAL
    merges = None
    try:
        model = json.loads(tok.backend_tokenizer.to_str())["model"]
        if model.get("type") == "BPE":
            merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    except (AttributeError, ValueError, KeyError, TypeError):
        pass
    if not merges:  # not a BPE tokenizer: llama.cpp runs token ids but cannot tokenize text
        log.warning("the tokenizer is not BPE: the GGUF has no tokenizer (tokenizer.ggml.model = none)")
        writer.add_tokenizer_model("none")
        return
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    writer.add_token_merges(merges)
    if tok is not None:
        for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                          ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
            tid = getattr(tok, f"{name}_token_id", None)
            if isinstance(tid, int) and 0 <= tid < n_vocab:
                add(tid)
        writer.add_add_bos_token(False)
        tmpl = getattr(tok, "chat_template", None)
        if isinstance(tmpl, str) and tmpl:
            writer.add_chat_template(tmpl)


def _tensor_data(name: str, arr: np.ndarray, outtype: str):
    """(data, raw_dtype) of one tensor in ``outtype`` (1-D tensors stay f32)."""
    import gguf

    if arr.ndim == 1 or outtype == "f32":
        return arr.astype(np.float32), None
    if outtype == "f16":
        return arr.astype(np.float16), None
    return gguf.quants.quantize(arr.astype(np.float32), gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


def _write(lm: LoadedModel, path: Path, outtype: str, tokenizer_gguf) -> dict:
    import gguf

    shapes = check_gguf_shapes(lm)
    tensors = gguf_tensors(lm, shapes)
    cfg = lm.model.config
    n_vocab = tensors["token_embd.weight"].shape[0]
    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(str(getattr(cfg, "_name_or_path", "") or "funcnet-pruned"))
    w.add_string("general.source.funcnet", "pruned" if hasattr(cfg, "funcnet_pruned") else "dense")
    w.add_block_count(lm.n_layers)
    w.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_feed_forward_length(shapes["feed_forward_length"])
    w.add_head_count(shapes["head_count"])
    w.add_head_count_kv(shapes["head_count_kv"])
    w.add_key_length(shapes["head_dim"])
    w.add_value_length(shapes["head_dim"])
    w.add_rope_dimension_count(shapes["head_dim"])
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(n_vocab))
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype])
    src = Path(tokenizer_gguf) if tokenizer_gguf else source_gguf(lm)
    if src is None or not _copy_tokenizer(w, src, n_vocab):
        _hf_tokenizer(w, lm.tokenizer, n_vocab)
    for name, arr in tensors.items():
        data, raw = _tensor_data(name, arr, outtype)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return shapes


def quantize_gguf(src, dst, quant: str, *, nthread: int = 0) -> Path:
    """Quantize a GGUF file with llama.cpp's ``llama_model_quantize`` (needs llama-cpp-python).
    Tensors whose rows do not fit the type's blocks fall back to another type (llama.cpp's rule):
    prune with ``multiple_of=32`` (``funcnet prune`` does) for Q8_0 / Q4_0 ..., 256 for the K types."""
    q = quant.lower()
    if q not in QUANT_TYPES:
        raise FuncnetError(f"unknown quantization '{quant}'; choose from {', '.join(QUANT_TYPES)}")
    if not llama_cpp_available():
        raise FuncnetError("quantization needs llama-cpp-python (make setup-deploy, see docs/deploy.md)")
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[q]
    params.nthread = int(nthread)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise FuncnetError(f"llama.cpp could not quantize {src} to {quant} (code {rc})")
    return Path(dst)


def write_gguf(model, out, *, tokenizer=None, outtype: str = "f16", quant: str | None = None,
               tokenizer_gguf=None, overwrite: bool = False) -> Path:
    """Write ``model`` (a pruned folder, any spec funcnet loads, a LoadedModel or a model with
    ``tokenizer=``) as a ``deci`` GGUF file for llama.cpp; see the module docstring.

    ``outtype``: f32, f16 (default) or bf16. ``quant`` (e.g. ``q8_0``, ``q4_k_m``): quantized from an
    f32 file by llama.cpp (needs llama-cpp-python). ``tokenizer_gguf``: a GGUF file whose tokenizer
    metadata to copy (default: the one the model came from, when any). Atomic (temp file + rename).
    """
    if outtype not in OUTTYPES:
        raise FuncnetError(f"unknown output type '{outtype}'; choose from {', '.join(OUTTYPES)}")
    if quant is not None and quant.lower() not in QUANT_TYPES:
        raise FuncnetError(f"unknown quantization '{quant}'; choose from {', '.join(QUANT_TYPES)}")
    if quant is not None and not llama_cpp_available():
        raise FuncnetError("--quant needs llama-cpp-python (make setup-deploy, see docs/deploy.md)")
    out = check_output(out, overwrite=overwrite, is_dir=False, what="output file")
    lm = as_loaded(model, tokenizer)
    check_gguf_shapes(lm)
    with torch.no_grad(), atomic_path(out) as tmp:
        if quant is None:
            _write(lm, Path(tmp), outtype, tokenizer_gguf)
        else:
            f32 = Path(str(tmp) + ".f32.gguf")
            try:
                _write(lm, f32, "f32", tokenizer_gguf)
                quantize_gguf(f32, tmp, quant, nthread=os.cpu_count() or 1)
            finally:
                f32.unlink(missing_ok=True)
    return out
