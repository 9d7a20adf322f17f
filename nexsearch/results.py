"""The results of a run, each computed in one place: the trial number, the status name, the error in a
cost, the incumbent and the Pareto front.

``nexsearch status`` (plain dicts read from SMAC's runhistory), the analysis (pandas, through a thin
adapter), the live view (SMAC's callback), the summary, export and evaluation all call these, so the
same trial has the same number, and the same run the same incumbent, everywhere. Plain inputs only:
this module imports neither torch, SMAC, numpy nor pandas (``nexsearch status`` must answer at once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator, Mapping, Sequence, TypeVar

T = TypeVar("T")

# SMAC's ``StatusType`` (smac/runhistory/enumerations.py) by value, lower-cased. Typed out because importing
# SMAC costs seconds; tests/test_results.py checks it against SMAC's enum, member by member.
STATUS_NAMES = {0: "running", 1: "success", 2: "crashed", 3: "timeout", 4: "memoryout"}



@dataclass
class History:
    """What an optimizer recorded of a run, as plain data: the one form every reader takes (``status``,
    the analysis, the importance, ``evaluate``'s candidates, ``export``), whatever the optimizer. Made by
    the optimizer's history reader (SMAC's: ``nexsearch.runners.smac_state.read_smac_history``).

    ``trials``: in the optimizer's order, each a dict with ``trial`` (its number, :func:`numbered_trials`),
    ``status_name``, ``config_id``, ``seed``, ``budget``, ``cost`` (a float, or one value per objective),
    ``starttime``, ``endtime`` and ``additional_info``. ``configs``: configurations by id (as ``str``).
    ``folder``: the optimizer's own files (what DeepCAVE opens). ``notes``: what was read from a backup."""

    trials: list[dict[str, Any]]
    configs: dict[str, dict[str, Any]]
    objectives: list[str]
    folder: Path
    notes: list[str] = field(default_factory=list)

    def config(self, trial: Mapping[str, Any]) -> dict[str, Any]:
        """The configuration of ``trial`` (empty when the optimizer did not record it)."""
        return self.configs.get(str(trial["config_id"]), {})

    @property
    def finished(self) -> list[dict[str, Any]]:
        """Trials with a result (not in flight, nor interrupted by a kill or the budget's end)."""
        return [t for t in self.trials if t["status_name"] != "running"]

    @property
    def successful(self) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["status_name"] == "success"]

    @property
    def seeds(self) -> set[int]:
        return {int(t["seed"]) for t in self.trials if t.get("seed") is not None}


def status_name(code: Any) -> str:
    """SMAC's status code (an int or a ``StatusType``) as a name: ``success``, ``crashed``, ..."""
    return STATUS_NAMES.get(int(code), str(code))


def cost_vector(cost: Any) -> list[float]:
    """SMAC's cost as a list: a float for one objective, a list (one value per objective) for several."""
    return list(cost) if isinstance(cost, (list, tuple)) else [cost]


def error_of(cost: Any) -> float:
    """The error in SMAC's cost: the cost itself, or the first objective of a multi-objective cost."""
    return cost_vector(cost)[0]


def numbered_trials(trials: Iterable[T]) -> Iterator[tuple[int, T]]:
    """The trials of a runhistory, in SMAC's order, each with its number: the trial number everywhere (live
    view, ``nexsearch status``, analysis, ``export --trial N``, the summary). SMAC keeps a trial in the
    order it was asked for (its result, when it comes, replaces the RUNNING entry in place), so with several
    workers the numbers follow the starts, not the order in which results arrive."""
    return enumerate(trials, start=1)


def trial_number(keys: Iterable[Hashable], key: Hashable) -> int:
    """The number :func:`numbered_trials` gives the trial ``key`` among a runhistory's ``keys`` in order
    (a live SMAC ``RunHistory`` iterates over its ``TrialKey`` s in that order)."""
    for number, k in numbered_trials(keys):
        if k == key:
            return number
    raise KeyError(f"trial {key} is not in the runhistory")


def _budget(trial: Mapping[str, Any]) -> float:
    budget = trial.get("budget")
    return 0.0 if budget is None or (isinstance(budget, float) and math.isnan(budget)) else float(budget)


def at_top_budget(successful: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The successful trials at the highest budget reached (all of them in a run without budgets): the ones
    the incumbent and the Pareto front are chosen from. A trial is a mapping with ``budget`` (None, NaN or
    a number)."""
    top = max((_budget(t) for t in successful), default=0.0)
    return [t for t in successful if _budget(t) == top]


def incumbent(successful: Sequence[Mapping[str, Any]]) -> Any | None:
    """The incumbent: among the successful trials at the highest budget, the configuration with the lowest mean
    error over its trials -- a configuration called with several seeds (``calls_per_config``) is judged by its
    mean, not by its luckiest call -- and of it the trial with the lowest error (the earliest configuration and
    trial on a tie); None without a successful trial. A trial is a mapping with ``trial`` (its number),
    ``budget``, ``cost`` (SMAC's: a float, or a list whose first element is the error) and ``config_id``
    (without it, each trial stands alone). With one call per configuration: the trial with the lowest error."""
    return min(incumbent_calls(successful), key=lambda t: (error_of(t["cost"]), t["trial"]), default=None)


def incumbent_calls(successful: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The incumbent configuration's successful trials at the highest budget (its calls; see ``incumbent``), or []
    without a successful trial."""
    groups: dict[Any, list[Any]] = {}
    for t in at_top_budget(successful):
        groups.setdefault(t.get("config_id", ("trial", t["trial"])), []).append(t)
    return min(groups.values(), key=lambda g: (mean_error(g), min(t["trial"] for t in g)), default=[])


def mean_error(trials: Sequence[Mapping[str, Any]]) -> float:
    """The mean error of ``trials`` (one configuration's calls)."""
    return sum(error_of(t["cost"]) for t in trials) / len(trials)


def non_dominated(points: Sequence[Sequence[float]], maximise: Sequence[bool] = ()) -> list[int]:
    """Indices (ascending) of the points no other point dominates (at least as good in every coordinate,
    better in one). Every coordinate is minimised except where ``maximise`` says True. Equal points do not
    dominate each other: all of them stay."""
    flip = list(maximise)
    vectors = [[-float(v) if i < len(flip) and flip[i] else float(v) for i, v in enumerate(p)] for p in points]
    front: list[int] = []
    # A point can only be dominated by one before it in lexicographic order, and then by one on the front
    # (domination is transitive): compare each point with the front found so far.
    for i in sorted(range(len(vectors)), key=lambda i: vectors[i]):
        v = vectors[i]
        if not any(all(a <= b for a, b in zip(vectors[j], v)) and vectors[j] != v for j in front):
            front.append(i)
    return sorted(front)


def pareto_front(successful: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The Pareto front of a multi-objective run: the successful trials at the highest budget that no other
    dominates in SMAC's cost (every objective minimised, as SMAC does), by cost then trial number."""
    top = at_top_budget(successful)
    front = [top[i] for i in non_dominated([cost_vector(t["cost"]) for t in top])]
    return sorted(front, key=lambda t: (cost_vector(t["cost"]), t["trial"]))
