"""Interactive figures of a run for ``report.html`` (plotly), and the report's evaluation and winner sections.

Each figure is built here as a plotly ``Figure`` (``figures(run)``: its data is what the tests read) and
written into the page as JSON beside a call of plotly.js; the page carries ``plotly.min.js`` from the
``plotly`` package once, inline, so the file stays self-contained and works offline. Every point's hover
names its trial, configuration, budget and error; every figure zooms and pans.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from nexsearch.analysis.page import Page
    from nexsearch.analysis.run import Run

HOVER = ("trial %{customdata[0]}<br>budget %{customdata[1]}<br>error %{customdata[2]:.4f}<br>"
         "%{customdata[3]}<extra></extra>")
COLORSCALE = "Viridis"
_PLOTLY_MARK = "<!-- plotly.js -->"


def hyperparameters(run: "Run") -> list[str]:
    """The design space's hyperparameters that some successful trial set (inactive ones are NaN)."""
    from nexsearch.search_space.space import SPACE

    ok = run.successful
    return [n for n in SPACE.keys() if n in ok and ok[n].notna().any()]


def _value(value: Any) -> str:
    """A hyperparameter's value as the space writes it (an integer widened to float by NaN gaps back to ``3``)."""
    if _missing(value):
        return "inactive"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _order(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1 if text != "inactive" else 2, 0.0, text)


def _config_text(row: pd.Series, names: list[str]) -> str:
    return "<br>".join(f"{n}={_value(row[n])}" for n in names if not _missing(row[n]))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _budget(value: Any) -> str:
    return "-" if _missing(value) else f"{value:g}"


def _customdata(rows: pd.DataFrame, names: list[str], error: str) -> list[list[Any]]:
    return [[int(r["trial"]), _budget(r["budget"]), float(r[error]), _config_text(r, names)]
            for _, r in rows.iterrows()]


def trials_figure(run: "Run") -> Any:
    """Each successful trial's error against the search's wall time, and the incumbent's trajectory."""
    import plotly.graph_objects as go

    err, names = run.objectives[0], hyperparameters(run)
    ok = run.successful.sort_values("wall_time_s")
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=ok["wall_time_s"] / 60, y=ok[err], mode="markers", name="trials", customdata=_customdata(ok, names, err),
        hovertemplate=HOVER, marker=dict(color=ok["budget"].fillna(0), colorscale=COLORSCALE, size=9,
                                         showscale=run.multi_fidelity, colorbar=dict(title="budget"))))
    traj = run.trajectory
    fig.add_trace(go.Scatter(x=traj["wall_time_s"] / 60, y=traj["incumbent_" + err], mode="lines", name="incumbent",
                             line=dict(shape="hv", color="#d62728"), hoverinfo="skip"))
    fig.update_layout(title="Trials and incumbent over time", xaxis_title="search wall time (min)",
                      yaxis_title=f"validation {err}", height=420,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1))
    return fig


