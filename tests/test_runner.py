import json
import os
import signal
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nexsearch.errors import UserError
from nexsearch.runners.budget import parse_budget
from nexsearch.runners.experiment import experiment_from_dict
from nexsearch.runners.status import run_status

CLI = [sys.executable, "-m", "nexsearch.cli"]
TINY_TRAIN = {"width": 0.125, "depth": 1, "batch_size": 32, "lr": 0.005, "throughput_batch": 16, "throughput_iters": 1}


def write_experiment(path: Path, **changes) -> Path:
    # 128 training images: 4 steps per epoch; a run that needs only some trials caps them with max_trials (and a
    # generous budget), so that it ends when they are done, however loaded the machine is
    exp = {"name": "test", "dataset": "synthetic", "image_size": 16, "train_subset": 128, "download": False, "data_dir": None,
           "min_epochs": 1, "max_epochs": 2, "initial_design": 3, "retrain_after": 2, "train": dict(TINY_TRAIN)}
    for key, value in changes.items():
        if key == "train":
            exp["train"].update(value)
        else:
            exp[key] = value
    path.write_text(yaml.safe_dump(exp))
    return path


def run_cli(*args, timeout=240):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def smac_trials(run_dir: Path):
    return json.loads((run_dir / "smac" / "0" / "runhistory.json").read_text())["data"]


@pytest.mark.parametrize("text, seconds", [("45s", 45), ("90m", 5400), ("12h", 43200), ("3d", 259200), ("1d12h", 129600),
                                           ("90min", 5400), ("1.5h", 5400), ("1h30m", 5400), ("1h 30min", 5400),
                                           ("2hours", 7200), ("0.5d", 43200), ("30sec", 30)])
def test_budgets(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["3x", "12h1d", "0s", "", "-5m", "1h1h", "30min1h", "1m1min", "5mn"])
def test_bad_budgets(text):
    with pytest.raises(UserError, match="budget"):
        parse_budget(text)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from nexsearch.cli import main

    cfg = write_experiment(tmp_path / "e.yaml")
    cases = [
        ["run", "--budget", "3x", "--config", str(cfg)],
        ["run", "--budget", "10s", "--config", str(tmp_path / "missing.yaml")],
        ["run", "--budget", "10s", "--config", str(cfg), "--optimizer", "annealing"],
        ["run", "--budget", "10s", "--config", str(cfg), "--objectives", "latency"],
        ["status", str(tmp_path / "nowhere")],
        ["status", str(tmp_path)],
    ]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nexsearch: "), (args, err)
    assert not any(tmp_path.glob("runs*"))  # nothing was written
    out = run_cli(*cases[0])  # and as a process: exit status 2, one line, no traceback
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_unknown_setting_in_experiment_file():
    with pytest.raises(UserError, match="unknown setting"):
        experiment_from_dict({"nmae": "typo"})
    with pytest.raises(UserError, match="unknown training setting"):
        experiment_from_dict({"train": {"learning_rate": 1}})


