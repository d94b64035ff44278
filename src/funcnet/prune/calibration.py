"""Calibration statistics: per-neuron sums, squares and (optionally) covariance of the
down-projection inputs, streamed over calibration text."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch

from funcnet.core._io import sha256_text
from funcnet.core.forward import forward_batches, iter_batches
from funcnet.core.models import as_loaded
from funcnet.core.progress import progress_bar
from funcnet.data.corpus import Corpus, load_corpus, tokenize
from funcnet.errors import FuncnetError

log = logging.getLogger(__name__)




# =============================================================================================
# 1. calibration statistics
# =============================================================================================
@dataclass
class CalibStats:
    """Per-layer float64 statistics of the down-projection input (and optionally o_proj input)."""

    n_tokens: int
    neuron_sum: dict[int, np.ndarray]
    neuron_sumsq: dict[int, np.ndarray]
    head_sum: dict[int, np.ndarray] = field(default_factory=dict)
    head_sumsq: dict[int, np.ndarray] = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    #: per-layer sums of x x^T of the down-projection input (``covariance=True``): what least-squares
    #: compensation needs; width x width float64 per layer
    neuron_xtx: dict[int, np.ndarray] = field(default_factory=dict)
    #: per-layer centered covariance of the neurons as a torch tensor on the model's device (float32),
    #: what the layer-by-layer pass (:mod:`funcnet.prune.layerwise`) computes and keeps one layer at a time
    neuron_cov: dict[int, torch.Tensor] = field(default_factory=dict)

    def mean(self, layer: int, kind: str = "neurons") -> np.ndarray:
        s = self.neuron_sum if kind == "neurons" else self.head_sum
        return s[layer] / max(self.n_tokens, 1)

    def var(self, layer: int, kind: str = "neurons") -> np.ndarray:
        s, q = (self.neuron_sum, self.neuron_sumsq) if kind == "neurons" else (self.head_sum, self.head_sumsq)
        n = max(self.n_tokens, 1)
        m = s[layer] / n
        return np.maximum(q[layer] / n - m * m, 0.0)

    def sq_norm(self, layer: int, kind: str = "neurons") -> np.ndarray:
        """Squared L2 norm of each channel over all calibration tokens."""
        return (self.neuron_sumsq if kind == "neurons" else self.head_sumsq)[layer]

    def has_cov(self, layer: int) -> bool:
        """Whether the neurons' covariance of ``layer`` is known."""
        return layer in self.neuron_cov or layer in self.neuron_xtx

    def cov(self, layer: int) -> np.ndarray | torch.Tensor:
        """Covariance matrix of the MLP neurons of ``layer`` (needs ``covariance=True``): a float64
        array, or the torch tensor (model's device) of a layer-by-layer pass."""
        if layer in self.neuron_cov:
            return self.neuron_cov[layer]
        if layer not in self.neuron_xtx:
            raise FuncnetError(f"no neuron covariance for layer {layer}: least-squares compensation needs "
                               "calibration statistics recorded with covariance=True")
        n = max(self.n_tokens, 1)
        m = self.mean(layer)
        return self.neuron_xtx[layer] / n - np.outer(m, m)

    @property
    def has_covariance(self) -> bool:
        return bool(self.neuron_xtx) or bool(self.neuron_cov)


def _calib_texts(calib) -> tuple[list[str], Any, dict]:
    """Returns (texts, funcnet.corpus.Corpus or None, identity)."""
    if calib is None:
        raise FuncnetError("calibration text is needed: pass calib= (texts, a corpus or a corpus spec)")
    if isinstance(calib, (str, os.PathLike)):
        corpus = load_corpus(str(calib), split="calib")
        texts = list(corpus.texts)
        ident = {"spec": str(calib), "split": "calib", "n_texts": len(texts),
                 "sha256": str(getattr(corpus, "identity", "") or sha256_text(*texts))[:16]}
        return texts, corpus, ident
    if hasattr(calib, "texts"):
        texts = [str(t) for t in calib.texts]
        ident = {"spec": str(getattr(calib, "spec", getattr(calib, "name", type(calib).__name__)))}
        ident.update({"n_texts": len(texts), "sha256": sha256_text(*texts)[:16]})
        return texts, (calib if _is_corpus(calib) else None), ident
    texts = [str(t) for t in calib]
    if not any(t.strip() for t in texts):
        raise FuncnetError("calibration text is empty")
    return texts, None, {"spec": "texts", "n_texts": len(texts), "sha256": sha256_text(*texts)[:16]}


def _is_corpus(obj) -> bool:
    return isinstance(obj, Corpus)


