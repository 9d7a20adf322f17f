import itertools
import json
import subprocess
import sys

import pytest

from nexsearch.search_space.presets import PRESETS, preset
from nexsearch.search_space.space import DIMENSIONS, build_space, count_configurations, describe, to_dict, validate

PAPER_DIMENSIONS = {
    "kernel_size", "stem", "downsample", "block", "expansion", "se", "act_type", "norm_type",
    "act_before_1", "act_before_2", "act_before_3", "norm_after_1", "norm_after_2", "norm_after_3",
}
BEYOND_THE_PAPER = {"mixer", "band_kernel"}  # InceptionNeXt's mixer (issue 15)


def _brute_force_count(space):
    """Enumerate the full product and keep the assignments ConfigSpace accepts (after dropping inactive)."""
    names = list(space.keys())
    domains = [list(space[n].choices if hasattr(space[n], "choices") else space[n].sequence) for n in names]
    seen = set()
    for combo in itertools.product(*domains):
        values = dict(zip(names, combo))
        active = {}
        for n in names:  # topological order
            conds = space.parent_conditions_of[n]
            ok = True
            for c in conds:
                comps = getattr(c, "components", [c])
                ok &= any(p.parent.name in active and active[p.parent.name] == p.value for p in comps)
            if ok:
                active[n] = values[n]
        seen.add(tuple(sorted((k, str(v)) for k, v in active.items())))
    return len(seen)


def test_exact_size_exceeds_paper_and_matches_brute_force(space):
    size = count_configurations(space)
    assert size > 50_000
    # mixer: depthwise with 4 kernel sizes, or inception with 2 band kernels; then stem, downsample,
    # block (xception, or bottleneck with 3 expansions), se, act positions (7 with act_type, 1 without), norms.
    assert size == (4 + 2) * 2 * 3 * (1 + 3) * 2 * (7 * 4 + 1) * (7 * 2 + 1) == 125_280
    assert size == 83_520 * 6 // 4  # the paper's space (83,520, kernel 4 ways) with the mixer 6 ways
    assert size < space.estimate_size()  # estimate_size ignores conditions


def test_counter_is_exact_on_a_small_conditional_space():
    from ConfigSpace import Categorical, ConfigurationSpace, EqualsCondition, OrConjunction

    cs = ConfigurationSpace()
    a, b = Categorical("a", [False, True]), Categorical("b", [False, True])
    c = Categorical("c", ["x", "y", "z"])
    d = Categorical("d", [1, 2])
    e = Categorical("e", ["p", "q"])
    cs.add([a, b, c, d, e, OrConjunction(EqualsCondition(c, a, True), EqualsCondition(c, b, True)),
            EqualsCondition(d, c, "x"), EqualsCondition(e, d, 2)])
    # a,b both False: 1; otherwise (3 cases) c in {y,z}: 2, c=x: d=1 -> 1, d=2 -> e: 2
    assert count_configurations(cs) == 1 + 3 * (2 + 1 + 2)
    assert count_configurations(cs) == _brute_force_count(cs)


def test_every_paper_dimension_present(space):
    assert set(space.keys()) == PAPER_DIMENSIONS | BEYOND_THE_PAPER
    assert list(space["mixer"].choices) == ["depthwise", "inception"]
    assert list(space["band_kernel"].choices) == [7, 11]
    assert list(space["kernel_size"].choices) == [3, 5, 7, 9]
    assert set(space["act_type"].choices) == {"relu", "gelu", "elu", "celu"}
    assert set(space["norm_type"].choices) == {"batchnorm", "layernorm"}
    assert set(space["downsample"].choices) == {"maxpool", "conv", "blurpool"}
    assert set(space["stem"].choices) == {"conv", "patch"}


def test_conditions(space):
    with pytest.raises(ValueError, match="expansion"):
        validate({**preset("xception"), "expansion": 3})
    no_norm = {**preset("nexception"), "norm_after_1": False, "norm_after_2": False}
    with pytest.raises(ValueError, match="norm_type"):
        validate(no_norm)
    del no_norm["norm_type"]
    assert "norm_type" not in dict(validate(no_norm))


