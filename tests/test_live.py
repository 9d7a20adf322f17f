"""The live view of a run: progress files written per epoch, the view redrawn from them, status reading them."""

import io
import json
import os
import shutil
import time
from types import SimpleNamespace

import pytest
from rich.console import Console

from nexsearch.rundir import RunDir
from nexsearch.running import TrialProgress, config_digest, row_warnings, running_rows, trial_key

CONFIG = {"block": "xception", "kernel_size": 3}


def test_trainer_streams_each_epoch_into_the_progress_file(tmp_path):
    from nexsearch.objectives.datasets import load_dataset
    from nexsearch.objectives.settings import DataSpec
    from nexsearch.objectives.settings import TrainSettings
    from nexsearch.objectives.trainer import train_proxy
    from nexsearch.search_space.presets import preset

    splits = load_dataset(DataSpec("synthetic", synthetic_size=256, synthetic_classes=4, image_size=16, seed=0))
    rd = RunDir(tmp_path)
    config = dict(preset("nexception"))
    progress = TrialProgress(rd, config, seed=1, budget=3.0, epochs=3)
    start = json.loads(rd.progress_file().read_text())
    seen = []

    def on_epoch(row):
        progress.epoch(row)
        seen.append(json.loads(rd.progress_file().read_text()))  # what status / the live view read now

    settings = TrainSettings(width=0.125, batch_size=64, throughput_batch=32, throughput_iters=1)
    record = train_proxy(config, splits, settings, seed=1, budget=3.0, on_epoch=on_epoch)
    progress.close()
    assert start["epoch"] == 0 and start["epochs"] == 3 and start["digest"] == config_digest(config)
    assert [s["epoch"] for s in seen] == [1, 2, 3]
    assert [s["val_error"] for s in seen] == [row["val_error"] for row in record["curve"]]
    assert not rd.progress_file().exists() and rd.read_progress() == []


def _view(tmp_path, console, **kw):
    from nexsearch.runners.progress import ProgressView

    view = ProgressView(console, 600.0, 0.0, running=lambda: 0, should_stop=lambda: False, objectives=["error"],
                        run_dir=RunDir(tmp_path), **kw)
    view.numbers[trial_key(CONFIG, 9.0, 0)] = 7
    return view


def test_live_view_moves_between_two_moments_of_one_trial(tmp_path):
    console = Console(record=True, width=120, force_terminal=True, file=io.StringIO())
    view = _view(tmp_path, console)
    progress = TrialProgress(RunDir(tmp_path), CONFIG, seed=0, budget=9.0, epochs=9)
    progress.epoch({"epoch": 1, "val_error": 0.5, "train_s": 1.0})
    view.started = time.time() - 20
    console.print(view._render())
    first = console.export_text()
    progress.epoch({"epoch": 2, "val_error": 0.375, "train_s": 1.0})
    view.started = time.time() - 25
    console.print(view._render())
    second = console.export_text()
    digest = config_digest(CONFIG)
    assert f"trial 7 [{digest}] epoch 1/9  val error 0.5000" in first
    assert f"trial 7 [{digest}] epoch 2/9  val error 0.3750" in second and "epoch 1/9" not in second
    assert "20s of 10m00s" in first and "25s of 10m00s" in second  # the clock moves with nothing told to SMAC
    progress.close()
    console.print(view._render())
    assert "epoch" not in console.export_text()


def test_logs_get_epoch_lines_at_most_every_n_seconds(tmp_path):
    out = io.StringIO()
    view = _view(tmp_path, Console(file=out, width=200), epoch_line_s=0.0)
    view.on_start(SimpleNamespace(runhistory={}))
    progress = TrialProgress(RunDir(tmp_path), CONFIG, seed=0, budget=9.0, epochs=9)
    progress.epoch({"epoch": 1, "val_error": 0.25, "train_s": 1.0})
    deadline = time.time() + 10
    while "epoch 1/9" not in out.getvalue() and time.time() < deadline:
        time.sleep(0.2)
    view.on_end(None)
    progress.close()
    assert f"trial 7 [{config_digest(CONFIG)}] epoch 1/9  val error 0.2500" in out.getvalue()
    assert out.getvalue().count("epoch 1/9") == 1  # once per epoch, not once per second


def test_warnings_for_a_slow_epoch_and_a_trial_the_budget_will_cut():
    now = time.time()
    progress = [{"config": CONFIG, "digest": "abc123", "seed": 0, "budget": 9.0, "epochs": 9, "epoch": 2,
                 "val_error": 0.3, "started": now - 60, "epoch_end": [now - 40, now - 20], "epoch_s": [5, 5]}]
    (row,) = running_rows(progress, {trial_key(CONFIG, 9.0, 0): 4}.get, now)
    assert row["trial"] == 4 and row["in_epoch_s"] == pytest.approx(20, abs=1) and row["per_epoch_s"] == 20
    slow, cut = row_warnings(row, median_s=5.0, left_s=30.0)
    assert slow.startswith("trial 4: epoch 3 has taken 20s") and "median epoch: 5.0s" in slow
    assert cut.startswith("trial 4: the budget's end will cut it")
    assert row_warnings(row, median_s=20.0, left_s=1e6) == []


def test_status_shows_running_trials_and_counts_idle_time_only_without_one(random_run, tmp_path):
    from nexsearch.runners.status import print_status, run_status

    run = tmp_path / "run"
    shutil.copytree(random_run, run)
    rd = RunDir(run)
    state = rd.read_state()
    now = time.time()
    state.update(status="running", pid=os.getpid(), updated_at=now, used_s=100.0, budget_s=200.0,
                 sessions=[{"started_at": now - 100, "ended_at": now}])
    rd.state.write_text(json.dumps(state))
    progress = TrialProgress(rd, CONFIG, seed=0, budget=2.0, epochs=2)
    progress.data["started"] = now - 100  # one trial has run for the whole session
    progress.epoch({"epoch": 1, "val_error": 0.125, "train_s": 50.0})
    info = run_status(run)
    assert info["running_trials"][0]["epoch"] == 1 and info["running_trials"][0]["val_error"] == 0.125
    assert info["overhead_s"] < 2.0  # a trial ran all along: no idle time (it was `used - finished trials`)
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_status(run)
    assert f"running: trial ? [{config_digest(CONFIG)}] epoch 1/2  val error 0.1250" in buf.getvalue()
    progress.close()
