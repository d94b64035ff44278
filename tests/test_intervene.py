"""Tests of funcnet.intervene on tiny random-init models (Llama, GPT-2 Conv1D, OPT)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from funcnet.core.adapters import get_adapter
from funcnet.errors import FuncnetError
from funcnet.intervene import (
    Intervention,
    amplify,
    count_neurons,
    inhibit,
    layer_widths,
    preserve,
    random_fraction,
    random_like,
    resolve_neurons,
    total_neurons,
)
from funcnet.core.models import as_loaded

VOCAB = 128


def _llama(n_layers=3, inter=64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=n_layers, hidden_size=32, intermediate_size=inter, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=48, vocab_size=VOCAB, n_positions=128)
    return GPT2LMHeadModel(cfg).eval()


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    cfg = OPTConfig(num_hidden_layers=2, hidden_size=32, ffn_dim=40, num_attention_heads=4, vocab_size=VOCAB,
                    max_position_embeddings=128, word_embed_proj_dim=32)
    return OPTForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama():
    return _llama()


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, 12), generator=g)


class Recorder:
    """Records the input of each layer's down projection (a pre-hook registered now)."""

    def __init__(self, model):
        adapter = get_adapter(model)
        self.data: dict[int, list[torch.Tensor]] = {}
        self.handles = []
        for i, layer in enumerate(adapter.get_layers(model)):
            mod = adapter.down_proj(layer)
            self.handles.append(mod.register_forward_pre_hook(self._hook(i)))

    def _hook(self, i):
        def f(module, args):
            self.data.setdefault(i, []).append(args[0].detach().clone())

        return f

    def __getitem__(self, i) -> torch.Tensor:
        return self.data[i][-1]

    def remove(self):
        for h in self.handles:
            h.remove()


def _no_hooks(model) -> bool:
    return all(len(m._forward_pre_hooks) == 0 and len(m._forward_hooks) == 0 for m in model.modules())


