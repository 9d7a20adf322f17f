"""The optimizers a search can use: :data:`OPTIMIZERS` maps the experiment's ``optimizer`` name to a factory
that builds the optimizer (a SMAC facade) from a :class:`SearchSetup`, in the manner of SMAC's own
``get_*`` factories and NePS's searcher mapping.

Adding a SMAC facade is one entry here. Whatever an optimizer does, a run it searched is read through
one history adapter (``nexsearch.runview.read_history``; SMAC's state: ``nexsearch.runners.smac_state``),
so ``status``, ``analyze``, ``evaluate`` and ``export`` work unchanged. An optimizer that keeps its
history in another format adds its reader to ``nexsearch.runview.HISTORY_READERS``.

No SMAC at import (experiment files are checked against these names before SMAC loads): each
factory imports what it builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from nexsearch.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from nexsearch.runners.experiment import Experiment

# Latency / params / MACs of a crashed trial, for SMAC's surrogate only: above every real value (full-size
# MACs included), since SMAC normalises by the successful trials' range without clipping.
SECONDARY_CRASH_COST = 1e15
# bo's initial design (Sobol, besides the default configuration) when the experiment leaves it unset; a resumed
# run keeps what it recorded (docs/benchmarks.md, issue 20: 10 with the other defaults led on NAS-Bench-201)
INITIAL_DESIGN = 10


@dataclass
class SearchSetup:
    """What every optimizer is built from: the experiment, where its files go, SMAC's runner factory
    (``runner_factory(scenario, required_arguments)``), the callbacks (live view, state backups) and the
    config selector class (``batched``, or SMAC's own)."""

    exp: "Experiment"
    run_dir: Path
    runner_factory: Callable[[Any, list[str]], Any]
    callbacks: list = field(default_factory=list)
    selector: type | None = None
    console: "Console | None" = None
    space: Any = None  # another ConfigSpace than nexsearch's design space (``bench optimizers``: a table's)
    # the components SMAC recorded in a resumed run's scenario.json, read once by ``scenario()`` after its repair
    # ({} for a new run): the settings left unset (null) keep their recorded values
    recorded: dict = field(default_factory=dict, init=False, repr=False)

    def scenario(self, **budgets: Any) -> Any:
        """SMAC's scenario of the experiment (``budgets``: ``min_budget``/``max_budget`` of a multi-fidelity
        optimizer), with a moved run directory's paths fixed and a state a kill left truncated repaired."""
        from smac import Scenario

        from nexsearch.rundir import BACKUP_DIR, RunDir
        from nexsearch.runners.smac_state import fix_moved_scenario, repair_smac_state
        from nexsearch.search_space.space import build_space

        exp = self.exp
        crash = exp.crash_cost if not exp.multi_objective else [exp.crash_cost] + [SECONDARY_CRASH_COST] * (
            len(exp.objectives) - 1)
        space = build_space(seed=exp.seed) if self.space is None else self.space
        scenario = Scenario(
            configspace=space, name="smac", output_directory=self.run_dir, deterministic=exp.calls_per_config == 1,
            objectives=exp.objectives if exp.multi_objective else "error", crash_cost=crash, n_trials=exp.max_trials,
            seed=exp.seed, **budgets,
        )
        smac_dir = Path(scenario.output_directory)
        fix_moved_scenario(smac_dir)
        # a kill -9 in the middle of SMAC's save, or a deleted file: never let SMAC start from nothing
        repaired = repair_smac_state(smac_dir, has_history=RunDir(self.run_dir).has_history())
        if repaired:
            from rich.console import Console

            (self.console or Console(stderr=True)).print(
                f"restored {', '.join(repaired)} from the last complete copy in {smac_dir / BACKUP_DIR}",
                highlight=False)
        self.recorded = recorded_meta(smac_dir)
        return scenario

    def config_selector(self, scenario: Any) -> Any:
        return self.selector(scenario, retrain_after=self.retrain_after())

    def retrain_after(self) -> int:
        """The experiment's ``retrain_after``; unset (null, the default): what a resumed run's SMAC record says
        (runs started before keep their setting, 8 then), else the number of workers -- a serial search retrains
        its surrogate after every trial (a fit of the fast forest takes milliseconds; docs/benchmarks.md)."""
        if self.exp.retrain_after is not None:
            return int(self.exp.retrain_after)
        recorded = self.recorded.get("config_selector", {}).get("retrain_after")
        return int(recorded) if recorded else max(1, int(self.exp.workers))

    def initial_design(self, default: int = 0) -> int:
        """The experiment's ``initial_design``; unset (null, the default): a resumed run's recorded size (runs
        started before keep theirs, 20 then), else ``default`` (0: ``INITIAL_DESIGN``)."""
        if self.exp.initial_design is not None:
            return int(self.exp.initial_design)
        recorded = self.recorded.get("initial_design", {}).get("n_configs")
        return int(recorded) if recorded is not None else default or INITIAL_DESIGN

    def random_design(self, scenario: Any, maximizer: Any) -> Any:
        """Random configurations interleaved with the surrogate's: SMAC's 20% beside its local search, none when
        every configuration is scored (the acquisition's own exploration then reaches the whole space); a resumed
        run keeps its recorded probability."""
        from smac import HyperparameterOptimizationFacade as Facade

        from nexsearch.runners.selector import SmallSpaceSearch

        recorded = self.recorded.get("random_design", {}).get("probability")
        default = 0.0 if isinstance(maximizer, SmallSpaceSearch) else 0.2
        return Facade.get_random_design(scenario, probability=default if recorded is None else float(recorded))

    def acquisition_maximizer(self, scenario: Any) -> Any:
        """SMAC's local and sorted random search; on a small space of categorical dimensions every configuration
        scored instead (``selector.SmallSpaceSearch``), unless a resumed run recorded SMAC's own maximizer."""
        from smac import HyperparameterOptimizationFacade as Facade

        from nexsearch.runners.selector import SmallSpaceSearch, enumerable

        recorded = self.recorded.get("acquisition_maximizer", {}).get("name")
        if enumerable(scenario.configspace) and recorded in (None, SmallSpaceSearch.__name__):
            return SmallSpaceSearch(scenario.configspace, challengers=10000, local_search_iterations=10,
                                    seed=scenario.seed)
        return Facade.get_acquisition_maximizer(scenario)

    @staticmethod
    def model(scenario: Any) -> Any:
        """The surrogate of the model-based optimizers: SMAC's random forest, fitted fast (``selector.fast_forest``)."""
        from nexsearch.runners.selector import fast_forest

        return fast_forest(scenario)

    def build(self, facade: type, scenario: Any, required: list[str], parego: bool = True, **kwargs: Any) -> Any:
        """``facade(scenario, runner, **kwargs)`` with the callbacks, ParEGO for several objectives (unless
        ``parego`` is False), and the runner given the ``required`` target arguments."""
        import smac.main.smbo

        if self.exp.multi_objective and parego:
            from smac.multi_objective.parego import ParEGO

            kwargs["multi_objective_algorithm"] = ParEGO(scenario)
        runner = self.runner_factory(scenario, required)
        # SMAC asks on stdin (builtins.input, looked up in its smbo module) when it finds a different scenario in
        # the run directory: never block a run on that. Scoped to the facade's construction, where SMAC asks.
        smac.main.smbo.input = _no_prompt
        try:
            return facade(scenario, runner, overwrite=False, logging_level=40, callbacks=self.callbacks, **kwargs)
        finally:
            del smac.main.smbo.input


def recorded_meta(smac_dir: Path) -> dict:
    """The components SMAC recorded in the scenario of ``smac_dir`` (a resumed run), or {} for a new run."""
    import json

    path = smac_dir / "scenario.json"
    try:
        return json.loads(path.read_text()).get("_meta") or {}
    except (OSError, ValueError):
        return {}


def _no_prompt(*_: Any, **__: Any) -> str:
    raise UserError("SMAC found a different scenario in the run directory: resume with the original settings")


def bayesian_optimization(setup: SearchSetup) -> Any:
    """SMAC's HPO facade (random forest, EI): an initial design with the default configuration (Xception),
    ``calls_per_config`` evaluations (new seeds) for the leading configurations (1: one evaluation each, a
    deterministic scenario); ParEGO for several objectives (``parego``)."""
    from smac import HyperparameterOptimizationFacade as Facade

    scenario = setup.scenario()
    design = Facade.get_initial_design(scenario, n_configs=setup.initial_design(),
                                       additional_configs=[scenario.configspace.get_default_configuration()])
    maximizer = setup.acquisition_maximizer(scenario)
    return setup.build(Facade, scenario, ["seed"], initial_design=design,
                       intensifier=Facade.get_intensifier(scenario, max_config_calls=setup.exp.calls_per_config),
                       config_selector=setup.config_selector(scenario), model=setup.model(scenario),
                       acquisition_maximizer=maximizer, random_design=setup.random_design(scenario, maximizer))


def hyperband(setup: SearchSetup) -> Any:
    """SMAC's multi-fidelity facade: Hyperband over epochs ``min_epochs``..``max_epochs`` (``eta``); the
    target gets the budget."""
    from smac import MultiFidelityFacade as Facade

    exp = setup.exp
    scenario = setup.scenario(min_budget=exp.min_epochs, max_budget=exp.max_epochs)
    return setup.build(Facade, scenario, ["seed", "budget"],
                       initial_design=Facade.get_initial_design(scenario, n_configs=setup.initial_design(20)),
                       intensifier=Facade.get_intensifier(scenario, eta=exp.eta),
                       config_selector=setup.config_selector(scenario), model=setup.model(scenario))


def random_search(setup: SearchSetup) -> Any:
    """SMAC's random facade: configurations drawn uniformly, each evaluated once (no ParEGO)."""
    from smac import RandomFacade as Facade

    scenario = setup.scenario()
    return setup.build(Facade, scenario, ["seed"], parego=False,
                       intensifier=Facade.get_intensifier(scenario, max_config_calls=1))


def evolution(setup: SearchSetup) -> Any:
    """Regularized evolution (``runners/evolution.py``) as a SMAC config selector on SMAC's random facade (no
    surrogate): one call per configuration, resumable from the runhistory. One objective."""
    from smac import RandomFacade as Facade

    from nexsearch.runners.evolution import evolution_kwargs

    scenario = setup.scenario()
    return setup.build(Facade, scenario, ["seed"], parego=False, **evolution_kwargs(scenario, scenario.configspace))


# name (experiment files, --optimizer) -> factory(SearchSetup) -> a SMAC facade
OPTIMIZERS: dict[str, Callable[[SearchSetup], Any]] = {
    "bo": bayesian_optimization,
    "hyperband": hyperband,
    "random": random_search,
    "parego": bayesian_optimization,  # with several objectives, which the experiment requires for it
    "evolution": evolution,
}
