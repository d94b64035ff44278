"""Tests of funcnet.prune / funcnet.shrink: calibration statistics, importance, exact-ratio selection,
bias compensation, physical shrink equivalence for every family, save / load without funcnet, CLI."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import transformers as T
from conftest import char_tokenizer

import funcnet
from funcnet import prune as P
from funcnet.cli import main as cli_main
from funcnet.cli.prune import summary_lines
from funcnet.core import shrink
from funcnet.core.adapters import get_adapter, weight_out_in
from funcnet.core.models import as_loaded, load_model
from funcnet.data.corpus import load_corpus
from funcnet.errors import FuncnetError
from funcnet.evaluate import perplexity
from funcnet.networks import Decomposition, FunctionalNetworks

os.environ.setdefault("FUNCNET_NO_PROGRESS", "1")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (several threads spin against each other on a busy
    machine); the setting is restored after this module."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


H, I, NH, NKV, V = 32, 64, 4, 2, 128
_LL = dict(hidden_size=H, intermediate_size=I, num_attention_heads=NH,
           num_key_value_heads=NKV, vocab_size=V, max_position_embeddings=64)
FAMILIES = {
    "llama": lambda L: T.LlamaConfig(**_LL, num_hidden_layers=L),
    "mistral": lambda L: T.MistralConfig(**_LL, num_hidden_layers=L),
    "qwen2": lambda L: T.Qwen2Config(**_LL, num_hidden_layers=L),
    "qwen3": lambda L: T.Qwen3Config(**_LL, num_hidden_layers=L, head_dim=8),
    "gemma": lambda L: T.GemmaConfig(**_LL, num_hidden_layers=L, head_dim=8),
    "gemma2": lambda L: T.Gemma2Config(**_LL, num_hidden_layers=L, head_dim=8),
    "gemma3": lambda L: T.Gemma3TextConfig(**_LL, num_hidden_layers=L, head_dim=8),
    "phi3": lambda L: T.Phi3Config(**_LL, num_hidden_layers=L, pad_token_id=0),
    "gpt2": lambda L: T.GPT2Config(n_embd=H, n_layer=L, n_head=NH, n_inner=I, vocab_size=V, n_positions=64),
    "gpt_neox": lambda L: T.GPTNeoXConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                                        intermediate_size=I, vocab_size=V, max_position_embeddings=64),
    "opt": lambda L: T.OPTConfig(hidden_size=H, num_hidden_layers=L, ffn_dim=I, num_attention_heads=NH,
                               vocab_size=V, word_embed_proj_dim=H, max_position_embeddings=64),
}



def _logits_with_hooks(model, ids, hooks):
    """Logits of ``model`` on ``ids`` with ``hooks`` installed; the hooks are removed afterwards."""
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for h in hooks:
            h.remove()

def tiny(family: str, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    cfg = FAMILIES[family](layers)
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
    hw = [weight_out_in(l.get_submodule(ad.o_proj)).shape[1] for l in lm.layers]
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
            o = layer.get_submodule(adapter.o_proj)
            hs.append(o.register_forward_pre_hook(lambda m, a, hm=hm: (a[0] * hm,)))
            if i in comp_attn:
                c = comp_attn[i].float()
                hs.append(o.register_forward_hook(lambda m, a, out, c=c: out + c))
    return _logits_with_hooks(dense, ids, hs)


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


# ------------------------------------------------------------------------------------------ least-squares compensation
def reconstructed_dense_logits(dense, adapter, recon, keep, ids):
    """Dense model whose removed neurons' down-projection inputs are replaced by A x_K + c."""
    lm = as_loaded(dense, None)
    hs = []
    for i, layer in enumerate(lm.layers):
        if i not in recon:
            continue
        A, c = (t.float() for t in recon[i])
        k = torch.as_tensor(keep[i])
        r = torch.as_tensor(np.setdiff1d(np.arange(adapter.n_neurons(layer)), keep[i]))

        def pre(m, a, A=A, c=c, k=k, r=r):
            x = a[0].clone()
            x[..., r] = x[..., k] @ A.T + c
            return (x,)

        hs.append(adapter.down_proj(layer).register_forward_pre_hook(pre))
    return _logits_with_hooks(dense, ids, hs)


def _toy_nets(lm, seed=0, k=6, identity=""):
    """Per-layer networks with a few planted key neurons per map (``identity``: the model's, checked)."""
    rng = np.random.default_rng(seed)
    decs = []
    for l in range(lm.n_layers):
        w = lm.adapter.n_neurons(lm.layers[l])
        maps = rng.normal(size=(k, w)).astype(np.float32)
        for c in range(k):  # a few key neurons per map
            maps[c, rng.choice(w, 6, replace=False)] = 5.0
        cols = np.stack([np.full(w, l), np.zeros(w), np.arange(w)], 1).astype(np.int32)
        decs.append(Decomposition(maps, cols, np.ones(k, np.float32), 0, f"L{l:02d}"))
    return FunctionalNetworks(decs, ["neurons"], [lm.adapter.n_neurons(l) for l in lm.layers], identity)


@pytest.mark.parametrize("family,mode", [("llama", "ls"), ("gpt2", "ls"), ("opt", "ls-fn"), ("qwen3", "ls-fn"),
                                         ("gemma3", "bias")])
