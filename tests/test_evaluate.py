"""`nexsearch evaluate`: the best configurations and the presets re-trained with new seeds, on a small real run."""

import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexsearch.analysis import load_run
from nexsearch.cli import main
from nexsearch.evaluate import select_candidates
from nexsearch.evaluation.present import plot_evaluation
from nexsearch.evaluation.store import RESULTS_FILE, load_summary
from nexsearch.export import export_model
from nexsearch.runners.status import run_status
from nexsearch.runview import RunView

# The first test's fixtures run a small search and two evaluate processes: 270 s on the shared 2-core machine
# under a load of ~10, too close to the default 300 s.
pytestmark = pytest.mark.timeout(1200)

CLI = [sys.executable, "-m", "nexsearch.cli"]
REPO = Path(__file__).resolve().parents[1]


# One thread per evaluate process: on a shared, loaded machine two threads per process made these tiny
# trainings ~10x slower (the behaviour tested does not depend on it).
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run_cli(*args, timeout=600):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=ENV)


def lines(run_dir: Path) -> list[dict]:
    path = run_dir / "evaluation" / RESULTS_FILE
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A small real search on digits: 4 trials of one epoch (a trial cap, so a loaded machine still gets them)."""
    from rich.console import Console

    from nexsearch.runners.experiment import experiment_from_dict
    from nexsearch.runners.search import run_search

    out = tmp_path_factory.mktemp("runs") / "digits"
    exp = experiment_from_dict({
        "name": "digits-small", "dataset": "digits", "image_size": 16, "train_subset": 256, "download": False,
        "data_dir": None, "min_epochs": 1, "max_epochs": 1, "initial_design": 3, "retrain_after": 2, "max_trials": 4,
        "output_dir": str(out),
        "train": {"width": 0.125, "batch_size": 32, "lr": 0.005, "hflip": False, "throughput_batch": 16,
                  "throughput_iters": 1},
    })
    run_search(exp, 900.0, console=Console(quiet=True))
    assert run_status(out)["finished"] >= 2
    return out


@pytest.fixture(scope="module")
def evaluated(digits_run, tmp_path_factory):
    """A copy of the digits run, evaluated with --top 2 --seeds 2 --epochs 1, killed with -9 once in the middle."""
    run = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(digits_run, run)
    args = [*CLI, "evaluate", str(run), "--top", "2", "--seeds", "2", "--epochs", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=ENV)
    deadline = time.time() + 500
    while time.time() < deadline and not lines(run) and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = (run / "evaluation" / RESULTS_FILE).read_text()
    out = run_cli("evaluate", str(run), "--top", "2", "--seeds", "2", "--epochs", "1")
    return run, before, out


def test_evaluate_top_2_seeds_2(evaluated):
    run, before, out = evaluated
    assert out.returncode == 0, out.stderr[-3000:]
    candidates, search_seeds = select_candidates(run, 2, ["xception", "nexception"])
    sources = [c.source for c in candidates]
    # 2 distinct trials + the 2 presets (a preset the search already found counts once, as "trial N = preset").
    assert sum(s.startswith("trial ") for s in sources) == 2
    assert {"xception", "nexception"} <= {c.preset for c in candidates}
    assert len({c.key for c in candidates}) == len(candidates)
    if len(candidates) == 4:
        assert not any("=" in s for s in sources)
    records = lines(run)
    assert len(records) == 2 * len(candidates)
    # kill -9 lost only the training in flight: what was recorded before is still there, none was repeated
    n_before = len(before.splitlines())
    assert 1 <= n_before < len(records)
    assert (run / "evaluation" / RESULTS_FILE).read_text().startswith(before)
    assert len({(r["candidate"], r["seed"]) for r in records}) == len(records)
    assert f"{len(records) - n_before} trainings to run, {n_before} already recorded" in out.stdout
    seeds = {r["seed"] for r in records}
    assert len(seeds) == 2 and not seeds & search_seeds  # seeds the search did not use
    for r in records:
        assert r["status"] == "ok" and r["epochs"] == 1
        assert math.isfinite(r["val_error"]) and math.isfinite(r["test_error"]) and 0 <= r["test_error"] <= 1
        assert r["params"] > 0 and r["macs"] > 0 and r["throughput"] > 0 and r["train_time_s"] > 0
    assert all(r["config"] == c.config for c in candidates for r in records if r["candidate"] == c.key)

    summary = load_summary(run)
    (ev,) = summary["evaluations"]
    assert ev["complete"] and ev["trainings_finished"] == len(records) and ev["epochs"] == 1
    rows = ev["candidates"]
    assert [r["rank"] for r in rows] == list(range(1, len(candidates) + 1))
    means = [r["val_error_mean"] for r in rows]
    assert means == sorted(means)
    for row in rows:  # mean and std are those of the recorded trainings
        vals = [r["val_error"] for r in records if r["candidate"] == row["candidate"]]
        tests = [r["test_error"] for r in records if r["candidate"] == row["candidate"]]
        assert row["val_error_mean"] == pytest.approx(sum(vals) / 2)
        assert row["val_error_std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))
        assert row["test_error_mean"] == pytest.approx(sum(tests) / 2)
    assert rows[0]["winner"] and not any(r["winner"] for r in rows[1:])
    assert ev["winner"]["source"] == rows[0]["source"]
    # the search's cost, beside the evaluated error, for the trial candidates
    assert all(r["search_cost"] is not None for r in rows if r["trial"])
    assert ev["spearman_n"] == sum(r["search_cost"] is not None for r in rows)
    assert ev["search_pick"]["trial"] == run_status(run)["incumbent"]["trial"]

    # what the user reads
    assert "never used to choose" in out.stdout and "Spearman rank correlation" in out.stdout
    assert f"winner: {rows[0]['source']}" in out.stdout and "★ 1" in out.stdout
    csv = (run / "evaluation" / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("epochs,rank,winner,source") and len(csv) == 1 + len(candidates)
    assert csv[1].split(",")[3] == rows[0]["source"]

    # the plot: per candidate, the drawn means are the summary's, best first
    fig = plot_evaluation(summary)
    ax = fig.axes[0]
    val, test = (c.lines[0].get_ydata() for c in ax.containers)  # the two errorbar series
    assert list(val) == pytest.approx(means)
    assert list(test) == pytest.approx([r["test_error_mean"] for r in rows])
    val_bars = ax.containers[0].lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in val_bars] == pytest.approx([2 * r["val_error_std"] for r in rows])
    assert [t.get_text() for t in ax.get_xticklabels()][0] == "* " + rows[0]["source"]
    assert (run / "evaluation" / "evaluation.png").stat().st_size > 10_000


def test_same_command_again_trains_nothing(evaluated, capsys):
    run, _, _ = evaluated
    n = len(lines(run))
    assert main(["evaluate", str(run), "--top", "2", "--seeds", "2", "--epochs", "1"]) == 0
    assert "0 trainings to run" in capsys.readouterr().out and len(lines(run)) == n


def test_status_analysis_and_export_use_the_evaluation(evaluated, tmp_path, capsys):
    run, _, _ = evaluated
    ev = load_summary(run)["evaluations"][0]
    winner = ev["winner"]
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "evaluation at 1 epochs" in out and f"winner: {winner['source']}" in out and "Spearman" in out
    assert main(["status", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluation"]["evaluations"][0]["epochs"] == 1

    frame = load_run(run).evaluation
    assert list(frame["rank"]) == [r["rank"] for r in ev["candidates"]]
    assert frame.loc[frame["winner"], "source"].tolist() == [winner["source"]]
    assert frame["val_error_mean"].is_monotonic_increasing

    result = export_model(run, out=tmp_path / "w.safetensors", size="t")
    meta = json.loads((tmp_path / "w.json").read_text())
    assert meta["config"] == winner["config"] and meta["source"]["evaluation"]["epochs"] == 1
    assert result["chosen"].startswith(f"exporting the evaluated winner {winner['source']}")
    inc = run_status(run)["incumbent"]
    export_model(run, out=tmp_path / "i.safetensors", size="t", incumbent=True)
    meta = json.loads((tmp_path / "i.json").read_text())
    assert meta["config"] == inc["config"] and meta["source"]["trial"] == inc["trial"]
    assert main(["export", str(run), "--out", str(tmp_path / "c.safetensors")]) == 0
    assert "exporting the evaluated winner" in capsys.readouterr().out

    # the report: the evaluation table shows the hyperparameters that differ (the full configuration folded away),
    # its figure, and which configuration export takes
    from nexsearch.analysis.report import analyze

    analyze(run, tmp_path / "an")
    text = (tmp_path / "an" / "report.html").read_text()
    table = text[text.index('id="evaluation"'):].split("</table>")[0]
    assert table.count("<details><summary>full configuration</summary>") == len(frame)
    assert f"★ {winner['source']}<" in table and table.count("★") == 1  # the winner marked, once
    assert "<th>validation error</th>" in table and "val_error_std" not in table  # mean ± std, one column each
    assert (run / "evaluation" / "evaluation.png").exists() and 'alt="evaluation: validation and test' in text
    assert "nexsearch export takes" in text and f"Exporting the evaluated winner {winner['source']}" in text


def test_another_epochs_is_a_separate_evaluation_beside_the_first(evaluated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated[0], run)
    n = len(lines(run))
    assert main(["evaluate", str(run), "--top", "1", "--seeds", "2", "--epochs", "2", "--presets", "none",
                 "--workers", "2"]) == 0
    new = lines(run)[n:]
    assert len(new) == 2 and {r["epochs"] for r in new} == {2}
    assert os.getpid() not in {r["pid"] for r in new}  # trained on the Dask workers
    evaluations = load_summary(run)["evaluations"]
    assert [e["epochs"] for e in evaluations] == [1, 2] and evaluations[0]["complete"]
    assert len(evaluations[1]["candidates"]) == 1
    assert set(load_run(run).evaluation["epochs"]) == {1, 2}


def test_bad_input_is_one_line_and_changes_nothing(evaluated, digits_run, tmp_path, capsys):
    run, _, _ = evaluated
    results = run / "evaluation" / RESULTS_FILE
    before = results.read_text()

    def refused(*args: str) -> str:
        assert main(["evaluate", *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("nexsearch: ")
        return err

    assert "--top and --seeds must be at least 1" in refused(str(run), "--top", "0")
    assert "--top and --seeds must be at least 1" in refused(str(run), "--seeds", "0")
    assert "unknown preset 'resnet'" in refused(str(run), "--presets", "xception,resnet")
    assert "is not a nexsearch run" in refused(str(tmp_path))
    assert not (tmp_path / "evaluation").exists()
    # the workers are checked as `run` checks them; a scheduler's security file is read before anything is written
    assert "--workers 4096 is more than this machine runs at once" in refused(str(run), "--workers", "4096",
                                                                               "--device", "cpu")
    assert "--scheduler-security" in refused(str(run), "--scheduler", "tls://127.0.0.1:1", "--scheduler-security",
                                             str(tmp_path / "missing.yaml"))
    assert results.read_text() == before

    # a run without a successful trial
    failed = tmp_path / "failed"
    shutil.copytree(digits_run, failed)
    rh_path = RunView(failed).history.folder / "runhistory.json"
    rh = json.loads(rh_path.read_text())
    for row in rh["data"]:
        row["status"] = 2
    rh_path.write_text(json.dumps(rh))
    assert "no successful trial" in refused(str(failed))
    assert not (failed / "evaluation").exists()

    # a torn last line: named, nothing rewritten
    torn = tmp_path / "torn"
    shutil.copytree(run, torn)
    path = torn / "evaluation" / RESULTS_FILE
    text = path.read_text() + '{"candidate": "abc", "se'
    path.write_text(text)
    assert f"line {len(text.splitlines())} of {len(text.splitlines())} is torn" in refused(
        str(torn), "--top", "2", "--seeds", "2", "--epochs", "1")
    assert path.read_text() == text

    # a second evaluate of the same run is refused while one holds the lock
    with open(run / "evaluation" / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert "being evaluated by another" in refused(str(run), "--top", "2", "--seeds", "2", "--epochs", "1")
    assert results.read_text() == before


def test_notebook_shows_the_evaluation(evaluated):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "experiments" / "analysis.ipynb", as_version=4)
    # the set-up cell and the evaluation cells (the whole notebook runs in test_analysis.py)
    keep = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and ("load_run(RUN_DIR)" in c.source
                                                                            or "run.evaluation" in c.source)]
    assert len(keep) == 2, "the notebook has no evaluation cell"
    nb.cells = [nb.cells[i] for i in keep]
    os.environ["NEXSEARCH_RUN"] = str(evaluated[0])
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(REPO / "experiments")}}).execute()
    finally:
        del os.environ["NEXSEARCH_RUN"]
    outputs = [o for o in nb.cells[1].get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    winner = load_summary(evaluated[0])["evaluations"][0]["winner"]["source"]
    assert "val_error_mean" in html and winner in html
    assert any("image/png" in o.get("data", {}) for o in outputs)



def test_an_evaluation_holds_the_test_split_on_the_training_device(monkeypatch):
    """A search's workers leave the test split on the CPU (test_objectives.py); an evaluation process trains
    with all three splits on its device. The meta device stands in for a GPU; the trainer is replaced by one
    that reports where the splits are."""
    import nexsearch.evaluate as evaluate
    import nexsearch.objectives.trainer as trainer

    from nexsearch.objectives.record import TrialRecord
    from nexsearch.objectives.settings import DataSpec, TrainSettings, TrialSpec
    from nexsearch.objectives.target import TrialContext

    def where(config, splits, settings, seed, budget, test):
        return TrialRecord("ok", "", config, seed, budget, measures={
            "with_test": test, **{name: getattr(splits, name).labels.device.type for name in ("train", "val", "test")}})

    context = TrialContext("evaluation-test", test=True)
    monkeypatch.setattr(evaluate, "_context", lambda: context)
    monkeypatch.setattr(trainer, "train_proxy", where)
    context.configure(TrialSpec(DataSpec("synthetic", synthetic_size=64, image_size=8), TrainSettings(device="meta")))
    record = evaluate.train_one({}, seed=0, epochs=1)
    assert {k: record[k] for k in ("with_test", "train", "val", "test")} == {
        "with_test": True, "train": "meta", "val": "meta", "test": "meta"}
