"""Write the static network browser: ``index.html``, one page per network, the data as JS files (the
pages read them under ``file://``) and the same data as JSON files (for other tools).

Layout of a site folder::

    index.html                 sortable, filterable table of networks + token search
    n/<id:04d>.html            one page per network
    data/index.js              window.FUNCNET_INDEX = <json/index.json>
    data/search.js             window.FUNCNET_SEARCH = <json/search.json>
    data/net/<id:04d>.js       window.FUNCNET_NET = <json/network_<id:04d>.json>
    json/...                   the same objects as plain JSON (schemas in docs/browser.md)
    assets/style.css, assets/app.js
"""
from __future__ import annotations

import functools
import html
import http.server
import itertools
import json
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import funcnet.report.browse._compute as C
from funcnet._version import __version__
from funcnet.core._io import atomic_path, check_output, mark_output
from funcnet.core.models import as_loaded
from funcnet.core.progress import progress_bar
from funcnet.data.corpus import load_corpus
from funcnet.data.store import ActivationStore
from funcnet.errors import FuncnetError
from funcnet.networks.functional import FunctionalNetworks
from funcnet.report.browse._assets import APP_JS, STYLE_CSS

NETWORK_FORMAT = "funcnet-browse-network"
INDEX_FORMAT = "funcnet-browse-index"
SEARCH_FORMAT = "funcnet-browse-search"
FORMAT_VERSION = 1
#: the most bytes any file of the site may have
MAX_PAGE_BYTES = 1_000_000
SITE_ENTRIES = ("index.html", "n", "data", "json", "assets")

_CTX = {"type": "object", "required": ["row", "doc", "seq", "value", "focus", "tokens", "acts"],
        "properties": {"row": {"type": "integer"}, "doc": {"type": "integer"}, "seq": {"type": "integer"},
                       "value": {"type": "number"}, "focus": {"type": "integer"},
                       "tokens": {"type": "array", "items": {"type": "string"}},
                       "acts": {"type": "array", "items": {"type": "number"}}}}
_TOKVAL = {"type": "object", "required": ["id", "token", "logit"],
           "properties": {"id": {"type": "integer"}, "token": {"type": "string"}, "logit": {"type": "number"}}}
_NUM_OR_NULL = {"type": ["number", "null"]}
#: JSON Schema (draft 2020-12 subset: type, required, properties, items) of ``json/network_<id>.json``
NETWORK_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": NETWORK_FORMAT,
    "type": "object",
    "required": ["format", "format_version", "id", "label", "unit", "group", "component", "stability", "n_key",
                 "key_per_layer", "layers", "activity", "top_contexts", "quantile_samples", "domains",
                 "strongest_domain", "direct_effect", "top_tokens", "lesion", "shared", "counterpart"],
    "properties": {
        "format": {"type": "string"}, "format_version": {"type": "integer"},
        "id": {"type": "integer"}, "label": {"type": "string"}, "unit": {"type": "string"},
        "group": {"type": "integer"}, "component": {"type": "integer"}, "stability": _NUM_OR_NULL,
        "n_key": {"type": "integer"},
        "key_per_layer": {"type": "array", "items": {"type": "integer"}},
        "layers": {"type": ["array", "null"], "items": {"type": "integer"}},
        "activity": {"type": "object", "required": ["n_tokens", "mean", "std", "min", "max", "histogram"],
                     "properties": {"n_tokens": {"type": "integer"}, "mean": {"type": "number"},
                                    "std": {"type": "number"}, "min": {"type": "number"}, "max": {"type": "number"},
                                    "histogram": {"type": "object", "required": ["edges", "counts"], "properties": {
                                        "edges": {"type": "array", "items": {"type": "number"}},
                                        "counts": {"type": "array", "items": {"type": "integer"}}}}}},
        "top_contexts": {"type": "array", "items": _CTX},
        "quantile_samples": {"type": "array", "items": {
            "type": "object", "required": ["lo", "hi", "value_lo", "value_hi", "contexts"],
            "properties": {"lo": {"type": "number"}, "hi": {"type": "number"}, "value_lo": {"type": "number"},
                           "value_hi": {"type": "number"}, "contexts": {"type": "array", "items": _CTX}}}},
        "domains": {"type": "array", "items": {
            "type": "object", "required": ["domain", "n_tokens", "mean", "mean_z"],
            "properties": {"domain": {"type": "string"}, "n_tokens": {"type": "integer"}, "mean": _NUM_OR_NULL,
                           "mean_z": _NUM_OR_NULL}}},
        "strongest_domain": {"type": ["string", "null"]},
        "direct_effect": {"type": "object", "required": ["promoted", "suppressed", "note"],
                          "properties": {"promoted": {"type": "array", "items": _TOKVAL},
                                         "suppressed": {"type": "array", "items": _TOKVAL},
                                         "note": {"type": "string"}}},
        "top_tokens": {"type": "array", "items": {
            "type": "object", "required": ["id", "token", "mean_z", "count"],
            "properties": {"id": {"type": "integer"}, "token": {"type": "string"}, "mean_z": {"type": "number"},
                           "count": {"type": "integer"}}}},
        "lesion": {"type": ["object", "null"], "required": ["n_neurons", "effect", "domains"],
                   "properties": {"n_neurons": {"type": "integer"}, "effect": _NUM_OR_NULL,
                                  "domains": {"type": "array", "items": {"type": "object"}}}},
        "shared": {"type": "array", "items": {
            "type": "object", "required": ["id", "shared", "iou"],
            "properties": {"id": {"type": "integer"}, "shared": {"type": "integer"}, "iou": {"type": "number"},
                           "label": {"type": "string"}}}},
        "counterpart": {"type": ["object", "null"], "required": ["model", "id", "score", "href"],
                        "properties": {"model": {"type": "string"}, "id": {"type": "integer"},
                                       "score": _NUM_OR_NULL, "href": {"type": ["string", "null"]}}},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "null": type(None),
          "boolean": bool}


