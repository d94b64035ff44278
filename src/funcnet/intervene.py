"""Interventions on MLP neurons: inhibit, amplify or preserve chosen neurons during any forward
pass or ``generate``.

A "neuron" is one input feature of a layer's down projection (the ``neurons`` signal, see
docs/design.md). Every intervention is one forward pre-hook per affected layer on
``adapter.down_proj(layer)`` that computes ``x * scale + shift`` with per-neuron ``scale`` /
``shift`` vectors built once (no Python loop over neurons at run time). The vectors are moved
lazily to the device and dtype of the incoming activations and cached there, so models spread
over devices with ``device_map`` work.

Selections (``neurons``) may be:

* a dict ``layer -> indices`` (list / array / tensor of ints) or ``layer -> bool mask`` of the
  layer's width (numpy or torch);
* a list of ``(layer, index)`` pairs (or an ``[n, 2]`` integer array);
* an object with ``to_layer_indices(networks=None)`` (e.g. :class:`funcnet.networks.FunctionalNetworks`)
  or ``neuron_sets()`` returning such a dict.

Usage::

    with inhibit(lm, {3: [1, 5, 9]}):
        out = lm.model.generate(...)
    with amplify(lm, networks, factor=2.0), preserve(lm, keep):
        ...   # nested interventions compose in order
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from funcnet.core.adapters import ArchAdapter
from funcnet.core.loaded import wrap_model
from funcnet.errors import FuncnetError

__all__ = [
    "resolve_neurons", "Intervention", "inhibit", "amplify", "preserve", "intervene",
    "random_like", "random_fraction", "count_neurons", "total_neurons", "layer_widths",
]

Selection = Any  # see module docstring


# ---------------------------------------------------------------------------------------- model
def _unwrap(model) -> tuple[nn.Module, ArchAdapter]:
    """(HF model, adapter) from a LoadedModel or a raw HF model."""
    lm = wrap_model(model)
    return lm.model, lm.adapter


def layer_widths(model) -> list[int]:
    """MLP width (number of neurons) of each decoder layer."""
    hf, adapter = _unwrap(model)
    return adapter.neurons_per_layer(hf)


def total_neurons(model) -> int:
    """Number of MLP neurons in the whole model."""
    return int(sum(layer_widths(model)))


# ----------------------------------------------------------------------------------- selections
def _as_int_layer(key, n_layers: int | None) -> int:
    try:
        layer = int(key)
    except (TypeError, ValueError):
        raise FuncnetError(f"layer keys must be integers, got {key!r}") from None
    if isinstance(key, (bool, np.bool_)) or layer != key:
        raise FuncnetError(f"layer keys must be integers, got {key!r}")
    if n_layers is not None:
        if layer < -n_layers or layer >= n_layers:
            raise FuncnetError(f"layer {layer} out of range: the model has {n_layers} layers")
        layer %= n_layers
    return layer


def _values_to_indices(layer: int, values, width: int | None) -> torch.Tensor:
    """One layer's selection (bool mask or indices) as sorted unique int64 indices (CPU)."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, (bool, np.bool_)):
        values = [int(values)]
    if isinstance(values, torch.Tensor):
        t = values.detach().to("cpu")
    else:
        arr = np.asarray(list(values) if isinstance(values, (set, frozenset, range)) else values)
        if arr.dtype == object:
            raise FuncnetError(f"layer {layer}: neuron indices must be integers or a bool mask")
        t = torch.from_numpy(np.ascontiguousarray(arr)) if arr.size else torch.zeros(0, dtype=torch.long)
    if t.dim() == 0:
        t = t.reshape(1)
    if t.dim() != 1:
        raise FuncnetError(f"layer {layer}: a selection must be 1-D (indices or a bool mask), got shape {tuple(t.shape)}")
    if t.dtype == torch.bool:
        if width is not None and t.numel() != width:
            raise FuncnetError(f"layer {layer}: bool mask has {t.numel()} entries but the layer has {width} neurons")
        return torch.nonzero(t, as_tuple=False).reshape(-1).to(torch.long)
    if t.is_floating_point():
        if t.numel() and not torch.equal(t, t.round()):
            raise FuncnetError(f"layer {layer}: neuron indices must be integers")
    elif t.is_complex():
        raise FuncnetError(f"layer {layer}: neuron indices must be integers")
    t = t.to(torch.long)
    if t.numel() and width is not None:
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= width:
            bad = lo if lo < 0 else hi
            raise FuncnetError(f"layer {layer}: neuron index {bad} out of range 0..{width - 1}")
    return torch.unique(t)  # sorted


