"""The report's interactive figures: what each draws (points, trial numbers, hover), and the page that holds them."""

import json
import re
import shutil

import pytest

from nexsearch.analysis import interactive
from nexsearch.analysis.run import load_run
from nexsearch.cli import main


def test_trials_figure_points_are_the_successful_trials_with_their_hover(random_run):
    run = load_run(random_run)
    fig = interactive.trials_figure(run)
    points, incumbent = fig.data
    ok = run.successful.sort_values("wall_time_s")
    assert [c[0] for c in points.customdata] == ok["trial"].tolist()
    assert list(points.y) == pytest.approx(ok["error"].tolist())
    first = ok.iloc[0]
    assert f"block={first['block']}" in points.customdata[0][3].split("<br>")
    assert "trial %{customdata[0]}" in points.hovertemplate and "error" in points.hovertemplate
    assert min(incumbent.y) == pytest.approx(ok["error"].min())  # the incumbent's trajectory ends at the best


def test_parallel_coordinates_one_axis_per_hyperparameter_colour_is_error(hyperband_run):
    run = load_run(hyperband_run)
    (pc,) = interactive.parallel_figure(run).data
    labels = [d["label"] for d in pc.dimensions]
    assert labels == [*interactive.hyperparameters(run), "budget", "validation error"]
    ok = run.successful.sort_values("trial")
    assert list(pc.line.color) == pytest.approx(ok["error"].tolist())
    block = pc.dimensions[labels.index("block")]
    assert [block["ticktext"][v] for v in block["values"]] == ok["block"].tolist()
    kernel = pc.dimensions[labels.index("kernel_size")]  # conditional: inactive for the inception mixer
    shown = [kernel["ticktext"][v] for v in kernel["values"]]
    assert shown == ["inactive" if k != k else str(int(k)) for k in ok["kernel_size"]]


def test_slices_one_panel_per_hyperparameter_with_every_trial(random_run):
    run = load_run(random_run)
    fig = interactive.slice_figure(run)
    names = interactive.hyperparameters(run)
    points = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in points] == names
    for trace in points:
        assert len(trace.y) == len(run.successful)
    block = points[names.index("block")]
    assert sorted(set(block.x)) == sorted(set(run.successful["block"]))


def test_timeline_puts_each_trial_on_its_worker(random_run):
    run = load_run(random_run)
    fig = interactive.timeline_figure(run)
    bars = {t.name: t for t in fig.data}
    assert set(bars) == {"ok", "oom"}  # the fake trainer's statuses
    trials = sorted(c[0] for t in fig.data for c in t.customdata)
    assert trials == sorted(run.trials["trial"].tolist())
    assert all(x >= 0 for t in fig.data for x in t.x) and len({y for t in fig.data for y in t.y}) == 1


def test_report_embeds_plotly_once_and_each_figure_as_data(random_run, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", str(random_run), "--out", str(out)]) == 0
    text = (out / "report.html").read_text()
    library = interactive.plotly_js().replace("</script", "<\\/script")
    assert text.count(library) == 1  # the library, inline, once
    rest = text.replace(library, "")
    assert "cdn.plot.ly" not in rest and "<script src" not in rest and "https://" not in rest
    figs = {m.group(1): json.loads(m.group(2).replace("<\\/", "</")) for m in re.finditer(
        r'<script type="application/json" id="fig-([a-z]+)">(.*?)</script>', text, re.S)}
    assert set(figs) == {"trials", "parallel", "slices", "timeline", "pareto", "curves", "importance"}
    run = load_run(random_run)
    drawn = [c[0] for c in figs["trials"]["data"][0]["customdata"]]
    assert drawn == run.successful.sort_values("wall_time_s")["trial"].tolist()
    importance = {t["name"]: t for t in figs["importance"]["data"]}
    assert {name.split()[0] for name in importance} == {"lpi", "fanova"}
    assert "Which configuration nexsearch export takes" in text
    assert "No evaluation: exporting the search's incumbent" in text


def test_summary_says_cut_for_trials_without_a_result(random_run, tmp_path, capsys):
    live = tmp_path / "live"
    shutil.copytree(random_run, live)
    rh = live / "smac" / "0" / "runhistory.json"
    data = json.loads(rh.read_text())
    data["data"].append({**data["data"][0], "status": 0, "cost": 2147483647.0, "additional_info": {}})
    rh.write_text(json.dumps(data))
    shutil.rmtree(live / "smac" / "0" / ".nexsearch-backup", ignore_errors=True)
    assert main(["analyze", str(live)]) == 0
    text = (live / "analysis" / "report.html").read_text()
    assert "1 cut by the budget's end or a kill" in text and "1 running" not in text
