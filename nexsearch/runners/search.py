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
process start, written by a heartbeat every second, so at most about a second goes uncounted
per kill). Trials that were running when a process died, or that the budget's end cut, are no
results: SMAC keeps them as RUNNING and the next resume evaluates them first. A state file that
a kill left truncated, or that is missing, is put back from the last complete copy; a torn last
line of ``trials.jsonl`` is moved aside. A changed experiment is refused with a one-line error
naming what changed; SMAC is never allowed to prompt on stdin.

Before anything is written, the experiment is checked completely: every field, the device, the
dataset (loaded once here) and one tiny training step of the default configuration.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import itertools
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

from nexsearch.errors import RunStopped, UserError
from nexsearch.objectives.full_size import check_fits
from nexsearch.runners.budget import format_duration
from nexsearch.runners.experiment import Experiment, read_saved_experiment, save_experiment
from nexsearch.runners.status import BACKUP_DIR, _finished, backup_smac_state, repair_smac_state

STATE_FILE = "nexsearch.json"
TRIALS_FILE = "trials.jsonl"
HEARTBEAT_S = 1.0  # a kill -9 loses at most this much of the budget's accounting
TORN_FILE = "trials.jsonl.torn"  # what a kill in the middle of an append left behind, cut away on resume
# Latency / params / MACs of a crashed trial, for SMAC's surrogate only: above every real value (full-size
# MACs included), since SMAC normalises by the successful trials' range without clipping.
SECONDARY_CRASH_COST = 1e15


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
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no temporary file behind


