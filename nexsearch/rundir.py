"""The run directory: its layout, and every read and write of its files.

::

    RUN_DIR/experiment.yaml         the experiment as resolved (file + flags)
    RUN_DIR/trials.jsonl            one line per trial that ended: everything the trainer reported
    RUN_DIR/trials.jsonl.torn       what a kill in the middle of an append left, cut away on resume
    RUN_DIR/nexsearch.json          state: budget, time used, status, heartbeat, sessions
    RUN_DIR/full_latency.jsonl      the full_latency objective's cache (per configuration and device)
    RUN_DIR/.lock                   held by the search that runs in this directory
    RUN_DIR/dask-worker-space/      Dask workers' scratch space
    RUN_DIR/smac/<seed>/            SMAC's own files: runhistory.json, configspace.json, scenario.json,
                                    intensifier.json, optimization.json (what DeepCAVE opens)
    RUN_DIR/smac/<seed>/.nexsearch-backup/   the last complete copy of SMAC's state files
    RUN_DIR/evaluation/             ``nexsearch evaluate``: results.jsonl, summary.json,
                                    summary.csv, evaluation.png, .lock, dask-worker-space/

Nothing else in nexsearch names these files: everything asks :class:`RunDir`. This module
imports neither torch nor SMAC, so that ``nexsearch status`` answers at once and ``nexsearch
run`` can start its heartbeat before the heavy imports.

SMAC 2.4.1 rewrites its JSON files in place (not atomically): a kill during a write leaves one
truncated. The runner keeps the last complete copy of each in the backup folder (runhistory
first, so a restored runhistory is never older than the intensifier state beside it); readers
retry a file caught half-written and fall back to that copy, saying so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from nexsearch.errors import RunStopped, UserError
from nexsearch.results import numbered_trials, status_name

SMAC_STATE_FILES = ("runhistory.json", "intensifier.json", "optimization.json")
SMAC_FIXED_FILES = ("configspace.json", "scenario.json")  # written once by SMAC; backed up for readers too
BACKUP_DIR = ".nexsearch-backup"
STATE_BACKUP = ".nexsearch.json.backup"  # the state file as the last session ended it (budget accounting)
EXPERIMENT_BACKUP = ".experiment.yaml.backup"  # the experiment as written: an edit or an emptied file is found
HEARTBEAT_S = 1.0  # a kill -9 loses at most about this much of the budget's accounting


# --- files in general: atomic writes, locked appends, tolerant reads -------------------------------------------


def write_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the new one, never a part.
    The temporary file is removed on failure (a full disk leaves nothing behind); errors propagate."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=indent, default=str)))


def open_nofollow(path: str | Path, mode: str = "a"):
    """``open(path, mode)`` that refuses a symbolic link (a link in a run directory would redirect its writes
    to a file elsewhere): one line instead."""
    flags = {"a": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "a+": os.O_RDWR | os.O_APPEND | os.O_CREAT,
             "r+b": os.O_RDWR, "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT}[mode]
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link: nexsearch does not follow links in a run directory "
                            "(replace it by the file itself)") from None
        raise
    return os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8")


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line under an exclusive lock (safe with several worker processes), synced to disk."""
    line = json.dumps(record, default=str) + "\n"
    with open_nofollow(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file (a line being written right now is left out)."""
    if not Path(path).exists():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_json_retry(path: Path, attempts: int = 5, notes: list[str] | None = None) -> dict[str, Any]:
    """A JSON file that another process rewrites in place: retry a read that catches it half-written, then
    fall back to the runner's last complete copy (a file left truncated, or deleted, by a killed run).
    Reading that copy is said in ``notes`` (when given): it may be one trial behind."""
    path = Path(path)
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


def exclusive_lock(path: Path, busy: Callable[[], str]):
    """A non-blocking exclusive lock on ``path``, held until :func:`unlock`; ``UserError(busy())`` when another
    process holds it."""
    try:
        fh = open_nofollow(path, "a+")
    except OSError as exc:  # a read-only run directory (EROFS, EACCES): one line, an environment fault
        raise RunStopped(f"cannot open {path} ({exc.strerror or exc}): the directory is not writable") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UserError(busy()) from None
    return fh


def unlock(lock) -> None:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


# --- SMAC's state files: backup, repair, consistent snapshots -----------------------------------------------------


def finished_in(runhistory: Path) -> int:
    """Finished trials in a runhistory file (0 when unreadable)."""
    try:
        return int(json.loads(Path(runhistory).read_text())["stats"]["finished"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _copy_atomic(src: Path, dst: Path) -> None:
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


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
            _copy_atomic(Path(smac_dir) / name, backup / name)
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


# --- the state file and its heartbeat -------------------------------------------------------------------------


class Heartbeat:
    """The run's state file (``nexsearch.json``), rewritten every ``HEARTBEAT_S`` by a thread while a session
    runs, so that a kill -9 leaves the time used counted up to about a second before it.

    ``started_at`` is when the session began (the process start: start-up time counts against the
    budget too); ``base`` holds fields written as they are (optimizer, workers, objectives, ...)."""

    def __init__(self, path: Path, budget_s: float, used_before_s: float, started_at: float,
                 base: Mapping[str, Any] | None = None, period_s: float = HEARTBEAT_S):
        self.path = Path(path)
        self.budget_s = budget_s
        self.used_before_s = used_before_s
        self.t0 = started_at
        self.period_s = period_s
        self.base = {"budget_s": budget_s, "pid": os.getpid(), "host": socket.gethostname(), **(base or {})}
        self.history = _read_state(self.path).get("sessions", [])
        self.history.append({"started_at": self.t0})
        self.running: Callable[[], int] = lambda: 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="nexsearch-heartbeat")

    def used(self) -> float:
        return self.used_before_s + time.time() - self.t0

    def update(self, **fields: Any) -> None:
        """Fields known later than the start (optimizer, workers, ...), written from the next beat on."""
        self.base.update(fields)

    def write(self, status: str) -> None:
        self.history[-1]["ended_at"] = time.time()
        data = {**self.base, "status": status, "used_s": self.used(), "running": self.running() if status == "running"
                else 0, "updated_at": time.time(), "sessions": self.history}
        try:
            write_json_atomic(self.path, data)
        except OSError:
            if status == "running":
                raise
            with open(self.path, "r+") as fh:  # a full disk: overwrite the old state's blocks in place
                fh.write(json.dumps(data))
                fh.truncate()

    def _beat(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.write("running")
            except OSError:  # a full disk: the search itself reports it; skip this beat
                pass

    def start(self) -> None:
        self.write("running")
        self._thread.start()

    def stop(self, status: str) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.write(status)
        try:  # a second copy: a state file emptied or deleted later is put back from it (read_state_guarded)
            _copy_atomic(self.path, self.path.with_name(STATE_BACKUP))
        except OSError:
            pass

    def abandon(self, saved: bytes | None) -> None:
        """Stop the heartbeat and put the state file back as it was (a resume refused before it began)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if saved is None:
            self.path.unlink(missing_ok=True)
        else:
            write_atomic(self.path, lambda tmp: tmp.write_bytes(saved))


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}


