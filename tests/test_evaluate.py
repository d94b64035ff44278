"""Tests of funcnet.evaluate: perplexity / accuracy against a hand-written reference loop on tiny
random-init models, window cutting, the lm-eval bridge (local 4-example task) and the CLI."""
from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

from funcnet import evaluate as ev
from funcnet.errors import FuncnetError
from funcnet.evaluate import EvalResult, evaluate_domains, perplexity, tokenize_stream, window_starts
from funcnet.intervene import inhibit, random_fraction
from funcnet.core.models import as_loaded

DATA = Path(__file__).parent / "data"
VOCAB = 260  # 256 byte symbols + <eos> (+ spare ids the model never sees)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "Perplexity is the exponential of the mean negative log-likelihood of the tokens.",
    "1 + 2 = 3; 4 * 5 = 20; 9 - 7 = 2.",
]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alpha = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alpha)}
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def _llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=48, vocab_size=VOCAB,
                                      n_positions=64)).eval()


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=40, num_attention_heads=4,
                                    vocab_size=VOCAB, max_position_embeddings=128, word_embed_proj_dim=32)).eval()


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, max_position_embeddings=256,
                           final_logit_softcapping=3.0, sliding_window=16)
    return Gemma3ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tok():
    return _tokenizer()


@pytest.fixture(scope="module")
def llama():
    return _llama()


def reference(model, tok, texts, window, stride=None):
    """Plain loop, one window at a time, full logits from model(...).logits: (ppl, acc, n)."""
    ids = tok("\n\n".join(texts))["input_ids"]
    stride = stride or window
    nll, correct, n, prev_end = 0.0, 0, 0, 0
    for start in range(0, len(ids) - window + 1, stride):
        x = torch.tensor([ids[start : start + window]])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0, :-1].double()
        y = x[0, 1:]
        first = max(prev_end - start, 1)  # first target position not scored before
        for p in range(first - 1, window - 1):
            nll -= float(torch.log_softmax(logits[p], -1)[y[p]])
            correct += int(int(logits[p].argmax()) == int(y[p]))
            n += 1
        prev_end = start + window
    return math.exp(nll / n), correct / n, n


def test_matches_reference_loop(llama, tok):
    r = perplexity(llama, tok, TEXTS, window=32, batch_size=3, progress=False)
    ppl, acc, n = reference(llama, tok, TEXTS, 32)
    assert isinstance(r, EvalResult)
    assert r.n_tokens == n and r.window == 32
    assert r.ppl == pytest.approx(ppl, rel=1e-5)
    assert r.accuracy == pytest.approx(acc, abs=1e-12)
    assert 0.0 <= r.accuracy <= 1.0
    assert r.nll == pytest.approx(math.log(r.ppl))
    assert 150 < r.ppl < 400  # random init over 257 used symbols: about uniform
    d = r.to_dict()
    assert d["ppl"] == r.ppl and d["n_windows"] == r.n_windows and "tokens_per_s" in d


def test_window_cutting_counts(llama, tok):
    n_stream = len(tok("\n\n".join(TEXTS))["input_ids"])
    assert tokenize_stream(tok, TEXTS).numel() == n_stream
    for window in (16, 32, 50):
        r = perplexity(llama, tok, TEXTS, window=window, progress=False)
        assert r.n_windows == n_stream // window
        assert r.n_tokens == r.n_windows * (window - 1)
    r = perplexity(llama, tok, TEXTS, window=16, max_windows=3, progress=False)
    assert (r.n_windows, r.n_tokens) == (3, 45)
    assert window_starts(100, 30) == [0, 30, 60]
    assert window_starts(100, 30, stride=20) == [0, 20, 40, 60]
    assert window_starts(10, 30) == []
    assert window_starts(90, 30) == [0, 30, 60] and window_starts(29, 30) == []


def test_overlapping_stride_matches_reference(llama, tok):
    r = perplexity(llama, tok, TEXTS, window=32, stride=12, batch_size=4, progress=False)
    ppl, acc, n = reference(llama, tok, TEXTS, 32, stride=12)
    assert r.n_tokens == n == 31 + (r.n_windows - 1) * 12
    assert r.ppl == pytest.approx(ppl, rel=1e-5) and r.accuracy == pytest.approx(acc)


