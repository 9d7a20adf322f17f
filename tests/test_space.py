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
    assert size == 4 * 2 * 3 * (1 + 3) * 2 * (7 * 4 + 1) * (7 * 2 + 1) == 83_520
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
    assert set(space.keys()) == PAPER_DIMENSIONS
    assert list(space["kernel_size"].sequence) == [3, 5, 7, 9]
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
    assert data["size"] == info["size"] == 83_520
    assert set(data["hyperparameters"]) == PAPER_DIMENSIONS


def test_cli_table_prints_count():
    out = subprocess.run([sys.executable, "-m", "nexsearch.cli", "space"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "83,520" in out.stdout and "kernel_size" in out.stdout


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
