"""Plots of runs (matplotlib): PNG files from the CLI, inline figures in Jupyter.

Each function returns the matplotlib ``Figure``; ``save`` writes it as PNG. What a figure draws is
what the library computed: the importance bars are the DataFrame's numbers, the trajectory's step
line is ``Run.trajectory``, the Pareto line is ``Run.pareto_front`` (tests read them back).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pandas as pd
from matplotlib.ticker import EngFormatter, MaxNLocator

from nexsearch.figures import pyplot
from nexsearch.objectives.table import MEASURES, find, is_maximised
from nexsearch.rundir import write_atomic

plt = pyplot()  # headless outside Jupyter

if TYPE_CHECKING:
    from nexsearch.analysis.run import Run

PARETO_LABEL = "Pareto front"
INCUMBENT_LABEL = "incumbent"


def save(fig: "plt.Figure", path: str | Path) -> Path:
    path = Path(path)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def is_single_budget(b: Any) -> bool:
    return b is None or (isinstance(b, float) and math.isnan(b))


def budget_label(b: Any) -> str:
    """A budget as people read it: SMAC's float budgets are rounded half-up to whole epochs."""
    if is_single_budget(b):
        return "every trial"
    if isinstance(b, str):
        return "all budgets combined" if b == "combined" else b
    epochs = max(1, int(math.floor(float(b) + 0.5)))
    text = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    return text if abs(float(b) - epochs) < 1e-9 else f"{text} (budget {float(b):.3g})"


def importance_budgets(importance: pd.DataFrame) -> list[Any]:
    """The budgets of an importance table in their order (``None`` for a single-budget run)."""
    out: list[Any] = []
    for b in importance["budget"].tolist():
        b = None if is_single_budget(b) else b
        if b not in out:
            out.append(b)
    return out


def importance_rows(importance: pd.DataFrame, budget: Any) -> pd.DataFrame:
    """The rows of ``importance`` at ``budget`` (``None`` matches a single-budget run's missing budget)."""
    col = importance["budget"]
    if is_single_budget(budget):
        mask = col.map(is_single_budget)
    else:
        mask = col.map(lambda b: not is_single_budget(b) and b == budget)
    return importance[mask.astype(bool)]