def test_mixer_conditions():
    inception = {k: v for k, v in preset("nexception").items() if k != "kernel_size"}
    inception.update(mixer="inception", band_kernel=7)
    assert "kernel_size" not in to_dict(validate(inception))
    with pytest.raises(ValueError, match=r"hyperparameter 'kernel_size' must not be set.*mixer == 'depthwise'"):
        validate({**inception, "kernel_size": 5})
    with pytest.raises(ValueError, match=r"hyperparameter 'band_kernel' must not be set.*mixer == 'inception'"):
        validate({**preset("nexception"), "band_kernel": 11})
    with pytest.raises(ValueError, match="'band_kernel' is missing"):
        validate({k: v for k, v in inception.items() if k != "band_kernel"})
    with pytest.raises(ValueError, match="'band_kernel'"):
        validate({**inception, "band_kernel": 9})


@pytest.mark.parametrize(
    "change, name",
    [
        ({"kernel_sz": 3}, "kernel_sz"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"act_type": "swish"}, "act_type"),
        ({"se": 1}, "se"),
        ({"kernel_size": "5"}, "kernel_size"),
    ],
)
def test_invalid_values_name_the_hyperparameter(change, name):
    with pytest.raises(ValueError, match=f"'{name}'"):
        validate({**preset("nexception"), **change})


def test_missing_key_is_named():
    values = preset("nexception")
    del values["stem"]
    with pytest.raises(ValueError, match="'stem' is missing"):
        validate(values)


def test_presets_are_valid_and_xception_is_the_default(space):
    for name in PRESETS:
        validate(PRESETS[name])
    assert to_dict(space.get_default_configuration()) == preset("xception")


