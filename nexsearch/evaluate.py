"""``nexsearch evaluate RUN_DIR``: a winner you can trust.

A search picks its incumbent from one noisy proxy evaluation per configuration. This re-trains
the ``top`` best distinct configurations of a run (at its highest budget; multi-objective runs:
the Pareto front, by error) and the reference presets, each with several seeds that the search
did not use, the same way the search trained them (the run's own data and training settings),
and reports validation *and* test error. The winner is chosen by mean validation error; the test
error is reported beside it and never used to choose.

Files, all under ``RUN_DIR/evaluation/`` (nothing else in the run is written, so a search may
still be running beside it)::

    results.jsonl   one line per finished training, appended as it finishes (key: epochs, candidate, seed)
    summary.json    one entry per evaluation (per --epochs): plan, candidates with mean/std, winner, Spearman
    summary.csv     the same table, one row per candidate and evaluation (column ``epochs``)
    evaluation.png  validation and test error of every candidate with error bars, one panel per evaluation
    .lock           held while an evaluation runs (a second one on the same run is refused)

Resume: the same command skips trainings already in ``results.jsonl``; ``kill -9`` loses only
those in flight. A different ``--epochs`` is a separate evaluation kept beside the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from rich.console import Console

from nexsearch.errors import UserError

RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
PLOT_FILE = "evaluation.png"
SEED_BASE = 10_000  # evaluation seeds: the first integers from here that the search did not use
DEFAULT_PRESETS = ("xception", "nexception")
NOTE = "winner chosen by mean validation error; test error is reported beside it and never used to choose"
COLUMNS = ("epochs", "rank", "winner", "source", "trial", "preset", "seeds_done", "failed", "val_error_mean",
           "val_error_std", "test_error_mean", "test_error_std", "params", "macs", "throughput", "train_time_s",
           "search_cost", "candidate")


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
    and the seeds the search used. Reads one consistent snapshot of SMAC's runhistory."""
    from nexsearch.results import at_top_budget, error_of, pareto_front
    from nexsearch.rundir import RunDir
    from nexsearch.search_space.presets import preset

    preset_configs = {name: preset(name) for name in presets}  # unknown name -> one line
    trials, configs, objectives = RunDir(run_dir).runhistory()
    ok = [t for t in trials if t["status_name"] == "success" and str(t["config_id"]) in configs]
    if not ok:
        raise UserError(f"{run_dir} has no successful trial yet: nothing to evaluate (let the search run longer)")

    by_error = sorted(at_top_budget(ok), key=lambda t: (error_of(t["cost"]), t["trial"]))
    ranked = by_error
    if len(objectives) > 1:  # multi-objective: the Pareto front, by error
        front = {id(t) for t in pareto_front(ok)}
        ranked = [t for t in ranked if id(t) in front]
    candidates: list[Candidate] = []
    search_cost: dict[str, float] = {}
    for t in by_error:
        search_cost.setdefault(config_key(configs[str(t["config_id"])]), float(error_of(t["cost"])))
    for t in ranked:
        config = configs[str(t["config_id"])]
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
    return candidates, {int(t["seed"]) for t in trials if t.get("seed") is not None}


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


# --- files ---------------------------------------------------------------------------------------

def read_results(path: Path, strict: bool = True) -> list[dict[str, Any]]:
    """The evaluation's records. ``strict`` (the evaluator, which appends): a torn line is an error
    that names the line and changes nothing; readers (status, load_run) skip a line being written."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if strict:
                raise UserError(
                    f"{path}: line {i + 1} of {len(lines)} is torn (not valid JSON: a write was cut off); the other "
                    f"lines are intact: delete that line (sed -i '{i + 1}d' {path}) and run evaluate again"
                ) from None
    return records


def load_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``evaluation/summary.json`` of a run, or None when it has never been evaluated."""
    from nexsearch.rundir import RunDir, read_json_retry

    path = RunDir(run_dir).evaluation / SUMMARY_JSON
    if not path.exists():
        return None

    return read_json_retry(path)