def _dimension(values: pd.Series, label: str) -> dict[str, Any]:
    """One parallel-coordinates axis: numbers as they are, categories (and 'inactive') as ticks."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) and values.notna().all():
        return dict(label=label, values=values.astype(float).tolist())
    texts = [_value(v) for v in values]
    ticks = sorted(set(texts), key=_order)
    index = {c: i for i, c in enumerate(ticks)}
    codes = [index[t] for t in texts]
    return dict(label=label, values=codes, tickvals=list(range(len(ticks))), ticktext=ticks)


def parallel_figure(run: "Run") -> Any:
    """Parallel coordinates: one axis per hyperparameter (and budget), the error last; colour = error."""
    import plotly.graph_objects as go

    err = run.objectives[0]
    ok = run.successful.sort_values("trial")
    dims = [_dimension(ok[n], n) for n in hyperparameters(run)]
    if run.multi_fidelity:
        dims.append(_dimension(ok["budget"], "budget"))
    dims.append(dict(label=f"validation {err}", values=ok[err].astype(float).tolist()))
    fig = go.Figure(go.Parcoords(line=dict(color=ok[err].astype(float).tolist(), colorscale=COLORSCALE,
                                           reversescale=True, showscale=True, colorbar=dict(title=err)),
                                 dimensions=dims, labelangle=-30, labelside="top"))
    fig.update_layout(title=f"Configurations against validation {err} (drag on an axis to filter)", height=520,
                      margin=dict(t=150))
    return fig


def slice_figure(run: "Run") -> Any:
    """One panel per hyperparameter: each trial's error at its value (points), and the mean per value (line)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    err, names = run.objectives[0], hyperparameters(run)
    ok = run.successful
    cols = 3
    rows = max(1, math.ceil(len(names) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, vertical_spacing=0.2 / rows + 0.03)
    for i, name in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        x = ok[name].map(_value)
        fig.add_trace(go.Scatter(x=x, y=ok[err], mode="markers", name=name, showlegend=False,
                                 customdata=_customdata(ok, names, err), hovertemplate=HOVER,
                                 marker=dict(color=ok[err], colorscale=COLORSCALE, reversescale=True, size=7,
                                             opacity=0.75)), row=r, col=c)
        means = ok.groupby(x)[err].mean()
        means = means.loc[sorted(means.index, key=_order)]
        fig.add_trace(go.Scatter(x=list(means.index), y=means.tolist(), mode="lines+markers", showlegend=False,
                                 name=f"{name} mean", line=dict(color="#d62728"),
                                 hovertemplate=f"{name}=%{{x}}<br>mean {err} %{{y:.4f}}<extra></extra>"),
                      row=r, col=c)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=list(means.index), row=r, col=c)
    fig.update_layout(title=f"Validation {err} per hyperparameter value (slices; line: mean per value)",
                      height=260 * rows + 80)
    return fig


def timeline_figure(run: "Run") -> Any:
    """Trials as bars from start to end, one row per worker process (host and pid), coloured by status."""
    import plotly.graph_objects as go

    numbers = {_record_key(run._configs.get(str(r["config_id"]), {}), r["seed"], r["budget"]): int(r["trial"])
               for _, r in run.trials.iterrows()}
    records = [r for r in run.records if r.get("start_time") and r.get("end_time")]
    t0 = min((r["start_time"] for r in records), default=0.0)
    fig = go.Figure()
    for status in sorted({r.get("status", "?") for r in records}):
        rs = [r for r in records if r.get("status", "?") == status]
        trial = [numbers.get(_record_key(r.get("config", {}), r.get("seed"), r.get("budget")), "?") for r in rs]
        fig.add_trace(go.Bar(
            orientation="h", name=status, base=[(r["start_time"] - t0) / 60 for r in rs],
            x=[(r["end_time"] - r["start_time"]) / 60 for r in rs],
            y=[f"{r.get('host', '?')} pid {r.get('pid', '?')}" for r in rs],
            customdata=[[t, _budget(r.get("budget")), r.get("reason") or ""] for t, r in zip(trial, rs)],
            hovertemplate=(f"trial %{{customdata[0]}} ({status})<br>budget %{{customdata[1]}}<br>from %{{base:.2f}} "
                           "min for %{x:.2f} min<br>%{customdata[2]}<extra></extra>")))
    fig.update_layout(title="Trials per worker over time", xaxis_title="minutes since the first trial started",
                      barmode="overlay", height=max(260, 60 * len({f"{r.get('host')}{r.get('pid')}" for r in records})
                                                    + 160))
    return fig


def _record_key(config: dict[str, Any], seed: Any, budget: Any) -> str:
    b = None if _missing(budget) else round(float(budget), 6)
    return json.dumps([config, None if seed is None else int(seed), b], sort_keys=True, default=str)


def pareto_figure(run: "Run") -> Any:
    """Each successful trial's error against its proxy's parameters; the Pareto front as a line."""
    import plotly.graph_objects as go

    err, names = run.objectives[0], hyperparameters(run)
    ok = run.successful.dropna(subset=["params"])
    front = run.pareto_front([err, "params"]).sort_values("params")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ok["params"], y=ok[err], mode="markers", name="trials",
                             customdata=_customdata(ok, names, err), hovertemplate=HOVER + "params %{x:,}",
                             marker=dict(size=8, color="#1f77b4", opacity=0.7)))
    fig.add_trace(go.Scatter(x=front["params"], y=front[err], mode="lines+markers", name="Pareto front",
                             line=dict(shape="hv", color="#d62728"), hoverinfo="skip"))
    fig.update_layout(title=f"Validation {err} against the proxy's parameters", xaxis_title="parameters (proxy)",
                      xaxis_type="log", yaxis_title=f"validation {err}", height=420)
    return fig


