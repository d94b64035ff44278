"""Fingerprint comparison: does a suspect model derive from a victim model?

``compare(profile, suspect)`` builds the suspect's own networks on the victim profile's probe texts
(:func:`funcnet.fingerprint.profile`), correlates every victim network with every suspect
network (Spearman, averaged over probes), matches them one to one (Hungarian, sign-free), and turns
the matched correlations into a score (a statistic of the matched |rho| of the top k, by default
their median; :mod:`funcnet.fingerprint.statistics`), p-values and a verdict: ``derived``,
``independent`` or ``inconclusive``. See docs/fingerprint.md.

Token-identity control (default ``control="word-identity"``): before correlating, each word-level
time course loses the part explained by *which word* is present and *where* in the probe it is
(additive word-type + position-bin means); any two models run on the same text share that part
(two barely trained independent models scored 0.72 without it).

Two p-values: ``p_value`` (the verdict's) compares the score with the scores of independent model
pairs shipped in :data:`REFERENCE_INDEPENDENT` (Student-t prediction test, :func:`reference_p`);
``p_chance`` comes from a permutation null that exchanges the suspect's values among occurrences of
the same word (it keeps everything token identity can explain, and every trained model beats it)::

    res = compare("victim.fnf", "my-suspect-model")
    print(res.verdict, res.score, res.p_value)
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from funcnet._defaults import FINGERPRINT_ALPHA
from funcnet._version import __version__
from funcnet.core._io import atomic_path, json_default
from funcnet.errors import FuncnetError
from funcnet.fingerprint._profile import Profile, _mm, _threads_for_load, profile
from funcnet.fingerprint.statistics import DEFAULT_STATISTIC, get_statistic

#: Verdict thresholds on the score (median matched |rho| of the top networks); calibrated on the
#: robustness suite (benchmarks/fingerprint_suite.py, docs/fingerprint.md).
T_HIGH = 0.50
T_LOW = 0.45
ALPHA = FINGERPRINT_ALPHA

#: Reference distribution of the score for *independent* model pairs: the distinct negative pairs
#: of the robustness suite (benchmarks/fingerprint_suite.py; default probes, residual stream,
#: k = 64 capped by the data, 3 ICA seeds, word-identity control). ``compare`` turns the score into
#: the independence p-value ``p_value`` with a Student-t *prediction* test against these numbers
#: (``reference_p``): the probability that a new independent pair, drawn from the same normal
#: distribution as these, scores at least as high. Re-measure them when the score changes. They were
#: computed with the statistic :data:`REFERENCE_STATISTIC`; a comparison with another statistic gets
#: no independence p-value unless it passes its own ``reference`` scores.
REFERENCE_INDEPENDENT: tuple[tuple[str, str, float], ...] = (
    ("smollm2-135m", "random-init smollm2-135m architecture", 0.169),
    ("smollm2-135m", "gemma3-270m", 0.326),
    ("smollm2-135m", "tiny-s0-80 (SmolLM2 tokenizer, trained from scratch)", 0.162),
    ("smollm2-135m", "tiny-s1-80", 0.146),
    ("tiny-s0-80", "tiny-s1-80", 0.340),
    ("tiny-s0-80", "random-init tiny architecture", 0.194),
)
REFERENCE_STATISTIC = DEFAULT_STATISTIC


# =============================================================================== compare
def _rank_rows(A: np.ndarray) -> np.ndarray:
    """Row-wise ranks, centered and scaled to unit norm (so a dot product is Spearman's rho)."""
    from scipy.stats import rankdata

    R = rankdata(A, axis=1).astype(np.float64)
    R -= R.mean(1, keepdims=True)
    n = np.linalg.norm(R, axis=1, keepdims=True)
    n[n < 1e-12] = np.inf  # constant series: correlation 0
    return R / n


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of rows of x [k, m] to length n (null distribution only)."""
    m = x.shape[1]
    if m == n:
        return x
    if m == 1:
        return np.repeat(x, n, axis=1)
    src = np.linspace(0.0, 1.0, m)
    dst = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(dst, src, row) for row in x])


def _corr_matrix(V: list[np.ndarray], S: list[np.ndarray], *, min_units: int = 5) -> np.ndarray:
    """Mean over probes of Spearman rho between rows of V[p] [kv, n_p] and S[p] [ks, n_p] (NaN
    columns dropped pairwise per probe)."""
    acc, cnt = None, 0
    for v, s in zip(V, S):
        ok = np.isfinite(v).all(0) & np.isfinite(s).all(0)
        if ok.sum() < min_units:
            continue
        r = _mm(_rank_rows(v[:, ok]), _rank_rows(s[:, ok]).T)
        acc = r if acc is None else acc + r
        cnt += 1
    if cnt == 0:
        raise FuncnetError("victim and suspect share no text units with time courses on any probe")
    return acc / cnt


def _match(R: np.ndarray):
    from scipy.optimize import linear_sum_assignment

    A = np.abs(R)
    rows, cols = linear_sum_assignment(-A)
    order = np.argsort(-A[rows, cols])
    return rows[order], cols[order], R[rows[order], cols[order]]



def reference_p(score: float, reference: Sequence[float] | None = None) -> tuple[float, dict]:
    """Independence p-value of ``score``: the one-sided Student-t prediction p-value of a new draw
    from the normal distribution fitted to ``reference`` (scores of independent pairs; default
    :data:`REFERENCE_INDEPENDENT`): t = (score - mean) / (sd * sqrt(1 + 1/n)), df = n - 1. Needs no
    other model at compare time; it is only as good as the reference pairs are representative."""
    from scipy.stats import t as student_t

    ref = np.asarray([r[2] for r in REFERENCE_INDEPENDENT] if reference is None else list(reference), float)
    n = len(ref)
    if n < 3:
        raise FuncnetError(f"the independence reference needs at least 3 scores, got {n}")
    mu, sd = float(ref.mean()), float(ref.std(ddof=1))
    t = (score - mu) / max(sd * math.sqrt(1.0 + 1.0 / n), 1e-12)
    p = float(student_t.sf(t, n - 1))
    return p, {"n": n, "mean": mu, "sd": sd, "t": float(t), "df": n - 1,
               "source": "REFERENCE_INDEPENDENT" if reference is None else "given"}


@dataclass
class FingerprintResult:
    """The outcome of :func:`compare`. ``p_value`` is None when no independence reference applies
    (a statistic other than the reference's and no ``reference`` given; ``reference["note"]`` says
    why); ``statistic`` names the score's statistic (:mod:`funcnet.fingerprint.statistics`)."""

    score: float
    p_value: float | None
    verdict: str
    pairs: list[dict]
    null: dict
    thresholds: dict
    victim: dict
    suspect: dict
    params: dict
    timing: dict
    raw_score: float = float("nan")
    curves: list[dict] = field(default_factory=list, repr=False)
    p_chance: float = float("nan")
    reference: dict = field(default_factory=dict)
    statistic: str = DEFAULT_STATISTIC

    def to_dict(self) -> dict:
        return {
            "score": self.score, "p_value": self.p_value, "p_chance": self.p_chance, "reference": self.reference,
            "verdict": self.verdict, "raw_score": self.raw_score, "statistic": self.statistic,
            "thresholds": self.thresholds, "pairs": self.pairs, "null": self.null,
            "victim": self.victim, "suspect": self.suspect, "params": self.params, "timing": self.timing,
            "funcnet_version": __version__,
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        s = json.dumps(self.to_dict(), indent=2, default=json_default)
        if path is not None:
            with atomic_path(path) as tmp:
                tmp.write_text(s)
        return s

    def summary(self, n_pairs: int = 10) -> str:
        if self.p_value is None:
            p_line = f"p-value  n/a    ({self.reference.get('note', 'no independence reference')})"
        else:
            p_line = (f"p-value  {self.p_value:.2g}   (independence: score vs {self.reference.get('n')} independent "
                      f"model pairs, mean {self.reference.get('mean', float('nan')):.3f}, "
                      f"sd {self.reference.get('sd', float('nan')):.3f}; alpha {self.thresholds['alpha']})")
        stat = "" if self.statistic == DEFAULT_STATISTIC else f"statistic {self.statistic}; "
        lines = [
            f"victim:  {self.victim.get('spec')} ({self.victim.get('family')}, {self.victim.get('n_layers')} layers)",
            f"suspect: {self.suspect.get('spec')} ({self.suspect.get('family')}, {self.suspect.get('n_layers')} layers)",
            f"score    {self.score:.3f}   ({stat}derived >= {self.thresholds['t_high']:.2f}, independent < "
            f"{self.thresholds['t_low']:.2f}; without token-identity control {self.raw_score:.3f})",
            p_line,
            f"p-chance {self.p_chance:.4f}   (shares more than token identity? null: {self.null['n']} "
            f"{'/'.join(self.null.get('by_kind', {})) or 'null'} draws, control {self.params.get('control', 'none')}, "
            f"mean {self.null['mean']:.3f}, sd {self.null['sd']:.3f}, max {self.null['max']:.3f})",
            f"verdict  {self.verdict.upper()}",
            "",
            "top matched networks (victim seed:net  suspect seed:net  rho)",
        ]
        for p in self.pairs[:n_pairs]:
            lines.append(f"  {p['victim']:>8}  {p['suspect']:>8}  {p['rho']:+.3f}")
        return "\n".join(lines)


def _pooled(prof: Profile) -> list[np.ndarray]:
    """Per probe: the time courses of every network of every seed, [n_seeds * k, n_units]."""
    out = []
    for p in range(len(prof.probes)):
        x = prof.probe_timecourses(p).astype(np.float64)
        out.append(x.reshape(-1, x.shape[-1]))
    return out


def _labels(prof: Profile) -> list[str]:
    return [f"{s}:{j}" for s in range(prof.n_seeds) for j in range(prof.n_networks)]


def _word_types(prof: Profile) -> np.ndarray:
    """Integer type id of every text unit of the profile (the unit's exact string, over all probes)."""
    ids: dict[str, int] = {}
    out = np.empty(len(prof.unit_spans), dtype=np.int64)
    for p, text in enumerate(prof.probes):
        for i in range(int(prof.unit_offsets[p]), int(prof.unit_offsets[p + 1])):
            a, b = prof.unit_spans[i]
            out[i] = ids.setdefault(text[a:b], len(ids))
    return out


#: Position control: bins of relative position per probe (see _remove_identity).
POSITION_BINS = 10


def _remove_identity(X: np.ndarray, types: np.ndarray, offsets: np.ndarray | None = None,
                     position_bins: int = POSITION_BINS, iters: int = 6) -> np.ndarray:
    """Token-identity control. Rows of X [K, N] are time courses pooled over probes (probe p owns
    columns offsets[p]:offsets[p+1]). Fits, per time course, an additive model

        value(unit) ~ a[word type of the unit] + b[probe, relative-position bin of the unit]

    (least squares by backfitting) and returns the residual: the part of the network's activity that
    is neither a function of *which word* is present nor of *where in the text* it is. These two are
    what any model run on the same text shares; the residual is what the model computes from context.
    Units whose type occurs only once (among covered units) have no such part and become NaN."""
    X = np.asarray(X, dtype=np.float64)
    ok = np.isfinite(X).all(0)
    out = np.full_like(X, np.nan)
    if not ok.any():
        return out
    groups = [types[ok]]
    if offsets is not None and position_bins > 0:
        offsets = np.asarray(offsets)
        probe = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        rel = np.concatenate([(np.arange(b - a) + 0.5) / max(b - a, 1) for a, b in zip(offsets[:-1], offsets[1:])])
        bins = probe * position_bins + np.minimum((rel * position_bins).astype(np.int64), position_bins - 1)
        groups.append(bins[ok])
    R = X[:, ok].copy()
    for _ in range(iters if len(groups) > 1 else 1):
        for g in groups:
            n = int(g.max()) + 1
            cnt = np.bincount(g, minlength=n).astype(np.float64)
            sums = np.zeros((n, R.shape[0]))
            np.add.at(sums, g, R.T)
            R -= (sums / np.maximum(cnt, 1.0)[:, None]).T[:, g]
    counts = np.bincount(groups[0], minlength=int(types.max()) + 1)
    R[:, counts[groups[0]] < 2] = np.nan
    out[:, ok] = R
    return out


def _split(X: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [X[:, offsets[p]:offsets[p + 1]] for p in range(len(offsets) - 1)]


def _within_type_permutation(types: np.ndarray, rng) -> np.ndarray:
    """A permutation of unit indices that only exchanges units of the same word type."""
    n = len(types)
    order = np.lexsort((rng.random(n), types))  # shuffled within each type, types contiguous
    by_type = np.argsort(types, kind="stable")  # original positions, types contiguous (same layout)
    perm = np.empty(n, dtype=np.int64)
    perm[by_type] = order
    return perm


CONTROLS = ("word-identity", "none")


def compare(
    victim,
    suspect,
    *,
    tokenizer=None,
    n_null: int = 200,
    top: int | None = None,
    alpha: float = ALPHA,
    t_high: float = T_HIGH,
    t_low: float = T_LOW,
    suspect_profile: Profile | None = None,
    seed: int = 0,
    control: str = "word-identity",
    reference: Sequence[float] | None = None,
    statistic: str = DEFAULT_STATISTIC,
    device=None,
    in_memory: bool | None = None,
    workdir: str | os.PathLike | None = None,
) -> FingerprintResult:
    """Compare a victim profile (a :class:`Profile` or a path) with a suspect model.

    The suspect gets its own profile on the victim's probe texts with the victim's parameters. All
    networks of all ICA seeds of both models are pooled; victim and suspect networks are matched one
    to one (Hungarian on |rho|, rho = Spearman correlation of word-level time courses averaged over
    probes). ``score`` = the ``statistic`` of the matched |rho| of the ``top`` best matched pairs
    (default ``"median"``: their median; ``top`` defaults to k, the number of networks per seed;
    other statistics: :mod:`funcnet.fingerprint.statistics`, ``register_statistic``). The same
    statistic scores every null draw and ``raw_score``. With ``control="word-identity"`` (default)
    the correlations are computed on time courses with the word-type and position means removed
    (:func:`_remove_identity`), and the null draws exchange the suspect's values among occurrences of the same word type (all networks
    alike); with ``control="none"`` the suspect's time courses are taken from another probe
    (derangement, resampled) or circularly shifted (the old, too easy null).
    ``p_chance`` = (1 + #{null >= score}) / (1 + n_null): does the suspect share more than token
    identity with the victim? (Every trained language model does.) ``p_value``: the independence
    p-value of the score against ``reference`` scores of independent pairs (default
    :data:`REFERENCE_INDEPENDENT`, see :func:`reference_p`). The default reference was computed with
    the ``"median"`` statistic (:data:`REFERENCE_STATISTIC`): with another statistic and no
    ``reference`` given, ``p_value`` is None and ``result.reference["note"]`` says why.
    ``raw_score``: the score without the control. Verdict: derived if p_value < alpha,
    p_chance < alpha and score >= t_high; independent if score < t_low or either p >= alpha;
    inconclusive otherwise (always when p_value is None and the suspect is not independent).
    ``device``, ``in_memory``, ``workdir``: how the suspect is profiled (:func:`profile`: where its
    ICA runs, default the suspect's device; whether its recording stays in memory or streams
    through a temporary store on disk).
    """
    t0 = time.perf_counter()
    stat_fn = get_statistic(statistic)
    need = math.ceil(1.0 / alpha)
    if n_null < need:
        raise FuncnetError(f"n_null={n_null} is too small for alpha={alpha}: the smallest p-value would be "
                           f"1/{n_null + 1}; use n_null >= {need}")
    vp = victim if isinstance(victim, Profile) else Profile.load(victim)
    if suspect_profile is None:
        kw = {k: vp.params[k] for k in ("signals", "n_seeds", "threshold", "max_length", "units", "seed")}
        kw["n_components"] = vp.params.get("n_components_requested")
        if kw["n_components"] is not None:
            kw["n_components"] = vp.params["n_components"]
        try:
            sp = profile(suspect, vp.probes, tokenizer=tokenizer, device=device, in_memory=in_memory,
                         workdir=workdir, **kw)
        except FuncnetError as e:
            raise FuncnetError(f"suspect: {e}") from None
    else:
        sp = suspect_profile
    t1 = time.perf_counter()
    saved = torch.get_num_threads()
    torch.set_num_threads(_threads_for_load())
    try:
        return _compare_profiles(vp, sp, n_null=n_null, top=top, alpha=alpha, t_high=t_high, t_low=t_low,
                                 seed=seed, control=control, reference=reference, statistic=statistic,
                                 stat_fn=stat_fn, t0=t0, t1=t1)
    finally:
        torch.set_num_threads(saved)


def _compare_profiles(vp: Profile, sp: Profile, *, n_null, top, alpha, t_high, t_low, seed, control, reference,
                      statistic, stat_fn, t0, t1) -> FingerprintResult:
    if control not in CONTROLS:
        raise FuncnetError(f"unknown control {control!r}; choose {' or '.join(CONTROLS)}")
    if len(sp.unit_spans) != len(vp.unit_spans) or sp.probes != vp.probes:
        raise FuncnetError("the suspect profile was not made on the victim's probe texts")
    V_raw, S_raw = _pooled(vp), _pooled(sp)
    m = int(top or min(vp.n_networks, sp.n_networks))
    R_raw = _corr_matrix(V_raw, S_raw)
    _, _, rho_raw = _match(R_raw)
    m = max(1, min(m, len(rho_raw)))
    raw_score = float(stat_fn(np.abs(rho_raw), m))
    rng = np.random.default_rng(seed)
    n_probes = len(vp.probes)
    null, kinds = [], []
    if control == "word-identity":
        types = _word_types(vp)
        off = np.asarray(vp.unit_offsets)
        Vc = _remove_identity(np.concatenate(V_raw, axis=1), types, off)
        Sc = _remove_identity(np.concatenate(S_raw, axis=1), types, off)
        V, S = _split(Vc, off), _split(Sc, off)
        try:
            R = _corr_matrix(V, S)
        except FuncnetError:
            raise FuncnetError("too few repeated words in the probe texts for the word-identity control "
                               "(use more or longer probes, or control='none')") from None
        rows, cols, rho = _match(R)
        score = float(stat_fn(np.abs(rho), m))
        # null: the suspect's values exchanged among occurrences of the same word (all networks
        # alike). It keeps everything a model can know from token identity alone and breaks the rest.
        common = [np.isfinite(v).all(0) & np.isfinite(x).all(0) for v, x in zip(V, S)]
        Vr = [_rank_rows(v[:, ok]) if ok.sum() >= 5 else None for v, ok in zip(V, common)]
        fin = np.isfinite(Sc).all(0)
        idx_fin = np.nonzero(fin)[0]
        for i in range(n_null):
            perm = idx_fin[_within_type_permutation(types[fin], rng)]
            Sp = Sc.copy()
            Sp[:, idx_fin] = Sc[:, perm]
            acc, cnt = 0.0, 0
            for p_ in range(n_probes):
                if Vr[p_] is None:
                    continue
                acc = acc + _mm(Vr[p_], _rank_rows(Sp[:, off[p_]:off[p_ + 1]][:, common[p_]]).T)
                cnt += 1
            if cnt == 0:
                continue
            _, _, rn = _match(acc / cnt)
            null.append(float(stat_fn(np.abs(rn), m)))
            kinds.append("within-word-type")
    else:
        V, S = V_raw, S_raw
        rows, cols, rho = _match(R_raw)
        score = raw_score
        # null (no token-identity control): suspect time courses of another probe or circularly shifted
        own = [np.isfinite(v).all(0) for v in V]
        Vr_own = [_rank_rows(v[:, ok]) if ok.sum() >= 5 else None for v, ok in zip(V, own)]
        common = [np.isfinite(v).all(0) & np.isfinite(x).all(0) for v, x in zip(V, S)]
        Vr_com = [_rank_rows(v[:, ok]) if ok.sum() >= 5 else None for v, ok in zip(V, common)]
        S_own = [x[:, np.isfinite(x).all(0)] for x in S]
        for i in range(n_null):
            acc, cnt = 0.0, 0
            if n_probes >= 2 and i % 2 == 0:
                perm = _derangement(n_probes, rng)
                for p_ in range(n_probes):
                    src = S_own[perm[p_]]
                    if Vr_own[p_] is None or src.shape[1] < 2:
                        continue
                    acc = acc + _mm(Vr_own[p_], _rank_rows(_resample(src, Vr_own[p_].shape[1])).T)
                    cnt += 1
                kind = "probe-shuffle"
            else:
                for p_ in range(n_probes):
                    if Vr_com[p_] is None:
                        continue
                    x = S[p_][:, common[p_]]
                    n = x.shape[1]
                    shift = int(rng.integers(max(1, n // 10), max(2, n - n // 10)))
                    acc = acc + _mm(Vr_com[p_], _rank_rows(np.roll(x, shift, axis=1)).T)
                    cnt += 1
                kind = "circular-shift"
            if cnt == 0:
                continue
            _, _, rn = _match(acc / cnt)
            null.append(float(stat_fn(np.abs(rn), m)))
            kinds.append(kind)
    null = np.asarray(null)
    p_chance = float((1 + np.sum(null >= score)) / (1 + len(null)))
    if reference is None and statistic != REFERENCE_STATISTIC:
        p_value, ref_info = None, {
            "note": f"no independence reference for statistic {statistic!r}: REFERENCE_INDEPENDENT was computed "
                    f"with {REFERENCE_STATISTIC!r} (pass reference= scores of independent pairs)",
            "source": None}
    else:
        p_value, ref_info = reference_p(score, reference)
    if p_value is not None and p_value < alpha and p_chance < alpha and score >= t_high:
        verdict = "derived"
    elif score < t_low or (p_value is not None and p_value >= alpha) or p_chance >= alpha:
        verdict = "independent"
    else:
        verdict = "inconclusive"
    t2 = time.perf_counter()

    vl, sl = _labels(vp), _labels(sp)
    pairs = [{"victim": vl[r], "suspect": sl[c], "rho": float(x)} for r, c, x in zip(rows, cols, rho)]
    kinds_arr = np.asarray(kinds[:len(null)])
    null_stats = {"n": int(len(null)), "mean": float(null.mean()) if len(null) else float("nan"),
                  "sd": float(null.std()) if len(null) else float("nan"),
                  "max": float(null.max()) if len(null) else float("nan"),
                  "z": float((score - null.mean()) / max(null.std(), 1e-12)) if len(null) else float("nan"),
                  "by_kind": {k: {"mean": float(null[kinds_arr == k].mean()), "max": float(null[kinds_arr == k].max())}
                              for k in sorted(set(kinds_arr.tolist()))}}
    curves = []
    for r, c, x in list(zip(rows, cols, rho))[:6]:
        pr = int(np.argmax([len(v[0]) for v in V]))  # longest probe
        curves.append({"victim": vl[r], "suspect": sl[c], "rho": float(x), "probe": pr,
                       "victim_tc": V[pr][r].tolist(), "suspect_tc": S[pr][c].tolist()})
    sp_model = dict(sp.model)
    return FingerprintResult(
        score=score, p_value=p_value, p_chance=p_chance, reference=ref_info, verdict=verdict, pairs=pairs,
        null=null_stats,
        thresholds={"t_high": t_high, "t_low": t_low, "alpha": alpha, "top": m}, raw_score=raw_score,
        victim=dict(vp.model), suspect=sp_model, statistic=statistic,
        params={**vp.params, "n_null": n_null, "n_probes": n_probes, "control": control},
        timing={"suspect_profile_s": round(t1 - t0, 3), "compare_s": round(t2 - t1, 3),
                "total_s": round(time.perf_counter() - t0, 3)},
        curves=curves,
    )


def _derangement(n: int, rng) -> np.ndarray:
    while True:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            return p


def plot_matched(result: FingerprintResult, path: str | os.PathLike, n: int = 4) -> Path:
    """Plot the best matched victim/suspect time courses (z-scored, sign-aligned) on one probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = result.curves[:n]
    if not curves:
        raise FuncnetError("the result has no matched time courses to plot")
    fig, axes = plt.subplots(len(curves), 1, figsize=(10, 1.9 * len(curves) + 0.6), squeeze=False)
    for ax, c in zip(axes[:, 0], curves):
        v = np.asarray(c["victim_tc"], float)
        s = np.asarray(c["suspect_tc"], float) * (1 if c["rho"] >= 0 else -1)
        z = lambda x: (x - np.nanmean(x)) / (np.nanstd(x) or 1.0)  # noqa: E731
        ax.plot(z(v), lw=1.2, label=f"victim {c['victim']}")
        ax.plot(z(s), lw=1.2, alpha=0.8, label=f"suspect {c['suspect']}")
        ax.set_ylabel("z")
        ax.set_title(f"rho = {c['rho']:+.2f} (probe {c['probe']})", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("word of the probe text")
    p_text = "n/a" if result.p_value is None else f"{result.p_value:.3g}"
    fig.suptitle(f"{result.verdict}: score {result.score:.3f}, p = {p_text}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
