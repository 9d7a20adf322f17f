"""The evaluation's presentation: its table and lines on a console, and its plot (on a headless backend
of its own, :mod:`nexsearch.figures`). Plain summaries in, as :mod:`nexsearch.evaluation.store` keeps them."""

from __future__ import annotations

from typing import Any

from rich.console import Console


def plot_evaluation(summary: dict[str, Any]):
    """Validation and test error of every evaluated candidate (mean +- std over seeds, seeds as dots),
    best first, one panel per evaluation; the winner's label is starred."""
    from nexsearch.figures import pyplot

    plt = pyplot()
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
                     f"seed(s), test error {_fmt(w['test_error_mean'], None)}); {ev['note']}")
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
        print_entry(ev, console or Console())


def print_entry(ev: dict[str, Any], console: Console) -> None:
    width = console.width
    if not console.is_terminal:  # logs and pipes get the whole table (rich would squeeze it into 80 columns)
        console.width = max(width, 132)
    try:
        console.print(evaluation_table(ev))
    finally:
        console.width = width
    for line in evaluation_lines(ev):
        console.print(line, highlight=False, soft_wrap=True)


