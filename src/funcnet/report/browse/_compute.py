"""The numbers behind the network browser: activity streamed from an activation store, histograms,
top and quantile-sampled contexts, per-token and per-domain means, the direct effect on the output
(down projection, final norm, unembedding), shared key neurons, lesion effects and counterparts.

Everything here returns plain NumPy / Python values; :mod:`funcnet.report.browse._site` turns them
into the JSON and pages of the site.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from funcnet.core.adapters import weight_out_in
from funcnet.errors import FuncnetError
from funcnet.experiments.schema import LesionResult
from funcnet.networks.functional import FunctionalNetworks

#: signals whose columns are MLP neurons (their direct effect goes through the down projection)
NEURON_SIGNALS = ("neurons", "gate", "up")
#: quantile intervals of a network's activity that contexts are sampled from (by rank)
DEFAULT_QUANTILES = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
#: where each model family keeps its final norm (looked for in this order)
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
                "model.final_layernorm", "norm", "ln_f", "final_layer_norm", "decoder.final_layer_norm")


# ---------------------------------------------------------------------------- activity
def key_neuron_sets(nets: FunctionalNetworks, ids: Sequence[int], thr: dict) -> list[np.ndarray]:
    """[n, 2] (layer, neuron) key pairs of every selected network."""
    return [nets.key_neurons(int(n), **thr) for n in ids]


def network_activity(store, pairs: Sequence[np.ndarray], *, signal: str, chunk_tokens: int = 4096,
                     progress=None) -> np.ndarray:
    """``[tokens, n_networks]`` float32: each network's mean activation over its key neurons, per
    token (what :meth:`FunctionalNetworks.time_courses` computes), streamed from the store layer by
    layer in chunks of ``chunk_tokens`` rows, so memory holds one chunk of one layer at a time.
    A network without key neurons has activity 0. ``progress(n)`` is called after each layer."""
    n_tok, n_net = store.n_tokens, len(pairs)
    out = np.zeros((n_tok, n_net), np.float32)
    by_layer: dict[int, list[tuple[int, np.ndarray]]] = {}
    for k, p in enumerate(pairs):
        if len(p) == 0:
            continue
        for l in np.unique(p[:, 0]):
            by_layer.setdefault(int(l), []).append((k, p[p[:, 0] == l, 1] if len(p) else p))
    for l in sorted(by_layer):
        if signal not in store.signals or l not in store.layers:
            raise FuncnetError(f"activation store {store.path} lacks layer {l} signal '{signal}' that the networks use")
        union = np.unique(np.concatenate([js for _, js in by_layer[l]]))
        w = np.zeros((len(union), n_net), np.float32)
        for k, js in by_layer[l]:
            w[np.searchsorted(union, js), k] = 1.0 / len(pairs[k])
        start = 0
        for block in store.source(l, signal, chunk_tokens=chunk_tokens).iter_chunks():
            stop = start + block.shape[0]
            out[start:stop] += block[:, union] @ w
            start = stop
        if progress is not None:
            progress(1)
    return out


def standardize(act: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, mean, std): every network's activity z-scored over all recorded tokens (std 0 -> 1)."""
    mu = act.mean(0, dtype=np.float64).astype(np.float32)
    sd = act.std(0, dtype=np.float64).astype(np.float32)
    sd = np.where(sd > 0, sd, 1.0).astype(np.float32)
    return (act - mu) / sd, mu, sd


def histogram(values: np.ndarray, bins: int = 40) -> dict:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts]}


