"""One self-contained HTML page of an exploration's results (``funcnet report RESULTS_DIR``).

The page embeds its figures as base64 PNG and its CSS inline; it references no external URL and
runs no JavaScript, so it can be mailed, archived, or opened offline. Every section whose result
file is missing says "not run". Figures are (re)drawn with :func:`funcnet.report.plots.make_figures`
when they are missing or older than their results.

Results are read through :mod:`funcnet.experiments.schema` (typed results); each experiment's
section is drawn by its entry in :data:`EXPERIMENT_SECTIONS`, keyed by the experiment's name.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np

from funcnet._version import __version__
from funcnet.core._io import atomic_path
from funcnet.errors import FuncnetError
from funcnet.experiments.schema import (EXPERIMENTS, NETWORKS_FILE, RESULT_FILES, RUN_FILE, AmplificationResult,
                                        AnatomyResult, LesionResult, PreservationResult, RecurrenceResult, Result,
                                        RunInfo)
from funcnet.report.plots import (DPI, EXPERIMENT_FIGURES, NETWORK_FIGURES, load_networks, load_results, make_figures,
                                  network_color, threshold_of, top_network_ids)

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;font-size:14px;line-height:1.45;color:#222;
 max-width:1180px;margin:0 auto;padding:16px 28px 48px;background:#fff}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;margin:34px 0 8px;padding-top:8px;border-top:2px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
nav{margin:6px 0 12px;font-size:13px}nav a{margin-right:12px;color:#0b5394;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 14px;font-size:12.5px}
th,td{border:1px solid #d5d5d5;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td.l,th.l{text-align:left}
table.kv td:first-child{text-align:left;color:#555;background:#fafafa}table.kv td{text-align:left}
tr.ref td{background:#f7f7fb;font-style:italic}td.hi{background:#ffe9e6;font-weight:600}td.own{font-weight:700}
figure{margin:10px 0 18px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#555;margin-top:3px}
.missing{color:#8a6d3b;background:#fcf8e3;border:1px solid #faebcc;padding:8px 12px;border-radius:4px}
.note{color:#555;font-size:13px}.headline{background:#eef5fb;border-left:4px solid #0b5394;padding:8px 12px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.ctx{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;text-align:left;white-space:pre-wrap;
 word-break:break-word}
.ctxgrid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:0 28px}
.ctxgrid table{width:100%}
mark{background:#ffd54f;padding:0 1px;border-radius:2px}.nl{color:#aaa}
details{margin:6px 0 12px}summary{cursor:pointer;color:#0b5394}
footer{margin-top:40px;font-size:12px;color:#777;border-top:1px solid #ddd;padding-top:8px}
"""


# ---------------------------------------------------------------------------- formatting
def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _isnum(x) -> bool:
    return isinstance(x, (int, float, np.floating, np.integer)) and not isinstance(x, bool) and math.isfinite(float(x))


def _n(x, nd: int = 2) -> str:
    """A number for a table: '–' for missing / NaN, compact for large values."""
    if not _isnum(x):
        return "–"
    x = float(x)
    if abs(x) >= 1e5:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:,.1f}"
    return f"{x:.{nd}f}"


def _pm(mean, std) -> str:
    return f"{_n(mean)} ± {_n(std)}" if _isnum(std) else _n(mean)


def _pct(x, nd: int = 2) -> str:
    return f"{100 * float(x):.{nd}f}%" if _isnum(x) else "–"


def _int(x) -> str:
    return f"{int(x):,}" if _isnum(x) else "–"


def _swatch(pos: int) -> str:
    return f'<span class="sw" style="background:{network_color(pos)}"></span>'


def _or(x, default):
    """``x``, or ``default`` when it is None (a key missing from an older result file)."""
    return default if x is None else x


