"""Typed results of the experiments, and the one registry that names their result files.

Each experiment returns a result dataclass (:class:`LesionResult`, :class:`PreservationResult`,
:class:`AmplificationResult`, :class:`RecurrenceResult`, :class:`AnatomyResult`); a results
folder also holds :class:`RunInfo` (``run.json``) and the networks (``networks.safetensors``).
``to_dict()`` gives the JSON written into a results folder (same keys, same order as funcnet 0.1,
so older folders still load and render) and ``from_dict()`` reads it back; keys missing from an
older file take the field's default, unknown keys are kept in ``extra`` and written back.

:data:`EXPERIMENTS` maps an experiment name to its :class:`ExperimentSpec` (result file, result
type, report title): the only place that names result files. Adding an experiment means a module
in :mod:`funcnet.experiments`, an entry here, and a figure / section function in
:mod:`funcnet.report` keyed by the same name.

The nested values stay plain JSON (dicts and lists) at run time; their shapes are documented by
the ``TypedDict`` classes below (``Metrics``, ``LesionCondition``, ...).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypedDict, TypeVar

from funcnet.core._io import write_json
from funcnet.errors import FuncnetError

RUN_FILE = "run.json"
NETWORKS_FILE = "networks.safetensors"


# ---------------------------------------------------------------------------- nested JSON shapes
class Metrics(TypedDict):
    """The metric of one domain (``funcnet.experiments.measure``)."""
    ppl: float
    accuracy: float
    n_tokens: int


DomainMetrics = dict[str, Metrics]


class Summary(TypedDict):
    """Mean ± sd and the values of repeated measurements of one domain (``summarize``)."""
    ppl_mean: float
    ppl_std: float
    acc_mean: float
    acc_std: float
    ppl: list[float]
    accuracy: list[float]


DomainSummary = dict[str, Summary]


class LesionCondition(TypedDict):
    name: str                 # "net 3", "all 5"
    networks: list[int]
    n_neurons: int
    fraction: float           # of all MLP neurons
    lesioned: DomainMetrics
    random: DomainSummary     # random sets of the same size per layer


class RandomFraction(TypedDict):
    fraction: float
    result: DomainSummary


class PreservationRow(TypedDict, total=False):
    k: int
    n_neurons: int
    fraction: float
    preserved: DomainMetrics | None   # None when the k networks have no key neuron
    random: DomainSummary | None
    seconds: float                       # absent when preserved is None


class AmplificationPoint(TypedDict):
    value: float
    metrics: DomainMetrics


class AmplificationCurve(TypedDict):
    network: int
    n_neurons: int
    points: list[AmplificationPoint]


class BestSetting(TypedDict, total=False):
    network: int
    value: float
    ppl: float
    baseline_ppl: float
    better_than_dense: bool   # absent in older results


class RecurrenceTemplate(TypedDict):
    id: str
    domain: str
    network: int
    n_keys: int
    stability: float


class RecurrenceIndividual(TypedDict):
    id: str
    domain: str
    text: int
    network: int
    n_keys: int


class RecurrenceRow(TypedDict):
    template: str
    counts: dict[str, int]
    totals: dict[str, int]
    max_iou: float


class Context(TypedDict):
    doc: int
    value: float
    token: str
    left: str
    right: str


class AnatomyNetwork(TypedDict):
    network: int
    stability: float
    n_keys: int
    per_layer: list[int]
    top_contexts: list[Context]


# ---------------------------------------------------------------------------- result classes
R = TypeVar("R", bound="Result")


@dataclass
class Result:
    """Base of the typed results: the fields are the JSON keys, in the JSON's order."""

    #: the value of the ``"experiment"`` key written first (None: no such key)
    experiment: ClassVar[str | None] = None
    #: fields left out of the JSON while they are None
    _omit_none: ClassVar[tuple[str, ...]] = ()
    #: keys of the JSON this class does not know (kept, and written back after the known ones)
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (nested values are shared, not copied)."""
        out: dict[str, Any] = {} if self.experiment is None else {"experiment": self.experiment}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None and f.name in self._omit_none:
                continue
            out[f.name] = v
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls: type[R], d: Any) -> R:
        """The result read back from its JSON dict (missing keys: defaults; unknown keys: ``extra``)."""
        if isinstance(d, cls):
            return d
        if not isinstance(d, dict):
            raise FuncnetError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k != "experiment"}
        return cls(**known, extra=extra)

    # read access by JSON key, for code written against the dicts funcnet 0.1 returned
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass
class LesionResult(Result):
    """Inhibiting networks vs random neuron sets (``lesion_experiment``)."""
    experiment: ClassVar[str | None] = "lesion"
    baseline: DomainMetrics = field(default_factory=dict)
    conditions: list[LesionCondition] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    random_fraction: RandomFraction = field(default_factory=dict)  # type: ignore[assignment]
    params: dict[str, Any] = field(default_factory=dict)   # threshold, n_random, seed, window, max_windows, total_neurons


@dataclass
class PreservationResult(Result):
    """Keeping only the networks' neurons, for several k (``preservation_experiment``)."""
    experiment: ClassVar[str | None] = "preserve"
    baseline: DomainMetrics = field(default_factory=dict)
    rows: list[PreservationRow] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)   # mode, threshold, n_init, n_random, window, ...


