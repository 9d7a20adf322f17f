"""``nexsearch run``: SMAC over the design space until a wall-clock budget is spent.

The run directory::

    RUN_DIR/experiment.yaml          the experiment as resolved (file + flags)
    RUN_DIR/trials.jsonl             one line per finished trial: everything the trainer reported
    RUN_DIR/nexsearch.json           state: budget, time used, status, heartbeat (every few seconds)
    RUN_DIR/smac/<seed>/             SMAC's own files: runhistory.json, configspace.json,
                                     scenario.json, intensifier.json, optimization.json
                                     (what DeepCAVE's SMAC3 converter opens)

Resume: the same command with the same output directory continues, after Ctrl-C, ``kill -9``
or a reboot; SMAC reloads its state, and the budget counts the time already used (from the
heartbeat, so at most a few seconds go uncounted). A changed experiment is refused with a
one-line error naming what changed; SMAC is never allowed to prompt on stdin.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from smac.callback import Callback

from nexsearch.errors import UserError
from nexsearch.runners.budget import format_duration
from nexsearch.runners.experiment import Experiment, read_saved_experiment, save_experiment
from nexsearch.runners.status import backup_smac_state, repair_smac_state

STATE_FILE = "nexsearch.json"
TRIALS_FILE = "trials.jsonl"
HEARTBEAT_S = 5.0
SECONDARY_CRASH_COST = 1e6  # latency / params / MACs of a crashed trial, for SMAC's surrogate only


def smac_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / "smac" / str(seed)


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class _RunState:
    """The run's state file, refreshed by a heartbeat thread while the search runs."""

    def __init__(self, run_dir: Path, budget_s: float, used_before_s: float, exp: Experiment):
        self.path = run_dir / STATE_FILE
        self.budget_s = budget_s
        self.used_before_s = used_before_s
        self.t0 = time.time()
        self.base = {"budget_s": budget_s, "pid": os.getpid(), "host": socket.gethostname(), "optimizer": exp.optimizer,
                     "workers": exp.workers, "scheduler": exp.scheduler, "objectives": exp.objectives}
        self.history = read_state(run_dir).get("sessions", [])
        self.history.append({"started_at": self.t0})
        self.running = lambda: 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="nexsearch-heartbeat")

    def used(self) -> float:
        return self.used_before_s + time.time() - self.t0

    def write(self, status: str) -> None:
        self.history[-1]["ended_at"] = time.time()
        _write_json_atomic(self.path, {**self.base, "status": status, "used_s": self.used(),
                                       "running": self.running() if status == "running" else 0,
                                       "updated_at": time.time(), "sessions": self.history})

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.write("running")

    def start(self) -> None:
        self.write("running")
        self._thread.start()

    def stop(self, status: str) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.write(status)