def curves_figure(run: "Run", top: int = 5) -> Any:
    """Learning curves (validation error per epoch) of the best trials at the largest budget, the rest faint."""
    import plotly.graph_objects as go

    err = run.objectives[0]
    ok = run.successful.sort_values(err)
    best = set(ok.head(top)["trial"])
    fig = go.Figure()
    for _, r in ok.sort_values("trial").iterrows():
        curve = [p for p in r["curve"] if p.get("val_error") is not None]
        if not curve:
            continue
        highlight = r["trial"] in best
        fig.add_trace(go.Scatter(
            x=[p["epoch"] for p in curve], y=[p["val_error"] for p in curve], mode="lines+markers",
            name=f"trial {int(r['trial'])}", showlegend=highlight, opacity=1.0 if highlight else 0.25,
            hovertemplate=f"trial {int(r['trial'])}<br>epoch %{{x}}<br>val error %{{y:.4f}}<extra></extra>"))
    fig.update_layout(title=f"Learning curves (the {top} best trials highlighted)", xaxis_title="epoch",
                      yaxis_title="validation error", height=420)
    return fig


def importance_figure(importances: dict[str, pd.DataFrame]) -> Any:
    """DeepCAVE's importances (LPI, fANOVA) as bars with their standard deviation, one colour per budget."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    methods = list(importances)
    fig = make_subplots(rows=1, cols=max(1, len(methods)), subplot_titles=[m.upper() for m in methods])
    for i, method in enumerate(methods):
        imp = importances[method]
        for budget, g in imp.groupby(imp["budget"].map(str), sort=False):
            g = g.sort_values("importance", ascending=False)
            fig.add_trace(go.Bar(x=g["hyperparameter"], y=g["importance"], name=f"{method} budget {budget}",
                                 error_y=dict(array=np.sqrt(g["variance"].clip(lower=0)).tolist()),
                                 hovertemplate="%{x}: %{y:.4f}<extra>" + f"{method}, budget {budget}</extra>"),
                          row=1, col=i + 1)
    fig.update_layout(title="Hyperparameter importance (DeepCAVE)", height=440, barmode="group")
    return fig


def figures(run: "Run", importances: dict[str, pd.DataFrame] | None = None, top: int = 5) -> dict[str, Any]:
    """Every interactive figure of a run, by name (what ``add_section`` writes into the page)."""
    out = {"trials": trials_figure(run), "parallel": parallel_figure(run), "slices": slice_figure(run),
           "timeline": timeline_figure(run), "pareto": pareto_figure(run), "curves": curves_figure(run, top)}
    if importances:
        out["importance"] = importance_figure(importances)
    return out


def plotly_js() -> str:
    """plotly.js as shipped in the ``plotly`` package (minified), for one inline ``<script>``."""
    from importlib.resources import files

    return files("plotly").joinpath("package_data", "plotly.min.js").read_text(encoding="utf-8")


def add_figure(page: "Page", fig: Any, name: str) -> None:
    """The figure's JSON (``<script type=application/json id=fig-NAME>``) and the call that draws it; the first
    figure of a page brings plotly.js along (once)."""
    if not any(h.startswith(_PLOTLY_MARK) for h in page.head):
        page.head.append(_PLOTLY_MARK + "<script>" + plotly_js().replace("</script", "<\\/script") + "</script>")
    data = fig.to_json().replace("</", "<\\/")
    page.html(f'<div id="plot-{name}" class="figure"></div>'
              f'<script type="application/json" id="fig-{name}">{data}</script>'
              f'<script>(function(){{var f=JSON.parse(document.getElementById("fig-{name}").textContent);'
              f'Plotly.newPlot("plot-{name}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>')


def add_section(page: "Page", run: "Run", importances: dict[str, pd.DataFrame], top: int) -> None:
    """The report's interactive section: hover for trial, configuration, budget and error; drag to zoom."""
    page.section("Explore the trials (interactive)", "interactive")
    page.text("Hover over a point for its trial, configuration, budget and error; drag to zoom, double-click to "
              "zoom out; on the parallel coordinates, drag along an axis to keep a range.")
    for name, fig in figures(run, importances, top).items():
        add_figure(page, fig, name)


