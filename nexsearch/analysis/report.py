"""``nexsearch analyze``: tables, DeepCAVE importances, plots and one self-contained HTML page.

``analyze(RUN_DIR)`` analyses one run; ``compare([RUN_A, RUN_B, ...], OUT)`` puts several runs of
the same design space side by side (e.g. SMAC against random search with the same budget).
"""

from __future__ import annotations

import json
import math
import time as _time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from nexsearch.analysis.importance import METHODS
from nexsearch.analysis.page import Page
from nexsearch.errors import UserError

if TYPE_CHECKING:
    from nexsearch.analysis.run import Run


def _out_dir(out: str | Path) -> Path:
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {out}: {exc.strerror}") from None
    return out


def _hours(seconds: float) -> float:
    return seconds / 3600.0


def _duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    from nexsearch.runners.budget import format_duration

    return format_duration(float(seconds))


def run_facts(run: "Run") -> dict[str, Any]:
    """What a reader wants first: experiment, budget used, trials, failures with reasons, incumbent."""
    t = run.trials
    failed = run.failed
    finished = len(run.successful) + len(failed)
    facts: dict[str, Any] = {
        "run": str(run.path), "name": run.name,
        "optimizer": run.experiment.get("optimizer") or run.state.get("optimizer", "?"),
        "dataset": run.experiment.get("dataset", "?"), "objectives": list(run.objectives),
        "budget_s": run.state.get("budget_s"), "used_s": run.used_s,
        "trials": len(t), "successful": len(run.successful), "failed": len(failed),
        "running": run.unfinished,  # RUNNING entries: in flight, or interrupted and evaluated again on resume
        "unfinished_are": "running" if run.state.get("status") == "running" and _time.time() - run.state.get(
            "updated_at", 0) < 30 else "cut by the budget's end or a kill (no result; evaluated again on resume)",
        "trials_per_hour": finished / _hours(run.used_s) if run.used_s > 0 else float("nan"),
        "failure_reasons": (failed["reason"].replace("", "(no reason recorded)").value_counts().to_dict()
                            if len(failed) else {}),
    }
    if not run.successful.empty:
        facts["incumbent"] = run.incumbent
        if len(run.objectives) > 1:  # e.g. error against the full-size model's latency
            facts["pareto_front"] = run.pareto_front().loc[:, ["trial", *run.objectives]].to_dict("records")
    return facts


def _importance_table(imp: pd.DataFrame) -> pd.DataFrame:
    """Hyperparameters as rows, one column per budget: 'importance +- std', most important first."""
    from nexsearch.analysis.plots import budget_label, importance_budgets, importance_rows

    budgets = importance_budgets(imp)
    cols = {}
    for b in budgets:
        rows = importance_rows(imp, b).set_index("hyperparameter")
        label = "importance" if len(budgets) == 1 else budget_label(b)
        cols[label] = rows["importance"]
        cols["std" if len(budgets) == 1 else f"std ({label})"] = np.sqrt(rows["variance"].clip(lower=0))
    table = pd.DataFrame(cols)
    table = table.sort_values(list(cols)[-2], ascending=False)
    return table.reset_index().rename(columns={"index": "hyperparameter"})


def _write_figure(page: Page | None, fig: Any, path: Path, alt: str) -> str:
    from nexsearch.analysis.plots import save

    save(fig, path)
    if page is not None:
        page.image(path.read_bytes(), alt)
    return str(path)


def _summary_table(facts: dict[str, Any]) -> pd.DataFrame:
    rows = [
        ("experiment", facts["name"]), ("run directory", facts["run"]), ("optimizer", facts["optimizer"]),
        ("dataset", facts["dataset"]), ("objectives", ", ".join(facts["objectives"])),
        ("budget used", f"{_duration(facts['used_s'])} of {_duration(facts['budget_s'])}"),
        ("trials", f"{facts['trials']} ({facts['successful']} successful, {facts['failed']} failed"
                   + (f", {facts['running']} {facts['unfinished_are']}" if facts["running"] else "") + ")"),
        ("trials per hour", f"{facts['trials_per_hour']:.1f}"),
    ]
    inc = facts.get("incumbent")
    if inc:
        err = facts["objectives"][0]
        budget = inc["metrics"].get("budget")
        at = "" if budget is None or (isinstance(budget, float) and math.isnan(budget)) else f", budget {budget:g}"
        rows.append(("incumbent", f"trial {inc['trial']}: validation {err} {inc['metrics'][err]:.4f}{at}"))
    return pd.DataFrame(rows, columns=["", "value"])


