"""The one padded, batched forward loop: token sequences -> right-padded ``(input_ids, attention_mask)``
batches -> the model's body (no LM head) on its input device, under :func:`torch.inference_mode`.

Recording (:mod:`funcnet.data.record`), calibration statistics (:mod:`funcnet.prune.calibration`) and
:meth:`funcnet.data.corpus.TokenizedCorpus.batches` all batch and run sequences through here; what they
read off the model comes from forward hooks, which see the batch's mask through ``before``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from funcnet.core.loaded import input_device
from funcnet.errors import FuncnetError

__all__ = ["forward_batches", "iter_batches", "model_body", "pad_batch"]


def pad_batch(seqs: Sequence[Any], pad_id: int | None = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id sequences (arrays or lists of ints) into ``(input_ids, attention_mask)``.

    Both are ``torch.long`` tensors of shape ``[len(seqs), longest sequence]`` on the CPU; padding
    positions have id ``pad_id`` (0 when None) and mask 0, every real token has mask 1.
    """
    if len(seqs) == 0:
        raise FuncnetError("cannot pad an empty batch: it has no sequences")
    arrays = [np.asarray(s) for s in seqs]
    width = max(len(a) for a in arrays)
    pad = 0 if pad_id is None else int(pad_id)
    ids = torch.full((len(arrays), width), pad, dtype=torch.long)
    mask = torch.zeros((len(arrays), width), dtype=torch.long)
    for r, a in enumerate(arrays):
        n = len(a)
        ids[r, :n] = torch.as_tensor(a, dtype=torch.long)
        mask[r, :n] = 1
    return ids, mask


def iter_batches(
    seqs: Sequence[Any], batch_size: int, pad_id: int | None = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
    """Yield ``(input_ids, attention_mask, indices)`` for consecutive groups of ``batch_size`` sequences,
    in order (the last group may be smaller); ``indices`` are the positions of the group in ``seqs``."""
    if batch_size < 1:
        raise FuncnetError(f"batch_size must be at least 1, got {batch_size}")
    for lo in range(0, len(seqs), batch_size):
        idx = list(range(lo, min(lo + batch_size, len(seqs))))
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        yield ids, mask, idx


def model_body(model):
    """The part of a causal LM that computes hidden states: ``model.base_model`` (no LM head) when it
    has one, else the model itself."""
    body = getattr(model, "base_model", None)
    return model if body is None else body


def forward_batches(
    model,
    batches: Iterable[tuple],
    *,
    before: Callable[[tuple], None] | None = None,
    stop: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Iterator[tuple]:
    """Run the body of ``model`` (:func:`model_body`) over ``batches`` and yield each batch after its pass.

    Each batch is a tuple whose first two items are ``input_ids`` and ``attention_mask`` (as from
    :func:`iter_batches`; further items pass through). Inputs go to the model's input device
    (:func:`funcnet.core.loaded.input_device`); the pass runs under :func:`torch.inference_mode` with
    ``use_cache=False`` and its output is discarded: callers read what they need with forward hooks.
    ``before(batch)`` is called just before each pass (to hand the mask to those hooks); an exception of
    type ``stop`` raised inside the pass (a hook ending it early after the last layer needed) ends only
    that pass.
    """
    body = model_body(model)
    dev = input_device(model)
    for batch in batches:
        if before is not None:
            before(batch)
        ids, mask = batch[0], batch[1]
        with torch.inference_mode():
            try:
                body(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
            except stop:
                pass
        yield batch
