"""Hyperparameter importance through DeepCAVE (imported here only: it is an analysis-only dependency).

DeepCAVE's SMAC3 converter opens the run's ``smac/<seed>`` folder; its own evaluators
(``deepcave.evaluators.lpi.LPI``, ``deepcave.evaluators.fanova.fANOVA``) compute the importances.
Verified traps: DeepCAVE adds a "Time" objective, so the cost objective is passed explicitly;
its budget ``None`` would mean the highest budget only, which nexsearch says out loud.

Two defects of DeepCAVE 1.4.1 are mended here, because they made the importances wrong (found by
the known-truth test, ``tests/test_importance_truth.py``: a run whose error depends on ``block``
and ``kernel_size`` only):

* Inactive hyperparameters (``expansion`` of an Xception block) are encoded one way to train the
  forest (an extra category) and another way to predict with it (the default value), so LPI's
  predictions for the neighbours of the incumbent landed in the wrong leaves; and as an extra
  category, an inactive ``expansion`` carries exactly the information of ``block``, so fANOVA
  split the importance of ``block`` between the two. ``_Run`` encodes an inactive hyperparameter
  as its default value everywhere (ConfigSpace's ``impute_inactive_values``, which DeepCAVE's LPI
  uses to predict): it then carries no information of its own, and training and prediction agree.
* LPI's variance over the one-exchange neighbourhood of the incumbent leaves out the incumbent
  itself, so a binary hyperparameter (one neighbour: variance 0) never had any importance. LPI
  (Biedenkapp et al., 2018) includes it; ``_LPI`` puts it back.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nexsearch.errors import UserError
from nexsearch.runners.smac_state import snapshot_smac_dir

if TYPE_CHECKING:
    from nexsearch.analysis.run import Run

METHODS = ("lpi", "fanova")
INSTALL_HINT = (
    "DeepCAVE is not installed: run `make install`, or pip install swig==4.0.2, then "
    "pip install --no-build-isolation pyrfr==0.9.0, then pip install --no-deps --ignore-requires-python "
    "deepcave==1.4.1 jsonlines"
)
COMBINED = "combined"


def _deepcave() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from ConfigSpace import Configuration
            from ConfigSpace.util import impute_inactive_values
            from deepcave.evaluators.fanova import fANOVA
            from deepcave.evaluators.lpi import LPI
            from deepcave.runs.converters.smac3v2 import SMAC3v2Run
    except ImportError:
        raise UserError(INSTALL_HINT) from None

    class _Run(SMAC3v2Run):
        """DeepCAVE's SMAC3 run, encoding an inactive hyperparameter as its default value (see above)."""

        def encode_config(self, config: Any, specific: bool = False) -> list:
            if not specific:
                return super().encode_config(config, specific)
            if not isinstance(config, Configuration):
                config = Configuration(self.configspace, self.configs[config] if isinstance(config, int) else config)
            return list(impute_inactive_values(config).get_array())

    class _LPI(LPI):
        """DeepCAVE's LPI, with the incumbent in its own neighbourhood (see above)."""

        def _get_neighborhood(self) -> dict[str, list]:
            neighborhood = super()._get_neighborhood()
            for name, (vectors, values) in neighborhood.items():
                vectors = np.append(vectors, self.incumbent_array[self.cs.index_of[name]])
                values = [*values, self.incumbent[name]]
                order = np.argsort(vectors, kind="stable")
                neighborhood[name] = [vectors[order], [values[i] for i in order]]
            return neighborhood

    def open_run(path: Path) -> Any:
        run = SMAC3v2Run.from_path(path)
        run.__class__ = _Run  # from_path builds a SMAC3v2Run whatever class it is called on
        return run

    return open_run, {"lpi": _LPI, "fanova": fANOVA}


def _budget_label(b: float) -> Any:
    return COMBINED if b == -1 else (None if b in (0, 0.0) else float(b))


def compute_importance(run: "Run", method: str = "lpi", budget: float | str | None = None, seed: int = 0,
                       n_trees: int = 10) -> pd.DataFrame:
    if method not in METHODS:
        raise UserError(f"unknown importance method '{method}': choose lpi or fanova")
    ok = run.successful
    if len(ok) < 2 or ok[run.objectives[0]].nunique() < 2:
        raise UserError(
            f"importance needs at least two successful trials with different errors; {run.path} has {len(ok)}"
        )
    open_run, evaluators = _deepcave()
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        # DeepCAVE opens the files by path: give it a consistent copy (the run may be running or killed)
        dc_run = open_run(snapshot_smac_dir(run.smac_dir, Path(tmp) / run.smac_dir.name))
        # The cost objective by name: never DeepCAVE's added "Time" objective.
        named = [o for o in dc_run.get_objectives() if o.name == run.objectives[0]]
        objective = named[0] if named else dc_run.get_objectives()[0]
        all_budgets = dc_run.get_budgets(include_combined=True)
        if budget is None:
            budgets = [max(b for b in all_budgets if b != -1)]
        elif budget == "all":
            budgets = all_budgets
        elif budget == COMBINED:
            budgets = [-1] if -1 in all_budgets else [max(all_budgets)]
        else:
            matches = [b for b in all_budgets if b != -1 and abs(b - float(budget)) < 1e-9]
            if not matches:
                raise UserError(f"budget {budget} not in this run: it has {[b for b in all_budgets if b != -1]}")
            budgets = matches
        names = list(dc_run.configspace.keys())
        frames = []
        for b in budgets:
            n_at_budget = len(dc_run.get_all_costs(budget=b)) if b != -1 else len(ok)
            if n_at_budget < 2:
                continue  # a fidelity with a single configuration has no importance to speak of
            evaluator = evaluators[method](dc_run)
            evaluator.calculate(objectives=objective, budget=b, seed=seed, n_trees=n_trees)
            imp = evaluator.get_importances(names)
            frames.append(pd.DataFrame({
                "hyperparameter": list(imp),
                "importance": [float(v[0]) for v in imp.values()],
                "variance": [float(v[1]) for v in imp.values()],
                "budget": _budget_label(b),
            }))
    if not frames:
        raise UserError("no budget of this run has two or more evaluated configurations: importance is undefined")
    df = pd.concat(frames, ignore_index=True)
    if not np.isfinite(df[["importance", "variance"]].to_numpy()).all():
        raise UserError("DeepCAVE returned non-finite importances for this run")
    return df.sort_values(["budget", "importance"], ascending=[True, False], key=_sort_key).reset_index(drop=True)


def _sort_key(col: pd.Series) -> pd.Series:
    if col.name == "budget":
        return col.map(lambda b: float("inf") if b == COMBINED else (-1.0 if b is None else float(b)))
    return col