def validate(obj, schema: dict = NETWORK_SCHEMA, where: str = "$") -> list[str]:
    """Problems of ``obj`` against a schema of the subset above (empty list: it conforms)."""
    errs: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        ok = any(isinstance(obj, _TYPES[t]) and not (t in ("integer", "number") and isinstance(obj, bool))
                 for t in types)
        if not ok:
            return [f"{where}: expected {'/'.join(types)}, got {type(obj).__name__}"]
    if isinstance(obj, dict):
        errs += [f"{where}: missing '{k}'" for k in schema.get("required", []) if k not in obj]
        for k, sub in schema.get("properties", {}).items():
            if k in obj:
                errs += validate(obj[k], sub, f"{where}.{k}")
    if isinstance(obj, list) and "items" in schema:
        for i, v in enumerate(obj):
            errs += validate(v, schema["items"], f"{where}[{i}]")
    return errs


# ---------------------------------------------------------------------------- helpers
def _norm_token(s: str) -> str:
    """What the search box compares: leading spaces / byte-level space marks dropped, lower case."""
    return s.lstrip(" \t\n\r\u0120\u2581").rstrip().lower()


def search_networks(search: dict, query: str) -> list[tuple[int, float]]:
    """The site's token search, in Python: networks ranked by the count-weighted mean z of the
    recorded token types equal to ``query`` (after :func:`_norm_token`; when none is equal and the
    query has 2+ characters, the types containing it)."""
    q = _norm_token(query)
    if not q:
        return []
    norm = [_norm_token(t) for t in search["tokens"]]
    hits = [i for i, t in enumerate(norm) if t == q]
    if not hits and len(q) >= 2:
        hits = [i for i, t in enumerate(norm) if q in t]
    acc: dict[int, float] = {}
    wsum: dict[int, float] = {}
    for i in hits:
        for nid, score in search["top"][i]:
            acc[nid] = acc.get(nid, 0.0) + search["counts"][i] * score
            wsum[nid] = wsum.get(nid, 0.0) + search["counts"][i]
    return sorted(((n, acc[n] / wsum[n]) for n in acc), key=lambda x: (-x[1], x[0]))


def _label(tokens: Sequence[str], domain: str | None) -> str:
    shown = []
    for t in tokens:
        s = t.strip() or repr(t)
        s = "".join(ch if unicodedata.category(ch)[0] != "C" else "\u00b7" for ch in s)[:12]
        if s and s not in shown:
            shown.append(s)
        if len(shown) == 3:
            break
    lab = " ".join(f"\u201c{s}\u201d" for s in shown) or "(no tokens)"
    return f"{lab} \u00b7 {domain}" if domain else lab


