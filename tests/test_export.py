"""Deploying pruned models: GGUF (deci architecture) read back, the q/k permutation, zero-width layers,
multiple_of, native folders without remote code, the DeciLM layout, `funcnet export`; with
llama-cpp-python installed, the exported GGUF run in llama.cpp against PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import funcnet.core  # noqa: F401  (registers the pruned-model classes)
from conftest import TEXTS, char_tokenizer, tiny_model
from funcnet.cli import main
from funcnet.core.models import as_loaded
from funcnet.core.pruned import native_reason, save_pruned
from funcnet.errors import FuncnetError
from funcnet.export import check_gguf_shapes, gguf_shapes, llama_cpp_available, permute_qk, unpermute_qk, write_gguf
from funcnet.export.decilm import decilm_config, write_decilm
from funcnet.prune import apply_selection, compute_importance, prune, select

gguf = pytest.importorskip("gguf")
needs_llama_cpp = pytest.mark.skipif(not llama_cpp_available(),
                                     reason="llama-cpp-python is not installed (make setup-deploy)")


def bpe_tokenizer(vocab_size: int = 300):
    """A tiny byte-level BPE tokenizer trained here (no download), with merges, bos/eos/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(TEXTS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


def _pruned(heads=False, multiple_of=1, inter=128, n_layers=4, ratio=0.3, compensation="bias", vocab=128, tok=None):
    lm = as_loaded(tiny_model("llama", n_layers=n_layers, inter=inter, vocab=vocab), tok or char_tokenizer())
    prune(lm, ratio, method="flap", calib=TEXTS, calib_tokens=512, max_length=64, protect=(0, 0), heads=heads,
          of="attn+mlp" if heads else "mlp", compensation=compensation, multiple_of=multiple_of)
    return lm


def _fields(path):
    r = gguf.GGUFReader(str(path))
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}


