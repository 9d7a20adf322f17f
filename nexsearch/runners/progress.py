"""The live view of a run (rich), fed by a SMAC callback."""

from __future__ import annotations

import time
from typing import Any, Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table
from smac.callback import Callback
from smac.runhistory import StatusType, TrialKey

from nexsearch.results import error_of, incumbent, numbered_trials, status_name, trial_number
from nexsearch.runners.budget import format_duration


class ProgressView(Callback):
    """Trials finished / failed / running, incumbent error, budget used and left.

    On a terminal it redraws a small table; otherwise (logs, CI) it prints one line per trial.
    ``should_stop`` is consulted after every trial; when it says so SMAC stops asking.
    """

    def __init__(self, console: Console, budget_s: float, used_before_s: float, running: Callable[[], int],
                 should_stop: Callable[[], bool], objectives: list[str]):
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

    def on_ask_end(self, smbo: Any, info: Any) -> None:
        self.idle = False

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
            self.live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
            self.live.start()

    def on_end(self, smbo: Any) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            self.live = None

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
        if self.live is not None:
            self.live.update(self._table())
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

    def _table(self) -> Table:
        t = Table(title="nexsearch run", show_header=False)
        used = self.used()
        t.add_row("trials finished", str(self.finished))
        t.add_row("trials failed", str(self.failed))
        t.add_row("trials running", str(self.running()))
        t.add_row("incumbent error", self._best())
        t.add_row("budget used", f"{format_duration(used)} of {format_duration(self.budget_s)}")
        t.add_row("budget left", format_duration(max(0.0, self.budget_s - used)))
        return t
