"""Tests of the reconstruction-aware selection ``obs`` (batched greedy OBS, funcnet.prune.obs), its
``global-raw`` allocation and the functional-network variant ``fn-obs``: tiny random-init models."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from conftest import TEXTS, char_tokenizer, tiny_model

from funcnet import prune as P
from funcnet.core import shrink
from funcnet.core.adapters import weight_out_in
from funcnet.core.models import as_loaded
from funcnet.errors import FuncnetError
from funcnet.networks import Decomposition, FunctionalNetworks
from funcnet.prune.obs import curve_scores, imp_fn_obs, imp_obs, obs_layer_order, obs_layer_path

CAL = dict(calib_tokens=400, max_length=32, batch_size=4)


@pytest.fixture(scope="module")
def setup():
    """A 3-layer tiny llama (64 neurons per layer; kept dense), its statistics with covariance, and
    networks with planted key neurons."""
    torch.manual_seed(0)
    model = tiny_model("llama", n_layers=3)
    lm = as_loaded(copy.deepcopy(model), char_tokenizer())
    stats = P.calibration_stats(lm, TEXTS * 6, covariance=True, **CAL)
    rng = np.random.default_rng(0)
    decs = []
    for layer in range(3):
        maps = rng.normal(size=(6, 64)).astype(np.float32)
        for c in range(6):  # a few planted key neurons per map
            maps[c, rng.choice(64, 6, replace=False)] = rng.uniform(4.0, 8.0, 6)
        cols = np.stack([np.full(64, layer), np.zeros(64, int), np.arange(64)], 1).astype(np.int32)
        decs.append(Decomposition(maps, cols, np.ones(6, np.float32), 0, f"L{layer}"))
    nets = FunctionalNetworks(decs, ["neurons"], [64] * 3, lm.identity)
    return model, stats, nets


def _lm(model):
    return as_loaded(copy.deepcopy(model), char_tokenizer())


def _problem(n=48, out=20, seed=0, dead=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(600, 10, generator=g) @ torch.randn(10, n, generator=g) + 0.5 * torch.randn(600, n, generator=g)
    X = (X * torch.rand(n, generator=g) * 3).double()
    if dead is not None:
        X[:, dead] = 2.0  # a neuron that never varies
    return torch.cov(X.T, correction=0), torch.randn(out, n, generator=g, dtype=torch.float64)


def test_greedy_error_and_weights_are_ls_compensation():
    """The path's cumulative error is the ridge objective of the kept set it reaches, its weights are
    W_K + W_R A of least-squares compensation (A = C_RK (C_KK + ridge diag C_KK)^-1), in float64 to
    1e-10 and float32 to 1e-5; a zero-variance neuron goes first at no cost."""
    C, W = _problem(dead=7)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        p = obs_layer_path(C, W, ridge=0.3, block=4, n_remove=30, dtype=dtype, weights=True)
        assert int(p.order[0]) == 7 and float(p.errors[0]) == 0.0
        assert len(p.order) == 30 and len(set(p.order.tolist())) == 30 and (np.diff(p.errors.numpy()) >= 0).all()
        keep = p.kept
        assert torch.equal(keep, torch.as_tensor(np.setdiff1d(np.arange(48), p.order.numpy())))
        rem = p.order.sort().values
        Ckk = C[keep][:, keep]
        A = C[rem][:, keep] @ torch.linalg.inv(Ckk + 0.3 * torch.diag(Ckk.diagonal()))
        W_ls = W[:, keep] + W[:, rem] @ A
        assert (p.weights.double() - W_ls).abs().max() <= tol * W_ls.abs().max()
        D = torch.zeros_like(W)
        D[:, keep], D[:, rem] = W_ls - W[:, keep], -W[:, rem]
        M = C + 0.3 * torch.diag(C.diagonal())
        assert abs(float(torch.trace(D @ M @ D.T)) - float(p.errors[-1])) <= tol * float(p.errors[-1])


def test_blocked_equals_unblocked_greedy():
    """block=1 is the plain sequential greedy; blocks chosen by the exact greedy on a pool of twice
    their size take the same order here; the default (each block's cheapest, in order of cost)
    stays within 5% of its error over the first half of the curve (strongly correlated neurons:
    rank 10 + noise)."""
    C, W = _problem(seed=1)
    o1, e1 = obs_layer_order(C, W, block=1, dtype=torch.float64)
    ob, eb = obs_layer_order(C, W, block=8, pool=16, dtype=torch.float64)
    assert torch.equal(o1, ob) and torch.allclose(e1, eb, rtol=1e-10)
    C32 = C.float()
    c0 = C32.clone()
    _, e8 = obs_layer_order(C32, W.float(), block=8, dtype=torch.float64)
    assert torch.equal(C32, c0)  # the caller's (float32, e.g. device) covariance is left as it was
    assert len(e8) == 47 and float(((e8 - e1).abs() / e1.clamp_min(1e-12))[:24].max()) < 0.05
    # the greedy beats removing by the initial (one-shot) cost in the same number
    d = C.diagonal()
    Pinv = torch.linalg.inv(C + 0.3 * torch.diag(d))
    one_shot = np.argsort(((W ** 2).sum(0) / Pinv.diagonal()).numpy(), kind="stable")[:24]
    keep = np.setdiff1d(np.arange(48), one_shot)
    M = C + 0.3 * torch.diag(d)
    kt, rt = torch.as_tensor(keep), torch.as_tensor(one_shot)
    err = float(torch.trace(W[:, rt] @ (M[rt][:, rt] - M[rt][:, kt] @ torch.linalg.solve(M[kt][:, kt], M[kt][:, rt]))
                            @ W[:, rt].T))
    assert float(e1[23]) < err


def test_shrunk_model_equals_ls_compensation(setup):
    """Pruning a layer with the greedy's own compensated weights (bias: what keeps the output mean)
    gives the logits of funcnet's ls compensation for the same kept set."""
    model, stats, _ = setup
    lm = _lm(model)
    ad = lm.adapter
    sel = P.select(lm, P.compute_importance("obs", lm, stats), 0.3, protect=(0, 0))
    ours = _lm(model)
    for i, layer in enumerate(ours.layers):
        W = weight_out_in(ad.down_proj(layer)).detach().double()
        n_rem = 64 - len(sel.keep_neurons[i])
        p = obs_layer_path(torch.as_tensor(stats.cov(i)), W, n_remove=n_rem, dtype=torch.float64, weights=True)
        if n_rem == 0:
            continue
        assert np.array_equal(p.kept.numpy(), sel.keep_neurons[i])  # the selection takes a prefix of the order
        mean = torch.as_tensor(stats.mean(i))
        bias = W @ mean - p.weights @ mean[p.kept]
        shrink.slice_mlp(ad, layer, p.kept, bias, p.weights - W[:, p.kept])
    shrink.update_config(ours)
    P.apply_selection(lm, sel, stats, compensation="ls")
    ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b, dense = lm.model(ids).logits, ours.model(ids).logits, model(ids).logits
    assert (a - dense).abs().max() > 1e-3
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_exact_ratio_global_raw_and_multiple_of(setup):
    model, stats, _ = setup
    assert P.get_method("obs").default_allocation == "global-raw"
    assert P.get_method("obs").covariance_needed() and P.get_method("fn-obs").networks_needed()
    for ratio, mult in ((0.3, 1), (0.5, 1), (0.3, 8)):
        res = P.prune(copy.deepcopy(model), ratio, tokenizer=char_tokenizer(), method="obs", stats=stats,
                      protect=(0, 0), multiple_of=mult)
        r = res.report
        removed = r["params_before"]["mlp"] - r["params_after"]["mlp"]
        assert r["allocation"] == "global-raw" and r["compensation"] == "ls"
        tol = (3 * 32 + 32) if mult == 1 else 4 * 8 * 3 * 32  # one neuron (+ a bias) / half a rounding block
        assert abs(removed - ratio * r["params_before"]["mlp"]) <= tol
        widths = r["kept_neurons_per_layer"]
        if mult > 1:
            assert all(w % mult == 0 for w in widths)
        # each layer loses a prefix of its greedy order; the widths differ (error per parameter decides)
        for i in range(3):
            s = res.importance.neurons[i]
            kept = res.selection.keep_neurons[i]
            if len(kept) < 64:
                assert s[kept].min() > np.delete(s, kept).max()
    assert len(set(widths)) > 1


def test_curve_scores_monotone_along_order_and_global_raw_ranks_raw():
    order = np.array([3, 0, 2])
    s = curve_scores(order, np.array([1.0, 1.5, 4.0]), 4, unit=2.0)
    assert s[3] == pytest.approx(0.5) and s[0] > s[3] and s[0] == pytest.approx(0.5) and s[2] == pytest.approx(1.25)
    assert s[1] > s[2]  # never removed: above every removed one
    # global-raw ranks the raw scores across layers; global standardizes per layer first
    lm = as_loaded(tiny_model("llama", n_layers=2), char_tokenizer())
    imp = P.Importance({0: np.linspace(1, 2, 64), 1: np.linspace(100, 200, 64)}, method="x")
    raw = P.select(lm, imp, 0.3, protect=(0, 0), allocation="global-raw")
    std = P.select(lm, imp, 0.3, protect=(0, 0), allocation="global")
    assert len(raw.keep_neurons[1]) == 64 and len(raw.keep_neurons[0]) < 64
    assert abs(len(std.keep_neurons[0]) - len(std.keep_neurons[1])) <= 1 and len(std.keep_neurons[1]) < 64


def test_layers_scoring_equals_full_scoring(setup):
    """``layers=`` scores one layer alone, also from statistics that hold only its covariance (what
    the layer-by-layer pass gives), equal to the full scoring of that layer."""
    model, stats, nets = setup
    lm = _lm(model)
    full = imp_obs(lm, stats)
    assert sorted(full.neurons) == [0, 1, 2]
    one = imp_obs(lm, stats, layers=[1])
    assert sorted(one.neurons) == [1]
    np.testing.assert_array_equal(one.neurons[1], full.neurons[1])
    only1 = dataclasses.replace(stats, neuron_xtx={1: stats.neuron_xtx[1]})
    np.testing.assert_array_equal(imp_obs(lm, only1).neurons[1], full.neurons[1])
    f_full = imp_fn_obs(lm, stats, networks=nets)
    np.testing.assert_array_equal(imp_fn_obs(lm, only1, networks=nets, layers=[1]).neurons[1], f_full.neurons[1])
    # a layer without its covariance (a protected one in the layer-by-layer pass): uncorrelated
    # neurons, removed in order of FLAP's fluctuation
    wifv = stats.var(0) * (weight_out_in(lm.adapter.down_proj(lm.layers[0])).detach().double() ** 2).sum(0).numpy()
    s0 = imp_obs(lm, only1, layers=[0]).neurons[0]
    assert np.array_equal(np.argsort(s0, kind="stable")[:-1], np.argsort(wifv, kind="stable")[:-1])
    with pytest.raises(FuncnetError, match="MLP neurons only"):
        imp_obs(lm, stats, heads=True)
    nocov = dataclasses.replace(stats, neuron_xtx={})
    with pytest.raises(FuncnetError, match="covariance"):
        imp_obs(lm, nocov)
    e = imp_obs(lm, stats, normalize="energy")
    assert not np.allclose(e.neurons[1], full.neurons[1])
    assert np.array_equal(np.argsort(e.neurons[1]), np.argsort(full.neurons[1]))  # same order within a layer


def test_fn_obs_designs_run_and_differ_from_obs(setup):
    model, stats, nets = setup
    lm = _lm(model)
    base = imp_obs(lm, stats)
    prior = imp_fn_obs(lm, stats, networks=nets, design="prior", beta=2.0)
    group = imp_fn_obs(lm, stats, networks=nets, design="group", group_bonus=1.0, block=8)
    assert prior.method == group.method == "fn-obs"
    key = nets.score_per_neuron()
    for i in range(3):
        assert not np.array_equal(np.argsort(prior.neurons[i]), np.argsort(base.neurons[i]))
        # protected key neurons go later than in plain obs (mean rank of the planted key neurons)
        k = key[i] > 3.6
        rank = lambda s: np.argsort(np.argsort(s))  # noqa: E731
        assert rank(prior.neurons[i])[k].mean() > rank(base.neurons[i])[k].mean()
    assert any(not np.array_equal(np.argsort(group.neurons[i]), np.argsort(base.neurons[i])) for i in range(3))
    res = P.prune(copy.deepcopy(model), 0.3, tokenizer=char_tokenizer(), method="fn-obs", stats=stats, networks=nets,
                  protect=(0, 0))
    assert res.report["method"] == "fn-obs" and res.report["allocation"] == "global-raw"
    with pytest.raises(FuncnetError, match="unknown fn-obs design"):
        imp_fn_obs(lm, stats, networks=nets, design="nope")
