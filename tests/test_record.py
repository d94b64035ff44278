"""Recording into the activation store: exact values, padding excluded, resume after a kill, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import TEXTS, char_tokenizer, tiny_model, tiny_saved
from funcnet.errors import FuncnetError
from funcnet.core.models import as_loaded
from funcnet.data.record import collect, parse_layers, record
from funcnet.data.store import ActivationStore


@pytest.fixture
def lm():
    return as_loaded(tiny_model("llama", n_layers=3, vocab=128), char_tokenizer())


def test_record_matches_unpadded_forward(lm, tmp_path):
    st = record(lm, TEXTS, out=tmp_path / "s", signals="neurons,residual", layers="all", max_length=40,
                batch_size=4, chunk_tokens=64, dtype="float32", progress=False)
    assert st.complete and st.layers == [0, 1, 2] and st.signals == ["neurons", "residual"]
    meta = st.tokens
    n_expected = sum(min(40, len(t)) for t in TEXTS)  # char tokenizer, no BOS added by this tokenizer
    assert st.n_tokens == n_expected == len(meta["token_ids"])
    # every document recorded alone, without padding, gives the same rows as the batched store
    for doc in range(len(TEXTS)):
        rows = np.flatnonzero(meta["doc_ids"] == doc)
        ids = torch.as_tensor(np.asarray(meta["token_ids"])[rows])[None]
        got = {}
        layer = lm.adapter.get_layers(lm.model)[2]
        h = lm.adapter.register_signal_hook(layer, "neurons", lambda t: got.setdefault("x", t[0]))
        with torch.no_grad():
            lm.model(input_ids=ids)
        h.remove()
        np.testing.assert_allclose(st.document(doc, 2), got["x"].numpy(), rtol=1e-4, atol=1e-5)
    # char spans point at the characters of each token
    spans = np.asarray(meta["char_spans"])
    docs = np.asarray(meta["doc_ids"])
    for i in range(0, st.n_tokens, 7):
        a, b = spans[i]
        assert TEXTS[docs[i]][a:b] == lm.tokenizer.decode([int(meta["token_ids"][i])])


def test_float16_store_and_collect_agree(lm, tmp_path):
    st = record(lm, TEXTS, out=tmp_path / "s", layers=[0, -1], max_length=32, progress=False)
    mem = collect(lm, TEXTS, layers=[0, -1], max_length=32)
    assert st.layer(2).dtype == np.float16 and st.layers == [0, 2]
    np.testing.assert_allclose(st.layer_float(2), mem[(2, "neurons")], rtol=2e-3, atol=2e-3)
    chunks = list(st.iter_chunks(0, chunk_tokens=50))
    assert sum(len(c) for c in chunks) == st.n_tokens and all(c.dtype == np.float32 for c in chunks)
    src = st.source([0, 2], documents=[1, 2])
    assert src.shape == (int(np.isin(st.tokens["doc_ids"], [1, 2]).sum()), 128)
    assert [s.shape[0] for s in src.subjects()] == [min(32, len(TEXTS[1])), min(32, len(TEXTS[2]))]


def test_bfloat16_roundtrip(lm, tmp_path):
    st = record(lm, TEXTS[:2], out=tmp_path / "s", layers=[1], dtype="bfloat16", progress=False)
    mem = collect(lm, TEXTS[:2], layers=[1])
    np.testing.assert_allclose(st.layer_float(1), mem[(1, "neurons")], rtol=1e-2, atol=1e-2)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import funcnet.store as S
    from funcnet.data.record import record
    orig = S.ActivationStore.write_rows
    def write_rows(self, layer, signal_, start, rows):
        orig(self, layer, signal_, start, rows)
        if len(self.done_chunks()) >= 2 and layer == 1:   # mid-way through the third chunk
            os.kill(os.getpid(), signal.SIGKILL)
    S.ActivationStore.write_rows = write_rows
    texts = [l for l in open(sys.argv[2]).read().split("\\0")]
    record(sys.argv[1], texts, out=sys.argv[3], layers="all", max_length=40, batch_size=1, chunk_tokens=60,
           progress=False)
""")


