"""SMAC's configuration selector with a batched incumbent estimate.

SMAC 2.4.1's ``ConfigSelector._get_x_best`` predicts the surrogate's mean for every evaluated
configuration one at a time: one random-forest call (with its joblib start-up) per
configuration at every retraining, which makes SMAC's overhead grow linearly with the run's
history. This subclass makes the same choice -- the evaluated configuration with the lowest
predicted mean, the first one on ties -- from a single batched prediction.

``fast_forest``: SMAC's random forest, fitted ~50x faster (see ``RandomForest``).
"""

from __future__ import annotations

import numpy as np
from smac.acquisition.maximizer import LocalAndSortedRandomSearch
from smac.main.config_selector import ConfigSelector
from smac.model.random_forest import random_forest


class BatchedConfigSelector(ConfigSelector):
    def _get_x_best(self, X: np.ndarray) -> tuple[np.ndarray, float]:
        if not self._predict_x_best:
            return super()._get_x_best(X)
        means, _ = self._model.predict_marginalized(X)  # type: ignore[union-attr]
        means = np.asarray(means).reshape(len(X), -1)[:, 0]
        i = int(np.argmin(means))  # argmin keeps the first of equal values, as SMAC's stable sort does
        return X[i], float(means[i])




class RandomForest(random_forest.RandomForest):
    """SMAC's random forest fitted in one thread and without scikit-learn's best-first builder. SMAC 2.4.1 hands
    scikit-learn ``max_leaf_nodes=2**20``, which switches it to that builder; it sets up for 2**20 leaves and
    takes ~0.4 s per tree however few the trials (10 trees per retraining). A tree holds at most one leaf per
    trial, so the cap never binds: without it scikit-learn grows the same kind of fully grown trees depth-first
    in ~2 ms. joblib's threads cost more than they save on 10 small trees. The class name and the options SMAC
    records in its scenario (and compares on resume) stay SMAC's own, so that runs started before resume."""

    def _train(self, X: np.ndarray, y: np.ndarray):
        opts, self._rf_opts = self._rf_opts, dict(self._rf_opts, n_jobs=1, max_leaf_nodes=None)
        try:
            return super()._train(X, y)
        finally:
            self._rf_opts = opts


def fast_forest(scenario) -> RandomForest:
    """The forest of SMAC's HPO facade (10 trees, all features, log cost), fitted fast (see ``RandomForest``)."""
    return RandomForest(scenario.configspace, log_y=True, n_trees=10, ratio_features=1.0, min_samples_split=2,
                        min_samples_leaf=1, instance_features=scenario.instance_features, seed=scenario.seed)


ENUMERATION_LIMIT = 1_000_000  # combinations of the dimensions' values (conditions aside) scored at most


class SmallSpaceSearch(LocalAndSortedRandomSearch):
    """SMAC's acquisition maximizer (local search from the best configurations and a sorted random sample) that, on
    a space small enough to enumerate -- only categorical/ordinal dimensions, conditions allowed, no forbidden
    clauses, at most ``limit`` combinations of values -- scores every valid configuration instead: the
    acquisition's maximum, exactly, in one batched forest call (NAS-Bench-201's 15,625 cells; nexsearch's own
    space, 125,280 configurations: ~0.1 s, the grid built once in ~1 s)."""

    def __init__(self, configspace, *, limit: int = ENUMERATION_LIMIT, **kwargs) -> None:
        super().__init__(configspace, **kwargs)
        self._grid: np.ndarray | None = valid_grid(configspace, limit)

    @property
    def meta(self) -> dict:
        return {**super().meta, "enumerated": None if self._grid is None else len(self._grid)}

    def _maximize(self, previous_configs, n_points: int, _sorted: bool = False):
        if self._grid is None:
            return super()._maximize(previous_configs, n_points)
        from ConfigSpace import Configuration

        assert self._acquisition_function is not None
        acq = np.asarray(self._acquisition_function._compute(self._grid)).reshape(-1)
        acq[np.isnan(acq)] = -np.finfo(float).max
        # the evaluated configurations are skipped by the selector: hand over enough of the best to pass them
        n = min(len(self._grid), n_points, len(previous_configs) + 50)
        ties = self._rng.rand(len(acq))
        order = np.lexsort((ties, -acq))[:n]
        out = []
        for i in order:
            config = Configuration(self._configspace, vector=self._grid[i])
            config.origin = "Acquisition Function Maximizer: Enumeration"
            out.append((float(acq[i]), config))
        return out


def enumerable(space, limit: int = ENUMERATION_LIMIT) -> bool:
    """Whether ``SmallSpaceSearch`` scores every configuration of ``space`` (else it is SMAC's own search)."""
    return _sizes(space, limit) is not None


def _sizes(space, limit: int) -> list[int] | None:
    """The dimensions' numbers of values, for a space of categorical/ordinal dimensions with equals / in conditions
    only, no forbidden clauses and at most ``limit`` combinations of values (None else)."""
    from ConfigSpace import CategoricalHyperparameter, OrdinalHyperparameter

    hps = list(space.values())
    if not hps or space.forbidden_clauses or not all(_positive(c) for c in space.conditions):
        return None
    if not all(isinstance(hp, (CategoricalHyperparameter, OrdinalHyperparameter)) for hp in hps):
        return None
    sizes = [int(hp.size) for hp in hps]
    return sizes if float(np.prod(sizes, dtype=float)) <= limit else None


def _positive(condition) -> bool:
    """An equals / in condition, or a conjunction of them: one that an inactive (NaN) parent never satisfies."""
    from ConfigSpace.conditions import AndConjunction, EqualsCondition, InCondition, OrConjunction

    if isinstance(condition, (AndConjunction, OrConjunction)):
        return all(_positive(c) for c in condition.components)
    return isinstance(condition, (EqualsCondition, InCondition))


def valid_grid(space, limit: int = ENUMERATION_LIMIT) -> np.ndarray | None:
    """Every valid configuration of ``space`` once, as ConfigSpace's vectors (an inactive dimension: NaN), or None
    where ``enumerable`` says no. Conditions are ConfigSpace's own (``satisfied_by_vector_array``; a NaN parent
    satisfies none), applied until nothing changes, so that conditions on conditional dimensions hold too."""
    sizes = _sizes(space, limit)
    if sizes is None:
        return None
    mesh = np.meshgrid(*[np.arange(s, dtype=float) for s in sizes], indexing="ij")
    grid = np.stack([m.reshape(-1) for m in mesh], axis=1)
    if not space.conditions:
        return grid
    column = {name: i for i, name in enumerate(space.keys())}
    inactive = np.zeros(grid.shape, dtype=bool)
    for _ in range(len(space.conditions)):  # until a fixed point: a child of an inactive parent is inactive too
        before = inactive.sum()
        for cond in space.conditions:
            inactive[:, column[cond.child.name]] |= ~np.asarray(cond.satisfied_by_vector_array(grid.T), dtype=bool)
        grid[inactive] = np.nan
        if inactive.sum() == before:
            break
    # rows that differ only in inactive values are one configuration: keep the first of each (a mixed-radix key)
    digits = np.where(np.isnan(grid), 0, grid + 1).astype(np.int64)
    _, first = np.unique(digits @ np.cumprod([1] + [s + 1 for s in sizes[:-1]], dtype=np.int64), return_index=True)
    return grid[np.sort(first)]
