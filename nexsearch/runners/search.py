"""``nexsearch run``: SMAC over the design space until a wall-clock budget is spent.

The run directory's layout, and every read and write of its files: ``nexsearch.rundir``.

Resume: the same command with the same output directory continues, after Ctrl-C, ``kill -9``
or a reboot; SMAC reloads its state, and the budget counts the time already used (from the
process start, written by a heartbeat every second, so at most about a second goes uncounted
per kill). Trials that were running when a process died, or that the budget's end cut, are no
results: SMAC keeps them as RUNNING and the next resume evaluates them first. A state file that
a kill left truncated, or that is missing, is put back from the last complete copy; a torn last
line of the trial log is moved aside. A changed experiment is refused with a one-line error
naming what changed; SMAC is never allowed to prompt on stdin.

Before anything is written, the experiment is checked completely: every field, the device, the
dataset (loaded once here) and one tiny training step of the default configuration.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console

from nexsearch.errors import RunStopped, Terminated, UserError
from nexsearch.rundir import Heartbeat, RunDir, unlock
from nexsearch.runners.smac_state import backup_smac_state, has_smac_state
from nexsearch.runners.budget import format_duration
from nexsearch.runners.experiment import Experiment, read_saved_experiment, save_experiment
from nexsearch.runners.preflight import check_dataset_memory, check_training_memory, check_workers, probe_scheduler


def prepare_run_dir(exp: Experiment, rd: RunDir, console: Console | None = None) -> bool:
    """Create the run directory ``rd`` of ``exp``, or check that an existing one holds this same experiment (a run
    without any trial yet -- killed while it started -- takes the new settings instead); whether it is a resume."""
    if rd.path.exists() and not rd.path.is_dir():
        raise UserError(f"--out {rd.path} is a file, not a directory: choose another --out")
    if rd.is_run():
        changes = exp.differences(read_saved_experiment(rd))
        if changes and (rd.has_history() or has_smac_state(rd)):
            raise UserError(
                f"{rd.path} holds a run of a different experiment ({'; '.join(changes)}): "
                "resume with the original settings or choose another --out"
            )
        if changes:
            save_experiment(exp, rd)
            (console or Console(stderr=True)).print(f"{rd.path} had no trial yet: it takes the new settings "
                                                    f"({'; '.join(changes)})", highlight=False)
        return True
    if rd.path.exists() and any(rd.path.iterdir()):
        raise UserError(f"{rd.path} exists and is not a nexsearch run: choose another --out (nothing was changed)")
    rd.create()
    return False


def _heartbeat(rd: RunDir, exp: Experiment, budget_s: float, used_before: float, started_at: float) -> Heartbeat:
    return rd.heartbeat(budget_s, used_before, started_at, base={
        "optimizer": exp.optimizer, "workers": exp.workers, "scheduler": exp.scheduler, "objectives": exp.objectives})


def check_experiment(exp: Experiment) -> None:
    """Everything a search needs, before SMAC starts: the device exists, the dataset loads (once, in this
    process; serial trials reuse it) and the default configuration trains one tiny step with these settings.
    Any failure is a one-line ``UserError`` (``run_search`` then leaves no new run directory behind)."""
    import torch

    from nexsearch.objectives import target
    from nexsearch.device import resolve_device
    from nexsearch.objectives.table import check
    from nexsearch.search_space.builder import build_model
    from nexsearch.search_space.space import build_space

    device = resolve_device(exp.device)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device '{exp.device}' asked for, but there are {torch.cuda.device_count()} CUDA devices")
    check(exp.objectives, exp.full_layout, exp.device)  # the objectives' own checks (full_latency: the models fit)
    if exp.tensorboard:
        from nexsearch.tensorboard import require_tensorboard

        require_tensorboard()
    target.SEARCH.configure(exp.trial_spec(None))
    spec, splits = target.SEARCH.loaded()
    if len(splits.train) < 2 or len(splits.val) < 1:
        raise UserError(f"dataset '{exp.dataset}' has too few images ({len(splits.train)} for training, "
                        f"{len(splits.val)} for validation): use more data or a different val_fraction")
    settings = spec.settings
    try:  # one tiny training step of the default configuration (Xception): the model, the optimizer, a backward
        from timm.optim import create_optimizer_v2

        model = build_model(build_space().get_default_configuration(), "proxy", num_classes=splits.num_classes,
                            width=settings.width, depth=settings.depth, drop_path_rate=settings.drop_path).to(device)
        check_training_memory(model, splits.image_size, settings, device, exp.workers)
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
        target.SEARCH.unload()  # the workers load their own copy


def run_search(exp: Experiment, budget_s: float, console: Console | None = None,
               started_at: float | None = None) -> dict[str, Any]:
    """Run (or resume) the search of ``exp`` until ``budget_s`` seconds of wall-clock time are used.

    ``started_at`` (epoch seconds; default now): when this session began, e.g. the process start, so
    that start-up time counts against the budget too."""
    started_at = time.time() if started_at is None else started_at
    check_resources(exp)  # before the run directory is made or touched: nothing charged to the budget
    with stop_signals():
        return _run_search(exp, budget_s, console, started_at)


def check_resources(exp: Experiment) -> None:
    """What the machine must have before anything starts: the workers, the dataset's memory, the scheduler."""
    check_workers(exp)
    check_dataset_memory(exp)
    if exp.scheduler:
        probe_scheduler(exp.scheduler)
        if exp.scheduler_security:
            from nexsearch.runners.cluster import scheduler_security

            scheduler_security(exp.scheduler_security)  # the file is read and its TLS files exist


