"""``nexsearch analyze RUN_DIR``: tables, DeepCAVE importances and plots of a run, plus a short summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nexsearch.errors import UserError


def analyze(run_dir: str | Path, out: str | Path | None = None, top: int = 5) -> dict[str, Any]:
    from nexsearch.analysis.plots import plot_importance, plot_learning_curves, plot_pareto, plot_trajectories, save
    from nexsearch.analysis.run import load_run

    run = load_run(run_dir)
    trials = run.trials
    if trials.empty or run.successful.empty:
        raise UserError(f"{run_dir} has no successful trial yet: nothing to analyse")
    out = Path(out) if out else Path(run_dir) / "analysis"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out}: {exc.strerror}") from None
    files: dict[str, str] = {}
    table = trials.copy()
    table["curve"] = table["curve"].map(json.dumps)
    table.to_csv(out / "trials.csv", index=False)
    files["trials"] = str(out / "trials.csv")
    summary: dict[str, Any] = {
        "run": str(run_dir), "trials": len(trials), "successful": len(run.successful),
        "failed": int((trials["status"] != "success").sum()), "incumbent": run.incumbent,
        "failure_reasons": trials.loc[trials["status"] != "success", "reason"].value_counts().head(5).to_dict(),
    }
    multi_fidelity = trials["budget"].nunique() > 1
    notes = []
    for method in ("lpi", "fanova"):
        try:
            imp = run.importance(method, budget="all" if multi_fidelity else None)
        except UserError as exc:
            notes.append(f"{method} importance skipped: {exc}")
            continue
        imp.to_csv(out / f"importance_{method}.csv", index=False)
        files[f"importance_{method}"] = str(out / f"importance_{method}.csv")
        files[f"importance_{method}_plot"] = str(save(plot_importance(imp, f"{method.upper()} importance ({run.name})"),
                                                     out / f"importance_{method}.png"))
        best = imp[imp["budget"] == imp["budget"].iloc[-1]] if multi_fidelity else imp
        summary[f"top_{method}"] = best.sort_values("importance", ascending=False).head(top)[
            ["hyperparameter", "importance"]].to_dict("records")
    files["trajectory_plot"] = str(save(plot_trajectories([run], run.objectives[0]), out / "trajectory.png"))
    files["pareto_plot"] = str(save(plot_pareto(run), out / "pareto.png"))
    files["learning_curves_plot"] = str(save(plot_learning_curves(run, top), out / "learning_curves.png"))
    summary["files"] = files
    summary["notes"] = notes
    from nexsearch.evaluate import load_summary

    summary["evaluation"] = load_summary(run_dir)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    inc = summary["incumbent"]
    print(f"run {summary['run']}: {summary['trials']} trials, {summary['successful']} successful, "
          f"{summary['failed']} failed")
    for reason, n in summary["failure_reasons"].items():
        print(f"  {n} x {reason}")
    err = next(iter(inc["metrics"].values()))
    print(f"incumbent: trial {inc['trial']}, validation error {err:.4f}")
    print("  " + ", ".join(f"{k}={v}" for k, v in inc["config"].items()))
    for method in ("lpi", "fanova"):
        if f"top_{method}" in summary:
            top = ", ".join(f"{r['hyperparameter']} {r['importance']:.3f}" for r in summary[f"top_{method}"])
            print(f"most important ({method}): {top}")
    for note in summary["notes"]:
        print(note)
    if summary.get("evaluation"):
        from nexsearch.evaluate import print_evaluation

        print_evaluation(summary["evaluation"])
    for kind, path in summary["files"].items():
        print(f"wrote {kind}: {path}")
