"""The SMAC side of a search: the facade built from an experiment, and the callbacks and runner
pieces that keep SMAC's record whole (backups of its state, cut trials kept from it, trials
interrupted by a kill handed out again).

SMAC is imported here, and this module is imported only when a search (or ``bench smac``) starts.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from smac.callback import Callback

from nexsearch.errors import UserError
from nexsearch.rundir import BACKUP_DIR, RunDir, backup_finished, backup_smac_state, fix_moved_scenario, \
    repair_smac_state

if TYPE_CHECKING:
    from nexsearch.runners.experiment import Experiment

# Latency / params / MACs of a crashed trial, for SMAC's surrogate only: above every real value (full-size
# MACs included), since SMAC normalises by the successful trials' range without clipping.
SECONDARY_CRASH_COST = 1e15


def _no_prompt(*_: Any, **__: Any) -> str:
    raise UserError("SMAC found a different scenario in the run directory: resume with the original settings")


def build_smac(exp: "Experiment", run_dir: Path, runner_factory, callbacks: list, selector: str = "batched",
                console: Console | None = None, space: Any = None) -> Any:
    """SMAC's facade for ``exp`` in ``run_dir`` (SMAC's files go to ``run_dir/smac/<seed>``): the optimizer's
    facade, its initial design, intensifier and config selector, ParEGO for several objectives, a finite crash
    cost, and the state repaired from its backup when a kill left it truncated. ``runner_factory(scenario,
    required_arguments)`` makes SMAC's runner; ``callbacks`` are SMAC callbacks (the live view); ``space``: another
    ConfigSpace than nexsearch's (``bench optimizers``: a NAS-Bench-201 table's)."""
    import smac.main.smbo
    from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, RandomFacade, Scenario
    from smac.main.config_selector import ConfigSelector
    from smac.multi_objective.parego import ParEGO

    from nexsearch.runners.selector import BatchedConfigSelector, fast_forest
    from nexsearch.search_space.space import build_space

    selector_cls = BatchedConfigSelector if selector == "batched" else ConfigSelector  # "smac": SMAC's own
    space = build_space(seed=exp.seed) if space is None else space
    crash = exp.crash_cost if not exp.multi_objective else [exp.crash_cost] + [SECONDARY_CRASH_COST] * (
        len(exp.objectives) - 1)
    hyperband = exp.optimizer == "hyperband"
    scenario = Scenario(
        configspace=space, name="smac", output_directory=run_dir, deterministic=exp.calls_per_config == 1,
        objectives=exp.objectives if exp.multi_objective else "error", crash_cost=crash, n_trials=exp.max_trials,
        min_budget=exp.min_epochs if hyperband else None, max_budget=exp.max_epochs if hyperband else None,
        seed=exp.seed,
    )
    fix_moved_scenario(Path(scenario.output_directory))
    # a kill -9 in the middle of SMAC's save, or a deleted file: never let SMAC start from nothing
    repaired = repair_smac_state(Path(scenario.output_directory), has_history=RunDir(run_dir).has_history())
    if repaired:
        (console or Console(stderr=True)).print(
            f"restored {', '.join(repaired)} from the last complete copy in {Path(scenario.output_directory) / BACKUP_DIR}",
            highlight=False)
    callbacks = [*callbacks, BackupState()]
    runner = runner_factory(scenario, ["seed", "budget"] if hyperband else ["seed"])
    common: dict[str, Any] = dict(overwrite=False, logging_level=40, callbacks=callbacks)
    if exp.optimizer == "random":
        facade = RandomFacade
        kwargs = dict(intensifier=RandomFacade.get_intensifier(scenario, max_config_calls=1))
    elif exp.optimizer == "evolution":
        from nexsearch.runners.evolution import evolution_kwargs

        facade, kwargs = RandomFacade, evolution_kwargs(scenario, space)
    elif hyperband:
        facade = MultiFidelityFacade
        kwargs = dict(
            initial_design=MultiFidelityFacade.get_initial_design(scenario, n_configs=exp.initial_design),
            intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=exp.eta),
            config_selector=selector_cls(scenario, retrain_after=exp.retrain_after), model=fast_forest(scenario),
        )
    else:
        facade = HyperparameterOptimizationFacade
        kwargs = dict(
            initial_design=facade.get_initial_design(
                scenario, n_configs=exp.initial_design, additional_configs=[space.get_default_configuration()]),
            intensifier=facade.get_intensifier(scenario, max_config_calls=exp.calls_per_config),
            config_selector=selector_cls(scenario, retrain_after=exp.retrain_after), model=fast_forest(scenario),
        )
    if exp.multi_objective and exp.optimizer != "random":
        kwargs["multi_objective_algorithm"] = ParEGO(scenario)
    # SMAC asks on stdin (builtins.input, looked up in its smbo module) when it finds a different scenario in
    # the run directory: never block a run on that. Scoped to the facade's construction, where SMAC asks.
    smac.main.smbo.input = _no_prompt
    try:
        return facade(scenario, runner, **kwargs, **common)
    finally:
        del smac.main.smbo.input


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
