"""SMAC's target function: ``(config, seed, budget) -> cost`` (or a dict of objectives).

SMAC stores the target function's bytecode in its run and, on resume, asks on stdin when it
changed. So the function SMAC sees, ``target_function``, is one stable line; everything it
does lives in ``evaluate_trial``, which may change freely.

Each process (the main one, or a Dask worker) is told what to evaluate once through
``configure(spec)``; the dataset is then loaded once per process, its training and validation splits
kept on the training device (the test split, which no trial reads, stays on the CPU).

A trial that fails (out of memory, diverged, crashed, timed out) is written to the trial log
with its reason and raised to SMAC as ``TrialFailed``, which SMAC records as CRASHED with the
scenario's finite ``crash_cost``. A successful trial returns its cost(s) plus the trainer's
record as SMAC's ``additional_info``.

A trial that the end of the search's wall-clock budget stops (or refuses to start) is no
result: it is logged with status ``cut`` and raised as ``TrialCut``, which the runners
(``is_cut``) keep from SMAC, so that a resumed or extended search evaluates it again.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

from nexsearch.device import resolve_device
from nexsearch.objectives.datasets import Splits, load_dataset
from nexsearch.objectives.settings import ObjectiveSpec
from nexsearch.objectives.table import produce, record_key
from nexsearch.objectives.trainer import budget_to_epochs, train_proxy
from nexsearch.rundir import RunDir, append_jsonl
from nexsearch.running import TrialProgress


class TrialFailed(RuntimeError):
    """Raised to SMAC for a failed trial: SMAC records it as CRASHED with the finite crash cost."""

    def __init__(self, record: Mapping[str, Any]):
        self.record = dict(record)
        super().__init__(f"{record['status']}: {record['reason']}")


class TrialCut(TrialFailed):
    """Raised for a trial cut by the end of the search's budget: no result, never told to SMAC."""


def is_cut(value: Any) -> bool:
    """Whether a SMAC ``TrialValue`` comes from a ``TrialCut`` (SMAC keeps the exception's repr)."""
    return str((value.additional_info or {}).get("error", "")).startswith(f"{TrialCut.__name__}(")


_PROCESS: dict[str, Any] = {}  # this process's spec and data for SMAC's trials (nexsearch evaluate keeps its own)


def configure(spec: ObjectiveSpec | Mapping[str, Any], slot: dict[str, Any] = _PROCESS) -> ObjectiveSpec:
    """Set what ``target_function`` evaluates in this process (the data loads on first use); ``slot`` holds it
    (default: the search's)."""
    if not isinstance(spec, ObjectiveSpec):
        spec = ObjectiveSpec(**dict(spec))
    old = slot.get("spec")
    if old is None or old.data_key != spec.data_key:
        slot.clear()
    slot["spec"] = spec
    return spec


def loaded(slot: dict[str, Any] = _PROCESS, test: bool = False) -> tuple[ObjectiveSpec, Splits]:
    """This process's spec and its dataset, training and validation on the training device (loaded once; the
    test split too with ``test=True``, for a slot that always asks for it)."""
    if "spec" not in slot:
        raise RuntimeError("nexsearch.objectives.target.configure(...) was not called in this process")
    spec: ObjectiveSpec = slot["spec"]
    if "splits" not in slot:
        slot["splits"] = load_splits(spec, test=test)
    return spec, slot["splits"]


def unload() -> None:
    """Drop this process's dataset (the spec stays): when trials run in worker processes, which load their own."""
    _PROCESS.pop("splits", None)


def load_splits(spec: ObjectiveSpec, test: bool = False) -> Splits:
    """The dataset of ``spec``, split and moved to its training device (the test split only with ``test=True``)."""
    device = resolve_device(spec.settings.device)
    splits = load_dataset(
        spec.dataset, spec.data_dir, val_fraction=spec.val_fraction, seed=spec.data_seed,
        image_size=spec.image_size, download=spec.download, train_subset=spec.train_subset,
        synthetic_size=spec.synthetic_size, synthetic_classes=spec.synthetic_classes,
        test_fraction=spec.test_fraction, test_dir=spec.test_dir,
    )
    return splits.to(device, test=test)


def evaluate_trial(config: Any, seed: int = 0, budget: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Train one proxy; log the record; return SMAC's (cost, additional_info) or raise ``TrialFailed``."""
    spec, splits = loaded()
    started = time.time()
    settings = spec.settings
    by_deadline = False
    if spec.deadline is not None:
        left = spec.deadline - started
        if left <= 0:  # SMAC may hand out one more trial as the budget ends: do not start it
            _cut({"status": "cut", "reason": "the search's wall-clock budget ended before this trial started",
                  "config": dict(config), "seed": int(seed), "budget": budget, "curve": [], "start_time": started,
                  "end_time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}, spec)
        by_deadline = settings.time_limit_s is None or left < settings.time_limit_s
        settings.time_limit_s = left if settings.time_limit_s is None else min(settings.time_limit_s, left)
    progress = TrialProgress(RunDir.of_trials(spec.trials_path) if spec.trials_path else None, dict(config),
                             int(seed), budget, budget_to_epochs(budget, settings.epochs))
    try:  # the live view and `nexsearch status` read the progress file while the trial trains
        record = train_proxy(dict(config), splits, settings, seed=int(seed), budget=budget, on_epoch=progress.epoch)
    finally:
        progress.close()
    record.update(produce(record, spec))  # the objectives made after training (full-size costs, ...)
    record.update(start_time=started, end_time=time.time(), host=socket.gethostname(), pid=os.getpid())
    if record["status"] == "timeout" and by_deadline:
        _cut(dict(record, status="cut", reason="the search's wall-clock budget ended during this trial "
                                               f"({record['reason']})"), spec)
    if spec.trials_path:
        append_jsonl(spec.trials_path, record)
    if record["status"] != "ok":
        raise TrialFailed(record)
    info = {k: v for k, v in record.items() if k != "config"}
    if len(spec.objectives) == 1:
        return float(record["cost"]), info
    return {name: float(record[record_key(name)]) for name in spec.objectives}, info


def _cut(record: dict[str, Any], spec: ObjectiveSpec) -> None:
    if spec.trials_path:
        append_jsonl(spec.trials_path, record)
    raise TrialCut(record)


def target_function(config, seed: int = 0, budget: float | None = None):
    return evaluate_trial(config, seed, budget)
