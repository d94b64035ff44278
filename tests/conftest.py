"""Shared fixtures: tiny random-init models of every supported family (no downloads)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("FUNCNET_NO_PROGRESS", "1")
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2", "gpt_neox", "opt"]


def tiny_config(family: str, n_layers: int = 2, hidden: int = 32, inter: int = 64, vocab: int = 128):
    import transformers as t

    common = dict(num_hidden_layers=n_layers, hidden_size=hidden, num_attention_heads=4, vocab_size=vocab,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=256)
    gqa = dict(num_key_value_heads=2, intermediate_size=inter)
    if family == "gpt2":
        return t.GPT2Config(n_layer=n_layers, n_embd=hidden, n_head=4, n_inner=inter, vocab_size=vocab,
                            n_positions=256, bos_token_id=1, eos_token_id=2)
    if family == "opt":
        return t.OPTConfig(**common, ffn_dim=inter, word_embed_proj_dim=hidden)
    if family == "gpt_neox":
        return t.GPTNeoXConfig(**common, intermediate_size=inter)
    if family == "phi3":
        return t.Phi3Config(**common, **gqa)
    cls = {"llama": t.LlamaConfig, "mistral": t.MistralConfig, "qwen2": t.Qwen2Config, "qwen3": t.Qwen3Config,
           "gemma": t.GemmaConfig, "gemma2": t.Gemma2Config, "gemma3": t.Gemma3TextConfig}[family]
    extra = {"head_dim": hidden // 4} if family in ("gemma", "gemma2", "gemma3", "qwen3") else {}
    return cls(**common, **gqa, **extra)


def tiny_model(family: str, seed: int = 0, **kw):
    import transformers as t

    torch.manual_seed(seed)
    cfg = tiny_config(family, **kw)
    model = t.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    # random-init models have tiny weights; scale MLP/attention weights up so signals are not ~0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tiny_llama():
    return tiny_model("llama")


def char_tokenizer():
    """A tiny character-level fast tokenizer (no download) with offsets, pad and eos tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for i, ch in enumerate(sorted(set(chr(c) for c in range(32, 127)) | {"\n", "\t"})):
        vocab[ch] = 4 + i
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")


@pytest.fixture
def char_tok():
    return char_tokenizer()


TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def add(a, b):\n    return a + b\n",
    "Q: What is 12 * 7? A: 12 * 7 = 84.",
    "Functional networks recur across inputs and matter for the model. " * 2,
    "import os\nprint(os.getcwd())\n",
    "Python is a programming language that lets you work quickly.",
]


def tiny_saved(tmp_path, family="llama", seed=0, **kw):
    """Save a tiny model + char tokenizer into a folder that load_model() accepts."""
    model = tiny_model(family, seed=seed, vocab=128, **kw)
    tok = char_tokenizer()
    d = tmp_path / f"tiny-{family}-{seed}"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
