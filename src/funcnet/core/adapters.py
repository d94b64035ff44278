"""Architecture adapters: the one place that knows where things are in each model family.

Every other module asks an :class:`ArchAdapter` for the decoder layers, the MLP "neuron" signal
(the input of the down projection), the gate / up signals, the residual stream after each block,
the attention heads (input of the output projection) and what pruning must slice. Nothing else in
funcnet looks at module names or model types.

Adding a family::

    from funcnet.adapters import ArchAdapter, register_adapter
    register_adapter(ArchAdapter(family="myarch", model_types=("myarch",), layers=("model.layers",),
                                 down="mlp.down_proj", gate="mlp.gate_proj", up="mlp.up_proj",
                                 act="mlp.act_fn", o_proj="self_attn.o_proj",
                                 q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj"))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from funcnet.errors import FuncnetError, UnsupportedArchitectureError

#: Signals funcnet can record per layer.
SIGNALS = ("neurons", "gate", "up", "residual", "heads")


def _has(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores weights as [in, out] (transposed w.r.t. ``nn.Linear``)."""
    return type(module).__name__ == "Conv1D"


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight of a linear map as an [out_features, in_features] view (Linear or Conv1D)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def in_features(module: nn.Module) -> int:
    return weight_out_in(module).shape[1]


def out_features(module: nn.Module) -> int:
    return weight_out_in(module).shape[0]


@dataclass(frozen=True)
class HeadConfig:
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads

    def kv_group(self, head: int) -> int:
        return head // self.group_size