def _raw_mapping(neurons, networks=None) -> Mapping | list:
    """Turn any accepted selection into a mapping layer -> values, or a list of pairs."""
    if neurons is None:
        raise FuncnetError("no neurons given")
    if hasattr(neurons, "to_layer_indices") and not isinstance(neurons, Mapping):
        out = neurons.to_layer_indices(networks=networks) if networks is not None else neurons.to_layer_indices()
        return out
    if hasattr(neurons, "neuron_sets") and not isinstance(neurons, Mapping):
        return neurons.neuron_sets()
    if networks is not None:
        raise FuncnetError("networks= only applies to a FunctionalNetworks selection")
    if isinstance(neurons, Mapping):
        return neurons
    if isinstance(neurons, (np.ndarray, torch.Tensor)):
        arr = neurons.detach().cpu().numpy() if isinstance(neurons, torch.Tensor) else neurons
        if arr.size == 0:
            return {}
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise FuncnetError(
                f"an array selection must be [n, 2] (layer, index) pairs, got shape {tuple(arr.shape)}"
            )
        return [tuple(int(v) for v in row) for row in arr]
    if isinstance(neurons, (list, tuple)):
        pairs = []
        for p in neurons:
            if not isinstance(p, (tuple, list, np.ndarray, torch.Tensor)) or len(p) != 2:
                raise FuncnetError(f"a list selection must hold (layer, index) pairs, got {p!r}")
            pairs.append((p[0], p[1]))
        return pairs
    raise FuncnetError(
        f"cannot read a neuron selection from {type(neurons).__name__}: use a dict layer -> indices/mask, "
        "(layer, index) pairs, or FunctionalNetworks"
    )


def _normalize(neurons, widths: list[int] | None, networks=None) -> dict[int, torch.Tensor]:
    raw = _raw_mapping(neurons, networks)
    n_layers = len(widths) if widths is not None else None
    if isinstance(raw, list):
        grouped: dict[int, list[int]] = {}
        for layer, idx in raw:
            layer = _as_int_layer(layer, n_layers)
            try:
                i = int(idx)
            except (TypeError, ValueError):
                raise FuncnetError(f"neuron index must be an integer, got {idx!r}") from None
            if i != idx:
                raise FuncnetError(f"neuron index must be an integer, got {idx!r}")
            grouped.setdefault(layer, []).append(i)
        raw = grouped
    if not isinstance(raw, Mapping):
        raise FuncnetError(f"a selection must resolve to a dict layer -> indices, got {type(raw).__name__}")
    out: dict[int, torch.Tensor] = {}
    for key, values in raw.items():
        layer = _as_int_layer(key, n_layers)
        width = widths[layer] if widths is not None else None
        idx = _values_to_indices(layer, values, width)
        if layer in out:
            idx = torch.unique(torch.cat([out[layer], idx]))
        out[layer] = idx
    return dict(sorted(out.items()))


def resolve_neurons(neurons: Selection, model, networks=None) -> dict[int, torch.LongTensor]:
    """A selection as ``{layer: sorted unique int64 indices}`` (CPU), validated against ``model``.

    Layers with an empty selection are kept (with an empty tensor). Negative layer numbers count
    from the end. ``networks`` is passed on to ``to_layer_indices`` of a FunctionalNetworks object.
    """
    return _normalize(neurons, layer_widths(model), networks)


def count_neurons(neurons: Selection, model=None) -> int:
    """Number of distinct neurons in a selection (validated when ``model`` is given)."""
    sel = _normalize(neurons, layer_widths(model) if model is not None else None)
    return int(sum(v.numel() for v in sel.values()))


