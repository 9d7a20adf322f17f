"""SMAC's target function: ``(config, seed, budget) -> cost`` (or a dict of objectives).

SMAC stores the target function's bytecode in its run and, on resume, asks on stdin when it
changed. So the function SMAC sees, ``target_function``, is one stable line; everything it
does lives in ``evaluate_trial``, which may change freely.

Each process (the main one, or a Dask worker) is told what to evaluate once through
``SEARCH.configure(spec)`` (a ``TrialContext``); the dataset is then loaded once per process, its training and validation splits
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

import time
from dataclasses import replace
from typing import Any, Mapping

from nexsearch.device import resolve_device
from nexsearch.objectives.datasets import Splits, load_dataset
from nexsearch.objectives.settings import TrialSpec
from nexsearch.objectives.record import TrialRecord
from nexsearch.objectives.table import produce, record_key
from nexsearch.objectives.trainer import budget_to_epochs, train_proxy
from nexsearch.running import TrialProgress
from nexsearch.search_space.space import to_dict


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


class TrialContext:
    """One process's trial spec and its dataset (loaded on first use, once), for one purpose: ``SEARCH`` (SMAC's
    trials) or an evaluation's trainings (``nexsearch.evaluate``: it keeps its test split on the
    training device too). The Dask worker plugin configures it in each worker; pickled, a context stands for the
    worker process's own one of that name."""

    _NAMED: dict[str, "TrialContext"] = {}

    def __init__(self, name: str, test: bool = False):
        self.name, self.test = name, test
        self.spec: TrialSpec | None = None
        self._splits: Splits | None = None

    @classmethod
    def named(cls, name: str, test: bool = False) -> "TrialContext":
        """This process's context ``name`` (made on first use)."""
        return cls._NAMED.setdefault(name, cls(name, test))

    def __reduce__(self):
        return TrialContext.named, (self.name, self.test)

    def configure(self, spec: TrialSpec) -> TrialSpec:
        """Set what this context's trials evaluate (the data is loaded again only when it changed)."""
        if self.spec is None or self.spec.data_key != spec.data_key:
            self._splits = None
        self.spec = spec
        return spec

    def loaded(self) -> tuple[TrialSpec, Splits]:
        """The spec and its dataset, training and validation on the training device (loaded once; the test split
        too for a context made with ``test=True``)."""
        if self.spec is None:
            raise RuntimeError(f"the trial context '{self.name}' was not configured in this process")
        if self._splits is None:
            self._splits = load_splits(self.spec, test=self.test)
        return self.spec, self._splits

    def unload(self) -> None:
        """Drop the dataset (the spec stays): when trials run in worker processes, which load their own."""
        self._splits = None


SEARCH = TrialContext.named("search")  # SMAC's trials in this process


def load_splits(spec: TrialSpec, test: bool = False) -> Splits:
    """The dataset of ``spec``, split and moved to its training device (the test split only with ``test=True``)."""
    return load_dataset(spec.data).to(resolve_device(spec.settings.device), test=test)


def evaluate_trial(config: Any, seed: int = 0, budget: float | None = None) -> tuple[Any, dict[str, Any]]:
    """Train one proxy; log the record; return SMAC's (cost, additional_info) or raise ``TrialFailed``.
    ``config`` (SMAC's ``Configuration``) goes to the trainer as it is: it checks it, once."""
    spec, splits = SEARCH.loaded()
    started = time.time()
    settings, by_deadline = spec.settings, False
    if spec.deadline is not None:
        left = spec.deadline - started
        if left <= 0:  # SMAC may hand out one more trial as the budget ends: do not start it
            _cut(TrialRecord("cut", "the search's wall-clock budget ended before this trial started", config,
                             int(seed), budget, start_time=started), spec)
        by_deadline = settings.time_limit_s is None or left < settings.time_limit_s
        settings = replace(settings, time_limit_s=left if settings.time_limit_s is None
                           else min(settings.time_limit_s, left))
    progress = TrialProgress(spec.run_dir, to_dict(config), int(seed), budget,
                             budget_to_epochs(budget, settings.epochs))
    try:  # the live view and `nexsearch status` read the progress file while the trial trains
        record = train_proxy(config, splits, settings, seed=int(seed), budget=budget, on_epoch=progress.epoch)
    finally:
        progress.close()
    record.merge(produce(record, spec))  # the objectives made after training (full-size costs, ...)
    record.finished(started)
    if record.status == "timeout" and by_deadline:
        record.status, record.reason = "cut", f"the search's wall-clock budget ended during this trial ({record.reason})"
        _cut(record, spec)
    line = _log(record, spec)
    if record.status != "ok":
        raise TrialFailed(line)
    info = {k: v for k, v in line.items() if k != "config"}
    if len(spec.objectives) == 1:
        return float(record.cost), info
    return {name: float(record[record_key(name)]) for name in spec.objectives}, info


def _cut(record: TrialRecord, spec: TrialSpec) -> None:
    if record.end_time is None:
        record.finished(record.start_time)
    raise TrialCut(_log(record, spec))


def _log(record: TrialRecord, spec: TrialSpec) -> dict[str, Any]:
    """The record's line, appended to the run's trial log (when the spec has a run)."""
    line = record.to_json()
    if spec.run_dir is not None:
        spec.run_dir.append_trial(line)
    return line


def target_function(config, seed: int = 0, budget: float | None = None):
    return evaluate_trial(config, seed, budget)
