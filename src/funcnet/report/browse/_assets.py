"""The browser's static files: one stylesheet and one script (no third-party code, nothing fetched).

The script renders both kinds of page from the data that ``<script>`` tags put in
``window.FUNCNET_INDEX``, ``window.FUNCNET_SEARCH`` and ``window.FUNCNET_NET`` (``fetch`` of local
files is blocked under ``file://``, scripts are not). All text goes in through ``textContent``.
"""

STYLE_CSS = r"""
:root { --fg: #1d232b; --muted: #66707c; --line: #d9dee4; --accent: #b3541e; --bg2: #f5f7f9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; }
header { padding: 14px 24px; border-bottom: 1px solid var(--line); background: var(--bg2); }
header h1 { font-size: 20px; margin: 0 0 4px; }
header .meta { color: var(--muted); }
header nav a { margin-right: 14px; }
main { padding: 10px 24px 40px; max-width: 1200px; }
section { margin: 18px 0 26px; }
h2 { font-size: 16px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 14px; margin: 12px 0 4px; color: var(--muted); }
a { color: #1f5fa8; text-decoration: none; }
a:hover { text-decoration: underline; }
input[type=search], input[type=text] { font: inherit; padding: 5px 8px; width: 320px; border: 1px solid #aab3bd; border-radius: 4px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--bg2); white-space: nowrap; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable::after { content: " \2195"; color: #aab3bd; }
th.asc::after { content: " \25B2"; color: var(--fg); }
th.desc::after { content: " \25BC"; color: var(--fg); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.note { color: var(--muted); font-size: 12px; }
.ctx { font: 13px/1.9 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; margin: 3px 0; padding: 2px 6px;
       border-left: 3px solid var(--line); white-space: pre-wrap; word-break: break-all; }
.ctx .tok { border-radius: 2px; }
.ctx .focus { outline: 1.5px solid var(--accent); }
.ctx .val { color: var(--muted); font-size: 11px; margin-left: 8px; }
.cols { display: flex; gap: 32px; flex-wrap: wrap; }
.cols > div { flex: 1 1 300px; }
.pill { display: inline-block; background: var(--bg2); border: 1px solid var(--line); border-radius: 10px;
        padding: 0 8px; margin: 2px 4px 2px 0; font-family: ui-monospace, monospace; white-space: pre; }
svg text { font: 10px system-ui, sans-serif; fill: var(--muted); }
svg .bar { fill: #c8713b; }
svg .neg { fill: #3b7cc8; }
"""