# ------------------------------------------------------------------------------------ always run
@pytest.mark.parametrize("n_head", [2, 4])
def test_qk_permutation_round_trips_and_pairs_halves(n_head):
    d = 8
    w = torch.randn(n_head * d, 16)
    p = permute_qk(w, n_head)
    torch.testing.assert_close(unpermute_qk(p, n_head), w, rtol=0, atol=0)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w.numpy(), n_head), n_head), w.numpy())
    np.testing.assert_array_equal(permute_qk(w.numpy(), n_head), p.numpy())
    assert not torch.equal(p, w)
    # llama.cpp's pairs: row 2j of a head is HF row j, row 2j+1 is HF row j + d/2
    torch.testing.assert_close(p[0], w[0], rtol=0, atol=0)
    torch.testing.assert_close(p[1], w[d // 2], rtol=0, atol=0)
    torch.testing.assert_close(p[d + 3], w[d + d // 2 + 1], rtol=0, atol=0)
    with pytest.raises(FuncnetError):
        permute_qk(torch.randn(6, 4), 4)


def test_gguf_reads_back_with_per_layer_arrays_shapes_and_biases(tmp_path):
    lm = _pruned(heads=True)
    shapes = gguf_shapes(lm)
    assert len(set(shapes["feed_forward_length"])) > 1 or len(set(shapes["head_count_kv"])) > 1
    path = write_gguf(lm, tmp_path / "m.gguf", outtype="f32")
    r, f = _fields(path)
    assert f["general.architecture"] == "deci"
    assert list(f["deci.feed_forward_length"]) == shapes["feed_forward_length"]
    assert list(f["deci.attention.head_count"]) == shapes["head_count"]
    assert list(f["deci.attention.head_count_kv"]) == shapes["head_count_kv"]
    assert f["deci.attention.key_length"] == f["deci.attention.value_length"] == 8
    t = {x.name: x for x in r.tensors}
    for i, layer in enumerate(lm.layers):
        w, nq, nkv = shapes["feed_forward_length"][i], shapes["head_count"][i], shapes["head_count_kv"][i]
        # GGUF shapes are [in, out] (ne0 first)
        assert t[f"blk.{i}.ffn_gate.weight"].shape.tolist() == [32, w]
        assert t[f"blk.{i}.ffn_down.weight"].shape.tolist() == [w, 32]
        assert t[f"blk.{i}.attn_q.weight"].shape.tolist() == [32, nq * 8]
        assert t[f"blk.{i}.attn_k.weight"].shape.tolist() == [32, nkv * 8]
        assert t[f"blk.{i}.attn_output.weight"].shape.tolist() == [nq * 8, 32]
        assert (f"blk.{i}.ffn_down.bias" in t) == shapes["ffn_down_bias"][i]
        assert (f"blk.{i}.attn_output.bias" in t) == shapes["attn_output_bias"][i]
        q = np.asarray(t[f"blk.{i}.attn_q.weight"].data).reshape(nq * 8, 32)
        np.testing.assert_array_equal(q, permute_qk(layer.self_attn.q_proj.weight.detach().numpy(), nq))
        if shapes["ffn_down_bias"][i]:
            np.testing.assert_array_equal(np.asarray(t[f"blk.{i}.ffn_down.bias"].data),
                                          layer.mlp.down_proj.bias.detach().numpy())
    assert any(shapes["ffn_down_bias"]), "bias compensation made ffn_down biases"
    assert "output.weight" in t and t["token_embd.weight"].shape.tolist() == [32, 128]
    for outtype, ttype in (("f16", "F16"), ("bf16", "BF16")):
        r2, _ = _fields(write_gguf(lm, tmp_path / f"{outtype}.gguf", outtype=outtype))
        t2 = {x.name: x for x in r2.tensors}
        assert t2["blk.0.ffn_down.weight"].tensor_type.name == ttype
        assert t2["blk.0.attn_norm.weight"].tensor_type.name == "F32"


def test_bpe_tokenizer_metadata_is_written(tmp_path):
    tok = bpe_tokenizer()
    lm = as_loaded(tiny_model("llama", n_layers=2, vocab=len(tok)), tok)
    r = gguf.GGUFReader(str(write_gguf(lm, tmp_path / "t.gguf", outtype="f32")))
    assert r.fields["tokenizer.ggml.model"].contents() == "gpt2"
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == len(tok) and tokens[tok.convert_tokens_to_ids("<eos>")] == "<eos>"
    assert len(r.fields["tokenizer.ggml.merges"].contents()) > 10
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == tok.eos_token_id


def test_zero_width_layer_with_attention_cannot_be_written(tmp_path):
    lm = as_loaded(tiny_model("llama", n_layers=3), char_tokenizer())
    mlp = lm.layers[1].mlp
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = nn.Linear(32, 0, bias=False), nn.Linear(32, 0, bias=False), \
        nn.Linear(0, 32, bias=False)
    with pytest.raises(FuncnetError, match="layer 1 has no MLP neurons but keeps its attention"):
        check_gguf_shapes(lm)
    with pytest.raises(FuncnetError, match="layer 1 has no MLP neurons"):
        write_gguf(lm, tmp_path / "z.gguf")
    assert not (tmp_path / "z.gguf").exists()


def test_unsupported_family_and_options_are_refused(tmp_path):
    with pytest.raises(FuncnetError, match="Llama-shaped"):
        write_gguf(tiny_model("gpt2"), tmp_path / "g.gguf", tokenizer=char_tokenizer())
    with pytest.raises(FuncnetError, match="output type"):
        write_gguf(tiny_model("llama"), tmp_path / "g.gguf", tokenizer=char_tokenizer(), outtype="f8")


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_multiple_of_rounds_widths_and_stays_near_the_target(allocation):
    lm = as_loaded(tiny_model("llama", n_layers=4, inter=160), char_tokenizer())
    imp = compute_importance("magnitude", lm)
    exact = select(lm, imp, 0.3, protect=(0, 0), allocation=allocation)
    again = select(lm, imp, 0.3, protect=(0, 0), allocation=allocation, multiple_of=1)
    assert all(np.array_equal(exact.keep_neurons[i], again.keep_neurons[i]) for i in range(4))
    sel = select(lm, imp, 0.3, protect=(0, 0), allocation=allocation, multiple_of=32)
    widths = [len(sel.keep_neurons[i]) for i in range(4)]
    assert all(w % 32 == 0 or w == 160 for w in widths) and min(widths) >= 32
    ppn, bias = lm.adapter.params_per_neuron(lm.layers[0]), 32
    assert abs(sel.predicted_removed - sel.target_removed) <= 32 * ppn / 2 + bias
    s = imp.neurons[0]  # the kept neurons are the layer's most important ones
    kept = sel.keep_neurons[0]
    if len(kept) < 160:
        assert s[kept].min() >= np.delete(s, kept).max()
    with pytest.raises(FuncnetError, match="multiple_of"):
        select(lm, imp, 0.3, multiple_of=0)


def test_prune_multiple_of_is_recorded_and_default_unchanged():
    a, b = _pruned(compensation="none"), _pruned(compensation="none", multiple_of=32)
    assert a.info["pruning_report"]["multiple_of"] == 1 and b.info["pruning_report"]["multiple_of"] == 32
    assert all(w % 32 == 0 for w in b.info["pruning_report"]["kept_neurons_per_layer"])
    assert any(w % 32 for w in a.info["pruning_report"]["kept_neurons_per_layer"])


def _uniform(family="llama", bias=True):
    lm = as_loaded(tiny_model(family, n_layers=3, inter=64), char_tokenizer())
    imp = compute_importance("magnitude", lm)
    sel = select(lm, imp, 0.3, protect=(0, 0))
    sel.keep_neurons = {i: np.sort(np.argsort(-imp.neurons[i])[:40]) for i in range(3)}
    apply_selection(lm, sel, compensation="none")
    if bias:  # what bias compensation leaves: a down-projection bias
        torch.manual_seed(1)
        for layer in lm.layers:
            old = layer.mlp.down_proj
            new = nn.Linear(old.in_features, old.out_features, bias=True)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.normal_()
            layer.mlp.down_proj = new
        del lm.model.config.funcnet_pruned
    return lm


def test_native_folder_loads_without_funcnet_classes_and_matches(tmp_path):
    lm = _uniform("llama")
    assert native_reason(lm) is None
    out = save_pruned(lm, lm.tokenizer, tmp_path / "native", {"method": "magnitude"}, format="auto")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["intermediate_size"] == 40 and cfg["mlp_bias"] is True
    assert "auto_map" not in cfg and "funcnet_pruned" not in cfg and not list(out.glob("*.py"))
    rep = json.loads((out / "pruning_report.json").read_text())
    assert rep["saved_format"] == "native"
    auto = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(auto).__module__.startswith("transformers.models.llama")
    ids = torch.randint(4, 100, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(auto(ids).logits, lm.model(ids).logits, atol=1e-5, rtol=1e-5)
    # the same folder loads in a fresh interpreter that never imports funcnet
    import subprocess
    import sys
    code = (f"import sys, torch; from transformers import AutoModelForCausalLM; "
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); "
            f"assert 'funcnet' not in sys.modules; print(m.config.intermediate_size)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and res.stdout.strip().endswith("40"), res.stderr[-500:]


def test_native_falls_back_with_a_reason(tmp_path):
    lm = _uniform("mistral")  # Mistral's config has no MLP bias option
    why = native_reason(lm)
    assert why is not None and "bias" in why
    out = save_pruned(lm, lm.tokenizer, tmp_path / "m", {}, format="auto")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "funcnet_pruned"
    assert "bias" in json.loads((out / "pruning_report.json").read_text())["saved_format_reason"]
    with pytest.raises(FuncnetError, match="cannot save a native mistral folder"):
        save_pruned(lm, lm.tokenizer, tmp_path / "m2", {}, format="native")
    uneven = _pruned(compensation="none")
    assert "MLP widths differ" in native_reason(uneven)
    with pytest.raises(FuncnetError, match="unknown pruned-folder format"):
        save_pruned(lm, lm.tokenizer, tmp_path / "m3", {}, format="gguf")


def test_decilm_folder_has_block_configs(tmp_path):
    lm = _pruned()
    d = decilm_config(lm)
    assert d["model_type"] == "nemotron-nas"
    assert [b["ffn"]["intermediate_size"] for b in d["block_configs"]] == gguf_shapes(lm)["feed_forward_length"]
    assert all(b["attention"]["n_heads_in_group"] == 2 for b in d["block_configs"])
    out = write_decilm(lm, tmp_path / "deci")
    assert json.loads((out / "config.json").read_text())["block_configs"] == d["block_configs"]
    with pytest.raises(FuncnetError, match="query head"):
        decilm_config(_pruned(heads=True, ratio=0.4))


def test_cli_export_writes_gguf_native_and_decilm(tmp_path, capsys):
    lm = _uniform("llama", bias=False)
    src = save_pruned(lm, lm.tokenizer, tmp_path / "pruned", {"method": "magnitude"})
    assert main(["export", str(src), "--gguf", str(tmp_path / "o.gguf"), "--outtype", "f32",
                 "--native", str(tmp_path / "nat"), "--decilm", str(tmp_path / "deci")]) == 0
    out = capsys.readouterr().out
    assert "GGUF, architecture deci" in out and "native llama folder" in out
    assert json.loads((tmp_path / "nat" / "config.json").read_text())["model_type"] == "llama"
    assert (tmp_path / "deci" / "config.json").exists() and (tmp_path / "o.gguf").stat().st_size > 0
    assert main(["export", str(src), "--gguf", str(tmp_path / "o.gguf")]) == 2  # exists: refused
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(src)]) == 2


def test_cli_choices_match_the_library_and_parse_without_torch():
    import subprocess
    import sys

    from funcnet.cli import export as cli_export
    from funcnet.export import OUTTYPES, QUANT_TYPES
    assert tuple(cli_export.OUTTYPES) == tuple(OUTTYPES) and sorted(cli_export.QUANT_CHOICES) == sorted(QUANT_TYPES)
    code = ("import sys; from funcnet.cli import main\n"
            "try:\n    main(['export', 'x', '--gguf', 'o.gguf', '--quant', 'q9'])\nexcept SystemExit as e:\n"
            "    assert e.code == 2\nassert 'torch' not in sys.modules, 'torch imported to parse arguments'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-500:]
    assert "invalid choice" in res.stderr


# ------------------------------------------------------------------------------ with llama.cpp
def _llama_logits(path, ids):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids) + 8, n_batch=len(ids) + 8, logits_all=True,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, n_threads=2,
                          verbose=False, seed=0)
    llm.eval(list(map(int, ids)))
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def _ppl(logits, ids):
    lp = torch.log_softmax(torch.as_tensor(logits[:-1]), -1)
    return float(torch.exp(-lp[torch.arange(len(ids) - 1), torch.as_tensor(ids[1:])].mean()))


@needs_llama_cpp
def test_llama_cpp_runs_the_pruned_gguf_like_pytorch(tmp_path):
    tok = bpe_tokenizer()
    lm = _pruned(heads=True, tok=tok, vocab=len(tok))
    assert len(set(gguf_shapes(lm)["feed_forward_length"])) > 1
    path = write_gguf(lm, tmp_path / "p.gguf", outtype="f32")
    ids = tok(" ".join(TEXTS))["input_ids"][:200]
    with torch.no_grad():
        want = lm.model(torch.tensor([ids])).logits[0].double().numpy()
    got = _llama_logits(path, ids)
    assert np.abs(got - want).max() <= 1e-2
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert abs(_ppl(got, ids) / _ppl(want, ids) - 1) <= 1e-3


@needs_llama_cpp
def test_q8_0_export_of_a_multiple_of_32_model_has_no_f16_ffn_down(tmp_path):
    lm = _pruned(multiple_of=32, inter=256)
    path = write_gguf(lm, tmp_path / "q8.gguf", quant="q8_0")
    r = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    downs = [v for k, v in types.items() if k.endswith("ffn_down.weight")]
    assert downs and all(v == "Q8_0" for v in downs), types
