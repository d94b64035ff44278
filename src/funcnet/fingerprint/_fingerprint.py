"""Functional-network fingerprints (FNF): does a suspect model derive from a victim model?

``profile(victim)`` records the victim on a few probe texts, decomposes its activations into
functional networks with spatial ICA (several seeds), and keeps each network's *time course* on
every probe, aggregated onto words of the text (so models with different tokenizers can be compared).
``compare(profile, suspect)`` builds the suspect's own networks on the same texts, correlates every
victim network with every suspect network (Spearman, averaged over probes), matches them one to one
(Hungarian, sign-free), and turns the matched correlations into a score (median matched |rho| of
the top k), p-values and a verdict:
``derived``, ``independent`` or ``inconclusive``. See docs/fingerprint.md.

Token-identity control (default ``control="word-identity"``): before correlating, each word-level
time course loses the part explained by *which word* is present and *where* in the probe it is
(additive word-type + position-bin means); any two models run on the same text share that part
(two barely trained independent models scored 0.72 without it).

Two p-values: ``p_value`` (the verdict's) compares the score with the scores of independent model
pairs shipped in :data:`REFERENCE_INDEPENDENT` (Student-t prediction test, :func:`reference_p`);
``p_chance`` comes from a permutation null that exchanges the suspect's values among occurrences of
the same word (it keeps everything token identity can explain, and every trained model beats it).

A profile is one small self-describing file (safetensors tensors + JSON metadata)::

    prof = profile("smollm2-135m")
    prof.save("victim.fnf")
    res = compare("victim.fnf", "my-suspect-model")
    print(res.verdict, res.score, res.p_value)
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from funcnet.core._io import json_default
from funcnet.errors import FuncnetError
from funcnet._version import __version__
from funcnet.core._io import atomic_path
from funcnet.core.models import as_loaded
from funcnet.data.corpus import Corpus, Document, tokenize
from funcnet.data.record import collect
from funcnet.networks.canica import CanICA, ICAConvergenceWarning

log = logging.getLogger(__name__)

FORMAT_NAME = "funcnet-fingerprint-profile"
FORMAT_VERSION = 1

#: Verdict thresholds on the score (matched |rho| of the top networks); calibrated on the
#: robustness suite (benchmarks/fingerprint_suite.py, docs/fingerprint.md).
T_HIGH = 0.50
T_LOW = 0.45
ALPHA = 0.01

#: Reference distribution of the score for *independent* model pairs: the distinct negative pairs
#: of the robustness suite (benchmarks/fingerprint_suite.py; default probes, residual stream,
#: k = 64 capped by the data, 3 ICA seeds, word-identity control). ``compare`` turns the score into
#: the independence p-value ``p_value`` with a Student-t *prediction* test against these numbers
#: (``reference_p``): the probability that a new independent pair, drawn from the same normal
#: distribution as these, scores at least as high. Re-measure them when the score changes.
REFERENCE_INDEPENDENT: tuple[tuple[str, str, float], ...] = (
    ("smollm2-135m", "random-init smollm2-135m architecture", 0.169),
    ("smollm2-135m", "gemma3-270m", 0.326),
    ("smollm2-135m", "tiny-s0-80 (SmolLM2 tokenizer, trained from scratch)", 0.162),
    ("smollm2-135m", "tiny-s1-80", 0.146),
    ("tiny-s0-80", "tiny-s1-80", 0.340),
    ("tiny-s0-80", "random-init tiny architecture", 0.194),
)

#: The built-in probe texts: diverse prose, code, math, dialogue, lists. Short enough that every
#: probe fits in 256 tokens of any common tokenizer. Never change them (profiles store their own
#: probe texts, so older profiles keep working; new defaults would get a new list).
DEFAULT_PROBES: tuple[str, ...] = (
    # 1 narrative prose
    "The lighthouse keeper climbed the narrow stairs every evening at dusk. He carried a small tin of oil, "
    "a cloth, and a notebook in which he wrote down the weather, the ships he saw, and the colour of the sea. "
    "One winter the storms lasted for nine days. The supply boat could not reach the island, so he rationed "
    "his bread and burned old newspapers to keep warm. When the sky finally cleared, he counted fourteen "
    "fishing boats returning to the harbour, and he felt, for the first time in years, that his work mattered.",
    # 2 expository science
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells, chlorophyll "
    "absorbs mostly red and blue light and reflects green, which is why leaves look green. The light-dependent "
    "reactions split water molecules, release oxygen, and produce ATP and NADPH. In the Calvin cycle, the "
    "enzyme RuBisCO fixes carbon dioxide into three-carbon sugars. Although RuBisCO is slow and sometimes "
    "binds oxygen by mistake, it is probably the most abundant protein on Earth.",
    # 3 Python code
    "def merge_sorted(a, b):\n"
    "    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n"
    "    result = []\n"
    "    i = j = 0\n"
    "    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n"
    "            result.append(a[i])\n"
    "            i += 1\n"
    "        else:\n"
    "            result.append(b[j])\n"
    "            j += 1\n"
    "    result.extend(a[i:])\n"
    "    result.extend(b[j:])\n"
    "    return result\n\n\n"
    "print(merge_sorted([1, 4, 9], [2, 3, 10, 11]))\n",
    # 4 arithmetic word problems
    "Q: A train leaves at 9:15 and arrives at 11:40. How long is the journey?\n"
    "A: From 9:15 to 11:15 is 2 hours, and from 11:15 to 11:40 is 25 minutes, so the journey takes "
    "2 hours 25 minutes.\n\n"
    "Q: What is 17 * 24?\nA: 17 * 24 = 17 * 20 + 17 * 4 = 340 + 68 = 408.\n\n"
    "Q: Solve 3x + 7 = 31.\nA: Subtract 7 from both sides: 3x = 24. Divide by 3: x = 8.\n\n"
    "Q: Is 91 a prime number?\nA: No, because 91 = 7 * 13.",
    # 5 dialogue
    "\"Did you lock the back door?\" Maria asked, pulling on her coat.\n"
    "\"I think so,\" said Tom. \"Actually, no. I'm not sure.\"\n"
    "\"You're never sure.\" She sighed and walked back through the kitchen. The door was open, and a cold "
    "wind was blowing leaves across the tiles. \"See? Wide open.\"\n"
    "\"Well, at least the cat didn't get out,\" Tom said.\n"
    "Maria looked around. \"Where is the cat?\"\n"
    "They stared at each other for a long moment, and then both of them ran outside, calling her name.",
    # 6 history / encyclopedic
    "The printing press with movable type was developed in Mainz around 1450 by Johannes Gutenberg. "
    "Earlier presses had been used for pressing grapes and paper, but Gutenberg combined a screw press with "
    "metal type cast in a hand mould and an oil-based ink. By 1500, printers in more than two hundred European "
    "cities had produced millions of books. The cost of books fell sharply, literacy spread, and scholars "
    "could compare identical copies of the same text for the first time.",
    # 7 instructions / list
    "How to repot a houseplant:\n"
    "1. Water the plant a day before, so the roots hold together.\n"
    "2. Choose a new pot that is about two centimetres wider than the old one.\n"
    "3. Put a layer of fresh soil at the bottom.\n"
    "4. Turn the old pot upside down, support the stem between your fingers, and tap the rim gently.\n"
    "5. Loosen circling roots and cut off any that are black or soft.\n"
    "6. Set the plant in the new pot, fill the gaps with soil, and press lightly.\n"
    "7. Water thoroughly and keep it out of direct sun for a week.",
    # 8 data / config
    "{\n  \"name\": \"weather-station\",\n  \"version\": \"2.3.1\",\n  \"sensors\": [\n"
    "    {\"id\": 1, \"type\": \"temperature\", \"unit\": \"celsius\", \"interval\": 60},\n"
    "    {\"id\": 2, \"type\": \"humidity\", \"unit\": \"percent\", \"interval\": 60},\n"
    "    {\"id\": 3, \"type\": \"wind_speed\", \"unit\": \"m/s\", \"interval\": 10}\n  ],\n"
    "  \"upload\": {\"url\": \"https://example.org/api/v1/readings\", \"retries\": 3, \"timeout\": 5.0},\n"
    "  \"enabled\": true\n}",
    # 9 argument / opinion
    "Cities should plant more trees, and not only for their beauty. A mature tree can lower the temperature "
    "of the street beneath it by several degrees on a hot afternoon, which reduces the demand for air "
    "conditioning. Trees absorb rainwater that would otherwise flood the drains, and they filter dust from "
    "the air. Critics say that roots damage pavements and that leaves block gutters. These problems are real, "
    "but they are cheap to solve compared with the costs of heat waves and floods.",
    # 10 algebra / definitions
    "Definition. A function f from a set A to a set B is injective if f(x) = f(y) implies x = y for all x "
    "and y in A. It is surjective if for every b in B there is some a in A with f(a) = b. A function that is "
    "both injective and surjective is called bijective, and it has an inverse function g with g(f(x)) = x. "
    "For example, f(x) = 2x + 1 on the real numbers is bijective, with inverse g(y) = (y - 1) / 2, while "
    "f(x) = x^2 is neither injective nor surjective.",
)

UNIT_PATTERNS = {"words": r"\w+|[^\w\s]+", "chars": r"\S"}
SIGNAL_CHOICES = ("residual", "neurons", "both")


# =============================================================================== text units
def unit_spans(text: str, units: str = "words") -> np.ndarray:
    """Character spans [n, 2] of the shared text units: ``words`` (runs of word characters or of
    punctuation) or ``chars`` (every non-space character)."""
    if units not in UNIT_PATTERNS:
        raise FuncnetError(f"unknown units {units!r}; choose words or chars")
    spans = [(m.start(), m.end()) for m in re.finditer(UNIT_PATTERNS[units], text)]
    return np.asarray(spans, dtype=np.int64).reshape(-1, 2)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b through torch, so the thread count :func:`profile` / :func:`compare` set applies
    (numpy's own BLAS threads spin on busy cores of a shared machine)."""
    return (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
            @ torch.from_numpy(np.ascontiguousarray(b, dtype=np.float64))).numpy()


