"""nexsearch/results.py: one trial number, status name, error, incumbent and Pareto front for every reader."""

import io
import json
import re
from types import SimpleNamespace

import pytest

from nexsearch.results import (
    STATUS_NAMES, at_top_budget, error_of, incumbent, non_dominated, pareto_front, status_name, trial_number,
)


def test_status_names_are_smacs_status_type():
    from smac.runhistory import StatusType

    assert STATUS_NAMES == {int(m): m.name.lower() for m in StatusType}
    assert [status_name(m) for m in StatusType] == [m.name.lower() for m in StatusType]
    assert status_name(7) == "7"  # a code this SMAC does not know stays readable


def test_error_incumbent_and_front_on_plain_trials():
    assert error_of(0.25) == 0.25 and error_of([0.25, 3.0]) == 0.25 and error_of((0.5, 1.0)) == 0.5
    trials = [{"trial": 1, "budget": 3.0, "cost": 0.1}, {"trial": 2, "budget": 9.0, "cost": 0.3},
              {"trial": 3, "budget": 9.0, "cost": 0.2}, {"trial": 4, "budget": 9.0, "cost": 0.2}]
    assert [t["trial"] for t in at_top_budget(trials)] == [2, 3, 4]
    assert incumbent(trials)["trial"] == 3  # the lower budget's 0.1 is not comparable; a tie goes to the earlier trial
    assert incumbent([{"trial": 1, "budget": None, "cost": 0.4}, {"trial": 2, "budget": float("nan"), "cost": 0.3}]
                     )["trial"] == 2
    assert incumbent([]) is None
    # (error, params): 5 dominates 6; 7 equals 5 (both stay); 8 is the lowest error; trial 1 is at a lower budget
    trials = [{"trial": 1, "budget": 1.0, "cost": [0.0, 0.0]}, {"trial": 5, "budget": 3.0, "cost": [0.2, 10.0]},
              {"trial": 6, "budget": 3.0, "cost": [0.3, 10.0]}, {"trial": 7, "budget": 3.0, "cost": [0.2, 10.0]},
              {"trial": 8, "budget": 3.0, "cost": [0.1, 50.0]}, {"trial": 9, "budget": 3.0, "cost": [0.5, 1.0]}]
    assert [t["trial"] for t in pareto_front(trials)] == [8, 5, 7, 9]


def test_non_dominated_minimises_except_where_maximised():
    points = [(0.1, 100.0), (0.2, 300.0), (0.2, 200.0), (0.3, 300.0), (0.1, 50.0)]  # (error, throughput)
    assert non_dominated(points) == [4]  # both minimised: (0.1, 50) dominates every other point
    assert non_dominated(points, [False, True]) == [0, 1]  # throughput maximised
    assert non_dominated([]) == []


def test_trial_number_is_the_runhistory_position():
    keys = ["a", "b", "c"]
    assert [trial_number(keys, k) for k in keys] == [1, 2, 3]
    with pytest.raises(KeyError):
        trial_number(keys, "d")


def _two_workers(run_dir, n_objectives=1):
    """SMAC's own RunHistory filled as with two workers whose results come back out of order, told to the live
    view as SMBO.tell does, and saved as runhistory.json. Returns the live view's lines and the configs."""
    from rich.console import Console
    from smac.runhistory import RunHistory, StatusType, TrialInfo, TrialValue

    from nexsearch.runners.progress import ProgressView
    from nexsearch.search_space.space import build_space, to_dict

    configs = build_space(seed=1).sample_configuration(4)
    rh = RunHistory()
    smbo = SimpleNamespace(runhistory=rh, _stop=False)
    out = io.StringIO()
    view = ProgressView(Console(file=out, width=400), 60.0, 0.0, running=lambda: 1, should_stop=lambda: False,
                        objectives=["error"])
    view.on_start(smbo)
    infos = [TrialInfo(config=c, seed=0) for c in configs]

    def ask(i):
        rh.add_running_trial(infos[i])

    def tell(i, error, status=StatusType.SUCCESS):
        cost = error if n_objectives == 1 else [error, 1000.0 * (i + 1)]
        value = TrialValue(cost=cost, time=1.0, status=status, starttime=1.0, endtime=2.0,
                           additional_info={} if status == StatusType.SUCCESS else {"error": "out of memory"})
        rh.add(config=infos[i].config, cost=cost, time=value.time, status=status, seed=0, starttime=1.0, endtime=2.0,
               additional_info=value.additional_info, force_update=True)  # as SMBO.tell does
        view.on_tell_end(smbo, infos[i], value)

    ask(0), ask(1)  # two workers start trials 1 and 2
    tell(1, 0.40)  # trial 2 ends first
    ask(2)
    tell(2, 2.0, StatusType.CRASHED)  # trial 3 crashes
    ask(3)
    tell(0, 0.25)  # trial 1, the best, ends third
    # trial 4 never ends (the run is killed): RUNNING in the runhistory
    run_dir.mkdir(parents=True, exist_ok=True)
    rh.save(run_dir / "runhistory.json")
    return out.getvalue().splitlines(), [to_dict(c) for c in configs]


