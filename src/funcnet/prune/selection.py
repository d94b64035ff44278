"""Exact-ratio selection: which neurons (and key/value groups) to keep, globally ranked (scores
standardized per layer, or as they are: ``global-raw``) or uniform per layer, counting the bias
parameters compensation adds."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from funcnet._defaults import ALLOCATIONS, DENOMINATORS  # noqa: F401  (defined there for the CLI)
from funcnet.core.adapters import out_features
from funcnet.core.models import LoadedModel, as_loaded, count_parameters
from funcnet.core.shrink import bias_missing as _bias_missing
from funcnet.errors import FuncnetError
from funcnet.prune._linalg import _standardize
from funcnet.prune.scores import Importance, _head_config



DEFAULT_PROTECT = (3, 2)


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


def _check_ratio(ratio) -> None:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise FuncnetError(f"ratio must be a number in (0, 1), got {ratio!r}") from None
    if isinstance(ratio, bool) or not (0.0 < r < 1.0):
        raise FuncnetError(f"ratio must be in (0, 1), got {ratio}")


def param_counts(lm: LoadedModel) -> dict:
    layers = lm.layers
    mlp = sum(lm.adapter.mlp_param_count(l) for l in layers)
    attn = sum(lm.adapter.attn_param_count(l) for l in layers)
    return {"all": count_parameters(lm.model), "attn+mlp": mlp + attn, "mlp": mlp}


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
    multiple_of: int = 1,
) -> Selection:
    """Choose which neurons (and key/value groups) to keep so that ``ratio`` of the ``of``
    parameters is removed, within one neuron's parameters (bias parameters added by compensation
    are counted). With ``importance.keep_masks`` the masks are used as given (threshold rule).

    ``multiple_of=m`` (default 1: exact widths, the selection above unchanged) makes every pruned
    layer keep a multiple of ``m`` neurons, at least ``m`` (what quantized kernels want: llama.cpp's
    Q8_0 / Q4_K blocks are 32 / 256 wide); a layer the selection leaves whole keeps its width. The
    rule: the exact selection's per-layer kept counts are rounded down to multiples of ``m``, then,
    layer by layer, the rounding up that brings the removed parameters nearest the target is taken
    while it brings them nearer; so the result is as close to the target as the granularity allows
    (within half of one layer's ``m`` neurons' parameters, plus one compensation bias). Which
    neurons go still follows the layer's importance (lowest first). With a threshold rule the kept
    count of each pruned layer is rounded up."""
    if int(multiple_of) != multiple_of or int(multiple_of) < 1:
        raise FuncnetError(f"multiple_of must be an integer >= 1, got {multiple_of}")
    multiple_of = int(multiple_of)
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
    hidden_out = [out_features(ad.down_proj(l)) for l in layers]
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
            if multiple_of > 1 and len(keep[i]) < widths[i]:
                keep[i] = _top_k(importance.neurons.get(i, m.astype(np.float64)), keep[i],
                                 min(widths[i], -(-len(keep[i]) // multiple_of) * multiple_of))
            k = widths[i] - len(keep[i])
            removed += k * ppn[i] - (mlp_bias_cost[i] if k else 0)
        return Selection(keep, None, None, denom, of, allocation, protected, removed)

    _check_ratio(ratio)
    target = float(ratio) * denom

    hc = {i: _head_config(lm, i) for i in range(n)} if heads else {}
    o_out = {i: out_features(layers[i].get_submodule(ad.o_proj)) for i in range(n)}
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

    if allocation in ("global", "global-raw"):
        # global: scores standardized per layer, ranked together (FLAP); global-raw: ranked as they
        # are (scores already comparable across layers, e.g. obs's error per parameter)
        std = _standardize if allocation == "global" else (lambda x: np.asarray(x, dtype=np.float64))
        items = []  # (score, kind, layer, index, cost)
        for i in free:
            s = np.asarray(importance.neurons[i], dtype=np.float64)
            z = std(s)
            order = np.argsort(s, kind="stable")[:-1]  # never the best neuron
            items += [(float(z[j]), 0, i, int(j), ppn[i]) for j in order]
            if heads:
                hsc = np.asarray(importance.heads[i], dtype=np.float64)
                hz = std(hsc)
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

    if multiple_of > 1:
        removed_n = _round_widths(importance, removed_n, free, widths, ppn, mlp_bias_cost, multiple_of,
                                  target - sum(len(removed_g[i]) * gcost[i] - (o_bias_cost[i] if removed_g[i] else 0)
                                               for i in range(n)) if heads else target)
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


def _top_k(scores, must, k: int) -> np.ndarray:
    """Sorted indices of ``k`` neurons: those of ``must``, then the highest ``scores`` of the rest."""
    must = np.asarray(must, dtype=np.int64)
    taken = set(must.tolist())
    extra = [int(j) for j in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable") if int(j) not in taken]
    return np.sort(np.concatenate([must, np.asarray(extra[: max(0, k - len(must))], dtype=np.int64)]))


def _round_widths(importance, removed_n, free, widths, ppn, bias_cost, m: int, target: float) -> dict:
    """Round each free layer's kept width to a multiple of ``m`` (see :func:`select`): all rounded
    down first (never below ``m``), then the rounding up that brings the removed MLP parameters
    nearest ``target`` is taken, one layer at a time, while it brings them nearer."""
    def removal(i, kept):
        k = widths[i] - kept
        return k * ppn[i] - (bias_cost[i] if k else 0)

    down, up = {}, {}
    for i in free:
        kept = widths[i] - len(removed_n[i])
        if kept >= widths[i] or widths[i] <= m:
            down[i] = up[i] = widths[i]
            continue
        down[i] = max(m, (kept // m) * m)
        up[i] = min(widths[i], -(-kept // m) * m)
    choice = dict(down)
    net = sum(removal(i, choice[i]) for i in free)
    while True:
        best, best_err = None, abs(net - target)
        for i in free:
            if choice[i] == up[i]:
                continue
            err = abs(net - removal(i, choice[i]) + removal(i, up[i]) - target)
            if err < best_err - 1e-9:
                best, best_err = i, err
        if best is None:
            break
        net += removal(best, up[best]) - removal(best, choice[best])
        choice[best] = up[best]
    out = dict(removed_n)
    for i in free:
        s = np.asarray(importance.neurons[i], dtype=np.float64)
        out[i] = np.argsort(s, kind="stable")[: widths[i] - choice[i]]
    return out
