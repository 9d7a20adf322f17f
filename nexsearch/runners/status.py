"""``nexsearch status RUN_DIR``: progress of a running or finished run, read from its files only."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from nexsearch.results import error_of, incumbent, pareto_front
from nexsearch.rundir import RunDir, load_runhistory


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _running_trials(rd: RunDir, trials: list[dict[str, Any]], configs: dict[str, Any], now: float
                    ) -> list[dict[str, Any]]:
    """The running trials' progress files, each matched to its trial number in SMAC's records."""
    from nexsearch.running import key_text, running_rows, trial_key

    numbers = {trial_key(configs.get(str(t["config_id"]), {}), t["budget"], t["seed"]): t["trial"]
               for t in trials if t["status_name"] == "running"}
    asked = rd.read_asked()  # the search's numbers of trials that SMAC's files do not name yet
    return running_rows(rd.read_progress(), lambda key: numbers.get(key) or asked.get(key_text(key)), now)


def _idle_time(info: dict[str, Any], rd: RunDir, state: dict[str, Any], done: list[dict[str, Any]],
               now: float) -> None:
    """Wall time of the run's sessions in which no trial was running (SMAC's overhead, start-up, the end):
    trials from SMAC's records and the trial log (cut ones too), running ones up to now."""
    intervals = [(t["starttime"], t["endtime"]) for t in done if t.get("starttime") and t.get("endtime")]
    intervals += [(r["start_time"], r["end_time"]) for r in rd.read_trials() if r.get("start_time") and r.get("end_time")]
    intervals += [(now - r["elapsed_s"], now) for r in info["running_trials"]]
    sessions = [(s["started_at"], s.get("ended_at") or now) for s in state.get("sessions", []) if s.get("started_at")]
    if sessions:  # only time in which the run was alive
        intervals = [(max(a, s0), min(b, s1)) for a, b in intervals for s0, s1 in sessions if min(b, s1) > max(a, s0)]
    busy = min(_union_seconds(intervals), info["used_s"])
    info["trial_time_s"] = busy
    info["overhead_s"] = max(0.0, info["used_s"] - busy)
    info["overhead_frac"] = info["overhead_s"] / info["used_s"]


def run_status(run_dir: str | Path) -> dict[str, Any]:
    rd = RunDir(run_dir).require_dir()
    run_dir = rd.path
    smac_dir = rd.find_smac_dir()
    notes: list[str] = []
    trials, configs, objectives = load_runhistory(smac_dir, notes=notes)
    state = rd.read_state()
    alive = state.get("status") == "running" and time.time() - state.get("updated_at", 0) < 30
    if alive and state.get("pid") and state.get("host") == socket.gethostname():
        try:
            os.kill(int(state["pid"]), 0)
        except ProcessLookupError:
            alive = False
    done = [t for t in trials if t["status_name"] != "running"]
    ok = [t for t in done if t["status_name"] == "success"]
    info: dict[str, Any] = {
        "run_dir": str(run_dir), "smac_dir": str(smac_dir), "objectives": objectives,
        "status": state.get("status", "unknown") if alive or state.get("status") != "running" else "stopped (no heartbeat)",
        "finished": len(ok), "failed": len(done) - len(ok),
        "running": state.get("running", 0) if alive else 0,
        # trials in flight when the last process ended (killed, or cut by the budget's end): no result;
        # the next resume evaluates them again
        "interrupted": 0 if alive else len(trials) - len(done), "notes": notes,
        "budget_s": state.get("budget_s"), "used_s": state.get("used_s"),
        "failures": [{"trial": t["trial"], "status": t["status_name"],
                      "reason": (t.get("additional_info") or {}).get("error", "")} for t in done if t not in ok],
    }
    now = time.time()
    info["running_trials"] = _running_trials(rd, trials, configs, now) if alive else []
    if info["used_s"]:
        _idle_time(info, rd, state, done, now)

    if ok and len(objectives) == 1:
        best = incumbent(ok)
        info["incumbent"] = {"trial": best["trial"], "error": error_of(best["cost"]), "budget": best["budget"],
                             "config": configs.get(str(best["config_id"]), {}), "config_id": best["config_id"]}
    elif ok:
        info["pareto_front"] = [{"trial": t["trial"], "costs": dict(zip(objectives, t["cost"])),
                                 "config": configs.get(str(t["config_id"]), {})} for t in pareto_front(ok)]
    from nexsearch.evaluate import load_summary

    evaluation = load_summary(run_dir)  # `nexsearch evaluate`'s table, when there is one
    if evaluation:
        info["evaluation"] = evaluation
    return info


def print_status(run_dir: str | Path) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from nexsearch.runners.budget import format_duration

    info = run_status(run_dir)
    t = Table(title=f"nexsearch run {info['run_dir']}", show_header=False)
    t.add_row("status", info["status"])
    t.add_row("trials finished", str(info["finished"]))
    t.add_row("trials failed", str(info["failed"]))
    t.add_row("trials running", str(info["running"]))
    if info["interrupted"]:
        t.add_row("trials interrupted", f"{info['interrupted']} (cut by a kill or the budget's end; evaluated again "
                  "when the run resumes)")
    if "incumbent" in info:
        t.add_row("incumbent error", f"{info['incumbent']['error']:.4f} (trial {info['incumbent']['trial']})")
    if "pareto_front" in info:
        t.add_row("Pareto front", f"{len(info['pareto_front'])} configurations")
    if info.get("budget_s"):
        used = info["used_s"] or 0.0
        t.add_row("budget used", f"{format_duration(used)} of {format_duration(info['budget_s'])}")
        t.add_row("budget left", format_duration(max(0.0, info["budget_s"] - used)))
    if "overhead_s" in info:
        t.add_row("no trial running", f"{format_duration(info['overhead_s'])} ({100 * info['overhead_frac']:.1f}% of "
                  "the time used: SMAC, start-up, waiting)")
    console = Console()
    for note in info["notes"]:
        Console(stderr=True).print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(t)
    from nexsearch.running import row_line

    for row in info["running_trials"]:
        console.print("running: " + row_line(row), highlight=False, markup=False, soft_wrap=True)
    for f in info["failures"][-5:]:
        console.print(f"failed trial {f['trial']} ({f['status']}): {f['reason']}", highlight=False, soft_wrap=True)
    if "evaluation" in info:
        from nexsearch.evaluate import print_evaluation

        print_evaluation(info["evaluation"], console)
    return info