_SIGNALLED: list[int] = []  # SIGINT / SIGTERM seen during this search


@contextlib.contextmanager
def stop_signals():
    """SIGTERM (what ``timeout``, SLURM and docker send) taken like Ctrl-C: ``Terminated``, a KeyboardInterrupt,
    so the run stops the same way (state "stopped", the trial in flight left for the resume)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: Any) -> None:
        _SIGNALLED.append(signum)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    _SIGNALLED.clear()
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except BaseException as exc:  # asyncio's or concurrent.futures' CancelledError (asyncio is not imported here)
        if not _SIGNALLED or type(exc).__name__ != "CancelledError":
            raise
        # Dask cancels what was pending when a signal interrupted it: the signal it is
        raise (Terminated() if _SIGNALLED[-1] == signal.SIGTERM else KeyboardInterrupt()) from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _run_search(exp: Experiment, budget_s: float, console: Console | None, started_at: float) -> dict[str, Any]:
    logging.getLogger("smac").setLevel(logging.ERROR)  # the live view reports progress; SMAC's INFO lines would drown it
    console = console or Console()
    rd, lock, state, saved_state, made = RunDir(exp.run_dir), None, None, None, None
    try:
        if rd.path.is_dir() and rd.is_run():
            # A resume: the heartbeat runs from here, so a kill while the run starts up loses little of the budget.
            lock = rd.lock()
            rd.refuse_links()
            saved_state = rd.state.read_bytes() if rd.state.exists() else None
            used_before = _used_before(rd, console)
            if used_before >= budget_s:  # nothing to run: say so at once, without the checks
                console.print(f"budget already spent ({format_duration(used_before)} of "
                              f"{format_duration(budget_s)}): pass a larger --budget to continue")
                unlock(lock)
                lock = None
                return summarize(rd.path, console)
            state = _heartbeat(rd, exp, budget_s, used_before, started_at)
            state.start()
            check_experiment(exp)
            resumed = prepare_run_dir(exp, rd, console)
        else:
            # A new run is made before the checks (and removed again when they fail): its clock, too, runs from
            # the process start, and a kill during the checks (seconds: CUDA, the dataset, a training step) loses
            # at most a heartbeat. A run killed there has no trial yet and takes new settings when it resumes.
            existed = rd.path.exists()
            resumed = prepare_run_dir(exp, rd, console)
            made = not existed  # from here on, a failure takes the new run back
            lock = rd.lock()
            save_experiment(exp, rd)
            state = _heartbeat(rd, exp, budget_s, 0.0, started_at)
            state.start()
            check_experiment(exp)
    except BaseException:
        if state is not None:  # a mistake found before the search started: the run is left as it was
            state.abandon(saved_state)
        if lock is not None:
            unlock(lock)
        if made is not None:  # nothing of a new run that never started is left behind
            rd.remove_new(made)
        raise
    try:
        status = "stopped"
        try:
            if resumed:
                _tidy(rd, exp, console)
            status = _search(exp, rd, resumed, state, console)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
                raise
            raise RunStopped(f"cannot write to {rd.path} ({exc.strerror}): the search stopped; free some space, "
                             "then run the same command to resume") from None
        finally:
            state.stop(status)
        return summarize(rd.path, console)
    finally:
        unlock(lock)


def _search(exp: Experiment, rd: RunDir, resumed: bool, state: Heartbeat, console: Console) -> str:
    """SMAC's loop until the budget is spent; returns the run's status."""
    from nexsearch.objectives import target
    from nexsearch.runners.facade import build_smac, retry_interrupted

    budget_s, used_before = state.budget_s, state.used_before_s
    spec = target.SEARCH.configure(exp.trial_spec(rd, deadline=state.t0 + budget_s - used_before))
    with contextlib.ExitStack() as closing:
        runner_factory = _runner_factory(exp, spec, rd, closing)
        rd.clear_progress()  # left by processes a kill ended
        progress = _progress_view(exp, rd, state, console)
        smac = build_smac(exp, rd.path, runner_factory, [progress], console=console)
        if exp.workers > 1 or exp.scheduler:
            state.running = lambda: len(smac._runner._pending_trials)
        else:
            state.running = lambda: 0 if progress.idle else 1
        console.print(f"{'resuming' if resumed else 'starting'} {exp.optimizer} search '{exp.name}' in {rd.path} "
                      f"({format_duration(budget_s - state.used())} left, {exp.workers} worker(s))", highlight=False)
        retry_interrupted(smac, console)
        _optimize(smac, state, console)
        # The facade saved its state as optimize() returned, with trials cut by the budget's end as RUNNING
        # (never told: the next resume evaluates them again). Keep a copy of that complete state.
        backup_smac_state(rd.smac_dir(exp.seed), finished=smac.runhistory.finished)
        return "finished" if state.used() >= budget_s else "stopped"


def _runner_factory(exp: Experiment, spec: Any, rd: RunDir, closing: contextlib.ExitStack):
    """SMAC's runner: trials in this process, or on the workers of a pool that ``closing`` closes."""
    from smac.runner import TargetFunctionRunner

    from nexsearch.objectives import target
    from nexsearch.runners.facade import SerialRunnerMixin

    if exp.workers > 1 or exp.scheduler:
        return _dask_runner(exp, spec, rd, closing)

    class SerialRunner(SerialRunnerMixin, TargetFunctionRunner):
        pass

    _serial_threads(exp)
    return lambda scenario, required: SerialRunner(scenario, target.target_function, required_arguments=required)


