"""Hyperparameter importance against a known truth.

Each run is made by ``run_search`` (SMAC's random facade and run directory, 60 trials) with a
fake trainer whose error depends on two hyperparameters only, plus noise (tests/fake_runs.py).
DeepCAVE's LPI and fANOVA, as nexsearch wires them (encodings, the conditional ``expansion``,
the objective, the budget), must rank exactly those two first.
"""

import numpy as np
import pytest
from fake_runs import block_and_expansion, block_and_kernel, make_run

from nexsearch.analysis import load_run
from nexsearch.search_space.space import SPACE

TRUTHS = {"block+kernel_size": (block_and_kernel, {"block", "kernel_size"}),
          "block+expansion": (block_and_expansion, {"block", "expansion"})}


@pytest.fixture(scope="module", params=list(TRUTHS))
def truth_run(request, tmp_path_factory):
    truth, important = TRUTHS[request.param]
    path = make_run(tmp_path_factory.mktemp("truth") / request.param, truth, optimizer="random", n_trials=60)
    return load_run(path), important


@pytest.mark.parametrize("method", ["lpi", "fanova"])
def test_importance_ranks_the_true_hyperparameters_first(truth_run, method):
    run, important = truth_run
    assert len(run.successful) == 60 and run.trials["budget"].isna().all()
    # the conditional is exercised: Xception blocks (expansion inactive) and bottlenecks both ran
    assert run.trials["expansion"].isna().sum() >= 10 and run.trials["expansion"].notna().sum() >= 10
    imp = run.importance(method).set_index("hyperparameter")
    assert set(imp.index) == set(SPACE.keys())
    assert np.isfinite(imp[["importance", "variance"]].to_numpy()).all()
    ranked = imp["importance"].sort_values(ascending=False)
    assert set(ranked.index[:2]) == important, ranked.head(4).to_dict()
    assert ranked.iloc[0] > 0.5  # block: 0.3 of error, the biggest effect by far
    # what is left for the hyperparameters the error does not depend on is noise
    assert ranked.iloc[2:].sum() < 0.1, ranked.head(4).to_dict()