def test_deterministic_and_batch_size_invariant(llama, tok):
    a = perplexity(llama, tok, TEXTS, window=24, batch_size=2, progress=False)
    b = perplexity(llama, tok, TEXTS, window=24, batch_size=2, progress=False)
    c = perplexity(llama, tok, TEXTS, window=24, batch_size=7, logits_chunk=5, progress=False)
    assert (a.ppl, a.accuracy, a.n_tokens) == (b.ppl, b.accuracy, b.n_tokens)
    assert c.ppl == pytest.approx(a.ppl, rel=1e-6) and c.n_tokens == a.n_tokens


@pytest.mark.parametrize("make", [_gpt2, _opt, _gemma3], ids=["gpt2", "opt", "gemma3-softcap"])
def test_other_families_match_reference(make, tok):
    model = make()
    assert ev._split_head(model) is not None  # the chunked head path is the one tested
    r = perplexity(model, tok, TEXTS, window=32, batch_size=4, progress=False)
    ppl, acc, n = reference(model, tok, TEXTS, 32)
    assert r.n_tokens == n
    assert r.ppl == pytest.approx(ppl, rel=1e-5) and r.accuracy == pytest.approx(acc)


def test_full_logits_path_agrees(llama, tok, monkeypatch):
    a = perplexity(llama, tok, TEXTS, window=32, progress=False)
    monkeypatch.setattr(ev, "_split_head", lambda model: None)
    b = perplexity(llama, tok, TEXTS, window=32, progress=False)
    assert b.ppl == pytest.approx(a.ppl, rel=1e-6) and b.accuracy == a.accuracy


def test_inputs_loaded_model_corpus_object_and_domains(llama, tok):
    lm = as_loaded(llama, tok)
    base = perplexity(llama, tok, TEXTS, window=32, progress=False)
    assert perplexity(lm, TEXTS, window=32, progress=False).ppl == base.ppl
    assert perplexity(lm, texts_or_corpus=TEXTS, window=32, progress=False).ppl == base.ppl

    class Corpus:
        texts = TEXTS

    assert perplexity(lm, None, Corpus(), window=32, progress=False).ppl == base.ppl
    res = evaluate_domains(lm, None, {"a": TEXTS, "b": TEXTS[:2] * 3}, window=16, progress=False)
    assert list(res) == ["a", "b"] and res["a"].n_windows == len(tokenize_stream(tok, TEXTS)) // 16
    assert res["b"].ppl != res["a"].ppl


def test_under_intervention(llama, tok):
    base = perplexity(llama, tok, TEXTS, window=32, progress=False)
    with inhibit(llama, random_fraction(llama, 0.5, seed=0)):
        hit = perplexity(llama, tok, TEXTS, window=32, progress=False)
        ppl, acc, _ = reference(llama, tok, TEXTS, 32)
    assert hit.ppl != base.ppl
    assert hit.ppl == pytest.approx(ppl, rel=1e-5)
    assert perplexity(llama, tok, TEXTS, window=32, progress=False).ppl == base.ppl


def test_accelerate_offloaded_model(llama, tok):
    """Weights offloaded by accelerate sit on 'meta': inputs go to the hook's execution device,
    and interventions still apply."""
    accelerate = pytest.importorskip("accelerate")
    sel = {0: [1, 2, 3], 1: list(range(10))}
    base = perplexity(llama, tok, TEXTS, window=32, progress=False)
    with inhibit(llama, sel):
        hit = perplexity(llama, tok, TEXTS, window=32, progress=False)
    off = _llama()
    accelerate.cpu_offload(off, execution_device=torch.device("cpu"))
    assert off.model.embed_tokens.weight.device.type == "meta"
    assert perplexity(off, tok, TEXTS, window=32, progress=False).ppl == pytest.approx(base.ppl, rel=1e-6)
    with inhibit(off, sel):
        assert perplexity(off, tok, TEXTS, window=32, progress=False).ppl == pytest.approx(hit.ppl, rel=1e-6)
    assert hit.ppl != base.ppl