def _progress_view(exp: Experiment, rd: RunDir, state: Heartbeat, console: Console):
    from nexsearch.runners.progress import ProgressView

    progress = ProgressView(console, state.budget_s, state.used_before_s, running=lambda: state.running(),
                            should_stop=lambda: state.used() >= state.budget_s, objectives=exp.objectives,
                            run_dir=rd)
    progress.started = state.t0
    if exp.tensorboard:
        from nexsearch.tensorboard import TrialBoard

        progress.listeners.append(TrialBoard(rd.tensorboard).told)
    return progress


def _optimize(smac: Any, state: Heartbeat, console: Console) -> None:
    """``smac.optimize()`` until it returns, or a first crashed trial ends it with the budget spent."""
    from smac.runner import FirstRunCrashedException

    warned = False
    while True:
        try:
            with warnings.catch_warnings():
                # SMAC 2.4.1's local search takes the mean of an empty neighbourhood now and then (harmless;
                # numpy warns on stderr, in the middle of the live view)
                warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
                warnings.filterwarnings("ignore", "invalid value encountered in scalar divide", RuntimeWarning)
                smac.optimize()
            return
        except FirstRunCrashedException:
            # SMAC 2.4.1 raises while no trial has succeeded yet and one crashes, after recording it. Go on.
            if not warned:
                console.print("a trial failed before any succeeded (recorded with its reason); the search goes on",
                              highlight=False)
                warned = True
            if state.used() >= state.budget_s:
                return


def _used_before(rd: RunDir, console: Console) -> float:
    """The time a resumed run used: its state file, or the copy the last session left (said so)."""
    notes: list[str] = []
    used = float(rd.read_state_guarded(notes, has_smac_state(rd)).get("used_s", 0.0))
    for note in notes:
        console.print(f"note: {note}", highlight=False)
    return used


