"""Tests of the functional-network pruning scores that combine network membership with FLAP's
fluctuation (funcnet.networks.pruning_importance score="fn-flap" / "fn-flap-freq"), their plumbing
through funcnet.prune (stats passed to the score), and the benchmark's threshold bisection."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from funcnet import prune as P
from funcnet.errors import FuncnetError
from funcnet.core.models import as_loaded
from funcnet.networks import Decomposition, FunctionalNetworks
from funcnet.prune import DEFAULT_FN_SCORE, pruning_importance, pruning_keep_masks

os.environ.setdefault("FUNCNET_NO_PROGRESS", "1")
I, L = 16, 4


def tiny():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=8, intermediate_size=I, num_attention_heads=2, num_key_value_heads=1,
                        vocab_size=32, max_position_embeddings=32, num_hidden_layers=L)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def toy_networks(seed=0):
    rng = np.random.default_rng(seed)
    decs = []
    for g in range(2):
        for l in range(L):
            maps = rng.normal(size=(3, I)).astype(np.float32)
            maps[0, l] = 6.0  # one clearly key neuron per layer
            cols = np.stack([np.full(I, l), np.zeros(I), np.arange(I)], 1).astype(np.int32)
            decs.append(Decomposition(maps, cols, np.ones(3, np.float32), g, f"L{l:02d}"))
    return FunctionalNetworks(decs, ["neurons"], [I] * L)


def stats_for(lm, seed=0):
    rng = np.random.default_rng(seed)
    return P.CalibStats(100, {i: rng.normal(size=I) * 10 for i in range(L)},
                        {i: rng.uniform(1e3, 5e4, I) for i in range(L)}, identity={"spec": "fake"})


def test_fn_flap_is_wifv_times_network_score():
    lm = as_loaded(tiny(), None)
    nets, st = toy_networks(), stats_for(lm)
    wifv = P.imp_flap(lm, st).neurons
    mx = pruning_importance(nets, score="max_abs_z")
    got = pruning_importance(nets, lm, score="fn-flap", stats=st)
    for l in range(L):
        np.testing.assert_allclose(got[l], wifv[l] * mx[l])
    sq = pruning_importance(nets, lm, score="fn-flap", stats=st, z_power=2.0)
    np.testing.assert_allclose(sq[1], wifv[1] * mx[1] ** 2)
    freq = nets.key_frequency(threshold=3.6)
    gf = pruning_importance(nets, lm, score="fn-flap-freq", stats=st)
    np.testing.assert_allclose(gf[2], wifv[2] * (1 + freq[2]))
    assert freq[2][2] == 2  # key in one map of each group
    wanda = P.imp_wanda_sp(lm, st).neurons
    gw = pruning_importance(nets, lm, score="fn-wanda", stats=st)
    for l in range(L):
        np.testing.assert_allclose(gw[l], wanda[l] * mx[l])


def test_fn_flap_needs_model_and_stats_and_unknown_score():
    nets = toy_networks()
    with pytest.raises(FuncnetError, match="calibration statistics"):
        pruning_importance(nets, score="fn-flap")
    with pytest.raises(FuncnetError, match="unknown functional-network score"):
        pruning_importance(nets, score="nope")


def test_prune_passes_stats_to_fn_scores():
    lm = as_loaded(tiny(), None)
    nets, st = toy_networks(), stats_for(lm)
    res = P.prune(lm, 0.25, of="mlp", method="fn", networks=nets, stats=st, score="fn-flap", protect=(1, 0),
                  compensation="bias")
    expect = pruning_importance(nets, as_loaded(tiny(), None), score="fn-flap", stats=st)
    for l in range(1, L):
        np.testing.assert_allclose(res.importance.neurons[l], expect[l])
    assert abs(res.report["achieved_ratio"] - 0.25) < 0.05


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "prune_table.py"
    spec = importlib.util.spec_from_file_location("prune_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_threshold_bisection_hits_ratio_and_matches_reference_masks():
    bench = _bench()
    lm = as_loaded(tiny(), None)
    nets = toy_networks()
    masks, T_ = bench.threshold_masks(lm, nets, 0.3, "mlp", comp=False, protect=(1, 0))
    ref = pruning_keep_masks(nets, lm, threshold=T_)
    assert all(np.array_equal(masks[l], ref[l]) for l in ref)
    imp = P.imp_fn_threshold(lm, keep_masks=masks)
    sel = P.select(lm, imp, None, of="mlp", protect=(1, 0), bias_compensation=False)
    ppn = lm.adapter.params_per_neuron(lm.layers[0])
    assert abs(sel.predicted_removed - 0.3 * sel.denominator) <= ppn  # within one neuron


def test_bench_method_names():
    bench = _bench()
    assert bench.parse_method("fn-nocomp") == {"name": "fn-nocomp", "base": "fn", "score": None, "comp": "none"}
    assert bench.parse_method("fn:fn-flap+nocomp")["score"] == "fn-flap"
    assert bench.parse_method("fn:fn-flap+nocomp")["comp"] == "none"
    assert bench.parse_method("flap")["comp"] == "bias"
    assert bench.parse_method("flap+ls") == {"name": "flap+ls", "base": "flap", "score": None, "comp": "ls"}
    assert bench.parse_method("fn+ls-fn@0.1")["comp"] == "ls-fn" and bench.parse_method("fn+ls-fn@0.1")["ridge"] == 0.1
    assert bench.parse_method("fn:max_abs_z+ls")["score"] == "max_abs_z"
    assert bench.parse_method("fn:fn-cond/uniform+ls") == {"name": "fn:fn-cond/uniform+ls", "base": "fn",
                                                          "score": "fn-cond", "comp": "ls", "allocation": "uniform"}


def test_fn_default_score_uses_stats_when_given():
    lm = as_loaded(tiny(), None)
    nets, st = toy_networks(), stats_for(lm)
    dflt = pruning_importance(nets, lm, stats=st)
    named = pruning_importance(nets, lm, score=DEFAULT_FN_SCORE, stats=st)
    assert all(np.array_equal(dflt[l], named[l]) for l in range(L))
    pure = pruning_importance(nets)  # no model / stats: the pure network score
    assert all(np.array_equal(pure[l], pruning_importance(nets, score="max_abs_z")[l]) for l in range(L))


class _Tok:
    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (b % 30) for b in text.encode()]}


def test_prune_fn_without_compensation_still_calibrates_for_default_score():
    lm = as_loaded(tiny(), _Tok())
    nets = toy_networks()
    res = P.prune(lm, 0.25, method="fn", networks=nets, calib=["some text here. " * 20], calib_tokens=64,
                  bias_compensation=False, protect=(1, 0))
    assert res.stats is not None and res.report["bias_compensation"] is False
    with pytest.raises(FuncnetError, match="calibration"):
        P.prune(as_loaded(tiny(), _Tok()), 0.25, method="fn", networks=nets, bias_compensation=False)
    P.prune(as_loaded(tiny(), _Tok()), 0.25, method="fn", networks=nets, bias_compensation=False,
            score="max_abs_z", protect=(1, 0))  # the pure score needs no calibration
