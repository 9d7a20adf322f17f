import base64
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nexsearch.analysis import load_run, load_runs
from nexsearch.analysis.plots import plot_importance, plot_learning_curves, plot_pareto, plot_trajectories
from nexsearch.cli import main
from nexsearch.errors import UserError
from nexsearch.search_space.space import SPACE

REPO = Path(__file__).resolve().parents[1]


def test_trials_dataframe_matches_runhistory(small_run):
    rh = json.loads((small_run / "smac" / "0" / "runhistory.json").read_text())
    rh["data"] = [row for row in rh["data"] if row["status"] != 0]  # RUNNING (cut by the budget's end): no result
    run = load_run(small_run)
    df = run.trials
    assert len(df) == len(rh["data"])
    for col in [*SPACE.keys(), "budget", "seed", "status", "error", "start_time", "end_time", "train_time_s",
                "params", "macs", "throughput", "reason"]:
        assert col in df.columns, col
    assert list(df["error"]) == [row["cost"] for row in rh["data"]]
    ok = run.successful
    assert len(ok) >= 2 and (ok["params"] > 0).all() and (ok["macs"] > 0).all()
    assert all(len(c) >= 1 for c in ok["curve"])
    inc = run.incumbent
    assert inc["metrics"]["error"] == ok["error"].min()
    tr = run.trajectory
    assert (np.diff(tr["incumbent_error"]) <= 0).all() and (np.diff(tr["wall_time_s"]) >= 0).all()
    assert len(run.pareto_front(["error", "params"])) >= 1


@pytest.mark.parametrize("method", ["lpi", "fanova"])
def test_importance_by_deepcave(small_run, method):
    imp = load_run(small_run).importance(method)
    assert set(imp["hyperparameter"]) == set(SPACE.keys())
    assert np.isfinite(imp[["importance", "variance"]].to_numpy()).all()
    assert imp["importance"].sum() > 0


def _bars(fig):
    """{legend label: {hyperparameter: bar length}} of a horizontal bar chart."""
    from matplotlib.container import BarContainer

    ax = fig.axes[0]
    ticks = {round(t): label.get_text() for t, label in zip(ax.get_yticks(), ax.get_yticklabels())}
    return {c.get_label(): {ticks[round(b.get_y() + b.get_height() / 2)]: b.get_width() for b in c}
            for c in ax.containers if isinstance(c, BarContainer)}


def _line(ax, label):
    lines = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(lines) == 1, [ln.get_label() for ln in ax.get_lines()]
    return lines[0]


def test_importance_plot_draws_the_importances(random_run):
    imp = load_run(random_run).importance("lpi")
    bars = _bars(plot_importance(imp))
    assert len(bars) == 1  # one budget: one colour
    (drawn,) = bars.values()
    assert drawn == pytest.approx(dict(zip(imp["hyperparameter"], imp["importance"])))
    assert set(drawn) == set(SPACE.keys()) and sum(drawn.values()) > 0


def test_importance_plot_per_budget(hyperband_run):
    """The paper's Figure 4: LPI per number of epochs, one colour per budget."""
    from nexsearch.analysis.plots import budget_label

    imp = load_run(hyperband_run).importance("lpi", budget="all")
    imp = imp[imp["budget"] != "combined"]
    bars = _bars(plot_importance(imp))
    assert list(bars) == ["1 epoch", "3 epochs", "9 epochs"]
    for budget, rows in imp.groupby("budget"):
        assert bars[budget_label(budget)] == pytest.approx(dict(zip(rows["hyperparameter"], rows["importance"])))


def test_trajectory_plot_draws_every_trial_and_the_incumbent(hyperband_run, random_run):
    hb, rnd = load_run(hyperband_run), load_run(random_run)
    ax = plot_trajectories([hb, rnd]).axes[0]  # two runs on one axis
    points = {c.get_label().split(" (")[0]: c.get_offsets() for c in ax.collections}
    for run, at_top in ((hb, " at 9 epochs"), (rnd, "")):
        inc = _line(ax, f"{run.name}: incumbent")
        assert inc.get_ydata()[-1] == run.incumbent["metrics"]["error"]
        assert (np.diff(inc.get_ydata()) <= 0).all()
        top = run.at_top_budget()
        assert sorted(points[f"{run.name}: trials{at_top}"][:, 1]) == sorted(top["error"])
        assert len(run.failed) >= 1  # the fake trainer runs out of memory for kernel size 9
        failed = points[f"{run.name}: failed"]
        assert len(failed) == len(run.failed) and (failed[:, 1] == 1.0).all()  # at the crash cost SMAC recorded
        scale = {"seconds": 1, "minutes": 60, "hours": 3600}[ax.get_xlabel().split("(")[1].rstrip(")")]
        assert sorted(failed[:, 0] * scale) == pytest.approx(sorted(run.failed["wall_time_s"]))
    below = hb.successful[hb.successful["budget"] < 9]
    assert len(below) and sorted(points[f"{hb.name}: trials at lower budgets"][:, 1]) == sorted(below["error"])
    assert f"{rnd.name}: trials at lower budgets" not in points


