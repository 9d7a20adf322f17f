"""``nexsearch evaluate RUN_DIR``: a winner you can trust.

A search picks its incumbent from one noisy proxy evaluation per configuration. This re-trains
the ``top`` best distinct configurations of a run (at its highest budget; multi-objective runs:
the Pareto front, by error) and the reference presets, each with several seeds that the search
did not use, the same way the search trained them (the run's own data and training settings),
and reports validation *and* test error. The winner is chosen by mean validation error; the test
error is reported beside it and never used to choose.

The files, all under ``RUN_DIR/evaluation/`` (nothing else in the run is written, so a search may
still be running beside it), are the evaluation's store (``nexsearch.evaluation.store``); the table
and plot its presentation (``nexsearch.evaluation.present``); this module is the verb: what to
evaluate, and the trainings, here or on Dask workers.

Resume: the same command skips trainings already in ``results.jsonl``; ``kill -9`` loses only
those in flight. A different ``--epochs`` is a separate evaluation kept beside the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console

from nexsearch.errors import UserError
from nexsearch.evaluation.present import print_entry
from nexsearch.evaluation.store import PLOT_FILE, RESULTS_FILE, SUMMARY_CSV, SUMMARY_JSON, load_summary, \
    read_results, summarize, write_outputs
from nexsearch.runview import RunView

SEED_BASE = 10_000  # evaluation seeds: the first integers from here that the search did not use
DEFAULT_PRESETS = ("xception", "nexception")


@dataclass
class Candidate:
    key: str  # hash of the configuration
    source: str  # "trial 12", "xception", "trial 1 = xception"
    config: dict[str, Any]
    trial: int | None = None
    preset: str | None = None
    search_cost: float | None = None  # the search's error of this configuration at the top budget


def config_key(config: dict[str, Any]) -> str:
    from nexsearch.search_space.space import to_dict, validate

    text = json.dumps(to_dict(validate(config)), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# --- what to evaluate ----------------------------------------------------------------------------

def select_candidates(run_dir: Path, top: int, presets: Sequence[str]) -> tuple[list[Candidate], set[int]]:
    """The run's ``top`` best distinct configurations at its highest budget plus the presets (deduplicated),
    and the seeds the search used. Reads one consistent snapshot of the run's history."""
    from nexsearch.results import at_top_budget, error_of, pareto_front
    from nexsearch.search_space.presets import preset

    preset_configs = {name: preset(name) for name in presets}  # unknown name -> one line
    history = RunView(run_dir).history
    ok = [t for t in history.successful if str(t["config_id"]) in history.configs]
    if not ok:
        raise UserError(f"{run_dir} has no successful trial yet: nothing to evaluate (let the search run longer)")

    by_error = sorted(at_top_budget(ok), key=lambda t: (error_of(t["cost"]), t["trial"]))
    ranked = by_error
    if len(history.objectives) > 1:  # multi-objective: the Pareto front, by error
        front = {id(t) for t in pareto_front(ok)}
        ranked = [t for t in ranked if id(t) in front]
    candidates: list[Candidate] = []
    search_cost: dict[str, float] = {}
    for t in by_error:
        search_cost.setdefault(config_key(history.config(t)), float(error_of(t["cost"])))
    for t in ranked:
        config = history.config(t)
        key = config_key(config)
        if len(candidates) < top and key not in {c.key for c in candidates}:
            candidates.append(Candidate(key, f"trial {t['trial']}", dict(config), t["trial"], None, search_cost[key]))
    for name, config in preset_configs.items():
        key = config_key(config)
        same = [c for c in candidates if c.key == key]
        if same:
            same[0].source += f" = {name}"
            same[0].preset = name
        else:
            candidates.append(Candidate(key, name, config, None, name, search_cost.get(key)))
    return candidates, history.seeds


def plan_seeds(n: int, recorded: Iterable[int], search_seeds: set[int]) -> list[int]:
    """``n`` seeds the search did not use: those this evaluation already recorded first (so a resume
    keeps them), then the next free integers from ``SEED_BASE``."""
    seeds = sorted(set(recorded))[:n]
    s = SEED_BASE
    while len(seeds) < n:
        if s not in search_seeds and s not in seeds:
            seeds.append(s)
        s += 1
    return seeds


# --- training, in this process or on Dask workers ------------------------------------------------

def _context():
    """This process's evaluation context: its spec and data (the test split on the training device too), beside
    a search's (``objectives.target.SEARCH``)."""
    from nexsearch.objectives.target import TrialContext

    return TrialContext.named("evaluation", test=True)


def train_one(config: dict[str, Any], seed: int, epochs: int) -> dict[str, Any]:
    """One training of ``config`` with the configured run's data and settings: the trainer's record with test
    error, as the evaluation's results file keeps it."""
    from nexsearch.objectives.trainer import train_proxy

    spec, splits = _context().loaded()
    started = time.time()
    record = train_proxy(config, splits, spec.settings, seed=seed, budget=epochs, test=True)
    return record.finished(started).to_json()