# ---------------------------------------------------------------------------- contexts
class TokenText:
    """Token id -> display string (the tokenizer's decoding of that single id), cached."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        tid = int(tid)
        if tid not in self.cache:
            if self.tokenizer is None:
                s = f"<{tid}>"
            else:
                try:
                    s = self.tokenizer.decode([tid])
                except Exception:  # noqa: BLE001 (some tokenizers refuse special ids)
                    s = f"<{tid}>"
            self.cache[tid] = s
        return self.cache[tid]


class Contexts:
    """Windows of tokens around a row of the store, within its sequence."""

    def __init__(self, store, text: TokenText, left: int = 12, right: int = 4):
        t = store.tokens
        self.seq = np.asarray(t["seq_ids"])
        self.doc = np.asarray(t["doc_ids"])
        self.tok = np.asarray(t["token_ids"])
        self.text, self.left, self.right = text, int(left), int(right)

    def bounds(self, row: int) -> tuple[int, int]:
        s = self.seq[row]
        lo = int(np.searchsorted(self.seq, s, "left"))
        hi = int(np.searchsorted(self.seq, s, "right"))
        return max(lo, row - self.left), min(hi, row + self.right + 1)

    def make(self, row: int, act: np.ndarray) -> dict:
        a, b = self.bounds(row)
        return {"row": int(row), "doc": int(self.doc[row]), "seq": int(self.seq[row]), "value": round(float(act[row]), 5),
                "focus": int(row - a), "tokens": [self.text(t) for t in self.tok[a:b]],
                "acts": [round(float(v), 4) for v in act[a:b]]}


def top_rows(act: np.ndarray, seq: np.ndarray, k: int, spread: int) -> list[int]:
    """Rows of the ``k`` highest activities, no two within ``spread`` tokens of the same sequence."""
    n = act.shape[0]
    if n == 0 or k <= 0:
        return []
    m = min(n, max(64, 40 * k))
    cand = np.argpartition(-act, m - 1)[:m] if m < n else np.arange(n)
    cand = cand[np.argsort(-act[cand], kind="stable")]
    chosen: list[int] = []
    for r in cand:
        if all(seq[r] != seq[c] or abs(int(r) - c) > spread for c in chosen):
            chosen.append(int(r))
            if len(chosen) == k:
                break
    return chosen


def quantile_rows(act: np.ndarray, quantiles: Sequence[float], per_bin: int, rng) -> list[dict]:
    """For each interval [q_i, q_{i+1}) of ranks (the last one closed), ``per_bin`` rows drawn at
    random among the tokens whose activity rank falls in it, with the interval's activity range."""
    n = act.shape[0]
    order = np.argsort(act, kind="stable")
    out = []
    for qa, qb in itertools.pairwise(quantiles):
        a = int(np.floor(qa * n))
        b = n if qb >= 1.0 else int(np.floor(qb * n))
        b = max(b, min(n, a + 1))
        ranks = np.arange(a, b)
        pick = np.sort(rng.choice(ranks, size=min(per_bin, len(ranks)), replace=False)) if len(ranks) else ranks
        out.append({"lo": float(qa), "hi": float(qb), "rows": [int(order[r]) for r in pick],
                    "value_lo": float(act[order[a]]) if n else 0.0, "value_hi": float(act[order[b - 1]]) if n else 0.0})
    return out


