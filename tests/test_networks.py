"""FunctionalNetworks: decomposition modes, thresholding rules, masks, time courses, save/load."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TEXTS, char_tokenizer, tiny_model
from funcnet.prune import pruning_importance, pruning_keep_masks
from funcnet.errors import FuncnetError
from funcnet.core.models import as_loaded
from funcnet.networks import Decomposition, FunctionalNetworks, decompose, estimate_fit_bytes, iou, make_groups
from funcnet.data.record import collect, record


@pytest.fixture(scope="module")
def lm():
    return as_loaded(tiny_model("llama", n_layers=3, inter=64, vocab=128), char_tokenizer())


@pytest.fixture(scope="module")
def store(lm, tmp_path_factory):
    texts = [t * 3 for t in TEXTS] * 4  # 24 documents
    return record(lm, texts, out=tmp_path_factory.mktemp("st") / "s", layers="all", max_length=64, progress=False)


def _toy(maps, layer=0, group=0, unit="L00"):
    cols = np.stack([np.full(maps.shape[1], layer), np.zeros(maps.shape[1]), np.arange(maps.shape[1])], 1)
    return Decomposition(np.asarray(maps, np.float32), cols.astype(np.int32), np.ones(len(maps), np.float32), group, unit)


def test_threshold_rules():
    maps = np.array([[5.0, -4.0, 1.0, 0.0, 3.7], [0.1, 0.2, -6.0, 4.0, 0.0]])
    nets = FunctionalNetworks([_toy(maps)], ["neurons"], [5])
    assert nets.key_mask(0, threshold=3.6).tolist() == [True, True, False, False, True]
    assert nets.key_mask(0, threshold=3.6, positive_only=True).tolist() == [True, False, False, False, True]
    assert nets.key_mask(1, method="top_fraction", fraction=0.2).tolist() == [False, False, True, False, False]
    # nilearn ratio rule: the ratio * n_columns largest |values| over all maps together (0.4 * 5 = 2: 6 and 5)
    assert nets.key_mask(0, method="ratio", ratio=0.4).tolist() == [True, False, False, False, False]
    assert nets.key_mask(1, method="ratio", ratio=0.4).tolist() == [False, False, True, False, False]
    with pytest.raises(FuncnetError, match="unknown threshold"):
        nets.key_mask(0, method="otsu")


def test_masks_union_counts_and_iou():
    d0 = _toy(np.array([[5.0, 0, 0, 4.0]]), layer=0)
    d1 = _toy(np.array([[0, 4.0, 0, 0], [0, 0, 0, 9.0]]), layer=1, unit="L01")
    nets = FunctionalNetworks([d0, d1], ["neurons"], [4, 4])
    assert nets.n_networks == 3
    m = nets.masks()
    assert m[0].tolist() == [True, False, False, True] and m[1].tolist() == [False, True, False, True]
    assert nets.counts_per_layer().tolist() == [2, 2]
    assert nets.to_layer_indices([1])[1].tolist() == [1]
    assert nets.global_ids(0).tolist() == [0, 3] and nets.global_ids(2).tolist() == [7]
    assert iou(np.array([1, 2, 3]), np.array([2, 3, 4])) == pytest.approx(0.5)
    score = nets.score_per_neuron()
    assert score[1].tolist() == [0, 4, 0, 9]
    assert nets.key_frequency()[1].tolist() == [0, 1, 0, 1]


def test_per_layer_decomposition_and_time_courses(lm, store, tmp_path):
    nets = decompose(store, mode="per-layer", n_components=4, n_init=3, method="reference", progress=False)
    assert nets.n_networks == 3 * 4 and [d.unit for d in nets.decompositions] == ["L00", "L01", "L02"]
    for d in nets.decompositions:
        assert d.maps.shape == (4, 64) and set(d.columns[:, 0]) == {int(d.unit[1:])}
        np.testing.assert_allclose(d.maps.mean(1), 0, atol=1e-4)  # z-scored maps
        np.testing.assert_allclose(d.maps.std(1), 1, atol=1e-3)
    tc = nets.time_courses(store, threshold=1.5)
    assert tc.shape == (store.n_tokens, 12)
    # time course = mean of the key neurons' activations
    pairs = nets.key_neurons(5, threshold=1.5)
    manual = np.mean([store.layer_float(int(l))[:, int(j)] for l, j in pairs], axis=0)
    np.testing.assert_allclose(tc[:, 5], manual, rtol=1e-4, atol=1e-5)
    mem = collect(lm, [t * 3 for t in TEXTS] * 4, layers="all", max_length=64)
    tc_mem = nets.time_courses(mem, [5], threshold=1.5)
    np.testing.assert_allclose(tc_mem[:, 0], tc[:, 5], rtol=2e-2, atol=2e-2)


def test_whole_window_and_groups(store):
    whole = decompose(store, mode="whole", n_components=5, n_init=2, progress=False)
    assert len(whole.decompositions) == 1 and whole.decompositions[0].maps.shape == (5, 3 * 64)
    win = decompose(store, mode="window", window=2, n_components=3, n_init=2, progress=False)
    assert [d.unit for d in win.decompositions] == ["L00-L01", "L01-L02"]
    grouped = decompose(store, mode="per-layer", layers=[1], n_components=3, n_init=2, n_groups=2, group_size=6,
                        progress=False)
    assert [d.group for d in grouped.decompositions] == [0, 1]
    with pytest.raises(FuncnetError, match="too short"):
        decompose(store, n_groups=10, group_size=10, progress=False)


def test_checkpoint_resume(store, tmp_path):
    ck = tmp_path / "ck"
    a = decompose(store, mode="per-layer", layers=[0], n_components=3, n_init=2, n_groups=2, group_size=5,
                  checkpoint=ck, progress=False)
    files = sorted(ck.glob("group_*.safetensors"))
    assert len(files) == 2
    mtimes = [f.stat().st_mtime_ns for f in files]
    b = decompose(store, mode="per-layer", layers=[0], n_components=3, n_init=2, n_groups=2, group_size=5,
                  checkpoint=ck, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # reused, not recomputed
    for da, db in zip(a.decompositions, b.decompositions):
        np.testing.assert_array_equal(da.maps, db.maps)


def test_save_load_and_model_check(lm, store, tmp_path):
    nets = decompose(store, mode="per-layer", layers=[0, 2], n_components=3, n_init=2, progress=False)
    p = nets.save(tmp_path / "nets.safetensors")
    back = FunctionalNetworks.load(p, model=lm)
    assert back.n_networks == nets.n_networks and back.params["n_components"] == 3
    np.testing.assert_array_equal(back.decompositions[1].maps, nets.decompositions[1].maps)
    assert back.model_identity == lm.identity
    other = as_loaded(tiny_model("llama", seed=9, n_layers=3, vocab=128), char_tokenizer())
    with pytest.raises(FuncnetError, match="another model"):
        FunctionalNetworks.load(p, model=other)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(FuncnetError, match="cannot read networks file"):
        FunctionalNetworks.load(tmp_path / "bad.safetensors")


def test_make_groups_deterministic():
    g1 = make_groups(range(20), 3, 5, seed=1)
    g2 = make_groups(range(20), 3, 5, seed=1)
    assert all((a == b).all() for a, b in zip(g1, g2))
    assert len(set(np.concatenate(g1))) == 15


def test_pruning_importance_and_masks():
    d0 = _toy(np.array([[5.0, 0, -4.0, 0], [0, 1.0, 0, 3.0]]), layer=1, unit="L01")
    nets = FunctionalNetworks([d0], ["neurons"], [4, 4, 4])
    imp = pruning_importance(nets)
    assert imp[1].tolist() == [5, 1, 4, 3] and imp[0].tolist() == [0, 0, 0, 0]

    pos = pruning_importance(nets, score="max_pos_z")
    assert pos[1].tolist() == [5, 1, 0, 3]
    freq = pruning_importance(nets, score="frequency", threshold=3.5)
    assert freq[1].argmax() == 0 and freq[1][2] > freq[1][3]  # key once each; ties broken by |z|
    masks = pruning_keep_masks(nets, threshold=3.6)
    assert masks[1].tolist() == [True, False, True, False]
    assert masks[0].all() and masks[2].all()  # layers not decomposed stay whole


def test_prune_fn_end_to_end(lm):
    import copy

    from funcnet.prune import prune

    texts = [t * 3 for t in TEXTS] * 4
    m = as_loaded(copy.deepcopy(lm.model), lm.tokenizer)
    res = prune(m, 0.25, of="mlp", method="fn", calib=texts, protect=(0, 0), n_groups=2, group_size=6,
                n_components=4, fn_max_length=48, calib_tokens=512)
    assert res.report["method"] == "fn" and abs(res.report["achieved_ratio"] - 0.25) < 0.02
    m2 = as_loaded(copy.deepcopy(lm.model), lm.tokenizer)
    res2 = prune(m2, None, of="mlp", method="fn-threshold", calib=texts, protect=(0, 0), n_groups=2, group_size=6,
                 n_components=4, fn_max_length=48, calib_tokens=512, threshold=2.0)
    kept = res2.report["kept_neurons_per_layer"]
    assert all(0 < k < 64 for k in kept)


def test_networks_cli_on_saved_tiny_model(tmp_path, capsys):
    from conftest import tiny_saved
    from funcnet.cli import main

    d = tiny_saved(tmp_path, "gpt2")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n\n".join(t * 3 for t in TEXTS * 3))
    out = tmp_path / "nets.safetensors"
    args = ["networks", "--model", str(d), "--corpus", str(texts), "--store", str(tmp_path / "st"), "-k", "3",
            "--n-init", "2", "--mode", "whole", "--threshold", "2", "--min-stability", "0.1", "--tol", "1e-3",
            "--workdir", str(tmp_path), "--memory-budget-gb", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "networks in 1 decompositions" in printed and "union of key neurons" in printed
    nets = FunctionalNetworks.load(out)
    assert nets.n_networks == 3 and nets.params["tol"] == 1e-3 and nets.params["workdir"] == str(tmp_path)
    assert main(args) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err


def test_store_documents_stream_as_subjects(store):
    """decompose() streams the store's documents (one subject each) instead of loading them:
    SubjectStream yields exactly each document's rows of the layers, side by side."""
    from funcnet.data.store import SubjectStream

    layers = store.layers[:2]
    srcs = [store.source(layers, "neurons")]
    stream = SubjectStream(srcs)
    chunks = list(stream.iter_chunks())
    full = np.concatenate([store.layer_float(l, "neurons") for l in layers], axis=1)
    rows = store.document_rows()
    assert len(chunks) == len(rows) > 1
    for a, r in zip(chunks, rows):
        np.testing.assert_array_equal(a, full[r])
    assert sum(len(c) for c in chunks) == store.n_tokens
    assert stream.shape == srcs[0].shape
    assert all(np.array_equal(a, b) for a, b in zip(srcs[0].subjects(), chunks))