def _failures_table(run: "Run") -> pd.DataFrame:
    failed = run.failed
    if failed.empty:
        return pd.DataFrame(columns=["reason", "status", "trials", "which"])
    status = failed["trial_status"].where(failed["trial_status"].astype(bool), failed["status"])
    failed = failed.assign(status=status)  # the trainer's word (timeout, oom, diverged) over SMAC's "crashed"
    groups = failed.assign(reason=failed["reason"].replace("", "(no reason recorded)")).groupby("reason", sort=False)
    rows = [{"reason": reason, "status": ", ".join(sorted(set(g["status"]))), "trials": len(g),
             "which": ", ".join(str(t) for t in g["trial"].head(12)) + (", ..." if len(g) > 12 else "")}
            for reason, g in groups]
    return pd.DataFrame(rows).sort_values("trials", ascending=False)


def analyze(run_dir: str | Path, out: str | Path | None = None, top: int = 5) -> dict[str, Any]:
    """Analyse one run: CSV tables, PNG figures and ``report.html`` in ``out`` (default RUN_DIR/analysis)."""
    from nexsearch.analysis import interactive
    from nexsearch.analysis.run import load_run

    run = load_run(run_dir)
    trials = run.trials
    if trials.empty or run.successful.empty:
        raise UserError(f"{run_dir} has no successful trial yet: nothing to analyse")
    out = _out_dir(out or Path(run_dir) / "analysis")
    facts = run_facts(run)
    files: dict[str, str] = {}
    notes: list[str] = []
    page = Page(f"nexsearch run {run.name}")

    table = trials.copy()
    table["curve"] = table["curve"].map(json.dumps)
    table.to_csv(out / "trials.csv", index=False)
    files["trials"] = str(out / "trials.csv")
    _summary_section(page, run, facts)
    importances = _importance_section(page, run, facts, out, files, notes, top)
    interactive.add_section(page, run, importances, top)
    _figures_section(page, run, out, files, top)
    if run.multi_fidelity:
        _budgets_section(page, run, facts, out, files)
    _evaluation_section(page, run, notes)
    for note in notes:
        page.footnote(note)
    files["report"] = str(page.write(out / "report.html"))
    return {**facts, "files": files, "notes": notes, "evaluation": run.view.evaluation()}


def _summary_section(page: Page, run: "Run", facts: dict[str, Any]) -> None:
    from nexsearch.analysis import interactive

    page.section("Summary", "summary")
    page.table(_summary_table(facts), "summary-table", index=False, header=False)
    inc = facts["incumbent"]
    page.heading("Incumbent", 3)
    page.table(pd.DataFrame({"value": {**inc["config"], **inc["metrics"]}}).rename_axis("").reset_index(),
               "incumbent", index=False)
    page.heading("Which configuration nexsearch export takes", 3)
    page.table(interactive.winner_table(run.view.path, facts), "winner", index=False, header=False)
    page.heading("Failures", 3)
    failures = _failures_table(run)
    if failures.empty:
        page.text("No trial failed.")
    page.table(failures, "failures", index=False)