def _get(d, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "", left: int = 1) -> str:
    """``header`` and ``rows`` cells are HTML already; the first ``left`` columns are left-aligned."""
    h = "".join(f'<th class="l">{c}</th>' if i < left else f"<th>{c}</th>" for i, c in enumerate(header))
    body = []
    for r in rows:
        if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], str) and r[1].startswith("class="):
            cells, trcls = r[0], f" {r[1]}"
        else:
            cells, trcls = r, ""
        tds = []
        for i, c in enumerate(cells):
            if isinstance(c, tuple):  # (html, css class)
                tds.append(f'<td class="{c[1]}">{c[0]}</td>')
            else:
                tds.append(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>")
        body.append(f"<tr{trcls}>{''.join(tds)}</tr>")
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    return '<table class="kv"><tbody>' + "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in pairs) + \
        "</tbody></table>"


def _not_run(what: str) -> str:
    return f'<p class="missing">not run: no {_e(what)} in the results folder.</p>'


class _Figures:
    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, stem: str, caption: str = "") -> str:
        p = self.folder / f"{stem}.png"
        if not p.exists():
            return f'<p class="note">(figure {_e(stem)} was not drawn: not enough data)</p>'
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        cap = f"<figcaption>{caption} <span class=\"note\">(also figures/{_e(stem)}.svg)</span></figcaption>"
        return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(stem)}">{cap}</figure>'


# ---------------------------------------------------------------------------- sections
def _sec_model(run: RunInfo | None) -> str:
    if not run:
        return _not_run(RUN_FILE)
    m = run.model or {}
    npl = m.get("neurons_per_layer") or []
    width = (f"{npl[0]:,}" if npl and len(set(npl)) == 1 else f"{min(npl):,}–{max(npl):,}") if npl else "–"
    st = run.store or {}
    pairs = [
        ("model", f"<b>{_e(m.get('spec') or '?')}</b>"),
        ("architecture", f"{_e(m.get('architecture', '?'))} (family {_e(m.get('family', '?'))})"),
        ("layers × MLP neurons", f"{_int(m.get('n_layers'))} × {width} = {_int(m.get('total_neurons'))} neurons"),
        ("attention", f"{_int(m.get('n_heads'))} heads, {_int(m.get('n_kv_heads'))} KV heads, head dim "
                      f"{_int(m.get('head_dim'))}"),
        ("parameters", f"{_int(m.get('n_parameters'))} (MLP {_int(m.get('mlp_parameters'))}, attention "
                       f"{_int(m.get('attn_parameters'))})"),
        ("dtype", _e(m.get("dtype", "?"))),
        ("model identity", f"<code>{_e(str(m.get('identity', '?'))[:16])}</code>"),
        ("corpus", _e(_or(run.corpus, "?"))),
    ]
    if st:
        pairs.append(("activation store", f"{_int(st.get('n_tokens'))} tokens from {_int(st.get('n_documents'))} "
                                          f"documents, {_int(st.get('layers'))} layers, {_e(st.get('size_mb', '?'))} MB"))
    pairs += [("run size", _e(_or(run.size, "?"))), ("seed", _e(_or(run.seed, "?"))),
              ("key-neuron threshold", f"|z| &gt; {_e(_or(run.threshold, '?'))}"),
              ("funcnet version", _e(_or(run.funcnet_version, "?")))]
    params = run.params or {}
    if params:
        pairs.append(("parameters of the run", "<code>" + _e(", ".join(f"{k}={v}" for k, v in params.items())) +
                      "</code>"))
    out = [_kv(pairs)]
    t = run.timings or {}
    if t:
        out.append("<h3>Timings</h3>")
        out.append(_table(["step", "seconds", "minutes"], [[_e(k), _n(v, 1), _n(_f(v) / 60, 1)] for k, v in t.items()]))
    return "\n".join(out)


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _sec_networks(res: dict[str, Result | None], nets, fig: _Figures) -> str:
    if nets is None:
        return _not_run(NETWORKS_FILE)
    thr = threshold_of(res)
    total = int(sum(nets.neurons_per_layer))
    union = int(sum(m.sum() for m in nets.masks(threshold=thr).values()))
    stab = np.asarray(nets.stability, float)
    ids = top_network_ids(res, nets)
    txt = (f"<p>{nets.n_networks} networks from {len(nets.decompositions)} decomposition(s) "
           f"({_e(nets.params.get('mode', '?'))} mode, k={_e(nets.params.get('n_components', '?'))}); "
           f"stability median {_n(np.median(stab)) if stab.size else '–'}, {int((stab >= 0.8).sum())} with "
           f"stability ≥ 0.8. Key neurons (|z| &gt; {thr:g}) of all networks together: {union:,} of {total:,} "
           f"MLP neurons ({_pct(union / max(total, 1))}).</p>")
    rows = []
    for j, i in enumerate(ids):
        pairs = nets.key_neurons(int(i), threshold=thr)
        ls = np.unique(pairs[:, 0]) if len(pairs) else []
        span = f"{ls[0]}–{ls[-1]}" if len(ls) else "–"
        d, _ = nets.network(int(i))
        rows.append([f"{_swatch(j)}net {int(i)}", _e(d.unit), _n(stab[int(i)]), _int(len(pairs)),
                     _pct(len(pairs) / max(total, 1)), _int(len(ls)), span])
    table = _table(["network", "unit", "stability", "key neurons", "% of neurons", "layers", "layer span"], rows,
                   left=2) if rows else '<p class="note">no network has key neurons at this threshold.</p>'
    return "\n".join([txt, f"<h3>Layer × neuron map of the top {len(ids)} networks</h3>", table,
                      fig("network_map", "Key neurons of each network (one colour per network; black: key in more "
                                         "than one). Each row is a layer; neurons run along x."),
                      fig("network_map_panels", "The same map, one panel per network."),
                      fig("network_keys_per_layer", "Key neurons per layer, per network (stacked).")])


