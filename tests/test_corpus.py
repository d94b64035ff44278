"""Tests of funcnet.corpus: built-in corpus, local files, wikitext2 failure modes, tokenization."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from funcnet.data import builtin as B
from funcnet.data import corpus as C
from funcnet.data import tokenization as T
from funcnet.data.corpus import Corpus, Document, load_corpus, tokenize
from funcnet.errors import FuncnetError

TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Functional networks of neurons are found with independent component analysis.",
    "def add(a, b):\n    return a + b\n",
    "Q: What is 37 * 12? A: 37 * 12 = 444.",
    "Assert statements are a convenient way to insert debugging assertions into a program.",
]


def _bpe(bos: bool = False):
    """A tiny byte-level BPE tokenizer trained in memory (any text encodes, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TRAIN_TEXT * 3, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    kw = dict(bos_token="<bos>") if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", **kw)


@pytest.fixture(scope="module")
def tok():
    return _bpe()


@pytest.fixture(scope="module")
def tok_bos():
    return _bpe(bos=True)


def _spans_ok(tc: C.TokenizedCorpus, corpus: Corpus, tokenizer) -> None:
    """Non-special tokens: the span's text is the decoded token; spans never go backwards."""
    special = T._special_ids(tokenizer)
    for s in tc.sequences:
        prev = {}
        for tid, d, (a, b) in zip(s.input_ids, s.doc_ids, s.char_spans):
            text = corpus[int(d)].text
            if int(tid) in special:
                assert (a, b) == (0, 0)
                continue
            assert 0 <= a < b <= len(text)
            piece = tokenizer.decode([int(tid)])
            if "\ufffd" not in piece:
                assert text[a:b] == piece
            assert a >= prev.get(int(d), 0)
            prev[int(d)] = a


# ---------------------------------------------------------------------------------------------
# built-in corpus
# ---------------------------------------------------------------------------------------------
def test_builtin_is_deterministic_and_fast():
    t = time.perf_counter()
    a = load_corpus("builtin")
    assert time.perf_counter() - t < 5
    B._builtin_documents.cache_clear()  # rebuild from scratch: same texts, same identity
    b = load_corpus("builtin")
    assert a.identity == b.identity
    assert a.texts == b.texts
    assert a.name == "builtin:all:calib"
    assert [d.doc_id for d in a] == list(range(len(a)))


def test_builtin_domains_present_and_sized():
    c = load_corpus("builtin", split="all")
    assert c.domains() == ["prose", "code", "math"]
    for dom in C.BUILTIN_DOMAINS:
        sub = c.by_domain(dom)
        assert len(sub) >= 100
        assert sub.n_chars >= 50_000
        assert {d.domain for d in sub} == {dom}
    assert load_corpus("builtin:code").domains() == ["code"]
    assert load_corpus("builtin", domain="math").domains() == ["math"]
    sources = [d.source for d in c]
    assert any(s.startswith("pydoc:topics/") for s in sources)
    assert any(s.startswith("docstring:json") for s in sources)
    assert any(s.startswith("stdlib:json/decoder.py") for s in sources)


@pytest.mark.parametrize("domain", [None, "prose", "code", "math"])
def test_splits_disjoint_and_cover_all(domain):
    calib = load_corpus("builtin", split="calib", domain=domain)
    ev = load_corpus("builtin", split="eval", domain=domain)
    every = load_corpus("builtin", split="all", domain=domain)
    assert not set(calib.texts) & set(ev.texts)
    assert not {d.source for d in calib} & {d.source for d in ev}
    assert sorted(calib.texts + ev.texts) == sorted(every.texts)
    frac = len(ev) / len(every)
    assert 0.1 < frac < 0.3


def test_split_keeps_docstring_with_its_code():
    """A top-level function's / class's docstrings (prose) and its code are in the same split."""
    code_split = {}
    for split in ("calib", "eval"):
        for d in load_corpus("builtin:code", split=split):
            rel, name = d.source[len("stdlib:"):].split("#")[0].split(":")
            module = rel[:-len(".py")].replace("/__init__", "").replace("/", ".")
            code_split[(module, name)] = split
    checked = 0
    for split in ("calib", "eval"):
        for d in load_corpus("builtin:prose", split=split):
            if not d.source.startswith("docstring:"):
                continue
            qual = d.source[len("docstring:"):]
            for module, name in code_split:
                if qual.startswith(f"{module}.{name}") and qual[len(module) + len(name) + 1:][:1] in ("", "."):
                    assert code_split[(module, name)] == split, d.source
                    checked += 1
    assert checked > 300


def test_math_questions_not_shared_between_splits():
    def questions(split):
        return {line for t in load_corpus("builtin:math", split=split).texts for line in t.splitlines()
                if line.startswith("Q: ")}

    qc, qe = questions("calib"), questions("eval")
    assert len(qc) > 1000 and len(qe) > 200
    assert not qc & qe


def test_math_answers_are_correct():
    import re

    checked = 0
    for t in load_corpus("builtin:math", split="all").texts:
        for m in re.finditer(r"Q: What is (\d+) \* (\d+)\?\nA: .* = (\d+)\.", t):
            assert int(m[1]) * int(m[2]) == int(m[3])
            checked += 1
        for m in re.finditer(r"Q: Solve for x: (\d+)x \+ (\d+) = (-?\d+)\.\nA: .*x = (-?\d+)\. ", t):
            assert int(m[1]) * int(m[4]) + int(m[2]) == int(m[3])
            checked += 1
    assert checked > 100


def test_min_chars_and_max_docs():
    short = load_corpus("builtin:prose", split="all", min_chars=1000)
    assert min(len(t) for t in short.texts) >= 1000
    assert len(short) < len(load_corpus("builtin:prose", split="all"))
    a = load_corpus("builtin", max_docs=50, seed=1)
    b = load_corpus("builtin", max_docs=50, seed=1)
    c = load_corpus("builtin", max_docs=50, seed=2)
    assert len(a) == 50 and a.identity == b.identity != c.identity
    full = load_corpus("builtin")
    order = [full.texts.index(t) for t in a.texts]
    assert order == sorted(order)  # original order kept
    assert len(a.domains()) == 3  # random sample spans the domains


def test_corpus_container_api():
    c = load_corpus(["alpha text", "  ", "beta text", "gamma text"])
    assert len(c) == 3 and c.texts == ["alpha text", "beta text", "gamma text"]
    assert [d.source for d in c] == ["list:0", "list:2", "list:3"]
    assert isinstance(c[1], Document) and c[1].doc_id == 1
    s = c.subset([2, 0])
    assert s.texts == ["gamma text", "alpha text"] and [d.doc_id for d in s] == [0, 1]
    assert c.subset(np.array([True, False, True])).texts == ["alpha text", "gamma text"]
    assert c[1:].texts == ["beta text", "gamma text"]
    assert s.identity != c.identity
    assert load_corpus(c) is c
    with pytest.raises(FuncnetError, match="empty"):
        c.subset([])
    with pytest.raises(FuncnetError, match="unknown domain 'code'.*text"):
        c.by_domain("code")


# ---------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------
def test_txt_blocks_and_per_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("First block,\nstill first.\n\n  \nSecond block.\n\n\n\nThird.\n")
    c = load_corpus(str(f))
    assert c.texts == ["First block,\nstill first.", "Second block.", "Third."]
    assert [d.domain for d in c] == ["file"] * 3
    assert c[0].source == "notes.txt#0"
    whole = load_corpus(f, per_file=True)
    assert len(whole) == 1 and "Second block." in whole[0].text
    # split does not apply to user files: they are taken whole
    assert load_corpus(f, split="eval").texts == c.texts


def test_jsonl(tmp_path):
    f = tmp_path / "data.jsonl"
    f.write_text("\n".join(json.dumps(o) for o in [{"text": "one", "id": 1}, {"text": ""}, {"text": "two"}]) + "\n\n")
    c = load_corpus(f)
    assert c.texts == ["one", "two"]
    assert c[1].source == "data.jsonl#line3"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(FuncnetError, match=r"bad.jsonl line 2: expected an object with a string 'text' field"):
        load_corpus(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"\n')
    with pytest.raises(FuncnetError, match="line 1: invalid JSON"):
        load_corpus(broken)


def test_folder_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed")
    (tmp_path / "a.jsonl").write_text('{"text": "from jsonl"}\n')
    (tmp_path / "c.txt").write_text("cee one\n\ncee two")
    (tmp_path / "ignored.csv").write_text("x,y")
    c = load_corpus(tmp_path)
    assert c.texts == ["from jsonl", "zed", "cee one", "cee two"]
    assert [d.source for d in c] == ["a.jsonl#line1", "b/z.txt#0", "c.txt#0", "c.txt#1"]
    assert c.identity == load_corpus(str(tmp_path)).identity


def test_file_errors(tmp_path):
    with pytest.raises(FuncnetError, match="corpus file not found: .*missing.txt"):
        load_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(FuncnetError, match="is empty"):
        load_corpus(empty)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00abc\x80")
    with pytest.raises(FuncnetError, match="cannot read corpus file .*bin.txt: not UTF-8"):
        load_corpus(binary)
    csv = tmp_path / "t.csv"
    csv.write_text("a,b")
    with pytest.raises(FuncnetError, match="unsupported corpus file type '.csv'"):
        load_corpus(csv)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FuncnetError, match="has no .txt or .jsonl files"):
        load_corpus(tmp_path / "nothing")


def test_unreadable_file(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    f = tmp_path / "secret.txt"
    f.write_text("hidden")
    f.chmod(0)
    try:
        if os.access(f, os.R_OK):  # running as root: permissions do not apply, simulate the OS error
            def denied(self, *a, **k):
                raise PermissionError(13, "Permission denied", str(self))

            monkeypatch.setattr(Path, "read_text", denied)
        with pytest.raises(FuncnetError, match="cannot read corpus file .*secret.txt: Permission denied"):
            load_corpus(f)
    finally:
        f.chmod(0o644)


def test_spec_errors():
    with pytest.raises(FuncnetError, match="unknown corpus spec 'nonsense'; valid forms: 'builtin'.*wikitext2"):
        load_corpus("nonsense")
    with pytest.raises(FuncnetError, match="unknown domain 'poetry'.*prose, code, math"):
        load_corpus("builtin:poetry")
    with pytest.raises(FuncnetError, match="unknown domain 'poetry'"):
        load_corpus("builtin", domain="poetry")
    with pytest.raises(FuncnetError, match="unknown domain 'code'"):
        load_corpus("builtin:prose", domain="code")
    with pytest.raises(FuncnetError, match="unknown split 'train'"):
        load_corpus("builtin", split="train")
    with pytest.raises(FuncnetError, match="empty"):
        load_corpus([])
    with pytest.raises(FuncnetError, match="not a string"):
        load_corpus(["ok", 3])
    with pytest.raises(FuncnetError, match="max_docs"):
        load_corpus("builtin", max_docs=0)
    with pytest.raises(FuncnetError, match="unknown wikitext2 part"):
        load_corpus("wikitext2:dev")
    for e in ("nonsense",):
        with pytest.raises(FuncnetError) as info:
            load_corpus(e)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# wikitext2
# ---------------------------------------------------------------------------------------------
def test_wikitext2_without_datasets(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(FuncnetError, match=r"needs the optional 'datasets' library: pip install"):
        load_corpus("wikitext2")


def test_wikitext2_offline_fails_fast(monkeypatch, tmp_path):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))  # installed or not
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no cached copy there
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    t = time.perf_counter()
    with pytest.raises(FuncnetError, match="wikitext2' is unavailable: the Hugging Face Hub is not reachable"):
        load_corpus("wikitext2:test")
    assert time.perf_counter() - t < 5


def test_wikitext2_loads_through_datasets(monkeypatch):
    """With the Hub reachable, articles of each requested part become documents (fake datasets)."""
    import sys
    import types

    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return {"text": ["", f" = {split.title()} article = \n", f" Some {split} text . \n", " = Next = \n", " More . \n"]}

    fake = types.ModuleType("datasets")
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(C, "_hub_reachable", lambda timeout=3.0: True)
    c = load_corpus("wikitext2", split="all")
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "train"), ("Salesforce/wikitext", "wikitext-2-raw-v1", "test")]
    assert c.name == "wikitext2:train+test" and c.domains() == ["wikitext2"]
    assert [d.source for d in c] == ["wikitext2:train/0", "wikitext2:train/1", "wikitext2:test/0", "wikitext2:test/1"]
    assert c[2].text == "= Test article =\nSome test text ."
    assert load_corpus("wikitext2:test").texts == c.texts[2:]

    def broken(*a, **k):
        raise ConnectionError("Couldn't reach the Hub\nretry later")

    fake.load_dataset = broken
    with pytest.raises(FuncnetError, match=r"^could not load wikitext2 \(ConnectionError: Couldn't reach the Hub\)$"):
        load_corpus("wikitext2")