def _importance_section(page: Page, run: "Run", facts: dict[str, Any], out: Path, files: dict[str, str],
                        notes: list[str], top: int) -> dict[str, pd.DataFrame]:
    from nexsearch.analysis.plots import plot_importance

    page.section("Hyperparameter importance (DeepCAVE)", "importance")
    page.text("Local parameter importance (LPI: the variance of the predicted error around the incumbent, one "
              "hyperparameter changed at a time) and fANOVA (the share of the error's variance over the whole space). "
              + ("One bar colour per budget, as in the paper's Figure 4." if run.multi_fidelity else ""))
    importances = {}
    for method in METHODS:
        page.heading(method.upper() if method == "lpi" else "fANOVA", 3)
        try:
            imp = run.importance(method, budget="all" if run.multi_fidelity else None)
        except UserError as exc:
            note = f"{method} importance is undefined: {exc}"
            notes.append(note)
            page.text(note, cls="note")
            continue
        imp = imp[imp["budget"].map(lambda b: b != "combined")].reset_index(drop=True)
        importances[method] = imp
        imp.to_csv(out / f"importance_{method}.csv", index=False)
        files[f"importance_{method}"] = str(out / f"importance_{method}.csv")
        files[f"importance_{method}_plot"] = _write_figure(
            page, plot_importance(imp, f"{method.upper() if method == 'lpi' else 'fANOVA'} importance ({run.name})"),
            out / f"importance_{method}.png", f"{method} importance")
        page.table(_importance_table(imp), f"importance-{method}", index=False)
        highest = imp[imp["budget"].map(str) == str(imp["budget"].iloc[-1])] if run.multi_fidelity else imp
        facts[f"top_{method}"] = highest.sort_values("importance", ascending=False).head(top)[
            ["hyperparameter", "importance"]].to_dict("records")
    return importances


def _figures_section(page: Page, run: "Run", out: Path, files: dict[str, str], top: int) -> None:
    from nexsearch.analysis.plots import plot_learning_curves, plot_pareto, plot_trajectories

    page.section("Trials and incumbent over time", "trajectory")
    files["trajectory_plot"] = _write_figure(page, plot_trajectories([run], run.objectives[0]),
                                             out / "trajectory.png", "trajectory")

    page.section("Error against cost", "pareto")
    files["pareto_plot"] = _write_figure(page, plot_pareto(run), out / "pareto.png", "Pareto fronts")
    front = run.pareto_front([run.objectives[0], "params"])
    cols = [c for c in dict.fromkeys(["trial", *run.objectives, "params", "macs", "throughput", "budget"])
            if c in front and front[c].notna().any()]
    page.heading(f"Pareto front: {run.objectives[0]} against params", 3)
    page.table(front[cols], "pareto-front", index=False)

    page.section("Learning curves", "learning-curves")
    files["learning_curves_plot"] = _write_figure(page, plot_learning_curves(run, top), out / "learning_curves.png",
                                                  "learning curves")


def _budgets_section(page: Page, run: "Run", facts: dict[str, Any], out: Path, files: dict[str, str]) -> None:
    from nexsearch.analysis.plots import plot_budget_correlation

    page.section("Budgets (multi-fidelity)", "budgets")
    budgets = run.budget_table()
    budgets.to_csv(out / "budgets.csv", index=False)
    files["budgets"] = str(out / "budgets.csv")
    page.heading("Trials per budget", 3)
    page.table(budgets, "trials-per-budget", index=False)
    corr = run.budget_correlation()
    corr.to_csv(out / "budget_correlation.csv", index=False)
    files["budget_correlation"] = str(out / "budget_correlation.csv")
    page.heading("Rank correlation between budgets", 3)
    page.text("Spearman correlation of the error of the configurations that ran at both budgets. Hyperband "
              "promotes only the best configurations, so the comparison covers the better part of the space.")
    page.table(corr, "budget-correlation", index=False)
    files["budget_correlation_plot"] = _write_figure(page, plot_budget_correlation(run),
                                                     out / "budget_correlation.png", "rank correlation")
    facts["budgets"] = budgets.to_dict("records")
    facts["budget_correlation"] = corr.to_dict("records")


def _evaluation_section(page: Page, run: "Run", notes: list[str]) -> None:
    """``nexsearch evaluate``'s table, as its store keeps it (summary.csv), when the run was evaluated."""
    from nexsearch.evaluation.store import SUMMARY_CSV

    evaluation = run.view.rd.evaluation / SUMMARY_CSV
    if not evaluation.exists():
        return
    page.section("Evaluation", "evaluation")
    from nexsearch.analysis import interactive

    try:
        interactive.evaluation_section(page, run.view.path, evaluation)
        page.text(f"From {evaluation}.")
    except (OSError, ValueError, KeyError) as exc:
        notes.append(f"{evaluation} could not be read: {exc}")
        page.text(notes[-1], cls="note")