def _sec_recurrence(rec: RecurrenceResult, fig: _Figures) -> str:
    doms = rec.domains or []
    thr = _or(rec.iou_threshold, "?")
    p = rec.params or {}
    tpl = {t.get("id"): t for t in rec.templates or []}
    intro = (f"<p>Template networks come from a group decomposition of {_e(p.get('n_template', '?'))} texts per domain "
             f"(k={_e(p.get('k_template', '?'))}); individual networks from decompositions of single other texts "
             f"({_e(p.get('n_individual', '?'))} per domain, k={_e(p.get('k_individual', '?'))}). Each cell counts "
             f"the individual networks of a domain whose key-neuron set has IoU &gt; {_e(thr)} with the template "
             f"(bold: the template's own domain).</p>")
    rows = []
    table = rec.table or []
    for r in table:
        t = tpl.get(r.get("template"), {})
        cells = [_e(r.get("template")), _int(t.get("n_keys"))]
        for d in doms:
            c, n = _get(r, "counts", d), _get(r, "totals", d)
            s = f"{_int(c)}/{_int(n)}"
            cells.append((s, "own") if t.get("domain") == d else s)
        cells.append(_n(r.get("max_iou")))
        rows.append(cells)
    summary = ""
    if table and doms:
        rec_any = sum(1 for r in table if any((_get(r, "counts", d) or 0) > 0 for d in doms))
        summary = (f'<p class="headline">{rec_any} of {len(table)} template networks recur (IoU &gt; {_e(thr)}) in at '
                   f"least one individual text's networks.</p>")
    return "\n".join([intro, summary,
                      _table(["template", "key neurons", *[_e(d) for d in doms], "max IoU"], rows),
                      fig("recurrence_iou", "IoU of every template network (rows) with every individual network "
                                            "(columns), grouped by domain."),
                      ])


def _lesion_headline(les: LesionResult) -> str:
    conds = les.conditions or []
    doms = les.domains or []
    rf = les.random_fraction or {}
    if not conds or not doms:
        return ""
    allc = next((c for c in conds if str(c.get("name", "")).startswith("all")), conds[-1])
    parts = []
    for d in doms:
        b = _get(les.baseline, d, "ppl")
        l = _get(allc, "lesioned", d, "ppl")
        r = _get(allc, "random", d, "ppl_mean")
        f = _get(rf, "result", d, "ppl_mean")
        s = f"<b>{_e(d)}</b>: {_n(b)} → {_n(l)} (random same-size: {_n(r)}"
        if _isnum(f):
            s += f"; random {_pct(rf.get('fraction'), 0)}: {_n(f)}"
        parts.append(s + ")")
    beats = [d for d in doms if _isnum(_get(allc, "lesioned", d, "ppl")) and
             _isnum(_get(rf, "result", d, "ppl_mean")) and
             _get(allc, "lesioned", d, "ppl") > _get(rf, "result", d, "ppl_mean")]
    verdict = ""
    if rf.get("result"):
        frac = _pct(allc.get("fraction"))
        if beats:
            verdict = (f" Inhibiting these {frac} of neurons hurts more than inhibiting a random "
                       f"{_pct(rf.get('fraction'), 0)} on: {', '.join(_e(d) for d in beats)}.")
        else:
            verdict = (f" Inhibiting these {frac} of neurons hurts less than a random {_pct(rf.get('fraction'), 0)} "
                       f"on every domain: the paper's headline does not hold here.")
    return (f'<p class="headline">Perplexity when inhibiting <b>{_e(allc.get("name"))}</b> '
            f"({_int(allc.get('n_neurons'))} neurons, {_pct(allc.get('fraction'))} of MLP neurons), baseline → "
            f"lesioned: {'; '.join(parts)}.{verdict}</p>")


