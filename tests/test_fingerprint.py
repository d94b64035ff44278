"""Fingerprint tests: alignment across tokenizers, the null distribution, each perturbation family,
profile files and bad input. Tiny random-init models with tiny tokenizers built by ``tokenizers``."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from funcnet import fingerprint as F
from funcnet.core.models import LoadedModel
from funcnet.errors import FuncnetError
from funcnet.fingerprint import statistics as FS
from funcnet.fingerprint._compare import (
    _remove_identity,
    _within_type_permutation,
    _word_types,
)

PROBES = list(F.DEFAULT_PROBES[:6])
KW = dict(n_components=12, n_seeds=2, max_length=1024)


# ----------------------------------------------------------------------------- tiny tokenizers / models
def _fast(tok_obj):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok_obj, unk_token="[UNK]", pad_token="[PAD]")


def char_tokenizer(texts):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    chars = sorted({c for t in texts for c in t})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return _fast(tok)


def word_tokenizer(texts):
    from tokenizers import Tokenizer, models, pre_tokenizers

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    return _fast(tok)


_TOKS = {}


def get_tok(kind):
    if kind not in _TOKS:
        _TOKS[kind] = (char_tokenizer if kind == "char" else word_tokenizer)(list(F.DEFAULT_PROBES))
    return _TOKS[kind]


def tiny(seed=0, tok="word", layers=3, hidden=64, inter=128):
    import transformers as T

    tk = get_tok(tok)
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, intermediate_size=inter, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=len(tk), max_position_embeddings=2048, pad_token_id=0,
                        bos_token_id=None, eos_token_id=None)
    model = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15 if "embed" not in name else 1.0)
    return LoadedModel(model=model, tokenizer=tk, adapter=F.get_adapter(model) if hasattr(F, "get_adapter") else
                       __import__("funcnet").get_adapter(model), spec=f"tiny-{tok}-s{seed}")


def structured_tiny(seed=0, tok="word"):
    """``tiny`` with sparse, heavy-tailed token embeddings (6% of the entries non-zero, sd 4): planted
    non-Gaussian structure, as trained models have. On the plain Gaussian random-init models ICA has
    nothing to find: FastICA does not converge within its max_iter, the ~1e-6 float differences of a
    function-identical (permuted) copy change about half of the maps, and such a copy scores anywhere
    from 0.48 (called independent) to 1.0 depending on the permutation seed. On these, every copy
    tried scored 1.0."""
    lm = tiny(seed, tok)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = lm.model.model.embed_tokens.weight
        emb.copy_(torch.randn(emb.shape, generator=g) * 4.0 * (torch.rand(emb.shape, generator=g) < 0.06))
    return LoadedModel(model=lm.model, tokenizer=lm.tokenizer, adapter=lm.adapter, spec=f"structured-{tok}-s{seed}")


def derived(lm, fn, name):
    m = copy.deepcopy(lm.model)
    fn(m)
    return LoadedModel(model=m, tokenizer=lm.tokenizer, adapter=lm.adapter, spec=name)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The models here are tiny: a second torch thread only adds contention on a shared 2-core
    machine (this file: 45 s wall / 33 s CPU with 2 threads vs 16 s / 9 s with one, load average ~5)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def victim():
    lm = tiny(0)
    return lm, F.profile(lm, PROBES, **KW)


PROBES_B = list(F.DEFAULT_PROBES[4:])  # a second probe set (4 of its 6 texts are not in PROBES)


@pytest.fixture(scope="module")
def structured():
    """Two structured victims (seeds 21 and 22), on PROBES and on PROBES_B: [(lm, profile), ...]."""
    out = []
    for seed, probes in ((21, PROBES), (22, PROBES_B)):
        lm = structured_tiny(seed)
        out.append((lm, F.profile(lm, probes, **KW)))
    return out


# ----------------------------------------------------------------------------- alignment
def test_unit_spans_and_token_aggregation():
    text = "Hello, wonderful world!"
    w = F.unit_spans(text, "words")
    assert [text[a:b] for a, b in w] == ["Hello", ",", "wonderful", "world", "!"]
    assert len(F.unit_spans(text, "chars")) == len(text.replace(" ", ""))
    # tokens: BOS (empty span), "Hello", ",", " wonder", "ful", " world!" (one token covering two units)
    spans = np.array([[0, 0], [0, 5], [5, 6], [6, 13], [13, 17], [17, 23]])
    vals = np.array([100.0, 1, 2, 3, 5, 7])
    out = F.tokens_to_units(vals, spans, w)[:, 0]
    np.testing.assert_allclose(out, [1, 2, 4, 7, 7])  # BOS ignored, "wonderful" = mean(3, 5)
    # a unit no token covers (truncated) is NaN
    assert np.isnan(F.tokens_to_units(vals[:3], spans[:3], w)[3:, 0]).all()


def test_alignment_across_two_tokenizers_keeps_a_known_signal():
    from funcnet.data.corpus import Corpus, Document, tokenize

    ct, wt = get_tok("char"), get_tok("word")
    texts = PROBES[:3]
    corpus = Corpus("t", [Document(t, i, f"p{i}", "text") for i, t in enumerate(texts)])
    tc, tw = tokenize(corpus, ct, max_length=4096), tokenize(corpus, wt, max_length=4096)
    rng = np.random.default_rng(0)
    for p, text in enumerate(texts):
        units = F.unit_spans(text, "words")
        signal = rng.standard_normal(len(units))  # a known per-word signal
        outs = []
        for tok in (tc, tw):
            seq = tok.sequences[p]
            spans = np.asarray(seq.char_spans)
            assert len(seq.input_ids) != len(units) or tok is tw
            # each token carries the signal of the word it belongs to, plus token-level noise
            owner = np.array([np.searchsorted(units[:, 1], a, side="right") for a, _ in spans])
            vals = signal[np.minimum(owner, len(units) - 1)] + 0.05 * rng.standard_normal(len(spans))
            outs.append(F.tokens_to_units(vals, spans, units)[:, 0])
        a, b = outs
        assert len(a) == len(b) == len(units)  # equal-length, aligned on the same words
        assert len(tc.sequences[p].input_ids) > 2 * len(tw.sequences[p].input_ids)  # very different token counts
        ok = np.isfinite(a) & np.isfinite(b)
        assert ok.mean() > 0.95
        assert np.corrcoef(a[ok], signal[ok])[0, 1] > 0.99 and np.corrcoef(b[ok], signal[ok])[0, 1] > 0.99


def test_different_tokenizers_compare_on_words():
    """A char-level model and a word-level model: the comparison runs (shared words) and is not 'derived'."""
    lm = tiny(0)
    prof = F.profile(lm, PROBES[:2], n_components=8, n_seeds=1, max_length=1024)
    other = tiny(5, tok="char", layers=2)
    res = F.compare(prof, other, n_null=100)
    assert np.isfinite(res.score) and res.verdict != "derived"
    assert res.params["n_probes"] == 2
    assert res.suspect["n_units"] == 2 * 64 and res.victim["n_units"] == 3 * 64


# ----------------------------------------------------------------------------- null distribution
@pytest.mark.parametrize("kind,victim_seed,suspect_seed", [("plain", 0, 1), ("plain", 2, 3), ("plain", 4, 5),
                                                          ("structured", 0, 31), ("structured", 1, 32)])
def test_independent_random_models_are_independent(victim, structured, kind, victim_seed, suspect_seed):
    """Pairs of independently initialised tiny models (no model in two pairs): every pair is called
    independent, well below the thresholds, with an independence p-value far from its floor. The
    structured pairs share their embedding recipe (sparse, heavy-tailed), not their weights."""
    if kind == "plain":
        prof = victim[1] if victim_seed == 0 else F.profile(tiny(victim_seed), PROBES, **KW)
        suspect = tiny(suspect_seed)
    else:
        prof = structured[victim_seed][1]
        suspect = structured_tiny(suspect_seed)
    res = F.compare(prof, suspect, n_null=100)
    assert res.verdict == "independent", (victim_seed, suspect_seed, res.score, res.p_value)
    assert res.score < F.T_LOW, (victim_seed, suspect_seed, res.score)
    # the independence p-value does not sit at its floor for a negative
    assert res.p_value >= F.ALPHA, (victim_seed, suspect_seed, res.score, res.p_value)


def test_independence_reference_p_value():
    ref = [x[2] for x in F.REFERENCE_INDEPENDENT]
    p_mid, info = F.reference_p(float(np.mean(ref)))
    assert p_mid == pytest.approx(0.5) and info["n"] == len(ref) and info["df"] == len(ref) - 1
    # every reference pair, tested against the others, is far from significant
    for i, x in enumerate(ref):
        assert F.reference_p(x, ref[:i] + ref[i + 1:])[0] > 0.02
    assert F.reference_p(0.95)[0] < 1e-3 < F.reference_p(0.4)[0]
    p1, p2 = F.reference_p(0.6)[0], F.reference_p(0.7)[0]
    assert p2 < p1  # monotone in the score
    with pytest.raises(FuncnetError, match="at least 3"):
        F.reference_p(0.5, [0.1, 0.2])


# ----------------------------------------------------------------------------- statistics
@pytest.fixture(scope="module")
def perm_pair(structured):
    """A structured victim's profile and the profile of its permuted copy (same parameters)."""
    lm, prof = structured[0]
    sus = derived(lm, lambda m: (F.permute_neurons(m, 3), F.permute_heads(m, 3)), "perm")
    return prof, F.profile(sus, prof.probes, **KW)


