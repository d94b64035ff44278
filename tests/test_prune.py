"""Tests of funcnet.prune / funcnet.shrink: calibration statistics, importance, exact-ratio selection,
bias compensation, physical shrink equivalence for every family, save / load without funcnet, CLI."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import transformers as T

from funcnet import prune as P
from funcnet import shrink
from funcnet.adapters import get_adapter, weight_out_in
from funcnet.errors import FuncnetError
from funcnet.models import as_loaded

os.environ.setdefault("FUNCNET_NO_PROGRESS", "1")

H, I, NH, NKV, V = 32, 64, 4, 2, 128
_LL = dict(num_hidden_layers=2, hidden_size=H, intermediate_size=I, num_attention_heads=NH,
           num_key_value_heads=NKV, vocab_size=V, max_position_embeddings=64)
FAMILIES = {
    "llama": lambda: T.LlamaConfig(**_LL),
    "mistral": lambda: T.MistralConfig(**_LL),
    "qwen2": lambda: T.Qwen2Config(**_LL),
    "qwen3": lambda: T.Qwen3Config(**_LL, head_dim=8),
    "gemma": lambda: T.GemmaConfig(**_LL, head_dim=8),
    "gemma2": lambda: T.Gemma2Config(**_LL, head_dim=8),
    "gemma3": lambda: T.Gemma3TextConfig(**_LL, head_dim=8),
    "phi3": lambda: T.Phi3Config(**_LL, pad_token_id=0),
    "gpt2": lambda: T.GPT2Config(n_embd=H, n_layer=2, n_head=NH, n_inner=I, vocab_size=V, n_positions=64),
    "gpt_neox": lambda: T.GPTNeoXConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=NH,
                                        intermediate_size=I, vocab_size=V, max_position_embeddings=64),
    "opt": lambda: T.OPTConfig(hidden_size=H, num_hidden_layers=2, ffn_dim=I, num_attention_heads=NH,
                               vocab_size=V, word_embed_proj_dim=H, max_position_embeddings=64),
}


def tiny(family: str, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    cfg = FAMILIES[family]()
    if hasattr(cfg, "num_hidden_layers"):
        cfg.num_hidden_layers = layers
    cfg._attn_implementation = "eager"
    model = T.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # larger weights than the default init, so that pruning visibly matters
        for name, p in model.named_parameters():
            if p.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0, 0.15)
            elif p.dim() == 1 and "bias" in name:
                p.normal_(0, 0.1)
    return model


class CharTok:
    """Minimal tokenizer: one token per byte (mod vocab), eos = 1, pad = 0."""

    eos_token_id, pad_token_id = 1, 0
    eos_token = pad_token = "<e>"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (b % (V - 2)) for b in text.encode()]}

    def save_pretrained(self, path):
        pass


TEXTS = ["the cat sat on the mat. " * 3, "def f(x): return x + 1\n" * 2, "1 + 2 = 3; 4 * 5 = 20. " * 2]


def fake_stats(lm, seed=0, heads=True):
    rng = np.random.default_rng(seed)
    ad = lm.adapter
    n = lm.n_layers
    w = [ad.n_neurons(l) for l in lm.layers]
    hw = [weight_out_in(shrink._get(l, ad.o_proj)).shape[1] for l in lm.layers]
    st = P.CalibStats(
        50, {i: rng.normal(size=w[i]) * 20 for i in range(n)}, {i: rng.uniform(50, 500, w[i]) for i in range(n)},
        {i: rng.normal(size=hw[i]) * 20 for i in range(n)} if heads else {},
        {i: rng.uniform(50, 500, hw[i]) for i in range(n)} if heads else {}, {"spec": "fake"})
    return st


def masked_dense_logits(dense, adapter, sel, stats, ids, comp=True):
    """Dense model with pruned neurons / heads masked to zero plus the compensation as a constant."""
    lm = as_loaded(dense, None)
    comp_mlp, comp_attn = P.compensation(lm, sel, stats) if comp else ({}, {})
    hs = []
    for i, layer in enumerate(lm.layers):
        w = adapter.n_neurons(layer)
        mask = torch.zeros(w)
        mask[torch.as_tensor(sel.keep_neurons[i])] = 1
        hs.append(adapter.down_proj(layer).register_forward_pre_hook(lambda m, a, mask=mask: (a[0] * mask,)))
        if i in comp_mlp:
            c = comp_mlp[i].float()
            hs.append(adapter.down_proj(layer).register_forward_hook(lambda m, a, o, c=c: o + c))
        if sel.keep_heads and sel.keep_heads.get(i) is not None:
            hc = shrink.layer_head_config(adapter, dense, layer)
            per = hc.group_size * hc.head_dim
            hm = torch.zeros(hc.n_heads * hc.head_dim)
            for g in sel.keep_heads[i]:
                hm[g * per:(g + 1) * per] = 1
            o = shrink._get(layer, adapter.o_proj)
            hs.append(o.register_forward_pre_hook(lambda m, a, hm=hm: (a[0] * hm,)))
            if i in comp_attn:
                c = comp_attn[i].float()
                hs.append(o.register_forward_hook(lambda m, a, out, c=c: out + c))
    try:
        with torch.no_grad():
            return dense(ids).logits
    finally:
        for h in hs:
            h.remove()


# ------------------------------------------------------------------------------------------ shrink
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shrink_equals_masked_dense_every_family(family):
    model = tiny(family)
    ad = get_adapter(model)
    dense = copy.deepcopy(model)
    lm = as_loaded(model, None)
    stats = fake_stats(lm)
    imp = P.compute_importance("flap", lm, stats, heads=True)
    sel = P.select(lm, imp, 0.3, of="attn+mlp", protect=(0, 0), heads=True)
    n_kv = ad.head_config(model).n_kv_heads
    assert all(len(v) < n_kv for v in sel.keep_heads.values())  # heads really removed in every layer
    P.apply_selection(lm, sel, stats)
    ids = torch.randint(2, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pruned = model(ids).logits
        full = dense(ids).logits
    ref = masked_dense_logits(dense, ad, sel, stats, ids)
    assert [ad.n_neurons(l) for l in lm.layers] == [len(sel.keep_neurons[i]) for i in range(2)]
    assert min(ad.n_neurons(l) for l in lm.layers) < I  # something was removed
    assert (pruned - full).abs().max() > 1e-2  # pruning changes the output (the test can fail)
    torch.testing.assert_close(pruned, ref, atol=1e-4, rtol=1e-4)
