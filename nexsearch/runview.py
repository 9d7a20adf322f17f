"""What a run holds, read-only: the one view every verb reads a run through (``status``, ``analyze``,
``evaluate``, ``export``, the notebook).

* the optimizer's history (trials, configurations, objectives) through the history reader of the
  optimizer that wrote it (:data:`HISTORY_READERS`; SMAC's: ``nexsearch.runners.smac_state``), as the plain
  :class:`nexsearch.results.History`;
* the incumbent and the Pareto front (``nexsearch.results``: the same trial numbers and choices everywhere);
* the status figures ``nexsearch status`` prints (:meth:`RunView.status`);
* the evaluation's summary, table and winner (``nexsearch.evaluation.store``).

Nothing here writes to the run; no torch, SMAC, numpy or pandas at import (``nexsearch status`` answers at once).
"""

from __future__ import annotations

import socket
import time
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from nexsearch.errors import UserError
from nexsearch.evaluation import store
from nexsearch.results import History, error_of, incumbent, incumbent_calls, mean_error, pareto_front
from nexsearch.rundir import RunDir, pid_alive
from nexsearch.runners.smac_state import read_smac_history

# Readers of an optimizer's history, tried in order: each returns None for a run it did not write.
HISTORY_READERS: list[Callable[[RunDir], History | None]] = [read_smac_history]

HEARTBEAT_STALE_S = 30  # a "running" state file not rewritten for this long: its process is gone


def read_history(rd: RunDir) -> History:
    """The history of the run in ``rd`` (a one-line error when no optimizer saved one there)."""
    for reader in HISTORY_READERS:
        history = reader(rd)
        if history is not None:
            return history
    raise UserError(f"{rd.path} is not a nexsearch run (no smac/<seed>/runhistory.json): pass a run directory")


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


