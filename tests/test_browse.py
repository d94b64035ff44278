"""The network browser (funcnet.report.browse) on a tiny random model: its numbers against brute-force
computations, the files it writes, the command line, and the pages in a real headless Chromium."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEXTS, char_tokenizer, tiny_model

from funcnet.cli.browse import register_cli
from funcnet.core.models import as_loaded
from funcnet.data.corpus import Corpus, Document
from funcnet.data.record import record
from funcnet.errors import FuncnetError
from funcnet.networks import decompose
from funcnet.report.browse import (
    MAX_PAGE_BYTES,
    NETWORK_SCHEMA,
    build_site,
    network_activity,
    page_sizes,
    quantile_rows,
    search_networks,
    serve,
    validate,
)

THR = {"method": "top_fraction", "fraction": 0.05}
DOMAINS = ["prose", "code", "math", "prose", "code", "prose"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.filterwarnings("ignore:.*FastICA runs did not converge")


def _lesion(ids):
    doms = ["prose", "code"]
    base = {d: {"ppl": 10.0, "accuracy": 0.5, "n_tokens": 100} for d in doms}
    conds = [{"name": f"net {i}", "networks": [i], "n_neurons": 6, "fraction": 0.05,
              "lesioned": {"prose": {"ppl": 12.0 + i, "accuracy": 0.4, "n_tokens": 100},
                           "code": {"ppl": 11.0, "accuracy": 0.4, "n_tokens": 100}},
              "random": {d: {"ppl_mean": 10.5, "ppl_std": 0.1, "acc_mean": 0.5, "acc_std": 0.0, "ppl": [10.5],
                             "accuracy": [0.5]} for d in doms}} for i in ids]
    return {"experiment": "lesion", "baseline": base, "conditions": conds, "domains": doms,
            "random_fraction": {}, "params": {"threshold": 3.6}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model = tiny_model("llama", n_layers=2, inter=64, vocab=128)
    with torch.no_grad():   # a final norm that is not all ones, so the direct effect must apply it
        model.model.norm.weight.copy_(torch.linspace(0.2, 3.0, model.config.hidden_size))
    lm = as_loaded(model, char_tokenizer())
    docs = [Document(t * 3, i, f"t{i}", DOMAINS[i % 6]) for i, t in enumerate(TEXTS * 3)]
    corpus = Corpus("browse-test", docs)
    root = tmp_path_factory.mktemp("browse")
    store = record(lm, corpus, out=root / "store", max_length=64, progress=False)
    nets = decompose(store, mode="whole", n_components=4, n_init=2, method="reference", progress=False)
    site = build_site(nets, lm, store, root / "site", corpus=corpus, lesion=_lesion([0, 2]),
                      counterpart={"model": "other", "href": "../other", "pairs": [[0, 3, 0.9], [1, 2, 0.4]]},
                      top_contexts=5, per_quantile=3, top_k=10, progress=False, **THR)
    return {"lm": lm, "store": store, "nets": nets, "site": site, "corpus": corpus, "root": root}


def _net(site, i):
    return json.loads((Path(site) / "json" / f"network_{i:04d}.json").read_text())


def test_activity_is_the_networks_time_course(built):
    nets, store = built["nets"], built["store"]
    ids = list(range(nets.n_networks))
    pairs = [nets.key_neurons(i, **THR) for i in ids]
    act = network_activity(store, pairs, signal="neurons", chunk_tokens=100)   # several chunks
    ref = nets.time_courses(store, ids, **THR)
    assert act.shape == ref.shape == (store.n_tokens, nets.n_networks)
    np.testing.assert_allclose(act, ref, rtol=1e-5, atol=1e-5)


def test_direct_effect_equals_brute_force(built):
    lm, nets, site = built["lm"], built["nets"], built["site"]
    model = lm.model
    for i in range(nets.n_networks):
        d, c = nets.network(i)
        mask = nets.key_mask(i, **THR)
        logits = torch.zeros(model.config.vocab_size, dtype=torch.float64)
        with torch.no_grad():
            for (layer, _, j), w in zip(d.columns[mask], d.maps[c][mask]):
                col = model.model.layers[int(layer)].mlp.down_proj.weight[:, int(j)].double()
                logits += model.lm_head.weight.double() @ (model.model.norm.weight.double() * col * float(w))
        rec = _net(site, i)
        top = torch.argsort(logits, descending=True)[:10].tolist()
        bottom = torch.argsort(logits)[:10].tolist()
        assert [t["id"] for t in rec["direct_effect"]["promoted"]] == top
        assert [t["id"] for t in rec["direct_effect"]["suppressed"]] == bottom
        np.testing.assert_allclose([t["logit"] for t in rec["direct_effect"]["promoted"]], logits[top].numpy(),
                                   atol=1e-4)
        assert rec["direct_effect"]["promoted"][0]["token"] == lm.tokenizer.decode([top[0]])


def test_quantile_samples_come_from_their_quantiles(built):
    rng = np.random.default_rng(0)
    act = rng.permutation(1000).astype(np.float32)   # value = rank
    bins = quantile_rows(act, (0.0, 0.5, 0.9, 0.99, 1.0), 4, np.random.default_rng(1))
    expect = [(0, 499), (500, 899), (900, 989), (990, 999)]
    for b, (lo, hi) in zip(bins, expect):
        vals = act[b["rows"]]
        assert len(vals) == 4 and vals.min() >= lo and vals.max() <= hi
        assert (b["value_lo"], b["value_hi"]) == (lo, hi)
    # in the site: every sampled context's focus value lies in its interval of the network's activity
    nets, store, site = built["nets"], built["store"], built["site"]
    tc = nets.time_courses(store, None, **THR)
    n = tc.shape[0]
    for i in range(nets.n_networks):
        a = np.sort(tc[:, i])
        rec = _net(site, i)
        assert [(q["lo"], q["hi"]) for q in rec["quantile_samples"]] == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75),
                                                                        (0.75, 0.9), (0.9, 0.99), (0.99, 1.0)]
        for q in rec["quantile_samples"]:
            lo, hi = a[int(np.floor(q["lo"] * n))], a[n - 1 if q["hi"] >= 1 else int(np.floor(q["hi"] * n)) - 1]
            assert len(q["contexts"]) == 3
            for ctx in q["contexts"]:
                assert lo - 1e-4 <= ctx["value"] <= hi + 1e-4
                assert abs(ctx["acts"][ctx["focus"]] - tc[ctx["row"], i]) < 1e-3
        # top contexts: the highest activity first, in descending order
        vals = [ctx["value"] for ctx in rec["top_contexts"]]
        assert vals == sorted(vals, reverse=True) and abs(vals[0] - a[-1]) < 1e-4


def test_search_ranks_the_network_most_active_on_the_token(built):
    nets, store, site, lm = built["nets"], built["store"], built["site"], built["lm"]
    tc = nets.time_courses(store, None, **THR).astype(np.float64)
    z = (tc - tc.mean(0)) / tc.std(0)
    search = json.loads((site / "json" / "search.json").read_text())
    tok_ids = np.asarray(store.tokens["token_ids"])
    for ch in ["e", "(", "7"]:
        tid = lm.tokenizer.convert_tokens_to_ids(ch)
        brute = z[tok_ids == tid].mean(0)
        ranked = search_networks(search, ch)
        assert ranked[0][0] == int(np.argmax(brute))
        assert abs(ranked[0][1] - brute.max()) < 1e-3
    assert search_networks(search, "") == []
    # per-domain means are the mean z over each domain's tokens
    doc_dom = np.array([d.domain for d in built["corpus"].documents])[np.asarray(store.tokens["doc_ids"])]
    rec = _net(site, 1)
    for row in rec["domains"]:
        assert abs(row["mean_z"] - z[doc_dom == row["domain"], 1].mean()) < 1e-3
    assert rec["strongest_domain"] == max(rec["domains"], key=lambda r: r["mean_z"])["domain"]


def test_files_small_and_network_json_matches_schema(built):
    site, nets = built["site"], built["nets"]
    sizes = page_sizes(site)
    assert sizes and max(sizes.values()) < MAX_PAGE_BYTES
    assert {f"n/{i:04d}.html" for i in range(nets.n_networks)} <= set(sizes)
    for i in range(nets.n_networks):
        rec = _net(site, i)
        assert validate(rec, NETWORK_SCHEMA) == []
        js = (site / "data" / "net" / f"{i:04d}.js").read_text()
        assert json.loads(js[js.index("=") + 1:].rstrip().rstrip(";")) == rec
    broken = _net(site, 0)
    del broken["direct_effect"]["promoted"]
    broken["n_key"] = "six"
    assert len(validate(broken)) == 2
    index = json.loads((site / "json" / "index.json").read_text())
    assert [r["id"] for r in index["networks"]] == list(range(nets.n_networks))


def test_nan_stability_is_written_as_null(built, tmp_path):
    nets = built["nets"]
    dec = nets.decompositions[0]
    odd = type(nets)([type(dec)(dec.maps, dec.columns, np.array([np.nan, 1, 1, 1], np.float32), dec.group, dec.unit)],
                     nets.signals, nets.neurons_per_layer, nets.model_identity, nets.model_spec)
    site = build_site(odd, built["lm"], built["store"], tmp_path / "site", corpus=built["corpus"], progress=False, **THR)
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} in JSON")}
    rec = json.loads((site / "json" / "network_0000.json").read_text(), **strict)
    index = json.loads((site / "json" / "index.json").read_text(), **strict)
    assert rec["stability"] is None and index["networks"][0]["stability"] is None and validate(rec) == []
    assert index["networks"][1]["stability"] == 1.0


def test_lesion_and_counterpart(built):
    site = built["site"]
    rec0, rec1, rec2 = _net(site, 0), _net(site, 1), _net(site, 2)
    expect = np.mean([100 * (12.0 / 10.5 - 1), 100 * (11.0 / 10.5 - 1)])
    assert abs(rec0["lesion"]["effect"] - expect) < 1e-2 and rec1["lesion"] is None
    assert rec2["lesion"]["effect"] > rec0["lesion"]["effect"]
    assert rec0["counterpart"] == {"model": "other", "id": 3, "score": 0.9, "href": "../../other/n/0003.html"}
    index = json.loads((site / "json" / "index.json").read_text())
    row = index["networks"][0]
    assert (row["counterpart"], row["counterpart_href"], row["lesion_effect"]) == (3, "../other/n/0003.html",
                                                                                 rec0["lesion"]["effect"])


def test_cli_builds_and_refuses_foreign_folder(built, tmp_path):
    nets, store, lm = built["nets"], built["store"], built["lm"]
    folder = tmp_path / "model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    nets.save(tmp_path / "nets.safetensors")
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    out = tmp_path / "site"
    args = parser.parse_args(["browse", str(tmp_path / "nets.safetensors"), "--model", str(folder), "--out", str(out),
                              "--store", str(store.path), "--threshold", "1.5", "--networks-ids", "1-2"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (out / "n").iterdir()) == ["0001.html", "0002.html"]
    with pytest.raises(FuncnetError, match="exists"):
        args.func(args)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(FuncnetError, match="will not replace"):
        build_site(nets, lm, store, foreign, overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep"


def test_serve_on_localhost(built):
    httpd = serve(built["site"], 0, block=False)
    assert httpd.server_address[0] == "127.0.0.1"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        port = httpd.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5).read().decode()
        assert 'data-page="index"' in body
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------- real browser
@pytest.fixture(scope="module")
def driver():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("needs Debian chromium and chromium-driver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="funcnet-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage",
              f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _severe(drv):
    return [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def test_browser_index_sort_and_search(built, driver):
    from selenium.webdriver.common.by import By

    site = built["site"]
    driver.get((site / "index.html").as_uri())
    rows = driver.find_elements(By.CSS_SELECTOR, "#networks tbody tr")
    assert [r.get_attribute("data-id") for r in rows] == ["0", "1", "2", "3"]
    index = json.loads((site / "json" / "index.json").read_text())
    by_stab = sorted(index["networks"], key=lambda r: (-r["stability"], r["id"]))
    driver.find_element(By.CSS_SELECTOR, 'th[data-key="stability"]').click()   # numbers sort descending first
    got = [int(r.get_attribute("data-id")) for r in driver.find_elements(By.CSS_SELECTOR, "#networks tbody tr")]
    assert got == [r["id"] for r in by_stab]
    driver.find_element(By.CSS_SELECTOR, 'th[data-key="stability"]').click()
    got = [int(r.get_attribute("data-id")) for r in driver.find_elements(By.CSS_SELECTOR, "#networks tbody tr")]
    assert got == [r["id"] for r in sorted(index["networks"], key=lambda r: (r["stability"], r["id"]))]
    search = json.loads((site / "json" / "search.json").read_text())
    driver.find_element(By.ID, "search").send_keys("e")
    first = driver.find_element(By.CSS_SELECTOR, "#search-table tbody tr")
    assert int(first.get_attribute("data-id")) == search_networks(search, "e")[0][0]
    driver.find_element(By.ID, "filter").send_keys("zzzz-no-such-label")
    assert driver.find_elements(By.CSS_SELECTOR, "#networks tbody tr") == []
    assert _severe(driver) == []


def test_browser_network_page_sections(built, driver):
    from selenium.webdriver.common.by import By

    site = built["site"]
    driver.get((site / "n" / "0000.html").as_uri())
    rec = _net(site, 0)
    assert driver.find_element(By.ID, "title").text == f"Network 0: {rec['label']}"
    for sec in ("anatomy", "histogram"):
        assert driver.find_elements(By.CSS_SELECTOR, f"#{sec}-body svg rect")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#top-contexts-body .ctx")) == len(rec["top_contexts"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#quantiles-body .ctx")) == 6 * 3
    assert len(driver.find_elements(By.CSS_SELECTOR, "#domains-body svg rect")) == len(rec["domains"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#direct-effect-body tbody tr")) == 20
    assert len(driver.find_elements(By.CSS_SELECTOR, "#lesion-body tbody tr")) == 2
    assert "other network #3" in driver.find_element(By.ID, "meta").text
    assert _severe(driver) == []
    driver.find_element(By.ID, "next").click()
    assert driver.find_element(By.ID, "title").text.startswith("Network 1:")
    assert "not measured" in driver.find_element(By.ID, "lesion-body").text
    assert _severe(driver) == []