# ---------------------------------------------------------------------------- tokens and domains
def token_means(z: np.ndarray, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique token ids, their counts, [n_unique, n_networks] mean z over each token's occurrences)."""
    from scipy import sparse

    uniq, inv, counts = np.unique(token_ids, return_inverse=True, return_counts=True)
    m = sparse.csr_matrix((np.ones(len(inv), np.float32), (inv, np.arange(len(inv)))), shape=(len(uniq), len(inv)))
    sums = np.asarray(m @ z, dtype=np.float64)
    return uniq, counts, (sums / counts[:, None]).astype(np.float32)


def domain_means(values: np.ndarray, token_domain: np.ndarray, domains: Sequence[str]) -> np.ndarray:
    """[n_domains, n_networks] mean of ``values`` over each domain's tokens (nan for an empty domain)."""
    out = np.full((len(domains), values.shape[1]), np.nan, np.float32)
    for i in range(len(domains)):
        sel = token_domain == i
        if sel.any():
            out[i] = values[sel].mean(0)
    return out


def document_domains(store, corpus) -> tuple[list[str], np.ndarray]:
    """(domain names, per-token domain index). Without a corpus every token is in domain 'all'."""
    doc_ids = np.asarray(store.tokens["doc_ids"])
    if corpus is None:
        return ["all"], np.zeros(len(doc_ids), np.int32)
    labels = [d.domain for d in corpus.documents]
    if doc_ids.size and int(doc_ids.max()) >= len(labels):
        raise FuncnetError(f"the corpus has {len(labels)} documents but the store names document {int(doc_ids.max())}; "
                           "pass the corpus the store was recorded from")
    names = list(dict.fromkeys(labels[int(d)] for d in np.unique(doc_ids)))
    index = {n: i for i, n in enumerate(names)}
    per_doc = np.array([index.get(l, -1) for l in labels], np.int32)
    return names, per_doc[doc_ids]


# ---------------------------------------------------------------------------- direct effect
def final_norm_scale(model) -> tuple[np.ndarray | None, str]:
    """The final norm's weight as a diagonal scale (Gemma norms scale by 1 + weight), and where it
    was found. Its bias and the normalisation by the residual's own size are not modelled."""
    for path in _FINAL_NORMS:
        try:
            m = model.get_submodule(path)
        except AttributeError:
            continue
        w = getattr(m, "weight", None)
        if w is None:
            return None, f"{path} (no weight: scale 1)"
        w = w.detach().float().cpu().numpy()
        if "gemma" in type(m).__name__.lower():
            return 1.0 + w, f"{path} (1 + weight)"
        return w, path
    return None, "no final norm found (scale 1)"


def output_directions(nets: FunctionalNetworks, lm, ids: Sequence[int], thr: dict) -> np.ndarray:
    """[n, hidden] float32 residual-stream direction written by each network's key units: the sum over
    its key columns of map weight x the down projection's column (MLP-neuron signals) or x the unit
    vector (residual signal); head columns are left out."""
    model, adapter = lm.model, lm.adapter
    layers = adapter.get_layers(model)
    down: dict[int, np.ndarray] = {}
    hidden = int(model.config.hidden_size) if hasattr(model.config, "hidden_size") else None
    out = []
    for n in ids:
        d, c = nets.network(int(n))
        mask = nets.key_mask(int(n), **thr)
        cols, vals = d.columns[mask], d.maps[c][mask].astype(np.float64)
        vec = None
        for (l, s, j), w in zip(cols, vals):
            sig = nets.signals[int(s)]
            if sig in NEURON_SIGNALS:
                if int(l) not in down:
                    down[int(l)] = weight_out_in(adapter.down_proj(layers[int(l)])).detach().float().cpu().numpy()
                col = down[int(l)][:, int(j)].astype(np.float64)
            elif sig == "residual":
                col = np.zeros(hidden or 0, np.float64)
                col[int(j)] = 1.0
            else:
                continue
            vec = w * col if vec is None else vec + w * col
        if vec is None:
            width = hidden or next(iter(down.values()), np.zeros((0, 0))).shape[0]
            vec = np.zeros(width, np.float64)
        out.append(vec)
    return np.asarray(out, np.float32).reshape(len(out), -1)


def direct_effect_logits(nets: FunctionalNetworks, lm, ids: Sequence[int], thr: dict,
                         batch: int = 64) -> tuple[np.ndarray, str]:
    """([n, vocab] logit change per unit of each network's direction through final-norm weight and
    unembedding, a note saying how the norm was treated)."""
    model = lm.model
    dirs = output_directions(nets, lm, ids, thr)
    scale, where = final_norm_scale(model)
    head = model.get_output_embeddings()
    if head is None:
        raise FuncnetError("this model has no output embeddings (LM head); cannot compute direct effects")
    wu = head.weight.detach().float().cpu()
    proj = None
    try:
        p = model.get_submodule("model.decoder.project_out")
        if p is not None:
            proj = p.weight.detach().float().cpu()
    except AttributeError:
        pass
    logits = []
    with torch.no_grad():
        for a in range(0, len(dirs), batch):
            x = torch.from_numpy(dirs[a:a + batch])
            if scale is not None:
                x = x * torch.from_numpy(scale)
            if proj is not None:
                x = x @ proj.T
            logits.append((x @ wu.T).numpy())
    out = np.concatenate(logits) if logits else np.zeros((0, wu.shape[0]), np.float32)
    note = (f"sum over key neurons of map weight x down-projection column, times the final norm's weight "
            f"as a diagonal scale ({where}; the normalisation itself and any bias are left out), through the "
            f"unembedding")
    return out, note


def top_bottom(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` largest values (descending) and the ``k`` smallest (ascending)."""
    k = min(k, values.size)
    order = np.argsort(-values, kind="stable")
    return order[:k], order[::-1][:k]


# ---------------------------------------------------------------------------- relations
def shared_key_neurons(nets: FunctionalNetworks, ids: Sequence[int], thr: dict, top: int = 5) -> list[list[dict]]:
    """Per network, the ``top`` networks sharing most key neurons: id, shared count, IoU."""
    from scipy import sparse

    sets = [nets.global_ids(int(n), **thr) for n in ids]
    total = int(sum(nets.neurons_per_layer))
    rows = np.concatenate([np.full(len(s), i) for i, s in enumerate(sets)]) if sets else np.zeros(0, int)
    cols = np.concatenate(sets) if sets else np.zeros(0, int)
    m = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(sets), max(total, 1)))
    inter = (m @ m.T).toarray()
    sizes = np.array([len(s) for s in sets])
    out = []
    for i in range(len(sets)):
        row = inter[i].copy()
        row[i] = 0
        order = [j for j in np.argsort(-row, kind="stable")[:top] if row[j] > 0]
        out.append([{"id": int(ids[j]), "shared": int(row[j]),
                     "iou": round(float(row[j] / (sizes[i] + sizes[j] - row[j])), 4)} for j in order])
    return out


def read_lesion(lesion) -> LesionResult | None:
    """A :class:`LesionResult`, its dict, a ``lesion.json`` path or a results folder holding one."""
    if lesion is None:
        return None
    if isinstance(lesion, (str, os.PathLike)):
        p = Path(lesion)
        if p.is_dir():
            p = p / "lesion.json"
        if not p.exists():
            raise FuncnetError(f"lesion result not found: {p}")
        try:
            lesion = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise FuncnetError(f"lesion result {p} is not JSON: {e}") from e
    return LesionResult.from_dict(lesion)


def lesion_by_network(lesion: LesionResult | None) -> dict[int, dict]:
    """Per single-network lesion condition: per domain baseline, lesioned and random-control
    perplexity, and ``effect`` = mean over domains of 100 x (lesioned / random mean - 1)."""
    if lesion is None:
        return {}
    out = {}
    for cond in lesion.conditions:
        if len(cond.get("networks", [])) != 1:
            continue
        rows, effects = [], []
        for dom in lesion.domains:
            les = cond["lesioned"].get(dom, {})
            rnd = cond.get("random", {}).get(dom, {})
            base = lesion.baseline.get(dom, {})
            row = {"domain": dom, "baseline_ppl": base.get("ppl"), "lesioned_ppl": les.get("ppl"),
                   "random_ppl_mean": rnd.get("ppl_mean"), "random_ppl_std": rnd.get("ppl_std")}
            rows.append(row)
            if row["lesioned_ppl"] and row["random_ppl_mean"]:
                effects.append(100.0 * (row["lesioned_ppl"] / row["random_ppl_mean"] - 1.0))
        out[int(cond["networks"][0])] = {"n_neurons": int(cond.get("n_neurons", 0)), "domains": rows,
                                         "effect": round(float(np.mean(effects)), 3) if effects else None,
                                         "threshold": lesion.params.get("threshold")}
    return out


def read_counterpart(counterpart, nets: FunctionalNetworks, ids: Sequence[int], thr: dict) -> dict:
    """The counterpart of each network in another set of networks, as ``{"model", "href", "pairs":
    {id: (other id, score)}}``.

    ``counterpart``: a list of ``[i, j, score]`` (or dicts with i/j/score); a dict with ``pairs`` of
    either form and optional ``model`` / ``href`` (the other site's folder, relative to this one);
    the JSON of ``funcnet fingerprint compare`` (pairs ``{"victim": "seed:net", "suspect": ...,
    "rho"}``: the net numbers are used, so it fits networks numbered as in the profile); a JSON file
    of any of these; or a :class:`FunctionalNetworks` (or its ``.safetensors`` file) of a model with
    the same layer widths, matched one to one on the IoU of key neurons (Hungarian).
    """
    if counterpart is None:
        return {}
    model, href = None, None
    if isinstance(counterpart, (str, os.PathLike)):
        p = Path(counterpart)
        if not p.exists():
            raise FuncnetError(f"counterpart file not found: {p}")
        if p.suffix == ".safetensors":
            counterpart = FunctionalNetworks.load(p)
        else:
            try:
                counterpart = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise FuncnetError(f"counterpart {p} is neither a networks file nor JSON: {e}") from e
    if isinstance(counterpart, FunctionalNetworks):
        other = counterpart
        if list(other.neurons_per_layer) != list(nets.neurons_per_layer):
            raise FuncnetError("the counterpart networks have other layer widths; pass a matching JSON "
                               "(a list of [i, j, score]) instead")
        from scipy.optimize import linear_sum_assignment

        a = [nets.global_ids(int(n), **thr) for n in ids]
        b = [other.global_ids(j, **thr) for j in range(other.n_networks)]
        inter = np.array([[np.intersect1d(x, y, assume_unique=True).size for y in b] for x in a], np.float64)
        sa, sb = np.array([len(x) for x in a])[:, None], np.array([len(y) for y in b])[None, :]
        union = sa + sb - inter
        score = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        r, c = linear_sum_assignment(-score)
        pairs = [(int(ids[i]), int(j), float(score[i, j])) for i, j in zip(r, c)]
        model = other.model_spec or "other networks"
    else:
        if isinstance(counterpart, dict):
            model, href = counterpart.get("model"), counterpart.get("href")
            if model is None and isinstance(counterpart.get("suspect"), dict):
                model = counterpart["suspect"].get("spec")
            raw = counterpart.get("pairs", [])
        else:
            raw = counterpart
        pairs = []
        for item in raw:
            if isinstance(item, dict):
                if "victim" in item and "suspect" in item:
                    i, j = str(item["victim"]).split(":")[-1], str(item["suspect"]).split(":")[-1]
                    s = item.get("rho", item.get("score"))
                else:
                    i, j, s = item.get("i"), item.get("j"), item.get("score")
            elif isinstance(item, (list, tuple)) and len(item) >= 2:
                i, j, s = item[0], item[1], item[2] if len(item) > 2 else None
            else:
                raise FuncnetError(f"cannot read counterpart pair {item!r}: use [i, j, score]")
            try:
                pairs.append((int(i), int(j), None if s is None else float(s)))
            except (TypeError, ValueError):
                raise FuncnetError(f"cannot read counterpart pair {item!r}: use [i, j, score]") from None
    best: dict[int, tuple[int, float | None]] = {}
    for i, j, s in pairs:
        if i not in best or (s is not None and (best[i][1] is None or abs(s) > abs(best[i][1]))):
            best[i] = (j, s)
    return {"model": model or "other model", "href": href, "pairs": best}