def tokens_to_units(values: np.ndarray, token_spans: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Aggregate token-level ``values`` [T, K] onto text units: each unit gets the mean of the tokens
    whose character span overlaps it (NaN if no token covers it, e.g. after truncation).

    Tokens with empty spans (BOS and other special tokens) never count. This is how two models with
    different tokenizers get time courses of equal length, aligned on the same words."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    tsp = np.asarray(token_spans, dtype=np.int64).reshape(-1, 2)
    n_units = len(spans)
    out = np.full((n_units, values.shape[1]), np.nan)
    if n_units == 0 or len(tsp) == 0:
        return out
    ts, te = tsp[:, 0], tsp[:, 1]
    valid = te > ts
    us, ue = spans[:, 0], spans[:, 1]
    # overlap[u, t] = token t intersects unit u
    overlap = (ts[None, :] < ue[:, None]) & (te[None, :] > us[:, None]) & valid[None, :]
    counts = overlap.sum(1)
    sums = _mm(overlap.astype(np.float64), np.nan_to_num(values))
    has = counts > 0
    out[has] = sums[has] / counts[has, None]
    return out


# =============================================================================== decomposition
def _standardize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    mu = X.mean(0, keepdims=True)
    sd = X.std(0, keepdims=True)
    sd[sd < 1e-6] = 1.0
    Z = (X - mu) / sd
    # massive outlier activations (attention sinks) would dominate the decomposition
    np.clip(Z, -8.0, 8.0, out=Z)
    return Z


#: ICA engine of the fingerprint: funcnet.ica.CanICA, the papers' recipe (``method="reference"``:
#: Gram-matrix PCA to k, symmetric FastICA with the cube contrast), one run per seed, float32.
#: Profiles written before 2026-11-28 say ``backend="internal"`` (the same recipe in a private
#: implementation, unmixing estimated on 6,000 units); they are read as they are and their
#: suspects are decomposed with CanICA (the two gave the same scores to within 0.002 on the suite's
#: fine-tuned and Gemma suspects).
ICA_BACKEND = "canica"


def _ica_maps(Z: np.ndarray, k: int, seeds: Sequence[int]) -> list[np.ndarray]:
    """One [k, F] array of z-scored spatial maps (heaviest tail positive) per seed, from
    :class:`funcnet.ica.CanICA` (units are the samples: spatial ICA)."""
    import warnings


    out = []
    data = Z
    for s in seeds:
        est = CanICA(n_components=k, n_init=1, fun="cube", method="reference", random_state=int(s),
                     standardize=False, dtype=torch.float32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ICAConvergenceWarning)
            try:
                est.fit(data)
            except FuncnetError as e:
                # float32 data: CanICA's reduction counts eigenvalues below 1e-5 x the largest as
                # rank-deficient; a steep spectrum (small, barely trained models) hits that before k.
                # Redo the reduction in float64 (tolerance 1e-10), as the private recipe did.
                if "rank" not in str(e) or data.dtype == np.float64:
                    raise
                data = np.asarray(Z, dtype=np.float64)
                est.fit(data)
        if caught:
            log.info("fingerprint ICA seed %s: %s", s, caught[0].message)
        out.append(np.asarray(est.components_, dtype=np.float64))
    return out


# =============================================================================== profile
@dataclass
class Profile:
    """Networks of one model on the probe texts, as word-level time courses.

    ``timecourses`` [n_seeds, k, n_units_total] (NaN where no token covers a unit); probe ``p`` owns
    columns ``unit_offsets[p]:unit_offsets[p+1]``; ``unit_spans`` [n_units_total, 2] char spans into
    ``probes[p]``. ``key_units[s][j]`` = indices of the key units (features) of network j of seed s.
    """

    probes: list[str]
    timecourses: np.ndarray
    unit_offsets: np.ndarray
    unit_spans: np.ndarray
    key_units: list[list[np.ndarray]]
    params: dict
    model: dict
    meta: dict = field(default_factory=dict)

    @property
    def n_seeds(self) -> int:
        return int(self.timecourses.shape[0])

    @property
    def n_networks(self) -> int:
        return int(self.timecourses.shape[1])

    def probe_timecourses(self, p: int) -> np.ndarray:
        """[n_seeds, k, n_units of probe p]."""
        return self.timecourses[:, :, self.unit_offsets[p]:self.unit_offsets[p + 1]]

    def __repr__(self) -> str:
        return (f"Profile(model={self.model.get('spec')!r}, {len(self.probes)} probes, "
                f"{self.n_seeds} seeds x {self.n_networks} networks, signals={self.params.get('signals')!r})")

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file


        path = Path(path)
        ku_flat, ku_off = [], [0]
        for per_seed in self.key_units:
            for idx in per_seed:
                ku_flat.append(np.asarray(idx, dtype=np.int64))
                ku_off.append(ku_off[-1] + len(idx))
        tensors = {
            "timecourses": np.ascontiguousarray(self.timecourses, dtype=np.float32),
            "unit_offsets": np.asarray(self.unit_offsets, dtype=np.int64),
            "unit_spans": np.ascontiguousarray(self.unit_spans, dtype=np.int64),
            "key_units": np.concatenate(ku_flat) if ku_flat else np.zeros(0, np.int64),
            "key_unit_offsets": np.asarray(ku_off, dtype=np.int64),
        }
        meta = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "funcnet_version": _version(),
            "model": json.dumps(self.model),
            "params": json.dumps(self.params),
            "probes": json.dumps(self.probes),
            "meta": json.dumps(self.meta, default=str),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Profile":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FuncnetError(f"fingerprint profile {path} does not exist")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT_NAME:
                    raise FuncnetError(f"{path} is not a funcnet fingerprint profile")
                ver = meta.get("format_version")
                if ver != str(FORMAT_VERSION):
                    raise FuncnetError(
                        f"{path} is a fingerprint profile of format version {ver} (written by funcnet "
                        f"{meta.get('funcnet_version')}); this funcnet ({_version()}) reads version {FORMAT_VERSION}: "
                        "re-create it with `funcnet fingerprint profile`")
                t = {k: f.get_tensor(k) for k in f.keys()}
            probes = json.loads(meta["probes"])
            params = json.loads(meta["params"])
            model = json.loads(meta["model"])
            extra = json.loads(meta.get("meta", "{}"))
            tc = t["timecourses"]
            off = t["unit_offsets"]
            spans = t["unit_spans"]
            ko = t["key_unit_offsets"]
            kf = t["key_units"]
        except FuncnetError:
            raise
        except Exception as e:  # safetensors header errors, JSON errors, missing keys
            raise FuncnetError(f"{path} is corrupted or not a fingerprint profile ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'})") from None
        n_seeds, k = (tc.shape[0], tc.shape[1]) if tc.ndim == 3 else (0, 0)
        if (tc.ndim != 3 or len(off) != len(probes) + 1 or off[-1] != tc.shape[2] or len(spans) != tc.shape[2]
                or len(ko) != n_seeds * k + 1 or ko[-1] != len(kf)):
            raise FuncnetError(f"{path} is corrupted: its tensors do not fit together")
        key_units = [[kf[ko[s * k + j]:ko[s * k + j + 1]] for j in range(k)] for s in range(n_seeds)]
        return cls(probes=probes, timecourses=tc.astype(np.float32), unit_offsets=off, unit_spans=spans,
                   key_units=key_units, params=params, model=model, meta=extra)


def _version() -> str:

    return __version__


def _check_probes(probes) -> list[str]:
    if probes is None:
        return list(DEFAULT_PROBES)
    if isinstance(probes, (str, os.PathLike)) and Path(probes).is_file():
        return read_probes(probes)
    if isinstance(probes, str):
        raise FuncnetError("probes must be a list of texts or a file of texts (blank-line separated or .jsonl)")
    probes = list(probes)
    if not probes:
        raise FuncnetError("no probe texts given")
    for i, p in enumerate(probes):
        if not isinstance(p, str):
            raise FuncnetError(f"probe {i} is a {type(p).__name__}, not a string")
        if not re.search(UNIT_PATTERNS["words"], p):
            raise FuncnetError(f"probe {i} has no words (blank or whitespace only)")
    return probes


def read_probes(path: str | os.PathLike) -> list[str]:
    """Probe texts from a file: ``.jsonl`` (one string or {"text": ...} per line) or plain text with
    probes separated by blank lines."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FuncnetError(f"cannot read probe file {path}: {e}") from None
    if path.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise FuncnetError(f"{path}:{n} is not valid JSON") from None
            texts.append(obj["text"] if isinstance(obj, dict) and "text" in obj else obj)
    else:
        texts = [b.strip("\n") for b in re.split(r"\n[ \t]*\n", raw) if b.strip()]
    if not texts:
        raise FuncnetError(f"probe file {path} has no texts")
    return _check_probes(texts)


def _record(lm, probes: list[str], signals: str, max_length: int):
    """Token activations [T, F] of all layers, token spans, and per-probe token ranges."""

    corpus = Corpus("fingerprint-probes", [Document(t, i, f"probe:{i}", "text") for i, t in enumerate(probes)])
    if lm.tokenizer is None:
        raise FuncnetError("the model has no tokenizer: pass a LoadedModel or (model, tokenizer)")
    try:
        tok = tokenize(corpus, lm.tokenizer, max_length=max_length, mode="documents")
    except FuncnetError as e:
        raise FuncnetError(f"the probe texts tokenize to nothing with this tokenizer ({e})") from None
    seen = {int(s.doc_ids[0]) for s in tok.sequences if len(s.doc_ids)}
    missing = [i for i in range(len(probes)) if i not in seen]
    if missing:
        raise FuncnetError(f"probe {missing[0]} tokenizes to nothing (only special tokens) with this tokenizer")
    sig = {"residual": ("residual",), "neurons": ("neurons",), "both": ("residual", "neurons")}[signals]
    try:
        acts = collect(lm, tok, signals=sig, layers="all", batch_size=4, max_length=max_length)
    except FuncnetError:
        raise
    except Exception as e:
        raise FuncnetError(f"the model cannot run the probe texts: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''}") from None
    keys = sorted(acts, key=lambda k: (sig.index(k[1]), k[0]))
    X = np.concatenate([acts[k] for k in keys], axis=1)
    spans = np.concatenate([np.asarray(s.char_spans, np.int64).reshape(-1, 2) for s in tok.sequences])
    lengths = [len(s.input_ids) for s in tok.sequences]
    doc_of = [int(s.doc_ids[0]) for s in tok.sequences]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    ranges = {d: (int(bounds[i]), int(bounds[i + 1])) for i, d in enumerate(doc_of)}
    if not np.isfinite(X).all():
        raise FuncnetError("the model produced NaN or infinite activations on the probe texts")
    return X, spans, ranges, [f"{l}:{s}" for l, s in keys]


def _threads_for_load() -> int:
    """torch threads for profiling: the cores the machine's other work leaves free (at least 1).
    On a shared 2-core machine at load average ~5, two threads made one SmolLM2 profile 4x slower
    in CPU and 4-7x in wall time than one (OpenMP threads waiting for a busy core: record 56 s vs
    8 s, ICA 51 s vs 19 s). ``FUNCNET_FINGERPRINT_THREADS`` overrides."""
    env = os.environ.get("FUNCNET_FINGERPRINT_THREADS")
    if env:
        return max(1, int(env))
    n = torch.get_num_threads()
    try:
        busy = int(round(os.getloadavg()[0]))
    except (OSError, AttributeError):  # no load average on this platform
        return n
    return max(1, min(n, (os.cpu_count() or 1) - busy))


def _max_components(n_tokens: int, n_features: int) -> int:
    return int(max(0, min(n_tokens // 4, n_features // 2)))


def profile(
    model,
    probes: Sequence[str] | str | os.PathLike | None = None,
    *,
    tokenizer=None,
    signals: str = "residual",
    n_components: int | None = None,
    n_seeds: int = 3,
    threshold: float = 3.6,
    max_length: int = 256,
    units: str = "words",
    seed: int = 0,
    keep: dict | None = None,
) -> Profile:
    """Fingerprint profile of ``model`` (spec, LoadedModel, or HF model with ``tokenizer``).

    Records every layer's ``signals`` ("residual" block outputs, MLP "neurons", or "both") on the
    probe texts (default: :data:`DEFAULT_PROBES`), z-scores each unit over tokens, decomposes with
    spatial ICA for ``n_seeds`` seeds (k = ``n_components``, default 64 capped by the data), keeps
    the units with map z > ``threshold`` (sign-aware) as each network's key units, and stores every
    network's time course (signed mean of its key units per token) aggregated onto ``units``.
    ``keep``: a dict that receives the raw recording (``X`` [tokens, units], token spans, ranges).
    Runs with the torch threads the machine's load leaves free (:func:`_threads_for_load`).
    """
    saved = torch.get_num_threads()
    threads = _threads_for_load()
    torch.set_num_threads(threads)
    try:
        prof = _profile(model, probes, tokenizer=tokenizer, signals=signals, n_components=n_components,
                        n_seeds=n_seeds, threshold=threshold, max_length=max_length, units=units, seed=seed,
                        keep=keep)
    finally:
        torch.set_num_threads(saved)
    prof.meta["torch_threads"] = threads
    return prof


def _profile(model, probes, *, tokenizer, signals, n_components, n_seeds, threshold, max_length, units, seed,
             keep) -> Profile:

    t0 = time.perf_counter()
    if signals not in SIGNAL_CHOICES:
        raise FuncnetError(f"unknown signals {signals!r}; choose residual, neurons or both")
    if units not in UNIT_PATTERNS:
        raise FuncnetError(f"unknown units {units!r}; choose words or chars")
    if n_seeds < 1:
        raise FuncnetError("n_seeds must be at least 1")
    probes = _check_probes(probes)
    lm = as_loaded(model, tokenizer)
    X, tok_spans, ranges, feat_keys = _record(lm, probes, signals, max_length)
    if keep is not None:  # hand the raw recording to the caller (baselines in the benchmark)
        keep.update(X=X, token_spans=tok_spans, ranges=ranges, features=feat_keys)
    # tokens that take part: not special (empty span), not the first token of a probe (attention sink)
    use = tok_spans[:, 1] > tok_spans[:, 0]
    for a, b in ranges.values():
        nz = np.nonzero(use[a:b])[0]
        if len(nz) > 1:
            use[a + nz[0]] = False
    Z = _standardize(X[use])
    n_tok, n_feat = Z.shape
    cap = _max_components(n_tok, n_feat)
    if n_components is None:
        k = min(64, cap)
        if k < 2:
            raise FuncnetError(f"too little data for networks: {n_tok} tokens x {n_feat} units "
                               "(give longer or more probe texts)")
    else:
        k = int(n_components)
        if k < 2:
            raise FuncnetError("n_components must be at least 2")
        if k > cap:
            raise FuncnetError(f"too few tokens/units for {k} networks: {n_tok} tokens x {n_feat} units allow "
                               f"at most {cap} (use fewer networks or more/longer probes)")
    seeds = [seed + 1000 * i for i in range(n_seeds)]
    t1 = time.perf_counter()
    maps = _ica_maps(Z, k, seeds)
    t2 = time.perf_counter()
    # standardized activations of all tokens (incl. the excluded ones, with the same mean/sd)
    Xf = np.asarray(X, np.float32)
    mu, sd = Xf[use].mean(0), Xf[use].std(0)
    sd[sd < 1e-6] = 1.0
    all_spans = []
    unit_offsets = [0]
    per_probe_units = []
    for p, text in enumerate(probes):
        sp = unit_spans(text, units)
        per_probe_units.append(sp)
        all_spans.append(sp)
        unit_offsets.append(unit_offsets[-1] + len(sp))
    tc = np.full((n_seeds, k, unit_offsets[-1]), np.nan, dtype=np.float32)
    key_units: list[list[np.ndarray]] = []
    min_units = 3
    for s, M in enumerate(maps):
        keys_s, weights = [], np.zeros((n_feat, k), dtype=np.float32)
        for j in range(k):
            m = M[j]
            idx = np.nonzero(np.abs(m) > threshold)[0]
            if len(idx) < min_units:
                idx = np.argsort(-np.abs(m))[:min_units]
            idx = np.sort(idx)
            keys_s.append(idx.astype(np.int64))
            weights[idx, j] = np.sign(m[idx]) / len(idx)
        key_units.append(keys_s)
        for p in range(len(probes)):
            a, b = ranges[p]
            Zp = np.clip((Xf[a:b] - mu) / sd, -8.0, 8.0)
            tok_tc = (torch.from_numpy(Zp) @ torch.from_numpy(weights)).numpy()  # [T_p, k]
            ok = use[a:b]
            spans_p = tok_spans[a:b].copy()
            spans_p[~ok] = 0  # excluded tokens do not cover any unit
            tc[s, :, unit_offsets[p]:unit_offsets[p + 1]] = tokens_to_units(tok_tc, spans_p, per_probe_units[p]).T
    tok_name = str(getattr(lm.tokenizer, "name_or_path", "") or type(lm.tokenizer).__name__)
    cfg = lm.model.config
    model_info = {
        "spec": lm.spec, "identity": lm.identity, "family": lm.adapter.family, "n_layers": lm.n_layers,
        "model_type": getattr(cfg, "model_type", None), "tokenizer": tok_name, "n_units": int(n_feat),
    }
    params = {"signals": signals, "n_components": k, "n_components_requested": n_components, "n_seeds": n_seeds,
              "threshold": float(threshold), "max_length": int(max_length), "units": units, "seed": int(seed),
              "backend": ICA_BACKEND}
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "n_tokens": int(n_tok),
            "n_probe_tokens": {str(p): int(b - a) for p, (a, b) in ranges.items()},
            "key_unit_counts": [[int(len(i)) for i in ks] for ks in key_units],
            "timing_s": {"record": round(t1 - t0, 3), "ica": round(t2 - t1, 3),
                         "total": round(time.perf_counter() - t0, 3)}}
    return Profile(probes=list(probes), timecourses=tc, unit_offsets=np.asarray(unit_offsets, np.int64),
                   unit_spans=np.concatenate(all_spans) if all_spans else np.zeros((0, 2), np.int64),
                   key_units=key_units, params=params, model=model_info, meta=meta)


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


def _score_from_matched(absr: np.ndarray, top: int) -> float:
    """The score: the *median* |rho| of the ``top`` best matched pairs (``absr`` sorted descending),
    i.e. the |rho| that half of the top-k pairs reach. A derived model shares most of the victim's
    networks; an independent one shares a handful of generic ones (quotes, line breaks, code
    indentation) strongly and the rest weakly. The mean of the top k lets that handful lift an
    independent model's score; the median counts how many networks are shared instead."""
    return float(np.median(absr[:top])) if len(absr) else 0.0


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
    score: float
    p_value: float
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

    def to_dict(self) -> dict:
        return {
            "score": self.score, "p_value": self.p_value, "p_chance": self.p_chance, "reference": self.reference,
            "verdict": self.verdict, "raw_score": self.raw_score,
            "thresholds": self.thresholds, "pairs": self.pairs, "null": self.null,
            "victim": self.victim, "suspect": self.suspect, "params": self.params, "timing": self.timing,
            "funcnet_version": _version(),
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        s = json.dumps(self.to_dict(), indent=2, default=json_default)
        if path is not None:

            with atomic_path(path) as tmp:
                tmp.write_text(s)
        return s

    def summary(self, n_pairs: int = 10) -> str:
        lines = [
            f"victim:  {self.victim.get('spec')} ({self.victim.get('family')}, {self.victim.get('n_layers')} layers)",
            f"suspect: {self.suspect.get('spec')} ({self.suspect.get('family')}, {self.suspect.get('n_layers')} layers)",
            f"score    {self.score:.3f}   (derived >= {self.thresholds['t_high']:.2f}, independent < "
            f"{self.thresholds['t_low']:.2f}; without token-identity control {self.raw_score:.3f})",
            f"p-value  {self.p_value:.2g}   (independence: score vs {self.reference.get('n')} independent model pairs, "
            f"mean {self.reference.get('mean', float('nan')):.3f}, sd {self.reference.get('sd', float('nan')):.3f}; "
            f"alpha {self.thresholds['alpha']})",
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
) -> FingerprintResult:
    """Compare a victim profile (a :class:`Profile` or a path) with a suspect model.

    The suspect gets its own profile on the victim's probe texts with the victim's parameters. All
    networks of all ICA seeds of both models are pooled; victim and suspect networks are matched one
    to one (Hungarian on |rho|, rho = Spearman correlation of word-level time courses averaged over
    probes). ``score`` = mean |rho| of the ``top`` best matched pairs (default: k, the number of
    networks per seed). With ``control="word-identity"`` (default) the correlations are computed on
    time courses with the word-type and position means removed (:func:`_remove_identity`), and the
    null draws exchange the suspect's values among occurrences of the same word type (all networks
    alike); with ``control="none"`` the suspect's time courses are taken from another probe
    (derangement, resampled) or circularly shifted (the old, too easy null).
    ``p_chance`` = (1 + #{null >= score}) / (1 + n_null): does the suspect share more than token
    identity with the victim? (Every trained language model does.) ``p_value``: the independence
    p-value of the score against ``reference`` scores of independent pairs (default
    :data:`REFERENCE_INDEPENDENT`, see :func:`reference_p`). ``raw_score``: the score without the
    control. Verdict: derived if p_value < alpha, p_chance < alpha and score >= t_high; independent
    if score < t_low or either p >= alpha; inconclusive otherwise.
    """
    t0 = time.perf_counter()
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
            sp = profile(suspect, vp.probes, tokenizer=tokenizer, **kw)
        except FuncnetError as e:
            raise FuncnetError(f"suspect: {e}") from None
    else:
        sp = suspect_profile
    t1 = time.perf_counter()
    saved = torch.get_num_threads()
    torch.set_num_threads(_threads_for_load())
    try:
        return _compare_profiles(vp, sp, n_null=n_null, top=top, alpha=alpha, t_high=t_high, t_low=t_low,
                                 seed=seed, control=control, reference=reference, t0=t0, t1=t1)
    finally:
        torch.set_num_threads(saved)


def _compare_profiles(vp: Profile, sp: Profile, *, n_null, top, alpha, t_high, t_low, seed, control, reference,
                      t0, t1) -> FingerprintResult:
    if control not in CONTROLS:
        raise FuncnetError(f"unknown control {control!r}; choose {' or '.join(CONTROLS)}")
    if len(sp.unit_spans) != len(vp.unit_spans) or sp.probes != vp.probes:
        raise FuncnetError("the suspect profile was not made on the victim's probe texts")
    V_raw, S_raw = _pooled(vp), _pooled(sp)
    m = int(top or min(vp.n_networks, sp.n_networks))
    R_raw = _corr_matrix(V_raw, S_raw)
    _, _, rho_raw = _match(R_raw)
    m = max(1, min(m, len(rho_raw)))
    raw_score = _score_from_matched(np.abs(rho_raw), m)
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
        score = _score_from_matched(np.abs(rho), m)
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
            null.append(_score_from_matched(np.abs(rn), m))
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
            null.append(_score_from_matched(np.abs(rn), m))
            kinds.append(kind)
    null = np.asarray(null)
    p_chance = float((1 + np.sum(null >= score)) / (1 + len(null)))
    p_value, ref_info = reference_p(score, reference)
    if p_value < alpha and p_chance < alpha and score >= t_high:
        verdict = "derived"
    elif score < t_low or p_value >= alpha or p_chance >= alpha:
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
        victim=dict(vp.model), suspect=sp_model,
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
    fig.suptitle(f"{result.verdict}: score {result.score:.3f}, p = {result.p_value:.3g}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