def _run(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _masks(model, sel):
    out = {}
    for li, w in enumerate(layer_widths(model)):
        m = torch.zeros(w, dtype=torch.bool)
        if li in sel:
            m[torch.as_tensor(sel[li], dtype=torch.long)] = True
        out[li] = m
    return out


# -------------------------------------------------------------------------------- selections
def test_resolve_formats_agree(llama):
    w = layer_widths(llama)
    assert w == [64, 64, 64] and total_neurons(llama) == 192
    mask_np = np.zeros(64, bool)
    mask_np[[3, 7]] = True
    mask_t = torch.zeros(64, dtype=torch.bool)
    mask_t[[1]] = True
    forms = [
        {0: mask_np, 2: mask_t},
        {0: [7, 3, 3], 2: np.array([1])},
        [(2, 1), (0, 3), (0, 7)],
        np.array([[0, 3], [0, 7], [2, 1]]),
        {0: torch.tensor([3, 7]), -1: 1},
    ]
    for f in forms:
        r = resolve_neurons(f, llama)
        assert list(r) == [0, 2], f
        assert r[0].tolist() == [3, 7] and r[2].tolist() == [1]
        assert r[0].dtype == torch.long
        assert count_neurons(f, llama) == 3


def test_resolve_duck_typed_networks(llama):
    class FakeNetworks:
        def __init__(self):
            self.calls = []

        def to_layer_indices(self, networks=None):
            self.calls.append(networks)
            if networks == [1]:
                return {1: np.array([5])}
            return {0: np.array([1, 2]), 1: np.array([5])}

    fn = FakeNetworks()
    assert {k: v.tolist() for k, v in resolve_neurons(fn, llama).items()} == {0: [1, 2], 1: [5]}
    assert {k: v.tolist() for k, v in resolve_neurons(fn, llama, networks=[1]).items()} == {1: [5]}
    assert fn.calls == [None, [1]]

    class Sets:
        def neuron_sets(self):
            return {2: [9]}

    assert resolve_neurons(Sets(), llama)[2].tolist() == [9]


@pytest.mark.parametrize(
    "bad, words",
    [
        ({0: [64]}, "out of range"),
        ({0: [-1]}, "out of range"),
        ({3: [0]}, "layer 3 out of range"),
        ({0: np.zeros(10, bool)}, "bool mask"),
        ({0: [1.5]}, "integer"),
        ([(0, 1, 2)], "pairs"),
        (np.zeros((3, 3), int), "[n, 2]"),
        ({"a": [1]}, "integer"),
        ("neurons", "cannot read"),
    ],
)
def test_bad_selections_error(llama, bad, words):
    with pytest.raises(FuncnetError) as e:
        inhibit(llama, bad)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert _no_hooks(llama)


# --------------------------------------------------------------------------------- hooks
def test_inhibit_changes_exactly_the_chosen_neurons(llama, ids):
    base_rec = Recorder(llama)
    base_out = _run(llama, ids)
    base_rec.remove()
    sel = {1: [0, 5, 63], 2: [10]}
    before = Recorder(llama)  # registered before the intervention: sees the raw input
    with inhibit(llama, sel) as h:
        assert isinstance(h, Intervention) and h.active
        after = Recorder(llama)  # registered after: sees what the down projection gets
        out = _run(llama, ids)
        after.remove()
    before.remove()
    masks = _masks(llama, sel)
    # layer 0 is untouched and upstream of the change
    assert torch.equal(after[0], base_rec[0]) and torch.equal(before[0], base_rec[0])
    # the first changed layer: its input equals the un-hooked run, only the chosen neurons are zero
    assert torch.equal(before[1], base_rec[1])
    for li in (1, 2):
        m = masks[li]
        assert torch.all(after[li][..., m] == 0)
        assert torch.equal(after[li][..., ~m], before[li][..., ~m])
        assert torch.all(before[li][..., m] != 0)  # SiLU*up of random weights: never exactly zero
    assert torch.equal(after[1][..., ~masks[1]], base_rec[1][..., ~masks[1]])
    assert not torch.allclose(out, base_out)
    assert _no_hooks(llama)
    assert torch.equal(_run(llama, ids), base_out)  # identical after exit


def test_amplify_scales_and_shifts_exactly(llama, ids):
    sel = {0: [2, 4], 2: [0]}
    masks = _masks(llama, sel)
    for factor, add in [(3.0, None), (None, 0.5), (-2.0, 1.25)]:
        before = Recorder(llama)
        with amplify(llama, sel, factor=factor, add=add):
            after = Recorder(llama)
            _run(llama, ids)
            after.remove()
        before.remove()
        for li in (0, 2):
            m = masks[li]
            want = before[li][..., m]
            if factor is not None:
                want = want * factor
            if add is not None:
                want = want + add
            assert torch.equal(after[li][..., m], want)
            assert torch.equal(after[li][..., ~m], before[li][..., ~m])
        assert torch.equal(after[1], before[1])  # no hook on layer 1
    assert _no_hooks(llama)
    with pytest.raises(FuncnetError):
        amplify(llama, sel)


def test_preserve_zeros_the_complement(llama, ids):
    sel = {0: [1, 2, 3], 2: [60]}
    masks = _masks(llama, sel)
    before = Recorder(llama)
    with preserve(llama, sel):
        after = Recorder(llama)
        _run(llama, ids)
        after.remove()
    before.remove()
    for li in range(3):
        m = masks[li]
        assert torch.all(after[li][..., ~m] == 0)
        assert torch.equal(after[li][..., m], before[li][..., m])
    assert int(masks[1].sum()) == 0 and torch.all(after[1] == 0)  # nothing kept in layer 1
    # only some layers
    before = Recorder(llama)
    with preserve(llama, sel, layers=[2]):
        after = Recorder(llama)
        _run(llama, ids)
        after.remove()
    before.remove()
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert torch.all(after[2][..., ~masks[2]] == 0) and torch.equal(after[2][..., masks[2]], before[2][..., masks[2]])
    assert _no_hooks(llama)


def test_hooks_removed_on_exception(llama, ids):
    base = _run(llama, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with inhibit(llama, {0: list(range(64))}), amplify(llama, {1: [3]}, factor=5.0):
            assert not _no_hooks(llama)
            raise RuntimeError("boom")
    assert _no_hooks(llama)
    assert torch.equal(_run(llama, ids), base)


def test_nesting_composes_in_order(llama, ids):
    sel = {1: [7]}
    # inhibit then amplify(add=1): (x * 0) * 2 + 1 = 1
    with inhibit(llama, sel), amplify(llama, sel, factor=2.0, add=1.0):
        after = Recorder(llama)
        _run(llama, ids)
        after.remove()
    assert torch.all(after[1][..., 7] == 1.0)
    # amplify then inhibit: (x * 2 + 1) * 0 = 0
    with amplify(llama, sel, factor=2.0, add=1.0):
        with inhibit(llama, sel):
            after = Recorder(llama)
            _run(llama, ids)
            after.remove()
        assert len(get_adapter(llama).down_proj(llama.model.layers[1])._forward_pre_hooks) == 1
    assert torch.all(after[1][..., 7] == 0.0)
    assert _no_hooks(llama)


def test_reusable_and_not_double_attached(llama, ids):
    h = inhibit(llama, {0: [1]})
    with h:
        with pytest.raises(FuncnetError, match="already active"):
            h.attach()
    assert _no_hooks(llama)
    h.attach()
    assert not _no_hooks(llama)
    h.remove()
    assert _no_hooks(llama)


def test_generate_under_context(llama):
    prompt = torch.tensor([[1, 2, 3, 4]])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base = llama.generate(prompt, **kw)
        sel = {0: list(range(0, 64, 2)), 1: list(range(64)), 2: list(range(1, 64, 2))}
        with inhibit(llama, sel):
            after = Recorder(llama)
            out = llama.generate(prompt, **kw)
            after.remove()
        again = llama.generate(prompt, **kw)
    assert out.shape == base.shape
    assert len(after.data[1]) >= 6  # one forward per generated token, all intervened
    assert all(torch.all(t == 0) for t in after.data[1])
    assert all(torch.all(t[..., ::2] == 0) for t in after.data[0])
    assert torch.equal(again, base)
    assert _no_hooks(llama)


def test_loaded_model_and_half_precision(ids):
    model = _llama(n_layers=2).to(torch.bfloat16)
    lm = as_loaded(model, None)
    before = Recorder(model)
    with inhibit(lm, {0: [0, 1]}), amplify(lm, {1: [2]}, factor=2.0):
        after = Recorder(model)
        _run(model, ids)
        after.remove()
    before.remove()
    assert after[0].dtype == torch.bfloat16
    assert torch.all(after[0][..., :2] == 0) and torch.equal(after[0][..., 2:], before[0][..., 2:])
    assert torch.equal(after[1][..., 2], before[1][..., 2] * 2)
    assert _no_hooks(model)


@pytest.mark.parametrize("make", [_gpt2, _opt], ids=["gpt2", "opt"])
def test_other_families(make, ids):
    model = make()
    w = layer_widths(model)
    assert w == ([48, 48] if make is _gpt2 else [40, 40])
    base = _run(model, ids)
    before = Recorder(model)
    with inhibit(model, {1: [0, 3]}):
        after = Recorder(model)
        out = _run(model, ids)
        after.remove()
    before.remove()
    assert torch.all(after[1][..., [0, 3]] == 0)
    keep = [i for i in range(w[1]) if i not in (0, 3)]
    assert torch.equal(after[1][..., keep], before[1][..., keep])
    assert torch.equal(after[0], before[0])
    assert not torch.equal(out, base)
    assert _no_hooks(model)
    assert torch.equal(_run(model, ids), base)


# ------------------------------------------------------------------------- random controls
def test_random_like_per_layer(llama):
    sel = {0: list(range(10)), 2: [5, 6, 7]}
    a = random_like(sel, llama, seed=3)
    b = random_like(sel, llama, seed=3)
    c = random_like(sel, llama, seed=4)
    assert {k: v.numel() for k, v in a.items()} == {0: 10, 2: 3}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    for k, v in a.items():
        assert v.dtype == torch.long and v.unique().numel() == v.numel() and int(v.max()) < 64
    ex = random_like(sel, llama, seed=3, exclude=True)
    assert {k: v.numel() for k, v in ex.items()} == {0: 10, 2: 3}
    assert not set(ex[0].tolist()) & set(range(10)) and not set(ex[2].tolist()) & {5, 6, 7}
    other = random_like({1: list(range(30))}, llama, seed=0, exclude={1: list(range(30))})
    assert min(other[1].tolist()) >= 30
    with pytest.raises(FuncnetError, match="cannot draw"):
        random_like({0: list(range(40))}, llama, exclude=True)


def test_random_like_over_model(llama):
    sel = {0: list(range(20))}
    a = random_like(sel, llama, seed=1, match="model")
    assert count_neurons(a) == 20
    assert sum(v.numel() for v in random_like(sel, llama, seed=1, match="model").values()) == 20
    assert all(torch.equal(a[k], v) for k, v in random_like(sel, llama, seed=1, match="model").items())
    # spread over layers (20 of 192 uniformly: all in layer 0 has probability ~1e-11)
    assert len(a) >= 2
    resolve_neurons(a, llama)  # valid
    ex = random_like(sel, llama, seed=1, match="model", exclude=True)
    assert not set(ex.get(0, torch.zeros(0)).tolist()) & set(range(20))
    with pytest.raises(FuncnetError, match="match"):
        random_like(sel, llama, match="nope")


def test_random_fraction(llama):
    a = random_fraction(llama, 0.25, seed=0)
    assert {k: v.numel() for k, v in a.items()} == {0: 16, 1: 16, 2: 16}
    assert all(torch.equal(a[k], v) for k, v in random_fraction(llama, 0.25, seed=0).items())
    assert any(not torch.equal(a[k], v) for k, v in random_fraction(llama, 0.25, seed=1).items())
    m = random_fraction(llama, 0.1, seed=0, match="model")
    assert count_neurons(m) == round(0.1 * 192)
    assert count_neurons(random_fraction(llama, 0.5, layers=[1])) == 32
    with pytest.raises(FuncnetError):
        random_fraction(llama, 1.5)