def _sec_lesion(les: LesionResult, fig: _Figures) -> str:
    doms = les.domains or []
    p = les.params or {}
    rf = les.random_fraction or {}
    head = ["condition", "neurons", "% of neurons"]
    for d in doms:
        head += [f"{_e(d)}: lesioned ppl", f"{_e(d)}: random ppl (mean ± sd)", f"{_e(d)}: ratio"]
    rows = [([_e("baseline (no lesion)"), "0", "0%"] + sum(([_n(_get(les.baseline, d, "ppl")), "", ""]
                                                           for d in doms), []), "class=ref")]
    for c in les.conditions or []:
        cells = [_e(c.get("name")), _int(c.get("n_neurons")), _pct(c.get("fraction"))]
        for d in doms:
            l, rm, rs = _get(c, "lesioned", d, "ppl"), _get(c, "random", d, "ppl_mean"), _get(c, "random", d, "ppl_std")
            ratio = l / rm if _isnum(l) and _isnum(rm) and rm > 0 else None
            hi = _isnum(l) and _isnum(rm) and _isnum(rs) and l > rm + 2 * rs
            cells += [(_n(l), "hi") if hi else _n(l), _pm(rm, rs), _n(ratio)]
        rows.append(cells)
    if rf.get("result"):
        total = p.get("total_neurons")
        n = round(_f(rf.get("fraction")) * total) if _isnum(total) else None
        rows.append(([f"random {_pct(rf.get('fraction'), 0)} of neurons", _int(n), _pct(rf.get("fraction"))] +
                     sum(([_pm(_get(rf, "result", d, "ppl_mean"), _get(rf, "result", d, "ppl_std")), "", ""]
                          for d in doms), []), "class=ref"))
    note = (f'<p class="note">{_e(p.get("n_random", "?"))} random neuron sets per condition, matched per layer, '
            f"excluding the network's neurons; windows of {_e(p.get('window', '?'))} tokens, "
            f"{_e(p.get('max_windows', '?'))} per domain; highlighted: lesioned perplexity above random mean + 2 sd.</p>")
    return "\n".join([_lesion_headline(les), _table(head, rows), note,
                      fig("lesion", "Perplexity with each network (and all of them) inhibited vs random sets of the "
                                    "same size per layer (mean ± sd); dotted: a random fraction of all neurons; "
                                    "dashed: baseline.")])


def _sec_preservation(pre: PreservationResult, fig: _Figures) -> str:
    doms = pre.domains or []
    p = pre.params or {}
    head = ["k", "neurons kept", "% kept"]
    for d in doms:
        head += [f"{_e(d)}: networks kept", f"{_e(d)}: random kept (mean ± sd)"]
    rows = [(["dense model", _int(p.get("total_neurons")), "100%"] +
             sum(([_n(_get(pre.baseline, d, "ppl")), ""] for d in doms), []), "class=ref")]
    for r in pre.rows or []:
        cells = [f"k={_e(r.get('k'))}", _int(r.get("n_neurons")), _pct(r.get("fraction"))]
        if not r.get("preserved"):
            cells += ["no key neurons", ""] * len(doms)
        else:
            for d in doms:
                cells += [_n(_get(r, "preserved", d, "ppl")),
                          _pm(_get(r, "random", d, "ppl_mean"), _get(r, "random", d, "ppl_std"))]
        rows.append(cells)
    note = (f'<p class="note">Every MLP neuron outside the union of the key neurons (|z| &gt; '
            f"{_e(p.get('threshold', '?'))}) of a k-component decomposition ({_e(p.get('mode', '?'))} mode) is zeroed; "
            f"the control keeps a random set of the same size per layer ({_e(p.get('n_random', '?'))} seeds). "
            f"Values are perplexities.</p>")
    return "\n".join([_table(head, rows), note,
                      fig("preservation", "Perplexity vs fraction of MLP neurons kept: networks (solid, labelled "
                                          "with k) vs random (dashed, mean ± sd); dotted: dense model.")])