class _RunState:
    """The run's state file, refreshed by a heartbeat thread while the search runs."""

    def __init__(self, run_dir: Path, budget_s: float, used_before_s: float, exp: Experiment, started_at: float):
        self.path = run_dir / STATE_FILE
        self.budget_s = budget_s
        self.used_before_s = used_before_s
        self.t0 = started_at  # the process start: start-up time counts against the budget too
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
        data = {**self.base, "status": status, "used_s": self.used(), "running": self.running() if status == "running"
                else 0, "updated_at": time.time(), "sessions": self.history}
        try:
            _write_json_atomic(self.path, data)
        except OSError:
            if status == "running":
                raise
            with open(self.path, "r+") as fh:  # a full disk: overwrite the old state's blocks in place
                fh.write(json.dumps(data))
                fh.truncate()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
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

    def abandon(self, saved: bytes | None) -> None:
        """Stop the heartbeat and put the state file back as it was (a resume refused before it began)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if saved is None:
            self.path.unlink(missing_ok=True)
        else:
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(saved)
            os.replace(tmp, self.path)


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
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a directory: choose another --out")
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
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".nexsearch-write-test.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot create the run directory {run_dir} ({exc.strerror or exc}): "
                        "choose another --out") from None
    return run_dir, False


def _tidy_run_dir(run_dir: Path, console: Console) -> None:
    """Before a resume: remove temporary files of dead processes, and cut a torn last line of the trial log
    (a kill in the middle of an append) away into TORN_FILE, so the next record starts on a line of its own."""
    for tmp in [*run_dir.glob(".*.tmp"), *run_dir.glob(f"smac/*/.*.tmp"), *run_dir.glob(f"smac/*/{BACKUP_DIR}/.*.tmp")]:
        tmp.unlink(missing_ok=True)
    log = run_dir / TRIALS_FILE
    if not log.exists():
        return
    data = log.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with open(run_dir / TORN_FILE, "ab") as fh:
        fh.write(data[keep:] + b"\n")
    with open(log, "r+b") as fh:
        fh.truncate(keep)
    console.print(f"the last line of {log.name} was torn by a kill ({len(data) - keep} bytes): moved to {TORN_FILE}",
                  highlight=False)


def _has_history(run_dir: Path) -> bool:
    log = run_dir / TRIALS_FILE
    return log.exists() and log.stat().st_size > 0


def check_experiment(exp: Experiment) -> None:
    """Everything a search needs, before any file is written: the device exists, the dataset loads (once, in
    this process; serial trials reuse it) and the default configuration trains one tiny step with these
    settings. Any failure is a one-line ``UserError``."""
    import torch

    from nexsearch.objectives import target
    from nexsearch.objectives.trainer import TrainSettings, resolve_device
    from nexsearch.search_space.builder import build_model
    from nexsearch.search_space.space import build_space

    device = resolve_device(exp.device)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device '{exp.device}' asked for, but there are {torch.cuda.device_count()} CUDA devices")
    check_fits(exp.objectives, exp.full_layout, exp.device)  # full_latency: the full-size models fit on the device
    target.configure(exp.objective_spec(None))
    _, splits = target.loaded()
    if len(splits.train) < 2 or len(splits.val) < 1:
        raise UserError(f"dataset '{exp.dataset}' has too few images ({len(splits.train)} for training, "
                        f"{len(splits.val)} for validation): use more data or a different val_fraction")
    settings = TrainSettings.from_dict(exp.objective_spec(None).train)
    try:  # one tiny training step of the default configuration (Xception): the model, the optimizer, a backward
        from timm.optim import create_optimizer_v2

        model = build_model(build_space().get_default_configuration(), "proxy", num_classes=splits.num_classes,
                            width=settings.width, depth=settings.depth, drop_path_rate=settings.drop_path).to(device)
        optimizer = create_optimizer_v2(model, opt=settings.optimizer, lr=settings.lr,
                                        weight_decay=settings.weight_decay)
        loss = torch.nn.functional.cross_entropy(model(splits.train.images[:2].float() / 255), splits.train.labels[:2])
        loss.backward()
        optimizer.step()
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"one training step of the default configuration fails with these settings "
                        f"({type(exc).__name__}: {first}): fix the experiment's training settings") from None
    if exp.workers > 1 or exp.scheduler:
        target._PROCESS.pop("splits", None)  # the workers load their own copy


def _no_prompt(*_: Any, **__: Any) -> str:
    raise UserError("SMAC found a different scenario in the run directory: resume with the original settings")


def _build_smac(exp: Experiment, run_dir: Path, runner_factory, callbacks: list, selector: str = "batched",
                console: Console | None = None) -> Any:
    import smac.main.smbo
    from smac import HyperparameterOptimizationFacade, MultiFidelityFacade, RandomFacade, Scenario
    from smac.main.config_selector import ConfigSelector
    from smac.multi_objective.parego import ParEGO

    from nexsearch.runners.selector import BatchedConfigSelector
    from nexsearch.search_space.space import build_space

    selector_cls = BatchedConfigSelector if selector == "batched" else ConfigSelector  # "smac": SMAC's own
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
    # a kill -9 in the middle of SMAC's save, or a deleted file: never let SMAC start from nothing
    repaired = repair_smac_state(Path(scenario.output_directory), has_history=_has_history(run_dir))
    if repaired:
        (console or Console(stderr=True)).print(
            f"restored {', '.join(repaired)} from the last complete copy in {Path(scenario.output_directory) / BACKUP_DIR}",
            highlight=False)
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
    # SMAC asks on stdin (builtins.input, looked up in its smbo module) when it finds a different scenario in
    # the run directory: never block a run on that. Scoped to the facade's construction, where SMAC asks.
    smac.main.smbo.input = _no_prompt
    try:
        return facade(scenario, runner, **kwargs, **common)
    finally:
        del smac.main.smbo.input


class _BackupState(Callback):
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
            self._backup_finished = _finished(Path(path) / BACKUP_DIR / "runhistory.json")
        if live >= self._backup_finished:
            backup_smac_state(Path(path))
            self._backup_finished = live


class _SerialRunner:
    """Mixin of the serial runner: a trial cut by the budget's end is kept from SMAC (see target.is_cut)."""

    def iter_results(self):
        from nexsearch.objectives.target import is_cut

        for info, value in super().iter_results():  # type: ignore[misc]
            if not is_cut(value):
                yield info, value


def _retry_interrupted(smac: Any, console: Console) -> int:
    """Trials still RUNNING in a loaded run died with their process (kill, crash) or were cut by the budget's
    end: SMAC would never run them again. Hand them out first, through SMAC's own ask/tell loop."""
    interrupted = list(smac.runhistory.get_running_trials())
    if interrupted:
        smac.optimizer._trial_generator = itertools.chain(interrupted, smac.optimizer._trial_generator)
        console.print(f"{len(interrupted)} trial(s) interrupted when the last session ended are evaluated again first",
                      highlight=False)
    return len(interrupted)


def _fix_moved_run(scenario: Any) -> None:
    """A run directory that was moved still resumes: point its saved scenario at the new place."""
    path = Path(scenario.output_directory) / "scenario.json"
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("output_directory") != str(scenario.output_directory):
            data["output_directory"] = str(scenario.output_directory)
            _write_json_atomic(path, data)


