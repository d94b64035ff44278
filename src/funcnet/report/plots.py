"""Static figures of an exploration's results (PNG at 150 dpi + SVG), for papers and the HTML report.

:func:`make_figures` reads a results folder through :mod:`funcnet.experiments.schema` (the typed
results of ``run.json`` and of every experiment in ``EXPERIMENTS``, and ``networks.safetensors``)
and draws every figure whose inputs exist into ``<results>/figures/``: the network map, and for
each experiment the figures of its entry in :data:`EXPERIMENT_FIGURES`. Figures are drawn on :class:`matplotlib.figure.Figure`
objects with the Agg canvas, so no display (and no pyplot global state) is ever needed.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from funcnet.core._io import atomic_path
from funcnet.errors import FuncnetError
from funcnet.experiments.common import top_networks
from funcnet.experiments.schema import (EXPERIMENTS, NETWORKS_FILE, RESULT_FILES, AmplificationResult, AnatomyResult,
                                        LesionResult, PreservationResult, RecurrenceResult, Result, RunInfo, load_json,
                                        load_results)
from funcnet.networks.functional import FunctionalNetworks

__all__ = ["DPI", "EXPERIMENT_FIGURES", "FIGURES", "RESULT_FILES", "FigureSpec", "load_json", "load_networks",
           "load_results", "make_figures", "network_color", "plot_amplification", "plot_anatomy", "plot_lesion",
           "plot_network_map", "plot_preservation", "plot_recurrence", "threshold_of", "top_network_ids"]

DPI = 150
DEFAULT_THRESHOLD = 3.6
MAX_NETWORKS = 10  # networks drawn in the map (one distinct colour each)

# Okabe-Ito (colour-blind safe) for domains, tab10 for networks
DOMAIN_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
NETWORK_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf"]
STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False, "svg.fonttype": "none",
    "svg.hashsalt": "funcnet", "figure.facecolor": "white", "axes.facecolor": "white",
}


# ---------------------------------------------------------------------------- loading
# load_json and load_results (``{"run": RunInfo | None, <experiment>: result | None}``) come from
# funcnet.experiments.schema, re-exported here


def load_networks(results_dir: str | os.PathLike):
    """The folder's FunctionalNetworks, or None when ``networks.safetensors`` is missing."""
    p = Path(results_dir) / NETWORKS_FILE
    if not p.exists():
        return None

    return FunctionalNetworks.load(p)


def _typed(res: Mapping[str, Any]) -> dict[str, Result | None]:
    """``res`` with JSON dicts (as funcnet 0.1's load_results gave) read into their result types."""
    types: dict[str, type[Result]] = {"run": RunInfo, **{n: s.result_type for n, s in EXPERIMENTS.items()}}
    return {k: types[k].from_dict(v) if isinstance(v, dict) and k in types else v for k, v in res.items()}


def threshold_of(res: Mapping[str, Any]) -> float:
    """The key-neuron threshold of a results folder: run.json's, else the anatomy's, else 3.6."""
    res = _typed(res)
    for r in (res.get("run"), res.get("anatomy")):
        t = getattr(r, "threshold", None)
        if isinstance(t, (int, float)):
            return float(t)
    return DEFAULT_THRESHOLD


def top_network_ids(res: Mapping[str, Any], nets=None, n: int = 8) -> list[int]:
    """The networks to show: those of the anatomy, else of the lesion, else the most stable."""
    res = _typed(res)
    ana = res.get("anatomy")
    if ana and ana.networks:
        return [int(a["network"]) for a in ana.networks][:MAX_NETWORKS]
    les = res.get("lesion")
    if les and les.conditions:
        ids = [int(c["networks"][0]) for c in les.conditions if len(c.get("networks", [])) == 1]
        if ids:
            return ids[:MAX_NETWORKS]
    if nets is not None and nets.n_networks:

        return top_networks(nets, n, threshold=threshold_of(res))
    return []


def network_color(position: int) -> str:
    return NETWORK_COLORS[position % len(NETWORK_COLORS)]