def test_default_statistic_is_the_median_and_mean_has_no_shipped_reference(perm_pair):
    prof, sp = perm_pair
    res = F.compare(prof, None, suspect_profile=sp, n_null=100)
    m = res.thresholds["top"]
    absr = np.abs([p["rho"] for p in res.pairs])
    assert res.statistic == "median" and res.score == float(np.median(absr[:m]))
    assert res.reference["source"] == "REFERENCE_INDEPENDENT" and res.verdict == "derived"
    explicit = F.compare(prof, None, suspect_profile=sp, n_null=100, statistic="median")
    assert (explicit.score, explicit.p_value, explicit.p_chance, explicit.null) == \
        (res.score, res.p_value, res.p_chance, res.null)
    # the mean: same matching, another score, and no independence p-value against the median's reference
    mean = F.compare(prof, None, suspect_profile=sp, n_null=100, statistic="mean")
    assert mean.pairs == res.pairs and mean.score == pytest.approx(float(np.mean(absr[:m])))
    assert mean.score != res.score
    assert mean.p_value is None and "'median'" in mean.reference["note"]
    assert mean.verdict == "inconclusive"  # derived needs the independence p-value
    assert mean.to_dict()["statistic"] == "mean" and mean.to_dict()["p_value"] is None
    assert "statistic mean" in mean.summary() and "p-value  n/a" in mean.summary()
    # ... unless the caller gives reference scores of independent pairs measured with that statistic
    ref = [0.20, 0.25, 0.30, 0.22]
    given = F.compare(prof, None, suspect_profile=sp, n_null=100, statistic="mean", reference=ref)
    assert given.p_value == F.reference_p(given.score, ref)[0] and given.verdict == "derived"