def test_hub_probe_bounded_in_time(monkeypatch):
    """A connection that hangs (e.g. a stuck DNS lookup) still returns False within the timeout."""
    import socket

    def hang(*a, **k):
        time.sleep(30)

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", hang)
    t = time.perf_counter()
    assert C._hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - t < 2


def test_wikitext_article_grouping():
    lines = ["", " = Alpha = \n", "", " Alpha is a letter . \n", " = = History = = \n", " Old . \n",
             " = Beta = \n", " Beta too . \n"]
    docs = C._wikitext_documents(lines)
    assert docs == ["= Alpha =\nAlpha is a letter .\n= = History = =\nOld .", "= Beta =\nBeta too ."]


# ---------------------------------------------------------------------------------------------
# tokenization
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return load_corpus([
        "The quick brown fox jumps over the lazy dog. " * 3,
        "Functional networks of neurons: ICA finds them.",
        "Q: What is 37 * 12? A: 37 * 12 = 444. Ünïcödé ✓ done",
    ])


def test_documents_mode(tok, small):
    tc = tokenize(small, tok, max_length=16)
    assert len(tc) == 3 and tc.mode == "documents"
    for i, s in enumerate(tc.sequences):
        assert s.input_ids.dtype == np.int64 and s.doc_ids.dtype == np.int32
        assert s.positions.dtype == np.int32 and s.char_spans.dtype == np.int64 and s.char_spans.shape == (len(s), 2)
        assert (s.doc_ids == i).all()
        assert (s.positions == np.arange(len(s))).all()
        full = tok(small[i].text)["input_ids"]
        assert list(s.input_ids) == full[:16]
    assert len(tc.sequences[0]) == 16
    assert tc.n_tokens == sum(len(s) for s in tc.sequences)
    _spans_ok(tc, small, tok)


