"""Fingerprint profiles: the victim side of a functional-network fingerprint.

``profile(victim)`` records the model on a few probe texts (:data:`DEFAULT_PROBES` or your own),
decomposes its activations into functional networks with spatial ICA (several seeds), and keeps each
network's *time course* on every probe, aggregated onto words of the text (:func:`unit_spans`,
:func:`tokens_to_units`), so models with different tokenizers can be compared. A :class:`Profile` is
one small self-describing file (safetensors tensors + JSON metadata, :data:`FORMAT_NAME` version
:data:`FORMAT_VERSION`)::

    prof = profile("smollm2-135m")
    prof.save("victim.fnf")

The comparison with a suspect is :func:`funcnet.fingerprint.compare`.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from funcnet._defaults import FINGERPRINT_SIGNALS
from funcnet._version import __version__
from funcnet.core._io import atomic_path
from funcnet.core.loaded import input_device
from funcnet.core.models import as_loaded
from funcnet.data.corpus import Corpus, Document, tokenize
from funcnet.data.record import collect, record
from funcnet.errors import FuncnetError
from funcnet.networks.canica import ColumnBlocks, ICAConvergenceWarning, fit_seeds

log = logging.getLogger(__name__)

FORMAT_NAME = "funcnet-fingerprint-profile"
FORMAT_VERSION = 1

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
SIGNAL_CHOICES = FINGERPRINT_SIGNALS


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
def _standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit (column) mean and sd over the tokens (rows) of X, in float32; an sd below 1e-6
    counts as 1 (constant units stay 0)."""
    X = np.asarray(X, dtype=np.float32)
    mu, sd = X.mean(0), X.std(0)
    sd[sd < 1e-6] = 1.0
    return mu, sd


def _standardize(X: np.ndarray, mu: np.ndarray, sd: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """(X - mu) / sd in float32, clipped to +-8: massive outlier activations (attention sinks) would
    dominate the decomposition. ``inplace``: X is a float32 copy of one's own, overwritten."""
    if inplace and isinstance(X, np.ndarray) and X.dtype == np.float32:
        Z = X
        Z -= mu
    else:
        Z = np.subtract(np.asarray(X, dtype=np.float32), mu, dtype=np.float32)
    Z /= sd
    np.clip(Z, -8.0, 8.0, out=Z)
    return Z


#: ICA engine of the fingerprint: funcnet.ica.CanICA, the papers' recipe (``method="reference"``:
#: Gram-matrix PCA to k, symmetric FastICA with the cube contrast), one run per seed, float32.
#: Profiles written before 2026-11-28 say ``backend="internal"`` (the same recipe in a private
#: implementation, unmixing estimated on 6,000 units); they are read as they are and their
#: suspects are decomposed with CanICA (the two gave the same scores to within 0.002 on the suite's
#: fine-tuned and Gemma suspects).
ICA_BACKEND = "canica"


def _ica_maps(Z, k: int, seeds: Sequence[int], device="cpu") -> list[np.ndarray]:
    """One [k, F] array of z-scored spatial maps (heaviest tail positive) per seed, from
    :class:`funcnet.networks.CanICA` (units are the samples: spatial ICA) on the standardized
    activations ``Z``: a float32 [tokens, units] array, or column blocks (zero-argument callables,
    one per layer and signal, returning float32 [tokens, width]) read one at a time. The
    reduction is computed once for all seeds (:func:`funcnet.networks.fit_seeds`), on ``device``."""
    params = dict(n_components=k, n_init=1, fun="cube", method="reference", standardize=False,
                  dtype=torch.float32, device=str(device))
    blocks = not isinstance(Z, np.ndarray)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ICAConvergenceWarning)
        try:
            ests = fit_seeds(ColumnBlocks(Z) if blocks else Z, seeds, params)
        except FuncnetError as e:
            # float32 data: CanICA's reduction counts eigenvalues below 1e-5 x the largest as
            # rank-deficient; a steep spectrum (small, barely trained models) hits that before k.
            # Redo the reduction in float64 (tolerance 1e-10), as the private recipe did.
            if "rank" not in str(e):
                raise
            Z64 = (ColumnBlocks([lambda f=f: np.asarray(f(), np.float64) for f in Z]) if blocks
                   else np.asarray(Z, dtype=np.float64))
            ests = fit_seeds(Z64, seeds, params)
    for w in caught[:1]:
        log.info("fingerprint ICA: %s", w.message)
    maps = [np.asarray(est.components_, dtype=np.float64) for est in ests]
    del ests        # their [units, k] subspaces and projectors
    return maps


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


#: recordings of all layers up to this size (float32) are profiled in memory, all layers side by side
#: (as before streaming existed, bit for bit); larger ones go to a temporary activation store on
#: disk and are read one layer at a time
IN_MEMORY_BYTES = 128 << 20
#: largest float32 activations of one recording batch (all layers; the recorder keeps a batch's
#: layers until it writes them) when streaming to disk: fewer sequences per batch for large models
BATCH_BYTES = 256 << 20