# --- the run directory ----------------------------------------------------------------------------------------


class RunDir:
    """One run directory: where each file lives, and the operations on them."""

    EXPERIMENT = "experiment.yaml"
    TRIALS = "trials.jsonl"
    TORN = "trials.jsonl.torn"
    STATE = "nexsearch.json"
    LATENCY_CACHE = "full_latency.jsonl"
    LOCK = ".lock"
    DASK = "dask-worker-space"
    SMAC = "smac"
    EVALUATION = "evaluation"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # paths
    @property
    def experiment(self) -> Path:
        return self.path / self.EXPERIMENT

    @property
    def trials(self) -> Path:
        return self.path / self.TRIALS

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def latency_cache(self) -> Path:
        return self.path / self.LATENCY_CACHE

    @property
    def dask_space(self) -> Path:
        return self.path / self.DASK

    @property
    def evaluation(self) -> Path:
        return self.path / self.EVALUATION

    def smac_dir(self, seed: int) -> Path:
        return self.path / self.SMAC / str(seed)

    # what is there
    def is_run(self) -> bool:
        """Whether this directory holds a nexsearch run (its experiment was written)."""
        return self.experiment.is_file()

    def has_history(self) -> bool:
        """Whether trials were recorded (a SMAC state lost now would lose results)."""
        return self.trials.exists() and self.trials.stat().st_size > 0

    def _smac_dirs(self) -> list[Path]:
        """SMAC's output folders under ``smac/`` that hold a runhistory, live or as the last complete copy."""
        root = self.path / self.SMAC
        if not root.is_dir():
            return []
        return sorted({p.parent for p in root.glob("*/runhistory.json")} |
                      {p.parent.parent for p in root.glob(f"*/{BACKUP_DIR}/runhistory.json")})

    def has_smac_state(self) -> bool:
        """Whether SMAC saved a state here (a search ran, even if no trial finished)."""
        return bool(self._smac_dirs())

    def find_smac_dir(self) -> Path:
        """SMAC's output folder of this run (or this folder itself, when it is a bare SMAC output directory)."""
        if (self.path / "runhistory.json").exists():
            return self.path
        candidates = self._smac_dirs()
        if not candidates:
            raise UserError(f"{self.path} is not a nexsearch run (no smac/<seed>/runhistory.json): "
                            "pass a run directory")
        return candidates[0]

    def require_dir(self) -> "RunDir":
        if not self.path.is_dir():
            raise UserError(f"{self.path} does not exist or is not a directory: pass a run directory")
        return self

    # reads
    def read_state(self) -> dict[str, Any]:
        """The state file (empty when missing or unreadable)."""
        return _read_state(self.state)

    def read_state_guarded(self, notes: list[str]) -> dict[str, Any]:
        """The state file of a run to resume: a missing, emptied or corrupt one is read from the copy the last
        session left (said in ``notes``); without that copy, a run with a history is refused (its budget
        accounting would silently start again from zero)."""
        state = self.read_state()
        if isinstance(state.get("used_s"), (int, float)):
            return state
        backup = _read_state(self.path / STATE_BACKUP)
        if isinstance(backup.get("used_s"), (int, float)):
            notes.append(f"{self.state} is missing or corrupt: read the copy the last session left "
                         f"({STATE_BACKUP}, {backup['used_s']:.0f} s used)")
            return backup
        if self.has_history() or self.has_smac_state():
            raise UserError(f"{self.state} is missing or corrupt and has no copy: the time this run used is unknown; "
                            "put the file back, or start a new run with another --out")
        return state

    def read_trials(self) -> list[dict[str, Any]]:
        return read_jsonl(self.trials)

    def runhistory(self, notes: list[str] | None = None):
        """SMAC's runhistory of this run: (trials, configs by id, objective names); see :func:`load_runhistory`."""
        return load_runhistory(self.find_smac_dir(), notes=notes)

    def experiment_text(self) -> str:
        """The experiment the run was made with: an emptied file is read from its copy, an edited one refused."""
        text = self.experiment.read_text()
        backup = self.path / EXPERIMENT_BACKUP
        if backup.is_file() and not backup.is_symlink() and text != (saved := backup.read_text()):
            if text.strip():
                raise UserError(f"{self.experiment} was changed after the run was made (its copy: {backup}): put the "
                                f"original back (cp {backup} {self.experiment}); a new experiment needs a new --out")
            return saved
        if not text.strip():
            raise UserError(f"{self.experiment} is empty and has no copy: put back the experiment the run was made "
                            "with")
        return text

    # writes
    def append_trial(self, record: Mapping[str, Any]) -> None:
        append_jsonl(self.trials, record)

    def write_experiment(self, text: str) -> None:
        write_atomic(self.path / EXPERIMENT_BACKUP, lambda tmp: tmp.write_text(text))
        write_atomic(self.experiment, lambda tmp: tmp.write_text(text))

    def lock(self):
        """The run's lock, held by its search; a second search on it is refused with one line."""
        return exclusive_lock(self.path / self.LOCK, lambda: f"run {self.path} is in use by another nexsearch "
                                                             f"process (pid {self.read_state().get('pid', '?')}): "
                                                             "wait for it or stop it")

    def heartbeat(self, budget_s: float, used_before_s: float, started_at: float,
                  base: Mapping[str, Any] | None = None) -> Heartbeat:
        return Heartbeat(self.state, budget_s, used_before_s, started_at, base)

    def create(self) -> None:
        """Make the directory and check it can be written (one line if not)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".nexsearch-write-test.{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot create the run directory {self.path} ({exc.strerror or exc}): "
                            "choose another --out") from None

    def remove_new(self, made: bool) -> None:
        """Take back a new run that never started (its checks failed): the files this process wrote, and the
        directory itself when this process ``made`` it."""
        for path in (self.experiment, self.state, self.path / self.LOCK, self.path / EXPERIMENT_BACKUP):
            path.unlink(missing_ok=True)
        if made:
            try:
                self.path.rmdir()
            except OSError:  # something else appeared in it: leave it
                pass

    def refuse_links(self) -> None:
        """A run directory whose own files or folders are symbolic links would write elsewhere: refused."""
        names = [self.EXPERIMENT, self.TRIALS, self.TORN, self.STATE, self.LATENCY_CACHE, self.LOCK, self.DASK,
                 self.SMAC, self.EVALUATION, STATE_BACKUP, EXPERIMENT_BACKUP]
        smac = self.path / self.SMAC
        links = [self.path / n for n in names if (self.path / n).is_symlink()]
        if smac.is_dir() and not smac.is_symlink():
            links += [p for d in smac.iterdir() for p in (d, *(d.iterdir() if d.is_dir() and not d.is_symlink()
                                                              else ())) if p.is_symlink()]
        if links:
            raise UserError(f"{links[0]} is a symbolic link: nexsearch does not follow links in a run directory "
                            "(replace it by the file itself)")

    def tidy(self) -> int:
        """Before a resume: remove temporary files of dead processes, and cut a torn last line of the trial log
        (a kill in the middle of an append) away into ``trials.jsonl.torn``, so the next record starts on a line
        of its own. Returns the number of bytes cut (0 if none)."""
        for tmp in [*self.path.glob(".*.tmp"), *self.path.glob(f"{self.SMAC}/*/.*.tmp"),
                    *self.path.glob(f"{self.SMAC}/*/{BACKUP_DIR}/.*.tmp")]:
            tmp.unlink(missing_ok=True)
        self.refuse_links()
        if not self.trials.exists():
            return 0
        data = self.trials.read_bytes()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        with open_nofollow(self.path / self.TORN, "ab") as fh:
            fh.write(data[keep:] + b"\n")
        with open_nofollow(self.trials, "r+b") as fh:
            fh.truncate(keep)
        return len(data) - keep