def exclusive_lock(path: Path, busy):
    """A non-blocking exclusive lock on ``path``, held until the returned file is closed; ``UserError(busy())``
    when another process holds it."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise UserError(busy()) from None
    return fh


def _lock(run_dir: Path):
    return exclusive_lock(run_dir / ".lock", lambda: f"run {run_dir} is in use by another nexsearch process "
                                                     f"(pid {read_state(run_dir).get('pid', '?')}): wait for it or stop it")


def prepare_run_dir(exp: Experiment) -> tuple[Path, bool]:
    """Create the run directory, or check that an existing one holds this same experiment."""
    run_dir = exp.run_dir
    if run_dir.exists() and (run_dir / "experiment.yaml").exists():
        saved = read_saved_experiment(run_dir)
        changes = exp.differences(saved)
        if changes:
            raise UserError(
                f"{run_dir} holds a run of a different experiment ({'; '.join(changes)}): "
                "resume with the original settings or choose another --out"
            )
        return run_dir, True
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not a nexsearch run: choose another --out (nothing was changed)")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, False


def _no_prompt(*_: Any, **__: Any) -> str:
    raise UserError("SMAC found a different scenario in the run directory: resume with the original settings")


def _build_smac(exp: Experiment, run_dir: Path, runner_factory, callbacks: list, selector: str = "batched") -> Any:
    import smac.main.smbo
    from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, RandomFacade, Scenario
    from smac.main.config_selector import ConfigSelector
    from smac.multi_objective.parego import ParEGO

    from nexsearch.runners.selector import BatchedConfigSelector
    from nexsearch.search_space.space import build_space

    selector_cls = BatchedConfigSelector if selector == "batched" else ConfigSelector  # "smac": SMAC's own
    smac.main.smbo.input = _no_prompt  # SMAC asks on stdin when a scenario changed: never block a run on that
    space = build_space(seed=exp.seed)
    crash = exp.crash_cost if not exp.multi_objective else [exp.crash_cost] + [SECONDARY_CRASH_COST] * (
        len(exp.objectives) - 1)
    hyperband = exp.optimizer == "hyperband"
    scenario = Scenario(
        configspace=space, name="smac", output_directory=run_dir, deterministic=True,
        objectives=exp.objectives if exp.multi_objective else "error", crash_cost=crash, n_trials=exp.max_trials,
        min_budget=exp.min_epochs if hyperband else None, max_budget=exp.max_epochs if hyperband else None,
        seed=exp.seed,
    )
    _fix_moved_run(scenario)
    repaired = repair_smac_state(Path(scenario.output_directory))  # a kill -9 in the middle of SMAC's save
    if repaired:
        logging.getLogger("nexsearch").warning("restored %s from the last complete copy", ", ".join(repaired))
    callbacks = [*callbacks, _BackupState()]
    runner = runner_factory(scenario, ["seed", "budget"] if hyperband else ["seed"])
    common: dict[str, Any] = dict(overwrite=False, logging_level=40, callbacks=callbacks)
    if exp.optimizer == "random":
        facade = RandomFacade
        kwargs = dict(intensifier=RandomFacade.get_intensifier(scenario, max_config_calls=1))
    elif hyperband:
        facade = MultiFidelityFacade
        kwargs = dict(
            initial_design=MultiFidelityFacade.get_initial_design(scenario, n_configs=exp.initial_design),
            intensifier=MultiFidelityFacade.get_intensifier(scenario, eta=exp.eta),
            config_selector=selector_cls(scenario, retrain_after=exp.retrain_after),
        )
    else:
        facade = HyperparameterOptimizationFacade
        kwargs = dict(
            initial_design=facade.get_initial_design(
                scenario, n_configs=exp.initial_design, additional_configs=[space.get_default_configuration()]),
            intensifier=facade.get_intensifier(scenario, max_config_calls=1),
            config_selector=selector_cls(scenario, retrain_after=exp.retrain_after),
        )
    if exp.multi_objective and exp.optimizer != "random":
        kwargs["multi_objective_algorithm"] = ParEGO(scenario)
    return facade(scenario, runner, **kwargs, **common)


class _BackupState(Callback):
    """Before SMAC rewrites its state files (after this trial), keep a copy of the complete ones."""

    def on_tell_start(self, smbo: Any, info: Any, value: Any) -> None:
        path = smbo._scenario.output_directory
        if path is not None and Path(path).is_dir():
            backup_smac_state(Path(path))


def _fix_moved_run(scenario: Any) -> None:
    """A run directory that was moved still resumes: point its saved scenario at the new place."""
    path = Path(scenario.output_directory) / "scenario.json"
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("output_directory") != str(scenario.output_directory):
            data["output_directory"] = str(scenario.output_directory)
            _write_json_atomic(path, data)


def run_search(exp: Experiment, budget_s: float, console: Console | None = None) -> dict[str, Any]:
    """Run (or resume) the search of ``exp`` until ``budget_s`` seconds of wall-clock time are used."""
    from smac.runner import FirstRunCrashedException, TargetFunctionRunner

    from nexsearch.objectives import target
    from nexsearch.runners.progress import ProgressView

    logging.getLogger("smac").setLevel(logging.ERROR)  # the live view reports progress; SMAC's INFO lines would drown it
    console = console or Console()
    run_dir, resumed = prepare_run_dir(exp)
    lock = _lock(run_dir)
    client = cluster = None
    try:
        used_before = float(read_state(run_dir).get("used_s", 0.0)) if resumed else 0.0
        if not resumed:
            save_experiment(exp, run_dir / "experiment.yaml")
        if used_before >= budget_s:
            console.print(f"budget already spent ({format_duration(used_before)} of {format_duration(budget_s)}): "
                          "pass a larger --budget to continue")
            return summarize(run_dir, console)
        state = _RunState(run_dir, budget_s, used_before, exp)
        deadline = time.time() + budget_s - used_before
        spec = exp.objective_spec(run_dir / TRIALS_FILE, deadline=deadline)
        target.configure(spec)
        if exp.workers > 1 or exp.scheduler:
            runner_factory, client, cluster, running = _dask_runner(exp, spec, run_dir, console)
        else:
            def runner_factory(scenario, required):
                return TargetFunctionRunner(scenario, target.target_function, required_arguments=required)

            def running() -> int:
                return 0
        progress = ProgressView(console, budget_s, used_before, running=lambda: running(),
                                should_stop=lambda: state.used() >= budget_s, objectives=exp.objectives)
        smac = _build_smac(exp, run_dir, runner_factory, [progress])
        if exp.workers > 1 or exp.scheduler:
            running = lambda: len(smac._runner._pending_trials)  # noqa: E731
        else:
            running = lambda: 0 if progress.idle else 1  # noqa: E731
        state.running = running
        console.print(f"{'resuming' if resumed else 'starting'} {exp.optimizer} search '{exp.name}' in {run_dir} "
                      f"({format_duration(budget_s - used_before)} left, {exp.workers} worker(s))", highlight=False)
        state.start()
        status, warned = "interrupted", False
        try:
            while True:
                try:
                    smac.optimize()
                    break
                except FirstRunCrashedException:
                    # SMAC 2.4.1 raises while no trial has succeeded yet and one crashes, after recording it. Go on.
                    if not warned:
                        console.print("a trial failed before any succeeded (recorded with its reason); the search goes on",
                                      highlight=False)
                        warned = True
                    if state.used() >= budget_s:
                        break
            status = "finished" if state.used() >= budget_s else "stopped"
        finally:
            state.stop(status)
        return summarize(run_dir, console)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _dask_runner(exp: Experiment, spec: Any, run_dir: Path, console: Console):
    from smac.runner import TargetFunctionRunner

    from nexsearch.objectives import target
    from nexsearch.objectives.target import append_jsonl
    from nexsearch.runners.workers import NexsearchWorkerPlugin, RobustDaskRunner, make_client

    client, cluster = make_client(exp.workers, exp.scheduler, str(run_dir / "dask-worker-space"))
    client.register_plugin(NexsearchWorkerPlugin(dataclasses.asdict(spec), None if exp.scheduler else exp.workers))

    def lost(info: Any, reason: str, start: float) -> None:
        from nexsearch.search_space.space import to_dict

        append_jsonl(run_dir / TRIALS_FILE, {
            "status": "crashed", "reason": reason, "cost": exp.crash_cost, "budget": info.budget, "seed": info.seed,
            "config": to_dict(info.config), "start_time": start, "end_time": time.time(), "curve": [],
        })

    def factory(scenario, required):
        single = TargetFunctionRunner(scenario, target.target_function, required_arguments=required)
        return RobustDaskRunner(single_worker=single, dask_client=client, on_lost_trial=lost)

    return factory, client, cluster, lambda: 0


def summarize(run_dir: Path, console: Console) -> dict[str, Any]:
    """Print and return the incumbent (or Pareto front), its error and where the files are."""
    from nexsearch.runners.status import run_status

    info = run_status(run_dir)
    inc = info.get("incumbent")
    if inc:
        console.print(f"incumbent (trial {inc['trial']}): validation error {inc['error']:.4f}", highlight=False)
        console.print(json.dumps(inc["config"], indent=2), highlight=False)
    elif info.get("pareto_front"):
        console.print("Pareto front (" + ", ".join(info["objectives"]) + "):", highlight=False)
        for p in info["pareto_front"]:
            console.print("  " + ", ".join(f"{k} {v:.4g}" for k, v in p["costs"].items()), highlight=False)
    else:
        console.print("no successful trial yet", highlight=False)
    console.print(f"run directory: {run_dir}  (SMAC files: {info['smac_dir']}; trials: {run_dir / TRIALS_FILE})",
                  highlight=False)
    return info