APP_JS = r"""
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) { for (var k in attrs) { if (k === "text") e.textContent = attrs[k]; else e.setAttribute(k, attrs[k]); } }
    (kids || []).forEach(function (c) { if (c !== null && c !== undefined) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    return e;
  }
  function fmt(x, d) {
    if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "\u2013";
    return x.toFixed(d === undefined ? 3 : d);
  }
  function showTok(s) { return String(s).replace(/\n/g, "\u23CE").replace(/\t/g, "\u21E5"); }
  function normTok(s) { return String(s).replace(/^[\u0120\u2581\s]+|\s+$/g, "").toLowerCase(); }
  function pad(n) { var s = String(n); while (s.length < 4) s = "0" + s; return s; }
  function netHref(id, fromNet) { return (fromNet ? "" : "n/") + pad(id) + ".html"; }

  // ------------------------------------------------------------------ charts
  function barChart(values, labels, opts) {
    opts = opts || {};
    var w = opts.width || 640, h = opts.height || 120, n = values.length, lab = 14;
    var s = svg("svg", {width: w, height: h + lab + 4, viewBox: "0 0 " + w + " " + (h + lab + 4), role: "img"});
    var max = 0, min = 0;
    values.forEach(function (v) { if (v > max) max = v; if (v < min) min = v; });
    var span = (max - min) || 1, bw = Math.min(w / Math.max(n, 1), opts.maxBar || 1e9), zero = h * max / span;
    values.forEach(function (v, i) {
      var y = v >= 0 ? zero - h * v / span : zero, bh = Math.abs(h * v / span);
      var r = svg("rect", {x: i * bw + 0.5, y: y, width: Math.max(bw - 1, 0.5), height: Math.max(bh, v !== 0 ? 0.5 : 0),
                           "class": v >= 0 ? "bar" : "neg"});
      var t = svg("title", {}); t.textContent = (labels ? labels[i] + ": " : "") + fmt(v, opts.digits === undefined ? 3 : opts.digits);
      r.appendChild(t); s.appendChild(r);
    });
    if (labels && opts.axis !== false) {
      var every = Math.max(1, Math.ceil(n / 16));
      labels.forEach(function (l, i) {
        if (i % every) return;
        var t = svg("text", {x: i * bw + bw / 2, y: h + lab, "text-anchor": "middle"}); t.textContent = l; s.appendChild(t);
      });
    }
    return s;
  }

  function hbars(rows) {  // rows: [label, value]
    var w = 520, rh = 20, lw = 120, h = rows.length * rh + 4;
    var s = svg("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img"});
    var m = 0; rows.forEach(function (r) { if (r[1] !== null && Math.abs(r[1]) > m) m = Math.abs(r[1]); });
    m = m || 1; var mid = lw + (w - lw - 60) / 2, half = (w - lw - 60) / 2;
    rows.forEach(function (r, i) {
      var y = i * rh + 2, v = r[1] === null ? 0 : r[1], bw = half * Math.abs(v) / m;
      var t = svg("text", {x: lw - 6, y: y + 13, "text-anchor": "end"}); t.textContent = r[0]; s.appendChild(t);
      s.appendChild(svg("rect", {x: v >= 0 ? mid : mid - bw, y: y + 2, width: bw, height: rh - 6, "class": v >= 0 ? "bar" : "neg"}));
      var tv = svg("text", {x: w - 56, y: y + 13}); tv.textContent = fmt(r[1]); s.appendChild(tv);
    });
    s.appendChild(svg("line", {x1: mid, x2: mid, y1: 0, y2: h, stroke: "#888"}));
    return s;
  }

  // ------------------------------------------------------------------ contexts
  function context(c, scale) {
    var d = el("div", {"class": "ctx"});
    c.tokens.forEach(function (tok, i) {
      var a = c.acts[i], alpha = 0, col = "255,140,0";
      if (a > 0 && scale.pos > 0) alpha = Math.min(1, a / scale.pos);
      if (a < 0 && scale.neg < 0) { alpha = Math.min(1, a / scale.neg) * 0.6; col = "59,124,200"; }
      var sp = el("span", {"class": "tok" + (i === c.focus ? " focus" : ""), title: fmt(a, 4),
                           style: "background: rgba(" + col + "," + alpha.toFixed(3) + ")", text: showTok(tok)});
      d.appendChild(sp);
    });
    d.appendChild(el("span", {"class": "val", text: "doc " + c.doc + " \u00B7 " + fmt(c.value, 3)}));
    return d;
  }

  // ------------------------------------------------------------------ index page
  function initIndex() {
    var I = window.FUNCNET_INDEX;
    var tbody = document.querySelector("#networks tbody");
    var rows = I.networks.slice();
    var sortKey = "id", sortDir = 1;
    var cols = [
      ["id", "id", "num"], ["label", "label", "str"], ["unit", "unit", "str"], ["stability", "stability", "num"],
      ["n_key", "key neurons", "num"], ["n_layers", "layers", "num"], ["strongest_domain", "strongest domain", "str"],
      ["lesion_effect", "lesion effect %", "num"], ["counterpart_score", "counterpart", "num"]];
    var head = document.querySelector("#networks thead tr");
    cols.forEach(function (c) {
      var th = el("th", {"class": "sortable" + (c[2] === "num" ? " num" : ""), "data-key": c[0], text: c[1]});
      th.addEventListener("click", function () {
        sortDir = (sortKey === c[0]) ? -sortDir : (c[2] === "num" && c[0] !== "id" ? -1 : 1);
        sortKey = c[0]; render();
      });
      head.appendChild(th);
    });
    function val(r, k) { var v = r[k]; return (v === null || v === undefined) ? null : v; }
    function render() {
      var q = document.getElementById("filter").value.trim().toLowerCase();
      var shown = rows.filter(function (r) {
        return !q || [r.id, r.label, r.unit, r.strongest_domain].join(" ").toLowerCase().indexOf(q) >= 0;
      });
      shown.sort(function (a, b) {
        var x = val(a, sortKey), y = val(b, sortKey);
        if (x === null && y === null) return a.id - b.id;
        if (x === null) return 1;
        if (y === null) return -1;
        var c = (typeof x === "number") ? x - y : String(x).localeCompare(String(y));
        return c !== 0 ? sortDir * c : a.id - b.id;
      });
      Array.prototype.forEach.call(head.children, function (th) {
        th.classList.remove("asc", "desc");
        if (th.getAttribute("data-key") === sortKey) th.classList.add(sortDir > 0 ? "asc" : "desc");
      });
      tbody.textContent = "";
      shown.forEach(function (r) {
        var cp = r.counterpart === null || r.counterpart === undefined ? "\u2013" :
          (r.counterpart_href ? el("a", {href: r.counterpart_href, text: "#" + r.counterpart}) : "#" + r.counterpart);
        var tr = el("tr", {"data-id": r.id}, [
          el("td", {"class": "num"}, [el("a", {href: netHref(r.id), text: String(r.id)})]),
          el("td", {}, [el("a", {href: netHref(r.id), text: r.label})]),
          el("td", {text: r.unit}), el("td", {"class": "num", text: fmt(r.stability, 3)}),
          el("td", {"class": "num", text: String(r.n_key)}),
          el("td", {"class": "num", text: r.layers ? (r.layers[0] === r.layers[1] ? "L" + r.layers[0] : "L" + r.layers[0] + "\u2013L" + r.layers[1]) : "\u2013"}),
          el("td", {text: r.strongest_domain || "\u2013"}),
          el("td", {"class": "num", text: fmt(r.lesion_effect, 1)}),
          el("td", {"class": "num"}, [cp, r.counterpart_score === null || r.counterpart_score === undefined ? "" : " (" + fmt(r.counterpart_score, 2) + ")"])]);
        tbody.appendChild(tr);
      });
      document.getElementById("count").textContent = shown.length + " of " + rows.length + " networks";
    }
    document.getElementById("filter").addEventListener("input", render);
    render();
    initSearch(I);
  }

  function searchNetworks(S, query) {
    var q = normTok(query), out = [];
    if (!q) return out;
    var hits = [];
    S.tokens.forEach(function (t, i) { if (normTok(t) === q) hits.push(i); });
    if (!hits.length && q.length >= 2) S.tokens.forEach(function (t, i) { if (normTok(t).indexOf(q) >= 0) hits.push(i); });
    var acc = {}, wsum = {};
    hits.forEach(function (i) {
      S.top[i].forEach(function (p) {
        acc[p[0]] = (acc[p[0]] || 0) + S.counts[i] * p[1];
        wsum[p[0]] = (wsum[p[0]] || 0) + S.counts[i];
      });
    });
    for (var k in acc) out.push({id: Number(k), score: acc[k] / wsum[k]});
    out.sort(function (a, b) { return b.score - a.score || a.id - b.id; });
    return {results: out, tokens: hits.map(function (i) { return S.tokens[i]; }), n: hits.reduce(function (s, i) { return s + S.counts[i]; }, 0)};
  }

  function initSearch(I) {
    var S = window.FUNCNET_SEARCH, box = document.getElementById("search"), res = document.getElementById("search-results");
    var labels = {}; I.networks.forEach(function (r) { labels[r.id] = r.label; });
    function run() {
      res.textContent = "";
      var q = box.value;
      if (!normTok(q)) return;
      var r = searchNetworks(S, q);
      if (!r.results || !r.results.length) { res.appendChild(el("p", {"class": "muted", text: "no recorded token matches \u201C" + q + "\u201D"})); return; }
      res.appendChild(el("p", {"class": "note", text: "matched " + r.tokens.length + " token type(s), " + r.n +
        " occurrence(s): " + r.tokens.slice(0, 12).map(function (t) { return JSON.stringify(t); }).join(" ")}));
      var t = el("table", {id: "search-table"}, [el("thead", {}, [el("tr", {}, [el("th", {"class": "num", text: "rank"}),
        el("th", {"class": "num", text: "network"}), el("th", {"class": "num", text: "score (mean z)"}), el("th", {text: "label"})])])]);
      var tb = el("tbody");
      r.results.slice(0, 20).forEach(function (x, i) {
        tb.appendChild(el("tr", {"data-id": x.id}, [el("td", {"class": "num", text: String(i + 1)}),
          el("td", {"class": "num"}, [el("a", {href: netHref(x.id), text: "#" + x.id})]),
          el("td", {"class": "num", text: fmt(x.score, 3)}), el("td", {text: labels[x.id] || ""})]));
      });
      t.appendChild(tb); res.appendChild(t);
    }
    box.addEventListener("input", run);
    run();
  }

  // ------------------------------------------------------------------ network page
  function initNetwork() {
    var N = window.FUNCNET_NET;
    document.title = "network " + N.id + " \u2014 " + N.label;
    document.getElementById("title").textContent = "Network " + N.id + ": " + N.label;
    var meta = document.getElementById("meta");
    meta.textContent = "unit " + N.unit + " \u00B7 group " + N.group + " \u00B7 stability " + fmt(N.stability, 3) +
      " \u00B7 " + N.n_key + " key neurons" + (N.layers ? " in layers " + N.layers[0] + "\u2013" + N.layers[1] : "") +
      " \u00B7 strongest domain " + (N.strongest_domain || "\u2013");
    if (N.counterpart) {
      var cp = N.counterpart, txt = cp.model + " network #" + cp.id + (cp.score === null ? "" : " (score " + fmt(cp.score, 3) + ")");
      meta.appendChild(document.createTextNode(" \u00B7 counterpart: "));
      meta.appendChild(cp.href ? el("a", {href: cp.href, text: txt}) : document.createTextNode(txt));
    }
    // anatomy
    var an = document.getElementById("anatomy-body");
    an.appendChild(barChart(N.key_per_layer, N.key_per_layer.map(function (_, i) { return "L" + i; }), {digits: 0, maxBar: 48}));
    an.appendChild(el("p", {"class": "note", text: "key neurons per layer (" + N.n_key + " in all)"}));
    // histogram
    var hb = document.getElementById("histogram-body"), H = N.activity.histogram;
    var logc = H.counts.map(function (c) { return Math.log10(1 + c); });
    hb.appendChild(barChart(logc, H.counts.map(function (c, i) { return fmt(H.edges[i], 3) + "\u2026" + fmt(H.edges[i + 1], 3) + " (" + c + ")"; }), {axis: false, digits: 2}));
    hb.appendChild(el("p", {"class": "note", text: "activity over all " + N.activity.n_tokens + " recorded tokens: min " +
      fmt(N.activity.min) + ", max " + fmt(N.activity.max) + ", mean " + fmt(N.activity.mean) + ", sd " + fmt(N.activity.std) + " (bar height: log10(1 + count))"}));
    var scale = {pos: Math.max(N.activity.max, 0), neg: Math.min(N.activity.min, 0)};
    var tc = document.getElementById("top-contexts-body");
    N.top_contexts.forEach(function (c) { tc.appendChild(context(c, scale)); });
    if (!N.top_contexts.length) tc.appendChild(el("p", {"class": "muted", text: "no tokens"}));
    var qs = document.getElementById("quantiles-body");
    N.quantile_samples.forEach(function (q) {
      qs.appendChild(el("h3", {text: "quantiles " + fmt(q.lo, 2) + "\u2013" + fmt(q.hi, 2) + " (activity " + fmt(q.value_lo) + " to " + fmt(q.value_hi) + ")"}));
      q.contexts.forEach(function (c) { qs.appendChild(context(c, scale)); });
    });
    // domains
    var db = document.getElementById("domains-body");
    db.appendChild(hbars(N.domains.map(function (d) { return [d.domain + " (" + d.n_tokens + ")", d.mean_z]; })));
    db.appendChild(el("p", {"class": "note", text: "mean standardized activity (z over all recorded tokens) per domain; raw means: " +
      N.domains.map(function (d) { return d.domain + " " + fmt(d.mean, 4); }).join(", ")}));
    // direct effect
    var eb = document.getElementById("direct-effect-body");
    function tokList(title, items) {
      var t = el("table", {}, [el("thead", {}, [el("tr", {}, [el("th", {text: title}), el("th", {"class": "num", text: "logit"})])])]);
      var tb = el("tbody");
      items.forEach(function (x) { tb.appendChild(el("tr", {}, [el("td", {}, [el("span", {"class": "pill", text: showTok(x.token)})]), el("td", {"class": "num", text: fmt(x.logit, 4)})])); });
      t.appendChild(tb); return el("div", {}, [t]);
    }
    eb.appendChild(el("div", {"class": "cols"}, [tokList("promoted", N.direct_effect.promoted), tokList("suppressed", N.direct_effect.suppressed)]));
    eb.appendChild(el("p", {"class": "note", text: N.direct_effect.note}));
    // top tokens
    var tt = document.getElementById("top-tokens-body");
    N.top_tokens.forEach(function (x) { tt.appendChild(el("span", {"class": "pill", title: "mean z " + fmt(x.mean_z) + ", " + x.count + " occurrences", text: showTok(x.token) + "  " + fmt(x.mean_z, 2)})); });
    // lesion
    var lb = document.getElementById("lesion-body");
    if (N.lesion) {
      var t = el("table", {}, [el("thead", {}, [el("tr", {}, ["domain", "baseline ppl", "lesioned ppl", "random ppl (mean \u00B1 sd)"].map(function (h, i) { return el("th", {"class": i ? "num" : "", text: h}); }))])]);
      var tb = el("tbody");
      N.lesion.domains.forEach(function (d) {
        tb.appendChild(el("tr", {}, [el("td", {text: d.domain}), el("td", {"class": "num", text: fmt(d.baseline_ppl, 2)}),
          el("td", {"class": "num", text: fmt(d.lesioned_ppl, 2)}), el("td", {"class": "num", text: fmt(d.random_ppl_mean, 2) + " \u00B1 " + fmt(d.random_ppl_std, 2)})]));
      });
      t.appendChild(tb); lb.appendChild(t);
      lb.appendChild(el("p", {"class": "note", text: "lesion effect " + fmt(N.lesion.effect, 1) + "% (lesioned vs random same-size sets, mean over domains); " + N.lesion.n_neurons + " neurons inhibited"}));
    } else {
      lb.appendChild(el("p", {"class": "muted", text: "not measured (build with a lesion result to show it)"}));
    }
    // related
    var rb = document.getElementById("related-body");
    if (N.shared.length) {
      var ul = el("ul");
      N.shared.forEach(function (s) { ul.appendChild(el("li", {}, [el("a", {href: netHref(s.id, true), text: "network " + s.id}),
        " \u2014 " + s.shared + " shared key neurons (IoU " + fmt(s.iou, 3) + ")" + (s.label ? ": " + s.label : "")])); });
      rb.appendChild(ul);
    } else {
      rb.appendChild(el("p", {"class": "muted", text: "no other network shares a key neuron"}));
    }
  }

  window.funcnetSearch = function (q) { return searchNetworks(window.FUNCNET_SEARCH, q); };
  var page = document.body.getAttribute("data-page");
  if (page === "index") initIndex(); else if (page === "network") initNetwork();
})();
"""