@dataclass(frozen=True)
class ArchAdapter:
    """Where things live in one model family. Paths are attribute paths; ``layers`` is relative to
    the ``*ForCausalLM`` model (the first candidate that exists is used), the others to one layer.

    qkv_layout: "separate" (q_proj, k_proj, v_proj), "fused" (one projection, rows [q; k; v]),
    or "interleaved" (GPT-NeoX: rows grouped per head as [q_h; k_h; v_h]).
    """

    family: str
    model_types: tuple[str, ...]
    layers: tuple[str, ...]
    down: str
    act: str
    o_proj: str
    up: str | None = None  # gated: up projection; non-gated: fc_in
    gate: str | None = None  # gated MLP gate projection
    gate_up: str | None = None  # fused gate/up projection (rows [gate; up])
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    qkv_layout: str = "separate"
    gated: bool = True
    notes: str = ""
    extra_config_keys: tuple[str, ...] = field(default_factory=tuple)

    # ----------------------------------------------------------------- structure
    def get_layers(self, model: nn.Module) -> nn.ModuleList:
        for path in self.layers:
            if _has(model, path):
                return model.get_submodule(path)
            # also accept the base model (without the LM head wrapper)
            tail = path.split(".", 1)[1] if "." in path else None
            if tail and _has(model, tail):
                return model.get_submodule(tail)
        raise FuncnetError(
            f"cannot find the decoder layers of this {self.family} model (looked for {', '.join(self.layers)})"
        )

    def n_layers(self, model: nn.Module) -> int:
        return len(self.get_layers(model))

    def module(self, layer: nn.Module, path: str | None) -> nn.Module:
        if path is None:
            raise FuncnetError(f"the {self.family} adapter has no such module")
        return layer.get_submodule(path)

    def down_proj(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.down)

    def n_neurons(self, layer: nn.Module) -> int:
        """MLP width of one layer (input features of its down projection)."""
        return in_features(self.down_proj(layer))

    def neurons_per_layer(self, model: nn.Module) -> list[int]:
        return [self.n_neurons(layer) for layer in self.get_layers(model)]

    def head_config(self, model_or_config) -> HeadConfig:
        cfg = getattr(model_or_config, "config", model_or_config)
        cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        n_heads = _first_attr(cfg, ("num_attention_heads", "n_head"))
        n_kv = _first_attr(cfg, ("num_key_value_heads",), default=n_heads) or n_heads
        hidden = _first_attr(cfg, ("hidden_size", "n_embd"))
        head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
        return HeadConfig(int(n_heads), int(n_kv), int(head_dim))

    def signal_width(self, model: nn.Module, layer_idx: int, signal: str) -> int:
        layer = self.get_layers(model)[layer_idx]
        if signal in ("neurons", "gate", "up"):
            self._check_signal(signal)
            return self.n_neurons(layer)
        if signal == "residual":
            cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            return int(_first_attr(cfg, ("hidden_size", "n_embd")))
        if signal == "heads":
            return in_features(layer.get_submodule(self.o_proj))
        raise FuncnetError(f"unknown signal '{signal}'; choose from {', '.join(SIGNALS)}")

    def _check_signal(self, signal: str) -> None:
        if signal not in SIGNALS:
            raise FuncnetError(f"unknown signal '{signal}'; choose from {', '.join(SIGNALS)}")
        if signal == "gate" and not self.gated:
            raise FuncnetError(
                f"signal 'gate' exists only for gated MLPs; {self.family} has a plain MLP (use 'neurons' or 'up')"
            )

    # ----------------------------------------------------------------- hooks
    def register_signal_hook(
        self, layer: nn.Module, signal: str, callback: Callable[[torch.Tensor], None]
    ) -> torch.utils.hooks.RemovableHandle:
        """Call ``callback(tensor[batch, seq, width])`` with the signal each time ``layer`` runs.

        Some families (OPT) flatten tokens inside the block; such signals are reshaped back to
        ``[batch, seq, width]`` using the shape of the layer's input. Returns one removable handle.
        """
        self._check_signal(signal)
        shape: dict = {}

        def pre(m, args, kwargs):
            h = args[0] if args else kwargs.get("hidden_states")
            if isinstance(h, torch.Tensor):
                shape["bt"] = h.shape[:-1]

        def cb(t: torch.Tensor):
            if t.dim() == 2 and "bt" in shape:
                t = t.reshape(*shape["bt"], t.shape[-1])
            callback(t)

        h1 = layer.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = self._register_raw(layer, signal, cb)
        return _Handles(h1, h2)

    def _register_raw(self, layer: nn.Module, signal: str, callback):
        if signal == "neurons":
            return self.down_proj(layer).register_forward_pre_hook(lambda m, args: callback(args[0]))
        if signal == "heads":
            return layer.get_submodule(self.o_proj).register_forward_pre_hook(lambda m, args: callback(args[0]))
        if signal == "residual":
            return layer.register_forward_hook(
                lambda m, args, out: callback(out[0] if isinstance(out, (tuple, list)) else out)
            )
        if signal == "gate":
            return layer.get_submodule(self.act).register_forward_hook(lambda m, args, out: callback(out))
        # up
        if self.gate_up is not None:
            width = self.n_neurons(layer)
            return layer.get_submodule(self.gate_up).register_forward_hook(
                lambda m, args, out: callback(out[..., width:])
            )
        return layer.get_submodule(self.up).register_forward_hook(lambda m, args, out: callback(out))

    def mlp_output_hook_module(self, layer: nn.Module) -> nn.Module:
        """The module whose output is the MLP's contribution (the down projection)."""
        return self.down_proj(layer)

    # ----------------------------------------------------------------- MLP math (for checks / pruning)
    def mlp_neurons_from_input(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Recompute the neuron signal from the MLP input ``x`` with this layer's own modules."""
        act = layer.get_submodule(self.act)
        if self.gate_up is not None:
            g, u = layer.get_submodule(self.gate_up)(x).chunk(2, dim=-1)
            return act(g) * u
        if self.gated:
            return act(layer.get_submodule(self.gate)(x)) * layer.get_submodule(self.up)(x)
        return act(layer.get_submodule(self.up)(x))

    def mlp_input_module(self, layer: nn.Module) -> nn.Module:
        """A module whose input is the (normalised) MLP input."""
        if self.gate_up is not None:
            return layer.get_submodule(self.gate_up)
        return layer.get_submodule(self.gate if self.gated else self.up)

    def mlp_param_count(self, layer: nn.Module) -> int:
        mods = [self.down_proj(layer)]
        mods += [layer.get_submodule(p) for p in (self.gate, self.up, self.gate_up) if p is not None]
        return sum(p.numel() for m in mods for p in m.parameters(recurse=False))

    def params_per_neuron(self, layer: nn.Module) -> int:
        """Parameters removed with one MLP neuron (its rows in gate/up or fc_in, column in down)."""
        hidden_in = in_features(self.mlp_input_module(layer))
        hidden_out = out_features(self.down_proj(layer))
        n_in = 2 if (self.gated) else 1
        bias = 0
        for p in (self.gate, self.up, self.gate_up):
            if p is not None and getattr(layer.get_submodule(p), "bias", None) is not None:
                bias += 2 if p == self.gate_up else 1
        return n_in * hidden_in + hidden_out + bias

    def attn_param_count(self, layer: nn.Module) -> int:
        paths = [self.o_proj] + [p for p in (self.q, self.k, self.v, self.qkv) if p is not None]
        return sum(p.numel() for path in paths for p in layer.get_submodule(path).parameters(recurse=False))


class _Handles:
    """Several hook handles removed together."""

    def __init__(self, *handles):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _first_attr(cfg, names: Sequence[str], default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    if default is not None:
        return default
    raise FuncnetError(f"model config has none of {', '.join(names)}")


_LLAMA_LIKE = dict(
    layers=("model.layers",),
    down="mlp.down_proj",
    gate="mlp.gate_proj",
    up="mlp.up_proj",
    act="mlp.act_fn",
    o_proj="self_attn.o_proj",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
)

_REGISTRY: dict[str, ArchAdapter] = {}


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    """Add (or replace) an adapter; it is found through any of its ``model_types``."""
    _REGISTRY[adapter.family] = adapter
    return adapter


for _fam, _types in [
    ("llama", ("llama",)),
    ("mistral", ("mistral",)),
    ("qwen2", ("qwen2",)),
    ("qwen3", ("qwen3",)),
    ("gemma", ("gemma",)),
    ("gemma2", ("gemma2",)),
]:
    register_adapter(ArchAdapter(family=_fam, model_types=_types, **_LLAMA_LIKE))

register_adapter(
    ArchAdapter(
        family="gemma3",
        model_types=("gemma3_text", "gemma3"),
        **{**_LLAMA_LIKE, "layers": ("model.layers", "model.language_model.layers")},
    )
)
register_adapter(
    ArchAdapter(
        family="phi3",
        model_types=("phi3",),
        layers=("model.layers",),
        down="mlp.down_proj",
        gate_up="mlp.gate_up_proj",
        act="mlp.activation_fn",
        o_proj="self_attn.o_proj",
        qkv="self_attn.qkv_proj",
        qkv_layout="fused",
    )
)
register_adapter(
    ArchAdapter(
        family="gpt2",
        model_types=("gpt2",),
        layers=("transformer.h",),
        down="mlp.c_proj",
        up="mlp.c_fc",
        act="mlp.act",
        o_proj="attn.c_proj",
        qkv="attn.c_attn",
        qkv_layout="fused",
        gated=False,
        notes="Conv1D weights ([in, out])",
    )
)
register_adapter(
    ArchAdapter(
        family="gpt_neox",
        model_types=("gpt_neox",),
        layers=("gpt_neox.layers",),
        down="mlp.dense_4h_to_h",
        up="mlp.dense_h_to_4h",
        act="mlp.act",
        o_proj="attention.dense",
        qkv="attention.query_key_value",
        qkv_layout="interleaved",
        gated=False,
    )
)
register_adapter(
    ArchAdapter(
        family="opt",
        model_types=("opt",),
        layers=("model.decoder.layers",),
        down="fc2",
        up="fc1",
        act="activation_fn",
        o_proj="self_attn.out_proj",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        gated=False,
    )
)


def supported_families() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_or_config) -> ArchAdapter:
    """The adapter for a model, a config, or a ``model_type`` string."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        cfg = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(cfg, "model_type", None)
    for ad in _REGISTRY.values():
        if model_type in ad.model_types or model_type == ad.family:
            return ad
    raise UnsupportedArchitectureError(
        f"unsupported architecture '{model_type}'; supported families: {', '.join(supported_families())}"
        " (add one with funcnet.adapters.register_adapter(ArchAdapter(...)), see docs/adapters.md)"
    )