# ----------------------------------------------------------------------------- device, memory budget, on-disk rows
def test_network_finding_follows_the_models_device(lm, monkeypatch):
    """networks_for_pruning runs the ICA where the model is unless told otherwise; a model that
    accelerate spread over several GPUs gets "cuda" (the per-layer fits round-robin over them)."""
    import funcnet.prune.network_scores as ns

    seen = {}

    def spy(store, **kw):
        seen.update(kw)
        return "nets"

    monkeypatch.setattr(ns, "decompose", spy)
    monkeypatch.setattr(ns, "ensure_store", lambda *a, **kw: "store")
    texts = [t * 2 for t in TEXTS] * 2
    assert ns.networks_for_pruning(lm, _corpus(texts), n_groups=2, group_size=4) == "nets"
    assert seen["device"] == "cpu"
    ns.networks_for_pruning(lm, _corpus(texts), n_groups=2, group_size=4, device="cuda:1")
    assert seen["device"] == "cuda:1"

    class Spread:
        hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": "cpu"}

    class One:
        hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "lm_head": 0}

        def get_input_embeddings(self):
            raise AttributeError

        def parameters(self):
            import torch
            return iter([torch.nn.Parameter(torch.zeros(1))])

    assert ns._ica_device(Spread()) == "cuda"
    assert ns._ica_device(One()) == "cpu"     # its parameters' device (here a CPU stand-in)