def _clean(obj):
    """The object with NaN / infinite floats as None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _js(var: str, obj) -> str:
    # "</" never appears raw in a script file, but escape it anyway so the data is safe inline too
    return f"window.{var} = " + _dumps(obj).replace("</", "<\\/") + ";\n"


def _page(title: str, page: str, body: str, scripts: Sequence[str], css: str, extra: str = "") -> str:
    tags = "\n".join(f'<script src="{html.escape(s)}"></script>' for s in scripts)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<link rel="icon" href="data:,">\n<title>{html.escape(title)}</title>\n'
            f'<link rel="stylesheet" href="{css}"></head>\n<body data-page="{page}"{extra}>\n{body}\n{tags}\n'
            f'</body></html>\n')


def _index_html(model: str, n: int) -> str:
    body = f"""<header><h1>Functional networks of {html.escape(model)}</h1>
<div class="meta">{n} networks \u00b7 built by funcnet {__version__}</div></header>
<main>
<section id="search-section"><h2>Which networks fire on a token?</h2>
<input id="search" type="search" placeholder="type a word or token, e.g. def" autocomplete="off">
<div id="search-results"></div></section>
<section id="table-section"><h2>Networks</h2>
<input id="filter" type="text" placeholder="filter by label, unit, domain" autocomplete="off">
<span id="count" class="muted"></span>
<table id="networks"><thead><tr></tr></thead><tbody></tbody></table>
<p class="note">Click a column to sort. Stability: ICASSO cluster quality. Lesion effect: perplexity with the
network inhibited vs random same-size neuron sets (mean over domains, %), where a lesion result was given.</p>
</section></main>"""
    return _page(f"funcnet networks \u2014 {model}", "index", body,
                 ["data/index.js", "data/search.js", "assets/app.js"], "assets/style.css")


_SECTIONS = [("anatomy", "Anatomy"), ("histogram", "Activity histogram"), ("top-contexts", "Top-activating contexts"),
             ("quantiles", "Contexts across activity quantiles"), ("domains", "Activity per domain"),
             ("direct-effect", "Direct effect on the output"), ("top-tokens", "Tokens it fires on most"),
             ("lesion", "Lesion effect"), ("related", "Networks sharing key neurons")]


def _network_html(model: str, nid: int, prev_id: int | None, next_id: int | None) -> str:
    nav = ['<a href="../index.html">all networks</a>']
    if prev_id is not None:
        nav.append(f'<a href="{prev_id:04d}.html" id="prev">\u2190 network {prev_id}</a>')
    if next_id is not None:
        nav.append(f'<a href="{next_id:04d}.html" id="next">network {next_id} \u2192</a>')
    secs = "\n".join(f'<section id="{s}"><h2>{t}</h2><div id="{s}-body"></div></section>' for s, t in _SECTIONS)
    body = (f'<header><nav>{" ".join(nav)}</nav><h1 id="title">Network {nid}</h1>'
            f'<div class="meta" id="meta"></div><div class="meta">{html.escape(model)}</div></header>\n<main>\n{secs}\n</main>')
    return _page(f"network {nid} \u2014 {model}", "network", body,
                 [f"../data/net/{nid:04d}.js", "../assets/app.js"], "../assets/style.css", f' data-id="{nid}"')


def _resolve_corpus(corpus, store):
    """The corpus given, or the store's own (rebuilt from its manifest when possible; None if not)."""
    want = store.manifest.get("corpus_identity")
    if corpus is not None:
        corpus = load_corpus(corpus) if not hasattr(corpus, "documents") else corpus
        if want and corpus.identity != want:
            raise FuncnetError(f"the corpus given ({corpus.name}) is not the one the store {store.path} was recorded from "
                               f"({store.manifest.get('corpus_name')})")
        return corpus
    name = store.manifest.get("corpus_name") or ""
    tries = []
    m = re.fullmatch(r"builtin:(\w+):(\w+)(?:\[max_docs=(\d+),seed=(\d+)\])?", name)
    if m:
        spec = "builtin" if m[1] == "all" else f"builtin:{m[1]}"
        tries.append((spec, m[2], int(m[3]) if m[3] else None, int(m[4] or 0)))
    elif name and name != "list" and not name.startswith("builtin"):
        tries.append((name, "calib", None, 0))
    for spec, split, max_docs, seed in tries:
        try:
            c = load_corpus(spec, split=split, max_docs=max_docs, seed=seed)
        except FuncnetError:
            continue
        if not want or c.identity == want:
            return c
    return None