def winner_table(run_dir: str | Path, facts: dict[str, Any]) -> pd.DataFrame:
    """The search's incumbent and the evaluated winner side by side, and which one ``nexsearch export`` takes."""
    from nexsearch.runview import RunView

    inc, err = facts["incumbent"], facts["objectives"][0]
    budget = inc["metrics"].get("budget")
    rows = [("search's incumbent", f"trial {inc['trial']}: validation {err} {inc['metrics'][err]:.4f}"
             + ("" if _missing(budget) else f" at budget {budget:g}") + " (one training, the search's seed)")]
    winner, chosen = RunView(run_dir).evaluated_winner()
    if winner is not None:
        test = winner.get("test_error_mean")
        rows.append(("evaluated winner", f"{winner['source']}: mean validation error {winner['val_error_mean']:.4f}"
                     + ("" if test is None else f", mean test error {test:.4f}")
                     + f" over {winner['seeds_done']} new seeds at {winner['epochs']} epochs"))
    else:
        rows.append(("evaluated winner", "none yet (`nexsearch evaluate RUN` re-trains the best with new seeds)"))
    rows.append(("nexsearch export takes", chosen[0].upper() + chosen[1:]))
    return pd.DataFrame(rows, columns=["", "value"])


def _differing(configs: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]


def _config_cell(config: dict[str, Any], keys: list[str]) -> str:
    short = ", ".join(f"{k}={config.get(k, 'inactive')}" for k in keys) or "(all the same)"
    full = html.escape(json.dumps(config, indent=1, sort_keys=True))
    return f"{html.escape(short)}<details><summary>full configuration</summary><pre>{full}</pre></details>"


# the table's columns (as few as say what a reader needs, so that the configurations keep their width): the
# evaluation's column -> its heading; errors are shown as mean ± std
SHOWN = {"epochs": "epochs", "rank": "rank", "source": "candidate", "seeds_done": "seeds", "failed": "failed",
         "val_error": "validation error", "test_error": "test error", "params": "params"}


def _mean_std(mean: Any, std: Any) -> str:
    if _missing(mean):
        return "-"
    return f"{mean:.4f}" + ("" if _missing(std) else f" ± {std:.4f}")


def evaluation_section(page: "Page", run_dir: str | Path, csv: Path) -> None:
    """``nexsearch evaluate``'s table (configurations as the hyperparameters in which the candidates differ,
    the full one on demand) and its figure; a bare ``csv`` (no summary.json beside it) as it is."""
    from nexsearch.analysis.page import format_number
    from nexsearch.evaluation.store import PLOT_FILE, evaluation_frame
    from nexsearch.rundir import RunDir

    frame = evaluation_frame(run_dir)
    if frame.empty:
        page.table(pd.read_csv(csv), "evaluation", index=False)
        return
    configs = [c if isinstance(c, dict) else {} for c in frame["config"]]
    keys = _differing(configs)
    frame = frame.assign(**{kind: [_mean_std(m, sd) for m, sd in zip(frame[f"{kind}_mean"], frame[f"{kind}_std"])]
                            for kind in ("val_error", "test_error") if f"{kind}_mean" in frame})
    frame["source"] = [("★ " if not _missing(w) and bool(w) else "") + str(src) for src, w in zip(frame["source"], frame["winner"])]
    shown = frame[[c for c in SHOWN if c in frame]].rename(columns=SHOWN).astype(object)
    for col in shown:
        shown[col] = [v if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                      else html.escape(str(v)) for v in shown[col]]
    shown["configuration"] = [_config_cell(c, keys) for c in configs]
    page.head.append("<style>#evaluation details pre { font-size: 0.8em; margin: 0.2em 0; } "
                     "#evaluation td:last-child { min-width: 24em; } #evaluation td { white-space: nowrap; } "
                     "#evaluation td:last-child { white-space: normal; } .wide { overflow-x: auto; }</style>")
    page.html('<div class="wide">' + shown.to_html(table_id="evaluation", index=False, border=0, na_rep="-",
                                                   float_format=format_number, escape=False) + "</div>")
    page.text("★: the winner (lowest mean validation error over the new seeds); the configuration column shows the "
              "hyperparameters in which the candidates differ.")
    png = RunDir(run_dir).evaluation / PLOT_FILE
    if png.exists():
        page.image(png.read_bytes(), "evaluation: validation and test error per candidate")
