"""Run integrity (issue 10): no history wiped, no configuration condemned by accident, mistakes refused
before a run starts. One group of tests per defect; small data, tiny proxies, budgets of seconds."""

import errno
import io
import json
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from nexsearch.cli import main
from nexsearch.errors import UserError
from nexsearch.objectives import target
from nexsearch.runners.experiment import experiment_from_dict
from nexsearch.runners.search import run_search
from nexsearch.rundir import BACKUP_DIR, RunDir, append_jsonl
from nexsearch.runners.smac_state import backup_smac_state, repair_smac_state
from nexsearch.runners.status import run_status
from nexsearch.search_space.space import SPACE

TINY = {"name": "integrity", "dataset": "synthetic", "image_size": 16, "train_subset": 64, "download": False,
        "data_dir": None, "min_epochs": 1, "max_epochs": 1, "initial_design": 3, "retrain_after": 2,
        "train": {"width": 0.125, "batch_size": 32, "lr": 0.005, "throughput_batch": 8, "throughput_iters": 1}}


def tiny(out: Path, **changes):
    data = json.loads(json.dumps(TINY))
    data.update(changes, output_dir=str(out))
    return experiment_from_dict(data)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def rh_path(run_dir: Path) -> Path:
    return run_dir / "smac" / "0" / "runhistory.json"


def entries(run_dir: Path) -> list[dict]:
    return json.loads(rh_path(run_dir).read_text())["data"]


CUT: set[int] = set()  # calls of the fake target that are cut


@pytest.fixture
def fake_trials(monkeypatch):
    """SMAC's target without training: a deterministic error per configuration, a few ms per trial."""
    calls = []

    def evaluate(config, seed=0, budget=None):
        calls.append(dict(config))
        time.sleep(0.02)
        if len(calls) in CUT:  # never told to SMAC: what a kill -9 or the budget's end leaves behind
            raise target.TrialCut({"status": "cut", "reason": "cut in a test"})
        return 0.1 + len(json.dumps(dict(config), sort_keys=True, default=str)) % 97 / 1000, {"status": "ok"}

    monkeypatch.setattr(target, "evaluate_trial", evaluate)
    return calls


def one_line_exit(args, code, capsys):
    assert main(args) == code, args
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nexsearch: "), (args, err)
    return err[0]


# 1. A deleted or unreadable SMAC state file ---------------------------------------------------------------------

def fake_run(run: Path, seconds: float = 3.0, trials: int = 4) -> Path:
    """A run with the fake target (use with ``fake_trials``) of at least ``trials`` finished trials: sessions of a
    few seconds until there are (SMAC's own start-up takes seconds on a loaded machine)."""
    for _ in range(10):
        used = json.loads((run / "nexsearch.json").read_text())["used_s"] if run.exists() else 0.0
        run_search(tiny(run), used + seconds, console=quiet())
        if len([t for t in entries(run) if t["status"] == 1]) >= trials:
            return run
    raise AssertionError("the fake run did not finish enough trials")


def test_deleted_runhistory_is_restored_from_the_backup_never_wiped(tmp_path, capsys, fake_trials):
    run = fake_run(tmp_path / "run")
    backup = rh_path(run).parent / BACKUP_DIR / "runhistory.json"
    kept = json.loads(backup.read_text())["data"]
    assert kept
    rh_path(run).unlink()
    # status and export read the backup and say so; the directory is still a run
    info = run_status(run)
    assert info["finished"] + info["failed"] == len([t for t in kept if t["status"] != 0])
    assert any("missing" in n and BACKUP_DIR in n for n in info["notes"])
    assert main(["status", str(run)]) == 0
    assert "read its last complete copy" in capsys.readouterr().err
    # a state older than the backup never replaces it
    before = backup.read_bytes()
    assert backup_smac_state(rh_path(run).parent, finished=1) is False and backup.read_bytes() == before
    # the resume restores it, says so, and keeps every finished trial
    console = Console(file=io.StringIO(), width=300)
    exp = experiment_from_dict(dict(yaml.safe_load((run / "experiment.yaml").read_text()), output_dir=str(run)))
    used = json.loads((run / "nexsearch.json").read_text())["used_s"]
    run_search(exp, used + 2.0, console=console)
    assert "restored runhistory.json (missing)" in console.file.getvalue()
    after = entries(run)
    key = lambda t: (t["config_id"], t["seed"], t["budget"])  # noqa: E731
    assert {key(t) for t in kept if t["status"] != 0} <= {key(t) for t in after if t["status"] != 0}
    assert json.loads(backup.read_text())["stats"]["finished"] >= len([t for t in kept if t["status"] != 0])