def _packed_batches(texts, corpus, tokenizer, max_length, max_tokens, batch_size):
    """Yield (input_ids, attention_mask) batches of packed windows: funcnet.data.corpus.tokenize when it
    accepts the tokenizer, else (a minimal tokenizer: a callable returning ``input_ids``, without
    ``len()`` or offsets) EOS-joined windows packed here (last one partial). Both are padded by
    :func:`funcnet.core.forward.iter_batches`."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    try:
        corp = corpus if corpus is not None else load_corpus([t for t in texts if t.strip()])
        tc = tokenize(corp, tokenizer, max_length=max_length, mode="packed", max_tokens=max_tokens)
    except (TypeError, AttributeError) as e:  # e.g. a minimal tokenizer: pack here instead
        log.debug("funcnet.data.corpus.tokenize unusable (%s); packing calibration text here", e)
    else:
        for inp, mask, _ in tc.batches(batch_size, pad):
            yield inp, mask
        return
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
        if max_tokens and len(ids) >= max_tokens:
            break
    if max_tokens:
        ids = ids[:max_tokens]
    windows = [ids[i : i + max_length] for i in range(0, len(ids), max_length)]
    windows = [w for w in windows if len(w) > 1]
    for inp, mask, _ in iter_batches(windows, batch_size, pad):
        yield inp, mask


def calibration_stats(
    model,
    calib,
    *,
    tokenizer=None,
    calib_tokens: int = 8192,
    max_length: int = 128,
    batch_size: int = 8,
    heads: bool = False,
    layers: Iterable[int] | None = None,
    covariance: bool = False,
    covariance_layers: Iterable[int] | None = None,
) -> CalibStats:
    """Stream calibration text through the dense model and accumulate, per layer, float64 sums and
    sums of squares of every MLP neuron (down-projection input), and of every o_proj input channel
    when ``heads``. Padding is excluded via the attention mask. Memory: O(layers x width); with
    ``covariance`` also the float64 sums of x x^T of the neurons (O(layers x width^2), only for
    ``covariance_layers`` when given: least-squares compensation needs them for pruned layers only)."""
    lm = as_loaded(model, tokenizer)
    if lm.tokenizer is None:
        raise FuncnetError("calibration needs a tokenizer")
    texts, corpus, ident = _calib_texts(calib)
    adapter, mdl = lm.adapter, lm.model
    all_layers = adapter.get_layers(mdl)
    layer_ids = list(range(len(all_layers))) if layers is None else sorted(set(int(i) for i in layers))
    state: dict[str, Any] = {"mask": None}
    nsum, nsq, hsum, hsq, xtx = {}, {}, {}, {}, {}
    cov_ids = set(layer_ids if covariance_layers is None else (int(i) for i in covariance_layers)) \
        if covariance else set()

    def make_cb(i, s_dict, q_dict, c_dict=None):
        def cb(x):
            m = state["mask"]
            x = x.detach()
            x = x[m.to(x.device)] if m is not None else x.reshape(-1, x.shape[-1])
            x = x.to(torch.float64)  # on the model's device (the CPU: as before, bit for bit)
            s = x.sum(0)
            q = (x * x).sum(0)
            if i in s_dict:
                s_dict[i] += s
                q_dict[i] += q
            else:
                s_dict[i], q_dict[i] = s, q
            if c_dict is not None:
                if i in c_dict:
                    c_dict[i].addmm_(x.t(), x)
                else:
                    c_dict[i] = x.t() @ x

        return cb

    handles = []
    try:
        for i in layer_ids:
            handles.append(adapter.register_signal_hook(all_layers[i], "neurons",
                                                        make_cb(i, nsum, nsq, xtx if i in cov_ids else None)))
            if heads:
                handles.append(adapter.register_signal_hook(all_layers[i], "heads", make_cb(i, hsum, hsq)))
        n_tok = 0
        was_training = mdl.training
        mdl.eval()
        bar = progress_bar(total=calib_tokens or None, desc="calibration", unit="tok")

        def before(batch):
            state["mask"] = batch[1].bool()

        # the model's body only (no LM head): the hooks read hidden signals, under inference mode
        batches = _packed_batches(texts, corpus, lm.tokenizer, max_length, calib_tokens, batch_size)
        for _inp, mask in forward_batches(mdl, batches, before=before):
            k = int(mask.sum())
            n_tok += k
            bar.update(k)
        bar.close()
        mdl.train(was_training)
    finally:
        for h in handles:
            h.remove()
    if n_tok == 0:
        raise FuncnetError("calibration text produced no tokens")
    ident["tokens"] = n_tok
    to_np = lambda d: {i: v.cpu().numpy() for i, v in d.items()}  # noqa: E731
    if covariance:
        ident["covariance"] = True
    return CalibStats(n_tok, to_np(nsum), to_np(nsq), to_np(hsum), to_np(hsq), ident, to_np(xtx))