# ---------------------------------------------------------------------------- helpers
def _fig(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        p = out_dir / f"{stem}.{ext}"
        with atomic_path(p) as tmp:
            kw = {"metadata": {"Date": None}} if ext == "svg" else {}
            fig.savefig(tmp, format=ext, dpi=DPI, facecolor="white", **kw)
            os.chmod(tmp, 0o644)
        paths.append(p)
    return paths


def _logy(ax) -> None:
    """Log y axis with plain-number tick labels (12, 20, 50 rather than 2x10^1)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    span = hi / max(lo, 1e-12)
    if span < 1000:  # a short range: label some minor ticks too (20, 50, 200, ...)
        ax.yaxis.set_minor_locator(LogLocator(subs=(2, 3, 5) if span < 20 else (2, 5)))
        ax.yaxis.set_minor_formatter(fmt)
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _log_low(mean: float, sd: float, values=None) -> float:
    """Lower end of a mean ± sd spread drawn on a log axis: ``mean - sd`` when positive, else the
    smallest observed value (or mean / 2 without values), so a wide spread (sd >= mean, as with
    random 15% lesions on Gemma) neither reaches 0 nor drags the axis down to 1e-9."""
    lo = mean - sd
    if np.isfinite(lo) and lo > 0:
        return float(lo)
    v = np.array([_f(x) for x in (values or [])], float)
    v = v[np.isfinite(v) & (v > 0)]
    return float(min(v.min(), mean)) if len(v) else float(mean / 2)


def _log_yerr(means, sds, values_list=None) -> np.ndarray:
    """Asymmetric ``yerr`` (2 x N) for mean ± sd bars on a log axis (lower ends from :func:`_log_low`)."""
    means, sds = np.asarray(means, float), np.nan_to_num(np.asarray(sds, float))
    values_list = values_list or [None] * len(means)
    low = np.array([m - _log_low(m, s, v) if np.isfinite(m) else 0.0 for m, s, v in zip(means, sds, values_list)])
    return np.vstack([np.clip(np.nan_to_num(low), 0, None), sds])


def _pool(mask: np.ndarray, bins: int) -> np.ndarray:
    """Max-pool a [layers, neurons] boolean mask to ``bins`` columns (so single neurons stay visible)."""
    L, W = mask.shape
    width = max(1, math.ceil(W / bins))
    pad = (-W) % width
    m = np.pad(mask, ((0, 0), (0, pad)))
    return m.reshape(L, -1, width).any(axis=2), width


def _layer_masks(nets, ids: Sequence[int], threshold: float) -> tuple[list[np.ndarray], int]:
    npl = list(nets.neurons_per_layer)
    W = max(npl) if npl else 0
    out = []
    for i in ids:
        m = np.zeros((len(npl), W), bool)
        pairs = nets.key_neurons(int(i), threshold=threshold)
        if len(pairs):
            m[pairs[:, 0], pairs[:, 1]] = True
        out.append(m)
    return out, W


# ---------------------------------------------------------------------------- network map
def plot_network_map(nets, ids: Sequence[int], threshold: float, out_dir: Path) -> list[Path]:
    """One image (layers x neurons) with every top network in its own colour, plus small multiples."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    if not ids:
        return []
    masks, W = _layer_masks(nets, ids, threshold)
    L = masks[0].shape[0]
    bins = min(W, 384)
    pooled = [_pool(m, bins) for m in masks]
    width = pooled[0][1]
    P = np.stack([p for p, _ in pooled])  # [nets, L, bins]
    img = np.ones(P.shape[1:] + (3,))
    count = P.sum(0)
    for j in range(len(ids)):
        img[P[j] & (count == 1)] = to_rgb(network_color(j))
    img[count > 1] = (0.1, 0.1, 0.1)
    stab = nets.stability
    paths = []

    fig = _fig(7.5, 1.6 + 0.11 * L)
    ax = fig.add_subplot()
    ax.imshow(img, aspect="auto", interpolation="nearest", extent=(0, P.shape[2] * width, L - 0.5, -0.5))
    ax.set_xlim(0, W)
    ax.set_xlabel(f"neuron index (pooled in bins of {width})" if width > 1 else "neuron index")
    ax.set_ylabel("layer")
    ax.set_title(f"Key neurons (|z| > {threshold:g}) of the top {len(ids)} networks")
    handles = [Patch(color=network_color(j), label=f"net {i} ({int(m.sum())})") for j, (i, m) in enumerate(zip(ids, masks))]
    if (count > 1).any():
        handles.append(Patch(color=(0.1, 0.1, 0.1), label="shared"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, borderaxespad=0)
    paths += _save(fig, out_dir, "network_map")

    rows, cols = _grid(len(ids), 4)
    fig = _fig(7.5, rows * (0.55 + 0.055 * L) + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for j, (i, (p, _)) in enumerate(zip(ids, pooled)):
        ax = axes.flat[j]
        im = np.ones(p.shape + (3,))
        im[p] = to_rgb(network_color(j))
        ax.imshow(im, aspect="auto", interpolation="nearest", extent=(0, p.shape[1] * width, L - 0.5, -0.5))
        ax.set_xlim(0, W)
        s = _f(stab[int(i)]) if int(i) < len(stab) else float("nan")
        ax.set_title(f"net {i}: {int(masks[j].sum())} keys, stab {s:.2f}", fontsize=7, color=network_color(j))
        for sp in ax.spines.values():
            sp.set_visible(True)
            sp.set_color("#999999")
    for ax in axes.flat[len(ids):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("layer")
    for ax in axes[-1, :]:
        ax.set_xlabel("neuron")
    paths += _save(fig, out_dir, "network_map_panels")

    counts = np.array([m.sum(1) for m in masks])  # [nets, L]
    fig = _fig(7.5, 2.8)
    ax = fig.add_subplot()
    bottom = np.zeros(L)
    for j, i in enumerate(ids):
        ax.bar(np.arange(L), counts[j], bottom=bottom, color=network_color(j), label=f"net {i}", width=0.85)
        bottom += counts[j]
    ax.set_xlabel("layer")
    ax.set_ylabel("key neurons")
    ax.set_xticks(np.arange(0, L, max(1, L // 15)))
    ax.set_title("Key neurons per layer, per network (stacked)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, borderaxespad=0)
    paths += _save(fig, out_dir, "network_keys_per_layer")
    return paths


# ---------------------------------------------------------------------------- anatomy
def plot_anatomy(ana: AnatomyResult | dict, out_dir: Path, ids_order: Sequence[int] | None = None) -> list[Path]:
    ana = AnatomyResult.from_dict(ana)
    nets = ana.networks or []
    if not nets:
        return []
    rows, cols = _grid(len(nets), 4)
    fig = _fig(7.5, 0.3 + 1.4 * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for j, a in enumerate(nets):
        ax = axes.flat[j]
        pl = np.asarray(a.get("per_layer") or [], float)
        ax.bar(np.arange(len(pl)), pl, color=network_color(j), width=0.85)
        ax.set_title(f"net {a['network']}: {a.get('n_keys', int(pl.sum()))} keys, stab {_f(a.get('stability')):.2f}",
                     fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(nets):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("key neurons")
    for ax in axes[-1, :]:
        ax.set_xlabel("layer")
    fig.suptitle("Network anatomy: key neurons per layer", fontsize=9)
    return _save(fig, out_dir, "anatomy")


# ---------------------------------------------------------------------------- lesion
def plot_lesion(les: LesionResult | dict, out_dir: Path) -> list[Path]:
    les = LesionResult.from_dict(les)
    conds = les.conditions or []
    domains = les.domains or list((les.baseline or {}).keys())
    if not conds or not domains:
        return []
    rf = les.random_fraction or {}
    x = np.arange(len(conds))
    w = 0.38
    fig = _fig(max(4.0, 2.6 * len(domains) + 0.4 * len(conds) * len(domains) / 2), 3.4)
    axes = fig.subplots(1, len(domains), squeeze=False)[0]
    for k, (ax, d) in enumerate(zip(axes, domains)):
        les_ppl = np.array([_f(c["lesioned"][d]["ppl"]) for c in conds])
        rnd_m = np.array([_f(c["random"][d]["ppl_mean"]) for c in conds])
        rnd_s = np.array([_f(c["random"][d]["ppl_std"]) for c in conds])
        ax.bar(x - w / 2, les_ppl, w, color="#C0392B", label="network lesioned")
        rnd_v = [c["random"][d].get("ppl") for c in conds]
        ax.bar(x + w / 2, rnd_m, w, yerr=_log_yerr(rnd_m, rnd_s, rnd_v), capsize=2, color="#95A5A6", ecolor="#333333",
               label="random, same size (mean ± sd)")
        base = _f((les.baseline or {}).get(d, {}).get("ppl"))
        if np.isfinite(base):
            ax.axhline(base, color="black", lw=0.8, ls="--", label="baseline")
        r = (rf.get("result") or {}).get(d)
        if r:
            m, s = _f(r["ppl_mean"]), _f(r["ppl_std"])
            ax.axhline(m, color="#8E44AD", lw=1.0, ls=":", label=f"random {100 * _f(rf.get('fraction')):.0f}% of neurons")
            if np.isfinite(s) and s > 0:
                ax.axhspan(_log_low(m, s, r.get("ppl")), m + s, color="#8E44AD", alpha=0.12, lw=0)
        ax.set_xticks(x, [c["name"] for c in conds], rotation=45, ha="right")
        ax.set_title(d)
        if k == 0:
            ax.set_ylabel("perplexity (log)")
        top = np.nanmax(np.concatenate([les_ppl, rnd_m + np.nan_to_num(rnd_s)]))
        for xi, c, v in zip(x, conds, les_ppl):
            if np.isfinite(v):
                ax.annotate(f"{100 * _f(c['fraction']):.2g}%", (xi - w / 2, v), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=5.5, rotation=90)
        ax.set_yscale("log")
        if np.isfinite(top):
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, max(hi, top * 1.6))
        _logy(ax)
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="outside lower center", ncol=4, frameon=False)
    fig.suptitle("Lesion: perplexity with the network's neurons inhibited vs random neurons "
                 "(labels: % of all MLP neurons)", fontsize=9)
    return _save(fig, out_dir, "lesion")


# ---------------------------------------------------------------------------- preservation
def plot_preservation(pre: PreservationResult | dict, out_dir: Path) -> list[Path]:
    pre = PreservationResult.from_dict(pre)
    rows = [r for r in (pre.rows or []) if r.get("preserved")]
    domains = pre.domains or list((pre.baseline or {}).keys())
    if not rows or not domains:
        return []
    fig = _fig(6.0, 3.6)
    ax = fig.add_subplot()
    fr = np.array([100 * _f(r["fraction"]) for r in rows])
    for j, d in enumerate(domains):
        col = DOMAIN_COLORS[j % len(DOMAIN_COLORS)]
        kept = np.array([_f(r["preserved"][d]["ppl"]) for r in rows])
        ax.plot(fr, kept, "-o", color=col, ms=4, label=f"{d}: network union kept")
        rr = [r.get("random") or {} for r in rows]
        rm = np.array([_f(x.get(d, {}).get("ppl_mean")) for x in rr])
        rs = np.array([_f(x.get(d, {}).get("ppl_std")) for x in rr])
        if np.isfinite(rm).any():
            rv = [x.get(d, {}).get("ppl") for x in rr]
            ax.errorbar(fr, rm, yerr=_log_yerr(rm, rs, rv), fmt="--s", color=col, ms=3, capsize=2, alpha=0.75,
                        mfc="white", label=f"{d}: random, same fraction")
        base = _f((pre.baseline or {}).get(d, {}).get("ppl"))
        if np.isfinite(base):
            ax.axhline(base, color=col, lw=0.8, ls=":", label=f"{d}: dense model")
        if j == 0:
            for r, xv, yv in zip(rows, fr, kept):
                ax.annotate(f"k={r['k']}", (xv, yv), xytext=(4, 4), textcoords="offset points", fontsize=6.5)
    _logy(ax)
    if len(fr) > 1 and fr.max() / max(fr.min(), 1e-9) > 8:
        from matplotlib.ticker import (FixedLocator, FuncFormatter, NullFormatter, NullLocator)

        ax.set_xscale("log")   # ticks at the measured fractions only: log-scale minor labels overlap
        ax.xaxis.set_major_locator(FixedLocator(sorted(set(np.round(fr, 1)))))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("MLP neurons kept (%)")
    ax.set_ylabel("perplexity (log)")
    ax.set_title("Preservation: keep only the networks' key neurons", fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, borderaxespad=0)
    return _save(fig, out_dir, "preservation")


# ---------------------------------------------------------------------------- amplification
def plot_amplification(amp: AmplificationResult | dict, out_dir: Path) -> list[Path]:
    amp = AmplificationResult.from_dict(amp)
    curves = amp.curves or []
    domains = amp.domains or list((amp.baseline or {}).keys())
    if not curves or not domains:
        return []
    how = amp.how
    fig = _fig(max(4.0, 2.5 * len(domains)), 3.0)
    axes = fig.subplots(1, len(domains), squeeze=False)[0]
    for k, (ax, d) in enumerate(zip(axes, domains)):
        for j, c in enumerate(curves):
            xs = np.array([_f(p["value"]) for p in c["points"]])
            ys = np.array([_f(p["metrics"][d]["ppl"]) for p in c["points"]])
            o = np.argsort(xs)
            ax.plot(xs[o], ys[o], "-o", ms=3.5, color=network_color(j), label=f"net {c['network']} ({c.get('n_neurons', '?')})")
        base = _f((amp.baseline or {}).get(d, {}).get("ppl"))
        if np.isfinite(base):
            ax.axhline(base, color="black", lw=0.8, ls="--", label="baseline")
        ax.axvline(1.0 if how == "scale" else 0.0, color="#999999", lw=0.6, ls=":")
        _logy(ax)
        ax.set_title(d)
        ax.set_xlabel("scale factor" if how == "scale" else "added value")
        if k == 0:
            ax.set_ylabel("perplexity (log)")
    h, lab = axes[0].get_legend_handles_labels()
    fig.legend(h, lab, loc="outside right upper", frameon=False)
    fig.suptitle(f"Amplification: {'scaling' if how == 'scale' else 'shifting'} a network's neurons", fontsize=9)
    return _save(fig, out_dir, "amplification")


# ---------------------------------------------------------------------------- recurrence
def _domain_spans(items: list[dict], domains: Sequence[str]) -> list[tuple[str, int, int]]:
    spans, start = [], 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i].get("domain") != items[start].get("domain"):
            spans.append((items[start].get("domain", "?"), start, i))
            start = i
    return spans


def plot_recurrence(rec: RecurrenceResult | dict, out_dir: Path) -> list[Path]:
    rec = RecurrenceResult.from_dict(rec)
    templates, inds = rec.templates or [], rec.individuals or []
    domains = rec.domains or []
    paths = []
    M = np.asarray(rec.iou or [], float)
    if templates and inds and M.size:
        M = M.reshape(len(templates), len(inds))
        fig = _fig(7.5, min(9.0, 1.4 + 0.12 * len(templates)))
        ax = fig.add_subplot()
        vmax = max(0.3, float(np.nanmax(M)))
        im = ax.imshow(M, aspect="auto", interpolation="nearest", cmap="magma_r", vmin=0, vmax=vmax)
        cb = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.01)
        cb.set_label("IoU of key-neuron sets")
        thr = _f(rec.iou_threshold)
        if np.isfinite(thr) and thr < vmax:
            cb.ax.axhline(thr, color="#0072B2", lw=1.2)
        tsp, isp = _domain_spans(templates, domains), _domain_spans(inds, domains)
        for _, a, b in tsp[:-1]:
            ax.axhline(b - 0.5, color="#0072B2", lw=1.0)
        for _, a, b in isp[:-1]:
            ax.axvline(b - 0.5, color="#0072B2", lw=1.0)
        ax.set_yticks([(a + b - 1) / 2 for _, a, b in tsp], [d for d, _, _ in tsp], rotation=90, va="center")
        ax.set_xticks([(a + b - 1) / 2 for _, a, b in isp], [d for d, _, _ in isp])
        ax.set_ylabel("template networks (group decomposition)")
        ax.set_xlabel("individual-text networks")
        ax.tick_params(length=0)
        ax.set_title("Recurrence: IoU of template networks (rows) with individual-text networks (columns)")
        paths += _save(fig, out_dir, "recurrence_iou")
    table = rec.table or []
    if table and domains:
        C = np.array([[_f(r["counts"].get(d)) / max(_f(r["totals"].get(d)), 1) for d in domains] for r in table])
        fig = _fig(1.6 + 1.1 * len(domains), min(10.0, 0.9 + 0.2 * len(table)))
        ax = fig.add_subplot()
        ax.imshow(C, aspect="auto", cmap="Blues", vmin=0, vmax=max(1e-9, float(np.nanmax(C)) or 1.0))
        for i, r in enumerate(table):
            for j, d in enumerate(domains):
                ax.text(j, i, f"{r['counts'].get(d, 0)}/{r['totals'].get(d, 0)}", ha="center", va="center", fontsize=6.5,
                        color="white" if C[i, j] > 0.6 * max(float(np.nanmax(C)), 1e-9) else "black")
        ax.set_xticks(range(len(domains)), domains)
        ax.xaxis.tick_top()
        ax.set_yticks(range(len(table)), [r["template"] for r in table], fontsize=6)
        ax.tick_params(length=0)
        for sp in ax.spines.values():
            sp.set_visible(False)
        ax.set_xlabel(f"individual networks with IoU > {_or(rec.iou_threshold, '?')}")
        paths += _save(fig, out_dir, "recurrence_counts")
    return paths


# ---------------------------------------------------------------------------- entry point
class FigureSpec(NamedTuple):
    plot: Callable[[Any, Path], list[Path]]   # draws the figures of one experiment's result into a folder
    stems: tuple[str, ...]                    # the figures it draws


#: figures of the networks file (drawn by :func:`plot_network_map`)
NETWORK_FIGURES = ("network_map", "network_map_panels", "network_keys_per_layer")

#: experiment name (a key of funcnet.experiments.EXPERIMENTS) -> the function drawing its figures
EXPERIMENT_FIGURES: dict[str, FigureSpec] = {
    "anatomy": FigureSpec(plot_anatomy, ("anatomy",)),
    "lesion": FigureSpec(plot_lesion, ("lesion",)),
    "preserve": FigureSpec(plot_preservation, ("preservation",)),
    "amplify": FigureSpec(plot_amplification, ("amplification",)),
    "recurrence": FigureSpec(plot_recurrence, ("recurrence_iou", "recurrence_counts")),
}

FIGURES: dict[str, tuple[str, ...]] = {  # figure stem -> the result files it is drawn from
    **{stem: (NETWORKS_FILE,) for stem in NETWORK_FIGURES},
    **{stem: (spec.result_file,) for name, spec in EXPERIMENTS.items() if name in EXPERIMENT_FIGURES
       for stem in EXPERIMENT_FIGURES[name].stems},
}


def _or(x, default):
    return default if x is None else x


def make_figures(results_dir: str | os.PathLike, nets=None) -> list[Path]:
    """Draw every figure whose inputs exist in ``results_dir`` into ``results_dir/figures`` (PNG + SVG).

    Missing results are skipped silently. ``nets`` (a FunctionalNetworks) is read from
    ``networks.safetensors`` when not given. Returns the paths written.
    """
    import matplotlib

    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FuncnetError(f"results folder not found: {results_dir}")
    res = load_results(results_dir)
    if nets is None:
        nets = load_networks(results_dir)
    out_dir = results_dir / "figures"
    jobs: list[Callable[[], list[Path]]] = []
    thr = threshold_of(res)
    if nets is not None and nets.n_networks:
        jobs.append(lambda: plot_network_map(nets, top_network_ids(res, nets), thr, out_dir))
    for name in EXPERIMENTS:
        result, spec = res.get(name), EXPERIMENT_FIGURES.get(name)
        if result is not None and spec is not None:
            jobs.append(functools.partial(spec.plot, result, out_dir))
    paths: list[Path] = []
    if not jobs:
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(STYLE):
        for job in jobs:
            paths += job()
    return paths