def test_registered_statistic_scores_the_observed_and_every_null_draw(perm_pair):
    prof, sp = perm_pair
    calls = []

    def kth(absr, top):  # the |rho| that the top-th best matched pair reaches
        calls.append(top)
        return float(absr[top - 1])

    F.register_statistic("test-kth", kth)
    F.register_statistic("test-const", lambda absr, top: 0.75)
    try:
        assert {"median", "mean", "test-kth"} <= set(F.available_statistics())
        # word-identity control: raw score + score + one call per null draw; no control: score + null
        for control, extra in (("word-identity", 2), ("none", 1)):
            calls.clear()
            res = F.compare(prof, None, suspect_profile=sp, n_null=100, statistic="test-kth", control=control)
            m = res.thresholds["top"]
            assert res.null["n"] == 100 and len(calls) == res.null["n"] + extra and set(calls) == {m}
            assert res.statistic == "test-kth" and res.score == abs(res.pairs[m - 1]["rho"])
            assert res.p_value is None and res.verdict != "derived"
        # a constant statistic: every null draw ties the score, so nothing beats chance
        res = F.compare(prof, None, suspect_profile=sp, n_null=100, statistic="test-const", reference=[0.1, 0.2, 0.3])
        assert res.score == res.raw_score == 0.75 and res.null["mean"] == res.null["max"] == 0.75
        assert res.p_chance == 1.0 and res.verdict == "independent"
    finally:
        for name in ("test-kth", "test-const"):
            FS._STATISTICS.pop(name, None)
    assert "test-kth" not in F.available_statistics()


