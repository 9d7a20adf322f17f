import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from nexsearch.analysis import load_run, load_runs
from nexsearch.analysis.plots import plot_importance, plot_learning_curves, plot_pareto, plot_trajectories, save
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


def test_plots_are_written(small_run, tmp_path):
    run = load_run(small_run)
    imp = run.importance("lpi")
    figs = {
        "imp": plot_importance(imp), "traj": plot_trajectories([run, run]), "pareto": plot_pareto(run),
        "curves": plot_learning_curves(run),
    }
    for name, fig in figs.items():
        path = save(fig, tmp_path / f"{name}.png")
        assert path.stat().st_size > 5000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_cli_writes_files(small_run, tmp_path, capsys):
    assert main(["analyze", str(small_run), "--out", str(tmp_path / "an")]) == 0
    out = capsys.readouterr().out
    assert "incumbent: trial" in out and "most important (lpi)" in out
    for name in ("trials.csv", "importance_lpi.csv", "importance_fanova.csv", "importance_lpi.png",
                 "trajectory.png", "pareto.png", "learning_curves.png"):
        assert (tmp_path / "an" / name).stat().st_size > 0, name


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


def test_notebook_executes(small_run):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "experiments" / "analysis.ipynb", as_version=4)
    os.environ["NEXSEARCH_RUN"] = str(small_run)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "experiments")}}).execute()
    finally:
        del os.environ["NEXSEARCH_RUN"]
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4
