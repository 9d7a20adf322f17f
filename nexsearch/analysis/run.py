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
from nexsearch.runners.status import find_smac_dir, load_runhistory, read_json_retry
from nexsearch.search_space.space import SPACE

RECORD_COLUMNS = ("train_time_s", "params", "macs", "throughput", "latency_ms", "peak_memory_mb", "epochs_run",
                  "val_loss")


def _key(config: dict[str, Any], seed: Any, budget: Any) -> str:
    b = None if budget in (None, 0, 0.0) else float(budget)
    return json.dumps([config, int(seed) if seed is not None else None, b], sort_keys=True)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return records


class Run:
    """One nexsearch run directory (or a bare SMAC output directory)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"{self.path} does not exist or is not a directory: pass a run directory")
        self.smac_dir = find_smac_dir(self.path)
        self._rh, self._configs, self.objectives = load_runhistory(self.smac_dir)
        if self.objectives == ["cost"]:
            self.objectives = ["error"]
        self.records = _read_jsonl(self.path / "trials.jsonl")
        exp_path = self.path / "experiment.yaml"
        self.experiment: dict[str, Any] = yaml.safe_load(exp_path.read_text()) if exp_path.exists() else {}
        state_path = self.path / "nexsearch.json"
        self.state: dict[str, Any] = read_json_retry(state_path) if state_path.exists() else {}
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
            costs = t["cost"] if isinstance(t["cost"], list) else [t["cost"]]
            row: dict[str, Any] = {"trial": t["trial"], "config_id": t["config_id"]}
            row.update({n: config.get(n, np.nan) for n in names})
            row.update(budget=t.get("budget") or np.nan, seed=t.get("seed"), status=t["status_name"],
                       trial_status=rec.get("status", info.get("status", "ok" if t["status_name"] == "success" else "")))
            for name, value in zip(self.objectives, costs):
                row[name] = value
            row.update(start_time=t.get("starttime"), end_time=t.get("endtime"))
            row["duration_s"] = (t["endtime"] - t["starttime"]) if t.get("endtime") and t.get("starttime") else np.nan
            for col in RECORD_COLUMNS:
                value = info.get(col, rec.get(col))
                row[col] = np.nan if value is None else value
            row["reason"] = rec.get("reason") or info.get("error", "")
            row["curve"] = rec.get("curve") or info.get("curve") or []
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def successful(self) -> pd.DataFrame:
        t = self.trials
        return t[t["status"] == "success"] if not t.empty else t

    def _require_success(self) -> pd.DataFrame:
        ok = self.successful
        if ok.empty:
            raise UserError(f"{self.path} has no successful trial yet: nothing to analyse")
        return ok

    @property
    def incumbent(self) -> dict[str, Any]:
        """The best configuration at the highest budget reached, with its metrics."""
        ok = self._require_success()
        top = ok["budget"].fillna(0).max()
        best = ok[ok["budget"].fillna(0) == top].sort_values([self.objectives[0], "trial"]).iloc[0]
        config = {n: best[n] for n in SPACE.keys() if not (isinstance(best[n], float) and np.isnan(best[n]))}
        metrics = {k: best[k] for k in [*self.objectives, "budget", *RECORD_COLUMNS] if k in best}
        return {"trial": int(best["trial"]), "config": _plain(config), "metrics": _plain(metrics)}

    def elapsed(self, t: float) -> float:
        """Search wall time at epoch time ``t``: time inside the run's sessions (downtime between resumes left out)."""
        sessions = self.state.get("sessions") or []
        if not sessions:
            start = self.trials["start_time"].min()
            return float(t - start)
        total = 0.0
        for s in sessions:
            end = s.get("ended_at", t)
            total += max(0.0, min(end, t) - s["started_at"])
        return total

    @property
    def trajectory(self) -> pd.DataFrame:
        """Best-so-far error over search wall time (successful trials, by end time)."""
        ok = self._require_success().sort_values("end_time")
        err = self.objectives[0]
        df = pd.DataFrame({
            "wall_time_s": [self.elapsed(t) for t in ok["end_time"]],
            "trial": ok["trial"].to_numpy(),
            err: ok[err].to_numpy(),
        })
        df["incumbent_" + err] = df[err].cummin()
        df["run"] = self.name
        return df

    def pareto_front(self, objectives: list[str] | None = None) -> pd.DataFrame:
        """Non-dominated successful trials over ``objectives`` (default: the run's own; all minimised)."""
        ok = self._require_success()
        objs = objectives or (self.objectives if len(self.objectives) > 1 else [self.objectives[0], "params"])
        for o in objs:
            if o not in ok or ok[o].isna().all():
                raise UserError(f"objective '{o}' is not recorded for this run")
        values = ok[objs].to_numpy(dtype=float)
        keep = [not any(np.all(o <= v) and np.any(o < v) for o in values) for v in values]
        return ok[keep].sort_values(objs[0])

    @property
    def evaluation(self) -> pd.DataFrame:
        """``nexsearch evaluate``'s table: one row per candidate and evaluation (epochs), best first, with mean and
        std of validation and test error, params, MACs, throughput, search cost, winner (empty without one)."""
        from nexsearch.evaluate import evaluation_frame

        return evaluation_frame(self.path)

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
    """Several runs stacked for comparison (e.g. SMAC against random search)."""

    def __init__(self, runs: Iterable[Run]):
        self.runs = list(runs)
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
