"""The adapter registry: for every family the recorded signals are exactly what the modules compute."""
from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, tiny_model
from funcnet.core.adapters import get_adapter, supported_families, weight_out_in
from funcnet.errors import FuncnetError, UnsupportedArchitectureError


def test_registry_covers_all_families():
    assert set(FAMILIES) <= set(supported_families())


def _capture(model, adapter, layer_idx, signals, ids):
    layer = adapter.get_layers(model)[layer_idx]
    got, handles = {}, []
    for s in signals:
        handles.append(adapter.register_signal_hook(layer, s, lambda t, s=s: got.__setitem__(s, t.detach().clone())))
    mlp_in, mlp_out = {}, {}
    handles.append(adapter.mlp_input_module(layer).register_forward_pre_hook(lambda m, a: mlp_in.setdefault("x", a[0])))
    handles.append(adapter.down_proj(layer).register_forward_hook(lambda m, a, o: mlp_out.setdefault("y", o)))
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return layer, got, mlp_in["x"], mlp_out["y"]


def test_neuron_signal_is_down_projection_input(family):
    model = tiny_model(family)
    ad = get_adapter(model)
    ids = torch.randint(3, 120, (2, 9))
    layer, got, x, y = _capture(model, ad, 1, ["neurons", "up", "residual", "heads"], ids)
    neurons = got["neurons"]
    assert neurons.shape == (2, 9, ad.n_neurons(layer))
    # the recorded neurons are what the MLP computes from its input, with the layer's own modules
    recomputed = ad.mlp_neurons_from_input(layer, x).reshape(neurons.shape)
    torch.testing.assert_close(neurons, recomputed, rtol=1e-5, atol=1e-5)
    # and the down projection of the recorded neurons is the MLP output
    torch.testing.assert_close(ad.down_proj(layer)(neurons), y.reshape(2, 9, -1), rtol=1e-5, atol=1e-5)
    assert neurons.abs().max() > 1e-3  # not a trivially zero signal
    hc = ad.head_config(model)
    assert got["heads"].shape[-1] == hc.n_heads * hc.head_dim
    assert got["residual"].shape[-1] == model.config.get_text_config().hidden_size
    w = weight_out_in(ad.down_proj(layer))
    assert w.shape == (model.config.get_text_config().hidden_size, ad.n_neurons(layer))


def test_gate_and_up_signals_multiply_to_neurons(family):
    model = tiny_model(family)
    ad = get_adapter(model)
    ids = torch.randint(3, 120, (1, 7))
    if not ad.gated:
        with pytest.raises(FuncnetError, match="gated"):
            _capture(model, ad, 0, ["gate"], ids)
        return
    _, got, _, _ = _capture(model, ad, 0, ["neurons", "gate", "up"], ids)
    torch.testing.assert_close(got["gate"] * got["up"], got["neurons"], rtol=1e-5, atol=1e-6)


def test_residual_is_block_output():
    model = tiny_model("llama")
    ad = get_adapter(model)
    ids = torch.randint(3, 120, (1, 6))
    _, got, _, _ = _capture(model, ad, 1, ["residual"], ids)
    with torch.no_grad():
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    # hidden_states[2] is the output of block 1 (before the final norm, which is applied to the last one)
    last = len(ad.get_layers(model)) - 1
    if 1 < last:
        torch.testing.assert_close(got["residual"], hs[2])
    else:
        assert got["residual"].shape == hs[2].shape


def test_gqa_head_config():
    model = tiny_model("llama")
    hc = get_adapter(model).head_config(model)
    assert (hc.n_heads, hc.n_kv_heads, hc.group_size) == (4, 2, 2)
    assert [hc.kv_group(h) for h in range(4)] == [0, 0, 1, 1]


def test_unsupported_family_lists_supported():
    with pytest.raises(UnsupportedArchitectureError) as e:
        get_adapter("mamba")
    msg = str(e.value)
    assert "mamba" in msg and "llama" in msg and "register_adapter" in msg and "\n" not in msg


def test_params_per_neuron_matches_slicing_arithmetic(family):
    model = tiny_model(family)
    ad = get_adapter(model)
    layer = ad.get_layers(model)[0]
    n = ad.n_neurons(layer)
    per = ad.params_per_neuron(layer)
    # total MLP params = n * per + the parameters that do not scale with n (down bias)
    down_bias = getattr(ad.down_proj(layer), "bias", None)
    fixed = down_bias.numel() if down_bias is not None else 0
    assert ad.mlp_param_count(layer) == n * per + fixed