def evaluation_frame(run_dir: str | Path):
    """The evaluation table as a DataFrame: one row per candidate and evaluation (empty without one)."""
    import pandas as pd

    summary = load_summary(run_dir)
    rows = [dict(row, epochs=ev["epochs"]) for ev in (summary or {}).get("evaluations", []) for row in ev["candidates"]]
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "val_errors", "test_errors", "config"])
    for col in ("rank", "trial", "seeds_done", "failed", "params", "macs"):  # integers, with gaps (<NA>)
        frame[col] = frame[col].astype("Int64")
    return frame.sort_values(["epochs", "rank"], na_position="last").reset_index(drop=True)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def summarize(epochs: int, candidates: list[dict[str, Any]], seeds: list[int], results: list[dict[str, Any]],
              search_pick: int | None) -> dict[str, Any]:
    """One evaluation's entry: every candidate's mean and spread over the planned seeds, ranks, winner."""
    mine = {}
    for r in results:
        if r.get("epochs") == epochs and r.get("seed") in seeds:
            mine.setdefault((r["candidate"], r["seed"]), r)  # a duplicate (a killed run's orphan) counts once
    rows = []
    for c in candidates:
        recs = [mine[(c["key"], s)] for s in seeds if (c["key"], s) in mine]
        good = [r for r in recs if r.get("status") == "ok" and r.get("val_error") is not None]
        val, test = [r["val_error"] for r in good], [r["test_error"] for r in good if r.get("test_error") is not None]
        (vm, vs), (tm, ts) = _mean_std(val), _mean_std(test)
        first = good[0] if good else {}
        rows.append({
            "candidate": c["key"], "source": c["source"], "trial": c.get("trial"), "preset": c.get("preset"),
            "seeds_done": len(good), "failed": len(recs) - len(good),
            "val_error_mean": vm, "val_error_std": vs, "test_error_mean": tm, "test_error_std": ts,
            "val_errors": val, "test_errors": test,
            "params": first.get("params"), "macs": first.get("macs"),
            "throughput": _mean_std([r["throughput"] for r in good if r.get("throughput")])[0],
            "train_time_s": _mean_std([r["train_time_s"] for r in good if r.get("train_time_s") is not None])[0],
            "search_cost": c.get("search_cost"), "config": c["config"], "rank": None, "winner": False,
        })
    rows.sort(key=lambda r: (r["val_error_mean"] is None, r["val_error_mean"] or 0.0, r["source"]))
    for i, row in enumerate(r for r in rows if r["val_error_mean"] is not None):
        row["rank"] = i + 1
    winner = rows[0] if rows and rows[0]["rank"] == 1 else None
    if winner:
        winner["winner"] = True
    paired = [r for r in rows if r["rank"] is not None and r["search_cost"] is not None]
    planned = len(candidates) * len(seeds)
    finished = sum(r["seeds_done"] + r["failed"] for r in rows)
    pick = next((r for r in rows if search_pick is not None and r["trial"] == search_pick), None)
    return {
        "epochs": epochs, "seeds": seeds, "trainings_planned": planned, "trainings_finished": finished,
        "trainings_failed": sum(r["failed"] for r in rows), "complete": finished >= planned,
        "winner": {k: winner[k] for k in ("source", "trial", "preset", "val_error_mean", "test_error_mean",
                                         "seeds_done", "config")} if winner else None,
        "spearman": _spearman([r["search_cost"] for r in paired], [r["val_error_mean"] for r in paired]),
        "spearman_n": len(paired),
        "search_pick": {"trial": search_pick, "rank": pick["rank"] if pick else None},
        "note": NOTE, "updated_at": time.time(), "plan": candidates, "candidates": rows,
    }