def plot_importance(importance: pd.DataFrame, title: str = "Hyperparameter importance") -> "plt.Figure":
    """Horizontal bars per hyperparameter, one colour per budget (the paper's Figure 4), +- one std.

    Hyperparameters are ordered by their importance at the highest budget, most important on top.
    """
    budgets = importance_budgets(importance)
    if not budgets:
        raise ValueError("the importance table is empty")
    top = importance_rows(importance, budgets[-1]).set_index("hyperparameter")["importance"]
    names = list(dict.fromkeys(importance["hyperparameter"]))
    order = sorted(names, key=lambda n: (top.get(n, 0.0), -names.index(n)))  # least important at the bottom
    nb = len(budgets)
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(order) * max(1.0, nb ** 0.6) + 1.6))
    height = 0.8 / nb
    y = np.arange(len(order), dtype=float)
    colours = plt.cm.viridis(np.linspace(0.15, 0.85, nb)) if nb > 1 else ["C0"]
    for i, b in enumerate(budgets):
        rows = importance_rows(importance, b).set_index("hyperparameter").reindex(order)
        offset = (nb - 1 - i) * height - (nb - 1) * height / 2  # the lowest budget on top of each group
        ax.barh(y + offset, rows["importance"].fillna(0.0).to_numpy(), height=height, color=colours[i],
                xerr=np.sqrt(rows["variance"].fillna(0.0).clip(lower=0).to_numpy()), capsize=2,
                error_kw={"elinewidth": 0.8, "alpha": 0.6}, label=budget_label(b))
    ax.set_yticks(y)
    ax.set_yticklabels(order)
    ax.set_ylim(-0.6, len(order) - 0.4)
    ax.set_xlim(left=0)
    ax.set_xlabel("importance (error bars: one standard deviation over the forest's trees)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if nb > 1:
        ax.legend(title="budget", loc="lower right")
    fig.tight_layout()
    return fig


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 120:
        return 1.0, "seconds"
    if seconds < 2 * 3600:
        return 60.0, "minutes"
    return 3600.0, "hours"


def plot_trajectories(runs: Iterable["Run"], objective: str = "error") -> "plt.Figure":
    """Every trial's result as a point (failures as crosses) and the incumbent as a step line, over
    search wall time; several runs share the axis (e.g. SMAC against random search).

    In a multi-fidelity run, trials below the highest budget are hollow points: the incumbent
    counts only trials at the highest budget.
    """
    runs = list(runs)
    span = max([r.used_s for r in runs] + [1.0])
    scale, unit = _time_unit(span)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, run in enumerate(runs):
        colour = f"C{k % 10}"
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        ok, failed = run.successful, run.failed
        top = run.top_budget
        at_top = ok if np.isnan(top) else ok[ok["budget"] == top]
        below = ok.iloc[0:0] if np.isnan(top) else ok[ok["budget"] != top]
        at = "" if np.isnan(top) else f" at {budget_label(top)}"
        ax.scatter(at_top["wall_time_s"] / scale, at_top[objective], s=16, color=colour, alpha=0.6,
                   label=f"{prefix}trials{at} ({len(at_top)})")
        if len(below):
            ax.scatter(below["wall_time_s"] / scale, below[objective], s=16, facecolors="none", edgecolors=colour,
                       alpha=0.6, label=f"{prefix}trials at lower budgets ({len(below)})")
        if len(failed):
            ax.scatter(failed["wall_time_s"] / scale, failed[objective], s=30, marker="x", color=colour,
                       label=f"{prefix}failed ({len(failed)}, at the crash cost)")
        tr = run.trajectory.dropna(subset=["incumbent_" + objective])
        if len(tr):
            xs = np.append(tr["wall_time_s"].to_numpy(), max(run.used_s, tr["wall_time_s"].max()))
            ys = np.append(tr["incumbent_" + objective].to_numpy(), tr["incumbent_" + objective].iloc[-1])
            ax.step(xs / scale, ys, where="post", color=colour, linewidth=2, label=f"{prefix}{INCUMBENT_LABEL}")
    ax.set_xlabel(f"search wall time ({unit})")
    ax.set_ylabel(f"validation {objective}")
    ax.set_title("Trials and incumbent over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points, never over them
    fig.tight_layout()
    return fig


def _cost_metrics(run: "Run", ok: pd.DataFrame) -> tuple[str, ...]:
    """The proxy's params, MACs and throughput, then every other recorded objective of the objective table
    (the full-size model's, and any added one) where the run recorded it."""
    first = ("params", "macs", "throughput")
    others = [m.key for m in MEASURES.values() if m.objective and m.key not in first and m.key != "cost"]
    return first + tuple(k for k in others if k in ok and ok[k].notna().any())


def plot_pareto(run: "Run", metrics: tuple[str, ...] | None = None) -> "plt.Figure":
    """Error against parameters, MACs and throughput with the Pareto front of each pair (the paper's
    Figures 2-3 style), by default also against the full-size model's parameters, MACs and latency
    where the run recorded them (a second row); throughput is maximised, the rest minimised.
    Multi-fidelity runs: the trials at the highest budget only."""
    err = run.objectives[0]
    ok = run.at_top_budget()
    if metrics is None:
        metrics = _cost_metrics(run, ok)
    note = f" (trials at {budget_label(run.top_budget)})" if run.multi_fidelity else ""
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        data = ok[[err, metric, "trial"]].dropna()
        ax.scatter(data[metric], data[err], s=18, alpha=0.6, color="C0", label=f"trials ({len(data)})")
        if not data.empty:
            front = run.pareto_front([err, metric]).sort_values(metric)
            ax.step(front[metric], front[err], where="pre" if is_maximised(metric) else "post", color="C3",
                    marker="o", markersize=5, label=PARETO_LABEL)
            ax.legend(fontsize=8)
        better = "higher is better" if is_maximised(metric) else "lower is better"
        described = find(metric)
        ax.set_xlabel(f"{metric} ({better}{'; ' + described.label if described and described.label else ''})")
        ax.set_ylabel(f"validation {err} (lower is better)")
        if metric in ("params", "macs", "full_params", "full_macs") and not data.empty and (data[metric] > 0).all():
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 3k 5k 10k, not overlapping 3x10^3
            ax.xaxis.set_minor_formatter(EngFormatter(sep=""))
            ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name}: error against cost{note}")
    fig.tight_layout()
    return fig


def plot_learning_curves(run: "Run", top: int = 5) -> "plt.Figure":
    """Validation error per epoch of the best ``top`` successful trials (at the highest budget)."""
    err = run.objectives[0]
    ok = run.at_top_budget().sort_values([err, "trial"]).head(top)
    fig, ax = plt.subplots(figsize=(7, 4))
    for _, row in ok.iterrows():
        curve = row["curve"] or []
        if curve:
            ax.plot([c["epoch"] for c in curve], [c["val_error"] for c in curve], marker="o", markersize=3,
                    label=f"trial {row['trial']} ({row[err]:.3f})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation error")
    ax.set_title(f"Learning curves of the best {len(ok)} trials")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_budget_correlation(run: "Run", max_panels: int = 3) -> "plt.Figure":
    """Multi-fidelity runs: a configuration's error at one budget against its error at a higher one,
    with the Spearman rank correlation (does a configuration good at few epochs stay good?)."""
    err = run.objectives[0]
    table = run.budget_correlation()
    table = table[table["configurations"] >= 2].head(max_panels)
    by_budget = run.successful.dropna(subset=["budget"]).groupby(["config_id", "budget"])[err].mean().unstack("budget")
    n = max(1, len(table))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, (_, row) in zip(axes[0], table.iterrows()):
        both = by_budget[[row["budget"], row["compared with budget"]]].dropna()
        ax.scatter(both.iloc[:, 0], both.iloc[:, 1], s=20, alpha=0.7)
        rho = "undefined" if pd.isna(row["spearman"]) else f"{row['spearman']:.2f}"
        ax.set_title(f"Spearman {rho} over {len(both)} configurations", fontsize=10)
        ax.set_xlabel(f"{err} at {budget_label(row['budget'])}")
        ax.set_ylabel(f"{err} at {budget_label(row['compared with budget'])}")
        ax.grid(alpha=0.3)
    if table.empty:
        axes[0][0].text(0.5, 0.5, "no configuration ran at two budgets", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.suptitle(f"{run.name}: error at one budget against a higher budget")
    fig.tight_layout()
    return fig
