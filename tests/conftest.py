import json
import os

import pytest
import torch

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def space():
    from nexsearch.search_space.space import SPACE

    return SPACE


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A small real run (synthetic data, tiny proxies, ~12 s of search) shared by the analysis and export tests."""
    from rich.console import Console

    from nexsearch.runners.experiment import experiment_from_dict
    from nexsearch.runners.search import run_search

    out = tmp_path_factory.mktemp("runs") / "small"
    exp = experiment_from_dict({
        "name": "small", "dataset": "synthetic", "image_size": 16, "train_subset": 384, "download": False,
        "data_dir": None, "min_epochs": 1, "max_epochs": 2, "initial_design": 4, "retrain_after": 2,
        "output_dir": str(out),
        "train": {"width": 0.125, "batch_size": 32, "lr": 0.005, "throughput_batch": 16, "throughput_iters": 1},
    })
    run_search(exp, 12.0, console=Console(quiet=True))
    for extra in (12.0, 24.0, 48.0):  # a loaded machine: resume until two trials succeeded (the tests need them)
        trials = json.loads((out / "smac" / "0" / "runhistory.json").read_text())["data"]
        if sum(t["status"] == 1 for t in trials) >= 2:
            break
        run_search(exp, json.loads((out / "nexsearch.json").read_text())["used_s"] + extra, console=Console(quiet=True))
    return out


@pytest.fixture(scope="session")
def hyperband_run(tmp_path_factory):
    """A Hyperband run (budgets 1, 3, 9 epochs) of 30 trials through ``run_search`` with a fake trainer
    (tests/fake_runs.py): the error depends on ``block`` and ``kernel_size``; some trials fail."""
    from fake_runs import make_run

    return make_run(tmp_path_factory.mktemp("runs") / "hyperband", optimizer="hyperband", n_trials=30, name="fake-hb",
                    fails=lambda c: c.get("kernel_size") == 9)


@pytest.fixture(scope="session")
def random_run(tmp_path_factory):
    """A random-search run of 20 trials like ``hyperband_run`` (one budget); trials with kernel size 9 fail."""
    from fake_runs import make_run

    return make_run(tmp_path_factory.mktemp("runs") / "random", optimizer="random", n_trials=20, name="fake-random",
                    fails=lambda c: c.get("kernel_size") == 9)
