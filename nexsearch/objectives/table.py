"""The objective table: every objective (and every recorded metric) declared once.

An entry says what the experiment file calls it (``name``), which key of the trial record holds it
(``key``: ``trials.jsonl``, SMAC's ``additional_info``, the analysis column), whether lower or higher
is better (``direction``), what produces it (``producer``: ``proxy``, the trainer's record, or a producer
of :data:`PRODUCERS` run on that record after training) and its pre-flight check (``check``: run once
before a search starts). Settings validation, the trial's costs, the analysis columns, the plots' axis
labels, the Pareto direction and the CLI help all read this table.

Adding an objective is one :func:`register` call (plus its producer in :data:`PRODUCERS` when it is
a new one). Plain data, no torch: producers and checks are named ``"module:function"`` and imported
when a trial or a search runs (a callable works too).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence


@dataclass(frozen=True)
class Measure:
    name: str  # as experiment files and --objectives spell it
    key: str  # the trial record's key
    direction: str = "min"  # "min" or "max"
    producer: str = "proxy"  # "proxy" (the trainer's record) or a key of PRODUCERS
    check: str | Callable[..., None] | None = None  # check(objectives, layout, device) before a search
    objective: bool = True  # False: a metric every trial records, never an objective of SMAC
    label: str = ""  # axis label (default: the key)

    @property
    def maximised(self) -> bool:
        return self.direction == "max"


MEASURES: dict[str, Measure] = {}

# producer name -> "module:function" or a callable ``(record, spec) -> fields added to the record``
PRODUCERS: dict[str, str | Callable[[Mapping[str, Any], Any], dict[str, Any]]] = {
    "full_size": "nexsearch.objectives.full_size:produce",
}


def register(measure: Measure) -> Measure:
    """Declare an objective or metric (a name already declared is replaced)."""
    if measure.direction not in ("min", "max"):
        raise ValueError(f"direction of {measure.name} must be 'min' or 'max', got {measure.direction!r}")
    if measure.objective and measure.maximised:  # SMAC minimises every cost it is told, as is
        raise ValueError(f"objective {measure.name} must be minimised: declare its record key as a cost (lower is "
                         "better), or make it a metric (objective=False)")
    MEASURES[measure.name] = measure
    return measure


for _m in (  # in the order of the analysis columns (trials.csv)
    Measure("error", "cost", label="validation error"),
    Measure("train_time_s", "train_time_s", objective=False, label="training time (s)"),
    Measure("params", "params", label="proxy parameters"),
    Measure("macs", "macs", label="proxy MACs"),
    Measure("throughput", "throughput", "max", objective=False, label="proxy throughput (images/s)"),
    Measure("latency", "latency_ms", label="proxy latency (ms per image)"),
    Measure("peak_memory_mb", "peak_memory_mb", objective=False, label="peak memory (MB)"),
    Measure("epochs_run", "epochs_run", objective=False, label="epochs run"),
    Measure("val_loss", "val_loss", objective=False, label="validation loss"),
    Measure("full_params", "full_params", producer="full_size", label="full-size parameters"),
    Measure("full_macs", "full_macs", producer="full_size", label="full-size MACs"),
    Measure("full_latency", "full_latency_ms", producer="full_size", check="nexsearch.objectives.full_size:check_fits",
            label="full-size latency (ms per image)"),
):
    register(_m)


def objective_names() -> list[str]:
    """The names an experiment may list as objectives, ``error`` first."""
    return [m.name for m in MEASURES.values() if m.objective]


def record_key(name: str) -> str:
    """The trial record's key of the objective ``name``."""
    return MEASURES[name].key


def find(name_or_key: str) -> Measure | None:
    """The entry called ``name_or_key``, or whose record key it is (analysis columns use both)."""
    if name_or_key in MEASURES:
        return MEASURES[name_or_key]
    return next((m for m in MEASURES.values() if m.key == name_or_key), None)


def is_maximised(name_or_key: str) -> bool:
    """Whether higher is better (every objective and metric is minimised unless its entry says ``max``)."""
    m = find(name_or_key)
    return m is not None and m.maximised


def label(name_or_key: str) -> str:
    m = find(name_or_key)
    return (m.label or m.key) if m else name_or_key


def record_columns() -> list[str]:
    """The trial record's keys the analysis shows beside the costs (every entry but the error)."""
    return [m.key for m in MEASURES.values() if m.key != "cost"]


def produced_by(producer: str) -> list[str]:
    """The names of the entries ``producer`` makes."""
    return [m.name for m in MEASURES.values() if m.producer == producer]


def _load(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def produce(record: Mapping[str, Any], spec: Any) -> dict[str, Any]:
    """The fields every producer adds to a trial's ``record`` (the trainer's) for a trial of ``spec``;
    a producer that turns the trial into a failure says so with ``status``, ``reason`` and ``cost``."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(m.producer for m in MEASURES.values() if m.producer != "proxy"):
        out.update(_load(PRODUCERS[name])({**record, **out}, spec))
    return out


def check(objectives: Sequence[str], layout: str, device: str) -> None:
    """Every pre-flight check of the ``objectives`` asked for (before a search starts)."""
    for name in objectives:
        ref = MEASURES[name].check
        if ref is not None:
            _load(ref)(objectives, layout, device)
