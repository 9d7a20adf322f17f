"""SMAC's state on disk: the format of the files SMAC writes under ``RUN_DIR/smac/<seed>/`` (runhistory.json,
intensifier.json, optimization.json, scenario.json), the runner's backup of them, their repair before a
resume, consistent snapshots for DeepCAVE, and :func:`read_smac_history`, the reader that turns them into the
plain :class:`nexsearch.results.History` every reader takes.

This module imports neither SMAC nor torch (``nexsearch status`` reads through it and answers at once).

SMAC 2.4.1 rewrites its JSON files in place (not atomically): a kill during a write leaves one
truncated. The runner keeps the last complete copy of each in the backup folder (runhistory
first, so a restored runhistory is never older than the intensifier state beside it); readers
retry a file caught half-written and fall back to that copy, saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexsearch.errors import UserError
from nexsearch.results import History, numbered_trials, status_name
from nexsearch.rundir import BACKUP_DIR, RunDir, copy_atomic, parses_json, read_json_retry, write_json_atomic

SMAC_STATE_FILES = ("runhistory.json", "intensifier.json", "optimization.json")
SMAC_FIXED_FILES = ("configspace.json", "scenario.json")  # written once by SMAC; backed up for readers too
# columns of a runhistory row in SMAC's older list layout
_ROW_KEYS = ("config_id", "instance", "seed", "budget", "cost", "time", "cpu_time", "status", "starttime", "endtime",
             "additional_info")



def finished_in(runhistory: Path) -> int:
    """Finished trials in a runhistory file (0 when unreadable)."""
    try:
        return int(json.loads(Path(runhistory).read_text())["stats"]["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def backup_smac_state(smac_dir: Path, finished: int | None = None) -> bool:
    """Copy SMAC's state files (complete at this point: SMAC saved them after the last trial).

    A backup is never replaced by an older state: with ``finished`` (the finished trials of the
    live files) smaller than the backup's, nothing is copied and False is returned."""
    backup = Path(smac_dir) / BACKUP_DIR
    if finished is not None and finished < backup_finished(smac_dir):
        return False
    backup.mkdir(exist_ok=True)
    for name in SMAC_STATE_FILES + SMAC_FIXED_FILES:
        if (Path(smac_dir) / name).exists():
            copy_atomic(Path(smac_dir) / name, backup / name)
    return True


def backup_finished(smac_dir: Path) -> int:
    """Finished trials in the backup of SMAC's state (0 without one)."""
    return finished_in(Path(smac_dir) / BACKUP_DIR / "runhistory.json")


def repair_smac_state(smac_dir: Path, has_history: bool = False) -> list[str]:
    """Before a resume: when a kill (or a user) left a SMAC state file truncated or deleted, put back the
    last complete copies -- all of them, so that runhistory and intensifier agree -- and return what was
    wrong ("runhistory.json (missing)"). Without a complete copy the resume is refused when there is a
    history to lose (``has_history``: trials were recorded); SMAC would otherwise start from nothing."""
    smac_dir, backup = Path(smac_dir), Path(smac_dir) / BACKUP_DIR
    present = [n for n in SMAC_STATE_FILES if (smac_dir / n).exists()]
    backed_up = all(parses_json(backup / n) for n in SMAC_STATE_FILES)
    if not present and not backed_up and not has_history:
        return []  # SMAC never saved a state (killed during start-up): a fresh start loses nothing
    wrong = [f"{n} (missing)" for n in SMAC_STATE_FILES if n not in present]
    wrong += [f"{n} (truncated)" for n in present if not parses_json(smac_dir / n)]
    if not wrong:
        return []
    if backed_up:
        for name in SMAC_STATE_FILES:
            copy_atomic(backup / name, smac_dir / name)
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
    names |= {n for n in SMAC_FIXED_FILES if (Path(smac_dir) / BACKUP_DIR / n).is_file()}  # deleted: the copy
    for name in sorted(names):
        (dest / name).write_text(json.dumps(read_json_retry(Path(smac_dir) / name)))
    return dest


def fix_moved_scenario(smac_dir: Path) -> None:
    """A run directory that was moved still resumes: point its saved scenario at the new place."""
    path = Path(smac_dir) / "scenario.json"
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("output_directory") != str(smac_dir):
            data["output_directory"] = str(smac_dir)
            write_json_atomic(path, data)


def load_runhistory(smac_dir: Path, notes: list[str] | None = None
                    ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[str]]:
    """SMAC's runhistory as (trials, configs by id, objective names); ``notes`` collects what was read
    from the last complete copy instead of the live file."""
    smac_dir = Path(smac_dir)
    rh = read_json_retry(smac_dir / "runhistory.json", notes=notes)
    scenario = read_json_retry(smac_dir / "scenario.json") if (smac_dir / "scenario.json").exists() else {}
    objectives = scenario.get("objectives", "cost")
    objectives = [objectives] if isinstance(objectives, str) else list(objectives)
    trials = []
    for number, row in numbered_trials(rh.get("data", [])):
        trial = dict(row) if isinstance(row, dict) else dict(zip(_ROW_KEYS, row))  # a list: the older layout
        trial["trial"] = number
        trial["status_name"] = status_name(trial["status"])
        trials.append(trial)
    return trials, rh.get("configs", {}), objectives


def _saved(smac_dir: Path) -> bool:
    """Whether SMAC saved a runhistory in ``smac_dir``, live or as the last complete copy."""
    return (smac_dir / "runhistory.json").exists() or (smac_dir / BACKUP_DIR / "runhistory.json").exists()


def has_smac_state(rd: RunDir) -> bool:
    """Whether SMAC saved a state in the run (a search ran, even if no trial finished)."""
    return any(_saved(d) for d in rd.smac_dirs())


def find_smac_dir(rd: RunDir) -> Path | None:
    """SMAC's output folder of the run (the folder itself, when it is a bare SMAC output directory); None
    without one."""
    if (rd.path / "runhistory.json").exists():
        return rd.path
    return next((d for d in rd.smac_dirs() if _saved(d)), None)


def read_smac_history(rd: RunDir) -> History | None:
    """The history of a run searched by a SMAC facade (None when SMAC saved nothing there)."""
    smac_dir = find_smac_dir(rd)
    if smac_dir is None:
        return None
    notes: list[str] = []
    trials, configs, objectives = load_runhistory(smac_dir, notes=notes)
    return History(trials, configs, objectives, smac_dir, notes)
