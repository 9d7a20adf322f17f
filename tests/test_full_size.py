"""The full-size model's cost as an objective: full_params / full_macs on the meta device, full_latency cached."""

import json

import pytest
import yaml

from nexsearch.errors import UserError
from nexsearch.objectives import full_size, target
from nexsearch.objectives.settings import DataSpec, TrainSettings, TrialSpec
from nexsearch.runners.experiment import experiment_from_dict
from nexsearch.rundir import RunDir
from nexsearch.search_space.builder import build_model, count_macs, count_params
from nexsearch.search_space.presets import preset
from nexsearch.search_space.space import build_space, to_dict

TINY = dict(width=0.125, batch_size=32, lr=0.005, throughput_batch=16, throughput_iters=1, epochs=1)
TINY_EXP = {k: v for k, v in TINY.items() if k != "epochs"}  # an experiment's epochs: max_epochs


def test_full_params_and_macs_equal_the_materialised_model():
    configs = [preset("nexception_i"), to_dict(build_space(seed=5).sample_configuration())]
    for config, layout in zip(configs, ("tp", "t")):
        cost = full_size.full_size_cost(config, layout)
        model = build_model(config, layout)
        assert cost["full_params"] == count_params(model)
        if layout == "tp":  # one real full-size forward pass is enough on a 2-core CPU
            assert cost["full_macs"] == count_macs(model, 224)
    # presets in their own layouts: the README's table
    assert full_size.full_size_cost(preset("nexception"), "tp")["full_params"] == 26_558_216
    assert full_size.full_size_cost(preset("nexception"), "s")["full_params"] == 43_385_904


def test_full_latency_is_measured_once_per_configuration_and_device(tmp_path, monkeypatch):
    monkeypatch.setitem(full_size.PROTOCOL, "cpu", (1, 1, 0))  # one timed full-size forward pass, no warm-up
    log, cache = RunDir(tmp_path).trials, RunDir(tmp_path).latency_cache
    target.SEARCH.configure(TrialSpec(DataSpec("synthetic", image_size=16, train_subset=64), TrainSettings(**TINY),
                                      objectives=("error", "full_latency"), full_layout="tp", run_dir=RunDir(tmp_path)))
    config = preset("nexception_i")
    cost, info = target.target_function(config, seed=0, budget=1)
    assert info["full_latency_cached"] is False and cost["full_latency"] == info["full_latency_ms"] > 0
    assert info["full_params"] == 25_851_056 and info["full_layout"] == "tp"
    measured = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(measured) == 1 and measured[0]["latency_ms"] == info["full_latency_ms"]

    def no_second_measurement(*args, **kwargs):
        raise AssertionError("the full-size latency was measured again")

    monkeypatch.setattr(full_size, "measure_latency_ms", no_second_measurement)
    cost2, info2 = target.target_function(config, seed=1, budget=2)  # another seed and budget: the cache
    assert info2["full_latency_cached"] is True and cost2["full_latency"] == cost["full_latency"]
    assert len(cache.read_text().splitlines()) == 1
    # another device is another measurement
    monkeypatch.setattr(full_size, "device_name", lambda device: "cpu of another machine")
    with pytest.raises(target.TrialFailed, match="measured again"):
        target.target_function(config, seed=0, budget=1)
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "crashed"]
    assert records[2]["reason"].startswith("full-size 'tp' latency: AssertionError")


def test_bad_full_size_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from nexsearch.cli import main

    with pytest.raises(UserError, match="unknown full_layout 'xl': choose one of t, s, tp"):
        experiment_from_dict({"full_layout": "xl"})
    exp = {"name": "t", "dataset": "digits", "data_dir": None, "download": False, "min_epochs": 1, "max_epochs": 1,
           "train": TINY_EXP}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**exp, "full_layout": "xl"}))
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({**exp, "full_layout": "s"}))
    monkeypatch.setattr(full_size, "_available_bytes", lambda device: 2**28)  # 256 MiB free
    out = tmp_path / "runs"
    for args in (["--config", str(bad)], ["--config", str(good), "--objectives", "error,full_latency"]):
        assert main(["run", "--budget", "10s", "--out", str(out), *args]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nexsearch: "), lines
    assert "full-size 's' models need about" in lines[0] and "0.2 GiB are free" in lines[0]
    assert not out.exists()  # refused before the search started: nothing written


def test_parego_on_digits_against_full_latency(tmp_path, monkeypatch):
    from rich.console import Console

    from nexsearch.runners.search import run_search

    monkeypatch.setitem(full_size.PROTOCOL, "cpu", (1, 1, 0))  # one timed full-size forward pass per configuration
    exp = {
        "name": "full-latency", "dataset": "digits", "data_dir": None, "download": False, "train_subset": 256,
        "optimizer": "parego", "objectives": ["error", "full_latency"], "full_layout": "tp",
        "min_epochs": 1, "max_epochs": 1, "initial_design": 3, "retrain_after": 2, "max_trials": 4,
        "train": {**TINY_EXP, "hflip": False},
    }
    run_dir = tmp_path / "run"
    console = Console(record=True, width=200)
    run_search(experiment_from_dict({**exp, "output_dir": str(run_dir)}), 180.0, console=console)  # ends after 4 trials
    assert "Pareto front (error, full_latency)" in console.export_text()
    from nexsearch.analysis.run import load_run
    from nexsearch.runners.status import run_status

    front = run_status(run_dir)["pareto_front"]
    assert front and all(set(p["costs"]) == {"error", "full_latency"} for p in front)
    records = {json.dumps(r["config"], sort_keys=True): r for r in map(json.loads, (run_dir / "trials.jsonl").open())
               if r["status"] == "ok"}
    for p in front:  # SMAC's second objective is the measured full-size latency of that configuration
        assert p["costs"]["full_latency"] == records[json.dumps(p["config"], sort_keys=True)]["full_latency_ms"]
    cache = [json.loads(x) for x in RunDir(run_dir).latency_cache.read_text().splitlines()]
    assert len({json.dumps(c["config"], sort_keys=True) for c in cache}) == len(cache) >= len(records)
    run = load_run(run_dir)
    pareto = run.pareto_front(["error", "full_latency"])
    assert len(pareto) == len(front)
    assert run.trials["full_params"].notna().all() and (run.successful["full_latency_ms"] > 0).all()

    from nexsearch.analysis.plots import plot_pareto

    fig = plot_pareto(run)
    axes = {ax.get_xlabel().split(" (")[0]: ax for ax in fig.axes if ax.get_visible()}  # "metric (lower is better)"
    assert {"full_params", "full_macs", "full_latency_ms"} <= set(axes)
    points = axes["full_latency_ms"].collections[0].get_offsets()
    assert sorted(points[:, 0].tolist()) == sorted(run.successful["full_latency_ms"].tolist())