def compare(run_dirs: Sequence[str | Path], out: str | Path, top: int = 5) -> dict[str, Any]:
    """Several runs of one design space side by side: trajectories on one axis, final incumbent
    errors, trials per hour and failures; ``comparison.csv``, ``trajectories.png``, ``report.html``."""
    from nexsearch.analysis.plots import plot_trajectories
    from nexsearch.analysis.run import load_runs

    runs = load_runs(run_dirs)
    for r in runs.runs:
        if r.successful.empty:
            raise UserError(f"{r.path} has no successful trial yet: nothing to compare")
    objective = runs.runs[0].objectives[0]
    out = _out_dir(out)
    rows = []
    for r in runs.runs:
        f = run_facts(r)
        inc = f["incumbent"]
        rows.append({
            "run": r.name, "path": str(r.path), "optimizer": f["optimizer"], "budget used": _duration(f["used_s"]),
            "trials": f["trials"], "successful": f["successful"], "failed": f["failed"],
            "trials per hour": round(f["trials_per_hour"], 1), f"incumbent {objective}": inc["metrics"][objective],
            "incumbent trial": inc["trial"],
            "failure reasons": "; ".join(f"{n} x {reason}" for reason, n in f["failure_reasons"].items()),
        })
    table = pd.DataFrame(rows)
    table.to_csv(out / "comparison.csv", index=False)
    page = Page("nexsearch: " + " against ".join(r.name for r in runs.runs))
    page.section("Runs", "runs")
    page.table(table, "comparison", index=False)
    page.section("Trials and incumbent over time", "trajectory")
    files = {"comparison": str(out / "comparison.csv"),
             "trajectories_plot": _write_figure(page, plot_trajectories(runs.runs, objective), out / "trajectories.png",
                                                "trajectories")}
    files["report"] = str(page.write(out / "report.html"))
    return {"runs": rows, "objective": objective, "files": files}


def print_summary(summary: dict[str, Any]) -> None:
    from nexsearch.analysis.plots import budget_label

    inc = summary["incumbent"]
    err = summary["objectives"][0]
    print(f"run {summary['run']} ({summary['name']}, {summary['optimizer']}): {summary['trials']} trials, "
          f"{summary['successful']} successful, {summary['failed']} failed; {_duration(summary['used_s'])} used, "
          f"{summary['trials_per_hour']:.1f} trials per hour")
    for reason, n in list(summary["failure_reasons"].items())[:5]:
        print(f"  {n} x {reason}")
    print(f"incumbent: trial {inc['trial']}, validation {err} {inc['metrics'][err]:.4f}")
    print("  " + ", ".join(f"{k}={v}" for k, v in inc["config"].items()))
    if summary.get("pareto_front"):
        print(f"Pareto front ({', '.join(k for k in summary['pareto_front'][0] if k != 'trial')}):")
        for p in summary["pareto_front"]:
            print(f"  trial {p['trial']}: " + ", ".join(f"{k} {v:.4g}" for k, v in p.items() if k != "trial"))
    for method in METHODS:
        if f"top_{method}" in summary:
            top = ", ".join(f"{r['hyperparameter']} {r['importance']:.3f}" for r in summary[f"top_{method}"])
            print(f"most important ({method}): {top}")
    for row in summary.get("budgets", []):
        print(f"{budget_label(row['budget'])}: {row['trials']} trials "
              f"({row['failed']} failed), {row['configurations']} configurations")
    for row in summary.get("budget_correlation", []):
        rho = "undefined (fewer than 3)" if pd.isna(row["spearman"]) else f"{row['spearman']:.2f}"
        print(f"rank correlation budget {row['budget']:g} -> {row['compared with budget']:g}: {rho} "
              f"over {row['configurations']} configurations that ran at both")
    for note in summary["notes"]:
        print(note)
    if summary.get("evaluation"):
        from nexsearch.evaluation.present import print_evaluation

        print_evaluation(summary["evaluation"])
    for kind, path in summary["files"].items():
        print(f"wrote {kind}: {path}")


def print_comparison(summary: dict[str, Any]) -> None:
    table = pd.DataFrame(summary["runs"]).drop(columns=["path", "failure reasons"])
    print(table.to_string(index=False))
    for row in summary["runs"]:
        if row["failure reasons"]:
            print(f"{row['run']} failures: {row['failure reasons']}")
    for kind, path in summary["files"].items():
        print(f"wrote {kind}: {path}")
