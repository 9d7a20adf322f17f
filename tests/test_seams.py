"""The extension seams, used as a contributor would: an objective added by one table entry and its producer,
an optimizer added by one entry of the optimizer mapping (both registered here only). Real searches through
``run_search`` (SMAC, the run directory, the trial log) with the fake trainer of tests/fake_runs.py."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from fake_runs import fake_trainer
from rich.console import Console

from nexsearch.objectives import table, target
from nexsearch.runners import optimizers
from nexsearch.runners.experiment import experiment_from_dict
from nexsearch.runners.search import run_search


def _truth(config):
    return 0.2 + 0.3 * (config["block"] == "xception")


def _experiment(out: Path, **extra):
    return experiment_from_dict({
        "name": out.name, "dataset": "synthetic", "image_size": 16, "train_subset": 64, "download": False,
        "data_dir": None, "min_epochs": 1, "max_epochs": 2, "initial_design": 4, "retrain_after": 2, "output_dir": str(out),
        "train": {"width": 0.125, "batch_size": 32, "throughput_batch": 8, "throughput_iters": 1}, **extra,
    })


def _search(exp, monkeypatch) -> Path:
    monkeypatch.setattr(target, "train_proxy", fake_trainer(_truth, 0.01, None, exp.max_epochs))
    run_search(exp, 600.0, console=Console(quiet=True))  # max_trials ends it
    return exp.run_dir


def _wiring(config) -> float:
    """The added objective: any deterministic function of the configuration."""
    return float(zlib.crc32(json.dumps(config, sort_keys=True).encode()) % 1000)


@pytest.fixture
def wiring_objective(monkeypatch):
    """One table entry (name ``wiring``, record key ``wiring_cost``) and its producer."""
    calls = []

    def produce(record, spec):
        calls.append(spec.objectives)
        return {"wiring_cost": _wiring(record["config"]) if record["status"] == "ok" else None}

    monkeypatch.setitem(table.PRODUCERS, "wiring", produce)
    monkeypatch.setitem(table.MEASURES, "wiring", table.Measure("wiring", "wiring_cost", producer="wiring",
                                                                label="wiring cost"))
    return calls


def test_an_added_objective_is_recorded_optimised_by_parego_and_analysed(tmp_path, monkeypatch, wiring_objective):
    from smac.multi_objective.parego import ParEGO

    from nexsearch.analysis.plots import plot_pareto
    from nexsearch.analysis.run import load_run

    built = []
    parego = optimizers.OPTIMIZERS["parego"]
    monkeypatch.setitem(optimizers.OPTIMIZERS, "parego", lambda setup: built.append(parego(setup)) or built[-1])
    assert "wiring" in table.objective_names()
    out = _search(_experiment(tmp_path / "wired", optimizer="parego", objectives=["error", "wiring"], max_trials=8),
                  monkeypatch)

    assert isinstance(built[0]._multi_objective_algorithm, ParEGO)  # SMAC's ParEGO scalarises both objectives
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(records) == 8 and wiring_objective and all(list(o) == ["error", "wiring"] for o in wiring_objective)
    assert all(r["wiring_cost"] == _wiring(r["config"]) for r in records)  # the column, in the trial log
    rh = json.loads((out / "smac" / "0" / "runhistory.json").read_text())
    told = sorted(round(row["cost"][1], 6) for row in rh["data"])
    assert told == sorted(round(r["wiring_cost"], 6) for r in records)  # SMAC was told it as the second cost

    run = load_run(out)
    assert run.objectives == ["error", "wiring"]
    assert list(run.trials["wiring"]) == list(run.trials["wiring_cost"])  # the cost and the record's column
    front = run.pareto_front()
    assert set(front.columns) >= {"error", "wiring"} and len(front) >= 1
    fig = plot_pareto(run)
    labels = [ax.get_xlabel() for ax in fig.axes if ax.get_visible()]
    assert any(label.startswith("wiring_cost (lower is better; wiring cost)") for label in labels)


def test_the_table_declares_each_measure_once():
    assert table.objective_names()[0] == "error" and table.record_key("full_latency") == "full_latency_ms"
    assert table.is_maximised("throughput") and not table.is_maximised("latency_ms")  # by record key or name
    assert table.produced_by("full_size") == ["full_params", "full_macs", "full_latency"]
    with pytest.raises(ValueError, match="must be minimised"):  # SMAC is told every objective as a cost
        table.register(table.Measure("accuracy", "accuracy", "max"))
    assert "accuracy" not in table.MEASURES


def test_an_added_objective_is_refused_once_removed(monkeypatch):
    from nexsearch.errors import UserError

    with pytest.raises(UserError, match="come from error, params"):
        _experiment(Path("unused"), objectives=["error", "wiring"])


def tiny_random(setup):
    """A test-only optimizer: random search that starts from a 3-point Sobol design."""
    from smac import RandomFacade as Facade
    from smac.initial_design import SobolInitialDesign

    scenario = setup.scenario()
    return setup.build(Facade, scenario, ["seed"], parego=False,
                       initial_design=SobolInitialDesign(scenario, n_configs=3),
                       intensifier=Facade.get_intensifier(scenario, max_config_calls=1))


def test_an_added_optimizer_is_read_by_status_analyze_evaluate_and_export(tmp_path, monkeypatch):
    import nexsearch.objectives.trainer as trainer
    from nexsearch.analysis.report import analyze
    from nexsearch.evaluate import evaluate_run
    from nexsearch.export import export_model
    from nexsearch.runners.status import run_status

    monkeypatch.setitem(optimizers.OPTIMIZERS, "tiny", tiny_random)
    out = _search(_experiment(tmp_path / "tiny", optimizer="tiny", max_trials=6), monkeypatch)

    info = run_status(out)
    assert info["finished"] == 6 and info["incumbent"]["error"] == pytest.approx(0.2, abs=0.05)
    assert json.loads((out / "nexsearch.json").read_text())["optimizer"] == "tiny"

    summary = analyze(out, tmp_path / "analysis")
    assert summary["optimizer"] == "tiny" and summary["incumbent"]["trial"] == info["incumbent"]["trial"]
    assert Path(summary["files"]["report"]).is_file()

    fake = fake_trainer(_truth, 0.01, None, 2)
    monkeypatch.setattr(trainer, "train_proxy", lambda config, splits, settings, seed=0, budget=None, test=False:
                        fake(config, splits, settings, seed, budget).merge({"test_error": 0.5}))
    evaluation = evaluate_run(out, top=1, seeds=1, epochs=1, presets=(), console=Console(quiet=True))
    assert evaluation["evaluations"][0]["winner"]["trial"] == info["incumbent"]["trial"]

    model = export_model(out, out=tmp_path / "tiny.safetensors", size="t")
    assert model["source"]["trial"] == info["incumbent"]["trial"] and "evaluated winner" in model["chosen"]