@dataclass
class AmplificationResult(Result):
    """Scaling or shifting a network's neurons over a grid (``amplification_experiment``)."""
    experiment: ClassVar[str | None] = "amplify"
    how: str = "scale"                                     # "scale" (x * value) or "add" (x + value)
    baseline: DomainMetrics = field(default_factory=dict)
    curves: list[AmplificationCurve] = field(default_factory=list)
    best: dict[str, BestSetting] = field(default_factory=dict)
    domains: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)   # threshold, window, max_windows


@dataclass
class RecurrenceResult(Result):
    """Template vs individual-text networks (``recurrence_experiment``)."""
    experiment: ClassVar[str | None] = "recurrence"
    domains: list[str] = field(default_factory=list)
    templates: list[RecurrenceTemplate] = field(default_factory=list)
    individuals: list[RecurrenceIndividual] = field(default_factory=list)
    iou: list[list[float]] = field(default_factory=list)   # [templates, individuals]
    iou_threshold: float | None = None
    table: list[RecurrenceRow] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)   # n_template, n_individual, k_template, ...


@dataclass
class AnatomyResult(Result):
    """Key neurons per layer and top-activating contexts of networks (``anatomy``)."""
    experiment: ClassVar[str | None] = "anatomy"
    networks: list[AnatomyNetwork] = field(default_factory=list)
    threshold: float | None = None


@dataclass
class RunInfo(Result):
    """``run.json``: the model, corpus, parameters and timings of an exploration (``funcnet.explore``)."""
    _omit_none: ClassVar[tuple[str, ...]] = ("funcnet_version", "store", "networks")
    model: dict[str, Any] = field(default_factory=dict)     # LoadedModel.summary()
    corpus: str | None = None
    size: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    threshold: float | None = None
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    funcnet_version: str | None = None
    store: dict[str, Any] | None = None                   # ActivationStore.summary()
    networks: dict[str, Any] | None = None                # n, k, mode, stability, n_keys


# ---------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ExperimentSpec:
    name: str                 # the experiment's name (explore's ``experiments=``, the report's keys)
    result_file: str          # its file in a results folder
    result_type: type[Result]
    title: str                # its section title in the report


#: experiment name -> spec, in report / figure order
EXPERIMENTS: dict[str, ExperimentSpec] = {s.name: s for s in (
    ExperimentSpec("anatomy", "anatomy.json", AnatomyResult, "Top-activating contexts and anatomy"),
    ExperimentSpec("lesion", "lesion.json", LesionResult, "Lesion"),
    ExperimentSpec("preserve", "preserve.json", PreservationResult, "Preservation"),
    ExperimentSpec("amplify", "amplify.json", AmplificationResult, "Amplification"),
    ExperimentSpec("recurrence", "recurrence.json", RecurrenceResult, "Recurrence"),
)}

#: every file a results folder may hold, in the order the report lists them
RESULT_FILES: tuple[str, ...] = (RUN_FILE, NETWORKS_FILE, *(s.result_file for s in EXPERIMENTS.values()))


def result_file(result: Result) -> str:
    """The file name of a result in a results folder."""
    if isinstance(result, RunInfo):
        return RUN_FILE
    for s in EXPERIMENTS.values():
        if isinstance(result, s.result_type):
            return s.result_file
    raise FuncnetError(f"{type(result).__name__} is not a registered experiment result")


def write_result(results_dir: str | os.PathLike, result: Result) -> Path:
    """Write ``result.to_dict()`` to its file in ``results_dir`` (atomically); returns the path."""
    path = Path(results_dir) / result_file(result)
    write_json(path, result.to_dict())
    return path


def load_json(path: str | os.PathLike) -> Any:
    """A results JSON file, or None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FuncnetError(f"cannot read {path}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from e


def read_result(path: str | os.PathLike, result_type: type[R]) -> R | None:
    """A typed result from its JSON file; None when the file is missing or empty (``{}``, ``null``)."""
    d = load_json(path)
    if not d:
        return None
    try:
        return result_type.from_dict(d)
    except FuncnetError as e:
        raise FuncnetError(f"cannot read {path}: {e}") from e


def load_results(results_dir: str | os.PathLike) -> dict[str, Result | None]:
    """``{"run": RunInfo or None, <experiment name>: its result or None, ...}`` of a results folder."""
    d = Path(results_dir)
    out: dict[str, Result | None] = {"run": read_result(d / RUN_FILE, RunInfo)}
    for s in EXPERIMENTS.values():
        out[s.name] = read_result(d / s.result_file, s.result_type)
    return out
