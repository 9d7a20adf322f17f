"""``nexsearch status RUN_DIR``: progress of a running or finished run, read from its files only."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from nexsearch.errors import UserError
from nexsearch.results import error_of, incumbent, numbered_trials, pareto_front, status_name


# SMAC 2.4.1 rewrites these in place (not atomically): a kill during a write leaves one truncated.
# The runner keeps the last complete copy of each in BACKUP_DIR (runhistory first, so a restored
# runhistory is never older than the intensifier state beside it).
SMAC_STATE_FILES = ("runhistory.json", "intensifier.json", "optimization.json")
BACKUP_DIR = ".nexsearch-backup"


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def _finished(path: Path) -> int:
    """Finished trials in a runhistory file (0 when unreadable)."""
    try:
        return int(json.loads(path.read_text())["stats"]["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def read_json_retry(path: Path, attempts: int = 5, notes: list[str] | None = None) -> dict[str, Any]:
    """SMAC rewrites its JSON files in place: retry a read that catches one half-written, then fall
    back to the runner's last complete copy (a file left truncated, or deleted, by a killed run).
    Reading that copy is said in ``notes`` (when given): it may be one trial behind."""
    backup = path.parent / BACKUP_DIR / path.name
    for i in range(attempts):
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError) as exc:
            missing = isinstance(exc, FileNotFoundError)
            if missing or i == attempts - 1:
                if _parses(backup):
                    if notes is not None:
                        notes.append(f"{path} is {'missing' if missing else 'truncated or corrupt'}: read its last "
                                     f"complete copy in {backup.parent} (it may be one trial behind)")
                    return json.loads(backup.read_text())
                if missing:
                    raise UserError(f"{path} is missing and has no complete copy in {backup.parent}") from None
                raise UserError(f"{path} is truncated or corrupt (not valid JSON)") from None
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def backup_smac_state(smac_dir: Path, finished: int | None = None) -> bool:
    """Copy SMAC's state files (complete at this point: SMAC saved them after the last trial).

    A backup is never replaced by an older state: with ``finished`` (the finished trials of the
    live files) smaller than the backup's, nothing is copied and False is returned."""
    backup = Path(smac_dir) / BACKUP_DIR
    if finished is not None and finished < _finished(backup / "runhistory.json"):
        return False
    backup.mkdir(exist_ok=True)
    for name in SMAC_STATE_FILES:
        if (Path(smac_dir) / name).exists():
            _copy_atomic(Path(smac_dir) / name, backup / name)
    return True


def repair_smac_state(smac_dir: Path, has_history: bool = False) -> list[str]:
    """Before a resume: when a kill (or a user) left a SMAC state file truncated or deleted, put back the
    last complete copies -- all of them, so that runhistory and intensifier agree -- and return what was
    wrong ("runhistory.json (missing)"). Without a complete copy the resume is refused when there is a
    history to lose (``has_history``: trials were recorded); SMAC would otherwise start from nothing."""
    smac_dir, backup = Path(smac_dir), Path(smac_dir) / BACKUP_DIR
    present = [n for n in SMAC_STATE_FILES if (smac_dir / n).exists()]
    backed_up = all(_parses(backup / n) for n in SMAC_STATE_FILES)
    if not present and not backed_up and not has_history:
        return []  # SMAC never saved a state (killed during start-up): a fresh start loses nothing
    wrong = [f"{n} (missing)" for n in SMAC_STATE_FILES if n not in present]
    wrong += [f"{n} (truncated)" for n in present if not _parses(smac_dir / n)]
    if not wrong:
        return []
    if backed_up:
        for name in SMAC_STATE_FILES:
            _copy_atomic(backup / name, smac_dir / name)
        return wrong
    if has_history:
        raise UserError(f"{smac_dir / wrong[0].split()[0]} is {wrong[0].split()[1].strip('()')} and there is no "
                        f"complete copy in {backup}: the run cannot be resumed; start a new one with another --out")
    for name in present:  # a kill in SMAC's very first save, before any trial: nothing to lose, start afresh
        (smac_dir / name).unlink()
    return []


def snapshot_smac_dir(smac_dir: Path, dest: Path) -> Path:
    """A consistent, readable copy of SMAC's files for readers that open them by path (DeepCAVE):
    half-written files are read again, truncated ones replaced by the runner's last complete copy."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in Path(smac_dir).glob("*.json")} | set(SMAC_STATE_FILES)
    for name in sorted(names):
        (dest / name).write_text(json.dumps(read_json_retry(Path(smac_dir) / name)))
    return dest


def find_smac_dir(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    if (run_dir / "runhistory.json").exists():
        return run_dir
    candidates = sorted({p.parent for p in (run_dir / "smac").glob("*/runhistory.json")} |
                        {p.parent.parent for p in (run_dir / "smac").glob(f"*/{BACKUP_DIR}/runhistory.json")}
                        ) if (run_dir / "smac").is_dir() else []
    if not candidates:
        raise UserError(f"{run_dir} is not a nexsearch run (no smac/<seed>/runhistory.json): pass a run directory")
    return candidates[0]


def load_runhistory(smac_dir: Path, notes: list[str] | None = None
                    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """SMAC's runhistory as (trials, configs by id, objective names); ``notes`` collects what was read
    from the last complete copy instead of the live file."""
    rh = read_json_retry(smac_dir / "runhistory.json", notes=notes)
    scenario = read_json_retry(smac_dir / "scenario.json") if (smac_dir / "scenario.json").exists() else {}
    objectives = scenario.get("objectives", "cost")
    objectives = [objectives] if isinstance(objectives, str) else list(objectives)
    trials = []
    for number, row in numbered_trials(rh.get("data", [])):
        if isinstance(row, dict):
            trial = dict(row)
        else:  # older list layout
            keys = ["config_id", "instance", "seed", "budget", "cost", "time", "cpu_time", "status", "starttime",
                    "endtime", "additional_info"]
            trial = dict(zip(keys, row))
        trial["trial"] = number
        trial["status_name"] = status_name(trial["status"])
        trials.append(trial)
    return trials, rh.get("configs", {}), objectives


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def run_status(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} does not exist or is not a directory: pass a run directory")
    smac_dir = find_smac_dir(run_dir)
    notes: list[str] = []
    trials, configs, objectives = load_runhistory(smac_dir, notes=notes)
    state_path = run_dir / "nexsearch.json"
    try:
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        state = {}
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
    # SMAC's overhead: wall time in which no trial was running.
    intervals = [(t["starttime"], t["endtime"]) for t in done if t.get("starttime") and t.get("endtime")]
    if info["used_s"]:
        busy = _union_seconds(intervals)
        info["trial_time_s"] = busy
        info["overhead_s"] = max(0.0, info["used_s"] - busy)
        info["overhead_frac"] = info["overhead_s"] / info["used_s"]

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
        t.add_row("SMAC overhead", f"{format_duration(info['overhead_s'])} ({100 * info['overhead_frac']:.1f}% of wall time"
                  " with no trial running)")
    console = Console()
    for note in info["notes"]:
        Console(stderr=True).print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(t)
    for f in info["failures"][-5:]:
        console.print(f"failed trial {f['trial']} ({f['status']}): {f['reason']}", highlight=False, soft_wrap=True)
    if "evaluation" in info:
        from nexsearch.evaluate import print_evaluation

        print_evaluation(info["evaluation"], console)
    return info