def test_pareto_plot_draws_the_front_with_throughput_maximised(hyperband_run):
    run = load_run(hyperband_run)
    fig = plot_pareto(run)
    top = run.at_top_budget()
    for ax, metric in zip(fig.axes, ("params", "macs", "throughput")):
        line = _line(ax, "Pareto front")
        drawn = sorted(zip(line.get_xdata(), line.get_ydata()))
        sign = -1 if metric == "throughput" else 1  # more throughput is better
        pts = list(zip(top[metric], top["error"]))
        expected = sorted(p for p in pts if not any(
            sign * q[0] <= sign * p[0] and q[1] <= p[1] and q != p for q in pts))
        assert drawn == expected, metric
        front = run.pareto_front(["error", metric])
        assert drawn == sorted(zip(front[metric], front["error"]))
    fast = max(top["throughput"])
    assert fast in _line(fig.axes[2], "Pareto front").get_xdata()  # the fastest trial is always on the front


def test_learning_curves_plot_draws_the_curves(random_run):
    run = load_run(random_run)
    ax = plot_learning_curves(run, top=3).axes[0]
    best = run.successful.sort_values(["error", "trial"]).head(3)
    labels = [f"trial {t} ({e:.3f})" for t, e in zip(best["trial"], best["error"])]
    assert [ln.get_label() for ln in ax.get_lines()] == labels
    for ln, curve in zip(ax.get_lines(), best["curve"]):
        assert list(ln.get_ydata()) == [c["val_error"] for c in curve]


def test_budget_tables_of_a_multi_fidelity_run(hyperband_run):
    from scipy.stats import spearmanr

    run = load_run(hyperband_run)
    t = run.trials
    table = run.budget_table().set_index("budget")
    assert list(table.index) == [1.0, 3.0, 9.0]
    assert table["trials"].sum() == len(t)
    for b, row in table.iterrows():
        assert row["trials"] == (t["budget"] == b).sum()
        assert row["failed"] == ((t["budget"] == b) & (t["status"] != "success")).sum()
    corr = run.budget_correlation()
    assert [tuple(r) for r in corr[["budget", "compared with budget"]].to_numpy()] == [(1, 3), (1, 9), (3, 9)]
    ok = run.successful
    for _, row in corr.iterrows():
        lo = ok[ok["budget"] == row["budget"]].set_index("config_id")["error"]
        hi = ok[ok["budget"] == row["compared with budget"]].set_index("config_id")["error"]
        common = lo.index.intersection(hi.index)
        assert row["configurations"] == len(common)
        if len(common) >= 3:
            assert row["spearman"] == pytest.approx(spearmanr(lo[common], hi[common]).statistic)