def run_search(exp: Experiment, budget_s: float, console: Console | None = None,
               started_at: float | None = None) -> dict[str, Any]:
    """Run (or resume) the search of ``exp`` until ``budget_s`` seconds of wall-clock time are used.

    ``started_at`` (epoch seconds; default now): when this session began, e.g. the process start, so
    that start-up time counts against the budget too."""
    started_at = time.time() if started_at is None else started_at
    logging.getLogger("smac").setLevel(logging.ERROR)  # the live view reports progress; SMAC's INFO lines would drown it
    console = console or Console()
    run_dir, lock, state, saved_state = exp.run_dir, None, None, None
    try:
        if run_dir.is_dir() and (run_dir / "experiment.yaml").is_file():
            # A resume: the heartbeat runs from here, so a kill while the run starts up loses little of the budget.
            lock = _lock(run_dir)
            saved_state = (run_dir / STATE_FILE).read_bytes() if (run_dir / STATE_FILE).exists() else None
            used_before = float(read_state(run_dir).get("used_s", 0.0))
            if used_before < budget_s:
                state = _RunState(run_dir, budget_s, used_before, exp, started_at)
                state.start()
        check_experiment(exp)
        run_dir, resumed = prepare_run_dir(exp)
    except BaseException:
        if state is not None:  # a mistake found before the search started: the run is left as it was
            state.abandon(saved_state)
        if lock is not None:
            _unlock(lock)
        raise
    lock = lock or _lock(run_dir)
    try:
        if not resumed:
            save_experiment(exp, run_dir / "experiment.yaml")
        else:
            _tidy_run_dir(run_dir, console)
        if state is not None:
            used_before = state.used_before_s  # the file now holds this session's heartbeat too
        else:
            used_before = float(read_state(run_dir).get("used_s", 0.0)) if resumed else 0.0
        if used_before >= budget_s:
            console.print(f"budget already spent ({format_duration(used_before)} of {format_duration(budget_s)}): "
                          "pass a larger --budget to continue")
            return summarize(run_dir, console)
        if state is None:  # a new run counts from its creation (a resume from its process start, above)
            state = _RunState(run_dir, budget_s, used_before, exp, started_at if resumed else time.time())
            state.start()
        status = "stopped"
        try:
            status = _search(exp, run_dir, resumed, state, console)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                raise
            raise RunStopped(f"cannot write to {run_dir} ({exc.strerror}): the search stopped; free some space, "
                             "then run the same command to resume") from None
        finally:
            state.stop(status)
        return summarize(run_dir, console)
    finally:
        _unlock(lock)


def _unlock(lock) -> None:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def _search(exp: Experiment, run_dir: Path, resumed: bool, state: _RunState, console: Console) -> str:
    """SMAC's loop until the budget is spent; returns the run's status."""
    from smac.runner import FirstRunCrashedException, TargetFunctionRunner

    from nexsearch.objectives import target
    from nexsearch.runners.progress import ProgressView

    budget_s, used_before = state.budget_s, state.used_before_s
    spec = exp.objective_spec(run_dir / TRIALS_FILE, deadline=state.t0 + budget_s - used_before)
    target.configure(spec)
    client = cluster = None
    try:
        if exp.workers > 1 or exp.scheduler:
            runner_factory, client, cluster, running = _dask_runner(exp, spec, run_dir, console)
        else:
            class SerialRunner(_SerialRunner, TargetFunctionRunner):
                pass

            def runner_factory(scenario, required):
                return SerialRunner(scenario, target.target_function, required_arguments=required)

            def running() -> int:
                return 0
        progress = ProgressView(console, budget_s, used_before, running=lambda: running(),
                                should_stop=lambda: state.used() >= budget_s, objectives=exp.objectives)
        progress.started = state.t0
        smac = _build_smac(exp, run_dir, runner_factory, [progress], console=console)
        if exp.workers > 1 or exp.scheduler:
            running = lambda: len(smac._runner._pending_trials)  # noqa: E731
        else:
            running = lambda: 0 if progress.idle else 1  # noqa: E731
        state.running = running
        console.print(f"{'resuming' if resumed else 'starting'} {exp.optimizer} search '{exp.name}' in {run_dir} "
                      f"({format_duration(budget_s - state.used())} left, {exp.workers} worker(s))", highlight=False)
        _retry_interrupted(smac, console)
        warned = False
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
        # The facade saved its state as optimize() returned, with trials cut by the budget's end as RUNNING
        # (never told: the next resume evaluates them again). Keep a copy of that complete state.
        backup_smac_state(smac_dir(run_dir, exp.seed), finished=smac.runhistory.finished)
        return "finished" if state.used() >= budget_s else "stopped"
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


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