def test_statistic_registry_errors(victim):
    _, prof = victim
    with pytest.raises(FuncnetError, match="unknown statistic 'nope'"):
        F.compare(prof, "no-such-model", statistic="nope")  # checked before the suspect is loaded
    with pytest.raises(FuncnetError, match="built in"):
        F.register_statistic("median", lambda absr, top: 0.0)
    with pytest.raises(FuncnetError, match="function"):
        F.register_statistic("test-bad", 3)
    with pytest.raises(FuncnetError, match="non-empty"):
        F.register_statistic("", lambda absr, top: 0.0)
    F.register_statistic("test-dup", lambda absr, top: 0.0)
    try:
        with pytest.raises(FuncnetError, match="already registered"):
            F.register_statistic("test-dup", lambda absr, top: 1.0)
        F.register_statistic("test-dup", lambda absr, top: 1.0, replace=True)
        assert F.get_statistic("test-dup")(np.ones(3), 2) == 1.0
    finally:
        FS._STATISTICS.pop("test-dup", None)
    assert F.get_statistic("median") is F.median_statistic and F.get_statistic("mean") is F.mean_statistic
    assert F.median_statistic(np.array([0.9, 0.5, 0.1]), 2) == pytest.approx(0.7)
    assert F.mean_statistic(np.array([0.9, 0.6, 0.0]), 3) == pytest.approx(0.5)
    assert F.median_statistic(np.array([]), 3) == F.mean_statistic(np.array([]), 3) == 0.0


def _with_timecourses(prof, tc):
    return F.Profile(probes=prof.probes, timecourses=tc.astype(np.float32), unit_offsets=prof.unit_offsets,
                     unit_spans=prof.unit_spans, key_units=prof.key_units, params=prof.params,
                     model={**prof.model, "spec": "synthetic"}, meta=prof.meta)


def test_shared_token_identity_alone_is_not_derived(victim):
    """The hard negative of the suite (independent models trained on the same text) in its pure form:
    a suspect whose networks follow the *same function of token identity and position* as the
    victim's, but nothing else. Without the control it looks derived; with it, it must not."""
    _, prof = victim
    rng = np.random.default_rng(0)
    types, off = _word_types(prof), prof.unit_offsets
    X = prof.timecourses.reshape(-1, prof.timecourses.shape[-1]).astype(np.float64)
    ok = np.isfinite(X).all(0)
    explained = X.copy()
    explained[:, ok] = X[:, ok] - _remove_identity(X, types, off)[:, ok]  # identity + position part
    explained = np.where(np.isfinite(explained), explained, X)  # singleton words keep their value
    noise = rng.standard_normal(X.shape) * np.nanstd(X - explained, axis=1, keepdims=True)
    sus = _with_timecourses(prof, (explained + noise).reshape(prof.timecourses.shape))
    naive = F.compare(prof, None, suspect_profile=sus, n_null=100, control="none")
    assert naive.verdict == "derived" and naive.score > 0.6  # the failure mode the control fixes
    res = F.compare(prof, None, suspect_profile=sus, n_null=100)
    assert res.params["control"] == "word-identity"
    assert res.verdict == "independent" and res.score < F.T_LOW, (res.score, res.p_value)
    assert res.raw_score == pytest.approx(naive.score)
    # and the same suspect with the victim's context-dependent part restored is derived again
    back = F.compare(prof, None, suspect_profile=_with_timecourses(prof, prof.timecourses + 0.3 * noise.reshape(
        prof.timecourses.shape)), n_null=100)
    assert back.verdict == "derived" and back.p_value < F.ALPHA


