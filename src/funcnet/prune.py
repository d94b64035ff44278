"""Structured pruning of MLP neurons (and optionally attention heads) to an exact size.

Pipeline::

    stats = calibration_stats(lm, calib)                 # streamed per-neuron mean / var / ||x||^2
    imp = compute_importance("flap", lm, stats)          # per-layer scores, higher = keep
    sel = select(lm, imp, ratio=0.2, of="mlp")           # exact target, global or uniform allocation
    apply_selection(lm, sel, stats)                      # bias compensation + physical shrink
    save_pruned(lm.model, lm.tokenizer, "out/", report)  # HF folder that loads without funcnet

or all at once: ``result = prune(lm, ratio=0.2, of="mlp", method="flap", calib=texts)``.

Ratio denominators ("of"): ``mlp`` = parameters of all MLP projections, ``attn+mlp`` = those plus
the attention projections (FLAP / LLM-Pruner's convention), ``all`` = every parameter of the model
(embeddings, norms, head included). The achieved ratio counts parameters added by bias
compensation (a bias on each down / output projection that had none), so it is the true net change.

Importance plug-in: any callable ``(lm, stats, *, seed, heads, **kw) -> Importance`` in
:data:`METHODS`; ``Importance.neurons`` is ``{layer: np.ndarray[width]}`` (higher = keep), optional
``Importance.heads`` is ``{layer: np.ndarray[n_kv_groups]}``, optional ``Importance.keep_masks`` is
``{layer: bool array}`` for threshold rules (the ratio is then an outcome, not a target).
The functional-network methods (``fn``, ``fn-threshold``) call ``funcnet.networks``:
``pruning_importance(networks, lm, **kw) -> dict[int, np.ndarray]`` and
``pruning_keep_masks(networks, lm, **kw) -> dict[int, np.ndarray[bool]]``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ._io import atomic_path, sha256_text
from ._io import json_default as _json_default
from .adapters import ArchAdapter, _get, weight_out_in
from .errors import FuncnetError
from .models import LoadedModel, as_loaded, count_parameters, input_device
from . import shrink

log = logging.getLogger(__name__)

DENOMINATORS = ("mlp", "attn+mlp", "all")
ALLOCATIONS = ("global", "uniform")
DEFAULT_PROTECT = (3, 2)
REPORT_NAME = "pruning_report.json"
MODELING_NAME = "modeling_funcnet_pruned.py"


def _progress(iterable=None, **kw):
    from tqdm.auto import tqdm

    disable = os.environ.get("FUNCNET_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, **kw)


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

    def cov(self, layer: int) -> np.ndarray:
        """Covariance matrix of the MLP neurons of ``layer`` (needs ``covariance=True``)."""
        if layer not in self.neuron_xtx:
            raise FuncnetError(f"no neuron covariance for layer {layer}: least-squares compensation needs "
                               "calibration statistics recorded with covariance=True")
        n = max(self.n_tokens, 1)
        m = self.mean(layer)
        return self.neuron_xtx[layer] / n - np.outer(m, m)

    @property
    def has_covariance(self) -> bool:
        return bool(self.neuron_xtx)


def _calib_texts(calib) -> tuple[list[str], Any, dict]:
    """Returns (texts, funcnet.corpus.Corpus or None, identity)."""
    if calib is None:
        raise FuncnetError("calibration text is needed: pass calib= (texts, a corpus or a corpus spec)")
    if isinstance(calib, (str, os.PathLike)):
        try:
            from .corpus import load_corpus
        except ImportError as e:
            raise FuncnetError(f"corpus spec '{calib}' needs funcnet.corpus, which is not available") from e
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
    try:
        from .corpus import Corpus
    except ImportError:
        return False
    return isinstance(obj, Corpus)


def _packed_batches(texts, corpus, tokenizer, max_length, max_tokens, batch_size):
    """Yield (input_ids, attention_mask) batches of packed windows: funcnet.corpus.tokenize when it is
    available and accepts the tokenizer, else EOS-joined windows packed here (last one partial)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    try:
        from .corpus import load_corpus, tokenize
    except ImportError:
        tokenize = None
    if tokenize is not None:
        try:
            corp = corpus if corpus is not None else load_corpus([t for t in texts if t.strip()])
            tc = tokenize(corp, tokenizer, max_length=max_length, mode="packed", max_tokens=max_tokens)
        except (TypeError, AttributeError) as e:  # e.g. a minimal tokenizer: pack here instead
            log.debug("funcnet.corpus.tokenize unusable (%s); packing calibration text here", e)
        else:
            for item in tc.batches(batch_size, pad):
                yield item[0], item[1]
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
    for b in range(0, len(windows), batch_size):
        chunk = windows[b : b + batch_size]
        L = max(len(w) for w in chunk)
        inp = torch.full((len(chunk), L), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for r, w in enumerate(chunk):
            inp[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = 1
        yield inp, mask


@torch.no_grad()
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
            x = x.to("cpu", torch.float64)
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
        dev = input_device(mdl)
        body = getattr(mdl, "base_model", mdl) or mdl  # skip the LM head: only hidden signals are needed
        n_tok = 0
        was_training = mdl.training
        mdl.eval()
        bar = _progress(total=calib_tokens or None, desc="calibration", unit="tok")
        for inp, mask in _packed_batches(texts, corpus, lm.tokenizer, max_length, calib_tokens, batch_size):
            state["mask"] = mask.bool()
            body(input_ids=inp.to(dev), attention_mask=mask.to(dev), use_cache=False)
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
    to_np = lambda d: {i: v.numpy() for i, v in d.items()}  # noqa: E731
    if covariance:
        ident["covariance"] = True
    return CalibStats(n_tok, to_np(nsum), to_np(nsq), to_np(hsum), to_np(hsq), ident, to_np(xtx))


# =============================================================================================
# 2. importance
# =============================================================================================
@dataclass
class Importance:
    """Per-layer scores, higher = keep. ``heads`` scores whole key/value groups."""

    neurons: dict[int, np.ndarray]
    heads: dict[int, np.ndarray] | None = None
    keep_masks: dict[int, np.ndarray] | None = None
    method: str = ""


def _w(adapter, layer, path) -> torch.Tensor:
    return weight_out_in(_get(layer, path)).detach().to("cpu", torch.float64)


def _group_channel_scores(ch: np.ndarray, hc) -> np.ndarray:
    """Mean of per-channel scores over each key/value group's query-head channels."""
    return ch.reshape(hc.n_kv_heads, -1).mean(1)


def _head_config(lm: LoadedModel, i: int):
    return shrink.layer_head_config(lm.adapter, lm.model, lm.layers[i])


def imp_random(lm: LoadedModel, stats=None, *, seed: int = 0, heads: bool = False, **_) -> Importance:
    rng = np.random.default_rng(seed)
    neurons = {i: rng.random(lm.adapter.n_neurons(l)) for i, l in enumerate(lm.layers)}
    hs = {i: rng.random(_head_config(lm, i).n_kv_heads) for i in range(lm.n_layers)} if heads else None
    return Importance(neurons, hs, method="random")


def imp_magnitude(lm: LoadedModel, stats=None, *, heads: bool = False, **_) -> Importance:
    ad = lm.adapter
    neurons, hs = {}, {} if heads else None
    for i, layer in enumerate(lm.layers):
        w = ad.n_neurons(layer)
        sq = (_w(ad, layer, ad.down) ** 2).sum(0)
        if ad.gate_up is not None:
            gu = (_w(ad, layer, ad.gate_up) ** 2).sum(1)
            sq = sq + gu[:w] + gu[w:]
        for p in (ad.gate, ad.up):
            if p is not None:
                sq = sq + (_w(ad, layer, p) ** 2).sum(1)
        neurons[i] = sq.sqrt().numpy()
        if heads:
            o = (_w(ad, layer, ad.o_proj) ** 2).sum(0).numpy()
            hs[i] = np.sqrt(_group_channel_scores(o, _head_config(lm, i)))
    return Importance(neurons, hs, method="magnitude")


def _need(stats, heads):
    if stats is None:
        raise FuncnetError("this method needs calibration statistics (pass calib=...)")
    if heads and not stats.head_sum:
        raise FuncnetError("head importance needs calibration statistics recorded with heads=True")


def imp_wanda_sp(lm: LoadedModel, stats: CalibStats | None = None, *, heads: bool = False, **_) -> Importance:
    """Wanda-sp: mean over output rows of |W[:, j]| * ||x_j||_2."""
    _need(stats, heads)
    ad = lm.adapter
    neurons, hs = {}, {} if heads else None
    for i, layer in enumerate(lm.layers):
        norm = np.sqrt(stats.sq_norm(i))
        neurons[i] = _w(ad, layer, ad.down).abs().mean(0).numpy() * norm
        if heads:
            ch = _w(ad, layer, ad.o_proj).abs().mean(0).numpy() * np.sqrt(stats.sq_norm(i, "heads"))
            hs[i] = _group_channel_scores(ch, _head_config(lm, i))
    return Importance(neurons, hs, method="wanda-sp")


def _strongest(strength: np.ndarray, most: int) -> np.ndarray:
    """Indices (sorted) of the positive entries of ``strength``, at most ``most`` of the largest."""
    cand = np.flatnonzero(strength > 0)
    if len(cand) > most:
        cand = cand[np.argsort(-strength[cand], kind="stable")[:most]]
    return np.sort(cand)


def conditional_fluctuation(lm: LoadedModel, stats: CalibStats, *, ridge: float = 0.1, networks=None,
                            max_regressors: int = 128, fn_threshold: float = 3.6) -> dict[int, np.ndarray]:
    """||W[:, j]||^2 * Var(x_j | regressors): the output error of removing neuron j alone when
    least-squares compensation reconstructs it from the regressors (FLAP's WIFV with the variance
    the other neurons cannot explain). Regressors: every other neuron of the layer (``networks``
    None: 1 / (M^-1)_jj with M = C + ridge diag(C)), or neuron j's strongest co-members in its
    functional networks (as ``ls-fn``). Layers without a covariance get WIFV."""
    ad = lm.adapter
    if networks is not None:
        _, networks = _load_networks(networks, lm)
    out = {}
    for i, layer in enumerate(lm.layers):
        w2 = (_w(ad, layer, ad.down) ** 2).sum(0)
        if i not in stats.neuron_xtx:
            out[i] = (torch.as_tensor(stats.var(i)) * w2).numpy()
            continue
        C = torch.as_tensor(stats.cov(i), dtype=torch.float64)
        d = torch.diagonal(C).clamp_min(0)
        n = C.shape[0]
        if networks is None:
            M = C + torch.diag(ridge * d + 1e-12 * max(float(d.mean()), 1e-30))
            cond = 1.0 / torch.diagonal(torch.cholesky_inverse(torch.linalg.cholesky(M)))
            cond = (cond - ridge * d).clamp_min(0)  # the residual variance, not counting the ridge on x_j itself
        else:
            strength = network_comembers(networks, i, n, threshold=fn_threshold)
            np.fill_diagonal(strength, 0.0)
            cond = d.clone()
            for j in range(n):
                cand = _strongest(strength[j], max_regressors)
                if not len(cand):
                    continue
                S = torch.as_tensor(cand)
                a = _ridge_solve(C[S][:, S], C[j, S][None, :], ridge)[0]
                cond[j] = (C[j, j] - a @ C[S, j]).clamp_min(0)
        out[i] = (cond * w2).numpy()
    return out


def imp_flap(lm: LoadedModel, stats: CalibStats | None = None, *, heads: bool = False, score: str | None = None,
             cond_power: float = 1.0, cond_ridge: float = 0.1, **_) -> Importance:
    """FLAP's fluctuation metric WIFV = Var(x_j) * ||W[:, j]||^2 (heads: mean over channels).
    ``score="cond"``: WIFV^(1 - cond_power) * conditional WIFV^cond_power (:func:`conditional_fluctuation`,
    needs covariance statistics), the variant that anticipates least-squares compensation."""
    _need(stats, heads)
    ad = lm.adapter
    neurons, hs = {}, {} if heads else None
    if score not in (None, "wifv", "cond"):
        raise FuncnetError(f"unknown flap score '{score}' (wifv, cond)")
    cond = conditional_fluctuation(lm, stats, ridge=cond_ridge) if score == "cond" else None
    for i, layer in enumerate(lm.layers):
        neurons[i] = stats.var(i) * (_w(ad, layer, ad.down) ** 2).sum(0).numpy()
        if cond is not None:
            neurons[i] = neurons[i] ** (1 - cond_power) * cond[i] ** cond_power
        if heads:
            ch = stats.var(i, "heads") * (_w(ad, layer, ad.o_proj) ** 2).sum(0).numpy()
            hs[i] = _group_channel_scores(ch, _head_config(lm, i))
    return Importance(neurons, hs, method="flap")


def _networks_module():
    try:
        from . import networks  # type: ignore
    except ImportError as e:
        raise FuncnetError("functional-network importance is not available (funcnet.networks is missing)") from e
    return networks


def _load_networks(networks, lm):
    net = _networks_module()
    if networks is None:
        raise FuncnetError("method 'fn' needs functional networks (--networks FILE)")
    if isinstance(networks, (str, os.PathLike)):
        cls = getattr(net, "FunctionalNetworks", None)
        if cls is None or not hasattr(cls, "load"):
            raise FuncnetError("functional-network importance is not available (FunctionalNetworks.load missing)")
        networks = cls.load(networks)
    ident = getattr(networks, "model_identity", None) or getattr(networks, "identity", None)
    if isinstance(ident, str) and ident and ident != lm.identity:
        raise FuncnetError(f"the networks file was made from another model (identity {ident}, this model {lm.identity})")
    return net, networks


def imp_fn(lm: LoadedModel, stats=None, *, heads: bool = False, networks=None, importance=None, **kw) -> Importance:
    """Functional-network importance from funcnet.networks (or a ready ``importance`` dict)."""
    if importance is None and kw.get("score") == "fn-cond":
        # network redundancy: WIFV with only the variance the neuron's network co-members cannot explain
        _need(stats, False)
        p = float(kw.get("cond_power", 1.0))
        cond = conditional_fluctuation(lm, stats, ridge=float(kw.get("cond_ridge", 0.1)), networks=networks,
                                       max_regressors=int(kw.get("max_regressors", 128)),
                                       fn_threshold=float(kw.get("threshold", 3.6)))
        wifv = imp_flap(lm, stats).neurons
        importance = {i: wifv[i] ** (1 - p) * cond[i] ** p for i in cond}
    if importance is None:
        net, networks = _load_networks(networks, lm)
        fn = getattr(net, "pruning_importance", None)
        if fn is None:
            raise FuncnetError("functional-network importance is not available (funcnet.networks.pruning_importance)")
        importance = fn(networks, lm, stats=stats, **kw)
    return Importance({int(k): np.asarray(v, dtype=np.float64) for k, v in importance.items()}, None, method="fn")


def imp_fn_threshold(lm: LoadedModel, stats=None, *, networks=None, keep_masks=None, **kw) -> Importance:
    """The reference rule: keep exactly the key neurons of the functional networks."""
    if keep_masks is None:
        net, networks = _load_networks(networks, lm)
        fn = getattr(net, "pruning_keep_masks", None)
        if fn is None:
            raise FuncnetError("functional-network masks are not available (funcnet.networks.pruning_keep_masks)")
        keep_masks = fn(networks, lm, **kw)
    masks = {int(k): np.asarray(v, dtype=bool) for k, v in keep_masks.items()}
    neurons = {k: m.astype(np.float64) for k, m in masks.items()}
    return Importance(neurons, None, keep_masks=masks, method="fn-threshold")


#: name -> importance callable ``(lm, stats, *, seed, heads, **kw) -> Importance``
METHODS: dict[str, Callable[..., Importance]] = {
    "random": imp_random,
    "magnitude": imp_magnitude,
    "wanda-sp": imp_wanda_sp,
    "flap": imp_flap,
    "fn": imp_fn,
    "fn-threshold": imp_fn_threshold,
}
#: methods whose scores need calibration statistics
NEEDS_CALIB = {"wanda-sp", "flap"}
#: allocation each method uses by default (as in the papers)
DEFAULT_ALLOCATION = {"flap": "global", "fn": "global", "wanda-sp": "uniform", "magnitude": "uniform", "random": "uniform"}


def compute_importance(method: str | Callable, lm, stats: CalibStats | None = None, *, seed: int = 0,
                       heads: bool = False, **kw) -> Importance:
    lm = as_loaded(lm)
    fn = method if callable(method) else METHODS.get(method)
    if fn is None:
        raise FuncnetError(f"unknown pruning method '{method}'; choose from {', '.join(METHODS)}")
    imp = fn(lm, stats, seed=seed, heads=heads, **kw)
    if isinstance(imp, dict):
        imp = Importance({int(k): np.asarray(v, dtype=np.float64) for k, v in imp.items()})
    for i, layer in enumerate(lm.layers):
        if i in imp.neurons and len(imp.neurons[i]) != lm.adapter.n_neurons(layer):
            raise FuncnetError(
                f"importance of layer {i} has {len(imp.neurons[i])} scores but the layer has {lm.adapter.n_neurons(layer)} neurons"
            )
    return imp


# =============================================================================================
# 3. selection
# =============================================================================================
@dataclass
class Selection:
    keep_neurons: dict[int, np.ndarray]  # sorted kept neuron indices per layer
    keep_heads: dict[int, list[int]] | None  # kept key/value groups per layer (None: heads untouched)
    target_removed: int | None
    denominator: int
    of: str
    allocation: str
    protected: list[int]
    predicted_removed: int


def _parse_protect(protect, n_layers: int) -> list[int]:
    """(first, last) counts or "first,last"; a set of layer indices is taken as is."""
    if protect is None:
        protect = DEFAULT_PROTECT
    if isinstance(protect, (set, frozenset)):
        return sorted({int(i) % n_layers for i in protect})
    if isinstance(protect, str):
        try:
            protect = tuple(int(x) for x in protect.split(","))
        except ValueError as e:
            raise FuncnetError(f"--protect expects FIRST,LAST (e.g. 3,2), got '{protect}'") from e
    if len(protect) != 2 or int(protect[0]) < 0 or int(protect[1]) < 0:
        raise FuncnetError(f"protect must be (first, last) layer counts >= 0, got {protect}")
    first, last = int(protect[0]), int(protect[1])
    return sorted(set(range(min(first, n_layers))) | set(range(max(n_layers - last, 0), n_layers)))


def param_counts(lm: LoadedModel) -> dict:
    layers = lm.layers
    mlp = sum(lm.adapter.mlp_param_count(l) for l in layers)
    attn = sum(lm.adapter.attn_param_count(l) for l in layers)
    return {"all": count_parameters(lm.model), "attn+mlp": mlp + attn, "mlp": mlp}


def _bias_missing(layer, path) -> bool:
    return getattr(_get(layer, path), "bias", None) is None


def _standardize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def select(
    lm,
    importance: Importance,
    ratio: float | None,
    *,
    of: str = "mlp",
    allocation: str = "global",
    protect=DEFAULT_PROTECT,
    heads: bool = False,
    bias_compensation: bool = True,
) -> Selection:
    """Choose which neurons (and key/value groups) to keep so that ``ratio`` of the ``of``
    parameters is removed, within one neuron's parameters (bias parameters added by compensation
    are counted). With ``importance.keep_masks`` the masks are used as given (threshold rule)."""
    lm = as_loaded(lm)
    ad, layers = lm.adapter, lm.layers
    n = len(layers)
    if of not in DENOMINATORS:
        raise FuncnetError(f"unknown denominator '{of}'; choose from {', '.join(DENOMINATORS)}")
    if allocation not in ALLOCATIONS:
        raise FuncnetError(f"unknown allocation '{allocation}'; choose from {', '.join(ALLOCATIONS)}")
    if heads and of == "mlp":
        raise FuncnetError("pruning heads needs a denominator that counts attention: --of attn+mlp or all")
    protected = _parse_protect(protect, n)
    free = [i for i in range(n) if i not in protected]
    counts = param_counts(lm)
    denom = counts[of]
    widths = [ad.n_neurons(l) for l in layers]
    ppn = [ad.params_per_neuron(l) for l in layers]
    hidden_out = [weight_out_in(ad.down_proj(l)).shape[0] for l in layers]
    mlp_bias_cost = [hidden_out[i] if (bias_compensation and _bias_missing(layers[i], ad.down)) else 0 for i in range(n)]

    if importance.keep_masks is not None:  # threshold rule: the masks decide
        keep = {}
        removed = 0
        for i in range(n):
            m = importance.keep_masks.get(i)
            if i in protected or m is None:
                keep[i] = np.arange(widths[i])
                continue
            m = np.asarray(m, dtype=bool)
            if m.shape != (widths[i],):
                raise FuncnetError(f"keep mask of layer {i} has shape {m.shape}, the layer has {widths[i]} neurons")
            if not m.any():
                m = m.copy()
                m[int(np.argmax(importance.neurons.get(i, np.zeros(widths[i]))))] = True
            keep[i] = np.flatnonzero(m)
            k = widths[i] - len(keep[i])
            removed += k * ppn[i] - (mlp_bias_cost[i] if k else 0)
        return Selection(keep, None, None, denom, of, allocation, protected, removed)

    if ratio is None or not (0.0 < float(ratio) < 1.0):
        raise FuncnetError(f"ratio must be in (0, 1), got {ratio}")
    target = float(ratio) * denom

    hc = {i: shrink.layer_head_config(ad, lm.model, layers[i]) for i in range(n)} if heads else {}
    o_out = {i: weight_out_in(_get(layers[i], ad.o_proj)).shape[0] for i in range(n)}
    o_bias_cost = {i: (o_out[i] if (bias_compensation and _bias_missing(layers[i], ad.o_proj)) else 0) for i in range(n)}
    o_bias_numel = {i: (0 if _bias_missing(layers[i], ad.o_proj) else o_out[i]) for i in range(n)}
    gcost = {i: (ad.attn_param_count(layers[i]) - o_bias_numel[i]) // hc[i].n_kv_heads for i in hc}
    if heads and (importance.heads is None):
        raise FuncnetError(f"method '{importance.method}' gives no head importance; run without heads")

    # candidates: every neuron but the best of each free layer; every kv group but the best
    max_removable = 0
    for i in free:
        max_removable += (widths[i] - 1) * ppn[i] - mlp_bias_cost[i]
        if heads:
            max_removable += (hc[i].n_kv_heads - 1) * gcost[i] - o_bias_cost[i]
    if target > max_removable + min(ppn) / 2:
        raise FuncnetError(
            f"ratio {ratio} of {of} parameters is unreachable: layers outside the protected ones "
            f"({len(protected)} protected) hold at most {max_removable / denom:.4f}"
        )
    for i in free:
        if i not in importance.neurons:
            raise FuncnetError(f"importance has no scores for layer {i}")

    removed_n = {i: np.zeros(0, dtype=np.int64) for i in range(n)}
    removed_g: dict[int, list[int]] = {i: [] for i in range(n)}

    if allocation == "global":
        items = []  # (score, kind, layer, index, cost)
        for i in free:
            s = np.asarray(importance.neurons[i], dtype=np.float64)
            z = _standardize(s)
            order = np.argsort(s, kind="stable")[:-1]  # never the best neuron
            items += [(float(z[j]), 0, i, int(j), ppn[i]) for j in order]
            if heads:
                hsc = np.asarray(importance.heads[i], dtype=np.float64)
                hz = _standardize(hsc)
                for g in np.argsort(hsc, kind="stable")[:-1]:
                    items.append((float(hz[g]), 1, i, int(g), gcost[i]))
        items.sort(key=lambda t: (t[0], t[1], t[2], t[3]))
        net = 0
        touched = set()
        half = min(ppn[i] for i in free) / 2 if free else 0
        chosen_n: dict[int, list[int]] = {i: [] for i in range(n)}
        for score, kind, i, j, cost in items:
            if target - net < half:
                break
            extra = 0
            if (i, kind) not in touched:
                extra = mlp_bias_cost[i] if kind == 0 else o_bias_cost[i]
            gain = cost - extra
            if net + gain > target + half:
                continue  # overshoots: skip (a smaller item later fills the gap)
            net += gain
            touched.add((i, kind))
            (chosen_n[i] if kind == 0 else removed_g[i]).append(j)
        removed_n = {i: np.asarray(v, dtype=np.int64) for i, v in chosen_n.items()}
    else:  # uniform: the same fraction in every free layer
        def removal(f):
            tot, parts = 0.0, {}
            for i in free:
                kn = min(int(math.floor(f * widths[i])), widths[i] - 1)
                kg = min(int(math.floor(f * hc[i].n_kv_heads)), hc[i].n_kv_heads - 1) if heads else 0
                parts[i] = (kn, kg)
                tot += kn * ppn[i] - (mlp_bias_cost[i] if kn else 0)
                tot += kg * gcost[i] - (o_bias_cost[i] if kg else 0) if heads else 0
            return tot, parts

        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if removal(mid)[0] <= target:
                lo = mid
            else:
                hi = mid
        tot, parts = removal(lo)
        kn = {i: parts[i][0] for i in free}
        # top up one neuron at a time, largest fractional remainder first, until within half a neuron
        rema = sorted(free, key=lambda i: -(lo * widths[i] - math.floor(lo * widths[i])))
        k = 0
        guard = 0
        while target - tot >= min(ppn) / 2 and guard < 10 * sum(widths):
            i = rema[k % len(rema)]
            k += 1
            guard += 1
            if kn[i] >= widths[i] - 1:
                continue
            gain = ppn[i] - (mlp_bias_cost[i] if kn[i] == 0 else 0)
            if tot + gain > target + min(ppn) / 2:
                continue
            kn[i] += 1
            tot += gain
            if k > 4 * len(rema) * max(widths):
                break
        for i in free:
            s = np.asarray(importance.neurons[i], dtype=np.float64)
            removed_n[i] = np.argsort(s, kind="stable")[: kn[i]]
            if heads and parts[i][1]:
                removed_g[i] = [int(g) for g in np.argsort(np.asarray(importance.heads[i]), kind="stable")[: parts[i][1]]]

    keep = {i: np.setdiff1d(np.arange(widths[i]), removed_n[i]) for i in range(n)}
    keep_heads = None
    if heads:
        keep_heads = {i: [g for g in range(hc[i].n_kv_heads) if g not in removed_g[i]] if i in hc else None
                      for i in range(n)}
    predicted = 0
    for i in range(n):
        k = widths[i] - len(keep[i])
        predicted += k * ppn[i] - (mlp_bias_cost[i] if k else 0)
        if heads and removed_g[i]:
            predicted += len(removed_g[i]) * gcost[i] - o_bias_cost[i]
    return Selection(keep, keep_heads, int(round(target)), denom, of, allocation, protected, int(predicted))


# =============================================================================================
# 4-5. compensation and physical shrink
# =============================================================================================
#: ``none``: drop removed neurons; ``bias`` (FLAP): replace each removed neuron's input by its
#: calibration mean, folded into the down projection's bias; ``ls``: replace the removed inputs by
#: their least-squares reconstruction from all kept neurons of the layer (x_R ~ A x_K + c, ridge),
#: folded into the kept down-projection columns and the bias; ``ls-fn``: the same, but each removed
#: neuron is reconstructed only from kept neurons that share a functional network with it.
COMPENSATIONS = ("none", "bias", "ls", "ls-fn")
#: what :func:`prune` and the CLI use: least-squares compensation had the lowest perplexity with every
#: ranking method on held-out calibration text (docs/pruning.md)
DEFAULT_COMPENSATION = "ls"
#: memory bound of the covariance statistics :func:`prune` computes itself (float64 width^2 per
#: layer); above it, layers are calibrated and shrunk in chunks, last layers first
DEFAULT_MAX_COVARIANCE_BYTES = 2 * 2**30
#: ridge of least-squares compensation, relative to each regressor's variance
DEFAULT_RIDGE = 0.3
#: ``ls-fn``: at most this many regressors per removed neuron (its strongest network co-members)
DEFAULT_LS_FN_REGRESSORS = 128


def _resolve_compensation(compensation: str | None, bias_compensation: bool) -> str:
    comp = compensation if compensation is not None else ("bias" if bias_compensation else "none")
    if comp not in COMPENSATIONS:
        raise FuncnetError(f"unknown compensation '{comp}'; choose from {', '.join(COMPENSATIONS)}")
    return comp


def compensation(lm, selection: Selection, stats: CalibStats) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """FLAP's bias compensation: for each layer W_down[:, pruned] @ mean(x_pruned) (and
    W_o[:, pruned cols] @ mean for heads), as float64 vectors."""
    lm = as_loaded(lm)
    ad = lm.adapter
    mlp, attn = {}, {}
    for i, layer in enumerate(lm.layers):
        w = ad.n_neurons(layer)
        pruned = np.setdiff1d(np.arange(w), selection.keep_neurons[i])
        if len(pruned):
            W = _w(ad, layer, ad.down)[:, torch.as_tensor(pruned)]
            mlp[i] = W @ torch.as_tensor(stats.mean(i)[pruned], dtype=torch.float64)
        if selection.keep_heads and selection.keep_heads.get(i) is not None:
            hc = shrink.layer_head_config(ad, lm.model, layer)
            kept = selection.keep_heads[i]
            if len(kept) < hc.n_kv_heads:
                if i not in stats.head_sum:
                    raise FuncnetError("head compensation needs calibration statistics recorded with heads=True")
                per_group = hc.group_size * hc.head_dim
                cols = np.concatenate([np.arange(g * per_group, (g + 1) * per_group)
                                       for g in range(hc.n_kv_heads) if g not in kept])
                Wo = _w(ad, layer, ad.o_proj)[:, torch.as_tensor(cols)]
                attn[i] = Wo @ torch.as_tensor(stats.mean(i, "heads")[cols], dtype=torch.float64)
    return mlp, attn


def _ridge_solve(S_kk: torch.Tensor, S_rk: torch.Tensor, ridge: float) -> torch.Tensor:
    """A = S_rk (S_kk + ridge diag(S_kk))^-1, S_kk symmetric PSD (float64)."""
    d = torch.diagonal(S_kk).clamp_min(0)
    floor = 1e-12 * max(float(d.mean()), 1e-30)
    M = S_kk + torch.diag(ridge * d + floor)
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0:  # not positive definite (e.g. ridge 0 with collinear neurons): least-norm solution
        return torch.linalg.lstsq(M, S_rk.T, driver="gelsd").solution.T
    return torch.cholesky_solve(S_rk.T, L).T


def network_comembers(networks, layer: int, width: int, *, threshold: float = 3.6) -> np.ndarray:
    """[width, width] float64 co-membership strength of the neurons of ``layer``: the sum over every
    map (of every group) in which both neurons are key (|z| > threshold) of |z_a| |z_b|; zero for
    pairs that share no functional network."""
    sig = list(getattr(networks, "signals", ["neurons"]))
    s_idx = sig.index("neurons") if "neurons" in sig else 0
    rows = []
    for d in networks.decompositions:
        sel = (d.columns[:, 0] == layer) & (d.columns[:, 1] == s_idx)
        if not sel.any():
            continue
        z = np.zeros((d.k, width), np.float64)
        z[:, d.columns[sel, 2]] = np.abs(d.maps[:, sel])
        z[z <= threshold] = 0.0
        rows.append(z)
    if not rows:
        return np.zeros((width, width))
    Z = np.concatenate(rows)
    return Z.T @ Z


def reconstruction(lm, selection: Selection, stats: CalibStats, *, mode: str = "ls", ridge: float = DEFAULT_RIDGE,
                   networks=None, max_regressors: int = DEFAULT_LS_FN_REGRESSORS, fn_threshold: float = 3.6
                   ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per pruned layer, (A [removed, kept], c [removed]) such that the removed neurons' inputs are
    approximated by x_R ~ A x_K + c (float64; removed and kept in ascending neuron order).

    ``bias``: A = 0, c = mean(x_R). ``ls``: the least-squares (ridge) regression of x_R on all kept
    neurons, from the dense model's calibration covariance: A = C_RK (C_KK + ridge diag(C_KK))^-1,
    c = mean_R - A mean_K. This minimizes E||W_R (x_R - A x_K - c)||^2 for any W_R, so the folded
    update W_K += W_R A, b += W_R c is the best linear replacement of the removed neurons.
    ``ls-fn``: the same regression per removed neuron, restricted to the (at most ``max_regressors``
    strongest) kept neurons that share a functional network with it (key, |z| > ``fn_threshold``,
    in a common map); a removed neuron in no network with a kept one gets its mean (as ``bias``)."""
    lm = as_loaded(lm)
    ad = lm.adapter
    if mode not in ("bias", "ls", "ls-fn"):
        raise FuncnetError(f"no reconstruction for compensation '{mode}'")
    if mode == "ls-fn":
        if networks is None:
            raise FuncnetError("compensation 'ls-fn' needs functional networks (networks=)")
        _, networks = _load_networks(networks, lm)
    out = {}
    for i, layer in enumerate(lm.layers):
        w = ad.n_neurons(layer)
        keep = np.asarray(selection.keep_neurons[i], dtype=np.int64)
        rem = np.setdiff1d(np.arange(w), keep)
        if not len(rem):
            continue
        mean = torch.as_tensor(stats.mean(i), dtype=torch.float64)
        if mode == "bias":
            out[i] = (torch.zeros(len(rem), len(keep), dtype=torch.float64), mean[rem])
            continue
        C = torch.as_tensor(stats.cov(i), dtype=torch.float64)
        kt, rt = torch.as_tensor(keep), torch.as_tensor(rem)
        if mode == "ls":
            A = _ridge_solve(C[kt][:, kt], C[rt][:, kt], ridge)
        else:
            strength = network_comembers(networks, i, w, threshold=fn_threshold)[np.ix_(rem, keep)]
            A = torch.zeros(len(rem), len(keep), dtype=torch.float64)
            for a, r in enumerate(rem):
                cand = _strongest(strength[a], max_regressors)
                if not len(cand):
                    continue
                ct = torch.as_tensor(cand)
                S = kt[ct]
                A[a, ct] = _ridge_solve(C[S][:, S], C[int(r), S][None, :], ridge)[0]
        out[i] = (A, mean[rt] - A @ mean[kt])
    return out


def compensation_terms(lm, selection: Selection, stats: CalibStats | None, *, mode: str = "bias",
                       ridge: float = DEFAULT_RIDGE, networks=None, max_regressors: int = DEFAULT_LS_FN_REGRESSORS,
                       fn_threshold: float = 3.6) -> tuple[dict, dict, dict]:
    """(mlp bias deltas, attention bias deltas, down-projection weight deltas of the kept columns)
    for compensation ``mode``, all float64. Heads always get bias compensation (unless ``none``)."""
    lm = as_loaded(lm)
    if mode == "none":
        return {}, {}, {}
    if stats is None:
        raise FuncnetError(f"compensation '{mode}' needs calibration statistics (or compensation='none')")
    mlp_b, attn_b = compensation(lm, selection, stats)
    if mode == "bias":
        return mlp_b, attn_b, {}
    ad = lm.adapter
    mlp_b, mlp_w = {}, {}
    for i, (A, c) in reconstruction(lm, selection, stats, mode=mode, ridge=ridge, networks=networks,
                                    max_regressors=max_regressors, fn_threshold=fn_threshold).items():
        layer = lm.layers[i]
        rem = np.setdiff1d(np.arange(ad.n_neurons(layer)), selection.keep_neurons[i])
        W_R = _w(ad, layer, ad.down)[:, torch.as_tensor(rem)]
        mlp_b[i] = W_R @ c
        mlp_w[i] = W_R @ A
    return mlp_b, attn_b, mlp_w


@torch.no_grad()
def apply_selection(lm, selection: Selection, stats: CalibStats | None = None, *, bias_compensation: bool = True,
                    compensation: str | None = None, ridge: float = DEFAULT_RIDGE, networks=None,
                    max_regressors: int = DEFAULT_LS_FN_REGRESSORS) -> None:
    """Physically shrink the model in place, with ``compensation`` (default: ``bias`` when
    ``bias_compensation``, else ``none``; see :data:`COMPENSATIONS`)."""
    lm = as_loaded(lm)
    ad = lm.adapter
    mode = _resolve_compensation(compensation, bias_compensation)
    if mode != "none" and stats is None:
        raise FuncnetError(f"{mode} compensation needs calibration statistics (or pass bias_compensation=False)")
    comp_mlp, comp_attn, comp_w = compensation_terms(lm, selection, stats, mode=mode, ridge=ridge, networks=networks,
                                                     max_regressors=max_regressors)
    for i, layer in enumerate(lm.layers):
        if selection.keep_heads and selection.keep_heads.get(i) is not None:
            hc = shrink.layer_head_config(ad, lm.model, layer)
            if len(selection.keep_heads[i]) < hc.n_kv_heads:
                shrink.slice_heads(ad, layer, hc, selection.keep_heads[i], comp_attn.get(i))
        if len(selection.keep_neurons[i]) < ad.n_neurons(layer):
            shrink.slice_mlp(ad, layer, selection.keep_neurons[i], comp_mlp.get(i), comp_w.get(i))
    _update_config(lm)


def _apply_in_chunks(lm, sel: Selection, calib, comp: str, layers: list[int], max_bytes: int, *, ridge, networks,
                     max_regressors, calib_tokens, max_length, batch_size, heads) -> None:
    """Least-squares compensation with a bounded covariance memory: chunks of layers (each at most
    ``max_bytes`` of float64 covariance, at least one layer), last chunk first; each chunk is
    calibrated on the model whose earlier layers are still dense, so its statistics are the dense
    model's, and shrunk before the next."""
    import dataclasses

    ad = lm.adapter
    chunks, cur, size = [], [], 0
    for i in sorted(layers):
        b = ad.n_neurons(lm.layers[i]) ** 2 * 8
        if cur and size + b > max_bytes:
            chunks.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += b
    if cur:
        chunks.append(cur)
    log.info("least-squares compensation in %d chunk(s) of layers", len(chunks))
    widths = [ad.n_neurons(l) for l in lm.layers]
    for chunk in reversed(chunks):
        st = calibration_stats(lm, calib, calib_tokens=calib_tokens, max_length=max_length, batch_size=batch_size,
                               heads=heads, layers=chunk, covariance=True)
        sub = dataclasses.replace(
            sel, keep_neurons={i: (sel.keep_neurons[i] if i in chunk else np.arange(widths[i])) for i in range(len(widths))},
            keep_heads=({i: (v if i in chunk else None) for i, v in sel.keep_heads.items()} if sel.keep_heads else None))
        apply_selection(lm, sub, st, compensation=comp, ridge=ridge, networks=networks, max_regressors=max_regressors)
        del st
    # heads of layers without pruned neurons
    rest = [i for i in range(len(widths)) if i not in layers and sel.keep_heads and sel.keep_heads.get(i) is not None]
    if rest:
        st = calibration_stats(lm, calib, calib_tokens=calib_tokens, max_length=max_length, batch_size=batch_size,
                               heads=True, layers=rest)
        sub = dataclasses.replace(sel, keep_neurons={i: np.arange(ad.n_neurons(l)) for i, l in enumerate(lm.layers)},
                                  keep_heads={i: (v if i in rest else None) for i, v in sel.keep_heads.items()})
        apply_selection(lm, sub, st, compensation="bias")


def _update_config(lm: LoadedModel) -> None:
    """Record per-layer shapes in the model config (what the saved modeling file rebuilds)."""
    ad, cfg = lm.adapter, lm.model.config
    layers = lm.layers
    specs = [shrink.layer_spec(ad, l) for l in layers]
    hcs = [shrink.layer_head_config(ad, lm.model, l) for l in layers]
    cfg.funcnet_pruned = {"layers_path": shrink.layers_path(ad, lm.model), "layers": specs}
    cfg.intermediate_sizes = [ad.n_neurons(l) for l in layers]
    cfg.num_attention_heads_per_layer = [h.n_heads for h in hcs]
    cfg.num_key_value_heads_per_layer = [h.n_kv_heads for h in hcs]
    cfg.mlp_bias_per_layer = [not _bias_missing(l, ad.down) for l in layers]
    cfg.o_bias_per_layer = [not _bias_missing(l, ad.o_proj) for l in layers]


# =============================================================================================
# driver
# =============================================================================================
@dataclass
class PruneResult:
    lm: LoadedModel
    report: dict
    selection: Selection
    importance: Importance
    stats: CalibStats | None

    @property
    def model(self):
        return self.lm.model


def prune(
    model,
    ratio: float | None = 0.2,
    *,
    of: str = "mlp",
    method: str | Callable = "flap",
    calib=None,
    tokenizer=None,
    calib_tokens: int = 8192,
    max_length: int = 128,
    batch_size: int = 8,
    heads: bool = False,
    bias_compensation: bool = True,
    allocation: str | None = None,
    protect=DEFAULT_PROTECT,
    seed: int = 0,
    stats: CalibStats | None = None,
    importance: Importance | dict | None = None,
    keep_masks: dict | None = None,
    networks=None,
    compensation: str | None = None,
    ridge: float = DEFAULT_RIDGE,
    ls_max_regressors: int = DEFAULT_LS_FN_REGRESSORS,
    max_covariance_bytes: int = DEFAULT_MAX_COVARIANCE_BYTES,
    **method_kw,
) -> PruneResult:
    """Prune ``model`` (a LoadedModel, a spec, or a model with ``tokenizer=``) in place.

    ``importance`` (``{layer: scores}`` or :class:`Importance`) or ``keep_masks`` (``{layer: bool
    array}``) bypass the method's own scoring (how ``fn`` results plug in). ``compensation`` is one
    of :data:`COMPENSATIONS` (default :data:`DEFAULT_COMPENSATION`, or ``none`` when
    ``bias_compensation=False``); ``ls`` / ``ls-fn`` need the neurons' covariance: taken from
    ``stats`` when it has one (``calibration_stats(covariance=True)``), else computed here from
    ``calib`` within ``max_covariance_bytes`` (in one pass when it fits, else in chunks of layers,
    each calibrated on the dense model and shrunk before the next, last layers first); ``ls-fn``
    also needs ``networks``."""
    from . import __version__

    lm = as_loaded(model, tokenizer)
    comp = _resolve_compensation(compensation if compensation is not None else
                                 (DEFAULT_COMPENSATION if bias_compensation else "none"), bias_compensation)
    bias_compensation = comp != "none"
    if comp.startswith("ls") and stats is not None and not stats.has_covariance and calib is None:
        raise FuncnetError(f"compensation '{comp}' needs calibration statistics recorded with covariance=True "
                           "(or calib= to compute the covariance here)")
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    if keep_masks is not None:
        name = "fn-threshold"
    elif importance is not None:
        name = getattr(importance, "method", "") or "fn"
    if isinstance(method, str) and method not in METHODS and importance is None and keep_masks is None:
        raise FuncnetError(f"unknown pruning method '{method}'; choose from {', '.join(METHODS)}")
    if keep_masks is None and importance is None and name != "fn-threshold":
        if ratio is None or not (0.0 < float(ratio) < 1.0):
            raise FuncnetError(f"ratio must be in (0, 1), got {ratio}")
    t0 = time.time()
    before = param_counts(lm)
    need_stats = bias_compensation or name in NEEDS_CALIB or (
        name == "fn" and importance is None and method_kw.get("score") in (None, "fn-flap", "fn-flap-freq"))
    if stats is None and need_stats:
        if calib is None:
            raise FuncnetError(
                f"method '{name}'{' with bias compensation' if bias_compensation else ''} needs calibration text (calib=)"
            )
        cov_layers = None
        if comp.startswith("ls"):
            prot = set(_parse_protect(protect, lm.n_layers))
            cov_layers = [i for i in range(lm.n_layers) if i not in prot]
            if sum(lm.adapter.n_neurons(lm.layers[i]) ** 2 * 8 for i in cov_layers) > max_covariance_bytes:
                cov_layers = None  # too big for one pass: chunks after selection
        stats = calibration_stats(lm, calib, calib_tokens=calib_tokens, max_length=max_length,
                                  batch_size=batch_size, heads=heads, covariance=cov_layers is not None,
                                  covariance_layers=cov_layers)
    if keep_masks is not None:
        imp = imp_fn_threshold(lm, keep_masks=keep_masks)
    elif importance is not None:
        imp = importance if isinstance(importance, Importance) else imp_fn(lm, importance=importance)
    else:
        kw = dict(method_kw)
        if networks is None and name in ("fn", "fn-threshold"):
            if calib is None:
                raise FuncnetError(f"method '{name}' needs functional networks (networks=) or calibration text (calib=)")
            from .networks import networks_for_pruning

            fn_keys = ("n_groups", "group_size", "n_components", "fn_method", "n_init", "fn_max_length")
            fkw = {k: kw.pop(k) for k in fn_keys if k in kw}
            if "fn_method" in fkw:
                fkw["method"] = fkw.pop("fn_method")
            if "fn_max_length" in fkw:
                fkw["max_length"] = fkw.pop("fn_max_length")
            networks = networks_for_pruning(lm, calib, seed=seed, **fkw)
        if networks is not None:
            kw["networks"] = networks
        imp = compute_importance(method, lm, stats, seed=seed, heads=heads, **kw)
    alloc = allocation or DEFAULT_ALLOCATION.get(imp.method or name, "global")
    sel = select(lm, imp, ratio, of=of, allocation=alloc, protect=protect, heads=heads,
                 bias_compensation=bias_compensation)
    if comp == "ls-fn" and networks is None:
        raise FuncnetError("compensation 'ls-fn' needs functional networks (networks=, --networks)")
    pruned_layers = [i for i in range(lm.n_layers) if len(sel.keep_neurons[i]) < lm.adapter.n_neurons(lm.layers[i])]
    if comp.startswith("ls") and any(i not in stats.neuron_xtx for i in pruned_layers):
        _apply_in_chunks(lm, sel, calib, comp, pruned_layers, max_covariance_bytes, ridge=ridge, networks=networks,
                         max_regressors=ls_max_regressors, calib_tokens=calib_tokens, max_length=max_length,
                         batch_size=batch_size, heads=heads)
    else:
        apply_selection(lm, sel, stats, compensation=comp, ridge=ridge, networks=networks,
                        max_regressors=ls_max_regressors)
    after = param_counts(lm)
    achieved = (before[of] - after[of]) / before[of]
    report = {
        "method": imp.method or name,
        "ratio": None if ratio is None else float(ratio),
        "denominator": of,
        "denominator_meaning": {
            "mlp": "parameters of the MLP projections", "attn+mlp": "parameters of MLP and attention projections",
            "all": "all model parameters"}[of],
        "achieved_ratio": achieved,
        "achieved_ratios": {k: (before[k] - after[k]) / before[k] for k in before},
        "allocation": alloc,
        "heads": bool(heads),
        "kept_neurons_per_layer": [int(len(sel.keep_neurons[i])) for i in range(lm.n_layers)],
        "kept_neurons": {str(i): sel.keep_neurons[i].tolist() for i in range(lm.n_layers)},
        "kept_heads": ({str(i): v for i, v in sel.keep_heads.items()} if sel.keep_heads else None),
        "kept_heads_per_layer": list(lm.model.config.num_attention_heads_per_layer),
        "kept_kv_heads_per_layer": list(lm.model.config.num_key_value_heads_per_layer),
        "calibration": stats.identity if stats is not None else None,
        "params_before": before,
        "params_after": after,
        "bias_compensation": bool(bias_compensation),
        "compensation": comp,
        "ridge": float(ridge) if comp.startswith("ls") else None,
        "protected_layers": sel.protected,
        "seed": seed,
        "base_model": {"spec": lm.spec, "family": lm.adapter.family},
        "funcnet_version": __version__,
        "seconds": round(time.time() - t0, 2),
    }
    lm.info["pruning_report"] = report
    return PruneResult(lm, report, sel, imp, stats)


# =============================================================================================
# 6. save / load
# =============================================================================================
_MODELING_TEMPLATE = '''"""Pruned model written by funcnet {version}: per-layer MLP widths / head counts differ from the
base architecture. Self-contained: needs only torch and transformers."""
import transformers
from transformers import {cfg_cls} as _BaseConfig
from transformers import {lm_cls} as _BaseForCausalLM


class FuncnetPrunedConfig(_BaseConfig):
    pass


{apply_src}

class FuncnetPrunedForCausalLM(_BaseForCausalLM):
    config_class = FuncnetPrunedConfig

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        spec = getattr(config, "funcnet_pruned", None)
        if spec:
            funcnet_apply_spec(self, spec)
'''


def modeling_source(model) -> str:
    import inspect
    import transformers
    from . import __version__

    cfg_cls, lm_cls = type(model.config), type(model)
    for c in (cfg_cls, lm_cls):
        if getattr(transformers, c.__name__, None) is not c:
            raise FuncnetError(f"cannot save {c.__name__}: it is not a class of the transformers package")
    return _MODELING_TEMPLATE.format(
        version=__version__, cfg_cls=cfg_cls.__name__, lm_cls=lm_cls.__name__,
        apply_src=inspect.getsource(shrink.funcnet_apply_spec),
    )


def save_pruned(model, tokenizer, out_dir, report: dict | None = None, *, overwrite: bool = False) -> Path:
    """Write a Hugging Face folder that loads with ``AutoModelForCausalLM.from_pretrained(dir,
    trust_remote_code=True)`` without funcnet; atomic (temp folder + rename)."""
    lm = as_loaded(model, tokenizer)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FuncnetError(f"output folder '{out}' exists; pass overwrite=True (--overwrite) to replace it")
    if out.exists() and not out.is_dir():
        raise FuncnetError(f"output path '{out}' is a file")
    if not hasattr(lm.model.config, "funcnet_pruned"):
        _update_config(lm)
    cfg = lm.model.config
    src = modeling_source(lm.model)
    mod = MODELING_NAME[:-3]
    old_auto_map = getattr(cfg, "auto_map", None)
    old_arch = getattr(cfg, "architectures", None)
    cfg.auto_map = {"AutoConfig": f"{mod}.FuncnetPrunedConfig", "AutoModelForCausalLM": f"{mod}.FuncnetPrunedForCausalLM"}
    cfg.architectures = ["FuncnetPrunedForCausalLM"]
    try:
        with atomic_path(out, is_dir=True) as tmp:
            _save_weights(lm.model, tmp)
            if lm.tokenizer is not None:
                lm.tokenizer.save_pretrained(tmp)
            (tmp / MODELING_NAME).write_text(src)
            rep = dict(report or lm.info.get("pruning_report") or {})
            (tmp / REPORT_NAME).write_text(json.dumps(rep, indent=2, default=_json_default))
    finally:
        cfg.auto_map = old_auto_map
        if old_auto_map is None:
            del cfg.auto_map
        cfg.architectures = old_arch
    return out


def _save_weights(model, folder) -> None:
    """save_pretrained with the in-memory parameter names (no legacy renaming: the custom modeling
    class of the folder loads without transformers' per-family conversion mappings)."""
    import inspect

    kw = {}
    if "save_original_format" in inspect.signature(model.save_pretrained).parameters:
        kw["save_original_format"] = False
    model.save_pretrained(folder, **kw)




def load_pruned(path, *, dtype=None, device=None) -> LoadedModel:
    """Load a folder written by :func:`save_pruned` as a LoadedModel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .adapters import get_adapter
    from .models import _resolve_dtype

    p = Path(path)
    if not (p / "config.json").exists() or not (p / MODELING_NAME).exists():
        raise FuncnetError(f"'{p}' is not a funcnet pruned-model folder (no config.json / {MODELING_NAME})")
    model = AutoModelForCausalLM.from_pretrained(str(p), trust_remote_code=True, dtype=_resolve_dtype(dtype))
    if device is not None:
        model = model.to(device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(p))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    info = {}
    if (p / REPORT_NAME).exists():
        info["pruning_report"] = json.loads((p / REPORT_NAME).read_text())
    return LoadedModel(model=model, tokenizer=tok, adapter=get_adapter(model), spec=str(p), source=str(p), info=info)


# =============================================================================================
# 7. CLI
# =============================================================================================
def _fmt(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def summary_lines(report: dict) -> list[str]:
    b, a = report["params_before"], report["params_after"]
    widths = report["kept_neurons_per_layer"]
    rows = [("method", f"{report['method']} ({report['allocation']} allocation)"),
            ("target ratio", f"{report['ratio']} of {report['denominator']} parameters"
             if report["ratio"] is not None else "threshold rule"),
            ("achieved ratio", f"{report['achieved_ratio']:.4f} of {report['denominator']}")]
    for k in DENOMINATORS[::-1]:
        rows.append((f"params {k}", f"{_fmt(b[k])} -> {_fmt(a[k])}  (-{(b[k] - a[k]) / b[k]:.2%})"))
    rows.append(("MLP widths", f"{min(widths)}..{max(widths)}"))
    hp = report.get("kept_heads_per_layer") or []
    if hp:
        rows.append(("heads per layer", f"{min(hp)}..{max(hp)}"))
    rows.append(("compensation", report.get("compensation") or ("bias" if report["bias_compensation"] else "none")))
    rows.append(("protected layers", ",".join(map(str, report["protected_layers"])) or "none"))
    w = max(len(k) for k, _ in rows)
    return [f"{k:<{w}}  {v}" for k, v in rows]


def _cmd_prune(args) -> int:
    from .models import load_model

    if not (0.0 < args.ratio < 1.0) and args.method != "fn-threshold":
        raise FuncnetError(f"--ratio must be in (0, 1), got {args.ratio}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FuncnetError(f"output folder '{out}' exists; pass --overwrite to replace it")
    if args.method in ("fn", "fn-threshold"):
        _networks_module()
    lm = load_model(args.model, dtype=args.dtype)
    kw = {}
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    if args.method in ("fn", "fn-threshold") and not args.networks:
        kw.update(n_groups=args.groups, group_size=args.group_size, n_components=args.n_components)
    res = prune(
        lm, args.ratio, of=args.of, method=args.method, calib=args.calib, calib_tokens=args.calib_tokens,
        batch_size=args.batch_size, heads=args.heads, bias_compensation=not args.no_bias_compensation,
        compensation="none" if args.no_bias_compensation else args.compensation, ridge=args.ridge,
        max_covariance_bytes=int(args.max_covariance_gb * 2**30),
        allocation=args.allocation, protect=args.protect, seed=args.seed, networks=args.networks, **kw,
    )
    save_pruned(res.lm, lm.tokenizer, out, res.report, overwrite=args.overwrite)
    for line in summary_lines(res.report):
        print(line)
    print(f"saved to {out}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("prune", help="prune MLP neurons (and heads) to an exact size and save a smaller model")
    p.add_argument("--model", default="smollm2-135m", help="model spec (HF id, folder, .gguf or alias)")
    p.add_argument("--ratio", type=float, default=0.2, help="fraction of parameters to remove (0 < r < 1)")
    p.add_argument("--of", choices=DENOMINATORS, default="mlp", help="denominator of the ratio")
    p.add_argument("--method", choices=list(METHODS), default="flap")
    p.add_argument("--heads", action="store_true", help="also prune attention heads (whole key/value groups)")
    p.add_argument("--compensation", choices=COMPENSATIONS, default=None,
                   help=f"how removed neurons are compensated (default {DEFAULT_COMPENSATION}): none, bias (FLAP's "
                        "mean), ls (least-squares reconstruction from all kept neurons), ls-fn (from kept "
                        "members of the neuron's functional networks)")
    p.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help="ridge of ls / ls-fn, relative to variances")
    p.add_argument("--max-covariance-gb", type=float, default=DEFAULT_MAX_COVARIANCE_BYTES / 2**30,
                   help="ls / ls-fn: memory for covariance statistics; above it layers are done in chunks")
    p.add_argument("--no-bias-compensation", action="store_true", help="= --compensation none")
    p.add_argument("--allocation", choices=ALLOCATIONS, default=None,
                   help="global ranking (adaptive widths) or uniform per layer (default: the method's own)")
    p.add_argument("--protect", default="3,2", help="FIRST,LAST layers kept whole (default 3,2)")
    p.add_argument("--calib", default="builtin", help="calibration corpus spec")
    p.add_argument("--calib-tokens", type=int, default=8192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--networks", default=None, help="functional networks file (methods fn, fn-threshold)")
    p.add_argument("--threshold", type=float, default=None, help="z threshold T for fn-threshold")
    p.add_argument("--groups", type=int, default=4, help="fn without --networks: groups of calibration texts")
    p.add_argument("--group-size", type=int, default=16, help="fn without --networks: texts per group")
    p.add_argument("-k", "--n-components", type=int, default=64, help="fn without --networks: maps per layer")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None)
    p.set_defaults(func=_cmd_prune)