class _Recording:
    """Every layer's activations on the probes as float32 column blocks [tokens, width], one per
    (layer, signal) in feature order (signals in order, then layers): in memory, or in a temporary
    float32 activation store (removed by :meth:`close`). ``spans`` [T, 2] char spans of every
    token, ``ranges`` {probe: (first token, end)}."""

    def __init__(self, keys, widths, spans, ranges, arrays=None, store=None, tmp=None):
        self.keys, self.widths, self.spans, self.ranges = keys, widths, spans, ranges
        self.arrays, self.store, self._tmp = arrays, store, tmp

    @property
    def in_memory(self) -> bool:
        return self.store is None

    @property
    def n_features(self) -> int:
        return int(sum(self.widths))

    @property
    def columns(self) -> list[slice]:
        off = np.concatenate([[0], np.cumsum(self.widths)])
        return [slice(int(a), int(b)) for a, b in zip(off[:-1], off[1:])]

    def block(self, i: int) -> np.ndarray:
        l, s = self.keys[i]
        if self.arrays is not None:
            return self.arrays[(l, s)]
        return self.store.layer_float(l, s)

    def concatenated(self) -> np.ndarray:
        return np.concatenate([self.block(i) for i in range(len(self.keys))], axis=1)

    def close(self) -> None:
        self.arrays = self.store = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _record(lm, probes: list[str], signals: str, max_length: int, *, in_memory: bool | None = None,
            workdir=None) -> _Recording:
    """Activations of all layers on the probes, token spans, and per-probe token ranges: in memory
    up to :data:`IN_MEMORY_BYTES` (``in_memory=None``), else streamed to a temporary float32 store
    in ``workdir`` (default: the system's temp folder), one batch at a time."""
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
    keys = [(l, s) for s in sig for l in range(lm.n_layers)]        # feature order: signal, then layer
    widths = [int(lm.adapter.signal_width(lm.model, l, s)) for l, s in keys]
    n_tok = sum(len(s.input_ids) for s in tok.sequences)
    if in_memory is None:
        in_memory = n_tok * sum(widths) * 4 <= IN_MEMORY_BYTES
    spans = np.concatenate([np.asarray(s.char_spans, np.int64).reshape(-1, 2) for s in tok.sequences])
    lengths = [len(s.input_ids) for s in tok.sequences]
    doc_of = [int(s.doc_ids[0]) for s in tok.sequences]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    ranges = {d: (int(bounds[i]), int(bounds[i + 1])) for i, d in enumerate(doc_of)}
    tmp = None
    try:
        if in_memory:
            arrays = collect(lm, tok, signals=sig, layers="all", batch_size=4, max_length=max_length)
            return _Recording(keys, widths, spans, ranges, arrays=arrays)
        # one batch of sequences holds every layer's activations until it is written: keep it bounded
        batch = int(max(1, min(4, BATCH_BYTES // max(1, max(lengths) * sum(widths) * 4))))
        tmp = tempfile.TemporaryDirectory(prefix="funcnet-fingerprint-", dir=workdir)
        store = record(lm, tok, out=os.path.join(tmp.name, "store"), signals=sig, layers="all", batch_size=batch,
                       max_length=max_length, dtype="float32", progress=False)
        return _Recording(keys, widths, spans, ranges, store=store, tmp=tmp)
    except FuncnetError:
        if tmp is not None:
            tmp.cleanup()
        raise
    except Exception as e:
        if tmp is not None:
            tmp.cleanup()
        raise FuncnetError(f"the model cannot run the probe texts: {type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160] if str(e) else ''}") from None


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
    device=None,
    in_memory: bool | None = None,
    workdir: str | os.PathLike | None = None,
) -> Profile:
    """Fingerprint profile of ``model`` (spec, LoadedModel, or HF model with ``tokenizer``).

    Records every layer's ``signals`` ("residual" block outputs, MLP "neurons", or "both") on the
    probe texts (default: :data:`DEFAULT_PROBES`), z-scores each unit over tokens, decomposes with
    spatial ICA for ``n_seeds`` seeds (k = ``n_components``, default 64 capped by the data), keeps
    the units with map z > ``threshold`` (sign-aware) as each network's key units, and stores every
    network's time course (signed mean of its key units per token) aggregated onto ``units``.

    Memory: a recording (tokens x units x 4 bytes) of up to :data:`IN_MEMORY_BYTES` (128 MiB) is
    profiled in memory, all layers side by side, exactly as before streaming existed (peak a few
    times the recording). A larger one is streamed to a temporary float32 activation store in
    ``workdir`` (default: the system's temp folder; tokens x units x 4 bytes of disk) and handled
    one layer (and signal) at a time: the ICA holds one layer's block, the token x token Gram
    matrix and the [units, k] subspace, so memory does not grow with the layers beyond that
    subspace and the maps (``in_memory`` True / False forces either path; the two agree to
    FastICA's tolerance, docs/fingerprint.md). ``device`` (default: the model's input device):
    where the ICA runs.
    ``keep``: a dict that receives the raw recording (``X`` [tokens, units], token spans, ranges;
    this puts all layers in memory at once).
    Runs with the torch threads the machine's load leaves free (:func:`_threads_for_load`).
    """
    saved = torch.get_num_threads()
    threads = _threads_for_load()
    torch.set_num_threads(threads)
    try:
        prof = _profile(model, probes, tokenizer=tokenizer, signals=signals, n_components=n_components,
                        n_seeds=n_seeds, threshold=threshold, max_length=max_length, units=units, seed=seed,
                        keep=keep, device=device, in_memory=in_memory, workdir=workdir)
    finally:
        torch.set_num_threads(saved)
    prof.meta["torch_threads"] = threads
    return prof


class _Standardized:
    """The probe recording's blocks z-scored per unit over the tokens that take part (``use``),
    with each block's mean / sd computed once (float32, as :func:`_standardizer`)."""

    def __init__(self, rec: _Recording, use: np.ndarray):
        self.rec, self.use = rec, use
        self.stats: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _stats(self, i: int, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if i not in self.stats:
            if not np.isfinite(X).all():
                raise FuncnetError("the model produced NaN or infinite activations on the probe texts")
            self.stats[i] = _standardizer(X[self.use])
        return self.stats[i]

    def used(self, i: int) -> np.ndarray:
        """Block i, standardized, rows of the tokens that take part (what the ICA decomposes)."""
        X = self.rec.block(i)
        mu, sd = self._stats(i, X)
        return _standardize(X[self.use], mu, sd, inplace=True)     # X[use] is a copy

    def all_tokens(self, i: int) -> np.ndarray:
        """Block i, standardized with the same mean / sd, every token."""
        X = self.rec.block(i)
        mu, sd = self._stats(i, X)
        return _standardize(X, mu, sd)


def _profile(model, probes, *, tokenizer, signals, n_components, n_seeds, threshold, max_length, units, seed,
             keep, device=None, in_memory=None, workdir=None) -> Profile:
    t0 = time.perf_counter()
    if signals not in SIGNAL_CHOICES:
        raise FuncnetError(f"unknown signals {signals!r}; choose residual, neurons or both")
    if units not in UNIT_PATTERNS:
        raise FuncnetError(f"unknown units {units!r}; choose words or chars")
    if n_seeds < 1:
        raise FuncnetError("n_seeds must be at least 1")
    if workdir is not None and not Path(workdir).is_dir():
        raise FuncnetError(f"workdir {str(workdir)!r} is not a folder")
    probes = _check_probes(probes)
    lm = as_loaded(model, tokenizer)
    dev = torch.device(device) if device is not None else input_device(lm.model)
    rec = _record(lm, probes, signals, max_length, in_memory=in_memory, workdir=workdir)
    try:
        return _profile_recording(lm, rec, probes, signals=signals, n_components=n_components, n_seeds=n_seeds,
                                  threshold=threshold, max_length=max_length, units=units, seed=seed, keep=keep,
                                  dev=dev, t0=t0)
    finally:
        rec.close()


def _probe_courses(tc, s, p, tok_tc, tok_spans, use, ranges, unit_offsets, per_probe_units) -> None:
    """Word-level time courses of seed s on probe p from its token time courses [T_p, k]."""
    a, b = ranges[p]
    spans_p = tok_spans[a:b].copy()
    spans_p[~use[a:b]] = 0  # excluded tokens do not cover any unit
    tc[s, :, unit_offsets[p]:unit_offsets[p + 1]] = tokens_to_units(tok_tc, spans_p, per_probe_units[p]).T


def _profile_recording(lm, rec: _Recording, probes, *, signals, n_components, n_seeds, threshold, max_length,
                       units, seed, keep, dev, t0) -> Profile:
    tok_spans, ranges = rec.spans, rec.ranges
    feat_keys = [f"{l}:{s}" for l, s in rec.keys]
    if keep is not None:  # hand the raw recording to the caller (baselines in the benchmark)
        X = rec.concatenated()
        if not np.isfinite(X).all():
            raise FuncnetError("the model produced NaN or infinite activations on the probe texts")
        keep.update(X=X, token_spans=tok_spans, ranges=ranges, features=feat_keys)
        del X
    # tokens that take part: not special (empty span), not the first token of a probe (attention sink)
    use = tok_spans[:, 1] > tok_spans[:, 0]
    for a, b in ranges.values():
        nz = np.nonzero(use[a:b])[0]
        if len(nz) > 1:
            use[a + nz[0]] = False
    std = _Standardized(rec, use)
    n_tok, n_feat = int(use.sum()), rec.n_features
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
    if rec.in_memory:
        # a small recording: all layers side by side, the computation of the all-in-RAM profile
        # (bit for bit; the ICA's reduction is shared by the seeds), peak a few times the recording
        Xf = rec.concatenated()
        rec.arrays = None
        if not np.isfinite(Xf).all():
            raise FuncnetError("the model produced NaN or infinite activations on the probe texts")
        mu, sd = _standardizer(Xf[use])
        maps = _ica_maps(_standardize(Xf[use], mu, sd, inplace=True), k, seeds, dev)
    else:
        # streamed: one layer (and signal) at a time from the temporary store
        maps = _ica_maps([functools.partial(std.used, i) for i in range(len(rec.keys))], k, seeds, dev)
    t2 = time.perf_counter()
    all_spans = []
    unit_offsets = [0]
    per_probe_units = []
    for p, text in enumerate(probes):
        sp = unit_spans(text, units)
        per_probe_units.append(sp)
        all_spans.append(sp)
        unit_offsets.append(unit_offsets[-1] + len(sp))
    # key units and their weights (sign / count) for every seed's networks
    key_units: list[list[np.ndarray]] = []
    key_weights: list[list[np.ndarray]] = []
    min_units = 3
    for s in range(n_seeds):
        M, maps[s] = maps[s], None
        keys_s, w_s = [], []
        for j in range(k):
            m = M[j]
            idx = np.nonzero(np.abs(m) > threshold)[0]
            if len(idx) < min_units:
                idx = np.argsort(-np.abs(m))[:min_units]
            idx = np.sort(idx)
            keys_s.append(idx.astype(np.int64))
            w_s.append((np.sign(m[idx]) / len(idx)).astype(np.float32))
        key_units.append(keys_s)
        key_weights.append(w_s)
        del M

    def dense_weights(lo: int, hi: int, seeds) -> np.ndarray:
        """[hi - lo, len(seeds) x k] float32 weights of units lo..hi-1 (zero off the key units)."""
        W = np.zeros((hi - lo, len(seeds) * k), dtype=np.float32)
        for c, s in enumerate(seeds):
            for j in range(k):
                idx, w = key_units[s][j], key_weights[s][j]
                a, b = np.searchsorted(idx, [lo, hi])
                W[idx[a:b] - lo, c * k + j] = w[a:b]
        return W
    # token time courses: the standardized activations of all tokens (incl. the excluded ones, with
    # the same mean / sd) times the weights
    tc = np.full((n_seeds, k, unit_offsets[-1]), np.nan, dtype=np.float32)
    if rec.in_memory:   # per seed and probe, as the all-in-RAM profile did
        for s in range(n_seeds):
            W = dense_weights(0, n_feat, [s])
            for p in range(len(probes)):
                a, b = ranges[p]
                Zp = _standardize(Xf[a:b], mu, sd)
                tok_tc = (torch.from_numpy(Zp) @ torch.from_numpy(W)).numpy()  # [T_p, k]
                _probe_courses(tc, s, p, tok_tc, tok_spans, use, ranges, unit_offsets, per_probe_units)
        del Xf
    else:               # block by block, summed in float64 (on the ICA's device)
        tok_tc = torch.zeros(len(tok_spans), n_seeds * k, dtype=torch.float64, device=dev)
        for i, cs in enumerate(rec.columns):
            W = dense_weights(cs.start, cs.stop, range(n_seeds))      # this block's rows only
            nz = np.flatnonzero(W.any(axis=1))
            if len(nz) == 0:
                continue
            Zb = std.all_tokens(i)
            tok_tc += (torch.from_numpy(np.ascontiguousarray(Zb[:, nz])).to(dev)
                       @ torch.from_numpy(W[nz]).to(dev)).double()
            del Zb
        tok_tc = tok_tc.float().cpu().numpy()
        for s in range(n_seeds):
            for p in range(len(probes)):
                a, b = ranges[p]
                _probe_courses(tc, s, p, tok_tc[a:b, s * k:(s + 1) * k], tok_spans, use, ranges, unit_offsets,
                               per_probe_units)
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
            "recording": "memory" if rec.in_memory else "disk", "ica_device": str(dev),
            "timing_s": {"record": round(t1 - t0, 3), "ica": round(t2 - t1, 3),
                         "total": round(time.perf_counter() - t0, 3)}}
    return Profile(probes=list(probes), timecourses=tc, unit_offsets=np.asarray(unit_offsets, np.int64),
                   unit_spans=np.concatenate(all_spans) if all_spans else np.zeros((0, 2), np.int64),
                   key_units=key_units, params=params, model=model_info, meta=meta)