def test_resume_after_kill(tmp_path):
    model_dir = tiny_saved(tmp_path, n_layers=3)
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\0".join(TEXTS))
    out = tmp_path / "store"
    env = dict(os.environ, FUNCNET_NO_PROGRESS="1")
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(model_dir), str(texts_file), str(out)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    partial = ActivationStore.open(out)
    done = partial.done_chunks()
    assert len(done) == 2 and not partial.complete
    with pytest.raises(FuncnetError, match="incomplete"):
        partial.layer(0)
    boundary = partial.chunks[max(done)].tok_stop
    before = np.load(out / "acts" / "L000.neurons.npy")[:boundary].copy()

    # resume: finished chunks must not be written again
    lm = as_loaded(__import__("funcnet").load_model(str(model_dir)))
    writes = []
    orig = ActivationStore.write_rows
    def spy(self, layer, signal, start, rows):
        writes.append(start)
        return orig(self, layer, signal, start, rows)
    ActivationStore.write_rows = spy
    try:
        st = record(lm, TEXTS, out=out, layers="all", max_length=40, batch_size=1, chunk_tokens=60,
                    resume=True, progress=False)
    finally:
        ActivationStore.write_rows = orig
    assert st.complete and min(writes) >= boundary
    np.testing.assert_array_equal(st.layer(0)[:boundary], before)
    fresh = record(lm, TEXTS, out=tmp_path / "fresh", layers="all", max_length=40, batch_size=1,
                   chunk_tokens=60, progress=False)
    for l in range(3):
        np.testing.assert_array_equal(st.layer(l), fresh.layer(l))

    # resuming with another corpus or another model is refused
    with pytest.raises(FuncnetError, match="different corpus"):
        record(lm, TEXTS[:3], out=out, layers="all", max_length=40, batch_size=1, chunk_tokens=60, resume=True)
    other = as_loaded(tiny_model("llama", seed=5, n_layers=3, vocab=128), char_tokenizer())
    with pytest.raises(FuncnetError, match="different model"):
        record(other, TEXTS, out=out, layers="all", max_length=40, batch_size=1, chunk_tokens=60, resume=True)


def test_existing_store_is_not_overwritten(lm, tmp_path):
    st = record(lm, TEXTS, out=tmp_path / "s", layers=[0], progress=False)
    before = (tmp_path / "s" / "manifest.json").read_text()
    with pytest.raises(FuncnetError, match="already exists"):
        record(lm, TEXTS[:2], out=tmp_path / "s", layers=[0], progress=False)
    assert (tmp_path / "s" / "manifest.json").read_text() == before
    st2 = record(lm, TEXTS[:2], out=tmp_path / "s", layers=[0], overwrite=True, progress=False)
    assert st2.n_tokens < st.n_tokens


def test_bad_inputs(lm, tmp_path):
    with pytest.raises(FuncnetError, match="unknown signal"):
        record(lm, TEXTS, out=tmp_path / "a", signals="neuronz")
    with pytest.raises(FuncnetError, match="out of range"):
        record(lm, TEXTS, out=tmp_path / "b", layers="7")
    with pytest.raises(FuncnetError):
        record(lm, [], out=tmp_path / "c")
    with pytest.raises(FuncnetError, match="not an activation store"):
        ActivationStore.open(tmp_path)
    assert parse_layers("0-1,-1", 3) == [0, 1, 2]
    with pytest.raises(FuncnetError, match="cannot read layers"):
        parse_layers("a-b", 3)


def test_many_small_chunks(lm, tmp_path):
    """Many chunks of a few batches each: all complete, manifest names the model and corpus."""
    st = record(lm, TEXTS * 4, out=tmp_path / "s", layers="all", max_length=16, batch_size=2, chunk_tokens=32,
                progress=False)
    assert len(st.chunks) > 4 and st.complete
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["model_identity"] == lm.identity and manifest["tokenized_identity"]