def _sec_amplification(amp: AmplificationResult, fig: _Figures) -> str:
    doms = amp.domains or []
    how = amp.how
    what = "factor" if how == "scale" else "added value"
    rows = []
    for d in doms:
        b = _get(amp.best, d) or {}
        ppl, base = b.get("ppl"), b.get("baseline_ppl")
        change = (ppl / base - 1) if _isnum(ppl) and _isnum(base) and base > 0 else None
        identity = _isnum(b.get("value")) and float(b["value"]) == (1.0 if how == "scale" else 0.0)
        better = b.get("better_than_dense", change is not None and change < 0)
        ch = f"{100 * change:+.1f}%" if change is not None else "–"
        if identity or not better:
            ch = f"no setting beats the baseline (closest: {ch})" if not identity else "no setting beats the baseline"
        rows.append([_e(d), f"net {_e(b.get('network', '?'))}", _e(b.get("value", "?")), _n(ppl), _n(base), ch])
    best = _table(["domain", "closest-to-best network", what, "ppl", "baseline ppl", "change"], rows, left=2)
    full_rows = []
    for j, c in enumerate(amp.curves or []):
        for pt in c.get("points") or []:
            full_rows.append([f"{_swatch(j)}net {_e(c.get('network'))}", _int(c.get("n_neurons")), _e(pt.get("value"))] +
                             [_n(_get(pt, "metrics", d, "ppl")) for d in doms] +
                             [_n(_get(pt, "metrics", d, "accuracy"), 3) for d in doms])
    full = _table(["network", "neurons", what, *[f"{_e(d)} ppl" for d in doms], *[f"{_e(d)} acc" for d in doms]],
                  full_rows)
    return "\n".join([f"<p>Each network's key neurons are {'multiplied by' if how == 'scale' else 'shifted by'} "
                      f"each {what}; best (lowest perplexity) per domain:</p>", best,
                      fig("amplification", f"Perplexity vs {what} for each network, one panel per domain; dashed: "
                                           "baseline."),
                      f"<details><summary>all values ({len(full_rows)} rows)</summary>{full}</details>"])


def _context_html(c: dict) -> str:
    def part(s):
        return _e(s or "").replace("\n", '<span class="nl">↵</span>\n')

    return f"{part(c.get('left'))}<mark>{part(c.get('token'))}</mark>{part(c.get('right'))}"


def _sec_contexts(ana: AnatomyResult, fig: _Figures) -> str:
    out = [fig("anatomy", "Key neurons per layer of each network."),
           f'<p class="note">The tokens where each network\'s time course (mean activation of its key neurons, '
           f"|z| &gt; {_e(_or(ana.threshold, '?'))}) is highest, with their context; the token is highlighted.</p>"]
    out.append('<div class="ctxgrid">')
    for j, a in enumerate(ana.networks or []):
        pl = a.get("per_layer") or []
        nz = [i for i, v in enumerate(pl) if v]
        span = f"layers {nz[0]}–{nz[-1]}" if nz else "no layers"
        out.append(f"<div><h3>{_swatch(j)}net {_e(a.get('network'))} <span class=\"note\">stability "
                   f"{_n(a.get('stability'))}, {_int(a.get('n_keys'))} key neurons, {span}</span></h3>")
        ctx = a.get("top_contexts") or []
        if not ctx:
            out.append('<p class="note">no contexts recorded.</p></div>')
            continue
        out.append(_table(["context", "value", "doc"],
                          [[(_context_html(c), "ctx"), _n(c.get("value"), 3), _e(c.get("doc", ""))] for c in ctx]))
        out.append("</div>")
    out.append("</div>")
    return "\n".join(out)


