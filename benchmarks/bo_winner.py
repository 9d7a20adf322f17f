"""Winner rules for ``bo`` scored offline on recorded searches (docs/benchmarks.md, issue 20, third session).

    python benchmarks/bo_variants.py --table imagenet --seeds 6 --dump traces.jsonl enum+retrain1+rand0+init10
    python benchmarks/bo_winner.py traces.jsonl --ks 50,100,200

The search is not changed by the rule that names its winner, so one recorded search (the table keys it called
and the noisy errors it observed) scores every rule on the same calls. Rules, each after k calls:

* ``observed``: the configuration with the lowest mean observed error (today's ``results.incumbent``);
* ``shrink``: among the ``top`` configurations by observed mean, the one with the lowest posterior mean
  (n*obs/s2 + pred/t2) / (n/s2 + 1/t2): pred and t2 the mean and variance of a forest fitted on every
  *other* configuration's observed mean (leave one out; sklearn's extra trees, the forest SMAC's wraps, 10
  trees), s2 one call's noise estimated as the median squared leave-one-out residual of ``probe`` other
  configurations (model error included: an over-estimate);
* ``shrink-pooled``: the same with s2 = the pooled variance of repeated calls where there are >= 3 such
  configurations, else as ``shrink``;
* ``half``: the mean of obs and pred (s2 = t2 for every candidate);
* ``loo``: pred alone among the top candidates;
* ``most``: SMAC's incumbent: the lowest mean observed error among the configurations with the most calls (with
  one call per configuration the same as ``observed``; with ``det2``/``det3`` only those SMAC intensified).
Reads JSON lines (gzipped if the name ends in .gz). Prints one JSON line per (variant, table, rule):
regret (accuracy points) at each k, mean, s.e., per seed.
"""

from __future__ import annotations

import argparse
import gzip
import json

import numpy as np

from nexsearch.bench.optimizers import Table

RULES = ("observed", "shrink", "shrink-pooled", "half", "loo", "most")


def winners(keys: list[str], costs: list[float], k: int, seed: int, top: int = 10, probe: int = 20) -> dict[str, str]:
    from sklearn.ensemble import ExtraTreesRegressor

    seen: dict[str, list[float]] = {}
    for key, cost in zip(keys[:k], costs[:k]):
        seen.setdefault(key, []).append(cost)
    names = list(seen)
    X = np.asarray([[float(c) for c in key] for key in names])
    obs = np.asarray([np.mean(seen[key]) for key in names])
    n = np.asarray([len(seen[key]) for key in names], dtype=float)
    def loo(i: int) -> tuple[float, float]:
        rest = np.arange(len(names)) != i
        # SMAC's forest (random split points, every feature, no bootstrap, leaf 1), its spread across trees
        model = ExtraTreesRegressor(n_estimators=10, min_samples_split=2, min_samples_leaf=1, max_features=1.0,
                                    random_state=seed, n_jobs=1).fit(X[rest], obs[rest])
        per_tree = np.asarray([tree.predict(X[i:i + 1])[0] for tree in model.estimators_])
        return float(per_tree.mean()), max(float(per_tree.var()), 1e-10)

    order = np.argsort(obs, kind="stable")
    cand = [int(i) for i in order[:top]]
    rng = np.random.default_rng(seed)
    others = rng.choice(order[top:], size=min(probe, len(order) - top), replace=False)
    s2 = max(float(np.median([(obs[i] - loo(int(i))[0]) ** 2 for i in others])), 1e-8)
    repeated = [np.var(seen[key], ddof=1) for key in names if len(seen[key]) >= 2]
    s2p = float(np.mean(repeated)) if len(repeated) >= 3 else s2
    pred = {i: loo(i) for i in cand}

    def post(i: int, s: float) -> float:
        m, t2 = pred[i]
        return (n[i] * obs[i] / s + m / t2) / (n[i] / s + 1 / t2)

    pick = {"observed": cand[0], "shrink": min(cand, key=lambda i: post(i, s2)),
            "shrink-pooled": min(cand, key=lambda i: post(i, s2p)),
            "half": min(cand, key=lambda i: (obs[i] + pred[i][0]) / 2), "loo": min(cand, key=lambda i: pred[i][0]),
            "most": min((int(i) for i in order if n[i] == n.max()), key=lambda i: obs[i])}
    return {rule: names[i] for rule, i in pick.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("traces")
    p.add_argument("--ks", default="50,100,200")
    args = p.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    opener = gzip.open if args.traces.endswith(".gz") else open
    with opener(args.traces, "rt") as f:
        runs = [json.loads(line) for line in f]
    tables: dict[str, Table] = {}
    for variant, name in dict.fromkeys((r["variant"], r["table"]) for r in runs):
        table = tables.setdefault(name, Table(name))
        rows: dict[str, list[list[float]]] = {rule: [] for rule in RULES}
        seeds = []
        for r in (r for r in runs if (r["variant"], r["table"]) == (variant, name)):
            seeds.append(r["seed"])
            picks = [winners(r["keys"], r["costs"], k, r["seed"]) for k in ks]
            for rule in RULES:
                rows[rule].append([table.best - table.mean[pk[rule]] for pk in picks])
        for rule in RULES:
            a = np.asarray(rows[rule])
            print(json.dumps({"variant": variant, "table": name, "rule": rule, "seeds": seeds, "ks": ks,
                              "mean": a.mean(0).round(3).tolist(),
                              "se": (a.std(0, ddof=1) / np.sqrt(len(a))).round(3).tolist() if len(a) > 1 else None,
                              "per_seed": a.round(2).tolist()}), flush=True)


if __name__ == "__main__":
    main()
