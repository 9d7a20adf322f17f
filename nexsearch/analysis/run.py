"""Run histories as pandas: ``load_run(path)`` and ``load_runs([...])``.

Reads a consistent snapshot of a finished or a running run and never writes to it: SMAC's
runhistory (retried if caught half-written), the trial log (a partial last line is ignored),
the experiment and the state file.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import yaml

from nexsearch.errors import UserError
from nexsearch.objectives.table import is_maximised, record_columns
from nexsearch.results import at_top_budget, cost_vector, incumbent, non_dominated
from nexsearch.rundir import read_json_retry
from nexsearch.runview import RunView
from nexsearch.search_space.space import SPACE


def _key(config: dict[str, Any], seed: Any, budget: Any) -> str:
    b = None if budget in (None, 0, 0.0) else float(budget)
    return json.dumps([config, int(seed) if seed is not None else None, b], sort_keys=True)


class Run:
    """One nexsearch run directory (or a bare SMAC output directory)."""

    def __init__(self, path: str | Path):
        self.view = RunView(path)
        rd, history = self.view.rd, self.view.history
        self.path = rd.path
        self.smac_dir = history.folder  # the optimizer's own files (what DeepCAVE opens)
        rh, self._configs, self.objectives = history.trials, history.configs, list(history.objectives)
        # RUNNING entries are no results: in flight, or interrupted (a kill, the budget's end) and evaluated
        # again when the run resumes. They are counted apart, as ``nexsearch status`` does.
        self._rh = [t for t in rh if t["status_name"] != "running"]
        self.unfinished = len(rh) - len(self._rh)
        if self.objectives == ["cost"]:
            self.objectives = ["error"]
        self.records = rd.read_trials()  # a line being written right now is left out
        self.experiment: dict[str, Any] = yaml.safe_load(rd.experiment_text()) if rd.is_run() else {}
        self.state: dict[str, Any] = read_json_retry(rd.state) if rd.state.exists() else {}
        self.name = self.experiment.get("name") or self.path.name

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, trials={len(self._rh)}, objectives={self.objectives})"

    @cached_property
    def trials(self) -> pd.DataFrame:
        """One row per trial: hyperparameters, budget, seed, status, objectives, times, metrics, reason."""
        by_key: dict[str, dict[str, Any]] = {}
        for rec in self.records:
            if "config" in rec:
                by_key[_key(rec["config"], rec.get("seed"), rec.get("budget"))] = rec
        names = list(SPACE.keys())
        rows = []
        for t in self._rh:
            config = self._configs.get(str(t["config_id"]), {})
            info = t.get("additional_info") or {}
            rec = by_key.get(_key(config, t.get("seed"), t.get("budget")), {})
            costs = cost_vector(t["cost"])
            row: dict[str, Any] = {"trial": t["trial"], "config_id": t["config_id"]}
            row.update({n: config.get(n, np.nan) for n in names})
            row.update(budget=t.get("budget") or np.nan, seed=t.get("seed"), status=t["status_name"],
                       trial_status=rec.get("status", info.get("status", "ok" if t["status_name"] == "success" else "")))
            for name, value in zip(self.objectives, costs):
                row[name] = value
            row.update(start_time=t.get("starttime"), end_time=t.get("endtime"))
            row["duration_s"] = (t["endtime"] - t["starttime"]) if t.get("endtime") and t.get("starttime") else np.nan
            for col in record_columns():
                value = info.get(col, rec.get(col))
                row[col] = np.nan if value is None else value
            row["reason"] = rec.get("reason") or info.get("error", "")
            row["curve"] = rec.get("curve") or info.get("curve") or []
            rows.append(row)
        df = pd.DataFrame(rows)
        if not df.empty:  # search wall time at the end of each trial (running ones have none)
            df["wall_time_s"] = [self.elapsed(t) if t else np.nan for t in df["end_time"]]
        return df

    @property
    def successful(self) -> pd.DataFrame:
        t = self.trials
        return t[t["status"] == "success"] if not t.empty else t

    @property
    def failed(self) -> pd.DataFrame:
        """Trials that ended without a result (crashed, timed out, out of memory), with their reasons."""
        t = self.trials
        return t[~t["status"].isin(["success", "running"])] if not t.empty else t

    @property
    def multi_fidelity(self) -> bool:
        return self.trials["budget"].nunique() > 1 if not self.trials.empty else False

    @property
    def top_budget(self) -> float:
        """The highest budget a trial succeeded at (NaN for a run without budgets)."""
        budgets = self.successful["budget"]
        return float(budgets.max()) if budgets.notna().any() else np.nan

    def at_top_budget(self) -> pd.DataFrame:
        """Successful trials at the highest budget reached: the ones comparable with the incumbent."""
        ok = self._require_success()
        return ok.iloc[[t["row"] for t in at_top_budget(self._as_trials(ok))]]

    def _as_trials(self, rows: pd.DataFrame) -> list[dict[str, Any]]:
        """Rows as the plain trials ``nexsearch.results`` takes (number, budget, SMAC's cost vector)."""
        return [{"trial": int(t), "budget": b, "config_id": cid, "cost": list(c), "row": i} for i, (t, b, cid, *c)
                in enumerate(rows[["trial", "budget", "config_id", *self.objectives]].itertuples(index=False))]

    def _require_success(self) -> pd.DataFrame:
        ok = self.successful
        if ok.empty:
            raise UserError(f"{self.path} has no successful trial yet: nothing to analyse")
        return ok

    @property
    def incumbent(self) -> dict[str, Any]:
        """The best configuration at the highest budget reached, with its metrics."""
        ok = self._require_success()
        best = ok.iloc[incumbent(self._as_trials(ok))["row"]]
        config = self._configs.get(str(best["config_id"]), {})  # as SMAC stored it (no NaN-widened dtypes)
        metrics = {k: best[k] for k in [*self.objectives, "budget", *record_columns()] if k in best}
        return {"trial": int(best["trial"]), "config": _plain(config), "metrics": _plain(metrics)}

    def elapsed(self, t: float) -> float:
        """Search wall time at epoch time ``t``: time inside the run's sessions (downtime between resumes left out)."""
        sessions = self.state.get("sessions") or []
        if not sessions:  # a bare SMAC directory: time since its first trial started
            start = min((r["starttime"] for r in self._rh if r.get("starttime")), default=t)
            return float(t - start)
        total = 0.0
        for s in sessions:
            end = s.get("ended_at", t)
            total += max(0.0, min(end, t) - s["started_at"])
        return total

    @property
    def trajectory(self) -> pd.DataFrame:
        """Best-so-far error over search wall time: successful trials by end time.

        The incumbent column follows the trials at the run's highest budget (every trial of a
        single-fidelity run), so its last value is the incumbent's error; in a multi-fidelity run
        it is empty (NaN) until the first trial at that budget ends.
        """
        ok = self._require_success().sort_values(["end_time", "trial"])
        err = self.objectives[0]
        df = pd.DataFrame({
            "wall_time_s": ok["wall_time_s"].to_numpy(),
            "trial": ok["trial"].to_numpy(),
            "budget": ok["budget"].to_numpy(),
            err: ok[err].to_numpy(),
        })
        top = self.top_budget
        counted = df[err].where(df["budget"] == top) if not np.isnan(top) else df[err]
        df["incumbent_" + err] = counted.cummin()
        df["run"] = self.name
        return df

    def pareto_front(self, objectives: list[str] | None = None) -> pd.DataFrame:
        """Non-dominated successful trials over ``objectives`` (default: the run's own), at the highest budget.

        Every objective is minimised except those the objective table maximises (throughput).
        """
        ok = self.at_top_budget()
        objs = objectives or (self.objectives if len(self.objectives) > 1 else [self.objectives[0], "params"])
        for o in objs:
            if o not in ok or ok[o].isna().all():
                raise UserError(f"objective '{o}' is not recorded for this run")
        ok = ok.dropna(subset=objs)
        keep = non_dominated(ok[objs].to_numpy(dtype=float).tolist(), [is_maximised(o) for o in objs])
        return ok.iloc[keep].sort_values([*objs, "trial"])

    @property
    def design_space(self) -> dict[str, Any]:
        """SMAC's saved configuration space (hyperparameters, conditions, forbidden clauses)."""
        path = self.smac_dir / "configspace.json"
        space = read_json_retry(path) if path.exists() else {}
        return {k: space.get(k) for k in ("hyperparameters", "conditions", "forbiddens")}

    @property
    def used_s(self) -> float:
        """Search wall time used so far (the state file's count; else the end of the last trial)."""
        if self.state.get("used_s") is not None:
            return float(self.state["used_s"])
        ends = self.trials["wall_time_s"].dropna() if not self.trials.empty else []
        return float(max(ends)) if len(ends) else 0.0

    def budget_table(self) -> pd.DataFrame:
        """Per budget (fidelity): trials, successful, failed, distinct configurations, best error."""
        t = self.trials[self.trials["status"] != "running"]
        err = self.objectives[0]
        rows = []
        for budget, g in t.groupby(t["budget"].fillna(-1.0), sort=True):
            ok = g[g["status"] == "success"]
            rows.append({"budget": np.nan if budget == -1.0 else budget, "trials": len(g), "successful": len(ok),
                         "failed": len(g) - len(ok), "configurations": g["config_id"].nunique(),
                         f"best {err}": ok[err].min() if len(ok) else np.nan})
        return pd.DataFrame(rows)

    def budget_correlation(self) -> pd.DataFrame:
        """Spearman rank correlation of the error between every two budgets, over the configurations
        that succeeded at both (does a configuration good at few epochs stay good at more?)."""
        ok = self.successful
        err = self.objectives[0]
        by_budget = ok.dropna(subset=["budget"]).groupby(["config_id", "budget"])[err].mean().unstack("budget")
        budgets = sorted(by_budget.columns) if not by_budget.empty else []
        rows = []
        for i, low in enumerate(budgets):
            for high in budgets[i + 1:]:
                both = by_budget[[low, high]].dropna()
                rho = both[low].rank().corr(both[high].rank()) if len(both) >= 3 else np.nan
                rows.append({"budget": low, "compared with budget": high, "configurations": len(both),
                             "spearman": rho})
        return pd.DataFrame(rows, columns=["budget", "compared with budget", "configurations", "spearman"])

    @property
    def evaluation(self) -> pd.DataFrame:
        """``nexsearch evaluate``'s table: one row per candidate and evaluation (epochs), best first, with mean and
        std of validation and test error, params, MACs, throughput, search cost, winner (empty without one)."""
        return self.view.evaluation_frame()

    def importance(self, method: str = "lpi", budget: float | str | None = None, seed: int = 0) -> pd.DataFrame:
        """Hyperparameter importance by DeepCAVE's own evaluators on DeepCAVE's SMAC3 converter.

        ``method``: ``lpi`` (local parameter importance) or ``fanova``. ``budget``: ``None`` for the
        highest budget, a number for that fidelity, ``"all"`` for one block per budget.
        Returns columns hyperparameter, importance, variance, budget, sorted by importance.
        """
        from nexsearch.analysis.importance import compute_importance

        return compute_importance(self, method=method, budget=budget, seed=seed)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in d.items()}


def load_run(path: str | Path) -> Run:
    """A run directory as a :class:`Run` (trials DataFrame, incumbent, trajectory, Pareto front, importance)."""
    return Run(path)


class Runs:
    """Several runs stacked for comparison (e.g. SMAC against random search) over one design space."""

    def __init__(self, runs: Iterable[Run]):
        self.runs = list(runs)
        for r in self.runs[1:]:
            if r.design_space != self.runs[0].design_space:
                raise UserError(f"{r.path} searched another design space than {self.runs[0].path}: "
                                "compare only runs of the same design space")
        names = [r.name for r in self.runs]
        for i, r in enumerate(self.runs):  # make run labels unique
            if names.count(r.name) > 1:
                r.name = f"{r.name} ({r.path.name})" if names.count(f"{r.name} ({r.path.name})") == 0 else f"{r.name} #{i}"

    @property
    def trials(self) -> pd.DataFrame:
        return pd.concat([r.trials.assign(run=r.name) for r in self.runs], ignore_index=True)

    @property
    def trajectory(self) -> pd.DataFrame:
        return pd.concat([r.trajectory for r in self.runs], ignore_index=True)


def load_runs(paths: Iterable[str | Path]) -> Runs:
    return Runs(load_run(p) for p in paths)