class RunView:
    """One run directory, read-only."""

    def __init__(self, run_dir: str | Path | RunDir):
        self.rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.rd.require_dir()
        self.path = self.rd.path

    @cached_property
    def history(self) -> History:
        return read_history(self.rd)

    def incumbent(self) -> dict[str, Any] | None:
        """The incumbent (single objective; None without a successful trial): trial, error, budget, config."""
        calls = incumbent_calls(self.history.successful)
        best = incumbent(calls)
        if best is None:
            return None
        return {"trial": best["trial"], "error": error_of(best["cost"]), "budget": best["budget"],
                "config": self.history.config(best), "config_id": best["config_id"], "calls": len(calls),
                "mean_error": mean_error(calls)}

    def pareto_front(self) -> list[dict[str, Any]]:
        """The Pareto front in the optimizer's costs (every objective minimised): trial, costs, config."""
        h = self.history
        return [{"trial": t["trial"], "costs": dict(zip(h.objectives, t["cost"])), "config": h.config(t)}
                for t in pareto_front(h.successful)]

    def trial(self, number: int) -> dict[str, Any]:
        """Trial ``number`` with its configuration; a one-line error unless it succeeded."""
        h = self.history
        match = [t for t in h.trials if t["trial"] == number]
        if not match:
            raise UserError(f"trial {number} not found in {self.path}: it has trials 1..{len(h.trials)}")
        t = match[0]
        if t["status_name"] == "running":
            raise UserError(f"trial {number} of {self.path} has no result yet (running, or interrupted when the run "
                            "stopped: resuming the run evaluates it again): pick a successful trial")
        if t["status_name"] != "success":
            raise UserError(f"trial {number} of {self.path} did not succeed ({t['status_name']}): pick a successful "
                            "trial")
        return {**t, "config": h.config(t), "error": error_of(t["cost"])}

    # --- the state file -------------------------------------------------------------------------------------

    def alive(self, state: dict[str, Any]) -> bool:
        """Whether the state file's process is still running (a fresh heartbeat, and the process exists here)."""
        alive = state.get("status") == "running" and time.time() - state.get("updated_at", 0) < HEARTBEAT_STALE_S
        if alive and state.get("pid") and state.get("host") == socket.gethostname():
            alive = pid_alive(int(state["pid"]))
        return alive

    def status(self) -> dict[str, Any]:
        """The figures of ``nexsearch status``: status, trial counts, budget, SMAC's overhead, incumbent or
        Pareto front, failures, the evaluation's summary."""
        h = self.history
        state = self.rd.read_state()
        alive = self.alive(state)
        done, ok = h.finished, h.successful
        info: dict[str, Any] = {
            "run_dir": str(self.path), "smac_dir": str(h.folder), "objectives": h.objectives,
            "status": state.get("status", "unknown") if alive or state.get("status") != "running"
            else "stopped (no heartbeat)",
            "finished": len(ok), "failed": len(done) - len(ok),
            "running": state.get("running", 0) if alive else 0,
            # trials in flight when the last process ended (killed, or cut by the budget's end): no result;
            # the next resume evaluates them again
            "interrupted": 0 if alive else len(h.trials) - len(done), "notes": h.notes,
            "budget_s": state.get("budget_s"), "used_s": state.get("used_s"),
            "failures": [{"trial": t["trial"], "status": t["status_name"],
                          "reason": (t.get("additional_info") or {}).get("error", "")} for t in done if t not in ok],
        }
        now = time.time()
        info["running_trials"] = self.running_trials(now) if alive else []
        info.update(self._idle_time(info, state, done, now))
        if ok and len(h.objectives) == 1:
            info["incumbent"] = self.incumbent()
        elif ok:
            info["pareto_front"] = self.pareto_front()
        evaluation = self.evaluation()  # `nexsearch evaluate`'s table, when there is one
        if evaluation:
            info["evaluation"] = evaluation
        return info

    def running_trials(self, now: float) -> list[dict[str, Any]]:
        """The running trials' progress files, each matched to its trial number in the optimizer's records."""
        from nexsearch.running import key_text, running_rows, trial_key

        h = self.history
        numbers = {trial_key(h.config(t), t["budget"], t["seed"]): t["trial"]
                   for t in h.trials if t["status_name"] == "running"}
        asked = self.rd.read_asked()  # the search's numbers of trials that the optimizer's files do not name yet
        return running_rows(self.rd.read_progress(), lambda key: numbers.get(key) or asked.get(key_text(key)), now)

    def _idle_time(self, info: dict[str, Any], state: dict[str, Any], done: list[dict[str, Any]],
                   now: float) -> dict[str, float]:
        """Wall time of the run's sessions in which no trial was running (SMAC's overhead, start-up, the end):
        trials from the optimizer's records and the trial log (cut ones too), running ones up to now."""
        if not info["used_s"]:
            return {}
        intervals = [(t["starttime"], t["endtime"]) for t in done if t.get("starttime") and t.get("endtime")]
        intervals += [(r["start_time"], r["end_time"]) for r in self.rd.read_trials()
                      if r.get("start_time") and r.get("end_time")]
        intervals += [(now - r["elapsed_s"], now) for r in info["running_trials"]]
        sessions = [(s["started_at"], s.get("ended_at") or now) for s in state.get("sessions", []) if s.get("started_at")]
        if sessions:  # only time in which the run was alive
            intervals = [(max(a, s0), min(b, s1)) for a, b in intervals for s0, s1 in sessions
                         if min(b, s1) > max(a, s0)]
        busy = min(_union_seconds(intervals), info["used_s"])
        idle = max(0.0, info["used_s"] - busy)
        return {"trial_time_s": busy, "overhead_s": idle, "overhead_frac": idle / info["used_s"]}

    # --- the evaluation -------------------------------------------------------------------------------------

    def evaluation(self) -> dict[str, Any] | None:
        """``nexsearch evaluate``'s summary (None when the run was never evaluated)."""
        return store.load_summary(self.path)

    def evaluation_frame(self):
        """The evaluation table as a DataFrame: one row per candidate and evaluation (empty without one)."""
        return store.evaluation_frame(self.path)

    def evaluated_winner(self) -> tuple[dict[str, Any] | None, str]:
        """The winner of the finished evaluation with the most epochs (or None), and a sentence saying so."""
        return store.evaluated_winner(self.path)
