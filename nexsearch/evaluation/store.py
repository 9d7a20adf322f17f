"""The evaluation's store: the files ``nexsearch evaluate`` keeps under ``RUN_DIR/evaluation/``, the summary
computed from its records, and the winner ``export`` takes. Read by the run view (``status``, ``analyze``,
``export``), written by the ``evaluate`` verb; no torch, no Dask.

Files::

    results.jsonl   one line per finished training, appended as it finishes (key: epochs, candidate, seed)
    summary.json    one entry per evaluation (per --epochs): plan, candidates with mean/std, winner, Spearman
    summary.csv     the same table, one row per candidate and evaluation (column ``epochs``)
    evaluation.png  validation and test error of every candidate with error bars, one panel per evaluation
    .lock           held while an evaluation runs (a second one on the same run is refused)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from nexsearch.rundir import RunDir, read_json_retry, read_jsonl, write_atomic, write_json_atomic

RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
PLOT_FILE = "evaluation.png"
NOTE = "winner chosen by mean validation error; test error is reported beside it and never used to choose"
COLUMNS = ("epochs", "rank", "winner", "source", "trial", "preset", "seeds_done", "failed", "val_error_mean",
           "val_error_std", "test_error_mean", "test_error_std", "params", "macs", "throughput", "train_time_s",
           "search_cost", "candidate")


def load_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``evaluation/summary.json`` of a run, or None when it has never been evaluated."""
    path = RunDir(run_dir).evaluation / SUMMARY_JSON
    return read_json_retry(path) if path.exists() else None


def read_results(run_dir: str | Path, strict: bool = True) -> list[dict[str, Any]]:
    """The evaluation's records. ``strict`` (the evaluator, which appends): a torn line is an error that names
    the line and changes nothing; readers skip a line being written."""
    return read_jsonl(RunDir(run_dir).evaluation / RESULTS_FILE, strict=strict)


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


def write_outputs(run_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Put ``entry`` into summary.json (beside the evaluations at other epochs) and rewrite the CSV and plot."""
    from nexsearch.evaluation.present import plot_evaluation
    from nexsearch.figures import pyplot

    eval_dir = RunDir(run_dir).evaluation
    old = load_summary(run_dir) or {}
    evaluations = [e for e in old.get("evaluations", []) if e["epochs"] != entry["epochs"]] + [entry]
    summary = {"run_dir": str(run_dir), "note": NOTE, "evaluations": sorted(evaluations, key=lambda e: e["epochs"])}
    write_json_atomic(eval_dir / SUMMARY_JSON, summary, indent=1)
    frame = evaluation_frame(run_dir)[list(COLUMNS) + ["config"]]
    frame["config"] = frame["config"].map(lambda c: json.dumps(c, sort_keys=True))
    write_atomic(eval_dir / SUMMARY_CSV, lambda tmp: frame.to_csv(tmp, index=False))
    if any(r["rank"] for e in summary["evaluations"] for r in e["candidates"]):
        fig = plot_evaluation(summary)
        write_atomic(eval_dir / PLOT_FILE, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
        pyplot().close(fig)
    return summary


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