def test_documents_max_tokens_exact(tok, small):
    tc = tokenize(small, tok, max_length=16, max_tokens=20)
    assert tc.n_tokens == 20
    assert [len(s) for s in tc.sequences] == [16, 4]


def test_spans_cover_text(tok, small):
    """Without truncation the non-special spans tile each document exactly."""
    tc = tokenize(small, tok, max_length=1000)
    for s, d in zip(tc.sequences, small):
        pieces = "".join(d.text[a:b] for a, b in np.unique(s.char_spans, axis=0))
        assert pieces == d.text


def test_bos_tokenizer_special_span(tok_bos, small):
    tc = tokenize(small, tok_bos, max_length=8)
    bos = tok_bos.bos_token_id
    for s in tc.sequences:
        assert s.input_ids[0] == bos and tuple(s.char_spans[0]) == (0, 0) and s.positions[0] == 0
        assert s.is_special[0] and not s.is_special[1:].any()
    _spans_ok(tc, small, tok_bos)


def test_packed_windows(tok, small):
    tc = tokenize(small, tok, max_length=10, mode="packed")
    n_stream = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in small.texts) + len(small) - 1
    assert [len(s) for s in tc.sequences] == [10] * (n_stream // 10)
    ids = np.concatenate([s.input_ids for s in tc.sequences])
    docs = np.concatenate([s.doc_ids for s in tc.sequences])
    pos = np.concatenate([s.positions for s in tc.sequences])
    eos = tok.eos_token_id
    assert (np.diff(docs) >= 0).all() and set(docs.tolist()) == {0, 1, 2}
    # every document boundary is marked by one EOS token that ends the previous document
    for d in (0, 1):
        last = np.flatnonzero(docs == d)[-1]
        assert ids[last] == eos and docs[last + 1] == d + 1 and pos[last + 1] == 0
    # positions restart at 0 in each document and count up by one
    for d in (0, 1, 2):
        assert (pos[docs == d] == np.arange((docs == d).sum())).all()
    assert (np.concatenate([s.char_spans for s in tc.sequences])[ids == eos] == 0).all()
    _spans_ok(tc, small, tok)


def test_packed_max_tokens_and_single_short_window(tok, small):
    tc = tokenize(small, tok, max_length=8, mode="packed", max_tokens=20)
    assert [len(s) for s in tc.sequences] == [8, 8]
    short = tokenize(["tiny text"], tok, max_length=64, mode="packed")
    assert len(short) == 1 and 0 < len(short.sequences[0]) < 64
    assert tok.eos_token_id not in short.sequences[0].input_ids.tolist()


def test_packed_with_bos_prefix(tok_bos, small):
    tc = tokenize(small, tok_bos, max_length=8, mode="packed")
    bos = tok_bos.bos_token_id
    for s in tc.sequences:
        assert len(s) == 8
        assert s.input_ids[0] == bos and s.positions[0] == -1 and tuple(s.char_spans[0]) == (0, 0)
        assert s.doc_ids[0] == s.doc_ids[1]
        assert bos not in s.input_ids[1:].tolist()


def test_tokenization_errors(tok):
    with pytest.raises(FuncnetError, match="has no tokens after tokenization"):
        tokenize(Corpus("blank", [Document(" ", 0, "x", "text")]), _NoTokens(tok))
    with pytest.raises(FuncnetError, match="unknown tokenization mode 'windows'"):
        tokenize(["abc"], tok, mode="windows")
    with pytest.raises(FuncnetError, match="max_length"):
        tokenize(["abc"], tok, max_length=0)
    with pytest.raises(FuncnetError, match="max_tokens"):
        tokenize(["abc"], tok, max_tokens=0)


class _NoTokens:
    """A tokenizer wrapper that returns no tokens at all (e.g. a normalizer that deletes everything)."""

    is_fast = True
    name_or_path = "none"
    eos_token_id = None
    all_special_ids: list = []

    def __init__(self, tok):
        self.tok = tok

    def __len__(self):
        return len(self.tok)

    def __call__(self, texts, **kw):
        n = len(texts) if isinstance(texts, list) else 1
        return {"input_ids": [[] for _ in range(n)], "offset_mapping": [[] for _ in range(n)]}


def test_identity(tok, tok_bos, small):
    a = tokenize(small, tok, max_length=16)
    assert a.identity == tokenize(small, tok, max_length=16).identity
    assert a.identity != tokenize(small, tok, max_length=17).identity
    assert a.identity != tokenize(small, tok, max_length=16, mode="packed").identity
    assert a.identity != tokenize(small, tok, max_length=16, max_tokens=5).identity
    assert a.identity != tokenize(small.subset([0, 1]), tok, max_length=16).identity


def test_batches_padding_and_mask(tok, small):
    tc = tokenize(small, tok, max_length=12)
    lens = [len(s) for s in tc.sequences]
    batches = list(tc.batches(2, pad_token_id=tok.pad_token_id))
    assert [b[2] for b in batches] == [[0, 1], [2]]
    for ids, mask, idx in batches:
        assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
        assert ids.shape[1] == max(lens[i] for i in idx)
        for r, i in enumerate(idx):
            n = lens[i]
            assert mask[r, :n].eq(1).all() and mask[r, n:].eq(0).all()  # right padding
            assert ids[r, :n].tolist() == tc.sequences[i].input_ids.tolist()
            assert ids[r, n:].eq(tok.pad_token_id).all()
    with pytest.raises(FuncnetError, match="batch_size"):
        next(tc.batches(0, 0))


def test_metadata_concatenates(tok, small):
    tc = tokenize(small, tok, max_length=12)
    meta = tc.metadata()
    assert meta["input_ids"].shape == (tc.n_tokens,) and meta["char_spans"].shape == (tc.n_tokens, 2)
    assert meta["seq_ids"].tolist() == [i for i, s in enumerate(tc.sequences) for _ in range(len(s))]


def test_slow_tokenizer_fallback_matches_offsets(tok, small):
    """The incremental-decoding fallback reproduces the fast tokenizer's offsets."""
    special = T._special_ids(tok)
    for d in small:
        enc = tok(d.text, return_offsets_mapping=True)
        spans = T._offsets_by_decoding(tok, enc["input_ids"], d.text, special)
        assert spans.tolist() == [list(o) for o in enc["offset_mapping"]]


def test_builtin_tokenizes(tok):
    c = load_corpus("builtin", max_docs=40, seed=3)
    tc = tokenize(c, tok, max_length=64, mode="packed", max_tokens=2000)
    assert tc.n_tokens == (2000 // 64) * 64
    assert set(np.concatenate([s.doc_ids for s in tc.sequences]).tolist()) <= set(range(len(c)))
    _spans_ok(tc, c, tok)


# ---------------------------------------------------------------------------------------------
# real SmolLM2 tokenizer
# ---------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_smollm2_spans_reproduce_text():
    import funcnet

    tokenizer = funcnet.load_model("smollm2-135m").tokenizer
    corpus = load_corpus("builtin", split="eval", max_docs=120, seed=0)
    for mode in ("documents", "packed"):
        tc = tokenize(corpus, tokenizer, max_length=128, mode=mode)
        assert tc.n_tokens > 5000
        special = T._special_ids(tokenizer)
        n = matched = 0
        for s in tc.sequences:
            prev_end = {}
            for tid, d, (a, b) in zip(s.input_ids.tolist(), s.doc_ids.tolist(), s.char_spans.tolist()):
                if tid in special:
                    assert (a, b) == (0, 0)
                    continue
                text = corpus[d].text
                assert 0 <= a < b <= len(text)
                assert a >= prev_end.get(d, 0) - 4  # byte pieces of one character share its span
                prev_end[d] = b
                n += 1
                matched += tokenizer.decode([tid]) == text[a:b]
        assert matched / n > 0.99


def test_debian_corpus_reads_licences_and_readmes(tmp_path, monkeypatch):
    """'debian': one document per licence / README (gzipped too), duplicates and non-UTF-8 dropped,
    sorted by path; a clear error without the licence folder."""
    import gzip

    lic, doc = tmp_path / "common-licenses", tmp_path / "doc"
    (doc / "pkg-a").mkdir(parents=True)
    (doc / "pkg-b").mkdir(parents=True)
    lic.mkdir()
    (lic / "MIT").write_text("Permission is hereby granted, free of charge, " * 10)
    (lic / "MIT-copy").write_text("Permission is hereby granted, free of charge, " * 10)  # duplicate
    (lic / "BIN").write_bytes(b"\xff\xfe\x00binary" * 50)
    (doc / "pkg-a" / "README.gz").write_bytes(gzip.compress(("A README about package a. " * 20).encode()))
    (doc / "pkg-b" / "README.Debian").write_text("Debian notes for package b. " * 20)
    (doc / "pkg-b" / "changelog").write_text("not a README " * 40)
    monkeypatch.setattr(C, "DEBIAN_ROOTS", (lic, doc))
    c = load_corpus("debian")
    assert [d.source.rsplit("/", 2)[-2:] for d in c.documents] == [
        ["common-licenses", "MIT"], ["pkg-a", "README.gz"], ["pkg-b", "README.Debian"]]
    assert c.domains() == ["debian"] and c.texts[1].startswith("A README about package a.")
    monkeypatch.setattr(C, "DEBIAN_ROOTS", (tmp_path / "missing", doc))
    with pytest.raises(FuncnetError, match="'debian' corpus needs .*missing"):
        load_corpus("debian")