def test_missing_state_without_backup_is_refused(tmp_path):
    smac = tmp_path / "smac" / "0"
    smac.mkdir(parents=True)
    (smac / "intensifier.json").write_text("{}")
    (smac / "optimization.json").write_text("{}")
    with pytest.raises(UserError, match="runhistory.json is missing and there is no complete copy"):
        repair_smac_state(smac, has_history=True)
    assert repair_smac_state(smac, has_history=False) == []  # nothing recorded yet: SMAC may start afresh
    assert not (smac / "intensifier.json").exists()


def test_truncated_runhistory_read_from_backup_says_so(tmp_path, fake_trials):
    run = fake_run(tmp_path / "run")
    text = rh_path(run).read_text()
    rh_path(run).write_text(text[: len(text) // 3])
    info = run_status(run)
    assert any("truncated" in n for n in info["notes"]) and info["finished"] >= 1


# 2. Trials cut by the end of the budget ---------------------------------------------------------------------------

def test_cut_trial_is_not_told_to_smac_and_runs_again_when_extended(tmp_path):
    out = tmp_path / "run"
    exp = tiny(out, max_trials=2)  # the default configuration (Xception) is the first trial
    run_search(exp, 0.01, console=quiet())  # the budget ends before Xception can start
    log = [json.loads(x) for x in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["status"] for r in log] == ["cut"] and "budget ended" in log[0]["reason"]
    assert all(t["status"] == 0 for t in entries(out))  # no cost for SMAC: not CRASHED, not 1.0
    run_search(exp, 300.0, console=quiet())  # extended (max_trials ends it early): Xception is evaluated after all
    rh = json.loads(rh_path(out).read_text())
    xception = dict(SPACE.get_default_configuration())
    ids = [int(i) for i, c in rh["configs"].items() if c == xception]
    runs = [t for t in rh["data"] if t["config_id"] in ids]
    assert len(runs) == 1 and runs[0]["status"] == 1 and runs[0]["cost"] < 1.0
    assert [json.loads(x)["status"] for x in (out / "trials.jsonl").read_text().splitlines()][:2] == ["cut", "ok"]


def test_trial_stopped_by_the_deadline_is_cut(tmp_path, monkeypatch):
    from smac import Scenario
    from smac.runhistory import TrialInfo

    from smac.runner import TargetFunctionRunner

    from nexsearch.runners.facade import SerialRunnerMixin as _SerialRunner

    exp = tiny(tmp_path)
    target.SEARCH.configure(exp.trial_spec(None))
    target.SEARCH.loaded()  # the data first; then a deadline that ends during the trial
    target.SEARCH.configure(exp.trial_spec(RunDir(tmp_path), deadline=time.time() + 1.0))

    class Runner(_SerialRunner, TargetFunctionRunner):
        pass

    scenario = Scenario(SPACE, output_directory=tmp_path / "smac", crash_cost=1.0, deterministic=True)
    runner = Runner(scenario, target.target_function, required_arguments=["seed"])
    monkeypatch.setattr("nexsearch.objectives.trainer.budget_to_epochs", lambda budget, default: 50)
    runner.submit_trial(TrialInfo(config=SPACE.get_default_configuration(), seed=0))
    assert list(runner.iter_results()) == []  # nothing reaches SMAC
    record = json.loads((tmp_path / "trials.jsonl").read_text())
    assert record["status"] == "cut" and "ended during this trial" in record["reason"]


# 3. RUNNING entries left by a kill --------------------------------------------------------------------------------

def test_running_trials_left_by_a_kill_are_evaluated_again_and_counted_alike(tmp_path, fake_trials, monkeypatch):
    from nexsearch.analysis import load_run

    out = fake_run(tmp_path / "run", trials=2)
    for _ in range(10):  # the next two trials are in flight and never told: as after a kill -9
        monkeypatch.setattr(sys.modules[__name__], "CUT", {len(fake_trials) + 1, len(fake_trials) + 2})
        used = json.loads((out / "nexsearch.json").read_text())["used_s"]
        run_search(tiny(out), used + 4.0, console=quiet())
        rh = json.loads(rh_path(out).read_text())
        left = [t for t in rh["data"] if t["status"] == 0]
        if len(left) == 2:
            break
    assert len(left) == 2
    monkeypatch.setattr(sys.modules[__name__], "CUT", set())
    # every view counts them apart, neither finished nor failed
    info = run_status(out)
    done = len([t for t in rh["data"] if t["status"] != 0])
    assert info["interrupted"] == 2 and info["finished"] + info["failed"] == done
    run = load_run(out)
    assert len(run.trials) == done and run.unfinished == 2
    assert "trials interrupted" in _status_table(out)
    # the resume evaluates them first, through SMAC's own loop
    fake_trials.clear()
    console = Console(file=io.StringIO(), width=300)
    used = json.loads((out / "nexsearch.json").read_text())["used_s"]
    run_search(tiny(out), used + 10.0, console=console)
    assert "2 trial(s) interrupted when the last session ended are evaluated again first" in console.file.getvalue()
    assert fake_trials[:2] == [rh["configs"][str(t["config_id"])] for t in left]
    after = {(t["config_id"], t["seed"]): t["status"] for t in entries(out)}
    assert all(after[(t["config_id"], t["seed"])] == 1 for t in left)
    assert run_status(out)["interrupted"] == 0


def _status_table(run: Path) -> str:
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["status", str(run)]) == 0
    return buf.getvalue()


# 4. Mistakes refused before the run starts ------------------------------------------------------------------------

@pytest.mark.parametrize("change, words", [
    ({"dataset": "mnist"}, "setting 'dataset' must be one of cifar100"),
    ({"val_fraction": 2}, "setting 'val_fraction' must be a number between 0 and 1"),
    ({"train": {"batch_size": 0}}, "setting 'train.batch_size' must be at least 2"),
    ({"train": {"lr": -1}}, "setting 'train.lr' must be a number greater than 0"),
    ({"max_epochs": "ten"}, "setting 'max_epochs' must be an integer, got 'ten' (str)"),
    ({"train": {"width": [1]}}, "setting 'train.width' must be a number, got [1] (list)"),
    ({"seed": True}, "setting 'seed' must be an integer"),
])
def test_fields_are_checked_by_type_and_range(change, words):
    data = json.loads(json.dumps(TINY))
    for k, v in change.items():
        data[k] = dict(data[k], **v) if k == "train" else v
    with pytest.raises(UserError) as err:
        experiment_from_dict(data)
    assert words in str(err.value)


def test_bad_data_or_device_is_refused_before_any_file(tmp_path, capsys, monkeypatch):
    import torch

    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = tmp_path / "no_images"
    (no_images / "cat").mkdir(parents=True)
    (no_images / "cat" / "notes.txt").write_text("not an image")
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "name"}))
    out = tmp_path / "run"
    cases = [
        (["--dataset", "cifar100", "--data-dir", str(tmp_path / "nodata"), "--no-download"], "CIFAR-100 not found"),
        (["--dataset", "folder", "--data-dir", str(empty)], "not an ImageFolder tree"),
        (["--dataset", "folder", "--data-dir", str(no_images)], "not an ImageFolder tree"),
    ]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases.append((["--device", "cuda"], "CUDA is not available"))
    for extra, words in cases:
        line = one_line_exit(["run", "--budget", "10s", "--config", str(cfg), "--out", str(out), *extra], 2, capsys)
        assert words in line, line
        assert not out.exists()