def test_identity_control_removes_word_and_position_means():
    types = np.array([0, 1, 0, 2, 1, 0, 3])
    off = np.array([0, 4, 7])
    word = np.array([[1.0, -2.0, 5.0, 3.0]])[:, types]  # a pure function of the word type
    out = _remove_identity(word, types, off, position_bins=0)
    np.testing.assert_allclose(out[0, types != 2][types[types != 2] != 3], 0, atol=1e-12)
    assert np.isnan(out[0, types == 2]).all() and np.isnan(out[0, types == 3]).all()  # singletons: no residual
    ctx = np.array([[0.0, 1.0, 2.0, 0.0, 3.0, -1.0, 0.0]])  # varies within a type: survives
    res = _remove_identity(word + ctx, types, off, position_bins=0)
    assert np.nanstd(res) > 0.5
    perm = _within_type_permutation(types, np.random.default_rng(1))
    assert sorted(perm.tolist()) == list(range(7)) and (types[perm] == types).all()


@pytest.mark.parametrize("which,perm_seed", [(0, 3), (0, 7), (1, 5), (1, 9)])
def test_permuted_copy_is_derived_with_small_p(structured, which, perm_seed):
    """A neuron- and head-permuted copy (the same function) is derived, with margins, not just past
    the thresholds: two victim models, each on its own probe set, two permutation seeds each. The
    victims are ``structured_tiny`` models (see there why not the plain random-init ones)."""
    lm, prof = structured[which]
    sus = derived(lm, lambda m: (F.permute_neurons(m, perm_seed), F.permute_heads(m, perm_seed)), "perm")
    res = F.compare(prof, sus, n_null=100)
    assert res.verdict == "derived", (which, perm_seed, res.score, res.p_value)
    assert res.score > 0.95, (which, perm_seed, res.score)
    assert res.null["mean"] < 0.4 and res.null["n"] == 100 and "within-word-type" in res.null["by_kind"]
    assert res.null["max"] < res.score - 0.3, (res.null, res.score)  # far from the null, not at its edge
    assert res.p_chance == pytest.approx(1 / 101) and res.p_value < F.ALPHA / 10, res.p_value


def test_permutation_and_rescaling_preserve_the_function():
    lm = tiny(0)
    ids = torch.arange(2, 40)[None]
    ref = lm.model(ids).logits
    for fn in (F.permute_neurons, F.permute_heads, F.rescale_neurons):
        m = copy.deepcopy(lm.model)
        fn(m)
        torch.testing.assert_close(m(ids).logits, ref, atol=1e-4, rtol=1e-4)
        assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, lm.model.model.layers[0].mlp.up_proj.weight) \
            or fn is F.permute_heads


@pytest.mark.parametrize("family", ["rescale", "quantize", "prune20", "finetune"])
def test_perturbation_families_are_derived(victim, family):
    lm, prof = victim
    if family == "rescale":
        fn = lambda m: F.rescale_neurons(m, seed=1)  # noqa: E731
    elif family == "quantize":
        fn = F.quantize_int8
    elif family == "prune20":
        fn = lambda m: F.prune_lowest_norm(m, 0.2)  # noqa: E731
    else:
        fn = _finetune
    sus = derived(lm, fn, family)
    diff = sum(float((a - b).abs().sum().detach()) for a, b in zip(sus.model.parameters(), lm.model.parameters()))
    assert diff > 0  # the suspect really differs
    if family == "finetune":  # a real fine-tune: the loss on its text fell by more than half
        assert _FT_LOSS["after"] < 0.5 * _FT_LOSS["before"], _FT_LOSS
    res = F.compare(prof, sus, n_null=100)
    assert res.verdict == "derived", (family, res.score, res.p_value)


