"""Runs with a known truth, made by nexsearch's own search loop.

``make_run`` calls ``run_search`` -- SMAC's facade, SMAC's run directory, the trial log, the
state file, exactly as ``nexsearch run`` does -- with one difference: the proxy trainer is
replaced by a function whose validation error is a known function of the configuration
(plus seeded noise), and which returns at once. Analysis run on such a run can be checked
against that truth.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from nexsearch.objectives.record import TrialRecord
from nexsearch.search_space.space import to_dict

Truth = Callable[[dict[str, Any]], float]


def block_and_kernel(config: dict[str, Any]) -> float:
    """Bottleneck blocks are 0.3 better than Xception blocks; each kernel size step costs 0.05. The inception
    mixer (``kernel_size`` inactive) costs the depthwise kernels' mean, 0.075, so the mixer itself explains nothing."""
    kernel = [3, 5, 7, 9].index(config["kernel_size"]) if "kernel_size" in config else 1.5
    return 0.2 + 0.3 * (config["block"] == "xception") + 0.05 * kernel


def block_and_expansion(config: dict[str, Any]) -> float:
    """Bottleneck blocks are 0.3 better; among them, expansion 4 costs 0.1 (``expansion`` is conditional)."""
    return 0.2 + 0.3 * (config["block"] == "xception") + 0.1 * (config.get("expansion") == 4)


def fake_trainer(truth: Truth, noise: float, fails: Callable[[dict[str, Any]], bool] | None, max_epochs: int):
    """A stand-in for ``nexsearch.objectives.trainer.train_proxy`` with the same record."""

    def train_proxy(config, splits, settings, seed=0, budget=None, on_epoch=None):
        config = to_dict(config)
        rng = np.random.default_rng(zlib.crc32(json.dumps([config, seed, budget], sort_keys=True).encode()))
        epochs = max(1, int(np.floor(float(budget) + 0.5))) if budget else max_epochs
        # fewer epochs: a higher error, by the same amount for every configuration
        final = truth(config) + 0.2 * (1 - epochs / max_epochs) + rng.normal(0.0, noise)
        curve = [{"epoch": e, "val_error": final + 0.1 * (epochs - e) / epochs} for e in range(1, epochs + 1)]
        params = 1000 * config.get("kernel_size", config.get("band_kernel", 3)) * (config.get("expansion") or 1)
        throughput = 1e7 / params * (1.5 if config["stem"] == "patch" else 1)
        record = TrialRecord("ok", "", config, seed, budget, cost=final, curve=curve, measures={
            "val_error": final, "val_loss": 2 * final, "epochs": epochs, "epochs_run": epochs, "train_time_s": 0.01,
            "wall_time_s": 0.01, "params": params, "macs": 50 * params, "throughput": throughput,
            "latency_ms": 1000.0 / throughput, "peak_memory_mb": 10.0, "peak_memory_kind": "rss", "device": "cpu",
        })
        for row in curve if on_epoch is not None else []:  # the progress file, as the real trainer streams it
            on_epoch(row)
        if fails is not None and fails(config):
            record.merge(dict(status="oom", reason="out of memory: fake trainer (test)", cost=settings.crash_cost,
                              val_error=None, curve=[]))
        return record

    return train_proxy


def make_run(out: Path, truth: Truth = block_and_kernel, *, optimizer: str = "random", n_trials: int = 60,
             noise: float = 0.01, fails: Callable[[dict[str, Any]], bool] | None = None, min_epochs: int = 1,
             max_epochs: int = 9, seed: int = 0, name: str = "truth") -> Path:
    """A finished run of ``n_trials`` trials in ``out`` (through ``run_search``)."""
    from rich.console import Console

    from nexsearch.objectives import target
    from nexsearch.runners.experiment import experiment_from_dict
    from nexsearch.runners.search import run_search

    exp = experiment_from_dict({
        "name": name, "dataset": "synthetic", "image_size": 16, "train_subset": 64, "download": False,
        "data_dir": None, "optimizer": optimizer, "max_trials": n_trials, "min_epochs": min_epochs,
        "max_epochs": max_epochs, "initial_design": 8, "retrain_after": 4, "seed": seed, "output_dir": str(out),
        "train": {"width": 0.125, "batch_size": 32, "throughput_batch": 8, "throughput_iters": 1},
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(target, "train_proxy", fake_trainer(truth, noise, fails, max_epochs))
        run_search(exp, 600.0, console=Console(quiet=True))  # n_trials ends it long before the budget
    return out
