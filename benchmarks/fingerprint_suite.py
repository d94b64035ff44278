"""Fingerprint robustness suite: is each suspect correctly called derived / independent?

Victim: SmolLM2-135M (default probes, residual stream of all layers). Positives are built from it
with a few lines of torch (permutation, rescaling, int8 noise, pruning, fine-tuning, a combination);
negatives are Gemma-3-270M, a random-init SmolLM2 and small SmolLM2-architecture models trained from
scratch with different seeds on the same text (scripts/make_fingerprint_fixtures.py, cached). A second
block uses a tiny trained model as victim (its derivatives vs an independently trained twin).

Per pair: FNF score, independence p-value (each negative against the *other* negative pairs:
leave-pair-out), chance p-value, verdict, wall and CPU time; REEF-style baseline (linear CKA of the middle layer's
hidden states, mean-pooled per word of the same probes, so different tokenizers and widths work) and
weight-cosine baseline (mean cosine of flattened same-shape weight matrices; n/a across shapes).
Overall: AUC, TPR at 1% FPR, |Z| of the weakest positive against the distinct negative pairs, for
each method. The suite's distinct negative scores are what F.REFERENCE_INDEPENDENT ships; a NOTE is
printed when they differ.

    python benchmarks/fingerprint_suite.py [--quick] [--out results/fingerprint_suite.json]

``--held-out``: the out-of-sample check. The frozen method (score, thresholds, alpha,
F.REFERENCE_INDEPENDENT untouched; the verdict is compare()'s own) against suspects built after it
was frozen and never used to choose anything (fixtures: ``make_fingerprint_fixtures.py --held-out``):
other seeds, another pruning ratio and compensation, a fine-tune on code instead of math. |Z| =
(weakest held-out positive - mean of all distinct negatives, shipped + held-out) / their sd.

    python benchmarks/fingerprint_suite.py --held-out --cache DIR [--out results/fingerprint_heldout.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import funcnet  # noqa: E402
from funcnet import fingerprint as F  # noqa: E402
from funcnet.core.models import LoadedModel  # noqa: E402



def _finetune_note(info: dict, text: str) -> str:
    """One line describing a fine-tuned fixture from its fixture.json (steps, data, losses)."""
    nan = float("nan")
    return (f"AdamW {info['steps']} steps x {info['batch']}x{info.get('seq_len', 64)} tok of {text}, lr {info['lr']}, "
            f"{info.get('trained', 'all parameters')}; held-out {text} loss {info.get('heldout_loss_before', nan):.2f} -> "
            f"{info.get('heldout_loss_after', nan):.2f}, probe loss {info.get('probe_loss_before', nan):.2f} -> "
            f"{info.get('probe_loss_after', nan):.2f}")


def _run_info(t_all: float) -> dict:
    """Machine, load, date and total time of a suite run (for the results JSON)."""
    return {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
                       f"{platform.python_version()}, {torch.get_num_threads()} torch thread(s), "
                       f"load average at the end {os.getloadavg()[0]:.1f}",
            "date": time.strftime("%Y-%m-%d %H:%M"), "total_s": round(time.time() - t_all, 1)}


def _write_results(path, rows: list, summary: dict) -> None:
    print(json.dumps(summary, indent=2))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))

def _clone(lm: LoadedModel, fn, name: str) -> LoadedModel:
    m = copy.deepcopy(lm.model)
    fn(m)
    return LoadedModel(model=m.eval(), tokenizer=lm.tokenizer, adapter=lm.adapter, spec=name)


def _prune(lm: LoadedModel, ratio: float, name: str, compensation: str | None = "bias") -> tuple[LoadedModel, str]:
    """Structured MLP pruning with funcnet.prune (FLAP + bias compensation; ``compensation=None``:
    funcnet.prune's default); emulation otherwise."""
    m = copy.deepcopy(lm.model)
    sus = LoadedModel(model=m, tokenizer=lm.tokenizer, adapter=lm.adapter, spec=name)
    try:
        from funcnet.prune import prune

        kw = {"protect": (1, 1)} if sus.n_layers <= 8 else {}  # tiny models: the default protects every layer
        # compensation pinned to FLAP's bias compensation (funcnet.prune's default became
        # least-squares on 2026-11-28; the suite's pruned suspects stay comparable across runs)
        if compensation is not None:
            kw["compensation"] = compensation
        prune(sus, ratio, of="mlp", method="flap", calib="builtin", calib_tokens=2048, batch_size=4, **kw)
        sus.model.eval()
        return sus, f"funcnet.prune flap + {compensation or 'default'} compensation"
    except ImportError as e:  # pragma: no cover - fallback when the pruning module is unavailable
        print(f"  funcnet.prune unavailable ({e}); emulating", flush=True)
        F.prune_lowest_norm(m, ratio)
        return sus, "emulated: lowest-norm neurons zeroed"


# ----------------------------------------------------------------------------- baselines
def _word_states(keep: dict, prof: F.Profile, layer_frac: float = 0.5) -> np.ndarray:
    """Middle-layer residual states, mean-pooled per word of every probe: [n_words, hidden]."""
    feats = keep["features"]
    layers = sorted({int(f.split(":")[0]) for f in feats if f.endswith(":residual")})
    mid = layers[int(len(layers) * layer_frac)]
    width = keep["X"].shape[1] // len(feats)
    j = feats.index(f"{mid}:residual")
    X = keep["X"][:, j * width:(j + 1) * width]
    out = []
    for p in range(len(prof.probes)):
        a, b = keep["ranges"][p]
        spans = prof.unit_spans[prof.unit_offsets[p]:prof.unit_offsets[p + 1]]
        out.append(F.tokens_to_units(X[a:b], keep["token_spans"][a:b], spans))
    return np.concatenate(out)


def linear_cka(A: np.ndarray, B: np.ndarray) -> float:
    ok = np.isfinite(A).all(1) & np.isfinite(B).all(1)
    A = torch.as_tensor(A[ok], dtype=torch.float64)
    B = torch.as_tensor(B[ok], dtype=torch.float64)
    A = A - A.mean(0)
    B = B - B.mean(0)
    hsic = (A.T @ B).pow(2).sum()
    return float(hsic / ((A.T @ A).pow(2).sum().sqrt() * (B.T @ B).pow(2).sum().sqrt()))


def weight_cosine(m1, m2) -> float | None:
    p1 = dict(m1.named_parameters())
    vals = []
    for name, p in m2.named_parameters():
        q = p1.get(name)
        if q is None or q.shape != p.shape or p.dim() != 2 or "embed" in name:
            continue
        vals.append(float(torch.nn.functional.cosine_similarity(q.detach().reshape(1, -1).float(),
                                                                p.detach().reshape(1, -1).float())))
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------- metrics
def metrics(pos: list[float], neg: list[float]) -> dict:
    pos, neg = np.asarray([x for x in pos if x is not None], float), np.asarray([x for x in neg if x is not None], float)
    if len(pos) == 0 or len(neg) == 0:
        return {"auc": None, "tpr_at_1fpr": None, "z_weakest": None, "n_pos": int(len(pos)), "n_neg": int(len(neg))}
    auc = float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
    thr = np.quantile(neg, 0.99, method="higher") if len(neg) >= 100 else neg.max()
    tpr = float(np.mean(pos > thr))
    z = float((pos.min() - neg.mean()) / max(neg.std(ddof=1) if len(neg) > 1 else 0.0, 1e-12))
    return {"auc": auc, "tpr_at_1fpr": tpr, "z_weakest": z, "n_pos": int(len(pos)), "n_neg": int(len(neg))}


# ----------------------------------------------------------------------------- held-out check
def held_out(a, run, victim_profile, lm, vprof, vkeep, V, random_init, rows, t_all) -> int:
    """Out-of-sample check: the frozen method against suspects never used to choose anything.
    Each pair's p-value and verdict are compare()'s own (against all 6 pairs of
    F.REFERENCE_INDEPENDENT, none of which is a held-out pair)."""
    import make_fingerprint_fixtures as fx

    ft = fx.fixture_dir() / f"smollm2-ft-{fx.HELD_OUT_FT_TEXT.split(':')[-1]}-{a.ft_steps}"
    tiny = {s: fx.fixture_dir() / f"tiny-s{s}-80" for s in (0, 1, *fx.HELD_OUT_TINY_SEEDS)}
    for d in [ft / "fixture.json", *(d / "fixture.json" for d in tiny.values())]:
        _wait(d, a.wait_fixtures)
    if not a.no_train:
        for s, d in tiny.items():
            if not (d / "config.json").exists():
                tiny[s] = fx.tiny_model(s, steps=80)
        if not (ft / "config.json").exists():
            ft = fx.finetuned_smollm2(steps=a.ft_steps, batch=2, text=fx.HELD_OUT_FT_TEXT)
    results = {}

    def go(victim_name, vp, vk, vm, name, make, label, note="", pair=None):
        res = run(victim_name, vp, vk, vm, name, make, label, note, pair)
        if res is not None:
            rows[-1]["p_value"] = res.p_value  # against all of F.REFERENCE_INDEPENDENT (frozen)
            results[name] = res

    # SmolLM2-135M victim: positives
    go(V, vprof, vkeep, lm.model, "perm+rescale seed 11", lambda: _clone(lm, lambda m: (
        F.permute_neurons(m, 11), F.permute_heads(m, 11), F.rescale_neurons(m, seed=11)), "perm-rescale-11"), 1,
        "neurons+heads permuted, neurons rescaled 0.5-2x, seed 11 (the suite: 1 / 0 / 2)")
    go(V, vprof, vkeep, lm.model, "prune-mlp-30% bias", lambda: _prune(lm, 0.3, "prune30b")[0], 1,
       "funcnet.prune flap 30% + bias compensation (the suite: 20%, 50%)")
    go(V, vprof, vkeep, lm.model, "prune-mlp-30% ls (default)", lambda: _prune(lm, 0.3, "prune30ls", None)[0], 1,
       "funcnet.prune flap 30% + its default compensation (least squares)")
    if (ft / "config.json").exists():
        info = json.loads((ft / "fixture.json").read_text())
        note = _finetune_note(info, info["text"])
        go(V, vprof, vkeep, lm.model, f"finetune-code-{info['steps']}", lambda: funcnet.load_model(str(ft)), 1, note)
    else:
        print(f"  {ft.name} unavailable (run scripts/make_fingerprint_fixtures.py --held-out)", flush=True)
    # SmolLM2-135M victim: negatives
    go(V, vprof, vkeep, lm.model, "random-init smollm2 arch seed 456",
       lambda: random_init(lm.model.config, 456, lm.tokenizer, lm.adapter), 0, "the suite: seed 123")
    new_tiny = [s for s in fx.HELD_OUT_TINY_SEEDS if (tiny[s] / "config.json").exists()]
    for s in new_tiny:
        go(V, vprof, vkeep, lm.model, f"independent {tiny[s].name}", lambda s=s: funcnet.load_model(str(tiny[s])), 0)
    # tiny victims (the suite's tiny-s0 / tiny-s1) against the new twin, and tiny-s0's new derivatives
    if (tiny[0] / "config.json").exists():
        t0_ = funcnet.load_model(str(tiny[0]))
        tprof, tk, _ = victim_profile("tiny-s0", t0_)
        go("tiny-s0", tprof, tk, t0_.model, "prune-mlp-30% bias", lambda: _prune(t0_, 0.3, "t-p30")[0], 1,
           "funcnet.prune flap 30% + bias compensation, protect=(1, 1)")
        go("tiny-s0", tprof, tk, t0_.model, "perm+rescale+int8 seed 12", lambda: _clone(t0_, lambda m: (
            F.permute_neurons(m, 12), F.permute_heads(m, 12), F.rescale_neurons(m, seed=12), F.quantize_int8(m)),
            "t-combo12"), 1, "the suite: seed 4")
        go("tiny-s0", tprof, tk, t0_.model, "random-init tiny arch seed 8",
           lambda: random_init(t0_.model.config, 8, t0_.tokenizer, t0_.adapter), 0, "the suite: seed 7")
        for s in new_tiny:
            go("tiny-s0", tprof, tk, t0_.model, f"independent {tiny[s].name}",
               lambda s=s: funcnet.load_model(str(tiny[s])), 0, pair=f"tiny-s0|tiny-s{s}")
    if (tiny[1] / "config.json").exists():
        t1_ = funcnet.load_model(str(tiny[1]))
        t1prof, t1k, _ = victim_profile("tiny-s1", t1_)
        for s in new_tiny:
            go("tiny-s1", t1prof, t1k, t1_.model, f"independent {tiny[s].name}",
               lambda s=s: funcnet.load_model(str(tiny[s])), 0, pair=f"tiny-s1|tiny-s{s}")

    shipped = [x[2] for x in F.REFERENCE_INDEPENDENT]
    pos = [r for r in rows if r["label"] == "positive"]
    neg = list({r["pair"]: r for r in rows if r["label"] == "negative"}.values())
    all_neg = np.asarray(shipped + [r["score"] for r in neg], float)
    wrong = [f"{r['victim']} vs {r['suspect']} ({r['verdict']})" for r in rows if not r["correct"]]
    summary = {
        "z_weakest_heldout_vs_all_negatives": (float((min(r["score"] for r in pos) - all_neg.mean()) / all_neg.std(ddof=1))
                                               if pos else None),
        "weakest_heldout_positive": min(((r["score"], f"{r['victim']} vs {r['suspect']}") for r in pos), default=None),
        "strongest_heldout_negative": max(((r["score"], f"{r['victim']} vs {r['suspect']}") for r in neg), default=None),
        "negatives_mean_sd": [float(all_neg.mean()), float(all_neg.std(ddof=1))],
        "n_negatives": f"{len(shipped)} shipped + {len(neg)} held-out",
        "heldout_only": metrics([r["score"] for r in pos], [r["score"] for r in neg]),
        "misclassified": wrong,
        "verdicts_correct": f"{sum(r['correct'] for r in rows)}/{len(rows)}",
        "thresholds": {"t_high": F.T_HIGH, "t_low": F.T_LOW, "alpha": F.ALPHA, "reference": sorted(shipped)},
        **_run_info(t_all),
    }
    _write_results(a.out, rows, summary)
    print("| victim | suspect | truth | FNF score | p (independence) | p_chance | verdict | "
          "profile s wall / CPU | compare s wall / CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pc = "?" if r["profile_cpu_s"] is None else f"{r['profile_cpu_s']:.0f}"
        print(f"| {r['victim']} | {r['suspect']} | {r['label']} | {r['score']:.3f} | {r['p_value']:.2g} | "
              f"{r['p_chance']:.3g} | {r['verdict']}{'' if r['correct'] else ' (WRONG)'} | "
              f"{r['profile_s']:.0f} / {pc} | {r['compare_s']:.0f} / {r['compare_cpu_s']:.0f} |")
    z = summary["z_weakest_heldout_vs_all_negatives"]
    print(f"held-out: {summary['verdicts_correct']} verdicts correct; |Z| = {abs(z) if z is not None else float('nan'):.2f} "
          f"(weakest held-out positive {summary['weakest_heldout_positive']}, negatives mean "
          f"{all_neg.mean():.3f} sd {all_neg.std(ddof=1):.3f}, {summary['n_negatives']}); misclassified: "
          f"{', '.join(wrong) if wrong else 'none'}")
    return 0


# ----------------------------------------------------------------------------- suite
def _wait(path: Path, seconds: float) -> None:
    """Wait for a fixture another process (scripts/make_fingerprint_fixtures.py) is still building."""
    t0 = time.time()
    while seconds > 0 and not path.exists() and time.time() - t0 < seconds:
        time.sleep(10)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "results" / "fingerprint_suite.json"))
    ap.add_argument("--n-null", type=int, default=200)
    ap.add_argument("--n-seeds", type=int, default=3)
    ap.add_argument("--no-gemma", action="store_true")
    ap.add_argument("--no-train", action="store_true", help="use only cached fixtures (never train)")
    ap.add_argument("--cache", default=None, help="folder to cache victim/suspect profiles in (re-runs only compare)")
    ap.add_argument("--ft-steps", type=int, default=300, help="fine-tuned fixture: smollm2-ft-math-<steps>")
    ap.add_argument("--wait-fixtures", type=float, default=0, help="seconds to wait for fixtures being built elsewhere")
    ap.add_argument("--held-out", action="store_true",
                    help="only the held-out suspects (out-of-sample check of the frozen method)")
    a = ap.parse_args(argv)
    if a.held_out and a.out == str(ROOT / "results" / "fingerprint_suite.json"):
        a.out = str(ROOT / "results" / "fingerprint_heldout.json")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))
    os.environ.setdefault("FUNCNET_NO_PROGRESS", "1")
    rows = []
    t_all = time.time()

    cache = Path(a.cache) if a.cache else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)

    def run(victim_name, vprof, vkeep, vmodel, name, make, label, note="", pair=None):
        """``make``: a LoadedModel or a function returning one (called only when the suspect's
        profile is not cached). With --cache, the suspect profile, its CKA word states, weight cosine
        and profiling time are stored, so a re-run only re-does the comparison."""
        key = f"{victim_name}__{name}".replace("/", "_").replace(" ", "_")
        t0 = time.time()
        c0 = time.process_time()
        hit = cache is not None and (cache / f"{key}.json").exists()
        try:
            if hit:
                sp = F.Profile.load(cache / f"{key}.fnf")
                ws = np.load(cache / f"{key}.npy")
                info = json.loads((cache / f"{key}.json").read_text())
                wcos, prof_s = info["weight_cos"], info["profile_s"]
                prof_cpu = info.get("profile_cpu_s")
            else:
                lm = make() if callable(make) else make
                keep: dict = {}
                sp = F.profile(lm, vprof.probes, n_seeds=vprof.n_seeds, keep=keep)
                prof_s = time.time() - t0
                prof_cpu = time.process_time() - c0
                ws = _word_states(keep, sp)
                wcos = weight_cosine(vmodel, lm.model)
                del keep, lm
                if cache is not None:
                    sp.save(cache / f"{key}.fnf")
                    np.save(cache / f"{key}.npy", ws)
                    (cache / f"{key}.json").write_text(json.dumps({"weight_cos": wcos, "profile_s": prof_s,
                                                                   "profile_cpu_s": prof_cpu}))
            t1 = time.time()
            c1 = time.process_time()
            res = F.compare(vprof, None, suspect_profile=sp, n_null=a.n_null)
        except funcnet.FuncnetError as e:
            print(f"  {name}: error {e}", flush=True)
            return
        secs = prof_s + (time.time() - t1)
        cmp_cpu = time.process_time() - c1
        cka = linear_cka(_word_states(vkeep, vprof), ws)
        want = "derived" if label else "independent"
        row = {"victim": victim_name, "suspect": name, "label": "positive" if label else "negative",
               "pair": pair or f"{victim_name}|{name}",
               "score": round(res.score, 4), "p_value": res.p_value, "p_chance": res.p_chance, "verdict": res.verdict,
               "correct": res.verdict == want, "null_mean": round(res.null["mean"], 4),
               "null_max": round(res.null["max"], 4), "raw_score": round(res.raw_score, 4), "cka": round(cka, 4),
               "weight_cos": None if wcos is None else round(wcos, 4), "time_s": round(secs, 1),
               "compare_s": round(time.time() - t1, 1), "compare_cpu_s": round(cmp_cpu, 1),
               "profile_s": round(prof_s, 1), "profile_cpu_s": None if prof_cpu is None else round(prof_cpu, 1),
               "note": note}
        rows.append(row)
        print(f"  {victim_name:>8} vs {name:<28} {row['label']:<8} score {res.score:.3f} (raw {res.raw_score:.3f}) "
              f"p {res.p_value:.2g} p_chance {res.p_chance:.4f} {res.verdict:<12} cka {cka:.3f} wcos {row['weight_cos']} {secs:.0f}s", flush=True)
        return res

    def victim_profile(name, lm):
        """Victim profile + raw recording (for the CKA baseline); cached with --cache."""
        t0 = time.time()
        if cache is not None and (cache / f"victim__{name}.fnf").exists():
            prof = F.Profile.load(cache / f"victim__{name}.fnf")
            info = json.loads((cache / f"victim__{name}.json").read_text())
            keep: dict = {}
            _ = F.profile(lm, prof.probes, n_seeds=1, n_components=2, keep=keep)  # recording only (CKA)
            return prof, keep, info["profile_s"]
        keep = {}
        prof = F.profile(lm, n_seeds=a.n_seeds, keep=keep)
        secs = time.time() - t0
        if cache is not None:
            prof.save(cache / f"victim__{name}.fnf")
            (cache / f"victim__{name}.json").write_text(json.dumps({"profile_s": secs}))
        return prof, keep, secs

    # ---------------- victim SmolLM2-135M
    print("profiling victim smollm2-135m", flush=True)
    lm = funcnet.load_model("smollm2-135m")
    vprof, vkeep, victim_s = victim_profile("smollm2", lm)
    print(f"  victim profile {victim_s:.0f}s ({vprof.meta['n_tokens']} tokens)", flush=True)
    V = "smollm2"
    import transformers as T

    def random_init(cfg, seed, tok, adapter):
        torch.manual_seed(seed)
        rnd = T.AutoModelForCausalLM.from_config(cfg).eval()
        return LoadedModel(model=rnd, tokenizer=tok, adapter=adapter, spec=f"random-{seed}")

    if a.held_out:
        return held_out(a, run, victim_profile, lm, vprof, vkeep, V, random_init, rows, t_all)
    run(V, vprof, vkeep, lm.model, "perm-neurons+heads", lambda: _clone(lm, lambda m: (F.permute_neurons(m, 1),
                                                                                        F.permute_heads(m, 1)), "perm"), 1)
    run(V, vprof, vkeep, lm.model, "rescale(0.5-2x)", lambda: _clone(lm, F.rescale_neurons, "rescale"), 1)
    run(V, vprof, vkeep, lm.model, "int8-roundtrip", lambda: _clone(lm, F.quantize_int8, "int8"), 1)
    for r in (0.2, 0.5):
        run(V, vprof, vkeep, lm.model, f"prune-mlp-{int(r * 100)}%", lambda r=r: _prune(lm, r, f"prune{int(r * 100)}")[0],
            1, "funcnet.prune flap + bias compensation")

    def combo():
        sus = _clone(lm, lambda m: (F.permute_neurons(m, 2), F.permute_heads(m, 2), F.rescale_neurons(m, seed=2),
                                    F.quantize_int8(m)), "combo")
        return _prune(sus, 0.2, "combo")[0]

    run(V, vprof, vkeep, lm.model, "combo perm+rescale+int8+prune20", combo, 1,
        "permute neurons+heads, rescale, int8, then funcnet.prune flap 20%")

    run(V, vprof, vkeep, lm.model, "random-init smollm2 arch",
        lambda: random_init(lm.model.config, 123, lm.tokenizer, lm.adapter), 0)
    if not a.no_gemma:
        run(V, vprof, vkeep, lm.model, "gemma3-270m", lambda: funcnet.load_model("gemma3-270m"), 0)

    try:
        import make_fingerprint_fixtures as fx

        ft = fx.fixture_dir() / f"smollm2-ft-math-{a.ft_steps}"
        _wait(ft / "fixture.json", a.wait_fixtures)
        if not (ft / "config.json").exists() and not a.no_train:
            ft = fx.finetuned_smollm2(steps=a.ft_steps, batch=2)
        if (ft / "config.json").exists():
            info = json.loads((ft / "fixture.json").read_text())
            note = _finetune_note(info, "math")
            run(V, vprof, vkeep, lm.model, "finetune-math", lambda: funcnet.load_model(str(ft)), 1, note)
            run(V, vprof, vkeep, lm.model, "finetune-math+perm", lambda: _clone(funcnet.load_model(str(ft)), lambda m: (
                F.permute_neurons(m, 5), F.permute_heads(m, 5)), "ft-perm"), 1, note + "; then neurons+heads permuted")
        else:
            print("  fine-tuned model unavailable (run scripts/make_fingerprint_fixtures.py)", flush=True)
    except Exception as e:
        print(f"  fine-tuned model unavailable: {e}", flush=True)
    tiny_dirs = []
    try:
        import make_fingerprint_fixtures as fx

        for s in range(2):
            d = fx.fixture_dir() / f"tiny-s{s}-80"
            _wait(d / "fixture.json", a.wait_fixtures)
            if not (d / "config.json").exists() and not a.no_train:
                d = fx.tiny_model(s, steps=80)
            if (d / "config.json").exists():
                tiny_dirs.append(d)
    except Exception as e:
        print(f"  tiny fixtures unavailable: {e}", flush=True)
    for d in tiny_dirs:
        run(V, vprof, vkeep, lm.model, f"independent {d.name}", lambda d=d: funcnet.load_model(str(d)), 0)
    # ---------------- victim: tiny trained model
    if len(tiny_dirs) >= 2:
        t0_ = funcnet.load_model(str(tiny_dirs[0]))
        tprof, tk, _ = victim_profile("tiny-s0", t0_)
        TV = "tiny-s0"
        run(TV, tprof, tk, t0_.model, "perm+rescale+int8", lambda: _clone(t0_, lambda m: (F.permute_neurons(m, 4),
            F.permute_heads(m, 4), F.rescale_neurons(m, seed=4), F.quantize_int8(m)), "t-combo"), 1)
        run(TV, tprof, tk, t0_.model, "prune-mlp-20%", lambda: _prune(t0_, 0.2, "t-p20")[0], 1,
            "funcnet.prune flap + bias compensation")
        run(TV, tprof, tk, t0_.model, f"independent {tiny_dirs[1].name}",
            lambda: funcnet.load_model(str(tiny_dirs[1])), 0, pair="tiny-s0|tiny-s1")
        run(TV, tprof, tk, t0_.model, "random-init tiny arch",
            lambda: random_init(t0_.model.config, 7, t0_.tokenizer, t0_.adapter), 0)
        # and the other way round: tiny-s1 as victim
        t1_ = funcnet.load_model(str(tiny_dirs[1]))
        t1prof, t1k, _ = victim_profile("tiny-s1", t1_)
        run("tiny-s1", t1prof, t1k, t1_.model, f"independent {tiny_dirs[0].name}",
            lambda: funcnet.load_model(str(tiny_dirs[0])), 0, pair="tiny-s0|tiny-s1")

    # Independence p-values without the pair itself: each negative is tested against the *other*
    # distinct negative pairs (leave-one-pair-out), so no negative's p-value is in-sample; positives
    # against all of them. The same negatives are what F.REFERENCE_INDEPENDENT ships.
    ref = {}
    for r in rows:
        if r["label"] == "negative":
            ref.setdefault(r["pair"], r["score"])
    for r in rows:
        others = [v for k, v in ref.items() if k != r["pair"]]
        if len(others) >= 3:
            p, _ = F.reference_p(r["score"], others)
            r["p_loo"] = p
            derived = p < F.ALPHA and r["p_chance"] < F.ALPHA and r["score"] >= F.T_HIGH
            indep = r["score"] < F.T_LOW or p >= F.ALPHA or r["p_chance"] >= F.ALPHA
            r["verdict_loo"] = "derived" if derived else "independent" if indep else "inconclusive"
            r["correct_loo"] = r["verdict_loo"] == ("derived" if r["label"] == "positive" else "independent")
    shipped = sorted(round(x[2], 3) for x in F.REFERENCE_INDEPENDENT)
    measured = sorted(round(v, 3) for v in ref.values())
    if shipped != measured:
        print(f"NOTE: F.REFERENCE_INDEPENDENT {shipped} differs from this run's negatives {measured}", flush=True)
    pos = [r for r in rows if r["label"] == "positive"]
    # one row per distinct negative pair (the tiny pair both ways round is one pair: the score is
    # symmetric, so its mirror is not independent evidence)
    neg = list({r["pair"]: r for r in rows if r["label"] == "negative"}.values())
    summary = {
        "fnf": metrics([r["score"] for r in pos], [r["score"] for r in neg]),
        "cka": metrics([r["cka"] for r in pos], [r["cka"] for r in neg]),
        "weight_cos": metrics([r["weight_cos"] for r in pos], [r["weight_cos"] for r in neg]),
        "verdicts_correct": f"{sum(r['correct'] for r in rows)}/{len(rows)}",
        "verdicts_correct_loo": f"{sum(r.get('correct_loo', False) for r in rows)}/{len(rows)}",
        "reference_negatives": measured,
        "victim_profile_s": round(victim_s, 1),
        "median_compare_s": float(np.median([r["time_s"] for r in rows])) if rows else None,
        "thresholds": {"t_high": F.T_HIGH, "t_low": F.T_LOW, "alpha": F.ALPHA},
        "n_probes": len(vprof.probes), "n_seeds": vprof.n_seeds, "n_null": a.n_null,
        **_run_info(t_all),
    }
    _write_results(a.out, rows, summary)
    print("| victim | suspect | truth | FNF score | score w/o control | p (indep., leave-pair-out) | p_chance | verdict | "
          "CKA | weight cos | profile s wall / CPU | compare s wall / CPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        wc = "n/a" if r["weight_cos"] is None else f"{r['weight_cos']:.3f}"
        pc = "?" if r["profile_cpu_s"] is None else f"{r['profile_cpu_s']:.0f}"
        v = r.get("verdict_loo", r["verdict"])
        ok = r.get("correct_loo", r["correct"])
        print(f"| {r['victim']} | {r['suspect']} | {r['label']} | {r['score']:.3f} | {r['raw_score']:.3f} | "
              f"{r.get('p_loo', r['p_value']):.2g} | {r['p_chance']:.3g} | {v}{'' if ok else ' (WRONG)'} | "
              f"{r['cka']:.3f} | {wc} | {r['profile_s']:.0f} / {pc} | {r['compare_s']:.0f} / {r['compare_cpu_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