def test_trial_settings_have_one_source():
    """What a trial evaluates is declared once (TrialInputs) and flows into each trial's frozen TrialSpec (its data
    into the DataSpec, by name) as the experiment says; the trial's epochs, crash cost and device come from the
    experiment only."""
    import dataclasses
    from dataclasses import fields

    from nexsearch.objectives.settings import DataSpec, TrialInputs
    from nexsearch.runners.experiment import Experiment

    shared = {f.name for f in fields(TrialInputs)}
    data = shared & {f.name for f in fields(DataSpec)}
    assert shared <= {f.name for f in fields(Experiment)}
    assert shared - data == {"objectives", "train", "full_layout"}  # every other input is the data's
    exp = experiment_from_dict({"dataset": "synthetic", "image_size": 16, "val_fraction": 0.2, "max_epochs": 7,
                                "crash_cost": 0.9, "device": "cpu", "seed": 3, "objectives": "error,params",
                                "train": {"lr": 0.01}})
    spec = exp.trial_spec(None)
    assert {k: getattr(spec.data, k) for k in data} == {k: getattr(exp, k) for k in data} and spec.data.seed == 3
    assert (list(spec.objectives), spec.full_layout) == (exp.objectives, exp.full_layout)
    assert (spec.settings.lr, spec.settings.epochs, spec.settings.crash_cost, spec.settings.device) == (0.01, 7, 0.9,
                                                                                                        "cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.settings.lr = 1.0  # one-way: what the experiment built reaches the trial unchanged
    for key, owner in (("epochs", "max_epochs"), ("crash_cost", "crash_cost"), ("device", "device")):
        with pytest.raises(UserError, match=f"'train.{key}' comes from the experiment's '{owner}'"):
            experiment_from_dict({"train": {key: 1}})


def test_short_search_writes_a_valid_run(tmp_path):
    cfg = write_experiment(tmp_path / "e.yaml")
    out_dir = tmp_path / "run"
    out = run_cli("run", "--budget", "20s", "--config", str(cfg), "--out", str(out_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "incumbent" in out.stdout
    smac_dir = out_dir / "smac" / "0"
    for name in ("runhistory.json", "configspace.json", "scenario.json", "intensifier.json", "optimization.json"):
        assert (smac_dir / name).is_file(), name
    trials = smac_trials(out_dir)
    ok = [t for t in trials if t["status"] == 1]
    assert len(ok) >= 2
    lines = [json.loads(x) for x in (out_dir / "trials.jsonl").read_text().splitlines()]
    assert len([x for x in lines if x["status"] == "ok"]) == len(ok)
    assert all(x["curve"] and x["params"] and x["macs"] for x in lines if x["status"] == "ok")
    assert yaml.safe_load((out_dir / "experiment.yaml").read_text())["dataset"] == "synthetic"
    state = json.loads((out_dir / "nexsearch.json").read_text())
    assert state["status"] == "finished" and 15 <= state["used_s"] < 30
    info = run_status(out_dir)
    assert info["finished"] == len(ok) and info["incumbent"]["error"] == min(t["cost"] for t in ok)
    st = run_cli("status", str(out_dir))
    assert st.returncode == 0 and "no trial running" in st.stdout
    st = run_cli("status", str(out_dir), "--json")
    assert st.returncode == 0 and json.loads(st.stdout)["finished"] == len(ok)

    # The same command again: the budget is spent, nothing is overwritten.
    again = run_cli("run", "--budget", "15s", "--config", str(cfg), "--out", str(out_dir))
    assert again.returncode == 0 and "budget already spent" in again.stdout
    assert len(smac_trials(out_dir)) == len(trials)
    # A changed experiment is refused, naming the change.
    changed = run_cli("run", "--budget", "50s", "--config", str(cfg), "--out", str(out_dir), "--seed", "4")
    assert changed.returncode == 2 and "seed: 0 -> 4" in changed.stderr


def test_kill_9_then_resume_keeps_finished_trials(tmp_path):
    cfg = write_experiment(tmp_path / "e.yaml")
    out_dir = tmp_path / "run"
    args = [*CLI, "run", "--budget", "30s", "--config", str(cfg), "--out", str(out_dir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    rh = out_dir / "smac" / "0" / "runhistory.json"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if len(json.loads(rh.read_text())["data"]) >= 2:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(smac_trials(out_dir)) >= 2
    # As if the kill hit SMAC's in-place save: runhistory.json is left truncated. The runner's last
    # complete copy (taken before that save) stands in for it, for status and for the resume.
    full = rh.read_text()
    rh.write_text(full[: len(full) // 2])
    before = json.loads((rh.parent / ".nexsearch-backup" / "runhistory.json").read_text())["data"]
    assert len(before) >= 1
    info = run_status(out_dir)
    assert info["finished"] + info["failed"] >= len(before)
    used = json.loads((out_dir / "nexsearch.json").read_text())["used_s"]
    assert used > 0
    out = run_cli("run", "--budget", "30s", "--config", str(cfg), "--out", str(out_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stdout
    after = smac_trials(out_dir)
    key = lambda t: (t["config_id"], t["seed"], t["budget"])  # noqa: E731
    assert {key(t) for t in before} <= {key(t) for t in after}
    assert len(after) > len(before)
    state = json.loads((out_dir / "nexsearch.json").read_text())
    assert len(state["sessions"]) == 2 and state["used_s"] >= 30


def test_always_crashing_configuration_does_not_stop_the_run(tmp_path):
    cfg = write_experiment(tmp_path / "e.yaml", max_epochs=1, train={"lr": 1e30}, max_trials=4)
    out_dir = tmp_path / "run"
    out = run_cli("run", "--budget", "2m", "--config", str(cfg), "--out", str(out_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    trials = [t for t in smac_trials(out_dir) if t["status"] != 0]  # not the one cut by the budget's end
    assert len(trials) >= 3 and all(t["status"] == 2 for t in trials)  # CRASHED, first trial included
    assert all(t["cost"] == 1.0 for t in trials)
    assert "diverged" in trials[0]["additional_info"]["error"]
    lines = [json.loads(x) for x in (out_dir / "trials.jsonl").read_text().splitlines()]
    assert lines[0]["status"] == "diverged" and "non-finite" in lines[0]["reason"]
    assert "no successful trial" in out.stdout


def test_two_local_dask_workers(tmp_path):
    cfg = write_experiment(tmp_path / "e.yaml", max_epochs=2, max_trials=6)
    out_dir = tmp_path / "run"
    out = run_cli("run", "--budget", "2m", "--config", str(cfg), "--out", str(out_dir), "--workers", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    trials = [t for t in smac_trials(out_dir) if t["status"] == 1]
    assert len(trials) >= 2
    spans = sorted((t["starttime"], t["endtime"]) for t in trials)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two trials ran at the same time"
    pids = {json.loads(x)["pid"] for x in (out_dir / "trials.jsonl").read_text().splitlines() if '"pid"' in x}
    assert len(pids) == 2
    # the live view numbers a trial as `nexsearch status`, the analysis and `export --trial` do (its place in
    # SMAC's runhistory), not by the order in which the two workers' results came back
    from nexsearch.results import error_of, status_name

    live = re.findall(r"^trial (\d+): (\w+)(?: budget \S+)? error (\S+) ", out.stdout, re.M)
    history = smac_trials(out_dir)
    assert len(live) == len({n for n, _, _ in live}) >= 2
    assert [(status_name(history[int(n) - 1]["status"]), f"{error_of(history[int(n) - 1]['cost']):.4f}")
            for n, _, _ in live] == [(status, error) for _, status, error in live]


def test_join_an_existing_dask_scheduler(tmp_path):
    from distributed import Client, LocalCluster

    cfg = write_experiment(tmp_path / "e.yaml", max_epochs=1, max_trials=2)
    out_dir = tmp_path / "run"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        out = run_cli("run", "--budget", "2m", "--config", str(cfg), "--out", str(out_dir),
                      "--scheduler", cluster.scheduler_address)
        assert out.returncode == 0, out.stderr[-3000:]
        assert client.run(os.getpid) and len(client.scheduler_info()["workers"]) == 1  # the cluster is left running
    assert [t for t in smac_trials(out_dir) if t["status"] == 1]
    pids = {json.loads(x)["pid"] for x in (out_dir / "trials.jsonl").read_text().splitlines()}
    assert pids == worker_pids  # every trial trained on the cluster's worker, none in the nexsearch process


def test_hyperband_and_multi_objective(tmp_path):
    # (random search through run_search: the random_run fixture, read by the status, analysis and live-view tests)
    for optimizer, extra in (("hyperband", []), ("parego", ["--objectives", "error,params"])):
        # hyperband: trials of 1 epoch first, then the best of them for 3 epochs
        cfg = write_experiment(tmp_path / f"{optimizer}.yaml", min_epochs=1, max_epochs=3 if optimizer == "hyperband" else 1,
                               max_trials=4 if optimizer == "hyperband" else 2)
        out_dir = tmp_path / optimizer
        out = run_cli("run", "--budget", "2m", "--config", str(cfg), "--out", str(out_dir), "--optimizer", optimizer, *extra)
        assert out.returncode == 0, (optimizer, out.stderr[-3000:])
        trials = [t for t in smac_trials(out_dir) if t["status"] == 1]
        assert trials, optimizer
        if optimizer == "hyperband":
            assert {t["budget"] for t in trials} == {1.0, 3.0} and trials[0]["budget"] == 1.0
        if optimizer == "parego":
            assert all(len(t["cost"]) == 2 for t in trials)
            assert "Pareto front" in out.stdout and run_status(out_dir)["pareto_front"]


def _die(config, seed: int = 0):
    os._exit(3)  # a worker process that dies in the middle of a trial (segfault, OOM killer, ...)


def test_dead_worker_is_a_crashed_trial_and_is_replaced(tmp_path):
    import cloudpickle
    from smac import Scenario
    from smac.runhistory import StatusType, TrialInfo
    from smac.runner import TargetFunctionRunner

    from nexsearch.runners.cluster import make_client
    from nexsearch.runners.workers import RobustDaskRunner
    from nexsearch.search_space.space import SPACE

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client, cluster = make_client(1, None, str(tmp_path / "dask"))
    try:
        scenario = Scenario(SPACE, output_directory=tmp_path / "smac", crash_cost=1.0, deterministic=True)
        lost = []
        runner = RobustDaskRunner(
            single_worker=TargetFunctionRunner(scenario, _die, required_arguments=["seed"]), dask_client=client,
            on_lost_trial=lambda info, reason, start: lost.append(reason),
        )
        info = TrialInfo(config=SPACE.get_default_configuration(), seed=0)
        runner.submit_trial(info)
        runner.wait()
        results = list(runner.iter_results())
        assert len(results) == 1 and results[0][0] is info
        value = results[0][1]
        assert value.status == StatusType.CRASHED and value.cost == 1.0
        assert "worker process died" in value.additional_info["error"] and lost
        assert not runner.is_running()
        client.wait_for_workers(1, timeout=60)  # the nanny started a replacement
        assert runner.count_available_workers() == 1
    finally:
        client.close()
        cluster.close()


def test_batched_selector_picks_what_smac_picks():
    import numpy as np
    from smac import HyperparameterOptimizationFacade, Scenario
    from smac.main.config_selector import ConfigSelector

    from nexsearch.runners.selector import BatchedConfigSelector
    from nexsearch.search_space.space import build_space

    space = build_space(seed=0)
    scenario = Scenario(space, deterministic=True, crash_cost=1.0)
    model = HyperparameterOptimizationFacade.get_model(scenario)
    X = np.array([c.get_array() for c in space.sample_configuration(60)])
    y = np.random.default_rng(0).random((60, 1))
    model.train(X, y)
    ours, theirs = BatchedConfigSelector(scenario), ConfigSelector(scenario)
    ours._model = theirs._model = model
    x_ours, v_ours = ours._get_x_best(X)
    x_theirs, v_theirs = theirs._get_x_best(X)
    np.testing.assert_array_equal(x_ours, x_theirs)
    assert v_ours == pytest.approx(v_theirs)


def test_progress_view_counts_once_when_smac_reenters_optimize():
    import io
    from types import SimpleNamespace

    from rich.console import Console
    from smac.runhistory import StatusType, TrialKey

    from nexsearch.runners.progress import ProgressView

    values = [SimpleNamespace(status=StatusType.CRASHED, cost=1.0), SimpleNamespace(status=StatusType.SUCCESS, cost=0.3)]
    smbo = SimpleNamespace(runhistory={TrialKey(config_id=i + 1): v for i, v in enumerate(values)})
    view = ProgressView(Console(file=io.StringIO(), force_terminal=True), 60.0, 0.0, running=lambda: 0,
                        should_stop=lambda: False, objectives=["error"])
    view.on_start(smbo)
    live = view.live
    view.on_start(smbo)  # the runner re-enters optimize() after FirstRunCrashedException
    assert (view.finished, view.failed, view._best()) == (1, 1, "0.3000 (trial 2)") and view.live is live is not None
    view.on_end(smbo)
    assert view.live is None


@pytest.mark.parametrize("selector", ["batched", "smac"])
def test_bench_smac_cli(selector):
    out = run_cli("bench", "smac", "--trials", "30", "--retrain-after", "4", "--selector", selector, "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["n_trials"] == 30 and r["selector"] == selector and r["smac_s"] > 0
    assert r["overhead_frac"] == pytest.approx(r["smac_s"] / (r["smac_s"] + 30 * 10.0), abs=1e-4)
    assert 0.32 <= r["best_fake_error"] < 0.48  # the fake error of Xception (the default) is 0.48, its minimum 0.32
