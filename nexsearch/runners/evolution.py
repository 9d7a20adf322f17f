"""``optimizer: evolution``: regularized evolution (Real et al., 2019) as a SMAC configuration selector.

The classic NAS baseline, run through SMAC's facade so that the run directory, the runhistory, resume,
``status``, analysis and export work as for every other optimizer. The first ``population`` configurations
are random (the default configuration first); after that each new configuration is a mutation of the best
of ``sample`` configurations drawn from the population, the ``population`` most recently evaluated
configurations (older ones age out, whatever their cost). A mutation is a random neighbour in ConfigSpace's
one-exchange neighbourhood, which changes one hyperparameter and keeps the conditions of the space (a child
whose change deactivates or activates other hyperparameters is a valid configuration).

Resumable without state of its own: the population is read from the runhistory (trial order) at every step,
and each child's random stream is seeded from the experiment's seed and the number of configurations so far,
so a resumed run makes the choices the uninterrupted run would have made.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from ConfigSpace import Configuration
from ConfigSpace.util import get_one_exchange_neighbourhood
from smac.main.config_selector import ConfigSelector
from smac.runhistory.enumerations import StatusType

POPULATION = 50  # Real et al.'s NAS-Bench-201 setting (and the issue's baseline): population 50, sample 10
SAMPLE = 10
MAX_TRIES = 50  # mutations tried before a random configuration is taken instead (a tiny space, all seen)


class EvolutionSelector(ConfigSelector):
    """Regularized evolution over ``scenario.configspace`` (single objective: SMAC's cost of each trial)."""

    def __init__(self, scenario, population: int | None = None, sample: int | None = None) -> None:
        super().__init__(scenario, retrain_after=1)
        self._population_size = population or POPULATION
        self._sample_size = sample or SAMPLE

    @property
    def meta(self) -> dict:
        return {**super().meta, "population": self._population_size, "sample": self._sample_size}

    def population(self) -> list[tuple[Configuration, float]]:
        """The last ``population`` distinct configurations with a finished trial, in trial order, each with the
        mean cost of its finished trials (a crash counts with SMAC's crash cost)."""
        assert self._runhistory is not None
        rh = self._runhistory
        costs: dict[int, list[float]] = {}
        for key in rh:  # insertion order: the order in which trials were started
            value = rh[key]
            if value.status != StatusType.RUNNING:
                costs.setdefault(key.config_id, []).append(float(np.ravel(value.cost)[0]))
        last = list(costs)[-self._population_size:]
        return [(rh.get_config(i), float(np.mean(costs[i]))) for i in last]

    def _mutate(self, parent: Configuration, rng: np.random.Generator) -> Configuration:
        neighbours = list(get_one_exchange_neighbourhood(parent, seed=int(rng.integers(2**31 - 1))))
        return neighbours[int(rng.integers(len(neighbours)))] if neighbours else parent

    def _child(self, rng: np.random.Generator) -> Configuration:
        """A mutation of a tournament winner not evaluated before (a random configuration when none is found)."""
        population = self.population()
        for _ in range(MAX_TRIES if population else 0):
            picks = rng.choice(len(population), size=min(self._sample_size, len(population)), replace=False)
            parent = min((population[i] for i in sorted(picks)), key=lambda pc: pc[1])[0]
            child = self._mutate(parent, rng)
            if child not in self._processed_configs:
                child.origin = "Regularized evolution (mutation)"
                return child
        for _ in range(MAX_TRIES):
            child = self._scenario.configspace.sample_configuration()
            if child not in self._processed_configs:
                child.origin = "Regularized evolution (random)"
                return child
        from smac.main.exceptions import ConfigurationSpaceExhaustedException

        raise ConfigurationSpaceExhaustedException()

    def __iter__(self) -> Iterator[Configuration]:
        assert self._runhistory is not None
        self._processed_configs = self._runhistory.get_configs()
        self._call_callbacks_on_start()
        for config in self._initial_design_configs:
            if config not in self._processed_configs:
                self._processed_configs.append(config)
                self._call_callbacks_on_end(config)
                yield config
                self._call_callbacks_on_start()
        while True:  # the stream of each child from the seed and the configurations so far: a resume picks alike
            child = self._child(np.random.default_rng([int(self._scenario.seed), len(self._processed_configs)]))
            self._processed_configs.append(child)
            self._call_callbacks_on_end(child)
            yield child
            self._call_callbacks_on_start()


def evolution_kwargs(scenario, space) -> dict:
    """The facade's components of ``optimizer: evolution`` (SMAC's RandomFacade carries it: no surrogate):
    an initial population of random configurations (the default configuration first), one call per
    configuration, and the evolution selector."""
    from smac import RandomFacade
    from smac.initial_design import RandomInitialDesign

    n = min(POPULATION - 1, max(scenario.n_trials - 1, 0))
    initial = RandomInitialDesign(scenario, n_configs=n, max_ratio=1.0,
                                  additional_configs=[space.get_default_configuration()])
    return dict(initial_design=initial, intensifier=RandomFacade.get_intensifier(scenario, max_config_calls=1),
                config_selector=EvolutionSelector(scenario))