def test_record_offloaded_model_matches(tmp_path):
    """Weights offloaded by accelerate (on 'meta', moved in by hooks) record the same values."""
    import copy

    from accelerate import cpu_offload

    lm = as_loaded(tiny_model("llama", n_layers=3, vocab=128), char_tokenizer())
    ref = collect(lm, TEXTS, layers="all", max_length=32)
    off = copy.deepcopy(lm.model)
    cpu_offload(off, execution_device=torch.device("cpu"))
    assert next(off.parameters()).device.type == "meta"
    st = record(as_loaded(off, lm.tokenizer), TEXTS, out=tmp_path / "s", layers="all", max_length=32,
                dtype="float32", progress=False)
    for l in range(3):
        np.testing.assert_allclose(st.layer(l), ref[(l, "neurons")], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_record_smollm2(tmp_path):
    import funcnet

    lm = funcnet.load_model("smollm2-135m")
    st = record(lm, "builtin:prose", out=tmp_path / "s", layers=[0, 29], signals="neurons,residual",
                max_tokens=512, progress=False)
    assert st.n_tokens == 512 and st.width(29) == 1536 and st.width(0, "residual") == 576
    a = st.layer_float(29)
    assert np.isfinite(a).all() and a.std() > 0.1
    mem = collect(lm, "builtin:prose", layers=[29], max_tokens=512)
    np.testing.assert_allclose(a, mem[(29, "neurons")], rtol=2e-2, atol=2e-2)
    # char spans index the corpus text of each token
    from funcnet.data.corpus import load_corpus

    corpus = load_corpus("builtin:prose", split="calib")
    spans, docs = np.asarray(st.tokens["char_spans"]), np.asarray(st.tokens["doc_ids"])
    texts = [corpus.documents[d].text[a:b] for d, (a, b) in zip(docs[:50], spans[:50])]
    decoded = [lm.tokenizer.decode([int(t)]) for t in np.asarray(st.tokens["token_ids"])[:50]]
    assert sum(t == d for t, d in zip(texts, decoded)) >= 45


# ----------------------------------------------------------------------------- store dtype and overflow
def _loud(n_layers=3):
    """A tiny llama whose layer-1 MLP input is scaled by 300: its neurons reach ~1e5, past float16."""
    m = tiny_model("llama", n_layers=n_layers, vocab=128)
    with torch.no_grad():
        m.model.layers[1].post_attention_layernorm.weight.mul_(300)
    return as_loaded(m, char_tokenizer())


def test_float16_overflow_stops_naming_layer_and_value(tmp_path):
    """A float16 store refuses values past 65,504 (they would be stored as inf): one line naming the
    layer, the signal and the largest value, suggesting bfloat16; the store is left incomplete."""
    from funcnet.data.record import StoreOverflowError

    lm = _loud()
    top = float(np.abs(collect(lm, TEXTS[:2], layers=[1], max_length=32)[(1, "neurons")]).max())
    assert top > 65504
    with pytest.raises(StoreOverflowError, match=r"layer 1 \(neurons\) reach [\d,]+, past float16's largest value "
                                                 r"65,504; record again with --store-dtype bfloat16") as e:
        record(lm, TEXTS[:2], out=tmp_path / "s", store_dtype="float16", max_length=32, chunk_tokens=16,
               progress=False)
    assert "\n" not in str(e.value) and f"{top:,.0f}"[:3] in str(e.value)
    st = ActivationStore.open(tmp_path / "s")
    assert not st.complete and st.summary()["size_mb"] == 0.0
    with pytest.raises(FuncnetError, match="incomplete"):
        st.layer(0)
    # bfloat16 (funcnet record's default) keeps them, within bfloat16's precision
    st = record(lm, TEXTS[:2], out=tmp_path / "b", store_dtype="bfloat16", max_length=32, progress=False)
    a = st.layer_float(1)
    assert np.isfinite(a).all() and abs(np.abs(a).max() - top) / top < 1e-2
    # collect() in float16 checks the same way
    with pytest.raises(StoreOverflowError, match="layer 1"):
        collect(lm, TEXTS[:2], layers=[1], max_length=32, dtype="float16")


def test_store_dtype_argument_and_deprecated_dtype(lm, tmp_path):
    st = record(lm, TEXTS[:2], out=tmp_path / "a", layers=[1], store_dtype="bfloat16", progress=False)
    assert st.dtype == "bfloat16" and st.layer(1).dtype == np.uint16
    assert st.manifest["model_dtype"] == "float32"
    with pytest.warns(DeprecationWarning, match="store_dtype"):
        st = record(lm, TEXTS[:2], out=tmp_path / "b", layers=[1], dtype="float32", progress=False)
    assert st.dtype == "float32"
    assert record(lm, TEXTS[:2], out=tmp_path / "c", layers=[1], progress=False).dtype == "float16"  # library default


def test_store_size_counts_the_rows_written(lm, tmp_path):
    """summary()['size_mb'] / nbytes(): headers plus the rows of finished chunks (the files are
    allocated at full size up front); a finished store: exactly the files' sizes."""
    st = record(lm, TEXTS, out=tmp_path / "s", layers="all", max_length=40, chunk_tokens=64, progress=False)
    files = sum(f.stat().st_size for f in (tmp_path / "s" / "acts").glob("*.npy"))
    assert st.nbytes() == files
    done = sorted(st.done_chunks())
    (tmp_path / "s" / "progress.json").write_text(json.dumps({"done": done[:1]}))
    part = ActivationStore.open(tmp_path / "s")
    c0 = part.chunks[0]
    want = sum(part._offset(f) for f in (tmp_path / "s" / "acts").glob("*.npy")) + c0.n_tokens * 64 * 3 * 2
    assert part.nbytes() == want < files


def test_cli_record_store_dtype_and_model_dtype(tmp_path, capsys):
    """`funcnet record`: --store-dtype (default bfloat16) is the store's, --dtype the model's; a store
    recorded in bfloat16 is then found by `networks --store` without --dtype (manifest model_dtype)."""
    from funcnet.cli import main

    d = tiny_saved(tmp_path, "llama")
    assert main(["record", "--model", str(d), "--out", str(tmp_path / "s"), "--max-tokens", "64",
                 "--max-length", "32"]) == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (m["dtype"], m["model_dtype"]) == ("bfloat16", "float32")
    assert "bfloat16" in capsys.readouterr().out
    assert main(["record", "--model", str(d), "--out", str(tmp_path / "t"), "--max-tokens", "64", "--max-length", "32",
                 "--dtype", "bfloat16", "--store-dtype", "float32"]) == 0
    m = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert (m["dtype"], m["model_dtype"]) == ("float32", "bfloat16")
    from funcnet.core.models import load_model

    assert m["model_identity"] == load_model(str(d), dtype="bfloat16").identity != load_model(str(d)).identity
    assert main(["networks", "--model", str(d), "--store", str(tmp_path / "t"), "--out", str(tmp_path / "n.st"),
                 "-k", "2", "--n-init", "1"]) == 0
    assert main(["networks", "--model", str(d), "--dtype", "float32", "--store", str(tmp_path / "t"), "--out",
                 str(tmp_path / "n2.st"), "-k", "2", "--n-init", "1"]) == 2
    assert "recorded from another model" in capsys.readouterr().err


def test_rows_go_to_the_store_as_each_layer_produces_them(lm, tmp_path, monkeypatch):
    """The recorder hands a layer's rows to the store during the forward pass, before the next layer
    runs: the host holds one layer's rows of a batch, not the batch's rows of every layer."""
    events = []
    real = ActivationStore.write_rows

    def write_rows(self, layer, signal, offset, rows):
        events.append(("write", layer))
        return real(self, layer, signal, offset, rows)

    monkeypatch.setattr(ActivationStore, "write_rows", write_rows)
    layers = lm.adapter.get_layers(lm.model)
    hooks = [m.register_forward_pre_hook(lambda m, a, i=i: events.append(("start", i))) for i, m in enumerate(layers)]
    try:
        st = record(lm, TEXTS[:4], out=tmp_path / "s", layers="all", max_length=24, batch_size=2,
                    chunk_tokens=1000, store_dtype="float32", progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert st.complete and events.count(("write", 0)) == 2  # two batches
    per_batch = [("start", 0), ("write", 0), ("start", 1), ("write", 1), ("start", 2), ("write", 2)]
    assert events == per_batch * 2
    # and the rows written that way are the rows of an in-memory recording
    mem = collect(lm, TEXTS[:4], layers="all", max_length=24, dtype="float32")
    for layer in range(3):
        np.testing.assert_allclose(st.layer_float(layer), mem[(layer, "neurons")], rtol=1e-6, atol=1e-6)