def write_outputs(eval_dir: Path, entry: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Put ``entry`` into summary.json (beside the evaluations at other epochs) and rewrite the CSV and plot."""
    import matplotlib.pyplot as plt

    from nexsearch.export import _atomic_write

    old = load_summary(run_dir) or {}
    evaluations = [e for e in old.get("evaluations", []) if e["epochs"] != entry["epochs"]] + [entry]
    summary = {"run_dir": str(run_dir), "note": NOTE, "evaluations": sorted(evaluations, key=lambda e: e["epochs"])}
    _atomic_write(eval_dir / SUMMARY_JSON, lambda tmp: tmp.write_text(json.dumps(summary, indent=1, default=str)))
    frame = evaluation_frame(run_dir)[list(COLUMNS) + ["config"]]
    frame["config"] = frame["config"].map(lambda c: json.dumps(c, sort_keys=True))
    _atomic_write(eval_dir / SUMMARY_CSV, lambda tmp: frame.to_csv(tmp, index=False))
    if any(r["rank"] for e in summary["evaluations"] for r in e["candidates"]):
        fig = plot_evaluation(summary)
        _atomic_write(eval_dir / PLOT_FILE, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
        plt.close(fig)
    return summary


# --- the plot and the table ----------------------------------------------------------------------

def plot_evaluation(summary: dict[str, Any]):
    """Validation and test error of every evaluated candidate (mean +- std over seeds, seeds as dots),
    best first, one panel per evaluation; the winner's label is starred."""
    import nexsearch.analysis.plots  # noqa: F401  (a headless backend outside Jupyter)
    import matplotlib.pyplot as plt

    evaluations = [e for e in summary["evaluations"] if any(r["rank"] for r in e["candidates"])]
    fig, axes = plt.subplots(len(evaluations), 1, figsize=(8, 3.8 * len(evaluations)), squeeze=False)
    for ax, ev in zip(axes[:, 0], evaluations):
        rows = [r for r in ev["candidates"] if r["rank"]]
        x = list(range(len(rows)))
        for offset, kind, marker in ((-0.12, "val", "o"), (0.12, "test", "s")):
            means = [r[f"{kind}_error_mean"] if r[f"{kind}_error_mean"] is not None else float("nan") for r in rows]
            stds = [r[f"{kind}_error_std"] or 0.0 for r in rows]
            label = "validation (chooses the winner)" if kind == "val" else "test (reported only)"
            ax.errorbar([i + offset for i in x], means, yerr=stds, fmt=marker, capsize=4, label=label)
            for i, r in enumerate(rows):
                ax.scatter([i + offset] * len(r[f"{kind}_errors"]), r[f"{kind}_errors"], s=9, color="grey",
                           alpha=0.6, zorder=3)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xticks(x)
        ax.set_xticklabels([("* " if r["winner"] else "") + r["source"] for r in rows], rotation=20, ha="right")
        ax.set_ylabel("error")
        ax.set_xlabel("candidates, lowest mean validation error first (* the winner)")
        rho = ev.get("spearman")
        ax.set_title(f"{ev['epochs']} epochs, {len(ev['seeds'])} seeds (mean ± std; dots: single seeds)"
                     + (f"; Spearman(search cost, val) {rho:.2f}" if rho is not None else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}±{std:.4f}" if std is not None else f"{mean:.4f}"


def evaluation_table(ev: dict[str, Any]):
    from rich.table import Table

    title = (f"evaluation at {ev['epochs']} epochs, seeds {', '.join(map(str, ev['seeds']))}: "
             f"{ev['trainings_finished']} of {ev['trainings_planned']} trainings"
             + ("" if ev["complete"] else " (unfinished)"))
    t = Table(title=title)
    for col in ("rank", "source", "val error", "test error", "params", "MACs", "img/s", "search cost", "seeds"):
        t.add_column(col, justify="left" if col == "source" else "right", no_wrap=True)
    for r in ev["candidates"]:
        t.add_row(
            ("★ " if r["winner"] else "") + (str(r["rank"]) if r["rank"] else "-"), r["source"],
            _fmt(r["val_error_mean"], r["val_error_std"]), _fmt(r["test_error_mean"], r["test_error_std"]),
            f"{r['params'] / 1e6:.3f}M" if r["params"] else "-", f"{r['macs'] / 1e6:.1f}M" if r["macs"] else "-",
            f"{r['throughput']:.0f}" if r["throughput"] else "-",
            f"{r['search_cost']:.4f}" if r["search_cost"] is not None else "-",
            f"{r['seeds_done']}" + (f" ({r['failed']} failed)" if r["failed"] else ""),
        )
    return t


def evaluation_lines(ev: dict[str, Any]) -> list[str]:
    lines = []
    w = ev["winner"]
    if w:
        lines.append(f"winner: {w['source']} (mean validation error {w['val_error_mean']:.4f} over {w['seeds_done']} "
                     f"seed(s), test error {_fmt(w['test_error_mean'], None)}); {NOTE}")
    pick = ev["search_pick"]
    if pick["trial"] is not None:
        rank = f"rank {pick['rank']}" if pick["rank"] else "not ranked yet"
        keeps = " (keeps first place)" if pick["rank"] == 1 else ""
        lines.append(f"the search's choice (trial {pick['trial']}): {rank} of {sum(1 for r in ev['candidates'] if r['rank'])}"
                     + keeps)
    rho = ev["spearman"]
    lines.append("Spearman rank correlation between search cost and evaluated mean validation error: "
                 + (f"{rho:.2f} over {ev['spearman_n']} candidates" if rho is not None
                    else f"n/a ({ev['spearman_n']} candidates with a search cost; needs 3 with distinct values)"))
    return lines


def print_evaluation(summary: dict[str, Any], console: Console | None = None) -> None:
    for ev in summary["evaluations"]:
        _print_entry(ev, console or Console())


def _print_entry(ev: dict[str, Any], console: Console) -> None:
    width = console.width
    if not console.is_terminal:  # logs and pipes get the whole table (rich would squeeze it into 80 columns)
        console.width = max(width, 132)
    try:
        console.print(evaluation_table(ev))
    finally:
        console.width = width
    for line in evaluation_lines(ev):
        console.print(line, highlight=False, soft_wrap=True)


def evaluated_winner(run_dir: str | Path) -> tuple[dict[str, Any] | None, str]:
    """The winner of the run's finished evaluation with the most epochs, and a sentence saying what was chosen."""
    summary = load_summary(run_dir)
    if not summary:
        return None, "no evaluation: exporting the search's incumbent (run `nexsearch evaluate` for a trusted winner)"
    done = [e for e in summary["evaluations"] if e["complete"] and e["winner"]]
    if not done:
        e = summary["evaluations"][-1]
        return None, (f"the evaluation is unfinished ({e['trainings_finished']} of {e['trainings_planned']} trainings): "
                      "exporting the search's incumbent; run `nexsearch evaluate` again to finish it")
    ev = max(done, key=lambda e: e["epochs"])
    w = dict(ev["winner"], epochs=ev["epochs"], seeds=ev["seeds"])
    return w, (f"exporting the evaluated winner {w['source']}: mean validation error {w['val_error_mean']:.4f} over "
               f"{w['seeds_done']} seeds at {ev['epochs']} epochs (--incumbent: the search's incumbent instead)")


# --- training, in this process or on Dask workers ------------------------------------------------

_WORKER: dict[str, Any] = {}  # the evaluation's slot of target.configure (a search's workers keep theirs)


def _configure(spec: dict[str, Any]) -> None:
    """Set the evaluation's objective in this process (its own slot: a search's workers keep theirs)."""
    from nexsearch.objectives.target import configure

    configure(spec, _WORKER)


def train_one(config: dict[str, Any], seed: int, epochs: int) -> dict[str, Any]:
    """One training of ``config`` with the configured run's data and settings: the trainer's record with test error."""
    from nexsearch.objectives.target import loaded
    from nexsearch.objectives.trainer import train_proxy

    spec, splits = loaded(_WORKER, test=True)
    started = time.time()
    record = train_proxy(config, splits, spec.settings, seed=seed, budget=epochs, test=True)
    record.update(start_time=started, end_time=time.time(), host=socket.gethostname(), pid=os.getpid())
    return record


def _worker_plugin(spec: dict[str, Any], n_local: int | None):
    from nexsearch.runners.workers import NexsearchWorkerPlugin

    class EvaluationWorkerPlugin(NexsearchWorkerPlugin):
        name = "nexsearch-evaluation"  # beside a search's plugin on a shared scheduler, not instead of it

        def configure(self, spec: dict[str, Any]) -> None:
            _configure(spec)

    return EvaluationWorkerPlugin(spec, n_local)


def _run_trainings(todo: list[tuple[dict[str, Any], int]], epochs: int, spec: dict[str, Any], workers: int,
                   scheduler: str | None, eval_dir: Path, done, lost) -> None:
    """Train every (candidate, seed) of ``todo``; ``done(c, seed, record)`` as each finishes."""
    if workers <= 1 and not scheduler:
        _configure(spec)
        for c, seed in todo:
            done(c, seed, train_one(c["config"], seed, epochs))
        return
    from distributed import as_completed

    from nexsearch.runners.workers import make_client

    client, cluster = make_client(workers, scheduler, str(eval_dir / "dask-worker-space"))
    try:
        client.register_plugin(_worker_plugin(spec, None if scheduler else workers))
        futures = {client.submit(train_one, c["config"], seed, epochs, pure=False): (c, seed) for c, seed in todo}
        for fut in as_completed(futures):
            c, seed = futures[fut]
            try:
                record = fut.result()
            except Exception as exc:  # a worker died: not recorded, so the next run trains it again
                lost(c, seed, f"worker process died or was lost ({type(exc).__name__}: {exc})")
                continue
            done(c, seed, record)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def check_writable(run_dir: Path) -> None:
    """Evaluation writes into RUN/evaluation: a read-only run directory is one line (status 1) before any work."""
    from nexsearch.errors import RunStopped

    if not os.access(run_dir, os.W_OK) or ((run_dir / "evaluation").is_dir()
                                           and not os.access(run_dir / "evaluation", os.W_OK)):
        raise RunStopped(f"{run_dir} is not writable: evaluate writes its results into {run_dir / 'evaluation'}")


def evaluate_run(run_dir: str | Path, *, top: int = 5, seeds: int = 3, epochs: int | None = None,
                 presets: Sequence[str] = DEFAULT_PRESETS, workers: int | None = None, scheduler: str | None = None,
                 device: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Evaluate (or resume evaluating) the run's best configurations and the presets; return the summary."""
    from nexsearch.rundir import RunDir, append_jsonl, exclusive_lock, unlock
    from nexsearch.runners.experiment import read_saved_experiment

    console = console or Console()
    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds must be at least 1 (got --top {top}, --seeds {seeds})")
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    rd = RunDir(run_dir).require_dir()
    check_writable(rd.path)
    run_dir = rd.path
    rd.find_smac_dir()
    if not rd.is_run():
        raise UserError(f"{run_dir} is not a nexsearch run (no {rd.EXPERIMENT}): pass the directory `nexsearch run` "
                        "wrote")
    exp = read_saved_experiment(rd)
    candidates, search_seeds = select_candidates(run_dir, top, presets)  # checks before anything is written
    epochs = epochs or exp.max_epochs
    spec = dataclasses.asdict(exp.objective_spec(None))
    if device:
        spec["train"]["device"] = device
    from nexsearch.objectives.trainer import resolve_device

    resolve_device(spec["train"]["device"])  # a CUDA device where there is none: one line now, not per training
    eval_dir = rd.evaluation
    eval_dir.mkdir(exist_ok=True)
    lock = exclusive_lock(eval_dir / ".lock", lambda: f"{run_dir} is being evaluated by another nexsearch evaluate: "
                                                     "wait for it or stop it")
    try:
        results_path = eval_dir / RESULTS_FILE
        results = read_results(results_path, strict=True)
        previous = next((e for e in (load_summary(run_dir) or {}).get("evaluations", []) if e["epochs"] == epochs), None)
        plan = [dataclasses.asdict(c) for c in candidates]
        for c in (previous or {}).get("plan", []):  # candidates of an earlier run of this evaluation stay in it
            if c["key"] not in {p["key"] for p in plan}:
                plan.append(c)
        seed_list = plan_seeds(seeds, [r["seed"] for r in results if r.get("epochs") == epochs], search_seeds)
        search_pick = next((c.trial for c in candidates if c.trial is not None), None)
        recorded = {(r["candidate"], r["seed"]) for r in results if r.get("epochs") == epochs}
        todo = [(c, s) for c in plan for s in seed_list if (c["key"], s) not in recorded]
        summary = write_outputs(eval_dir, summarize(epochs, plan, seed_list, results, search_pick), run_dir)
        n_workers = workers or exp.workers
        console.print(
            f"evaluating {len(plan)} candidates x {len(seed_list)} seeds at {epochs} epochs "
            f"({', '.join(c['source'] for c in plan)}): {len(todo)} trainings to run, "
            f"{len(plan) * len(seed_list) - len(todo)} already recorded; "
            f"{'scheduler ' + scheduler if scheduler else f'{n_workers} worker(s)'}", highlight=False, soft_wrap=True)
        progress = _Progress(console, len(todo))

        def done(c: dict[str, Any], seed: int, record: dict[str, Any]) -> None:
            nonlocal summary
            line = {"candidate": c["key"], "source": c["source"], "trial": c["trial"], "preset": c["preset"],
                    **record, "epochs": epochs, "seed": seed}
            append_jsonl(results_path, line)
            results.append(line)
            summary = write_outputs(eval_dir, summarize(epochs, plan, seed_list, results, search_pick), run_dir)
            progress.finished(c["source"], seed, record)

        def lost(c: dict[str, Any], seed: int, reason: str) -> None:
            progress.lost(c["source"], seed, reason)

        try:
            _run_trainings(todo, epochs, spec, n_workers, scheduler, eval_dir, done, lost)
        finally:
            progress.stop()
        _print_entry(next(e for e in summary["evaluations"] if e["epochs"] == epochs), console)
        console.print(f"files: {eval_dir / RESULTS_FILE}, {eval_dir / SUMMARY_CSV}, {eval_dir / SUMMARY_JSON}, "
                      f"{eval_dir / PLOT_FILE}", highlight=False, soft_wrap=True)
        return summary
    finally:
        unlock(lock)


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
