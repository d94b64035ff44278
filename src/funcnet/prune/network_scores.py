"""Functional-network scores for pruning: per-neuron importance from the networks' maps, the
reference keep-the-key-neurons masks, and the networks a pruning run finds for itself."""
from __future__ import annotations

import numpy as np

from funcnet.core.loaded import input_device
from funcnet.core.models import LoadedModel, as_loaded
from funcnet.data.corpus import load_corpus, tokenize
from funcnet.errors import FuncnetError
from funcnet.networks import FunctionalNetworks, decompose, ensure_store
from funcnet.prune.scores import (
    Importance,
    _as_importance,
    _load_networks,
    _need,
    conditional_fluctuation,
    imp_flap,
    imp_wanda_sp,
)

#: functional-network scores of :func:`pruning_importance`; the "fn-flap*" ones also need ``lm`` and ``stats``
FN_SCORES = ("max_abs_z", "max_pos_z", "frequency", "fn-flap", "fn-flap-freq", "fn-wanda")


#: the scores of :func:`pruning_importance` that need the model and calibration statistics
FN_STATS_SCORES = ("fn-flap", "fn-flap-freq", "fn-wanda")


#: the score of pruning method "fn" when the model and calibration statistics are given (else "max_abs_z");
#: chosen on held-out calibration text (docs/pruning.md)
DEFAULT_FN_SCORE = "fn-flap"


def pruning_importance(networks: FunctionalNetworks, lm=None, *, score: str | None = None, threshold: float = 3.6,
                       min_stability: float | None = None, stats=None, z_power: float = 1.0,
                       **_) -> dict[int, np.ndarray]:
    """Per-layer functional-network importance of every MLP neuron (higher = keep).

    score "max_abs_z": the largest |z| the neuron reaches in any map of any group; "max_pos_z":
    the largest positive z; "frequency": in how many (map, group) pairs the neuron is key
    (|z| > threshold), ties broken by max |z|. Layers without any decomposition get score 0.

    The maps are decompositions of standardized activations, so these scores ignore each neuron's
    scale and outgoing weights, which is what sets the output error of removing it (after bias
    compensation that error is W[:, j] (x_j - mean_j), of expected squared norm FLAP's WIFV =
    Var(x_j) ||W[:, j]||^2). "fn-flap" weights that error by network membership:
    ``WIFV_j * max|z|_j ** z_power``; "fn-flap-freq": ``WIFV_j * (1 + frequency_j)``; "fn-wanda":
    Wanda-sp's ``mean|W[:, j]| * ||x_j||`` times ``max|z|_j ** z_power``. All three need
    ``lm`` and calibration ``stats`` (:func:`funcnet.prune.calibration_stats`).

    ``score=None`` (what ``prune(method="fn")`` uses) is :data:`DEFAULT_FN_SCORE` when ``lm`` and
    ``stats`` are given, else the pure network score "max_abs_z".
    """
    if score is None:
        score = DEFAULT_FN_SCORE if (lm is not None and stats is not None) else "max_abs_z"
    if score in ("max_abs_z", "max_pos_z"):
        return {l: v.astype(np.float64) for l, v in
                networks.score_per_neuron(positive_only=score == "max_pos_z", min_stability=min_stability).items()}
    if score == "frequency":
        freq = networks.key_frequency(min_stability=min_stability, threshold=threshold)
        mx = networks.score_per_neuron(min_stability=min_stability)
        return {l: freq[l] + mx[l] / (1.0 + mx[l].max(initial=0.0)) for l in freq}
    if score in FN_STATS_SCORES:
        if lm is None or stats is None:
            raise FuncnetError(f"functional-network score '{score}' needs the model and calibration statistics")

        base = imp_wanda_sp if score == "fn-wanda" else imp_flap
        wifv = base(as_loaded(lm), stats).neurons
        if score in ("fn-flap", "fn-wanda"):
            net = networks.score_per_neuron(min_stability=min_stability)
            net = {l: v.astype(np.float64) ** float(z_power) for l, v in net.items()}
        else:
            net = {l: 1.0 + v for l, v in networks.key_frequency(min_stability=min_stability,
                                                                   threshold=threshold).items()}
        return {l: wifv[l] * net[l] if l in wifv else net[l] for l in net}
    raise FuncnetError(f"unknown functional-network score '{score}'; choose from {', '.join(FN_SCORES)}")


def pruning_keep_masks(networks: FunctionalNetworks, lm=None, *, threshold: float = 3.6, positive_only: bool = False,
                       min_stability: float | None = None, **_) -> dict[int, np.ndarray]:
    """The reference rule: keep the union of all key neurons (|z| > threshold) over all maps and
    groups. Layers that were not decomposed are kept whole."""
    covered = {int(l) for d in networks.decompositions for l in np.unique(d.columns[:, 0])}
    masks = networks.masks(min_stability=min_stability, threshold=threshold, positive_only=positive_only)
    return {l: (m if l in covered else np.ones_like(m)) for l, m in masks.items()}