def test_describe_and_cli_json():
    info = describe()
    out = subprocess.run([sys.executable, "-m", "nexsearch.cli", "space", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["size"] == info["size"] == 125_280
    assert set(data["hyperparameters"]) == PAPER_DIMENSIONS | BEYOND_THE_PAPER


def test_cli_table_prints_count():
    out = subprocess.run([sys.executable, "-m", "nexsearch.cli", "space"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "125,280" in out.stdout and "kernel_size" in out.stdout and "band_kernel" in out.stdout


def test_sampled_configs_roundtrip(space):
    s = build_space(seed=3)
    for cfg in s.sample_configuration(50):
        d = to_dict(cfg)
        assert json.loads(json.dumps(d)) == d
        assert to_dict(validate(d)) == d


def test_plain_data_description_matches_the_configspace(space):
    """`nexsearch space` reads the plain-data dimensions (no ConfigSpace import): they say what the built space says."""
    plain, built = describe(), describe(space)
    assert {d["name"]: d for d in plain["dimensions"]} == {d["name"]: d for d in built["dimensions"]}
    assert plain["size"] == built["size"] and plain["upper_bound"] == built["upper_bound"] == int(space.estimate_size())
    assert list(plain["hyperparameters"]) == [d.name for d in DIMENSIONS]
    out = subprocess.run([sys.executable, "-c", "import sys; from nexsearch.cli import main; main(['space', '--json']); "
                          "print('ConfigSpace' in sys.modules, 'torch' in sys.modules)"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_deepcave_importance_with_both_mixers(tmp_path):
    """kernel_size and band_kernel are inactive in half of the space: DeepCAVE must still encode the run."""
    from smac.runner import TargetFunctionRunner

    from nexsearch.analysis.run import load_run
    from nexsearch.bench.smac import fake_target
    from nexsearch.runners.experiment import Experiment
    from nexsearch.runners.facade import build_smac as _build_smac

    exp = Experiment(name="mixers", dataset="synthetic", max_trials=12, initial_design=10, min_epochs=1, max_epochs=1)
    smac = _build_smac(exp, tmp_path, lambda scenario, required: TargetFunctionRunner(
        scenario, fake_target, required_arguments=["seed"]), [])
    smac.optimize()
    run = load_run(tmp_path)
    assert set(run.trials["mixer"]) == {"depthwise", "inception"}
    assert run.trials["kernel_size"].isna().any() and run.trials["band_kernel"].isna().any()
    imp = run.importance("fanova")
    assert {"mixer", "kernel_size", "band_kernel"} <= set(imp["hyperparameter"])


def test_a_configuration_is_checked_once_where_it_enters(monkeypatch, tmp_path):
    """validate() is the boundary: a mapping is checked and becomes a Configuration; a Configuration of the space
    (SMAC's, or one validate() made) passes on unchecked, so a trial and an export each check their configuration
    once, and a Configuration of another space is checked as a mapping."""
    import torch

    from nexsearch.export import export_model, load_model
    from nexsearch.objectives.datasets import Splits, TensorData
    from nexsearch.objectives.settings import TrainSettings
    from nexsearch.objectives.trainer import train_proxy
    from nexsearch.search_space import space as space_mod

    nexception, xception = preset("nexception"), preset("xception")  # plain dicts (presets.py checked them)
    checks = []
    real = space_mod._check
    monkeypatch.setattr(space_mod, "_check", lambda values, space=None: checks.append(dict(values)) or real(values,
                                                                                                           space))
    smac_config = build_space(seed=5).sample_configuration()
    assert validate(smac_config) is smac_config and not checks  # SMAC's configuration: no second check
    made = validate(nexception)
    assert len(checks) == 1 and validate(made) is made and len(checks) == 1

    g = torch.Generator().manual_seed(0)

    def data(n):
        return TensorData(torch.randint(0, 255, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                          torch.randint(0, 4, (n,), generator=g))

    splits = Splits(name="random", train=data(16), val=data(8), test=None, num_classes=4, mean=(0.5,) * 3,
                    std=(0.25,) * 3)
    checks.clear()
    record = train_proxy(smac_config, splits, TrainSettings(epochs=1, batch_size=8, width=0.125, depth=1,
                                                            throughput_batch=2, throughput_iters=1, device="cpu"))
    assert record["status"] == "ok" and record["config"] is smac_config and checks == []
    assert record.to_json()["config"] == to_dict(smac_config)
    train_proxy(xception, splits, TrainSettings(epochs=1, batch_size=8, width=0.125, depth=1,
                                                          throughput_batch=2, throughput_iters=1, device="cpu"))
    assert len(checks) == 1  # a plain mapping from a library caller: checked once, by the trainer

    checks.clear()
    out = tmp_path / "m.safetensors"
    export_model(preset="nexception", size="t", out=out, num_classes=10)
    assert len(checks) == 1  # the preset, where it enters the export; the model is built from that
    checks.clear()
    checks.clear()
    load_model(out)
    assert len(checks) == 1  # the sidecar's configuration, where it is read; the model is built from that


def test_a_trial_checks_its_configuration_once(monkeypatch, tmp_path):
    """Through a real trial (``evaluate_trial``: the trainer, the builder, the full-size producer, the log), SMAC's
    Configuration reaches the builders as it is, and is never checked again (ConfigSpace made it); a mapping is
    checked exactly once."""
    from nexsearch.objectives import full_size, target, trainer
    from nexsearch.objectives.settings import DataSpec, TrainSettings, TrialSpec
    from nexsearch.rundir import RunDir
    from nexsearch.search_space import space as space_mod

    checks, built = [], []
    real_check = space_mod._check
    monkeypatch.setattr(space_mod, "_check", lambda values, space=None: checks.append(1) or real_check(values, space))
    for module in (trainer, full_size):
        real_build = module.build_model
        monkeypatch.setattr(module, "build_model", lambda config, *a, _real=real_build, **k: built.append(config)
                            or _real(config, *a, **k))
    context = target.TrialContext("count-checks")
    monkeypatch.setattr(target, "SEARCH", context)
    context.configure(TrialSpec(DataSpec("synthetic", synthetic_size=64, image_size=16),
                                TrainSettings(epochs=1, batch_size=16, width=0.125, depth=1, throughput_batch=2,
                                              throughput_iters=1, device="cpu"),
                                objectives=("error", "full_params"), full_layout="t", run_dir=RunDir(tmp_path)))
    smac_config = build_space(seed=7).sample_configuration()
    cost, info = target.target_function(smac_config, seed=0, budget=1)
    assert checks == [] and len(built) == 2 and all(c is smac_config for c in built)  # proxy, full-size
    assert info["full_params"] > 0 and "config" not in info
    xception = preset("xception")  # a mapping (a library caller's; preset() checked it where it made it)
    checks.clear()
    built.clear()
    target.target_function(xception, seed=0, budget=1)
    assert len(checks) == 1 and len({id(c) for c in built}) == 1  # checked once; both builders take that one
    logged = [json.loads(line) for line in RunDir(tmp_path).trials.read_text().splitlines()]
    assert [r["config"] for r in logged] == [to_dict(smac_config), preset("xception")]