def test_shrink_equals_reconstructed_dense(family, mode):
    """The shrunk model equals the dense model with each removed neuron's input replaced by its
    reconstruction A x_K + c (LS: from kept neurons; bias: its mean), for the new compensations."""
    model = tiny(family, layers=3)
    dense = copy.deepcopy(model)
    lm = as_loaded(model, CharTok())
    ad = lm.adapter
    st = P.calibration_stats(lm, TEXTS * 4, calib_tokens=300, max_length=32, covariance=True)
    nets = _toy_nets(lm)
    imp = P.compute_importance("flap", lm, st)
    sel = P.select(lm, imp, 0.3, of="mlp", protect=(0, 0))
    recon = P.reconstruction(lm, sel, st, mode=mode, ridge=1e-2, networks=nets)
    assert set(recon) == {0, 1, 2}
    if mode != "bias":
        assert any(float(A.abs().max()) > 0 for A, _ in recon.values())  # real regression weights
    P.apply_selection(lm, sel, st, compensation=mode, ridge=1e-2, networks=nets)
    ids = torch.randint(2, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pruned = model(ids).logits
    ref = reconstructed_dense_logits(dense, ad, recon, sel.keep_neurons, ids)
    assert (pruned - dense(ids).logits).abs().max() > 1e-3
    torch.testing.assert_close(pruned, ref, atol=1e-4, rtol=1e-4)
    if mode == "bias":  # the same as FLAP's bias compensation with masking
        torch.testing.assert_close(pruned, masked_dense_logits(dense, ad, sel, st, ids), atol=1e-4, rtol=1e-4)


def test_ls_reconstruction_formula_and_error():
    """A = C_RK (C_KK + ridge diag C_KK)^-1, c = mu_R - A mu_K from the streamed covariance (checked
    against the directly recorded activations); on the calibration tokens LS has a smaller output
    error than bias compensation; ls-fn uses only network co-members."""
    model = tiny("llama", layers=2)
    lm = as_loaded(model, CharTok())
    ad = lm.adapter
    st = P.calibration_stats(lm, TEXTS * 4, calib_tokens=300, max_length=32, batch_size=3, covariance=True)
    xs = []
    h = ad.down_proj(lm.layers[1]).register_forward_pre_hook(lambda m, a: xs.append(a[0][0].double()))
    ids = []
    for t in TEXTS * 4:
        ids += CharTok()(t)["input_ids"] + [1]
    ids = ids[:300]
    with torch.no_grad():
        for k in range(0, len(ids), 32):
            model(torch.tensor([ids[k:k + 32]]))
    h.remove()
    X = torch.cat(xs).numpy()
    assert X.shape[0] == st.n_tokens
    C = np.cov(X.T, bias=True)
    np.testing.assert_allclose(st.cov(1), C, rtol=1e-6, atol=1e-8)
    sel = P.select(lm, P.compute_importance("flap", lm, st), 0.4, of="mlp", protect=(0, 0))
    keep = sel.keep_neurons[1]
    rem = np.setdiff1d(np.arange(I), keep)
    A, c = P.reconstruction(lm, sel, st, mode="ls", ridge=0.05)[1]
    Ckk = C[np.ix_(keep, keep)]
    A_ref = C[np.ix_(rem, keep)] @ np.linalg.inv(Ckk + 0.05 * np.diag(np.diag(Ckk)))
    np.testing.assert_allclose(A.numpy(), A_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(c.numpy(), X[:, rem].mean(0) - A_ref @ X[:, keep].mean(0), rtol=1e-6, atol=1e-9)
    W = weight_out_in(ad.down_proj(lm.layers[1])).detach().double().numpy()
    err = {}
    for mode in ("bias", "ls"):
        A, c = P.reconstruction(lm, sel, st, mode=mode, ridge=1e-4)[1]
        Xr = X[:, keep] @ A.numpy().T + c.numpy()
        err[mode] = float((((X[:, rem] - Xr) @ W[:, rem].T) ** 2).sum())
    assert err["ls"] < 0.7 * err["bias"], err
    # ls-fn: each removed neuron's regressors are kept neurons that share a network with it
    nets = _toy_nets(lm)
    strength = nets.comembership(1, I)
    A, _ = P.reconstruction(lm, sel, st, mode="ls-fn", networks=nets, ridge=0.05)[1]
    A = A.numpy()
    for a, r in enumerate(rem):
        allowed = strength[r, keep] > 0
        assert not A[a, ~allowed].any()
        if allowed.any():
            S = keep[allowed]
            ref = C[r, S] @ np.linalg.inv(C[np.ix_(S, S)] + 0.05 * np.diag(np.diag(C[np.ix_(S, S)])))
            np.testing.assert_allclose(A[a, allowed], ref, rtol=1e-6, atol=1e-9)
    # errors: ls needs covariance statistics, ls-fn needs networks, unknown modes are refused
    st_nocov = P.calibration_stats(lm, TEXTS, calib_tokens=64, max_length=32)
    with pytest.raises(FuncnetError, match="covariance"):
        P.prune(copy.deepcopy(lm.model), 0.2, tokenizer=CharTok(), method="flap", stats=st_nocov, compensation="ls",
                protect=(0, 0))
    with pytest.raises(FuncnetError, match="networks"):
        P.prune(copy.deepcopy(lm.model), 0.2, tokenizer=CharTok(), method="flap", stats=st, compensation="ls-fn",
                protect=(0, 0))
    with pytest.raises(FuncnetError, match="compensation"):
        P.prune(copy.deepcopy(lm.model), 0.2, tokenizer=CharTok(), method="flap", stats=st, compensation="magic")


@pytest.mark.parametrize("heads", [False, True])
def test_ls_in_chunks_and_layer_by_layer_equal_one_pass(heads):
    """Three ways to least-squares compensation give the same model: one pass with every pruned
    layer's covariance (float64, host), chunks of layers under a covariance budget below one layer
    (last first, each calibrated while earlier layers are dense), and the default layer-by-layer pass
    (each pruned layer's dense covariance on its device in float32, solved and shrunk in turn)."""
    base = tiny("llama", layers=4)
    kw = dict(tokenizer=CharTok(), method="flap", calib=TEXTS * 3, calib_tokens=200, max_length=32, protect=(1, 0),
              of="attn+mlp" if heads else "mlp", heads=heads)
    one = P.prune(copy.deepcopy(base), 0.3, layerwise=False, **kw)
    chunked = P.prune(copy.deepcopy(base), 0.3, max_covariance_bytes=1, layerwise=False, **kw)
    lw = P.prune(copy.deepcopy(base), 0.3, max_covariance_bytes=1, **kw)
    lw1 = P.prune(copy.deepcopy(base), 0.3, **kw)  # every pruned layer's covariance kept from the one pass
    assert sorted(one.stats.neuron_xtx) == [1, 2, 3] and not chunked.stats.neuron_xtx
    assert not lw.stats.has_covariance and lw.report["layerwise"] and lw.report["calibration_passes"] == 2
    assert lw1.report["layerwise"] and lw1.report["calibration_passes"] == 1
    assert one.report["kept_neurons"] == chunked.report["kept_neurons"] == lw.report["kept_neurons"]
    assert lw1.report["kept_neurons"] == lw.report["kept_neurons"] and lw1.report["kept_heads"] == lw.report["kept_heads"]
    assert one.report["kept_heads"] == lw.report["kept_heads"]
    assert one.report["compensation"] == chunked.report["compensation"] == lw.report["compensation"] == "ls"
    ids = torch.randint(2, V, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = one.model(ids).logits
        torch.testing.assert_close(ref, chunked.model(ids).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ref, lw.model(ids).logits, atol=2e-4, rtol=2e-4)
    assert one.model.config.intermediate_sizes == chunked.model.config.intermediate_sizes == \
        lw.model.config.intermediate_sizes
    # float64 solves: the float32 covariance is the only difference left
    lw64 = P.prune(copy.deepcopy(base), 0.3, solve_dtype="float64", **kw)
    with torch.no_grad():
        torch.testing.assert_close(ref, lw64.model(ids).logits, atol=2e-4, rtol=2e-4)


def test_conditional_fluctuation_scores():
    """flap score 'cond' = ||W_j||^2 Var(x_j | other neurons) (ridge); fn score 'fn-cond' conditions on
    the neuron's network co-members only; both are at most WIFV; layers without covariance get WIFV."""
    model = tiny("llama", layers=3)
    lm = as_loaded(model, CharTok())
    st = P.calibration_stats(lm, TEXTS * 4, calib_tokens=300, max_length=32, covariance=True,
                             covariance_layers=[1, 2])
    nets = _toy_nets(lm)
    wifv = P.compute_importance("flap", lm, st).neurons
    full = P.compute_importance("flap", lm, st, score="cond", cond_ridge=0.1).neurons
    netc = P.compute_importance("fn", lm, st, networks=nets, score="fn-cond", cond_ridge=0.1).neurons
    np.testing.assert_allclose(full[0], wifv[0])
    for i in (1, 2):
        assert (full[i] <= wifv[i] * (1 + 1e-9)).all() and (netc[i] <= wifv[i] * (1 + 1e-9)).all()
        assert (full[i] <= netc[i] * (1 + 1e-6) + 1e-9).mean() > 0.9  # all neurons explain more than a few
    C = st.cov(1)
    W = weight_out_in(lm.adapter.down_proj(lm.layers[1])).detach().double().numpy()
    strength = nets.comembership(1, I)
    for j in (3, 10):
        o = [k for k in range(I) if k != j]
        M = C + 0.1 * np.diag(np.diag(C))
        cv = M[j, j] - M[j, o] @ np.linalg.solve(M[np.ix_(o, o)], M[o, j]) - 0.1 * C[j, j]
        assert full[1][j] == pytest.approx(cv * (W[:, j] ** 2).sum(), rel=1e-6)
        S = [k for k in range(I) if k != j and strength[j, k] > 0]
        a = C[j, S] @ np.linalg.inv(C[np.ix_(S, S)] + 0.1 * np.diag(np.diag(C[np.ix_(S, S)])))
        assert netc[1][j] == pytest.approx((C[j, j] - a @ C[S, j]) * (W[:, j] ** 2).sum(), rel=1e-6)
    half = P.compute_importance("flap", lm, st, score="cond", cond_ridge=0.1, cond_power=0.5).neurons
    np.testing.assert_allclose(half[1], np.sqrt(wifv[1] * full[1]))
    with pytest.raises(FuncnetError):
        P.compute_importance("flap", lm, st, score="nope")


def test_prune_ls_calibrates_covariance_for_pruned_layers_only_and_reports():
    model = tiny("qwen2", layers=4)
    res = P.prune(model, 0.2, tokenizer=CharTok(), method="wanda-sp", calib=TEXTS * 3, calib_tokens=200,
                  compensation="ls", protect=(1, 1), layerwise=False)
    assert sorted(res.stats.neuron_xtx) == [1, 2]
    assert res.report["compensation"] == "ls" and res.report["ridge"] == P.DEFAULT_RIDGE
    assert res.report["bias_compensation"] is True
    assert abs(res.report["achieved_ratio"] - 0.2) < 0.05
    res2 = P.prune(tiny("qwen2", layers=4), 0.2, tokenizer=CharTok(), method="flap", calib=TEXTS, calib_tokens=100,
                   bias_compensation=False, protect=(1, 1))
    assert res2.report["compensation"] == "none" and not res2.stats.neuron_xtx


# ------------------------------------------------------------------------------------------ calibration
def test_calibration_stats_exclude_padding_and_match_direct():
    model = tiny("llama")
    lm = as_loaded(model, CharTok())
    # batch 1: no padding at all; batch 4: the last, shorter window is padded
    s1 = P.calibration_stats(lm, TEXTS, calib_tokens=200, max_length=32, batch_size=1)
    s4 = P.calibration_stats(lm, TEXTS, calib_tokens=200, max_length=32, batch_size=4, heads=True)
    assert s1.n_tokens == s4.n_tokens and s1.n_tokens % 32 != 0  # a partial window exists
    for i in range(2):
        np.testing.assert_allclose(s1.neuron_sum[i], s4.neuron_sum[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s1.var(i), s4.var(i), rtol=1e-5, atol=1e-6)
    # direct: run each window alone and gather the down-projection inputs
    ids = []
    for t in TEXTS:
        ids += CharTok()(t)["input_ids"] + [1]
    ids = ids[:200]
    xs = []
    h = lm.adapter.down_proj(lm.layers[1]).register_forward_pre_hook(lambda m, a: xs.append(a[0][0].double()))
    with torch.no_grad():
        for k in range(0, len(ids), 32):
            model(torch.tensor([ids[k:k + 32]]))
    h.remove()
    X = torch.cat(xs).numpy()
    assert X.shape[0] == s4.n_tokens
    np.testing.assert_allclose(s4.mean(1), X.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s4.var(1), X.var(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(s4.sq_norm(1), (X ** 2).sum(0), rtol=1e-5)
    assert s4.head_sum[0].shape == (NH * 8,)
    assert s4.identity["tokens"] == s4.n_tokens and s4.identity["n_texts"] == 3


def test_calibration_accepts_object_with_texts_and_rejects_empty():
    lm = as_loaded(tiny("gpt2"), CharTok())

    class C:
        texts = TEXTS
        spec = "mine"

    st = P.calibration_stats(lm, C(), calib_tokens=64, max_length=16)
    assert st.identity["spec"] == "mine" and st.n_tokens == 64
    with pytest.raises(FuncnetError):
        P.calibration_stats(lm, [], calib_tokens=64)


# ------------------------------------------------------------------------------------------ importance
def test_importance_formulas():
    model = tiny("llama")
    lm = as_loaded(model, None)
    st = fake_stats(lm)
    ad = lm.adapter
    layer = lm.layers[1]
    Wd = weight_out_in(ad.down_proj(layer)).detach().double()
    j = 5
    flap = P.compute_importance("flap", lm, st, heads=True)
    assert flap.neurons[1][j] == pytest.approx(st.var(1)[j] * float((Wd[:, j] ** 2).sum().detach()))
    w = P.compute_importance("wanda-sp", lm, st)
    assert w.neurons[1][j] == pytest.approx(float(Wd[:, j].abs().mean()) * np.sqrt(st.sq_norm(1)[j]))
    mg = P.compute_importance("magnitude", lm, st)
    g = weight_out_in(layer.get_submodule(ad.gate)).detach().double()
    u = weight_out_in(layer.get_submodule(ad.up)).detach().double()
    expect = float(((Wd[:, j] ** 2).sum() + (g[j] ** 2).sum() + (u[j] ** 2).sum()).sqrt())
    assert mg.neurons[1][j] == pytest.approx(expect)
    assert flap.heads[1].shape == (NKV,)
    r1 = P.compute_importance("random", lm, seed=3)
    r2 = P.compute_importance("random", lm, seed=3)
    r3 = P.compute_importance("random", lm, seed=4)
    np.testing.assert_array_equal(r1.neurons[0], r2.neurons[0])
    assert not np.array_equal(r1.neurons[0], r3.neurons[0])
    assert set(P.METHODS) == {"random", "magnitude", "wanda-sp", "flap", "fn", "fn-threshold", "obs", "fn-obs"}
    with pytest.raises(FuncnetError):
        P.compute_importance("nope", lm, st)
    with pytest.raises(FuncnetError):
        P.compute_importance("flap", lm, None)


# ------------------------------------------------------------------------------------------ selection
@pytest.mark.parametrize("of", ["mlp", "attn+mlp", "all"])
@pytest.mark.parametrize("allocation", ["global", "uniform"])
@pytest.mark.parametrize("comp", [True, False])
def test_exact_ratio_and_protected_layers(of, allocation, comp):
    model = tiny("llama", layers=6)
    lm = as_loaded(model, None)
    st = fake_stats(lm, heads=False)
    ad = lm.adapter
    ppn = ad.params_per_neuron(lm.layers[0])
    before = P.param_counts(lm)
    imp = P.compute_importance("flap", lm, st)
    sel = P.select(lm, imp, 0.25, of=of, allocation=allocation, protect=(1, 2), bias_compensation=comp)
    assert sel.protected == [0, 4, 5]
    P.apply_selection(lm, sel, st if comp else None, bias_compensation=comp)
    after = P.param_counts(lm)
    removed = before[of] - after[of]
    assert abs(removed - 0.25 * before[of]) <= ppn  # within one neuron's parameters
    assert removed == sel.predicted_removed
    widths = ad.neurons_per_layer(model)
    assert widths[0] == widths[4] == widths[5] == I
    assert all(w >= 1 for w in widths)
    if allocation == "uniform":
        assert max(widths[1:4]) - min(widths[1:4]) <= 1
    has_bias = [ad.down_proj(l).bias is not None for l in lm.layers]
    assert has_bias == [False, comp, comp, comp, False, False]


def test_global_allocation_is_adaptive():
    model = tiny("llama", layers=4)
    lm = as_loaded(model, None)
    imp = P.Importance({0: np.ones(I), 1: np.r_[np.zeros(I - 8), np.ones(8) * 10],
                        2: np.linspace(0, 1, I), 3: np.ones(I)}, method="fn")
    sel = P.select(lm, imp, 0.2, of="mlp", allocation="global", protect=(0, 0), bias_compensation=False)
    kept = [len(sel.keep_neurons[i]) for i in range(4)]
    assert kept[1] < kept[2]  # layer 1's standardized scores are mostly low
    assert sum(I - k for k in kept) == round(0.2 * 4 * I)


def test_unreachable_and_bad_ratio():
    lm = as_loaded(tiny("llama", layers=4), None)
    st = fake_stats(lm)
    imp = P.compute_importance("flap", lm, st)
    with pytest.raises(FuncnetError, match="unreachable"):
        P.select(lm, imp, 0.6, of="mlp", protect=(1, 1))  # only 2 of 4 layers are prunable
    with pytest.raises(FuncnetError, match="unreachable"):
        P.select(lm, imp, 0.1, of="mlp", protect=(2, 2))
    P.select(lm, imp, 0.45, of="mlp", protect=(1, 1))  # reachable
    for bad in (0, 1, -0.1, 1.5, None):
        with pytest.raises(FuncnetError):
            P.select(lm, imp, bad)
    with pytest.raises(FuncnetError):
        P.select(lm, imp, 0.2, of="everything")
    with pytest.raises(FuncnetError):
        P.select(lm, imp, 0.2, of="mlp", heads=True)  # heads need an attention-counting denominator


def test_keep_masks_threshold_rule_and_importance_plugin():
    model = tiny("qwen2", layers=4)
    lm = as_loaded(model, CharTok())
    rng = np.random.default_rng(0)
    masks = {i: rng.random(I) < 0.7 for i in range(4)}
    masks[2][:] = False  # at least one neuron survives
    res = P.prune(lm, None, method="fn-threshold", keep_masks=masks, calib=TEXTS, calib_tokens=100, protect=(1, 0))
    w = lm.adapter.neurons_per_layer(model)
    assert w[0] == I and w[1] == masks[1].sum() and w[2] == 1 and w[3] == masks[3].sum()
    np.testing.assert_array_equal(res.selection.keep_neurons[3], np.flatnonzero(masks[3]))
    assert res.report["ratio"] is None and res.report["achieved_ratio"] > 0
    model2 = tiny("qwen2", layers=4)
    imp = {i: np.arange(I, dtype=float) for i in range(4)}  # keep the highest indices
    res2 = P.prune(model2, 0.25, tokenizer=CharTok(), importance=imp, bias_compensation=False, protect=(0, 0),
                   allocation="uniform")
    assert res2.report["method"] == "fn"
    for i in range(4):
        kept = res2.selection.keep_neurons[i]
        np.testing.assert_array_equal(kept, np.arange(I - len(kept), I))


def test_fn_methods_need_networks_or_calibration_text():
    lm = as_loaded(tiny("llama"), CharTok())
    with pytest.raises(FuncnetError, match=r"needs functional networks \(networks=\) or calibration text"):
        P.prune(lm, 0.2, method="fn", score="max_abs_z", networks=None, bias_compensation=False, protect=(0, 0))
    with pytest.raises(FuncnetError, match="networks file not found"):
        P.prune(lm, 0.2, method="fn", networks="x.json", bias_compensation=False, protect=(0, 0))


def test_prune_end_to_end_report():
    model = tiny("gemma3", layers=3)
    lm = as_loaded(model, CharTok())
    res = P.prune(lm, 0.3, of="attn+mlp", method="wanda-sp", calib=TEXTS, calib_tokens=120, heads=True,
                  protect=(1, 0))
    r = res.report
    for k in ("method", "ratio", "denominator", "achieved_ratio", "kept_neurons_per_layer", "kept_heads",
              "calibration", "params_before", "params_after", "bias_compensation", "protected_layers", "seed",
              "funcnet_version", "allocation"):
        assert k in r
    assert r["allocation"] == "uniform" and r["protected_layers"] == [0]
    assert abs(r["achieved_ratio"] * r["params_before"]["attn+mlp"] - 0.3 * r["params_before"]["attn+mlp"]) \
        <= lm.adapter.params_per_neuron(lm.layers[1])
    assert r["calibration"]["tokens"] == 120
    assert model.config.intermediate_sizes == r["kept_neurons_per_layer"]
    assert model.config.num_attention_heads_per_layer[0] == NH
    assert "pruned" in "\n".join(summary_lines(r)) or "params" in "\n".join(summary_lines(r))
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(2, V, (1, 8))).logits).all()


# ------------------------------------------------------------------------------------------ method registry
MATRIX_CAL = dict(calib_tokens=96, max_length=32, batch_size=4)
MATRIX_TEXTS = TEXTS * 2
FN_CASES = [None, "max_abs_z", "max_pos_z", "frequency", "fn-flap", "fn-flap-freq", "fn-wanda", "fn-cond"]
METHOD_CASES = ([("random", None), ("magnitude", None), ("wanda-sp", None), ("flap", None), ("flap", "cond")]
                + [("fn", s) for s in FN_CASES] + [("fn-threshold", None), ("obs", None), ("fn-obs", None)])


@pytest.fixture(scope="module")
def matrix():
    """A 3-layer tiny llama (dense, never pruned itself), its networks (planted key neurons, the
    model's identity, so the identity check is real) and statistics precomputed with covariance."""
    model = tiny("llama", layers=3)
    lm = as_loaded(copy.deepcopy(model), CharTok())
    nets = _toy_nets(lm, identity=lm.identity)
    stats = P.calibration_stats(lm, MATRIX_TEXTS, covariance=True, **MATRIX_CAL)
    return model, nets, stats


def _prune_copy(model, ratio, **kw):
    kw = {"tokenizer": CharTok(), "protect": (1, 0), **MATRIX_CAL, **kw}
    return P.prune(copy.deepcopy(model), ratio, **kw)


def test_registry_records_and_derived_tables():
    assert set(P.METHODS) == {"random", "magnitude", "wanda-sp", "flap", "fn", "fn-threshold", "obs", "fn-obs"}
    assert {m for m, _ in METHOD_CASES} == set(P.METHODS)  # the matrix below covers every method
    for name, score in P.METHODS.items():
        rec = P.get_method(name)
        assert rec.name == name and rec.score is score and P.get_method(score) is rec and rec.description
    assert P.METHODS["flap"] is P.imp_flap and P.METHODS.get("nope") is None
    assert set(P.NEEDS_CALIB) == {"wanda-sp", "flap", "obs", "fn-obs"} and "fn" not in P.NEEDS_CALIB
    assert dict(P.DEFAULT_ALLOCATION) == {"flap": "global", "fn": "global", "wanda-sp": "uniform",
                                          "magnitude": "uniform", "random": "uniform", "fn-threshold": "global",
                                          "obs": "global-raw", "fn-obs": "global-raw"}
    fn = P.get_method("fn")
    assert [s for s in FN_CASES if fn.stats_needed(score=s)] == [None, "fn-flap", "fn-flap-freq", "fn-wanda",
                                                                 "fn-cond"]
    assert [s for s in FN_CASES if fn.covariance_needed(score=s)] == ["fn-cond"]
    assert fn.networks_needed() and P.get_method("fn-threshold").networks_needed()
    assert not P.get_method("fn-threshold").exact_ratio and not P.get_method("fn-threshold").stats_needed()
    assert P.get_method("flap").covariance_needed(score="cond") and not P.get_method("flap").covariance_needed()
    assert not P.get_method("random").stats_needed() and not P.get_method("magnitude").stats_needed()
    with pytest.raises(FuncnetError, match="unknown pruning method 'nope'; choose from random, magnitude"):
        P.get_method("nope")


def test_register_method_drives_prune(matrix):
    """A user method: prune calibrates exactly when its record says so (a function of its options),
    uses its default allocation, and refuses duplicate names and bad records."""
    model, _, stats = matrix
    seen = []

    def low_mean_first(lm, stats, *, seed=0, heads=False, flip=False, **_):
        seen.append(stats)
        out = {}
        for i in range(lm.n_layers):
            s = np.arange(lm.adapter.n_neurons(lm.layers[i]), dtype=float) if stats is None else stats.mean(i)
            out[i] = -s if flip else s
        return out

    rec = P.register_method("low-mean", low_mean_first, needs_stats=lambda flip=False, **_: not flip,
                            default_allocation="uniform", description="mean activation")
    try:
        assert P.METHODS["low-mean"] is low_mean_first and P.get_method("low-mean") is rec
        assert "low-mean" not in P.NEEDS_CALIB and P.DEFAULT_ALLOCATION["low-mean"] == "uniform"
        res = _prune_copy(model, 0.25, method="low-mean", compensation="none", calib=MATRIX_TEXTS)
        assert seen[-1] is res.stats and res.stats is not None  # its record asked for statistics
        assert res.report["allocation"] == "uniform" and res.report["method"] == "low-mean"
        for i in (1, 2):
            kept = res.selection.keep_neurons[i]
            assert stats.mean(i)[kept].min() >= np.delete(stats.mean(i), kept).max()
        res = _prune_copy(model, 0.25, method="low-mean", compensation="none", flip=True)  # needs no calib
        assert seen[-1] is None and res.stats is None
        with pytest.raises(FuncnetError, match="pruning method 'low-mean' is already registered"):
            P.register_method("low-mean", low_mean_first)
        P.register_method("low-mean", low_mean_first, needs_stats=True, replace=True)
        assert "low-mean" in P.NEEDS_CALIB
        with pytest.raises(FuncnetError, match="method 'low-mean' with compensation 'bias' needs calibration text"):
            _prune_copy(model, 0.25, method="low-mean", compensation="bias")
    finally:
        del P.METHODS["low-mean"]
    assert "low-mean" not in P.METHODS
    with pytest.raises(FuncnetError, match="unknown allocation 'sideways'"):
        P.register_method("x", low_mean_first, default_allocation="sideways")
    with pytest.raises(FuncnetError, match="must be callable"):
        P.register_method("x", "not a function")
    # assigning into METHODS (the old plug-in) registers a method that needs nothing
    P.METHODS["legacy"] = low_mean_first
    try:
        assert not P.get_method("legacy").stats_needed() and P.DEFAULT_ALLOCATION["legacy"] == "global"
    finally:
        del P.METHODS["legacy"]


@pytest.mark.parametrize("score", ["fn-wanda", "fn-cond"])
def test_fn_scores_that_need_stats_calibrate_without_compensation(matrix, score):
    """The bug the name-based decision hid: method "fn" with score "fn-wanda" / "fn-cond" and no
    compensation skipped calibration and then failed for want of statistics although calib= was given."""
    model, nets, _ = matrix
    res = _prune_copy(model, 0.2, method="fn", score=score, compensation="none", calib=MATRIX_TEXTS, networks=nets)
    assert res.stats is not None and res.report["compensation"] == "none"
    assert res.report["calibration"]["tokens"] == MATRIX_CAL["calib_tokens"]
    assert sorted(res.stats.neuron_xtx) == ([1, 2] if score == "fn-cond" else [])  # fn-cond: its covariance
    lm = as_loaded(copy.deepcopy(model), CharTok())
    expect = P.compute_importance("fn", lm, res.stats, networks=nets, score=score).neurons
    for i in (1, 2):
        np.testing.assert_array_equal(res.importance.neurons[i], expect[i])


@pytest.mark.parametrize("comp", P.COMPENSATIONS)
@pytest.mark.parametrize("method,score", METHOD_CASES, ids=[f"{m}:{s}" if s else m for m, s in METHOD_CASES])
def test_every_method_and_compensation_with_calib_or_given_stats(matrix, method, score, comp):
    """Every method x compensation, with statistics computed inside prune (calib=) or given
    (stats=, with covariance): the exact ratio (fn-threshold: its masks' size), finite logits, and
    the same kept neurons and bit-identical weights both ways."""
    model, nets, stats = matrix
    ratio = None if method == "fn-threshold" else 0.3
    kw = dict(method=method, compensation=comp, networks=nets, **({"score": score} if score else {}))
    inside = _prune_copy(model, ratio, calib=MATRIX_TEXTS, **kw)
    given = _prune_copy(model, ratio, stats=stats, **kw)
    ids = torch.randint(2, V, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = model(ids).logits
    for res in (inside, given):
        r = res.report
        assert r["compensation"] == comp and r["method"] == method
        removed = r["params_before"]["mlp"] - r["params_after"]["mlp"]
        assert removed == res.selection.predicted_removed > 0
        if ratio is not None:
            assert abs(removed - ratio * r["params_before"]["mlp"]) <= 3 * H  # one neuron: gate, up, down
        assert r["kept_neurons_per_layer"][0] == I and min(r["kept_neurons_per_layer"]) < I
        with torch.no_grad():
            logits = res.model(ids).logits
        assert torch.isfinite(logits).all() and (logits - dense).abs().max() > 1e-4
    needs_stats = comp != "none" or P.get_method(method).stats_needed(**({"score": score} if score else {}))
    assert (inside.stats is not None) == needs_stats
    assert inside.report["kept_neurons"] == given.report["kept_neurons"]
    a, b = inside.model.state_dict(), given.model.state_dict()
    assert a.keys() == b.keys()
    if comp.startswith("ls"):  # inside: layer by layer, float32 covariance and solves on the device
        assert inside.report["layerwise"] and inside.report["calibration_passes"] >= 1
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    else:
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unsupported_combinations_raise_clear_errors(matrix):
    model, nets, stats = matrix
    lm = as_loaded(copy.deepcopy(model), CharTok())
    nocov = P.calibration_stats(lm, MATRIX_TEXTS, **MATRIX_CAL)
    other = _toy_nets(lm, identity="0123456789abcdef")
    cases = [
        (dict(method="flap", compensation="ls-fn", stats=stats),
         "compensation 'ls-fn' needs functional networks (networks=, --networks)"),
        (dict(method="flap", compensation="none"), "method 'flap' needs calibration text (calib=)"),
        (dict(method="fn", score="fn-wanda", compensation="none", networks=nets),
         "method 'fn' needs calibration text (calib=)"),
        (dict(method="fn", score="max_abs_z", compensation="none"),
         "method 'fn' needs functional networks (networks=) or calibration text (calib=)"),
        (dict(method="flap", compensation="ls", stats=nocov), "compensation 'ls' needs calibration statistics "
                                                             "recorded with covariance=True"),
        (dict(method="flap", score="cond", compensation="bias", stats=nocov),
         "method 'flap' with score 'cond' needs calibration statistics recorded with covariance=True"),
        (dict(method="fn", score="fn-cond", compensation="none", stats=nocov, networks=nets),
         "method 'fn' with score 'fn-cond' needs calibration statistics recorded with covariance=True"),
        (dict(method="fn", stats=stats, networks=nets, heads=True, of="attn+mlp", compensation="bias"),
         "method 'fn' gives no head importance; run without heads"),
        (dict(method="fn", stats=stats, networks=other), "these networks were computed on another model"),
        (dict(method="flap", stats=stats, networks=other, compensation="ls-fn"),
         "these networks were computed on another model"),
        (dict(method="nope", stats=stats), "unknown pruning method 'nope'"),
        (dict(method="flap", stats=stats, compensation="magic"), "unknown compensation 'magic'"),
    ]
    for kw, msg in cases:
        with pytest.raises(FuncnetError, match=re.escape(msg)):
            _prune_copy(model, 0.3, **kw)
    with pytest.raises(FuncnetError, match=re.escape("ratio must be in (0, 1), got 1.5")):
        _prune_copy(model, 1.5, method="flap", stats=stats)


def test_networks_checked_once_per_run(matrix, monkeypatch, tmp_path):
    """One identity check per prune run, against the dense model (also when ls-fn compensates in
    chunks that shrink layers in between, which a second check would refuse), and from a file too."""
    model, nets, stats = matrix
    calls = []
    check = FunctionalNetworks.check_model
    monkeypatch.setattr(FunctionalNetworks, "check_model", lambda self, m: (calls.append(1), check(self, m))[1])
    kw = dict(method="fn", score="fn-cond", compensation="ls-fn", networks=nets, calib=MATRIX_TEXTS)
    one = _prune_copy(model, 0.3, **kw)
    assert len(calls) == 1
    chunked = _prune_copy(model, 0.3, max_covariance_bytes=1, **dict(kw, score="fn-flap"))
    assert len(calls) == 2 and not chunked.stats.neuron_xtx
    ref = _prune_copy(model, 0.3, **dict(kw, score="fn-flap"))
    assert ref.report["kept_neurons"] == chunked.report["kept_neurons"]
    ids = torch.randint(2, V, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(chunked.model(ids).logits, ref.model(ids).logits, atol=1e-5, rtol=1e-5)
    path = nets.save(tmp_path / "nets.safetensors")
    calls.clear()
    from_file = _prune_copy(model, 0.3, **dict(kw, networks=str(path)))
    assert len(calls) == 1 and from_file.report["kept_neurons"] == one.report["kept_neurons"]
    # the stages alone (outside prune) still check what they are given
    calls.clear()
    P.compute_importance("fn", as_loaded(copy.deepcopy(model), CharTok()), stats, networks=nets)
    assert len(calls) == 1


def test_networks_computed_by_prune_need_no_check(monkeypatch, tmp_path):
    """prune(method="fn") without networks computes them from the model itself: no identity check."""
    monkeypatch.setenv("FUNCNET_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(FunctionalNetworks, "check_model", lambda self, m: calls.append(1))
    docs = [f"{t} {i}" for i in range(4) for t in TEXTS * 3]
    res = P.prune(tiny("llama", layers=3), 0.3, tokenizer=char_tokenizer(), method="fn", score="max_abs_z",
                  calib=docs, compensation="none", protect=(1, 0), n_groups=2, group_size=6, n_components=4)
    assert calls == [] and res.report["method"] == "fn"
    assert any((tmp_path / "stores").iterdir())  # the networks were recorded and decomposed here
    assert abs(res.report["achieved_ratio"] - 0.3) < 0.05


# ------------------------------------------------------------------------------------------ save / load
_CHECK = textwrap.dedent('''
    import sys, json, importlib.abc
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "funcnet" or name.startswith("funcnet."):
                raise ImportError("funcnet must not be needed")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModelForCausalLM
    results = {}
    for folder in sys.argv[1:]:
        m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, attn_implementation="eager").eval()
        ref = torch.load(folder + "/../" + folder.rstrip("/").split("/")[-1] + ".pt")
        with torch.no_grad():
            out = m(ref["ids"]).logits
        g = m.generate(ref["ids"], max_new_tokens=4, do_sample=False, pad_token_id=0)
        results[folder] = [float((out - ref["logits"]).abs().max()), int(g.shape[1]),
                           type(m).__name__, m.config.intermediate_sizes]
    assert not any(k == "funcnet" or k.startswith("funcnet.") for k in sys.modules)
    print(json.dumps(results))
''')


def test_saved_folder_loads_in_fresh_process_without_funcnet(tmp_path):
    folders, widths = [], {}
    for fam in sorted(FAMILIES):
        model = tiny(fam)
        lm = as_loaded(model, None)
        st = fake_stats(lm)
        sel = P.select(lm, P.compute_importance("flap", lm, st, heads=True), 0.3, of="attn+mlp",
                       protect=(0, 0), heads=True)
        P.apply_selection(lm, sel, st)
        out = P.save_pruned(model, None, tmp_path / "models" / fam, {"method": "flap"})
        ids = torch.randint(2, V, (1, 9), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            torch.save({"ids": ids, "logits": model(ids).logits}, tmp_path / "models" / f"{fam}.pt")
        folders.append(str(out))
        widths[str(out)] = model.config.intermediate_sizes
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["auto_map"]["AutoModelForCausalLM"].endswith("FuncnetPrunedForCausalLM")
        assert cfg["intermediate_sizes"] == widths[str(out)] and len(cfg["num_attention_heads_per_layer"]) == 2
        assert "funcnet" not in (out / P.MODELING_NAME).read_text().replace("funcnet_", "").replace(
            "Funcnet", "").split('"""', 2)[2]
        assert (out / P.REPORT_NAME).exists()
    script = tmp_path / "check.py"
    script.write_text(_CHECK)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hfmod")
    proc = subprocess.run([sys.executable, "-I", str(script), *folders], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for f in folders:
        diff, length, cls, w = res[f]
        assert diff < 1e-4, (f, diff)
        assert length == 13 and cls == "FuncnetPrunedForCausalLM" and w == widths[f]


def test_save_is_atomic_refuses_existing_and_load_pruned(tmp_path, monkeypatch):
    model = tiny("phi3")
    lm = as_loaded(model, None)
    st = fake_stats(lm)
    sel = P.select(lm, P.compute_importance("magnitude", lm, st), 0.2, protect=(0, 0))
    P.apply_selection(lm, sel, st)
    foreign = tmp_path / "m"
    foreign.mkdir()
    with pytest.raises(FuncnetError, match="exists"):
        P.save_pruned(model, None, foreign, {})
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(FuncnetError, match="will not replace"):  # a folder funcnet did not write
        P.save_pruned(model, None, foreign, {}, overwrite=True)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    out = P.save_pruned(model, None, tmp_path / "out", {"method": "first"})
    written = sorted(p.name for p in out.iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("funcnet.core.pruned._save_weights", boom)
    with pytest.raises(RuntimeError):
        P.save_pruned(model, None, out, {}, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == written  # untouched ...
    assert json.loads((out / P.REPORT_NAME).read_text())["method"] == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "out"]  # ... and no temp left
    monkeypatch.undo()
    P.save_pruned(model, None, out, {"method": "magnitude"}, overwrite=True)  # funcnet's own folder
    assert json.loads((out / P.REPORT_NAME).read_text())["method"] == "magnitude"
    # load_pruned needs a tokenizer in the folder: save a tiny one
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models as tm

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(tm.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, "[UNK]")),
                                  eos_token="b", unk_token="[UNK]")
    P.save_pruned(model, tok, out, {"method": "magnitude"}, overwrite=True)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hfmod"))
    lm2 = P.load_pruned(out)
    assert lm2.adapter.family == "phi3" and lm2.info["pruning_report"]["method"] == "magnitude"
    ids = torch.randint(2, V, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(lm2.model(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
    # funcnet.load_model recognises a pruned folder too (what `funcnet eval --model DIR` uses)
    lm3 = load_model(str(out))
    assert lm3.info["pruning_report"]["method"] == "magnitude"
    with torch.no_grad():
        torch.testing.assert_close(lm3.model(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(FuncnetError):
        P.load_pruned(tmp_path)
    # and `funcnet eval --model DIR` evaluates the pruned folder (the same logits as in memory)
    js = tmp_path / "eval.json"
    assert _cli(["eval", "--model", str(out), "--corpus", "builtin", "--domain", "prose", "--window", "16",
                 "--max-windows", "2", "--quiet", "--json", str(js)]) == 0
    ev = json.loads(js.read_text())
    assert ev["model"] == str(out) and np.isfinite(ev["domains"]["prose"]["ppl"])
    ids16 = lm3.tokenizer("a b a a b", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(lm3.model(ids16).logits, model(ids16).logits, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------ CLI
def _cli(argv):
    return cli_main(argv)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _cli(["prune", "--compensation", "magic", "--out", str(tmp_path / "o")])
    assert _cli(["prune", "--ratio", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "ratio" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    assert _cli(["prune", "--ratio", "0.2", "--out", str(tmp_path / "exists")]) == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli(["prune", "--method", "bogus", "--out", str(tmp_path / "o")])


# ------------------------------------------------------------------------------------------ real model
@pytest.mark.integration
def test_smollm2_flap_and_wanda_sp(tmp_path):
    lm = funcnet.load_model("smollm2-135m")
    st = P.calibration_stats(lm, load_corpus("builtin", split="calib"), calib_tokens=4096, batch_size=16,
                             covariance=True, covariance_layers=range(3, 28))
    assert st.n_tokens == 4096 and sorted(st.neuron_xtx) == list(range(3, 28))
    ids = lm.tokenizer("Once upon a time, there was a little", return_tensors="pt")["input_ids"]
    dense = copy.deepcopy(lm.model)
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    for method, model in (("flap", lm.model), ("wanda-sp", dense)):
        cur = as_loaded(model, lm.tokenizer)
        res = P.prune(cur, 0.2, of="mlp", method=method, stats=st, compensation="bias" if method == "wanda-sp" else None)
        r = res.report
        assert r["compensation"] == ("bias" if method == "wanda-sp" else "ls")
        ppn = cur.adapter.params_per_neuron(cur.layers[5])
        removed = r["params_before"]["mlp"] - r["params_after"]["mlp"]
        assert abs(removed - 0.2 * r["params_before"]["mlp"]) <= ppn
        w = r["kept_neurons_per_layer"]
        assert w[:3] == [1536] * 3 and w[-2:] == [1536] * 2 and min(w) < 1536
        if method == "wanda-sp":
            assert max(w[3:-2]) - min(w[3:-2]) <= 1  # uniform allocation
        else:
            assert max(w[3:-2]) - min(w[3:-2]) > 50  # adaptive widths
        out = P.save_pruned(cur, lm.tokenizer, tmp_path / method, r)
        lm2 = P.load_pruned(out)
        with torch.no_grad():
            a, b = model(ids).logits, lm2.model(ids).logits
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert lm2.model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
        on_disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        assert on_disk < 0.9 * dense_bytes


def test_layer_by_layer_equals_one_pass_every_family(family):
    """The layer-by-layer pass (layer inputs captured by recorders standing in for the decoder layers,
    then each layer run in turn with the arguments the model gave it: masks, rotary or sliding-window
    position embeddings) reproduces the dense model's statistics in every family: the same kept
    neurons and the same pruned model as the one-pass float64 path; every layer runs twice."""
    base = tiny(family, layers=3)
    kw = dict(tokenizer=CharTok(), method="flap", calib=TEXTS * 3, calib_tokens=160, max_length=32, protect=(1, 0))
    ref = P.prune(copy.deepcopy(base), 0.3, layerwise=False, **kw)
    lw = P.prune(copy.deepcopy(base), 0.3, max_covariance_bytes=1, **kw)  # a budget below one layer: two passes
    assert lw.report["layerwise"] and lw.report["calibration_passes"] == 2 and not ref.report["layerwise"]
    assert ref.report["kept_neurons"] == lw.report["kept_neurons"]
    for i in range(3):  # the selection's sums: bit for bit (the same forward, float64 sums)
        np.testing.assert_array_equal(ref.stats.neuron_sum[i], lw.stats.neuron_sum[i])
    ids = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ref.model(ids).logits, lw.model(ids).logits, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("method", ["wanda-sp", "flap/uniform", "obs/uniform"])
def test_one_pass_uniform_allocation_equals_two_passes(family, method):
    """With the counts known up front (uniform allocation), least-squares pruning runs in one pass:
    each layer is scored, chosen, solved and shrunk when the pass reaches it, with no layer's
    covariance kept beyond its own; the same kept neurons and the same model as the float64 path."""
    name, _, alloc = method.partition("/")
    base = tiny(family, layers=4)
    kw = dict(tokenizer=CharTok(), method=name, calib=TEXTS * 3, calib_tokens=160, max_length=32, protect=(1, 0),
              allocation=alloc or None, multiple_of=2)
    ref = P.prune(copy.deepcopy(base), 0.3, layerwise=False, **kw)
    seen = []
    orig = P.layerwise.layerwise_pass

    def spy(*a, **k):
        on = k["on_layer"]

        def wrapped(i, st):  # at most the current layer's covariance is handed over
            seen.append(sorted(st.neuron_cov))
            on(i, st)
        return orig(*a, **dict(k, on_layer=wrapped))

    import funcnet.prune.driver as D
    D.layerwise_pass, saved = spy, D.layerwise_pass
    try:
        one = P.prune(copy.deepcopy(base), 0.3, max_covariance_bytes=1, **kw)
    finally:
        D.layerwise_pass = saved
    assert one.report["calibration_passes"] == 1 and one.report["allocation"] == "uniform"
    assert all(c in ([], [i]) for i, c in enumerate(seen)) and len(seen) == 4
    assert one.report["kept_neurons"] == ref.report["kept_neurons"]
    assert one.report["achieved_ratio"] == ref.report["achieved_ratio"]
    ids = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ref.model(ids).logits, one.model(ids).logits, atol=2e-4, rtol=2e-4)


@pytest.mark.integration
def test_smollm2_layer_by_layer_same_neurons_and_perplexity():
    """Issue 14's check on the real model: at 20% and 50% of the MLP (flap, least squares, default
    calibration), layer-by-layer pruning keeps the same neurons as the earlier path (float64 covariance
    of every pruned layer on the host) and its perplexity on the built-in evaluation text is within 0.5%."""
    lm = funcnet.load_model("smollm2-135m")
    texts = load_corpus("builtin", split="eval").texts
    dense = copy.deepcopy(lm.model)
    for ratio in (0.2, 0.5):
        got = {}
        for lw in (False, True):
            cur = as_loaded(copy.deepcopy(dense), lm.tokenizer)
            res = P.prune(cur, ratio, method="flap", calib="builtin", layerwise=lw)
            assert res.report["layerwise"] is lw
            ppl = perplexity(cur, texts_or_corpus=texts, window=128, max_windows=64, progress=False).ppl
            got[lw] = (res.report["kept_neurons"], float(ppl))
        assert got[True][0] == got[False][0]
        assert abs(got[True][1] / got[False][1] - 1) < 0.005, (ratio, got[False][1], got[True][1])


def test_cli_prune_layer_by_layer_flags(tmp_path):
    """``funcnet prune`` prunes layer by layer by default (one calibration pass: the tiny model's
    covariances fit the budget); ``--no-layerwise``
    takes the earlier path; ``--solve-dtype float64`` reaches the solves; all give the same neurons."""
    from conftest import tiny_saved

    model = tiny_saved(tmp_path, "llama", n_layers=4)
    reports = {}
    for name, extra in (("lw", []), ("old", ["--no-layerwise"]), ("f64", ["--solve-dtype", "float64"])):
        out = tmp_path / name
        assert _cli(["prune", "--model", str(model), "--method", "flap", "--protect", "1,0", "--ratio", "0.3",
                     "--calib-tokens", "256", "--multiple-of", "1", "--out", str(out), *extra]) == 0
        reports[name] = json.loads((out / "pruning_report.json").read_text())
    assert reports["lw"]["layerwise"] and reports["f64"]["layerwise"] and not reports["old"]["layerwise"]
    assert reports["lw"]["calibration_passes"] == 1 and reports["old"]["calibration_passes"] == 1
    assert reports["lw"]["kept_neurons"] == reports["old"]["kept_neurons"] == reports["f64"]["kept_neurons"]
    with pytest.raises(SystemExit):
        _cli(["prune", "--model", str(model), "--solve-dtype", "float16", "--out", str(tmp_path / "x")])


@pytest.mark.parametrize("n_out", [3, 40])
def test_solve_ls_update_matches_ridge_regression(n_out):
    """The layer-by-layer solve (Jacobi-scaled Cholesky, no A formed when the outputs are fewer than the
    removed neurons) equals W_R A and W_R c of the float64 ridge regression, in both branches."""
    from funcnet.prune._linalg import _ridge_solve
    from funcnet.prune.layerwise import solve_ls_update

    g = torch.Generator().manual_seed(0)
    n = 24
    X = torch.randn(500, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)
    X[:, 5] = 0.0  # a dead neuron
    C = torch.cov(X.T, correction=0)
    mean = X.mean(0)
    W = torch.randn(n_out, n, generator=g, dtype=torch.float64)
    keep = torch.tensor([i for i in range(n) if i % 3])
    rem = torch.tensor([i for i in range(n) if i % 3 == 0])
    A = _ridge_solve(C[keep][:, keep], C[rem][:, keep], 0.3)
    want_w, want_b = W[:, rem] @ A, W[:, rem] @ (mean[rem] - A @ mean[keep])
    for dt, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        dW, db = solve_ls_update(C.to(dt), mean, W.to(dt), keep, rem, 0.3, dtype=dt)
        torch.testing.assert_close(dW, want_w, atol=tol * float(want_w.abs().max()), rtol=tol)
        torch.testing.assert_close(db, want_b, atol=tol * float(want_b.abs().max()), rtol=tol)


def test_default_method_follows_heads():
    """Without a method, prune() takes the recommended one: DEFAULT_METHOD for MLP neurons,
    DEFAULT_HEADS_METHOD with heads (recorded in the report)."""
    from funcnet._defaults import DEFAULT_HEADS_METHOD, DEFAULT_METHOD

    base = tiny("llama", layers=3)
    kw = dict(tokenizer=CharTok(), calib=TEXTS * 3, calib_tokens=160, max_length=32, protect=(1, 0))
    mlp = P.prune(copy.deepcopy(base), 0.2, **kw)
    both = P.prune(copy.deepcopy(base), 0.2, of="attn+mlp", heads=True, **kw)
    assert mlp.report["method"] == DEFAULT_METHOD and both.report["method"] == DEFAULT_HEADS_METHOD
    assert both.report["kept_heads"] is not None and both.report["heads"]