# ------------------------------------------------------------------------------------- hooks
class _ScaleShiftHook:
    """Forward pre-hook computing ``x * scale + shift`` on the down projection's input."""

    def __init__(self, scale: torch.Tensor | None, shift: torch.Tensor | None):
        self.scale = scale
        self.shift = shift
        self._cache: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    def _vectors(self, device: torch.device, dtype: torch.dtype):
        key = (device, dtype)
        v = self._cache.get(key)
        if v is None:
            v = tuple(None if t is None else t.to(device=device, dtype=dtype) for t in (self.scale, self.shift))
            self._cache[key] = v
        return v

    def __call__(self, module, args):
        if not args:
            return None
        x = args[0]
        scale, shift = self._vectors(x.device, x.dtype)
        if scale is not None:
            x = x * scale
        if shift is not None:
            x = x + shift
        return (x,) + tuple(args[1:])


class Intervention:
    """Per-layer ``x * scale + shift`` on the MLP neurons; a reusable context manager.

    ``scale`` / ``shift``: dicts layer -> float tensor of the layer's width (``None`` entries mean
    1 / 0). Prefer the helpers :func:`inhibit`, :func:`amplify`, :func:`preserve`.
    ``attach()`` / ``remove()`` work outside ``with`` too.
    """

    def __init__(self, model, scale: dict[int, torch.Tensor] | None = None,
                 shift: dict[int, torch.Tensor] | None = None, name: str = "intervention"):
        self.hf, self.adapter = _unwrap(model)
        self.name = name
        layers = self.adapter.get_layers(self.hf)
        widths = [self.adapter.n_neurons(l) for l in layers]
        scale, shift = dict(scale or {}), dict(shift or {})
        self.layers: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        for i in sorted(set(scale) | set(shift)):
            li = _as_int_layer(i, len(layers))
            s, b = scale.get(i), shift.get(i)
            for t, what in ((s, "scale"), (b, "shift")):
                if t is not None and tuple(t.shape) != (widths[li],):
                    raise FuncnetError(f"layer {li}: {what} vector has shape {tuple(t.shape)}, expected ({widths[li]},)")
            if s is None and b is None:
                continue
            self.layers[li] = (None if s is None else s.detach().float().cpu(),
                               None if b is None else b.detach().float().cpu())
        self._handles: list = []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "Intervention":
        if self._handles:
            raise FuncnetError(f"this {self.name} is already active")
        layers = self.adapter.get_layers(self.hf)
        try:
            for li, (s, b) in self.layers.items():
                module = self.adapter.down_proj(layers[li])
                self._handles.append(module.register_forward_pre_hook(_ScaleShiftHook(s, b)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> "Intervention":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<{self.name} on {len(self.layers)} layers{' (active)' if self.active else ''}>"


def intervene(model, scale=None, shift=None) -> Intervention:
    """Low-level: an :class:`Intervention` from per-layer scale / shift vectors."""
    return Intervention(model, scale, shift)


def _widths_and_sel(model, neurons, networks):
    widths = layer_widths(model)
    sel = _normalize(neurons, widths, networks)
    return widths, sel


def inhibit(model, neurons: Selection, *, networks=None) -> Intervention:
    """Context manager that zeroes the selected neurons (the down projection's input)."""
    widths, sel = _widths_and_sel(model, neurons, networks)
    scale = {}
    for li, idx in sel.items():
        if idx.numel():
            s = torch.ones(widths[li])
            s[idx] = 0.0
            scale[li] = s
    return Intervention(model, scale=scale, name="inhibit")


def amplify(model, neurons: Selection, factor: float | None = None, add: float | None = None, *,
            networks=None) -> Intervention:
    """Context manager computing ``x * factor + add`` on the selected neurons (others untouched)."""
    if factor is None and add is None:
        raise FuncnetError("amplify needs factor= and/or add=")
    for v, what in ((factor, "factor"), (add, "add")):
        if v is not None and not np.isfinite(float(v)):
            raise FuncnetError(f"amplify {what} must be a finite number, got {v}")
    widths, sel = _widths_and_sel(model, neurons, networks)
    scale, shift = {}, {}
    for li, idx in sel.items():
        if not idx.numel():
            continue
        if factor is not None and float(factor) != 1.0:
            s = torch.ones(widths[li])
            s[idx] = float(factor)
            scale[li] = s
        if add is not None and float(add) != 0.0:
            b = torch.zeros(widths[li])
            b[idx] = float(add)
            shift[li] = b
    return Intervention(model, scale=scale, shift=shift, name="amplify")


def preserve(model, neurons: Selection, layers: Iterable[int] | None = None, *, networks=None) -> Intervention:
    """Context manager that zeroes every MLP neuron NOT selected, in all layers (or ``layers``)."""
    widths, sel = _widths_and_sel(model, neurons, networks)
    n_layers = len(widths)
    todo = range(n_layers) if layers is None else sorted({_as_int_layer(l, n_layers) for l in layers})
    scale = {}
    for li in todo:
        s = torch.zeros(widths[li])
        idx = sel.get(li)
        if idx is not None and idx.numel():
            s[idx] = 1.0
        scale[li] = s
    return Intervention(model, scale=scale, name="preserve")


# ------------------------------------------------------------------------------ random controls
def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def random_like(neurons: Selection, model, seed: int = 0, match: str = "layer",
                exclude: bool | Selection | None = None, *, networks=None) -> dict[int, torch.LongTensor]:
    """A seeded random selection of the same size as ``neurons``.

    match="layer": the same number of neurons in each layer; match="model": the same total,
    drawn uniformly over all MLP neurons of the model. ``exclude``: ``True`` to never pick the
    original neurons, or another selection to avoid.
    """
    widths, sel = _widths_and_sel(model, neurons, networks)
    if match not in ("layer", "model"):
        raise FuncnetError(f"match must be 'layer' or 'model', got '{match}'")
    if exclude is True:
        excl = sel
    elif exclude is None or exclude is False:
        excl = {}
    else:
        excl = _normalize(exclude, widths)
    g = _generator(seed)
    out: dict[int, torch.Tensor] = {}
    if match == "layer":
        for li, idx in sel.items():
            n = idx.numel()
            allowed = torch.ones(widths[li], dtype=torch.bool)
            if li in excl:
                allowed[excl[li]] = False
            pool = torch.nonzero(allowed).reshape(-1)
            if n > pool.numel():
                raise FuncnetError(
                    f"layer {li}: cannot draw {n} random neurons from the {pool.numel()} not excluded"
                )
            out[li] = torch.sort(pool[torch.randperm(pool.numel(), generator=g)[:n]]).values
        return out
    n = sum(v.numel() for v in sel.values())
    offsets = np.concatenate([[0], np.cumsum(widths)])
    allowed = torch.ones(int(offsets[-1]), dtype=torch.bool)
    for li, idx in excl.items():
        allowed[idx + int(offsets[li])] = False
    pool = torch.nonzero(allowed).reshape(-1)
    if n > pool.numel():
        raise FuncnetError(f"cannot draw {n} random neurons from the {pool.numel()} not excluded")
    flat = torch.sort(pool[torch.randperm(pool.numel(), generator=g)[:n]]).values
    layer_of = torch.bucketize(flat, torch.as_tensor(offsets[1:], dtype=torch.long), right=True)
    for li in range(len(widths)):
        m = layer_of == li
        if m.any():
            out[li] = flat[m] - int(offsets[li])
    return out


def random_fraction(model, fraction: float, seed: int = 0, match: str = "layer",
                    layers: Iterable[int] | None = None) -> dict[int, torch.LongTensor]:
    """A seeded random ``fraction`` of the MLP neurons: ``round(fraction * width)`` per layer
    (match="layer"), or ``round(fraction * total)`` drawn over the model (match="model")."""
    fraction = float(fraction)
    if not 0.0 <= fraction <= 1.0:
        raise FuncnetError(f"fraction must be between 0 and 1, got {fraction}")
    if match not in ("layer", "model"):
        raise FuncnetError(f"match must be 'layer' or 'model', got '{match}'")
    widths = layer_widths(model)
    todo = range(len(widths)) if layers is None else sorted({_as_int_layer(l, len(widths)) for l in layers})
    g = _generator(seed)
    if match == "layer":
        out = {}
        for li in todo:
            k = int(round(fraction * widths[li]))
            out[li] = torch.sort(torch.randperm(widths[li], generator=g)[:k]).values
        return out
    k = int(round(fraction * sum(widths[li] for li in todo)))
    offsets = np.concatenate([[0], np.cumsum([widths[li] for li in todo])])
    flat = torch.sort(torch.randperm(int(offsets[-1]), generator=g)[:k]).values
    layer_pos = torch.bucketize(flat, torch.as_tensor(offsets[1:], dtype=torch.long), right=True)
    out = {}
    for pos, li in enumerate(todo):
        m = layer_pos == pos
        if m.any():
            out[li] = flat[m] - int(offsets[pos])
    return out