def test_every_reader_numbers_a_trial_the_same_with_two_workers(tmp_path, capsys):
    from rich.console import Console

    from nexsearch.analysis.run import load_run
    from nexsearch.errors import UserError
    from nexsearch.export import _source_config
    from nexsearch.runners.search import summarize
    from nexsearch.runners.smac_state import load_runhistory
    from nexsearch.runners.status import print_status, run_status

    run_dir = tmp_path / "run"
    lines, configs = _two_workers(run_dir)
    live = [re.match(r"trial (\d+): (\w+) error (\S+) .*\| best (.*) \| used", line).groups() for line in lines]
    # results arrived as trials 2, 3, 1: the live view says so (it used to count them: 1, 2, 3)
    assert live == [("2", "success", "0.4000", "0.4000 (trial 2)"), ("3", "crashed", "2.0000", "0.4000 (trial 2)"),
                    ("1", "success", "0.2500", "0.2500 (trial 1)")]

    trials, stored, _ = load_runhistory(run_dir)
    assert [(t["trial"], t["status_name"], stored[str(t["config_id"])]) for t in trials] == [
        (1, "success", configs[0]), (2, "success", configs[1]), (3, "crashed", configs[2]), (4, "running", configs[3])]

    info = run_status(run_dir)
    assert (info["incumbent"]["trial"], info["incumbent"]["error"], info["incumbent"]["config"]) == (1, 0.25, configs[0])
    assert [f["trial"] for f in info["failures"]] == [3] and info["interrupted"] == 1
    print_status(run_dir)
    assert re.search(r"incumbent error[\s│]+0\.2500 \(trial 1\)", capsys.readouterr().out)

    run = load_run(run_dir)
    by_trial = run.trials.set_index("trial")
    assert by_trial.loc[[1, 2, 3], "status"].tolist() == ["success", "success", "crashed"]
    assert by_trial.loc[[1, 2], "error"].tolist() == [0.25, 0.40]
    assert run.incumbent["trial"] == 1 and run.incumbent["config"] == configs[0]

    for number, error in ((1, 0.25), (2, 0.40)):  # export --trial N
        config, source = _source_config(run_dir, None, number)
        assert (source["trial"], source["val_error"], dict(config)) == (number, error, configs[number - 1])
    with pytest.raises(UserError, match=r"trial 3 of .* did not succeed \(crashed\)"):
        _source_config(run_dir, None, 3)
    with pytest.raises(UserError, match="trial 4 of .* has no result yet"):
        _source_config(run_dir, None, 4)
    assert _source_config(run_dir, None, None, incumbent=True)[1]["trial"] == 1

    console = Console(record=True, width=200)
    summarize(run_dir, console)
    assert "incumbent (trial 1): validation error 0.2500" in console.export_text()


def test_multi_objective_front_is_the_same_for_status_analysis_and_evaluate(tmp_path):
    from nexsearch.analysis.run import load_run
    from nexsearch.evaluate import select_candidates
    from nexsearch.runners.status import run_status

    run_dir = tmp_path / "run"
    _two_workers(run_dir, n_objectives=2)
    (run_dir / "scenario.json").write_text(json.dumps({"objectives": ["error", "full_latency"]}))
    # trial 1: (0.25, 1000 ms), trial 2: (0.40, 2000 ms): 1 dominates 2
    front = run_status(run_dir)["pareto_front"]
    assert [(p["trial"], p["costs"]) for p in front] == [(1, {"error": 0.25, "full_latency": 1000.0})]
    assert load_run(run_dir).pareto_front()["trial"].tolist() == [1]
    candidates, _ = select_candidates(run_dir, top=5, presets=())
    assert [c.trial for c in candidates] == [1]


def test_status_and_analysis_agree_on_a_hyperband_run(hyperband_run):
    from nexsearch.analysis.run import load_run
    from nexsearch.runners.smac_state import load_runhistory
    from nexsearch.runners.status import run_status

    run = load_run(hyperband_run)
    trials, _, _ = load_runhistory(run.smac_dir)
    done = [t for t in trials if t["status_name"] != "running"]
    assert run.trials["trial"].tolist() == [t["trial"] for t in done]
    assert run.trials["status"].tolist() == [t["status_name"] for t in done]
    assert run.trials["error"].tolist() == [error_of(t["cost"]) for t in done]
    info = run_status(hyperband_run)
    assert run.multi_fidelity and info["incumbent"]["trial"] == run.incumbent["trial"]
    assert info["incumbent"]["budget"] == run.incumbent["metrics"]["budget"] == run.trials["budget"].max()
    assert info["incumbent"]["error"] == run.incumbent["metrics"]["error"]