def _run_trainings(todo: list[tuple[dict[str, Any], int]], epochs: int, spec: Any, exp: Any, eval_dir: Path,
                   done, lost) -> None:
    """Train every (candidate, seed) of ``todo`` (on ``exp``'s workers or scheduler); ``done(c, seed, record)`` as
    each finishes."""
    workers, scheduler = exp.workers, exp.scheduler
    if workers <= 1 and not scheduler:
        _context().configure(spec)
        for c, seed in todo:
            done(c, seed, train_one(c["config"], seed, epochs))
        return
    from distributed import as_completed

    from nexsearch.runners.cluster import NexsearchWorkerPlugin, worker_pool

    plugin = NexsearchWorkerPlugin(spec, None if scheduler else workers, _context())
    with worker_pool(workers, scheduler, eval_dir / "dask-worker-space", exp.scheduler_security,
                     plugin=plugin) as client:
        futures = {client.submit(train_one, c["config"], seed, epochs, pure=False): (c, seed) for c, seed in todo}
        for fut in as_completed(futures):
            c, seed = futures[fut]
            try:
                record = fut.result()
            except Exception as exc:  # a worker died: not recorded, so the next run trains it again
                lost(c, seed, f"worker process died or was lost ({type(exc).__name__}: {exc})")
                continue
            done(c, seed, record)


def check_writable(run_dir: Path) -> None:
    """Evaluation writes into RUN/evaluation: a read-only run directory is one line (status 1) before any work."""
    from nexsearch.errors import RunStopped

    if not os.access(run_dir, os.W_OK) or ((run_dir / "evaluation").is_dir()
                                           and not os.access(run_dir / "evaluation", os.W_OK)):
        raise RunStopped(f"{run_dir} is not writable: evaluate writes its results into {run_dir / 'evaluation'}")


def evaluate_run(run_dir: str | Path, *, top: int = 5, seeds: int = 3, epochs: int | None = None,
                 presets: Sequence[str] = DEFAULT_PRESETS, workers: int | None = None, scheduler: str | None = None,
                 device: str | None = None, scheduler_security: str | None = None,
                 console: Console | None = None) -> dict[str, Any]:
    """Evaluate (or resume evaluating) the run's best configurations and the presets; return the summary.
    ``workers`` (default: the run's) is checked as ``run`` checks it; ``scheduler_security`` defaults to the run's."""
    from nexsearch.device import resolve_device
    from nexsearch.rundir import exclusive_lock, unlock

    console = console or Console()
    _check_counts(top, seeds, epochs, workers)
    view, exp = _open_run(run_dir)
    check_writable(view.path)
    candidates, search_seeds = select_candidates(view.path, top, presets)  # checks before anything is written
    epochs = epochs or exp.max_epochs
    exp = _pool_settings(exp, workers, scheduler, device, scheduler_security)
    spec = exp.trial_spec(None)  # on the evaluation's device (``_pool_settings``)
    resolve_device(spec.settings.device)  # a CUDA device where there is none: one line now, not per training
    view.rd.evaluation.mkdir(exist_ok=True)
    lock = exclusive_lock(view.rd.evaluation / ".lock", lambda: f"{view.path} is being evaluated by another "
                                                                "nexsearch evaluate: wait for it or stop it")
    try:
        return _evaluate(view.path, candidates, search_seeds, seeds, epochs, spec, exp, console)
    finally:
        unlock(lock)


def _pool_settings(exp: Any, workers: int | None, scheduler: str | None, device: str | None,
                   security: str | None) -> Any:
    """The run's experiment with this evaluation's workers, scheduler (and its security file) and device, the
    workers checked as ``run`` checks them (the CPU slots or GPUs, the memory; one line when too many)."""
    from nexsearch.runners.cluster import scheduler_security
    from nexsearch.runners.preflight import check_workers

    exp = dataclasses.replace(exp, workers=workers or exp.workers, scheduler=scheduler,
                              scheduler_security=security or exp.scheduler_security, device=device or exp.device)
    check_workers(exp)
    if scheduler:
        scheduler_security(exp.scheduler_security)  # a missing or bad file: one line before anything is written
    return exp


def _check_counts(top: int, seeds: int, epochs: int | None, workers: int | None) -> None:
    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds must be at least 1 (got --top {top}, --seeds {seeds})")
    for name, value in (("epochs", epochs), ("workers", workers)):
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")