class _Page(HTMLParser):
    """The images (decoded) and tables (by id) of a report page, and every external reference."""

    def __init__(self, text):
        super().__init__()
        self.images, self.tables, self.external = [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            head, data = attrs["src"].split(",", 1)
            assert head == "data:image/png;base64"
            self.images.append(Image.open(io.BytesIO(base64.b64decode(data, validate=True))))
        if tag == "table":
            self.tables.append(attrs.get("id"))
        if tag in ("link", "iframe") or (tag == "script" and attrs.get("src")) or any(
                (attrs.get(k) or "").startswith(("http:", "https:", "//")) for k in ("src", "href")):
            self.external.append((tag, attrs))


def _read_page(path):
    page = _Page(Path(path).read_text())
    for im in page.images:
        im.load()  # decodes the whole image (raises on a broken one)
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    assert not page.external
    return page


def test_analyze_cli_writes_files_and_a_page(random_run, tmp_path, capsys):
    assert main(["analyze", str(random_run), "--out", str(tmp_path / "an")]) == 0
    out = capsys.readouterr().out
    assert "incumbent: trial" in out and "most important (lpi)" in out
    for name in ("trials.csv", "importance_lpi.csv", "importance_fanova.csv", "importance_lpi.png",
                 "importance_fanova.png", "trajectory.png", "pareto.png", "learning_curves.png", "report.html"):
        assert (tmp_path / "an" / name).stat().st_size > 0, name
    page = _read_page(tmp_path / "an" / "report.html")
    assert len(page.images) == 5  # LPI, fANOVA, trajectory, Pareto, learning curves
    assert page.tables == ["summary-table", "incumbent", "winner", "failures", "importance-lpi", "importance-fanova",
                           "pareto-front"]
    text = (tmp_path / "an" / "report.html").read_text()
    for name in ("importance_lpi.png", "trajectory.png"):  # the page embeds the very files written
        assert base64.b64encode((tmp_path / "an" / name).read_bytes()).decode() in text


def test_report_of_a_multi_fidelity_run_with_an_evaluation(hyperband_run, tmp_path, capsys):
    from nexsearch.analysis.plots import budget_label

    run_dir = tmp_path / "hb"
    shutil.copytree(hyperband_run, run_dir)
    (run_dir / "evaluation").mkdir()
    (run_dir / "evaluation" / "summary.csv").write_text(
        "model,seed,test_error\nincumbent,0,0.1234\nnexception,0,0.2345\n")
    assert main(["analyze", str(run_dir)]) == 0
    out = capsys.readouterr().out
    run = load_run(run_dir)
    for b, n in run.trials.groupby("budget").size().items():
        assert f"{budget_label(b)}: {n} trials" in out
    assert "rank correlation budget 1 -> 3" in out
    text = (run_dir / "analysis" / "report.html").read_text()
    page = _read_page(run_dir / "analysis" / "report.html")
    assert len(page.images) == 6  # LPI, fANOVA, trajectory, Pareto, learning curves, rank correlation
    assert page.tables == ["summary-table", "incumbent", "winner", "failures", "importance-lpi", "importance-fanova",
                           "pareto-front", "trials-per-budget", "budget-correlation", "evaluation"]
    assert "0.1234" in text and "nexception" in text
    assert "out of memory: fake trainer (test)" in text and "<td>oom</td>" in text  # failures: reason, status
    assert "9 epochs" in text and "1 epoch" in text  # importance per budget


def test_one_successful_trial_importance_undefined_rest_written(random_run, tmp_path, capsys):
    one = tmp_path / "one"
    shutil.copytree(random_run, one)
    rh = one / "smac" / "0" / "runhistory.json"
    data = json.loads(rh.read_text())
    first = next(i for i, row in enumerate(data["data"]) if row["status"] == 1)
    for i, row in enumerate(data["data"]):
        if i != first:
            row["status"], row["cost"] = 2, 1.0
    rh.write_text(json.dumps(data))
    shutil.rmtree(one / "smac" / "0" / ".nexsearch-backup", ignore_errors=True)
    assert main(["analyze", str(one)]) == 0
    out = capsys.readouterr().out
    assert "lpi importance is undefined" in out and "fanova importance is undefined" in out
    assert not (one / "analysis" / "importance_lpi.png").exists()
    page = _read_page(one / "analysis" / "report.html")
    assert len(page.images) == 3 and "importance-lpi" not in page.tables
    assert "importance is undefined" in (one / "analysis" / "report.html").read_text()


def test_running_trials_are_neither_results_nor_failures(random_run, tmp_path, capsys):
    """A run killed while trials ran leaves RUNNING entries in SMAC's runhistory."""
    live = tmp_path / "live"
    shutil.copytree(random_run, live)
    rh = live / "smac" / "0" / "runhistory.json"
    data = json.loads(rh.read_text())
    data["data"].append({**data["data"][0], "status": 0, "cost": 2147483647.0, "starttime": 0.0, "endtime": 0.0,
                         "additional_info": {}})
    rh.write_text(json.dumps(data))
    shutil.rmtree(live / "smac" / "0" / ".nexsearch-backup", ignore_errors=True)
    before, run = load_run(random_run), load_run(live)
    assert len(run.trials) == len(before.trials) and run.unfinished == before.unfinished + 1
    assert len(run.failed) == len(before.failed) and len(run.successful) == len(before.successful)
    assert main(["analyze", str(live)]) == 0
    out = capsys.readouterr().out
    assert f"{len(before.failed)} failed" in out
    assert "1 cut by the budget's end or a kill" in (live / "analysis" / "report.html").read_text()


def test_compare_runs(random_run, hyperband_run, tmp_path, capsys):
    assert main(["analyze", str(random_run), str(hyperband_run), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    a, b = load_run(random_run), load_run(hyperband_run)
    table = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert list(table["run"]) == [a.name, b.name]
    assert list(table["incumbent error"]) == pytest.approx([a.incumbent["metrics"]["error"],
                                                            b.incumbent["metrics"]["error"]])
    assert list(table["failed"]) == [len(a.failed), len(b.failed)]
    finished = len(b.successful) + len(b.failed)
    assert table["trials per hour"].iloc[1] == pytest.approx(finished / (b.state["used_s"] / 3600), abs=0.06)
    assert a.name in out and b.name in out
    page = _read_page(tmp_path / "cmp" / "report.html")
    assert page.tables == ["comparison"] and len(page.images) == 1
    fig = plot_trajectories([a, b])  # the comparison's figure: both incumbents on one axis
    assert {ln.get_label() for ln in fig.axes[0].get_lines()} == {f"{a.name}: incumbent", f"{b.name}: incumbent"}


def test_compare_refuses_runs_of_other_design_spaces(random_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(random_run, other)
    cs = other / "smac" / "0" / "configspace.json"
    space = json.loads(cs.read_text())
    space["hyperparameters"] = [hp for hp in space["hyperparameters"] if hp["name"] != "se"]
    cs.write_text(json.dumps(space))
    for argv, msg in ((["analyze", str(random_run), str(other), "--out", str(tmp_path / "c")], "another design space"),
                      (["analyze", str(random_run), str(random_run)], "needs --out")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "c").exists()


def test_load_runs_stacks_with_a_run_column(small_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_run, copy)
    both = load_runs([small_run, copy])
    assert len(both.trials) == 2 * len(load_run(small_run).trials)
    assert both.trials["run"].nunique() == 2 and both.trajectory["run"].nunique() == 2


def test_snapshot_of_a_run_being_written(small_run, tmp_path):
    copy = tmp_path / "live"
    shutil.copytree(small_run, copy)
    with open(copy / "trials.jsonl", "a") as fh:
        fh.write('{"status": "ok", "cost": 0.1, "conf')  # a line being written right now
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    assert len(load_run(copy).trials) == len(load_run(small_run).trials)
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before  # nothing written


def test_bad_runs(small_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    trunc = tmp_path / "trunc"
    shutil.copytree(small_run, trunc)
    rh = trunc / "smac" / "0" / "runhistory.json"
    rh.write_text(rh.read_text()[: len(rh.read_text()) // 2])
    # a killed run keeps the last complete copy of SMAC's files: analysis reads that one
    complete = json.loads((rh.parent / ".nexsearch-backup" / "runhistory.json").read_text())["data"]
    assert len(load_run(trunc).trials) == len([row for row in complete if row["status"] != 0])  # not RUNNING
    assert main(["analyze", str(trunc), "--out", str(tmp_path / "trunc-report")]) == 0
    capsys.readouterr()
    shutil.rmtree(rh.parent / ".nexsearch-backup")  # without it, a truncated file is an error
    failed = tmp_path / "failed"
    shutil.copytree(small_run, failed)
    rh2 = failed / "smac" / "0" / "runhistory.json"
    data = json.loads(rh2.read_text())
    for row in data["data"]:
        row["status"] = 2
    rh2.write_text(json.dumps(data))
    for path, msg in ((tmp_path / "empty", "not a nexsearch run"), (trunc, "truncated"),
                      (failed, "no successful trial"), (tmp_path / "nope", "does not exist")):
        assert main(["analyze", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (path, err)


def test_importance_without_deepcave_says_how_to_install(small_run, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_deepcave(name, *args, **kwargs):
        if name.startswith("deepcave"):
            raise ImportError("No module named 'deepcave'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepcave)
    with pytest.raises(UserError, match="pip install --no-build-isolation pyrfr"):
        load_run(small_run).importance("lpi")


def test_notebook_executes(hyperband_run):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "experiments" / "analysis.ipynb", as_version=4)
    os.environ["NEXSEARCH_RUN"] = str(hyperband_run)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "experiments")}}).execute()
    finally:
        del os.environ["NEXSEARCH_RUN"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "undefined" not in text
    # trajectory, LPI and fANOVA per budget (Figure 4), Pareto, learning curves, rank correlation
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 6
    assert not re.search(r"\d\.\d{6}e[-+]\d\d", text)  # no 6.250000e-02: errors print as 0.0625
