"""The run directory: its layout, and every read and write of its files.

::

    RUN_DIR/experiment.yaml         the experiment as resolved (file + flags)
    RUN_DIR/trials.jsonl            one line per trial that ended: everything the trainer reported
    RUN_DIR/trials.jsonl.torn       what a kill in the middle of an append left, cut away on resume
    RUN_DIR/nexsearch.json          state: budget, time used, status, heartbeat, sessions
    RUN_DIR/full_latency.jsonl      the full_latency objective's cache (per configuration and device)
    RUN_DIR/.lock                   held by the search that runs in this directory
    RUN_DIR/dask-worker-space/      Dask workers' scratch space
    RUN_DIR/progress/HOST-PID.json  the trial running in that process: epoch, last validation error (live view)
    RUN_DIR/tensorboard/            --tensorboard: a folder per trial (nexsearch/tensorboard.py)
    RUN_DIR/smac/<seed>/            SMAC's own files: runhistory.json, configspace.json, scenario.json,
                                    intensifier.json, optimization.json (what DeepCAVE opens)
    RUN_DIR/smac/<seed>/.nexsearch-backup/   the last complete copy of SMAC's state files
    RUN_DIR/evaluation/             ``nexsearch evaluate``: results.jsonl, summary.json,
                                    summary.csv, evaluation.png, .lock, dask-worker-space/

The paths of these files are named here and reached through :class:`RunDir`; what is inside
SMAC's folder is the SMAC state's own format (``nexsearch.runners.smac_state``: file names, backup,
repair), what is inside ``evaluation/`` the evaluation store's (``nexsearch.evaluation.store``).
This module imports neither torch nor SMAC, so that ``nexsearch status`` answers at once and
``nexsearch run`` can start its heartbeat before the heavy imports.

Every file nexsearch writes whole goes through :func:`write_atomic` (run files, the evaluation's
summary, exported models, reports, benchmark results); every JSON-lines file is read by
:func:`read_jsonl`.
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


def copy_atomic(src: Path, dst: Path) -> None:
    """``dst`` becomes a whole copy of ``src`` (never a half-written one)."""
    write_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


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


def read_jsonl(path: str | Path, strict: bool = False) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (none when it is missing). A line that is not valid JSON (being written
    right now, or torn by a kill) is left out; with ``strict`` (a writer about to append) it is an error that
    names the line and changes nothing."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise UserError(
                    f"{path}: line {i + 1} of {len(lines)} is torn (not valid JSON: a write was cut off); the other "
                    f"lines are intact: delete that line (sed -i '{i + 1}d' {path}) and run the same command again"
                ) from None
    return records


def parses_json(path: Path) -> bool:
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
                if parses_json(backup):
                    if notes is not None:
                        notes.append(f"{path} is {'missing' if missing else 'truncated or corrupt'}: read its last "
                                     f"complete copy in {backup.parent} (it may be one trial behind)")
                    return json.loads(backup.read_text())
                if missing:
                    raise UserError(f"{path} is missing and has no complete copy in {backup.parent}") from None
                raise UserError(f"{path} is truncated or corrupt (not valid JSON)") from None
            time.sleep(0.2)
    raise AssertionError("unreachable")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts as alive)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            copy_atomic(self.path, self.path.with_name(STATE_BACKUP))
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
    PROGRESS = "progress"
    TENSORBOARD = "tensorboard"
    ASKED = "asked.numbers"  # in progress/: trial numbers of the running trials (not a *.json progress file)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

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

    @property
    def progress(self) -> Path:
        return self.path / self.PROGRESS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    def progress_file(self) -> Path:
        """This process's running trial's progress file (a process runs one trial at a time)."""
        return self.progress / f"{socket.gethostname()}-{os.getpid()}.json"

    def read_progress(self) -> list[dict[str, Any]]:
        """The progress of each running trial (files being replaced right now are skipped)."""
        out = []
        for path in sorted(self.progress.glob("*.json")) if self.progress.is_dir() else []:
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def write_asked(self, numbers: Mapping[str, int]) -> None:
        """The search's trial number of each trial it handed out and has no result of yet (by trial key): SMAC
        writes its runhistory only as results come, so ``status`` reads the numbers of running trials here."""
        self.progress.mkdir(exist_ok=True)
        write_json_atomic(self.progress / self.ASKED, dict(numbers), indent=None)

    def read_asked(self) -> dict[str, int]:
        try:
            return json.loads((self.progress / self.ASKED).read_text())
        except (OSError, ValueError):
            return {}

    def clear_progress(self) -> None:
        """Before a search starts: progress files left by processes that a kill ended."""
        for path in [*self.progress.glob("*.json"), self.progress / self.ASKED] if self.progress.is_dir() else []:
            path.unlink(missing_ok=True)

    def smac_dir(self, seed: int) -> Path:
        return self.path / self.SMAC / str(seed)

    # what is there
    def is_run(self) -> bool:
        """Whether this directory holds a nexsearch run (its experiment was written)."""
        return self.experiment.is_file()

    def has_history(self) -> bool:
        """Whether trials were recorded (a SMAC state lost now would lose results)."""
        return self.trials.exists() and self.trials.stat().st_size > 0

    def smac_dirs(self) -> list[Path]:
        """The folders under ``smac/``: one per seed a search ran with (``smac_dir(seed)``)."""
        root = self.path / self.SMAC
        if not root.is_dir():
            return []
        return sorted({p for p in root.iterdir() if p.is_dir()})

    def require_dir(self) -> "RunDir":
        if not self.path.is_dir():
            raise UserError(f"{self.path} does not exist or is not a directory: pass a run directory")
        return self

    # reads
    def read_state(self) -> dict[str, Any]:
        """The state file (empty when missing or unreadable)."""
        return _read_state(self.state)

    def read_state_guarded(self, notes: list[str], has_state: bool = False) -> dict[str, Any]:
        """The state file of a run to resume: a missing, emptied or corrupt one is read from the copy the last
        session left (said in ``notes``); without that copy, a run with a history is refused (its budget
        accounting would silently start again from zero). ``has_state``: the optimizer saved a state in the run."""
        state = self.read_state()
        if isinstance(state.get("used_s"), (int, float)):
            return state
        backup = _read_state(self.path / STATE_BACKUP)
        if isinstance(backup.get("used_s"), (int, float)):
            notes.append(f"{self.state} is missing or corrupt: read the copy the last session left "
                         f"({STATE_BACKUP}, {backup['used_s']:.0f} s used)")
            return backup
        if self.has_history() or has_state:
            raise UserError(f"{self.state} is missing or corrupt and has no copy: the time this run used is unknown; "
                            "put the file back, or start a new run with another --out")
        return state

    def read_trials(self) -> list[dict[str, Any]]:
        return read_jsonl(self.trials)

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