def _open_run(run_dir: str | Path):
    """The run's view and its saved experiment (one line when it is no nexsearch run)."""
    from nexsearch.runners.experiment import read_saved_experiment

    view = RunView(run_dir)
    view.history  # noqa: B018  (no optimizer history here: one line)
    if not view.rd.is_run():
        raise UserError(f"{view.path} is not a nexsearch run (no {view.rd.EXPERIMENT}): pass the directory "
                        "`nexsearch run` wrote")
    return view, read_saved_experiment(view.rd)


def _plan(run_dir: Path, candidates: list[Candidate], search_seeds: set[int], n_seeds: int, epochs: int,
          results: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int], list[tuple[dict[str, Any], int]]]:
    """The candidates (with those of an earlier run of this evaluation), the seeds, and the trainings to run."""
    previous = next((e for e in (load_summary(run_dir) or {}).get("evaluations", []) if e["epochs"] == epochs), None)
    plan = [dataclasses.asdict(c) for c in candidates]
    for c in (previous or {}).get("plan", []):  # candidates of an earlier run of this evaluation stay in it
        if c["key"] not in {p["key"] for p in plan}:
            plan.append(c)
    seed_list = plan_seeds(n_seeds, [r["seed"] for r in results if r.get("epochs") == epochs], search_seeds)
    recorded = {(r["candidate"], r["seed"]) for r in results if r.get("epochs") == epochs}
    return plan, seed_list, [(c, s) for c in plan for s in seed_list if (c["key"], s) not in recorded]


def _evaluate(run_dir: Path, candidates: list[Candidate], search_seeds: set[int], n_seeds: int, epochs: int,
              spec: Any, exp: Any, console: Console) -> dict[str, Any]:
    """Under the evaluation's lock: plan, train what is missing, keep the summary up to date, print it."""
    from nexsearch.rundir import RunDir, append_jsonl

    eval_dir = RunDir(run_dir).evaluation
    results = read_results(run_dir, strict=True)
    plan, seed_list, todo = _plan(run_dir, candidates, search_seeds, n_seeds, epochs, results)
    search_pick = next((c.trial for c in candidates if c.trial is not None), None)
    summary = write_outputs(run_dir, summarize(epochs, plan, seed_list, results, search_pick))
    console.print(
        f"evaluating {len(plan)} candidates x {len(seed_list)} seeds at {epochs} epochs "
        f"({', '.join(c['source'] for c in plan)}): {len(todo)} trainings to run, "
        f"{len(plan) * len(seed_list) - len(todo)} already recorded; "
        f"{'scheduler ' + exp.scheduler if exp.scheduler else f'{exp.workers} worker(s)'}", highlight=False,
        soft_wrap=True)
    progress = _Progress(console, len(todo))

    def done(c: dict[str, Any], seed: int, record: dict[str, Any]) -> None:
        nonlocal summary
        line = {"candidate": c["key"], "source": c["source"], "trial": c["trial"], "preset": c["preset"],
                **record, "epochs": epochs, "seed": seed}
        append_jsonl(eval_dir / RESULTS_FILE, line)
        results.append(line)
        summary = write_outputs(run_dir, summarize(epochs, plan, seed_list, results, search_pick))
        progress.finished(c["source"], seed, record)

    try:
        _run_trainings(todo, epochs, spec, exp, eval_dir, done,
                       lambda c, seed, reason: progress.lost(c["source"], seed, reason))
    finally:
        progress.stop()
    print_entry(next(e for e in summary["evaluations"] if e["epochs"] == epochs), console)
    console.print(f"files: {eval_dir / RESULTS_FILE}, {eval_dir / SUMMARY_CSV}, {eval_dir / SUMMARY_JSON}, "
                  f"{eval_dir / PLOT_FILE}", highlight=False, soft_wrap=True)
    return summary


class _Progress:
    """A progress bar on a terminal; one line per finished training either way."""

    def __init__(self, console: Console, total: int):
        self.console, self.total, self.count, self.started = console, total, 0, time.time()
        self.bar = None
        if console.is_terminal and total:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self.bar = Progress("evaluating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
            self.task = self.bar.add_task("evaluate", total=total)
            self.bar.start()

    def _advance(self, text: str) -> None:
        self.count += 1
        self.console.print(f"[{self.count}/{self.total}] {text}", highlight=False, soft_wrap=True)
        if self.bar is not None:
            self.bar.advance(self.task)

    def finished(self, source: str, seed: int, r: dict[str, Any]) -> None:
        if r["status"] == "ok":
            self._advance(f"{source} seed {seed}: validation error {r['val_error']:.4f}, test error "
                          f"{r['test_error']:.4f} ({r['train_time_s']:.1f} s training)")
        else:
            self._advance(f"{source} seed {seed}: {r['status']} ({r['reason']})")

    def lost(self, source: str, seed: int, reason: str) -> None:
        self._advance(f"{source} seed {seed}: not recorded, {reason}; the next run trains it again")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