# ---------------------------------------------------------------------------- build
def build_site(
    networks,
    model,
    store,
    out: str | os.PathLike,
    *,
    lesion=None,
    counterpart=None,
    corpus=None,
    top_contexts: int = 8,
    per_quantile: int = 3,
    quantiles: Sequence[float] = C.DEFAULT_QUANTILES,
    top_k: int = 20,
    context_left: int = 12,
    context_right: int = 4,
    select: Sequence[int] | None = None,
    min_stability: float | None = None,
    threshold: float = 3.6,
    method: str = "z",
    positive_only: bool = False,
    fraction: float = 0.01,
    signal: str | None = None,
    search_tokens: int = 5000,
    search_top: int = 8,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the static network browser of ``networks`` into the folder ``out``; returns its path.

    networks: a :class:`FunctionalNetworks` or its file; model: a spec or loaded model (the one the
    networks come from: its tokenizer shows tokens, its down projections, final norm and unembedding
    give the direct effects); store: an :class:`ActivationStore` or its folder (the recorded tokens
    over which activity, contexts, histograms and search are computed); lesion: a lesion result
    (``lesion.json``, its folder, dict or :class:`LesionResult`); counterpart: another model's
    matching (see :func:`funcnet.report.browse._compute.read_counterpart`); corpus: the corpus the
    store was recorded from (its documents' domains; by default rebuilt from the store's manifest
    when it names a built-in or file corpus). Key neurons use ``threshold`` / ``method`` /
    ``positive_only`` / ``fraction`` as in :meth:`FunctionalNetworks.key_mask`. ``seed`` picks the
    quantile samples. With ``overwrite`` an existing site funcnet wrote is replaced.
    """
    out_path = check_output(out, overwrite=overwrite, what="site folder")
    nets = networks if isinstance(networks, FunctionalNetworks) else FunctionalNetworks.load(networks)
    st = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
    lm = as_loaded(model)
    nets.check_model(lm)
    if st.manifest.get("model_identity") and nets.model_identity and st.manifest["model_identity"] != nets.model_identity:
        raise FuncnetError(f"activation store {st.path} was recorded from another model than these networks")
    if st.n_tokens == 0:
        raise FuncnetError(f"activation store {st.path} holds no tokens")
    if top_contexts < 0 or per_quantile < 0 or top_k < 1:
        raise FuncnetError("top_contexts and per_quantile must be >= 0 and top_k >= 1")
    q = [float(x) for x in quantiles]
    if len(q) < 2 or q[0] < 0 or q[-1] > 1 or any(b <= a for a, b in itertools.pairwise(q)):
        raise FuncnetError(f"quantiles must increase within [0, 1], got {list(quantiles)}")
    thr = {"threshold": threshold, "method": method, "positive_only": positive_only, "fraction": fraction}
    ids = nets.select(select, min_stability=min_stability)
    if not ids:
        raise FuncnetError("no network to browse (check --networks / --min-stability)")
    sig = signal or nets.signals[0]
    corpus = _resolve_corpus(corpus, st)
    lesion_rows = C.lesion_by_network(C.read_lesion(lesion))
    cp = C.read_counterpart(counterpart, nets, ids, thr)

    pairs = C.key_neuron_sets(nets, ids, thr)
    n_layers_used = len({int(l) for p in pairs for l in np.unique(p[:, 0])}) if pairs else 0
    bar = progress_bar(total=n_layers_used + len(ids) + 3, desc="browse", unit="step", enabled=progress)
    bar.set_postfix_str("activity")
    act = C.network_activity(st, pairs, signal=sig, progress=bar.update)
    z, mu, _ = C.standardize(act)
    tokens = st.tokens
    tok_ids = np.asarray(tokens["token_ids"])
    seq = np.asarray(tokens["seq_ids"])
    text = C.TokenText(lm.tokenizer)
    ctx = C.Contexts(st, text, context_left, context_right)
    dom_names, tok_dom = C.document_domains(st, corpus)
    dom_z = C.domain_means(z, tok_dom, dom_names)
    dom_raw = C.domain_means(act, tok_dom, dom_names)
    dom_n = [int((tok_dom == i).sum()) for i in range(len(dom_names))]
    uniq, counts, tmeans = C.token_means(z, tok_ids)
    bar.update()
    bar.set_postfix_str("direct effects")
    logits, note = C.direct_effect_logits(nets, lm, ids, thr)
    shared = C.shared_key_neurons(nets, ids, thr)
    bar.update()
    rng = np.random.default_rng(seed)
    min_count = 2 if (counts >= 2).any() else 1
    eligible = counts >= min_count

    records, index_rows = [], []
    labels: dict[int, str] = {}
    for k, nid in enumerate(ids):
        d, c = nets.network(nid)
        p = pairs[k]
        per_layer = np.bincount(p[:, 0].astype(np.int64), minlength=len(nets.neurons_per_layer)) if len(p) \
            else np.zeros(len(nets.neurons_per_layer), np.int64)
        layers = [int(p[:, 0].min()), int(p[:, 0].max())] if len(p) else None
        dz = dom_z[:, k]
        strongest = dom_names[int(np.nanargmax(dz))] if len(dom_names) > 1 and np.isfinite(dz).any() else \
            (dom_names[0] if dom_names and dom_names[0] != "all" else None)
        tm = np.where(eligible, tmeans[:, k], -np.inf)
        order = np.argsort(-tm, kind="stable")[:10]
        top_tok = [{"id": int(uniq[i]), "token": text(uniq[i]), "mean_z": round(float(tmeans[i, k]), 4),
                    "count": int(counts[i])} for i in order if np.isfinite(tm[i])]
        label = _label([t["token"] for t in top_tok], strongest)
        labels[nid] = label
        a = act[:, k]
        hi, lo = C.top_bottom(logits[k], top_k)
        qsamples = C.quantile_rows(a, q, per_quantile, rng)
        rec = {
            "format": NETWORK_FORMAT, "format_version": FORMAT_VERSION, "id": int(nid), "label": label,
            "unit": d.unit, "group": int(d.group), "component": int(c), "stability": round(float(d.stability[c]), 5),
            "n_key": len(p), "key_per_layer": [int(x) for x in per_layer], "layers": layers,
            "activity": {"n_tokens": int(a.size), "mean": float(mu[k]), "std": float(a.std()), "min": float(a.min()),
                         "max": float(a.max()), "histogram": C.histogram(a)},
            "top_contexts": [ctx.make(r, a) for r in C.top_rows(a, seq, top_contexts, context_left)],
            "quantile_samples": [{"lo": s["lo"], "hi": s["hi"], "value_lo": round(s["value_lo"], 5),
                                  "value_hi": round(s["value_hi"], 5), "contexts": [ctx.make(r, a) for r in s["rows"]]}
                                 for s in qsamples],
            "domains": [{"domain": n_, "n_tokens": dom_n[i], "mean": None if not np.isfinite(dom_raw[i, k]) else
                         round(float(dom_raw[i, k]), 5), "mean_z": None if not np.isfinite(dz[i]) else
                         round(float(dz[i]), 5)} for i, n_ in enumerate(dom_names)],
            "strongest_domain": strongest,
            "direct_effect": {"promoted": [{"id": int(i), "token": text(i), "logit": round(float(logits[k, i]), 5)}
                                           for i in hi],
                              "suppressed": [{"id": int(i), "token": text(i), "logit": round(float(logits[k, i]), 5)}
                                             for i in lo], "note": note},
            "top_tokens": top_tok,
            "lesion": lesion_rows.get(int(nid)),
            "shared": shared[k],
            "counterpart": None,
        }
        if int(nid) in cp.get("pairs", {}):
            j, s = cp["pairs"][int(nid)]
            href = f"{cp['href'].rstrip('/')}/n/{j:04d}.html" if cp.get("href") else None
            rel = href is not None and "://" not in href and not os.path.isabs(href)
            rec["counterpart"] = {"model": cp["model"], "id": int(j), "score": None if s is None else round(s, 5),
                                  "href": ("../" + href) if rel else href}
        records.append(rec)
        index_rows.append({"id": int(nid), "label": label, "unit": d.unit, "group": int(d.group),
                           "stability": rec["stability"], "n_key": rec["n_key"], "layers": layers,
                           "n_layers": 0 if layers is None else int((per_layer > 0).sum()),
                           "strongest_domain": strongest,
                           "lesion_effect": None if rec["lesion"] is None else rec["lesion"]["effect"],
                           "counterpart": None if rec["counterpart"] is None else rec["counterpart"]["id"],
                           "counterpart_score": None if rec["counterpart"] is None else rec["counterpart"]["score"],
                           "counterpart_href": None if rec["counterpart"] is None else href})
    for rec in records:  # labels of related networks, known once all are labelled
        for s in rec["shared"]:
            s["label"] = labels.get(s["id"], "")
    records, index_rows = _clean(records), _clean(index_rows)

    # search: the most frequent token types, each with its top networks by mean z
    freq = np.argsort(-counts, kind="stable")[:search_tokens]
    freq = np.sort(freq)
    n_top = min(search_top, len(ids))
    top_idx = np.argsort(-tmeans[freq], axis=1, kind="stable")[:, :n_top]
    search = {"format": SEARCH_FORMAT, "format_version": FORMAT_VERSION,
              "score": "mean over the token's occurrences of the network's activity z-scored over all recorded tokens",
              "tokens": [text(uniq[i]) for i in freq], "ids": [int(uniq[i]) for i in freq],
              "counts": [int(counts[i]) for i in freq],
              "top": [[[int(ids[j]), round(float(tmeans[i, j]), 3)] for j in row] for i, row in zip(freq, top_idx)]}
    index = {"format": INDEX_FORMAT, "format_version": FORMAT_VERSION, "funcnet_version": __version__,
             "model": lm.spec, "model_identity": nets.model_identity, "store": str(st.path),
             "n_tokens": int(st.n_tokens), "n_documents": len(np.unique(np.asarray(tokens["doc_ids"]))),
             "domains": dom_names, "signal": sig, "key_neurons": thr,
             "counterpart_model": cp.get("model"), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "networks": index_rows}

    with atomic_path(out_path, is_dir=True) as tmp:
        for sub in ("n", "data/net", "json", "assets"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "assets" / "style.css").write_text(STYLE_CSS, encoding="utf-8")
        (tmp / "assets" / "app.js").write_text(APP_JS, encoding="utf-8")
        (tmp / "index.html").write_text(_index_html(lm.spec, len(ids)), encoding="utf-8")
        (tmp / "data" / "index.js").write_text(_js("FUNCNET_INDEX", index), encoding="utf-8")
        (tmp / "data" / "search.js").write_text(_js("FUNCNET_SEARCH", search), encoding="utf-8")
        (tmp / "json" / "index.json").write_text(_dumps(index), encoding="utf-8")
        (tmp / "json" / "search.json").write_text(_dumps(search), encoding="utf-8")
        bar.update()
        bar.set_postfix_str("pages")
        for k, rec in enumerate(records):
            nid = rec["id"]
            prev_id = ids[k - 1] if k > 0 else None
            next_id = ids[k + 1] if k + 1 < len(ids) else None
            (tmp / "n" / f"{nid:04d}.html").write_text(_network_html(lm.spec, nid, prev_id, next_id), encoding="utf-8")
            (tmp / "data" / "net" / f"{nid:04d}.js").write_text(_js("FUNCNET_NET", rec), encoding="utf-8")
            (tmp / "json" / f"network_{nid:04d}.json").write_text(_dumps(rec), encoding="utf-8")
            bar.update()
        big = [(f, f.stat().st_size) for f in tmp.rglob("*") if f.is_file() and f.stat().st_size > MAX_PAGE_BYTES]
        if big:
            f, size = max(big, key=lambda x: x[1])
            raise FuncnetError(f"site file {f.relative_to(tmp)} would be {size / 1e6:.1f} MB (over 1 MB); "
                               "lower search_tokens, top_contexts or per_quantile")
        mark_output(tmp, "browse-site", SITE_ENTRIES)
    bar.close()
    return out_path


def page_sizes(site: str | os.PathLike) -> dict[str, int]:
    """Bytes of every file of a site, by path relative to it."""
    site = Path(site)
    return {str(f.relative_to(site)): f.stat().st_size for f in sorted(site.rglob("*")) if f.is_file()}


def serve(site: str | os.PathLike, port: int = 8000, *, host: str = "127.0.0.1", block: bool = True):
    """Serve a site folder with the standard library's ``http.server`` on ``host:port`` (127.0.0.1 by
    default). ``block``: serve until interrupted; else return the started-but-not-serving server
    (call ``serve_forever()`` / ``shutdown()`` yourself)."""
    site = Path(site)
    if not (site / "index.html").exists():
        raise FuncnetError(f"{site} is not a browser site (no index.html)")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):  # no line per request on stderr
            pass

    handler = functools.partial(Quiet, directory=str(site))
    try:
        httpd = http.server.ThreadingHTTPServer((host, int(port)), handler)
    except OSError as e:
        raise FuncnetError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e
    if not block:
        return httpd
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return None