def _corpus(texts):
    from funcnet.data.corpus import Corpus, Document

    return Corpus("t", [Document(t, i, f"d{i}", "text") for i, t in enumerate(texts)])


def test_decompose_honours_device_and_memory_budget(store, monkeypatch):
    """decompose hands its device to every fit and bounds the concurrent CPU fits by its memory
    budget, with each fit's bytes estimated from its (tokens, neurons) shape."""
    import funcnet.networks.functional as fn

    seen = {}
    real = fn.fit_many

    def spy(inputs, params, **kw):
        seen.update(params=params, **kw)
        return real(inputs, params, **kw)

    monkeypatch.setattr(fn, "fit_many", spy)
    decompose(store, mode="per-layer", n_components=4, n_init=1, progress=False, memory_budget=12345)
    assert seen["params"]["device"] == "cpu" and seen["memory_budget"] == 12345
    n_docs = len(store.document_ids())
    want = estimate_fit_bytes(store.n_tokens, store.width(0), dict(n_components=4, n_init=1),
                              subject_tokens=store.n_tokens // n_docs)
    assert seen["fit_bytes"] == [want] * 3
    assert estimate_fit_bytes(store.n_tokens, 2 * store.width(0), dict(n_components=4, n_init=1)) > want


def test_whole_model_rows_past_the_memory_cache_are_decomposed_once(store, monkeypatch, tmp_path):
    """Whole-model CanICA past its in-memory row cache: every document is read and decomposed once for
    the reduction (the rows go to a float32 file in workdir, removed after), not once per randomized
    pass, and the networks are the same as with the rows in memory."""
    import funcnet.networks.canica as ica_mod
    from funcnet.data.store import SubjectStream

    passes = []
    real = SubjectStream.iter_chunks

    def counted(self):
        passes.append(1)
        return real(self)

    monkeypatch.setattr(SubjectStream, "iter_chunks", counted)
    kw = dict(mode="whole", n_components=5, n_init=2, reduction="randomized", progress=False)
    ref = decompose(store, **kw)
    monkeypatch.setattr(ica_mod, "_CACHE_BYTES", 0)
    passes.clear()
    disk = decompose(store, workdir=str(tmp_path), **kw)
    assert len(passes) == 2 and not list(tmp_path.iterdir())      # statistics + one decomposition pass
    np.testing.assert_array_equal(disk.decompositions[0].maps, ref.decompositions[0].maps)