_FT_LOSS: dict = {}


def _finetune(model, steps=20, lr=3e-4):
    """20 AdamW steps on text the probes barely contain (lr 3e-4: a random-init model has no
    stable function to keep, and at 1e-3 twenty steps are closer to training it from scratch on
    one sentence than to a fine-tune; the loss drop on that text is checked by the test)."""
    tk = get_tok("word")
    ids = torch.as_tensor(tk("Cities should plant more trees, and the printing press was developed in Mainz. " * 4)
                          ["input_ids"])[None]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    with torch.no_grad():
        _FT_LOSS.update(before=losses[0], after=float(model(input_ids=ids, labels=ids).loss))
    return model


# ----------------------------------------------------------------------------- files and errors
def test_profile_round_trip(victim, tmp_path):
    _, prof = victim
    path = prof.save(tmp_path / "v.fnf")
    back = F.Profile.load(path)
    np.testing.assert_array_equal(back.timecourses, prof.timecourses)
    assert back.probes == prof.probes and back.params == prof.params and back.model == prof.model
    assert all(np.array_equal(a, b) for sa, sb in zip(back.key_units, prof.key_units) for a, b in zip(sa, sb))
    assert back.n_networks == 12 and back.n_seeds == 2
    assert path.stat().st_size < 1_000_000


def test_profile_file_errors(victim, tmp_path):
    _, prof = victim
    good = prof.save(tmp_path / "v.fnf").read_bytes()
    bad = tmp_path / "bad.fnf"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(FuncnetError, match="corrupted"):
        F.Profile.load(bad)
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(FuncnetError, match="corrupted|not a funcnet"):
        F.Profile.load(bad)
    # another format version
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    with safe_open(str(tmp_path / "v.fnf"), framework="numpy") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    save_file(load_file(str(tmp_path / "v.fnf")), str(bad), metadata=meta)
    with pytest.raises(FuncnetError, match="format version 99"):
        F.Profile.load(bad)
    with pytest.raises(FuncnetError, match="does not exist"):
        F.Profile.load(tmp_path / "nope.fnf")


def test_bad_input_errors(victim):
    lm, prof = victim
    with pytest.raises(FuncnetError, match="no words"):
        F.profile(lm, ["   ", "fine text here"], **KW)
    with pytest.raises(FuncnetError, match="tokenizes to nothing|tokenize to nothing"):
        F.profile(lm, ["\u4e16\u754c \u4e16\u754c"] * 2, **KW)  # only unknown... see below
    with pytest.raises(FuncnetError, match="too few tokens/units"):
        F.profile(lm, PROBES[:1], n_components=60, n_seeds=1, max_length=1024)
    with pytest.raises(FuncnetError, match="unknown signals"):
        F.profile(lm, PROBES, signals="weights")


def test_suspect_that_cannot_run(victim):
    _, prof = victim
    small = tiny(0)
    with torch.no_grad():  # a suspect whose vocabulary is too small for the probe token ids
        small.model.resize_token_embeddings(3)
    with pytest.raises(FuncnetError, match="suspect"):
        F.compare(prof, small, n_null=100)


def test_null_size_must_reach_alpha(victim):
    _, prof = victim
    with pytest.raises(FuncnetError, match="n_null"):
        F.compare(prof, None, suspect_profile=prof, n_null=50, alpha=0.01)


def test_result_json_and_plot(victim, tmp_path):
    lm, prof = victim
    res = F.compare(prof, derived(lm, F.permute_neurons, "perm"), n_null=100)
    d = json.loads(res.to_json(tmp_path / "r.json"))
    assert d["verdict"] == res.verdict and len(d["pairs"]) >= 12 and {"victim", "suspect", "rho"} <= set(d["pairs"][0])
    assert "top matched" in res.summary()
    out = F.plot_matched(res, tmp_path / "m.png")
    assert out.stat().st_size > 5000


