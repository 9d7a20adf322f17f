"""The live view of a run (rich), fed by a SMAC callback and the running trials' progress files.

On a terminal it redraws every second (``rich.Live`` asks ``_render`` anew on each refresh): a budget
bar with time used and left and an estimate of the trials still to come, the counts, the incumbent,
one line per running trial (number, configuration digest, epoch i/n, last validation error; from the
progress files that trials write per epoch, in this process or on Dask workers) and warnings (an epoch
far slower than the run's median, a trial the budget's end will cut). Otherwise (logs, CI) it prints one
line per finished trial and, from a thread, a running trial's new epoch at most every ``epoch_line_s``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from smac.callback import Callback
from smac.runhistory import StatusType, TrialKey

from nexsearch.results import error_of, incumbent, numbered_trials, status_name, trial_number
from nexsearch.rundir import RunDir
from nexsearch.runners.budget import format_duration
from nexsearch.running import key_text, median_epoch_s, row_line, row_warnings, running_rows, trial_key

class ProgressView(Callback):
    """Trials finished / failed / running, incumbent error, budget used and left.

    On a terminal it redraws a small table; otherwise (logs, CI) it prints one line per trial.
    ``should_stop`` is consulted after every trial; when it says so SMAC stops asking.
    """

    def __init__(self, console: Console, budget_s: float, used_before_s: float, running: Callable[[], int],
                 should_stop: Callable[[], bool], objectives: list[str], run_dir: RunDir | None = None,
                 epoch_line_s: float = 10.0):
        super().__init__()
        self.console = console
        self.budget_s = budget_s
        self.used_before_s = used_before_s
        self.started = time.time()
        self.running = running
        self.should_stop = should_stop
        self.objectives = objectives
        self.finished = self.failed = 0
        self.successful: list[dict[str, Any]] = []  # trial number, budget, cost: what the incumbent is chosen from
        self.live: Live | None = None
        self.idle = True  # serial runs: no trial in flight between a tell and the next ask
        self.run_dir = run_dir
        self.epoch_line_s = epoch_line_s
        self.numbers: dict[tuple, int] = {}  # (config digest, budget, seed) of each trial asked -> its number
        self.curves: list[list[dict[str, Any]]] = []  # finished trials' learning curves (the median epoch)
        self._lines: threading.Thread | None = None
        self._quit = threading.Event()
        self.listeners: list[Callable[[int, Any, Any], None]] = []  # told each result: (number, info, value)

    def on_ask_end(self, smbo: Any, info: Any) -> None:
        self.idle = False
        rh = smbo.runhistory
        key = TrialKey(config_id=rh.get_config_id(info.config), instance=info.instance, seed=info.seed,
                       budget=info.budget)
        self.numbers[trial_key(dict(info.config), info.budget, info.seed)] = trial_number(rh, key)
        self._save_numbers()

    def _save_numbers(self) -> None:
        """For ``nexsearch status`` in another shell: SMAC's files name a running trial only later."""
        if self.run_dir is not None:
            try:
                self.run_dir.write_asked({key_text(k): n for k, n in self.numbers.items()})
            except OSError:  # a full disk: the search itself reports it
                pass

    def on_iteration_end(self, smbo: Any) -> None:
        # A trial cut by the budget's end is never told (no on_tell_end): stop SMAC here, or it would go on asking.
        self.idle = True
        if self.should_stop():
            smbo._stop = True

    def used(self) -> float:
        return self.used_before_s + time.time() - self.started

    def on_start(self, smbo: Any) -> None:
        # SMAC calls this again whenever the runner re-enters optimize() (after FirstRunCrashedException):
        # count from scratch and keep a single live display.
        self.finished = self.failed = 0
        self.successful = []
        for number, (key, value) in numbered_trials(smbo.runhistory.items()):
            if value.status != StatusType.RUNNING:
                self._count(number, key.budget, value)
        if self.console.is_terminal and self.live is None:
            self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=1,
                             transient=False)
            self.live.start()
        elif not self.console.is_terminal and self._lines is None and self.run_dir is not None:
            self._quit.clear()
            self._lines = threading.Thread(target=self._epoch_lines, daemon=True, name="nexsearch-epoch-lines")
            self._lines.start()

    def on_end(self, smbo: Any) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None
        if self._lines is not None:
            self._quit.set()
            self._lines.join(timeout=5)
            self._lines = None

    def _count(self, number: int, budget: float | None, value: Any) -> None:
        if value.status == StatusType.SUCCESS:
            self.finished += 1
            self.successful.append({"trial": number, "budget": budget, "cost": value.cost})
        else:
            self.failed += 1

    def on_tell_end(self, smbo: Any, info: Any, value: Any) -> bool | None:
        self.idle = True
        rh = smbo.runhistory
        # the trial's number in `nexsearch status`, the analysis and `export --trial` (not the count of results)
        number = trial_number(rh, TrialKey(config_id=rh.get_config_id(info.config), instance=info.instance,
                                           seed=info.seed, budget=info.budget))
        self._count(number, info.budget, value)
        self.numbers.pop(trial_key(dict(info.config), info.budget, info.seed), None)
        self._save_numbers()
        self.curves.append((value.additional_info or {}).get("curve") or [])
        for listener in self.listeners:
            listener(number, info, value)
        if self.live is not None:
            self.live.refresh()
        else:
            status = status_name(value.status)
            reason = value.additional_info.get("error", "") if status != "success" else ""
            budget = f" budget {info.budget:g}" if info.budget is not None else ""
            self.console.print(
                f"trial {number}: {status}{budget} error {error_of(value.cost):.4f} "
                f"({value.time:.1f}s) | best {self._best()} | used {format_duration(self.used())} "
                f"of {format_duration(self.budget_s)}" + (f" | {reason}" if reason else ""),
                highlight=False, soft_wrap=True,
            )
        return False if self.should_stop() else None

    def _best(self) -> str:
        best = incumbent(self.successful)
        return "-" if best is None else f"{error_of(best['cost']):.4f} (trial {best['trial']})"

    def running_trials(self, now: float) -> list[dict[str, Any]]:
        progress = self.run_dir.read_progress() if self.run_dir is not None else []
        return running_rows(progress, self.numbers.get, now)

    def _estimate(self, used: float) -> str:
        """Trials still to come at the pace so far (trials ended per second of budget used)."""
        done = self.finished + self.failed
        if not done or used <= 0:
            return "-"
        return f"about {int(done / used * max(0.0, self.budget_s - used))} more"

    def _render(self) -> Group:
        """The whole view, computed anew at each refresh."""
        now = time.time()
        progress = self.run_dir.read_progress() if self.run_dir is not None else []
        rows = running_rows(progress, self.numbers.get, now)
        used = self.used()
        left = max(0.0, self.budget_s - used)
        parts: list[Any] = [self._table(used, len(rows))]
        median = median_epoch_s(self.curves, progress)
        for row in rows:
            parts.append(Text("  " + row_line(row)))
        for row in rows:
            for warning in row_warnings(row, median, left):
                parts.append(Text("  warning: " + warning, style="yellow"))
        return Group(*parts)

    def _table(self, used: float | None = None, running: int | None = None) -> Table:
        used = self.used() if used is None else used
        t = Table(title="nexsearch run", show_header=False)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=self.budget_s, completed=min(used, self.budget_s), width=30),
                    f"{format_duration(used)} of {format_duration(self.budget_s)}")
        t.add_row("budget", bar)
        t.add_row("budget left", format_duration(max(0.0, self.budget_s - used)))
        t.add_row("trials finished", str(self.finished))
        t.add_row("trials failed", str(self.failed))
        t.add_row("trials running", str(max(self.running(), running or 0)))
        t.add_row("trials to come", self._estimate(used))
        t.add_row("incumbent error", self._best())
        return t

    def _epoch_lines(self) -> None:
        """Logs and CI: a running trial's newest epoch, one line per trial at most every ``epoch_line_s``."""
        shown: dict[tuple, tuple[int, float]] = {}  # (digest, trial) -> (epoch shown, when)
        while not self._quit.wait(1.0):
            now = time.time()
            for row in self.running_trials(now):
                key = (row["digest"], row["trial"])
                epoch, when = shown.get(key, (0, 0.0))
                if row["epoch"] > epoch and now - when >= self.epoch_line_s:
                    shown[key] = (row["epoch"], now)
                    self.console.print(f"{row_line(row)} | used {format_duration(self.used())} of "
                                       f"{format_duration(self.budget_s)}", highlight=False, markup=False, soft_wrap=True)
