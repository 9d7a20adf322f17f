"""Variants of nexsearch's ``bo`` facade on NAS-Bench-201 (the tuning behind its defaults; docs/benchmarks.md).

    python benchmarks/bo_variants.py --table cifar10 --seeds 4 --k 200 base rand0 det3 ... > log

Each variant is the facade ``build_smac`` made for ``optimizer: bo`` before issue 20's second session (HPO
facade, Sobol design of 20 plus the default configuration, batched selector retrained every 8 trials, SMAC's
local search, 20% random interleaving) with one or more settings changed; names combine with '+'
(``rand0+init10``). ``enum+retrain1+rand0+init10`` is today's default (``build_smac`` on a table's space).
``model`` reports, after k calls, the evaluated configuration with the lowest surrogate mean instead of the
lowest observed error. Prints one JSON line per variant: regret (accuracy points) after k/4, k/2 and k calls
(and the top-5 re-evaluation's mean), one line per seed on stderr; ``--dump FILE`` appends each seed's calls
for winner rules scored offline by ``benchmarks/bo_winner.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from smac import Callback

from nexsearch.bench.optimizers import Table, _smac_run, configspace, regrets, run_one

BASE = dict(initial_design=20, retrain_after=8, random_p=0.2, deterministic=True, max_config_calls=1, n_jobs=-1,
            leaf=1, split=2, trees=10, challengers=10000, log_y=True, leaves=2**20, splitter="random", one_hot=False,
            enumerate=False, report="observed", xi=0.0, reeval=0, tell=False, confirm=0)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {}, "nj1": dict(n_jobs=1), "rand0": dict(random_p=0.0), "rand05": dict(random_p=0.05),
    "det3": dict(deterministic=False, max_config_calls=3), "det2": dict(deterministic=False, max_config_calls=2),
    "init10": dict(initial_design=10), "init40": dict(initial_design=40), "retrain4": dict(retrain_after=4),
    "retrain1": dict(retrain_after=1), "leaf3": dict(leaf=3, split=3), "trees30": dict(trees=30),
    "nolog": dict(log_y=False), "slowrf": dict(leaves=2**20, n_jobs=-1),
    "best": dict(splitter="best"), "onehot": dict(one_hot=True),
    "enum": dict(enumerate=True), "model": dict(report="model"), "trees50": dict(trees=50),
    "xi01": dict(xi=0.01), "init5": dict(initial_design=5), "leaf2": dict(leaf=2, split=4),
    "reeval10": dict(reeval=10), "reevalnever": dict(reeval=10**9), "reeval5": dict(reeval=5), "reeval20": dict(reeval=20), "told": dict(tell=True),
    "confirm2": dict(reeval=1, confirm=2), "confirm3": dict(reeval=1, confirm=3),
}


def one_hot_categoricals(X: np.ndarray, space) -> np.ndarray:
    """``X`` (SMAC's vectors, inactive values imputed) with each categorical column as one 0/1 column per choice
    (and one for "inactive"): a tree then splits one choice off the others, not the choices' arbitrary order."""
    from ConfigSpace import CategoricalHyperparameter

    cols = [X[:, i:i + 1] == np.arange(len(hp.choices) + 1)[None, :] if isinstance(hp, CategoricalHyperparameter)
            else X[:, i:i + 1] for i, hp in enumerate(space.values())]
    return np.hstack(cols).astype(float)


def _one_hot_forest():
    from nexsearch.runners.selector import RandomForest

    class OneHotForest(RandomForest):
        """The "onehot" variant: nexsearch's forest on one-hot categoricals (every feature at every split)."""

        def _impute_inactive(self, X: np.ndarray) -> np.ndarray:
            return one_hot_categoricals(super()._impute_inactive(X), self._configspace)

        def _train(self, X: np.ndarray, y: np.ndarray):
            self._rf_opts["max_features"] = 1.0
            return super()._train(X, y)
    return OneHotForest


def options(name: str) -> dict[str, Any]:
    opts = dict(BASE, n_jobs=1, leaves=None)  # a forest as fast as SMAC's (see "slowrf"): every variant below
    for part in name.split("+"):
        opts.update(VARIANTS[part])
    return opts


class ModelReport(Callback):
    """The "model" variant: after k calls report the evaluated configuration with the lowest mean predicted by
    the surrogate refitted on every call so far (a copy: the search itself is not changed)."""

    def __init__(self, trace, ks) -> None:
        self.trace, self.ks = trace, set(ks)

    def on_tell_end(self, smbo, info, value):
        import copy

        from ConfigSpace import Configuration

        k = len(self.trace.keys)
        sel = smbo._intensifier._config_selector
        if k in self.ks and sel._model is not None:
            X, Y, configs = sel._collect_data()
            model = copy.deepcopy(sel._model)
            model.train(X, Y)
            means = np.asarray(model.predict_marginalized(configs)[0]).reshape(-1)
            best = Configuration(sel._scenario.configspace, vector=configs[int(np.argmin(means))])
            self.trace.chosen[k] = Table.key(dict(best))
        return None


def runner(opts: dict[str, Any], ks=()):
    def run(trace, table, n, seed, evaluate) -> None:
        from smac import HyperparameterOptimizationFacade as HPO, Scenario
        from smac.model.random_forest import RandomForest

        if opts["one_hot"]:
            RandomForest = _one_hot_forest()  # noqa: N806
        from nexsearch.runners.selector import BatchedConfigSelector

        def build(target, tmp: Path):
            space = configspace(seed)
            scenario = Scenario(space, name="smac", output_directory=tmp, deterministic=opts["deterministic"],
                                n_trials=n, seed=seed)
            model = RandomForest(space, log_y=opts["log_y"], n_trees=opts["trees"], ratio_features=1.0,
                                 min_samples_split=opts["split"], min_samples_leaf=opts["leaf"], seed=seed,
                                 n_jobs=opts["n_jobs"], max_leaf_nodes=opts["leaves"], splitter=opts["splitter"])
            if opts["enumerate"]:
                from nexsearch.runners.selector import SmallSpaceSearch

                maximizer = SmallSpaceSearch(space, challengers=opts["challengers"], local_search_iterations=10,
                                             seed=seed)
            else:
                maximizer = HPO.get_acquisition_maximizer(scenario, challengers=opts["challengers"])
            callbacks = [ModelReport(trace, ks)] if opts["report"] == "model" else []
            return HPO(scenario, target, overwrite=True, logging_level=40, model=model, callbacks=callbacks,
                       acquisition_function=HPO.get_acquisition_function(scenario, xi=opts["xi"]),
                       initial_design=HPO.get_initial_design(scenario, n_configs=opts["initial_design"],
                                                             additional_configs=[space.get_default_configuration()]),
                       intensifier=HPO.get_intensifier(scenario, max_config_calls=opts["max_config_calls"]),
                       random_design=HPO.get_random_design(scenario, probability=opts["random_p"]),
                       acquisition_maximizer=maximizer,
                       config_selector=BatchedConfigSelector(scenario, retrain_after=opts["retrain_after"]))
        if opts["reeval"]:
            _reevaluating_run(trace, n, seed, evaluate, build, opts)
        else:
            _smac_run(trace, table, n, seed, evaluate, build)
    return run


def _reevaluating_run(trace, n: int, seed: int, evaluate, build, opts: dict[str, Any]) -> None:
    """The "reeval<m>" variants: SMAC through ask and tell, and every m-th call after the initial design re-runs
    the configuration with the lowest mean observed error (a new noise draw) instead of asking SMAC: a lucky
    call regresses to its mean, a good configuration collects calls. "confirm<c>": the leader is re-run
    whenever it has fewer than c calls (so a reported winner has c calls; re-runs only when the lead changes). "told": SMAC is told the re-runs too (its
    forest then sees the configuration's mean); otherwise only the winner rule (lowest mean) sees them."""
    import logging
    import tempfile

    from smac.runhistory import TrialInfo, TrialValue

    logging.getLogger("smac").setLevel(logging.ERROR)
    configs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        smac = build(lambda config, seed=0: 0.0, Path(tmp))
        for i in range(n):
            leader = trace.reported(len(trace.keys))[0] if trace.keys else None
            due = trace.keys.count(leader) < opts["confirm"] if opts["confirm"] else (i + 1) % opts["reeval"] == 0
            if i >= opts["initial_design"] + 1 and due:
                key = leader
                cost = evaluate(key)
                trace.add(key, cost)
                if opts["tell"]:
                    smac.tell(TrialInfo(configs[key], seed=seed + 1000 + i), TrialValue(cost=cost[0]), save=False)
                continue
            info = smac.ask()
            key = Table.key(dict(info.config))
            configs.setdefault(key, info.config)
            cost = evaluate(key)
            trace.add(key, cost)
            smac.tell(info, TrialValue(cost=cost[0]), save=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variants", nargs="+")
    p.add_argument("--table", default="cifar10")
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--exact", action="store_true")
    p.add_argument("--dump", help="append each seed's calls (table keys, observed errors) to this JSON-lines file, "
                                  "for winner rules scored offline (benchmarks/bo_winner.py)")
    args = p.parse_args()
    table = Table(args.table)
    ks = [args.k // 4, args.k // 2, args.k]
    for name in args.variants:
        rows, secs, top5 = [], [], []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            trace = run_one(runner(options(name), ks), table, args.k, seed, not args.exact)
            r = regrets(trace, table, ks)
            rows.append(r["regret"])
            top5.append(r["top5"])
            secs.append(trace.seconds)
            if args.dump:
                with open(args.dump, "a") as f:
                    f.write(json.dumps({"variant": name, "table": args.table, "seed": seed, "k": args.k,
                                        "keys": trace.keys, "costs": [c[0] for c in trace.costs]}) + "\n")
            print(json.dumps({"seed": seed, "variant": name, "regret": np.round(r["regret"], 2).tolist()}),
                  file=sys.stderr, flush=True)
        a = np.asarray(rows)
        print(json.dumps({"variant": name, "table": args.table, "ks": ks,
                          "seeds": [args.first_seed, args.first_seed + args.seeds - 1],
                          "mean": a.mean(0).round(3).tolist(),
                          "se": (a.std(0, ddof=1) / np.sqrt(len(a))).round(3).tolist() if len(a) > 1 else None,
                          "top5_mean": np.asarray(top5).mean(0).round(3).tolist(),
                          "per_seed": a.round(2).tolist(), "s_per_100": round(100 * np.mean(secs) / args.k, 2)}),
              flush=True)


if __name__ == "__main__":
    main()