def test_cli_profile_and_compare(tmp_path, monkeypatch, capsys):
    """The two commands end to end, on a structured victim and its permuted copy (one ICA seed of 8
    networks: on a plain random-init model that is a coin toss, see ``structured_tiny``)."""
    from funcnet import cli

    lm = structured_tiny(21)
    monkeypatch.setattr("funcnet.core.models.load_model", lambda spec, **kw: lm if spec == "v" else
                        derived(lm, F.permute_neurons, "s"))
    probes = tmp_path / "p.txt"
    probes.write_text("\n\n".join(PROBES[:4]))
    rc = cli.main(["fingerprint", "profile", "--model", "v", "--out", str(tmp_path / "v.fnf"), "--probes", str(probes),
                   "--n-components", "8", "--n-seeds", "1", "--max-length", "1024"])
    assert rc == 0 and (tmp_path / "v.fnf").exists()
    rc = cli.main(["fingerprint", "compare", str(tmp_path / "v.fnf"), "--model", "s", "--json", str(tmp_path / "r.json"),
                   "--n-null", "100"])
    out = capsys.readouterr().out
    assert rc == 0 and "verdict" in out and "DERIVED" in out
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["verdict"] == "derived" and d["statistic"] == "median" and d["score"] > 0.95, d["score"]
    assert d["null"]["max"] < d["score"] - 0.3 and d["p_chance"] == pytest.approx(1 / 101)
    (tmp_path / "c.fnf").write_bytes(b"garbage" * 10)
    rc = cli.main(["fingerprint", "compare", str(tmp_path / "c.fnf"), "--model", "s"])
    cap = capsys.readouterr()
    assert rc == 2 and "verdict" not in cap.out and "funcnet: error:" in cap.err


@pytest.mark.integration
def test_smollm2_permuted_is_derived(request):
    if "integration" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("real-model test: select with -m integration")
    import funcnet

    lm = funcnet.load_model("smollm2-135m")
    prof = F.profile(lm, F.DEFAULT_PROBES[:6], n_components=32, n_seeds=2, max_length=160)
    sus = derived(lm, lambda m: (F.permute_neurons(m, 1), F.permute_heads(m, 1), F.rescale_neurons(m)), "perm")
    res = F.compare(prof, sus, n_null=100)
    assert res.verdict == "derived" and res.p_value < 0.05 and res.score > 0.9


# ----------------------------------------------------------------------------- streamed profiles == the old in-RAM profile
def _old_profile_core(X, tok_spans, ranges, probes, *, k, n_seeds, threshold=3.6, units="words", seed=0):
    """The in-RAM profile of funcnet before streaming (verbatim from its _profile, minus bookkeeping):
    all layers' activations concatenated, z-scored, one CanICA fit per seed, key units, time courses."""
    from funcnet.networks.canica import CanICA

    use = tok_spans[:, 1] > tok_spans[:, 0]
    for a, b in ranges.values():
        nz = np.nonzero(use[a:b])[0]
        if len(nz) > 1:
            use[a + nz[0]] = False
    Xf = np.asarray(X, np.float32)
    Xu = Xf[use]
    mu, sd = Xu.mean(0), Xu.std(0)
    sd[sd < 1e-6] = 1.0

    def standardize(A):
        Z = (np.asarray(A, np.float32) - mu) / sd
        np.clip(Z, -8.0, 8.0, out=Z)
        return Z

    Z = standardize(Xu)
    maps = []
    for i in range(n_seeds):
        est = CanICA(n_components=k, n_init=1, fun="cube", method="reference", random_state=seed + 1000 * i,
                     standardize=False, dtype=torch.float32).fit(Z)
        maps.append(np.asarray(est.components_, np.float64))
    offsets = np.concatenate([[0], np.cumsum([len(F.unit_spans(t, units)) for t in probes])])
    tc = np.full((n_seeds, k, offsets[-1]), np.nan, np.float32)
    keys = []
    for s, M in enumerate(maps):
        ks, w = [], np.zeros((Z.shape[1], k), np.float32)
        for j in range(k):
            idx = np.nonzero(np.abs(M[j]) > threshold)[0]
            if len(idx) < 3:
                idx = np.argsort(-np.abs(M[j]))[:3]
            idx = np.sort(idx)
            ks.append(idx)
            w[idx, j] = np.sign(M[j][idx]) / len(idx)
        keys.append(ks)
        for p in range(len(probes)):
            a, b = ranges[p]
            t = (torch.from_numpy(standardize(Xf[a:b])) @ torch.from_numpy(w)).numpy()
            sp = tok_spans[a:b].copy()
            sp[~use[a:b]] = 0
            tc[s, :, offsets[p]:offsets[p + 1]] = F.tokens_to_units(t, sp, F.unit_spans(probes[p], units)).T
    return tc, keys