def _tidy(rd: RunDir, exp: Experiment, console: Console) -> None:
    """Before a resume: a torn last line of the trial log cut away, SMAC's deleted configspace.json written again."""
    cut = rd.tidy()
    if cut:
        console.print(f"the last line of {rd.trials.name} was torn by a kill ({cut} bytes): moved to "
                      f"{rd.TORN}", highlight=False)
    restore_space(rd, exp.seed, console)


def restore_space(rd: RunDir, seed: int, console: Console) -> None:
    """SMAC's configspace.json, deleted from a run with a state, written again: it is the design space itself
    (``build_space``), which SMAC compares on resume. A missing scenario.json is refused with one line."""
    from nexsearch.runners.smac_state import SMAC_FIXED_FILES

    if not has_smac_state(rd):
        return
    space, scenario = (rd.smac_dir(seed) / name for name in SMAC_FIXED_FILES)
    if not scenario.is_file():
        raise UserError(f"{scenario} is missing: SMAC cannot resume this run; start a new run with another --out")
    if not space.is_file():
        from nexsearch.search_space.space import build_space

        build_space(seed=seed).to_json(space)
        console.print(f"note: {space} was missing: written again from the design space", highlight=False)


def _serial_threads(exp: Experiment) -> None:
    """Trials on the CPU in this process get every CPU slot, as each of n local Dask workers gets 1/n of them."""
    import torch

    from nexsearch.device import cpu_slots, resolve_device

    if resolve_device(exp.device).type == "cpu":
        torch.set_num_threads(cpu_slots())


def _dask_runner(exp: Experiment, spec: Any, rd: RunDir, closing: contextlib.ExitStack):
    from smac.runner import TargetFunctionRunner

    from nexsearch.objectives import target
    from nexsearch.runners.cluster import NexsearchWorkerPlugin, worker_pool
    from nexsearch.runners.workers import RobustDaskRunner

    if not exp.scheduler and exp.device != "cpu":  # trials sharing a GPU: CUDA MPS where bench trials says it pays
        from nexsearch.runners.mps import maybe_start_for_run

        maybe_start_for_run(exp.workers)
    packing = _memory_packing(exp)
    client = closing.enter_context(worker_pool(
        exp.workers, exp.scheduler, rd.dask_space, exp.scheduler_security,
        NexsearchWorkerPlugin(spec, None if exp.scheduler else exp.workers, gpu_memory=packing is not None)))

    def lost(info: Any, reason: str, start: float) -> None:
        from nexsearch.objectives.record import TrialRecord

        rd.append_trial(TrialRecord("crashed", reason, info.config, info.seed, info.budget, cost=exp.crash_cost,
                                    start_time=start, end_time=time.time()).to_json())

    def factory(scenario, required):
        single = TargetFunctionRunner(scenario, target.target_function, required_arguments=required)
        return RobustDaskRunner(single_worker=single, dask_client=client, on_lost_trial=lost, packing=packing)

    return factory


def _memory_packing(exp: Experiment):
    """``workers_per_gpu: auto`` off the CPU: trials admitted by their estimated peak GPU memory (the runner packs
    only on workers that declare GPU memory, so a worker without CUDA runs trials as before)."""
    if exp.workers_per_gpu != "auto" or exp.device == "cpu":
        return None
    import torch

    if not exp.scheduler and not torch.cuda.is_available():  # local workers on the CPU: nothing to pack
        return None
    from nexsearch.objectives.settings import TrainSettings
    from nexsearch.runners.packing import MemoryPacking, estimate_peak_mb
    from nexsearch.search_space.space import to_dict

    train = TrainSettings.from_dict(exp.train)
    return MemoryPacking(lambda config: estimate_peak_mb(
        to_dict(config), train.batch_size, width=train.width, depth=train.depth, image_size=exp.image_size or 32))


def summarize(run_dir: Path, console: Console) -> dict[str, Any]:
    """Print and return the incumbent (or Pareto front), its error and where the files are."""
    from nexsearch.runview import RunView

    info = RunView(run_dir).status()
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
    console.print(f"run directory: {run_dir}  (SMAC files: {info['smac_dir']}; trials: {RunDir(run_dir).trials})",
                  highlight=False)
    return info
