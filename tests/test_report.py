"""Figures and the HTML report, on a results folder of synthetic JSON files that follow
funcnet.explore's schemas (no model needed)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from funcnet.errors import FuncnetError
from funcnet.networks import Decomposition, FunctionalNetworks

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["prose", "code", "math"]
N_LAYERS, WIDTH, K = 6, 96, 8
EVIL = "<script>alert('x')</script>"


# ---------------------------------------------------------------------------- synthetic results
def _metrics(rng, base=20.0, spread=1.0) -> dict:
    return {d: {"ppl": float(base * (1 + j * 0.3) * spread * rng.uniform(0.9, 1.1)),
                "accuracy": float(rng.uniform(0.2, 0.5)), "n_tokens": 512} for j, d in enumerate(DOMAINS)}


def _summ(values: list[dict]) -> dict:
    from funcnet.experiments.common import summarize

    return summarize(values, DOMAINS)


def synthetic_networks(seed: int = 0) -> FunctionalNetworks:
    rng = np.random.default_rng(seed)
    cols = np.array([(l, 0, n) for l in range(N_LAYERS) for n in range(WIDTH)], np.int32)
    maps = rng.standard_normal((K, len(cols))).astype(np.float32)
    for c in range(K):  # a few strong key neurons per map
        maps[c, rng.choice(len(cols), 6 + 2 * c, replace=False)] = rng.uniform(4, 8, 6 + 2 * c)
    dec = Decomposition(maps=maps, columns=cols, stability=np.sort(rng.uniform(0.5, 1.0, K))[::-1].astype(np.float32))
    return FunctionalNetworks([dec], ["neurons"], [WIDTH] * N_LAYERS, model_identity="synthetic", model_spec="tiny",
                              params={"mode": "whole", "n_components": K})


def synthetic_results(out: Path, which=("run", "networks", "anatomy", "lesion", "preserve", "amplify", "recurrence"),
                      seed: int = 0) -> Path:
    """A results folder with the files funcnet.explore writes (the ones named in ``which``)."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nets = synthetic_networks(seed)
    thr = 3.6
    total = N_LAYERS * WIDTH
    top = list(range(5))
    files = {}
    if "networks" in which:
        nets.save(out / "networks.safetensors")
    files["run"] = {
        "model": {"spec": "tiny-llama", "family": "llama", "architecture": "LlamaForCausalLM", "n_layers": N_LAYERS,
                  "neurons_per_layer": [WIDTH] * N_LAYERS, "total_neurons": total, "n_heads": 4, "n_kv_heads": 2,
                  "head_dim": 8, "n_parameters": 123456, "mlp_parameters": 100000, "attn_parameters": 20000,
                  "dtype": "float32", "identity": "abc123"},
        "corpus": "builtin", "size": "demo", "params": {"max_tokens": 4096, "k": K, "n_init": 4, "ks": [10, 32, 64]},
        "seed": 0, "threshold": thr, "timings": {"networks": 12.3, "anatomy": 1.0, "lesion": 40.2, "total": 99.9},
        "funcnet_version": "0.1.0",
        "store": {"path": str(out / "store"), "model": "tiny-llama", "n_tokens": 4096, "n_documents": 30,
                  "layers": N_LAYERS, "signals": ["neurons"], "size_mb": 1.5},
        "networks": {"n": K, "k": K, "mode": "whole", "stability": [float(x) for x in nets.stability],
                     "n_keys": [int(len(nets.key_neurons(i, threshold=thr))) for i in range(K)]},
    }
    ana = []
    for n in top:
        pairs = nets.key_neurons(n, threshold=thr)
        ctx = [{"doc": 3, "value": 2.5 - 0.1 * t, "token": "<b>" if t == 0 else f"tok{t}",
                "left": EVIL if (n == 0 and t == 0) else f"left & <context> {t} ", "right": f" right \"{t}\""}
               for t in range(4)]
        ana.append({"network": n, "stability": float(nets.stability[n]), "n_keys": int(len(pairs)),
                    "per_layer": np.bincount(pairs[:, 0], minlength=N_LAYERS).tolist(), "top_contexts": ctx})
    files["anatomy"] = {"experiment": "anatomy", "networks": ana, "threshold": thr}
    base = _metrics(rng)
    conds = [(f"net {i}", [i]) for i in top] + [(f"all {len(top)}", top)]
    rows = []
    for name, group in conds:
        n = int(sum(m.sum() for m in nets.masks(group, threshold=thr).values()))
        rows.append({"name": name, "networks": group, "n_neurons": n, "fraction": n / total,
                     "lesioned": _metrics(rng, spread=3.0 if len(group) > 1 else 1.5),
                     "random": _summ([_metrics(rng, spread=1.05) for _ in range(5)])})
    files["lesion"] = {"experiment": "lesion", "baseline": base, "conditions": rows, "domains": DOMAINS,
                       "random_fraction": {"fraction": 0.15, "result": _summ([_metrics(rng, spread=2) for _ in range(5)])},
                       "params": {"threshold": thr, "n_random": 5, "seed": 0, "window": 128, "max_windows": 4,
                                  "total_neurons": total}}
    prows = []
    for j, k in enumerate([10, 32, 64, 128]):
        if k == 128:
            prows.append({"k": k, "n_neurons": 0, "fraction": 0.0, "preserved": None, "random": None})
            continue
        n = 20 * (j + 1)
        prows.append({"k": k, "n_neurons": n, "fraction": n / total, "preserved": _metrics(rng, spread=10 / (j + 1)),
                      "random": _summ([_metrics(rng, spread=30 / (j + 1)) for _ in range(3)]), "seconds": 1.0})
    files["preserve"] = {"experiment": "preserve", "baseline": base, "rows": prows, "domains": DOMAINS,
                         "params": {"mode": "whole", "threshold": thr, "n_init": 2, "n_random": 3, "window": 128,
                                    "max_windows": 4, "total_neurons": total}}
    curves = []
    factors = [0.0, 0.5, 1.0, 1.5, 2.0]
    for i in top[:3]:
        pts = [{"value": f, "metrics": base if f == 1.0 else _metrics(rng, spread=1 + abs(f - 1) * (i + 1) / 3)}
               for f in factors]
        curves.append({"network": i, "n_neurons": int(len(nets.key_neurons(i, threshold=thr))), "points": pts})
    best = {}
    for d in DOMAINS:
        cands = [(c["network"], p["value"], p["metrics"][d]["ppl"]) for c in curves for p in c["points"]]
        net, val, ppl = min(cands, key=lambda x: x[2])
        best[d] = {"network": net, "value": val, "ppl": ppl, "baseline_ppl": base[d]["ppl"],
                   "better_than_dense": bool(ppl < base[d]["ppl"])}
    files["amplify"] = {"experiment": "amplify", "how": "scale", "baseline": base, "curves": curves, "best": best,
                        "domains": DOMAINS, "params": {"threshold": thr, "window": 128, "max_windows": 4}}
    templates, individuals = [], []
    for d in DOMAINS:
        for n in range(4):
            templates.append({"id": f"{d}/{n}", "domain": d, "network": n, "n_keys": 10 + n, "stability": 0.9})
        for doc in range(2):
            for n in range(3):
                individuals.append({"id": f"{d}/t{doc}/{n}", "domain": d, "text": doc + 10, "network": n, "n_keys": 9})
    M = rng.uniform(0, 0.4, (len(templates), len(individuals)))
    table = []
    for ti, t in enumerate(templates):
        counts = {d: int(sum(M[ti, j] > 0.2 for j, ind in enumerate(individuals) if ind["domain"] == d)) for d in DOMAINS}
        totals = {d: int(sum(1 for ind in individuals if ind["domain"] == d)) for d in DOMAINS}
        table.append({"template": t["id"], "counts": counts, "totals": totals, "max_iou": float(M[ti].max())})
    files["recurrence"] = {"experiment": "recurrence", "domains": DOMAINS, "templates": templates,
                           "individuals": individuals, "iou": M.tolist(), "iou_threshold": 0.2, "table": table,
                           "params": {"n_template": 12, "n_individual": 2, "k_template": 4, "k_individual": 3,
                                      "threshold": thr, "max_length": 128}}
    for name, obj in files.items():
        if name in which:
            (out / f"{name}.json").write_text(json.dumps(obj, indent=1))
    return out


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A full synthetic results folder with its figures drawn (once per module: drawing takes seconds)."""
    from funcnet.report.plots import make_figures

    res = synthetic_results(tmp_path_factory.mktemp("res"))
    paths = make_figures(res)
    return res, paths


@pytest.fixture
def results(made):
    return made[0]


# ---------------------------------------------------------------------------- figures
def test_make_figures_writes_every_figure(made):
    from funcnet.report.plots import FIGURES

    results, paths = made
    made = {p.name for p in paths}
    for stem in FIGURES:
        for ext in ("png", "svg"):
            f = results / "figures" / f"{stem}.{ext}"
            assert f.name in made, f.name
            assert f.exists() and f.stat().st_size > 1000, f
    png = (results / "figures" / "lesion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (results / "figures" / "lesion.svg").read_bytes()[:2000]
    assert not list((results / "figures").glob(".*.tmp"))


def test_make_figures_skips_missing_inputs(tmp_path):
    from funcnet.report.plots import make_figures

    res = synthetic_results(tmp_path / "r", which=("run", "lesion"))
    names = {p.name for p in make_figures(res)}
    assert names == {"lesion.png", "lesion.svg"}
    assert make_figures(synthetic_results(tmp_path / "e", which=())) == []


def test_make_figures_uses_given_nets(tmp_path, monkeypatch):
    import funcnet.report.plots as plots

    res = synthetic_results(tmp_path / "r", which=("run", "anatomy"))
    nets, seen = synthetic_networks(), {}

    def fake(n, ids, thr, out_dir):
        seen.update(nets=n, ids=list(ids), thr=thr)
        return []

    monkeypatch.setattr(plots, "plot_network_map", fake)
    monkeypatch.setitem(plots.EXPERIMENT_FIGURES, "anatomy", plots.FigureSpec(lambda *a, **k: [], ("anatomy",)))
    plots.make_figures(res, nets=nets)
    assert seen == {"nets": nets, "ids": [0, 1, 2, 3, 4], "thr": 3.6}  # the anatomy's networks, run.json's threshold


def test_wide_spreads_keep_log_axes_in_range(tmp_path, monkeypatch):
    """sd >= mean (Gemma-3-270M's 15% random lesion: 643 ± 646) must not push the log axis to 1e-9 nor
    draw error bars down to 0: lower ends fall back to the smallest observed value."""
    import funcnet.report.plots as plots

    figs = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out_dir, stem: figs.setdefault(stem, fig) and [])
    wide = [1084.6, 103.9, 286.1, 178.6, 1561.1]
    les = json.loads((synthetic_results(tmp_path / "r", which=("lesion",)) / "lesion.json").read_text())
    les["random_fraction"]["result"]["prose"] = _summ([{d: {"ppl": v, "accuracy": 0.2} for d in DOMAINS} for v in wide])["prose"]
    les["conditions"][0]["random"]["prose"] = _summ([{d: {"ppl": v, "accuracy": 0.2} for d in DOMAINS}
                                                     for v in (20.0, 21.0, 500.0)])["prose"]
    pre = json.loads((synthetic_results(tmp_path / "p", which=("preserve",)) / "preserve.json").read_text())
    pre["rows"][0]["random"]["prose"] = _summ([{d: {"ppl": v, "accuracy": 0.0} for d in DOMAINS}
                                               for v in (1e7, 2e7, 9e9)])["prose"]
    plots.plot_lesion(les, tmp_path)
    plots.plot_preservation(pre, tmp_path)
    for ax in figs["lesion"].axes:
        assert ax.get_ylim()[0] > 1.0, ax.get_ylim()  # perplexities are >= 1
    for stem in ("lesion", "preservation"):
        segs = [seg for ax in figs[stem].axes for coll in ax.collections if hasattr(coll, "get_segments")
                for seg in coll.get_segments()]
        assert segs and all(np.asarray(seg)[:, 1].min() > 1.0 for seg in segs), stem
    assert plots._log_low(643.0, 646.0, wide) == 103.9 and plots._log_low(10.0, 2.0) == 8.0
    assert plots._log_low(10.0, 20.0) == 5.0


# ---------------------------------------------------------------------------- report
SECTIONS = ["Model and corpus", "Functional networks", "Recurrence", "Lesion", "Preservation", "Amplification",
            "Top-activating contexts"]


def test_report_contains_every_section(results):
    from funcnet.report import write_report

    path = write_report(results)
    assert path == results / "report.html"
    html = path.read_text()
    for s in SECTIONS:
        assert s in html, s
    assert "not run" not in html
    assert html.count("data:image/png;base64,") >= 8
    assert not re.search(r"https?://", html)
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "<mark>&lt;b&gt;</mark>" in html
    assert "tiny-llama" in html and "LlamaForCausalLM" in html and "0.1.0" in html
    assert "all 5" in html and "net 4" in html  # lesion table rows
    assert html.count("<mark>") == 5 * 4  # every context of every network


def test_report_makes_missing_figures_first(tmp_path):
    from funcnet.report import write_report

    res = synthetic_results(tmp_path / "r", which=("run", "amplify"))
    html = write_report(res).read_text()
    assert (res / "figures" / "amplification.png").exists() and (res / "figures" / "amplification.svg").exists()
    amp = re.search(r'<h2[^>]*>[^<]*Amplification.*?(?=<h2|</body)', html, re.S).group(0)
    assert "data:image/png;base64," in amp and "best network" in amp


def test_report_missing_results_say_not_run(tmp_path):
    from funcnet.report import write_report

    res = synthetic_results(tmp_path / "r", which=("run", "lesion"))
    out = write_report(res, out=tmp_path / "x" / "page.html")
    html = out.read_text()
    assert out == tmp_path / "x" / "page.html"
    for s in ("Recurrence", "Preservation", "Amplification", "Top-activating contexts", "Functional networks"):
        m = re.search(rf'<h2[^>]*>[^<]*{s}.*?(?=<h2|</body)', html, re.S)
        assert m and "not run" in m.group(0), s
    lesion = re.search(r'<h2[^>]*>[^<]*Lesion.*?(?=<h2|</body)', html, re.S).group(0)
    assert "not run" not in lesion and "data:image/png;base64," in lesion


def test_report_empty_or_missing_folder_errors(tmp_path):
    from funcnet.report import write_report

    (tmp_path / "empty").mkdir()
    with pytest.raises(FuncnetError, match="no funcnet results"):
        write_report(tmp_path / "empty")
    with pytest.raises(FuncnetError, match="not found"):
        write_report(tmp_path / "nope")


def test_report_corrupt_json_is_a_clear_error(tmp_path):
    from funcnet.report import write_report

    res = synthetic_results(tmp_path / "r", which=("run",))
    (res / "lesion.json").write_text("{not json")
    with pytest.raises(FuncnetError, match="lesion.json"):
        write_report(res)


def test_report_cli(results, tmp_path, capsys):
    from funcnet.cli import main

    assert main(["report", str(results), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert str(tmp_path / "r.html") in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("funcnet: error:") and "\n" not in err


# ---------------------------------------------------------------------------- headless render
@pytest.mark.integration
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian chromium not installed")
def test_report_renders_in_headless_chromium(results, tmp_path):
    from funcnet.report import write_report

    write_report(results)
    shot = tmp_path / "shot.png"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "check_report_render.sh"), str(results), str(shot)],
                       capture_output=True, text=True, timeout=180,
                       env={**__import__("os").environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
    assert shot.exists() and shot.stat().st_size > 10000


# ---------------------------------------------------------------------------- schema drift
def _shape(o):
    """The structure of a JSON value: dict keys, list element shape, scalar kind."""
    if isinstance(o, dict):
        return {k: _shape(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_shape(o[0])] if len(o) else []
    if isinstance(o, bool):
        return "bool"
    if isinstance(o, (int, float, np.integer, np.floating)):
        return "num"
    return type(o).__name__


def test_synthetic_results_match_explore_schemas(tmp_path, monkeypatch):
    """The hand-built JSON files have the structure funcnet.explore writes (run with fake metrics)."""
    import contextlib
    import importlib
    from types import SimpleNamespace

    import funcnet.experiments as ex

    rng = np.random.default_rng(0)
    fakes = {"measure": lambda lm, texts, **k: {d: {"ppl": float(rng.uniform(10, 50)), "accuracy": 0.3, "n_tokens": 100}
                                                for d in texts},
             "inhibit": lambda *a, **k: contextlib.nullcontext(), "preserve": lambda *a, **k: contextlib.nullcontext(),
             "amplify": lambda *a, **k: contextlib.nullcontext(), "random_like": lambda sel, lm, seed=0, **k: sel,
             "rand_frac": lambda lm, f, seed=0, **k: {}}
    for mod in ("common", "lesion", "preservation", "amplification", "anatomy"):
        m = importlib.import_module(f"funcnet.experiments.{mod}")
        for name, fake in fakes.items():
            if hasattr(m, name):
                monkeypatch.setattr(m, name, fake)
    lm = SimpleNamespace(adapter=SimpleNamespace(neurons_per_layer=lambda m: [WIDTH] * N_LAYERS), model=None)
    nets = synthetic_networks()
    texts = {d: ["x"] for d in DOMAINS}
    n_tok = 20
    store = SimpleNamespace(tokens={"doc_ids": np.zeros(n_tok, int), "char_spans": np.array([[i, i + 1] for i in range(n_tok)])},
                            layer_float=lambda l, s: rng.standard_normal((n_tok, WIDTH)).astype(np.float32))

    class Corpus:
        documents = [SimpleNamespace(text=EVIL + " some text " * 5)]

        def __len__(self):
            return 1

    real = {
        "lesion": ex.lesion_experiment(lm, nets, texts, top=3, n_random=2, progress=False),
        "preserve": ex.preservation_experiment(lm, None, texts, ks=[K], nets_by_k={K: nets}, n_random=2, progress=False),
        "amplify": ex.amplification_experiment(lm, nets, texts, top=2, factors=(0.5, 1.0, 2.0), progress=False),
        "anatomy": ex.anatomy(nets, store, Corpus(), top=3, top_tokens=3),
    }
    res = synthetic_results(tmp_path / "r", which=tuple(real))
    for name, obj in real.items():
        assert isinstance(obj, ex.EXPERIMENTS[name].result_type), name
        mine = json.loads((res / ex.EXPERIMENTS[name].result_file).read_text())
        assert _shape(mine) == _shape(json.loads(json.dumps(obj.to_dict()))), name
    # and the report renders the real results, written where the schema says
    from funcnet.report import render_html

    out = tmp_path / "real"
    for name, obj in real.items():
        assert ex.write_result(out, obj) == out / f"{name}.json"
    page = render_html(out)
    assert "not run: no lesion.json" not in page and "&lt;script&gt;" in page


# ---------------------------------------------------------------------------- typed results schema
def test_schema_round_trips_every_result_file_key_for_key(results):
    """from_dict -> to_dict gives back each JSON file of a results folder, keys in the same order."""
    from funcnet.experiments.schema import EXPERIMENTS, RUN_FILE, RunInfo

    files = {RUN_FILE: RunInfo, **{s.result_file: s.result_type for s in EXPERIMENTS.values()}}
    for name, cls in files.items():
        d = json.loads((results / name).read_text())
        r = cls.from_dict(d)
        assert isinstance(r, cls) and r.extra == {}, name
        assert json.dumps(r.to_dict()) == json.dumps(d), name


def test_load_results_gives_typed_results_or_none(tmp_path):
    from funcnet.experiments.schema import (AmplificationResult, LesionResult, RunInfo, load_results, write_result)

    res = synthetic_results(tmp_path / "r", which=("run", "lesion"))
    (res / "amplify.json").write_text("{}")  # an empty file counts as not run
    got = load_results(res)
    assert list(got) == ["run", "anatomy", "lesion", "preserve", "amplify", "recurrence"]
    assert isinstance(got["run"], RunInfo) and isinstance(got["lesion"], LesionResult)
    assert got["anatomy"] is None and got["amplify"] is None and got["recurrence"] is None
    assert got["run"].threshold == 3.6 and got["lesion"].domains == DOMAINS
    # an older file: missing keys take defaults, unknown keys survive a rewrite
    old = AmplificationResult.from_dict({"experiment": "amplify", "curves": [], "note": "x"})
    assert old.how == "scale" and old.best == {} and old.extra == {"note": "x"}
    assert write_result(tmp_path / "o", old) == tmp_path / "o" / "amplify.json"
    assert json.loads((tmp_path / "o" / "amplify.json").read_text())["note"] == "x"
    (res / "lesion.json").write_text("[1, 2]")
    with pytest.raises(FuncnetError, match="lesion.json"):
        load_results(res)


def test_registry_is_the_one_list_of_result_files_figures_and_sections():
    """Every experiment of the registry has its figures and its report section; file names come
    from the registry only."""
    from funcnet.experiments.schema import (EXPERIMENTS, NETWORKS_FILE, RESULT_FILES, RUN_FILE)
    from funcnet.report import html, plots

    assert RESULT_FILES == (RUN_FILE, NETWORKS_FILE, "anatomy.json", "lesion.json", "preserve.json", "amplify.json",
                            "recurrence.json")
    assert plots.RESULT_FILES is RESULT_FILES and html.RESULT_FILES is RESULT_FILES
    assert set(plots.EXPERIMENT_FIGURES) == set(EXPERIMENTS) == set(html.EXPERIMENT_SECTIONS)
    assert all(src in RESULT_FILES for srcs in plots.FIGURES.values() for src in srcs)
    for name, spec in EXPERIMENTS.items():
        assert spec.name == name and spec.result_type.experiment == name
        assert (html.EXPERIMENT_SECTIONS[name].anchor, spec.title) in html.SECTIONS
    assert [t for _, t in html.SECTIONS] == ["Model and corpus", "Functional networks", "Recurrence", "Lesion",
                                             "Preservation", "Amplification", "Top-activating contexts and anatomy"]


def test_report_is_the_same_from_rewritten_results(made, tmp_path):
    """Reading every result through the schema and writing it back changes nothing in the page."""
    from funcnet.experiments.schema import load_results, write_result
    from funcnet.report import render_html

    src, _ = made
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    for r in load_results(dst).values():
        write_result(dst, r)
    norm = lambda page, d: re.sub(r"written [0-9: -]+\.", "", page).replace(str(d.resolve()), "DIR")
    assert norm(render_html(dst), dst) == norm(render_html(src), src)


def test_plots_accept_json_dicts_as_before(results):
    """Code written against funcnet 0.1 passes the JSON dicts: threshold_of / top_network_ids read them."""
    from funcnet.report.plots import threshold_of, top_network_ids

    raw = {name: json.loads((results / f"{name}.json").read_text()) for name in ("run", "anatomy", "lesion")}
    assert threshold_of(raw) == 3.6 and threshold_of({}) == 3.6
    assert top_network_ids(raw) == [0, 1, 2, 3, 4]
    assert top_network_ids({"lesion": raw["lesion"]}) == [0, 1, 2, 3, 4]