def _assert_same_profile(prof, tc, keys, atol=2e-4):
    assert prof.timecourses.shape == tc.shape
    np.testing.assert_array_equal(np.isnan(prof.timecourses), np.isnan(tc))
    if atol == 0:
        np.testing.assert_array_equal(prof.timecourses, tc)
    np.testing.assert_allclose(prof.timecourses, tc, atol=atol, equal_nan=True)
    for ks_new, ks_old in zip(prof.key_units, keys):
        for a, b in zip(ks_new, ks_old):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("signals,k", [("residual", 8), ("both", 6)])
def test_profile_equals_the_old_in_ram_profile(signals, k, in_memory, tmp_path):
    """A recording small enough for memory gives the old all-layers-in-RAM result bit for bit (the
    seeds now share one reduction); one streamed layer by layer through a temporary store on disk
    (removed after) gives the same key units and time courses within float32 rounding. "residual":
    fewer units (192) than tokens, the neuron Gram matrix; "both": more (576), the token Gram matrix
    accumulated layer by layer. (Both with FastICA runs that converge: k = 8 on "both" does not
    within max_iter, and such runs follow float rounding anywhere, in the old code too.)"""
    lm = structured_tiny(21)
    keep = {}
    prof = F.profile(lm, PROBES[:4], signals=signals, n_components=k, n_seeds=2, max_length=1024, keep=keep,
                     in_memory=in_memory, workdir=tmp_path)
    assert prof.meta["recording"] == ("memory" if in_memory else "disk")
    assert not list(tmp_path.iterdir())
    tc, keys = _old_profile_core(keep["X"], keep["token_spans"], keep["ranges"], PROBES[:4], k=k, n_seeds=2)
    _assert_same_profile(prof, tc, keys, atol=0 if in_memory else 2e-4)


def test_compare_equals_the_old_in_ram_compare():
    """compare() gives the old result (score, null, p-values, verdict) bit for bit."""
    lm = structured_tiny(21)
    sus = derived(lm, lambda m: F.rescale_neurons(m), "rescaled")
    kw = dict(n_components=8, n_seeds=2, max_length=1024)
    profs, olds = [], []
    for model in (lm, sus):
        keep = {}
        p = F.profile(model, PROBES[:4], keep=keep, **kw)
        tc, keys = _old_profile_core(keep["X"], keep["token_spans"], keep["ranges"], PROBES[:4], k=8, n_seeds=2)
        profs.append(p)
        olds.append(F.Profile(probes=p.probes, timecourses=tc, unit_offsets=p.unit_offsets, unit_spans=p.unit_spans,
                              key_units=keys, params=p.params, model=p.model))
    new = F.compare(profs[0], sus, n_null=100)
    old = F.compare(olds[0], None, suspect_profile=olds[1], n_null=100)
    assert new.verdict == old.verdict
    assert new.score == old.score and new.raw_score == old.raw_score and new.null == old.null
    assert new.p_chance == old.p_chance