def test_existing_run_is_untouched_by_a_refused_resume(tmp_path, capsys, monkeypatch, fake_trials):
    import torch

    run = fake_run(tmp_path / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "e.yaml"
    cfg.write_text((run / "experiment.yaml").read_text())
    line = one_line_exit(["run", "--budget", "1h", "--config", str(cfg), "--out", str(run), "--device", "cuda"], 2,
                         capsys)
    assert "CUDA" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# 5. One line instead of a traceback -------------------------------------------------------------------------------

def test_bad_paths_and_files_are_one_line(tmp_path, capsys):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    binary = tmp_path / "b.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n# nothing here\n")
    run = ["run", "--budget", "10s"]
    for args, words in [
        ([*run, "--config", str(cfg), "--out", str(a_file)], "is a file"),
        ([*run, "--config", str(cfg), "--out", str(a_file / "run")], "cannot create the run directory"),
        ([*run, "--config", str(cfg), "--out", "/proc/nexsearch-test/run"], "cannot create the run directory"),
        ([*run, "--config", str(binary)], "not a text file"),
        ([*run, "--config", str(empty)], "is empty"),
        (["run", "--budget", "-5m", "--config", str(cfg)], "a budget must be positive"),
        (["export", "--preset", "nexception", "--size", "t", "--out", "/proc/x.safetensors"], "cannot write"),
    ]:
        assert words in one_line_exit(args, 2, capsys), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.yaml", "e.yaml", "empty.yaml", "file"]


