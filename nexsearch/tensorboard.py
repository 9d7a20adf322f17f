"""TensorBoard output of a run: ``RUN_DIR/tensorboard/trial_NNNN/``, one folder per successful trial.

Each trial's learning curve is written as scalars (``val_error``, ``val_loss``, ``train_loss``, ``lr`` per
epoch) and its configuration, budget and seed with its final metrics through TensorBoard's HParams plugin,
so that TensorBoard's own table, parallel-coordinates and scatter views compare the trials::

    tensorboard --logdir RUN_DIR/tensorboard

``nexsearch run --tensorboard`` (or ``tensorboard: true`` in the experiment file) writes a trial as SMAC
is told its result; ``nexsearch analyze RUN --tensorboard`` writes every trial of an existing run. Needs
the optional ``tensorboard`` package (``pip install 'nexsearch[tensorboard]'``).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from nexsearch.errors import UserError

CURVE_SCALARS = ("val_error", "val_loss", "train_loss", "lr")
METRICS = ("val_error", "val_loss", "params", "macs", "throughput", "train_time_s", "full_params", "full_macs",
           "full_latency_ms")


def require_tensorboard() -> None:
    """A one-line error when the optional package is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UserError("TensorBoard output needs the tensorboard package: pip install 'nexsearch[tensorboard]' "
                        "(or pip install tensorboard)") from None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def write_trial(root: str | Path, trial: int, config: Mapping[str, Any], budget: float | None, seed: int | None,
                record: Mapping[str, Any]) -> Path:
    """Write one trial (its curve as scalars, its configuration and final metrics as HParams) under ``root``."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(root) / f"trial_{int(trial):04d}"
    if folder.exists():  # written again (analyze --tensorboard twice): replace, do not append
        shutil.rmtree(folder)
    with SummaryWriter(log_dir=str(folder)) as writer:
        for row in record.get("curve") or []:
            for name in CURVE_SCALARS:
                value = _number(row.get(name))
                if value is not None:
                    writer.add_scalar(f"curve/{name}", value, int(row["epoch"]))
        plain = {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}  # numpy (SMAC) -> Python
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in plain.items()
                   if v is not None}
        hparams.update(trial=int(trial), budget=_number(budget) or 0.0, seed=int(seed or 0))
        metrics = {f"final/{m}": _number(record.get(m)) for m in METRICS}
        writer.add_hparams(hparams, {k: v for k, v in metrics.items() if v is not None}, run_name=".")
    return folder


class TrialBoard:
    """Writes each successful trial as SMAC is told its result (a ``ProgressView`` listener)."""

    def __init__(self, root: str | Path):
        require_tensorboard()
        self.root = Path(root)

    def told(self, number: int, info: Any, value: Any) -> None:
        from smac.runhistory import StatusType

        if value.status != StatusType.SUCCESS:
            return
        record = dict(value.additional_info or {})
        try:
            write_trial(self.root, number, dict(info.config), info.budget, info.seed, record)
        except OSError:  # a full disk: the search itself reports it; TensorBoard output is a by-product
            pass


def write_run(run_dir: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Every successful trial of an existing run (``nexsearch analyze RUN --tensorboard``)."""
    from nexsearch.analysis.run import load_run
    from nexsearch.rundir import RunDir

    require_tensorboard()
    run = load_run(run_dir)
    root = Path(root) if root is not None else RunDir(run_dir).tensorboard
    ok = run.successful
    for _, row in ok.iterrows():
        config = run._configs.get(str(row["config_id"]), {})
        record = {**{m: row.get(m) for m in METRICS if m in row}, "curve": row["curve"],
                  "val_error": row.get(run.objectives[0])}
        write_trial(root, int(row["trial"]), config, row["budget"] if _number(row["budget"]) else None,
                    row["seed"], record)
    return {"tensorboard": str(root), "trials": len(ok)}