# ---------------------------------------------------------------------------- page
class SectionSpec(NamedTuple):
    anchor: str                                 # the section's id in the page
    render: Callable[[Result, _Figures], str]  # the section's HTML from the experiment's (typed) result


#: experiment name (a key of funcnet.experiments.EXPERIMENTS) -> its section, in page order; the title
#: is the experiment's ExperimentSpec.title
EXPERIMENT_SECTIONS: dict[str, SectionSpec] = {
    "recurrence": SectionSpec("recurrence", _sec_recurrence),
    "lesion": SectionSpec("lesion", _sec_lesion),
    "preserve": SectionSpec("preservation", _sec_preservation),
    "amplify": SectionSpec("amplification", _sec_amplification),
    "anatomy": SectionSpec("contexts", _sec_contexts),
}

#: (anchor, title) of every section, in page order
SECTIONS = [("model", "Model and corpus"), ("networks", "Functional networks")] + \
    [(sec.anchor, EXPERIMENTS[name].title) for name, sec in EXPERIMENT_SECTIONS.items()]


def _figures_stale(d: Path, res: dict, have_nets: bool) -> bool:
    fig_dir = d / "figures"
    todo = [(stem, NETWORKS_FILE, have_nets) for stem in NETWORK_FIGURES]
    todo += [(stem, spec.result_file, res.get(name) is not None) for name, spec in EXPERIMENTS.items()
             if name in EXPERIMENT_FIGURES for stem in EXPERIMENT_FIGURES[name].stems]
    for stem, src, present in todo:
        if not present:
            continue
        png = fig_dir / f"{stem}.png"
        if not png.exists() or png.stat().st_mtime < (d / src).stat().st_mtime:
            return True
    return False


def render_html(results_dir: str | os.PathLike) -> str:
    """The report page as a string (figures must already exist to be embedded)."""

    d = Path(results_dir)
    res = load_results(d)
    nets = load_networks(d)
    fig = _Figures(d / "figures")
    bodies = {"model": _sec_model(res.get("run")), "networks": _sec_networks(res, nets, fig)}
    for name, sec in EXPERIMENT_SECTIONS.items():
        result = res.get(name)
        bodies[sec.anchor] = _not_run(EXPERIMENTS[name].result_file) if result is None else sec.render(result, fig)
    run = res.get("run")
    spec = _get(run.model if run else None, "spec") or (nets.model_spec if nets is not None else "") or d.name
    nav = "".join(f'<a href="#{k}">{_e(t)}</a>' for k, t in SECTIONS)
    secs = "\n".join(f'<section id="{k}"><h2>{i + 1}. {_e(t)}</h2>\n{bodies[k]}\n</section>'
                     for i, (k, t) in enumerate(SECTIONS))
    present = [f for f in RESULT_FILES if (d / f).exists()]
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>funcnet report: {_e(spec)}</title>
<style>{CSS}</style></head>
<body>
<h1>Functional networks of {_e(spec)}</h1>
<p class="note">funcnet report of <code>{_e(d.resolve())}</code>, written {when}.</p>
<nav>{nav}</nav>
{secs}
<footer>funcnet {_e(__version__)}. Result files: {_e(', '.join(present))}. Static figures (PNG {DPI} dpi and SVG) are
in <code>figures/</code> next to this page.</footer>
</body></html>
"""


def write_report(results_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the self-contained HTML report of a results folder (``<results>/report.html`` by default)."""
    d = Path(results_dir)
    if not d.is_dir():
        raise FuncnetError(f"results folder not found: {d}")
    present = [f for f in RESULT_FILES if (d / f).exists()]
    if not present:
        raise FuncnetError(f"no funcnet results in {d} (expected any of {', '.join(RESULT_FILES)}); "
                           f"run `funcnet explore --out {d}` first")
    res = load_results(d)  # raises a clear error on a corrupt file
    if _figures_stale(d, res, (d / "networks.safetensors").exists()):
        make_figures(d)
    page = render_html(d)
    out = Path(out) if out is not None else d / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a report is meant to be shared
    return out