def test_full_disk_stops_the_run_cleanly(tmp_path, capsys, monkeypatch, fake_trials):
    from smac.main.smbo import SMBO

    cfg = tmp_path / "e.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    real_save, real_write_text, saves = SMBO.save, Path.write_text, []

    def full() -> OSError:
        return OSError(errno.ENOSPC, "No space left on device")

    def save(self):  # SMAC's save after a trial: after a few trials the disk is full
        saves.append(1)
        if len(saves) > 3:
            raise full()
        real_save(self)

    def write_text(self, data, *args, **kwargs):  # our temporary files: half written, then the disk is full
        if len(saves) > 3 and self.name.endswith(".tmp"):
            real_write_text(self, data[:10], *args, **kwargs)
            raise full()
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(SMBO, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)
    line = one_line_exit(["run", "--budget", "30s", "--config", str(cfg), "--out", str(out)], 1, capsys)
    assert "No space left on device" in line and "resume" in line
    assert json.loads((out / "nexsearch.json").read_text())["status"] == "stopped"
    assert not list(out.rglob("*.tmp"))


# 6. A torn last line of trials.jsonl ------------------------------------------------------------------------------

def test_torn_last_line_is_cut_away_on_resume(tmp_path, fake_trials, monkeypatch):
    out = tmp_path / "run"
    exp = tiny(out)
    run_search(exp, 2.0, console=quiet())
    log = out / "trials.jsonl"
    good = '{"status": "ok", "cost": 0.5, "curve": []}\n'
    log.write_text(good + '{"status": "ok", "cost": 0.4, "cur')  # a kill in the middle of an append
    used = json.loads((out / "nexsearch.json").read_text())["used_s"]
    monkeypatch_evaluate = target.evaluate_trial

    def logged(config, seed=0, budget=None):  # trials that append to the log, as real ones do
        append_jsonl(log, {"status": "ok", "config": dict(config)})
        return monkeypatch_evaluate(config, seed, budget)

    monkeypatch.setattr(target, "evaluate_trial", logged)
    run_search(exp, used + 2.0, console=quiet())
    lines = log.read_text().splitlines()
    assert lines[0] == good.strip() and len(lines) >= 2
    assert all(json.loads(x) for x in lines)  # every line parses: nothing glued to the torn one
    assert (out / "trials.jsonl.torn").read_text() == '{"status": "ok", "cost": 0.4, "cur\n'


# 7. Budget lost per kill ------------------------------------------------------------------------------------------

