"""A DeciLM / Nemotron-NAS style folder (``block_configs``) of a per-layer-pruned Llama-family model,
the layout vLLM reads per-layer MLP widths from. NOT run on vLLM here (see docs/deploy.md).

Each block gets ``ffn.intermediate_size`` (and the equivalent ``ffn_mult``) and
``attention.n_heads_in_group``; query heads are global in that layout, so a model whose key/value
groups were pruned (fewer query heads per layer) is refused. Weights keep the Llama names; the
compensation biases (``mlp.down_proj.bias``, ``self_attn.o_proj.bias``) are written as they are, and
whether a given DeciLM implementation reads them is not checked here."""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from funcnet.core._io import atomic_path, check_output, mark_output
from funcnet.core.models import as_loaded
from funcnet.errors import FuncnetError
from funcnet.export.gguf_file import check_gguf_shapes

#: keys funcnet adds to a pruned config (not part of a DeciLM config)
_DROP = ("funcnet_pruned", "intermediate_sizes", "num_attention_heads_per_layer", "num_key_value_heads_per_layer",
         "mlp_bias_per_layer", "o_bias_per_layer", "funcnet_base_model_type", "auto_map", "intermediate_size",
         "num_key_value_heads")


def decilm_config(lm) -> dict:
    """The config.json of the DeciLM folder (``model_type: nemotron-nas``, ``block_configs``)."""
    shapes = check_gguf_shapes(lm)
    cfg = lm.model.config
    base = lm.adapter.head_config(cfg)
    if any(n != base.n_heads for n in shapes["head_count"]):
        raise FuncnetError("the DeciLM layout keeps every query head (heads are global in vLLM's block_configs): "
                           "a model with pruned key/value groups cannot be written; export it as GGUF")
    d = cfg.to_dict()
    for k in _DROP:
        d.pop(k, None)
    hidden = int(cfg.hidden_size)
    d.update(model_type="nemotron-nas", architectures=["DeciLMForCausalLM"],
             mlp_bias=any(shapes["ffn_down_bias"]), attention_bias=any(shapes["attn_output_bias"]))
    d["block_configs"] = [
        {"attention": {"n_heads_in_group": base.n_heads // nkv, "no_op": False, "replace_with_linear": False},
         "ffn": {"intermediate_size": w, "ffn_mult": round(3 * w / (2 * hidden), 6), "no_op": False,
                 "replace_with_linear": False}}
        for w, nkv in zip(shapes["feed_forward_length"], shapes["head_count_kv"])
    ]
    d["funcnet_note"] = "written by funcnet's DeciLM exporter; not run on vLLM by funcnet (docs/deploy.md)"
    return d


def write_decilm(model, out_dir, *, tokenizer=None, overwrite: bool = False) -> Path:
    """Write ``model`` (pruned folder, spec, LoadedModel, or model with ``tokenizer=``) as a DeciLM /
    Nemotron-NAS folder: ``config.json`` from :func:`decilm_config`, Llama-named safetensors weights,
    the tokenizer. Atomic (temp folder + rename)."""
    out = check_output(out_dir, overwrite=overwrite, what="output folder")
    lm = as_loaded(model, tokenizer)
    d = decilm_config(lm)
    kw = {}
    if "save_original_format" in inspect.signature(lm.model.save_pretrained).parameters:
        kw["save_original_format"] = False  # the in-memory (Llama) parameter names
    with torch.no_grad(), atomic_path(out, is_dir=True) as tmp:
        lm.model.save_pretrained(tmp, **kw)
        (tmp / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True, default=str) + "\n")
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp)
        mark_output(tmp, "decilm-model", [e.name for e in tmp.iterdir()])
    return out
