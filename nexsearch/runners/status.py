"""``nexsearch status RUN_DIR``: progress of a running or finished run, read from its files only (the run view)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nexsearch.runview import RunView


def run_status(run_dir: str | Path) -> dict[str, Any]:
    """The figures ``nexsearch status`` prints (:meth:`nexsearch.runview.RunView.status`)."""
    return RunView(run_dir).status()


def print_status(run_dir: str | Path) -> dict[str, Any]:
    from rich.console import Console

    from nexsearch.evaluation.present import print_evaluation

    info = run_status(run_dir)
    console = Console()
    for note in info["notes"]:
        Console(stderr=True).print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(_table(info))
    from nexsearch.running import row_line

    for row in info["running_trials"]:
        console.print("running: " + row_line(row), highlight=False, markup=False, soft_wrap=True)
    for f in info["failures"][-5:]:
        console.print(f"failed trial {f['trial']} ({f['status']}): {f['reason']}", highlight=False, soft_wrap=True)
    if "evaluation" in info:
        print_evaluation(info["evaluation"], console)
    return info


def _table(info: dict[str, Any]):
    from rich.table import Table

    from nexsearch.runners.budget import format_duration

    t = Table(title=f"nexsearch run {info['run_dir']}", show_header=False)
    t.add_row("status", info["status"])
    t.add_row("trials finished", str(info["finished"]))
    t.add_row("trials failed", str(info["failed"]))
    t.add_row("trials running", str(info["running"]))
    if info["interrupted"]:
        t.add_row("trials interrupted", f"{info['interrupted']} (cut by a kill or the budget's end; evaluated again "
                  "when the run resumes)")
    if "incumbent" in info:
        inc = info["incumbent"]
        calls = f"; mean {inc['mean_error']:.4f} over {inc['calls']} calls" if inc.get("calls", 1) > 1 else ""
        t.add_row("incumbent error", f"{inc['error']:.4f} (trial {inc['trial']}{calls})")
    if "pareto_front" in info:
        t.add_row("Pareto front", f"{len(info['pareto_front'])} configurations")
    if info.get("budget_s"):
        used = info["used_s"] or 0.0
        t.add_row("budget used", f"{format_duration(used)} of {format_duration(info['budget_s'])}")
        t.add_row("budget left", format_duration(max(0.0, info["budget_s"] - used)))
    if "overhead_s" in info:
        t.add_row("no trial running", f"{format_duration(info['overhead_s'])} ({100 * info['overhead_frac']:.1f}% of "
                  "the time used: SMAC, start-up, waiting)")
    return t
