"""``nexsearch bench smac``: SMAC's own overhead per trial, with a fake target that returns at once.

The facade is built exactly as ``nexsearch run`` builds it (same initial design, intensifier,
surrogate retraining frequency). Since the fake target costs nothing, all wall time is SMAC's:
ask, tell, surrogate training, acquisition optimisation, saving the run directory. The overhead
share of a real run with trials of ``trial_s`` seconds is then
``smac_s / (smac_s + n_trials * trial_s)``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from smac.callback import Callback

from nexsearch.errors import UserError
from nexsearch.runners.experiment import Experiment


def fake_target(config, seed: int = 0) -> float:
    """A smooth, structured stand-in for a proxy's validation error (no training)."""
    c = dict(config)
    err = 0.45
    err -= 0.08 if c["block"] == "bottleneck" else 0.0
    err -= {3: 0.0, 5: 0.03, 7: 0.025, 9: 0.01}.get(c.get("kernel_size"), 0.02)  # inactive for mixer inception
    err -= 0.02 if c["se"] else 0.0
    err += 0.01 * abs(sum(c[f"act_before_{i}"] for i in (1, 2, 3)) - 1)
    err += 0.01 * abs(sum(c[f"norm_after_{i}"] for i in (1, 2, 3)) - 2)
    return float(err)


class _Clock(Callback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_tell_end(self, smbo: Any, info: Any, value: Any) -> None:
        self.marks.append(time.perf_counter())


def bench_smac(n_trials: int = 1000, trial_s: float = 10.0, optimizer: str = "bo", retrain_after: int = 8,
               initial_design: int = 20, seed: int = 0, selector: str = "batched") -> dict[str, Any]:
    import logging

    from smac.runner import TargetFunctionRunner

    from nexsearch.runners.facade import build_smac

    logging.getLogger("smac").setLevel(logging.ERROR)
    exp = Experiment(name="bench-smac", dataset="synthetic", optimizer=optimizer, max_trials=n_trials,
                     retrain_after=retrain_after, initial_design=initial_design, seed=seed, min_epochs=1, max_epochs=1)
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        def factory(scenario, required):
            return TargetFunctionRunner(scenario, fake_target, required_arguments=["seed"])

        smac = build_smac(exp, Path(tmp), factory, [clock], selector=selector)
        start = time.perf_counter()
        smac.optimize()
        total = time.perf_counter() - start
        best = min(v.cost for v in smac.runhistory.values())
    n = len(clock.marks)
    gaps = [b - a for a, b in zip([start] + clock.marks, clock.marks)]
    tail = gaps[-100:] if n >= 100 else gaps
    return {
        "optimizer": optimizer,
        "selector": selector,
        "n_trials": n,
        "smac_s": round(total, 2),
        "smac_ms_per_trial": round(1000 * total / max(n, 1), 2),
        "smac_ms_per_trial_last_100": round(1000 * sum(tail) / max(len(tail), 1), 2),
        "trial_s": trial_s,
        "overhead_frac": round(total / (total + n * trial_s), 5),
        "retrain_after": retrain_after,
        "initial_design": initial_design,
        "best_fake_error": round(best, 4),
    }


def main(args: argparse.Namespace) -> int:
    """``nexsearch bench smac``: run, then print a summary or one JSON object."""
    if args.trials < 1 or args.trial_seconds <= 0:
        raise UserError("--trials must be >= 1 and --trial-seconds > 0")
    result = bench_smac(n_trials=args.trials, trial_s=args.trial_seconds, optimizer=args.optimizer,
                        retrain_after=args.retrain_after, selector=args.selector)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['n_trials']} trials of a fake target with SMAC '{args.optimizer}' "
          f"({args.selector} selector): {result['smac_s']:.1f} s of SMAC "
          f"({result['smac_ms_per_trial']:.0f} ms per trial, "
          f"{result['smac_ms_per_trial_last_100']:.0f} ms over the last 100)")
    print(f"overhead with {args.trial_seconds:g} s trials: {100 * result['overhead_frac']:.2f}% of wall time")
    return 0