def networks_for_pruning(lm, calib="builtin", *, n_groups: int = 4, group_size: int = 16, n_components: int = 64,
                         max_length: int = 128, method: str = "reference", n_init: int = 1, signals=("neurons",),
                         store: str | None = None, seed: int = 0, progress: bool = True, device=None,
                         **ica) -> FunctionalNetworks:
    """Per-layer functional networks of ``lm`` from ``n_groups`` groups of ``group_size`` calibration
    texts (the reference: 80 groups of 40 texts, k = 128, one ICA run per group and layer). Made
    from ``lm`` itself (its identity is recorded), so they need no check against it. ``device``:
    where the ICA runs; default: the model's (its input device; "cuda" when it is spread over
    several GPUs, so the per-layer fits go round-robin over them)."""

    corpus = calib if hasattr(calib, "documents") else load_corpus(calib, split="calib")
    need = n_groups * group_size
    if len(corpus) < need:
        raise FuncnetError(f"calibration text too short: {n_groups} groups x {group_size} texts needs {need} "
                           f"documents, the corpus has {len(corpus)}")
    pick = np.sort(np.random.default_rng(seed).choice(len(corpus), need, replace=False))
    tok = tokenize(corpus.subset(pick), lm.tokenizer, max_length=max_length, mode="documents")
    st = ensure_store(lm, tok, store=store, signals=list(signals))
    return decompose(st, mode="per-layer", n_components=n_components, n_groups=n_groups, group_size=group_size,
                     method=method, n_init=n_init, signals=list(signals), random_state=seed, progress=progress,
                     model_identity=lm.identity, neurons_per_layer=lm.adapter.neurons_per_layer(lm.model),
                     device=_ica_device(lm.model) if device is None else str(device), **ica)


def _ica_device(model) -> str:
    """Where a model's network finding runs by default: its input device, or "cuda" (every GPU)
    when accelerate spread it over several."""
    devs = {str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}
    cuda = {d for d in devs if d not in ("cpu", "disk", "meta")}
    if len(cuda) > 1:
        return "cuda"
    return str(input_device(model))


def _fn_needs_stats(score: str | None = None, **_) -> bool:
    """Method ``fn`` needs calibration statistics for its default score, the "fn-flap*" / "fn-wanda"
    scores and "fn-cond"; the pure network scores ("max_abs_z", "max_pos_z", "frequency") need none."""
    return score is None or score in FN_STATS_SCORES or score == "fn-cond"


def _fn_needs_covariance(score: str | None = None, **_) -> bool:
    """The score "fn-cond" conditions on network co-members: it needs the neurons' covariance."""
    return score == "fn-cond"


def imp_fn(lm: LoadedModel, stats=None, *, heads: bool = False, networks=None, importance=None, **kw) -> Importance:
    """Functional-network importance: :func:`pruning_importance` of ``networks`` (``score=`` ...), or
    with ``score="fn-cond"`` WIFV conditioned on each neuron's network co-members
    (:func:`conditional_fluctuation`), or a ready ``importance`` dict."""
    if importance is None and kw.get("score") == "fn-cond":
        # network redundancy: WIFV with only the variance the neuron's network co-members cannot explain
        _need(stats, False)
        p = float(kw.get("cond_power", 1.0))
        cond = conditional_fluctuation(lm, stats, ridge=float(kw.get("cond_ridge", 0.1)), networks=networks,
                                       max_regressors=int(kw.get("max_regressors", 128)),
                                       fn_threshold=float(kw.get("threshold", 3.6)))
        wifv = imp_flap(lm, stats).neurons
        importance = {i: wifv[i] ** (1 - p) * cond[i] ** p for i in cond}
    if importance is None:
        networks = _load_networks(networks, lm)
        importance = pruning_importance(networks, lm, stats=stats, **kw)
    return _as_importance(importance, method="fn")


def imp_fn_threshold(lm: LoadedModel, stats=None, *, networks=None, keep_masks=None, **kw) -> Importance:
    """The reference rule: keep exactly the key neurons of the functional networks."""
    if keep_masks is None:
        networks = _load_networks(networks, lm)
        keep_masks = pruning_keep_masks(networks, lm, **kw)
    masks = {int(k): np.asarray(v, dtype=bool) for k, v in keep_masks.items()}
    neurons = {k: m.astype(np.float64) for k, m in masks.items()}
    return Importance(neurons, None, keep_masks=masks, method="fn-threshold")
