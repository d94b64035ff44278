"""The one padded batched forward loop (funcnet.core.forward): padding, masks, order, device, inference mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_model
from funcnet.core.forward import forward_batches, iter_batches, model_body, pad_batch
from funcnet.errors import FuncnetError


# ------------------------------------------------------------------------------------------ padding
def test_pad_batch_right_pads_with_pad_id_and_masks_real_tokens():
    seqs = [np.array([5, 6, 7], dtype=np.int64), [8], np.array([9, 10], dtype=np.int32)]
    ids, mask = pad_batch(seqs, pad_id=3)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.device.type == "cpu" and mask.device.type == "cpu"
    assert ids.tolist() == [[5, 6, 7], [8, 3, 3], [9, 10, 3]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


def test_pad_batch_pad_id_none_is_zero_and_empty_batch_is_refused():
    ids, mask = pad_batch([[4, 4], [7]], pad_id=None)
    assert ids.tolist() == [[4, 4], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    with pytest.raises(FuncnetError, match="empty batch"):
        pad_batch([], 0)


def test_pad_batch_keeps_large_ids_exactly():
    big = np.array([2**40 + 1, 151_935], dtype=np.int64)  # beyond float32 precision: no float round-trip
    ids, _ = pad_batch([big], 0)
    assert ids[0].tolist() == big.tolist()


# ------------------------------------------------------------------------------------------ batching
def test_iter_batches_in_order_with_indices_and_a_smaller_last_batch():
    seqs = [[i] * (1 + i % 3) for i in range(7)]
    batches = list(iter_batches(seqs, 3, pad_id=99))
    assert [b[2] for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    for ids, mask, idx in batches:
        assert ids.shape == mask.shape == (len(idx), max(len(seqs[i]) for i in idx))
        for r, i in enumerate(idx):  # each row is its sequence, then padding
            n = len(seqs[i])
            assert ids[r, :n].tolist() == seqs[i] and mask[r, :n].tolist() == [1] * n
            assert (ids[r, n:] == 99).all() and (mask[r, n:] == 0).all()
    assert sum(int(m.sum()) for _, m, _ in batches) == sum(len(s) for s in seqs)


def test_iter_batches_rejects_batch_size_below_one():
    with pytest.raises(FuncnetError, match="batch_size"):
        next(iter_batches([[1]], 0))
    assert list(iter_batches([], 4)) == []


# ------------------------------------------------------------------------------------------ forward loop
class _Spy(torch.nn.Module):
    """Records what each forward pass receives; raises ``_Stop`` when the first id is 13."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 2)
        self.calls = []

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, attention_mask, **kw):
        self.calls.append(dict(ids=input_ids.tolist(), mask=attention_mask.tolist(), device=input_ids.device,
                               mask_device=attention_mask.device, kw=kw, inference=torch.is_inference_mode_enabled()))
        if int(input_ids[0, 0]) == 13:
            raise _Stop
        return self.emb(input_ids)


class _Stop(Exception):
    pass


def test_forward_batches_runs_each_batch_in_order_on_the_input_device_under_inference_mode():
    spy = _Spy()
    seqs = [[1, 2, 3], [4], [5, 6]]
    seen_before = []
    out = list(forward_batches(spy, iter_batches(seqs, 2, pad_id=0),
                               before=lambda b: seen_before.append((b[2], len(spy.calls)))))
    # yields every batch (extra items pass through), after its pass; `before` runs just before each pass
    assert [b[2] for b in out] == [[0, 1], [2]]
    assert seen_before == [([0, 1], 0), ([2], 1)]
    assert [c["ids"] for c in spy.calls] == [[[1, 2, 3], [4, 0, 0]], [[5, 6]]]
    assert [c["mask"] for c in spy.calls] == [[[1, 1, 1], [1, 0, 0]], [[1, 1]]]
    assert all(c["device"] == spy.emb.weight.device == c["mask_device"] for c in spy.calls)
    assert all(c["inference"] for c in spy.calls) and not torch.is_inference_mode_enabled()
    assert all(c["kw"] == {"use_cache": False} for c in spy.calls)


def test_forward_batches_stop_ends_only_that_pass_and_other_errors_propagate():
    spy = _Spy()
    batches = list(iter_batches([[13, 1], [2, 3], [13]], 1, pad_id=0))
    assert [b[2] for b in forward_batches(spy, batches, stop=_Stop)] == [[0], [1], [2]]
    assert len(spy.calls) == 3
    with pytest.raises(_Stop):
        list(forward_batches(_Spy(), batches))


def test_model_body_is_the_base_model_without_lm_head():
    model = tiny_model("llama")
    assert model_body(model) is model.model and not hasattr(model_body(model), "lm_head")
    spy = _Spy()
    assert model_body(spy) is spy


def test_forward_batches_padding_does_not_change_real_tokens():
    """A tiny llama: the last layer's hidden states of each real token are those of the sequence run alone."""
    model = tiny_model("llama", n_layers=2)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(3, 128, size=n) for n in (9, 3, 6, 1, 5)]
    got: dict = {}
    h = model.model.layers[-1].register_forward_hook(lambda m, a, o: got.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    try:
        rows = {}
        for ids, mask, idx in forward_batches(model, iter_batches(seqs, 2, pad_id=0)):
            for r, i in enumerate(idx):
                rows[i] = got["h"][r, : len(seqs[i])].clone()
        for i, s in enumerate(seqs):
            with torch.no_grad():
                model.model(input_ids=torch.as_tensor(s)[None], use_cache=False)
            torch.testing.assert_close(rows[i], got["h"][0], rtol=1e-5, atol=1e-5)
    finally:
        h.remove()
    assert sorted(rows) == list(range(len(seqs)))
