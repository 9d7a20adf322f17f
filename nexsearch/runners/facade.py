"""The SMAC side of a search: the optimizer built from an experiment (through the name -> factory mapping
of ``nexsearch.runners.optimizers``), and the callbacks and runner pieces that keep SMAC's record whole
(backups of its state, cut trials kept from it, trials interrupted by a kill handed out again).

SMAC is imported here, and this module is imported only when a search (or ``bench smac``) starts.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from smac.callback import Callback

from nexsearch.runners.smac_state import backup_finished, backup_smac_state

if TYPE_CHECKING:
    from nexsearch.runners.experiment import Experiment


def build_smac(exp: "Experiment", run_dir: Path, runner_factory, callbacks: list, selector: str = "batched",
               console: Console | None = None, space: Any = None) -> Any:
    """The optimizer of ``exp`` (``nexsearch.runners.optimizers.OPTIMIZERS``) in ``run_dir`` (SMAC's files go to
    ``run_dir/smac/<seed>``), with its state backed up after every trial. ``runner_factory(scenario,
    required_arguments)`` makes SMAC's runner; ``callbacks`` are SMAC callbacks (the live view); ``selector``:
    ``batched`` (nexsearch's config selector) or ``smac`` (SMAC's own); ``space``: another ConfigSpace than
    nexsearch's (``bench optimizers``: a NAS-Bench-201 table's)."""
    from smac.main.config_selector import ConfigSelector

    from nexsearch.runners.optimizers import OPTIMIZERS, SearchSetup
    from nexsearch.runners.selector import BatchedConfigSelector

    setup = SearchSetup(exp, Path(run_dir), runner_factory, [*callbacks, BackupState()],
                        BatchedConfigSelector if selector == "batched" else ConfigSelector, console, space)
    return OPTIMIZERS[exp.optimizer](setup)


class BackupState(Callback):
    """Before SMAC rewrites its state files (after this trial), keep a copy of the complete ones
    (never replacing a copy that holds more finished trials than the live files)."""

    def __init__(self) -> None:
        super().__init__()
        self._backup_finished: int | None = None  # finished trials in the backup (read once, then tracked)

    def on_tell_start(self, smbo: Any, info: Any, value: Any) -> None:
        path = smbo._scenario.output_directory
        if path is None or not Path(path).is_dir():
            return
        live = smbo.runhistory.finished  # what the live files hold: SMAC saved them after the last trial
        if self._backup_finished is None:
            self._backup_finished = backup_finished(Path(path))
        if live >= self._backup_finished:
            backup_smac_state(Path(path))
            self._backup_finished = live


class SerialRunnerMixin:
    """Mixin of the serial runner: a trial cut by the budget's end is kept from SMAC (see target.is_cut)."""

    def iter_results(self):
        from nexsearch.objectives.target import is_cut

        for info, value in super().iter_results():  # type: ignore[misc]
            if not is_cut(value):
                yield info, value


def retry_interrupted(smac: Any, console: Console) -> int:
    """Trials still RUNNING in a loaded run died with their process (kill, crash) or were cut by the budget's
    end: SMAC would never run them again. Hand them out first, through SMAC's own ask/tell loop."""
    interrupted = list(smac.runhistory.get_running_trials())
    if interrupted:
        smac.optimizer._trial_generator = itertools.chain(interrupted, smac.optimizer._trial_generator)
        console.print(f"{len(interrupted)} trial(s) interrupted when the last session ended are evaluated again first",
                      highlight=False)
    return len(interrupted)