def test_errors(llama, tok):
    with pytest.raises(FuncnetError, match="fewer than one window"):
        perplexity(llama, tok, ["tiny"], window=32, progress=False)
    with pytest.raises(FuncnetError, match="context"):
        perplexity(llama, tok, TEXTS, window=1000, progress=False)
    with pytest.raises(FuncnetError, match="empty"):
        perplexity(llama, tok, [], progress=False)
    with pytest.raises(FuncnetError, match="tokenizer"):
        perplexity(llama, None, TEXTS, progress=False)
    with pytest.raises(FuncnetError, match="at least 2"):
        perplexity(llama, tok, TEXTS, window=1, progress=False)


def test_cli_eval(llama, tok, tmp_path, monkeypatch, capsys):
    from funcnet.cli import main

    model_dir = tmp_path / "tiny"
    llama.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    fake = types.ModuleType("funcnet.corpus")
    calls = []

    def load_corpus(spec, split="eval", domain=None, max_docs=None):
        calls.append((spec, split, domain))
        c = types.SimpleNamespace()
        if domain is None:
            c.texts = TEXTS + TEXTS[::-1]
            c.domains = ["prose"] * len(TEXTS) + ["code"] * len(TEXTS)
        else:
            c.texts = TEXTS
        return c

    fake.load_corpus = load_corpus
    monkeypatch.setattr("funcnet.evaluate.load_corpus", load_corpus)
    out = tmp_path / "res.json"
    rc = main(["eval", "--model", str(model_dir), "--window", "16", "--max-windows", "4", "--json", str(out), "-q"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "domain" in table and "prose" in table and "code" in table
    data = json.loads(out.read_text())
    assert set(data["domains"]) == {"prose", "code"}
    assert data["domains"]["prose"]["n_windows"] == 4 and data["domains"]["prose"]["n_tokens"] == 60
    assert calls[0] == ("builtin", "eval", None)
    rc = main(["eval", "--model", str(model_dir), "--domain", "prose", "--window", "99999", "-q"])
    assert rc == 2 and "funcnet: error:" in capsys.readouterr().err


def test_cli_eval_builtin_corpus(llama, tok, tmp_path, capsys):
    """The real built-in corpus (evaluation split): one row per domain."""
    corpus = pytest.importorskip("funcnet.corpus")
    from funcnet.cli import main

    model_dir = tmp_path / "tiny"
    llama.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "res.json"
    assert main(["eval", "--model", str(model_dir), "--window", "32", "--max-windows", "2", "--json", str(out), "-q"]) == 0
    data = json.loads(out.read_text())
    assert list(data["domains"]) == list(corpus.load_corpus("builtin", split="eval").domains())
    assert all(d["n_windows"] == 2 and d["n_tokens"] == 62 for d in data["domains"].values())
    printed = capsys.readouterr().out
    assert all(name in printed for name in data["domains"])


# ------------------------------------------------------------------------------ lm-eval bridge
def test_lm_eval_missing_message(llama, tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(FuncnetError, match="pip install lm-eval"):
        ev.lm_eval_tasks(llama, tok, ["x"])


def test_lm_eval_bridge_local_task(llama, tok, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    jsonl = DATA / "lmeval" / "tiny_mc.jsonl"
    yaml = (DATA / "lmeval" / "funcnet_tiny_mc.yaml").read_text()
    (task_dir / "funcnet_tiny_mc.yaml").write_text(yaml.replace("tests/data/lmeval/tiny_mc.jsonl", str(jsonl.resolve())))
    kw = dict(include_path=str(task_dir), include_defaults=False, batch_size=4)
    res = ev.lm_eval_tasks(llama, tok, ["funcnet_tiny_mc"], **kw)
    acc = res["results"]["funcnet_tiny_mc"]["acc,none"]
    assert res["results"]["funcnet_tiny_mc"]["sample_len"] == 4 if "sample_len" in res["results"]["funcnet_tiny_mc"] else True
    assert acc in (0.0, 0.25, 0.5, 0.75, 1.0)
    # an intervened model evaluated through HFLM: the hook sees every forward pass
    from funcnet.core.adapters import get_adapter

    seen = []
    with inhibit(llama, {1: list(range(64))}):
        down = get_adapter(llama).down_proj(llama.model.layers[1])
        h = down.register_forward_pre_hook(lambda m, a: seen.append(bool(torch.all(a[0] == 0))))
        try:
            ev.lm_eval_tasks(llama, tok, "funcnet_tiny_mc", limit=2, **kw)
        finally:
            h.remove()
    assert seen and all(seen)
    with pytest.raises(FuncnetError, match="no lm-eval tasks"):
        ev.lm_eval_tasks(llama, tok, [], **kw)


@pytest.mark.integration
def test_smollm2_prose_perplexity_and_lesion():
    import pydoc_data.topics

    import funcnet

    lm = funcnet.load_model("smollm2-135m")
    texts = [pydoc_data.topics.topics[k] for k in ("strings", "numbers", "if")]
    base = perplexity(lm, texts, window=128, max_windows=8, progress=False)
    assert math.isfinite(base.ppl) and 5 < base.ppl < 200, base
    assert base.n_windows == 8 and base.n_tokens == 8 * 127
    with inhibit(lm, random_fraction(lm, 0.15, seed=0)):
        hit = perplexity(lm, texts, window=128, max_windows=8, progress=False)
    assert hit.ppl > base.ppl * 1.05, (base.ppl, hit.ppl)
    print(f"\nSmolLM2 prose ppl {base.ppl:.2f} acc {base.accuracy:.3f} ({base.tokens_per_s:.0f} tok/s); "
          f"15% random inhibited: ppl {hit.ppl:.2f} acc {hit.accuracy:.3f}")


def test_bos_tokenizer_gets_bos_in_every_window():
    """A tokenizer that adds BOS (like Gemma's) gets BOS at the start of every window."""
    import math

    from tokenizers import processors

    from conftest import char_tokenizer, tiny_model
    from funcnet.evaluate import perplexity

    tok = char_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    assert tok("ab")["input_ids"][0] == 1
    model = tiny_model("llama", vocab=128)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    res = perplexity(model, tok, [text], window=16, batch_size=3, progress=False)
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    n_win = ids.numel() // 16
    assert res.n_windows == n_win and res.n_tokens == n_win * 16
    nll = 0.0
    with torch.no_grad():
        for w in range(n_win):
            x = torch.cat([torch.tensor([1]), ids[w * 16:(w + 1) * 16]])[None]
            logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            nll -= logp.gather(1, x[0, 1:, None]).sum().item()
    assert math.isclose(res.nll, nll / (n_win * 16), rel_tol=1e-5)


def test_lm_eval_on_saved_pruned_model(llama, tok, tmp_path, monkeypatch):
    """A pruned model saved by funcnet and reloaded is evaluated by lm-eval-harness."""
    pytest.importorskip("lm_eval")
    import copy

    from funcnet.core.models import as_loaded
    from funcnet.prune import load_pruned, prune, save_pruned

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hfmod"))
    res = prune(as_loaded(copy.deepcopy(llama), tok), 0.3, of="mlp", method="magnitude", bias_compensation=False,
                protect=(0, 0))
    out = save_pruned(res.lm, tok, tmp_path / "pruned", res.report)
    lm2 = load_pruned(out)
    assert lm2.adapter.neurons_per_layer(lm2.model) != ev_widths(llama)
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    jsonl = DATA / "lmeval" / "tiny_mc.jsonl"
    yaml = (DATA / "lmeval" / "funcnet_tiny_mc.yaml").read_text()
    (task_dir / "funcnet_tiny_mc.yaml").write_text(yaml.replace("tests/data/lmeval/tiny_mc.jsonl", str(jsonl.resolve())))
    r = ev.lm_eval_tasks(lm2, None, ["funcnet_tiny_mc"], include_path=str(task_dir), include_defaults=False,
                         batch_size=4)
    assert r["results"]["funcnet_tiny_mc"]["acc,none"] in (0.0, 0.25, 0.5, 0.75, 1.0)


def ev_widths(model):
    from funcnet.core.adapters import get_adapter

    return get_adapter(model).neurons_per_layer(model)