@pytest.mark.serial
def test_budget_counts_from_process_start_and_heartbeat_lags_under_2s(tmp_path, fake_trials):
    from nexsearch.rundir import HEARTBEAT_S, RunDir

    assert HEARTBEAT_S <= 1.0
    out = tmp_path / "run"
    exp = tiny(out)
    run_search(exp, 2.0, console=quiet())
    used = json.loads((out / "nexsearch.json").read_text())["used_s"]
    # a resume whose process started 5 s before the search: those 5 s count
    t0 = time.time()
    run_search(exp, used + 6.0, console=quiet(), started_at=t0 - 5.0)
    state = json.loads((out / "nexsearch.json").read_text())
    assert state["used_s"] >= used + 5.0 + (state["sessions"][-1]["ended_at"] - t0) - 0.5
    # while a run is alive, its state file lags the truth by at most a heartbeat: what a kill -9 loses
    rs = RunDir(out).heartbeat(100.0, 0.0, started_at=time.time())
    rs.start()
    time.sleep(2.6)
    lag = rs.used() - json.loads((out / "nexsearch.json").read_text())["used_s"]
    rs.stop("stopped")
    assert 0 <= lag < 1.5


@pytest.mark.serial
@pytest.mark.parametrize("resumed", [True, False], ids=["resumed", "new"])
def test_run_beats_before_torch_timm_and_smac_are_imported(tmp_path, fake_trials, resumed):
    """A kill while ``nexsearch run`` starts up loses at most a heartbeat: the session's first heartbeat -- of a
    resumed run, and of a new one, whose directory is made before the checks -- is written before torch, timm or
    SMAC is imported (they take seconds, CUDA's start-up more), and it counts from the process start. A new run
    killed there resumes, and takes changed settings, since it has no trial yet."""
    import subprocess

    out = tmp_path / "run"
    if resumed:
        run_search(tiny(out), 2.0, console=quiet())
    before = json.loads((out / "nexsearch.json").read_text()) if resumed else {"sessions": [], "used_s": 0.0}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(TINY))
    # the first beat of the session, then an exit as sudden as a kill -9
    code = (
        "import os, sys\n"
        "from nexsearch import rundir\n"
        "start = rundir.Heartbeat.start\n"
        "def first_beat(self):\n"
        "    start(self)\n"
        "    print('heavy:', ','.join(m for m in ('torch', 'timm', 'smac') if m in sys.modules), flush=True)\n"
        "    os._exit(0)\n"
        "rundir.Heartbeat.start = first_beat\n"
        "from nexsearch.cli import main\n"
        f"main(['run', '--config', {str(config)!r}, '--budget', '1h', '--out', {str(out)!r}])\n"
    )
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "heavy:", proc.stdout  # nothing heavy was imported before the first beat
    after = json.loads((out / "nexsearch.json").read_text())
    session = after["sessions"][-1]
    assert len(after["sessions"]) == len(before["sessions"]) + 1
    assert launched - 1.0 <= session["started_at"] <= launched + 0.5  # counted from the process start
    assert after["used_s"] >= before["used_s"] + (session["ended_at"] - session["started_at"]) - 0.01
    if not resumed:  # killed before its first trial: the run resumes with changed settings, its clock kept
        run_search(tiny(out, max_epochs=2), after["used_s"] + 2.0, console=quiet())
        state = json.loads((out / "nexsearch.json").read_text())
        assert len(state["sessions"]) == 2 and state["used_s"] >= after["used_s"] + 1.5
        assert yaml.safe_load((out / "experiment.yaml").read_text())["max_epochs"] == 2


def test_smac_prompt_on_a_changed_scenario_is_an_error_and_the_patch_is_scoped(tmp_path):
    """SMAC asks on stdin when the run directory holds another scenario: nexsearch answers with a one-line error,
    and only while it builds the facade (no global patch outlives that)."""
    import smac.main.smbo
    from smac.runner import TargetFunctionRunner

    from nexsearch.bench.smac import fake_target
    from nexsearch.runners.experiment import Experiment
    from nexsearch.runners.facade import build_smac as _build_smac

    def build(crash_cost):
        exp = Experiment(name="prompt", dataset="synthetic", max_trials=2, initial_design=1, crash_cost=crash_cost)
        return _build_smac(exp, tmp_path, lambda scenario, required: TargetFunctionRunner(
            scenario, fake_target, required_arguments=["seed"]), [])

    build(1.0).optimize()
    assert not hasattr(smac.main.smbo, "input")
    with pytest.raises(UserError, match="different scenario"):
        build(0.5)
    assert not hasattr(smac.main.smbo, "input")
