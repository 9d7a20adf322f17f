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


class SmallSpaceSearch(LocalAndSortedRandomSearch):
    """SMAC's acquisition maximizer (local search from the best configurations and a sorted random sample) that, on
    a space small enough to enumerate -- only categorical/ordinal dimensions, no conditions or forbidden clauses,
    at most ``limit`` configurations -- scores every configuration instead: the acquisition's maximum, exactly,
    for about the cost of SMAC's own random sample (NAS-Bench-201's 15,625 cells: one batched forest call)."""

    def __init__(self, configspace, *, limit: int = 100_000, **kwargs) -> None:
        super().__init__(configspace, **kwargs)
        self._limit = limit
        self._grid: np.ndarray | None = _grid(configspace, limit)

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


def enumerable(space, limit: int = 100_000) -> bool:
    """Whether ``SmallSpaceSearch`` scores every configuration of ``space`` (else it is SMAC's own search)."""
    return _grid(space, limit) is not None


def _grid(space, limit: int) -> np.ndarray | None:
    """Every configuration's vector of a small unconditional space of categorical/ordinal dimensions (None else)."""
    from ConfigSpace import CategoricalHyperparameter, OrdinalHyperparameter

    hps = list(space.values())
    if not hps or space.conditions or space.forbidden_clauses:
        return None
    sizes = []
    for hp in hps:
        if isinstance(hp, CategoricalHyperparameter):
            sizes.append(len(hp.choices))
        elif isinstance(hp, OrdinalHyperparameter):
            sizes.append(len(hp.sequence))
        else:
            return None
    if int(np.prod(sizes, dtype=float)) > limit:
        return None
    mesh = np.meshgrid(*[np.arange(s, dtype=float) for s in sizes], indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)
