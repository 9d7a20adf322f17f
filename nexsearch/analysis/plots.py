"""Plots of runs (matplotlib): PNG files from the CLI, inline figures in Jupyter.

Each function returns the matplotlib ``Figure``; ``save`` writes it as PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import matplotlib

if not matplotlib.get_backend().lower().startswith(("module://matplotlib_inline", "module://ipykernel")):
    matplotlib.use("Agg")  # no display needed; Jupyter keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402
import pandas as pd  # noqa: E402

if TYPE_CHECKING:
    from nexsearch.analysis.run import Run


def save(fig: "plt.Figure", path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_importance(importance: pd.DataFrame, title: str = "Hyperparameter importance") -> "plt.Figure":
    """Horizontal bars per hyperparameter, one colour per budget (the paper's Figure 4 style), with std error bars."""
    budgets = list(dict.fromkeys(importance["budget"].tolist()))
    order = (importance.groupby("hyperparameter")["importance"].max().sort_values().index.tolist())
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(order) * max(1, len(budgets)) ** 0.5 + 1.5))
    height = 0.8 / max(1, len(budgets))
    y = np.arange(len(order))
    for i, b in enumerate(budgets):
        sub = importance[importance["budget"].astype(str) == str(b)].set_index("hyperparameter").reindex(order)
        label = "highest budget" if b is None or (isinstance(b, float) and np.isnan(b)) else f"budget {b}"
        ax.barh(y + i * height, sub["importance"].fillna(0), height=height,
                xerr=np.sqrt(sub["variance"].fillna(0).clip(lower=0)), label=label, capsize=2)
    ax.set_yticks(y + height * (len(budgets) - 1) / 2)
    ax.set_yticklabels(order)
    ax.set_xlim(left=0)
    ax.set_xlabel("importance (bars: +- one standard deviation)")
    ax.set_title(title)
    if len(budgets) > 1:
        ax.legend()
    fig.tight_layout()
    return fig


def plot_trajectories(runs: Iterable["Run"], objective: str = "error") -> "plt.Figure":
    """Incumbent error over search wall time, several runs on one axis (e.g. SMAC against random search)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        tr = run.trajectory
        col = "incumbent_" + objective
        ax.step(tr["wall_time_s"] / 60, tr[col], where="post", label=run.name, marker="o", markersize=3)
    ax.set_xlabel("search wall time (minutes)")
    ax.set_ylabel(f"incumbent validation {objective}")
    ax.set_title("Incumbent over time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


FULL_SIZE_METRICS = ("full_params", "full_macs", "full_latency_ms")


def plot_pareto(run: "Run", metrics: tuple[str, ...] | None = None) -> "plt.Figure":
    """Error against parameters, MACs and throughput, with the Pareto front (the paper's Figures 2-3 style);
    by default also against the full-size model's parameters, MACs and latency where the run recorded them."""
    ok = run.successful
    err = run.objectives[0]
    if metrics is None:
        metrics = ("params", "macs", "throughput") + tuple(
            m for m in FULL_SIZE_METRICS if m in ok and ok[m].notna().any())
    note = ""
    if ok["budget"].nunique() > 1:  # multi-fidelity: compare configurations at the highest budget only
        top = ok["budget"].max()
        ok, note = ok[ok["budget"] == top], f" (budget {top:g})"
    cols = min(3, len(metrics))  # the full-size metrics go to a second row
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        data = ok[[err, metric]].dropna()
        ax.scatter(data[metric], data[err], s=18, alpha=0.7)
        if not data.empty:
            sign = -1.0 if metric == "throughput" else 1.0  # more throughput is better
            pts = data.assign(_m=sign * data[metric]).sort_values(["_m", err])
            front, best = [], np.inf
            for _, row in pts.iterrows():
                if row[err] < best:
                    front.append(row)
                    best = row[err]
            front_df = pd.DataFrame(front).sort_values(metric)
            ax.step(front_df[metric], front_df[err], where="pre" if sign < 0 else "post", color="C3",
                    marker="o", markersize=4, label="Pareto front")  # marker: a front of one point shows too
            ax.legend()
        ax.set_xlabel(metric)
        ax.set_ylabel(f"validation {err}")
        log = metric in ("params", "macs", "full_params", "full_macs") and (data[metric] > 0).all() and not data.empty
        ax.set_xscale("log" if log else "linear")
        if log:  # short labels (14M, 2G): the minor ticks of a span under a decade are labelled too
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.xaxis.set_minor_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run.name}: error against cost{note}")
    fig.tight_layout()
    return fig


def plot_learning_curves(run: "Run", top: int = 5) -> "plt.Figure":
    """Validation error per epoch of the best ``top`` successful trials."""
    ok = run.successful.sort_values(run.objectives[0]).head(top)
    fig, ax = plt.subplots(figsize=(7, 4))
    for _, row in ok.iterrows():
        curve = row["curve"] or []
        if curve:
            ax.plot([c["epoch"] for c in curve], [c["val_error"] for c in curve], marker="o", markersize=3,
                    label=f"trial {row['trial']} ({row[run.objectives[0]]:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation error")
    ax.set_title(f"Learning curves of the best {len(ok)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
