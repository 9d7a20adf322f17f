"""The trials running right now, as the live view and ``nexsearch status`` show them.

Each process that runs a trial (the search's own, or a Dask worker) keeps one small progress file
in the run directory (``RunDir.progress_file``): written atomically when the trial starts and after
each epoch (the trainer's ``on_epoch``), removed when the trial ends. Readers match a file to SMAC's
trial number by (configuration, budget, seed). No torch, no SMAC here: ``status`` reads these too.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import time
from typing import Any, Callable, Iterable, Mapping

from nexsearch.rundir import RunDir, write_json_atomic
from nexsearch.runners.budget import format_duration

SLOW_EPOCH_FACTOR = 3.0  # an epoch this many times the run's median epoch is reported as slow
SLOW_EPOCH_MIN_S = 5.0  # ... when it also takes at least this long


def config_digest(config: Mapping[str, Any]) -> str:
    """Six hex digits naming a configuration (the same in the live view, ``status`` and the report)."""
    return hashlib.sha1(json.dumps(dict(config), sort_keys=True, default=str).encode()).hexdigest()[:6]


def trial_key(config: Mapping[str, Any], budget: float | None, seed: int | None) -> tuple:
    """What identifies a running trial in SMAC's runhistory and in its progress file."""
    budget = None if budget is None or budget != budget else round(float(budget), 6)  # NaN: no budget
    return config_digest(config), budget, int(seed or 0)


def key_text(key: tuple) -> str:
    """A trial key as the run directory's ``asked`` file stores it."""
    return json.dumps(list(key))


class TrialProgress:
    """One trial's progress file: written at its start and after each epoch (``epoch``), removed by ``close``.
    A file that cannot be written (a full disk) is skipped: progress never fails a trial."""

    def __init__(self, run_dir: RunDir | None, config: Mapping[str, Any], seed: int, budget: float | None,
                 epochs: int):
        self.path = run_dir.progress_file() if run_dir is not None else None
        now = time.time()
        self.data: dict[str, Any] = {
            "config": dict(config), "digest": config_digest(config), "seed": int(seed), "budget": budget,
            "epochs": epochs, "epoch": 0, "val_error": None, "started": now, "updated": now, "epoch_s": [],
            "epoch_end": [], "host": socket.gethostname(), "pid": os.getpid(),
        }
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(exist_ok=True)
            write_json_atomic(self.path, self.data, indent=None)
        except OSError:
            pass

    def epoch(self, row: Mapping[str, Any]) -> None:
        """The trainer's per-epoch callback: ``row`` is the learning curve's new row."""
        now = time.time()
        self.data.update(epoch=row["epoch"], val_error=row.get("val_error"), updated=now)
        self.data["epoch_s"].append(row.get("train_s"))
        self.data["epoch_end"].append(now)
        self._write()

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def median_epoch_s(curves: Iterable[Iterable[Mapping[str, Any]]], running: Iterable[Mapping[str, Any]] = ()
                   ) -> float | None:
    """The run's median epoch (training seconds), over finished trials' curves and the running trials."""
    times = [row["train_s"] for curve in curves for row in curve or [] if row.get("train_s")]
    times += [s for p in running for s in p.get("epoch_s", []) if s]
    return statistics.median(times) if times else None


def running_rows(progress: list[Mapping[str, Any]], number: Callable[[tuple], int | None], now: float
                 ) -> list[dict[str, Any]]:
    """Each running trial: its number (None when SMAC's records do not know it yet), digest, epoch, error,
    seconds since it started and since its last epoch, and its mean wall seconds per epoch so far."""
    rows = []
    for p in progress:
        ends = p.get("epoch_end") or []
        rows.append({
            "trial": number(trial_key(p["config"], p.get("budget"), p.get("seed"))), "digest": p["digest"],
            "epoch": p.get("epoch", 0), "epochs": p.get("epochs"), "val_error": p.get("val_error"),
            "elapsed_s": now - p["started"], "in_epoch_s": now - (ends[-1] if ends else p["started"]),
            "per_epoch_s": (ends[-1] - p["started"]) / len(ends) if ends else None, "budget": p.get("budget"),
        })
    return sorted(rows, key=lambda r: (r["trial"] is None, r["trial"] or 0))


def row_line(row: Mapping[str, Any]) -> str:
    """``trial 12 [3fa2c1] epoch 3/9  val error 0.2345  41s``."""
    name = f"trial {row['trial']}" if row["trial"] is not None else "trial ?"
    error = "-" if row["val_error"] is None else f"{row['val_error']:.4f}"
    return (f"{name} [{row['digest']}] epoch {row['epoch']}/{row['epochs']}  val error {error}  "
            f"{format_duration(row['elapsed_s'])}")


def row_warnings(row: Mapping[str, Any], median_s: float | None, left_s: float | None) -> list[str]:
    """A warning when the trial's current epoch is far slower than the run's median epoch, and when the
    budget's end will cut it before its last epoch (at its pace so far)."""
    name = f"trial {row['trial']}" if row["trial"] is not None else f"trial [{row['digest']}]"
    out = []
    if median_s and row["in_epoch_s"] > max(SLOW_EPOCH_MIN_S, SLOW_EPOCH_FACTOR * median_s):
        out.append(f"{name}: epoch {row['epoch'] + 1} has taken {format_duration(row['in_epoch_s'])} "
                   f"(the run's median epoch: {median_s:.1f}s)")
    if left_s is not None and row["epochs"]:
        pace = max(row["per_epoch_s"] or 0.0, row["in_epoch_s"])  # the epoch running now took this long already
        needs = (row["epochs"] - row["epoch"]) * pace - row["in_epoch_s"]
        if needs > left_s:
            out.append(f"{name}: the budget's end will cut it (needs about {format_duration(needs)} more, "
                       f"{format_duration(left_s)} left)")
    return out
