"""Experiment files (YAML): what a search evaluates, how SMAC searches, where results go.

Command-line flags override the file. The resolved experiment is written into the run
directory; resuming compares the new one with it and names any field that changed.
Fields that only say *how* the run executes (workers, scheduler, device, output
directory, data location) may change between resumes; everything else may not.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sysconfig
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from nexsearch.errors import UserError
from nexsearch.objectives.settings import DATASETS, ObjectiveSpec, TrainSettings, TrialInputs, check_known, \
    check_layout, check_objectives
from nexsearch.rundir import RunDir

OPTIMIZERS = ("bo", "hyperband", "random", "parego", "evolution")
DEFAULT_EXPERIMENT = "nexception_cifar100.yaml"


def _experiments_dir() -> Path:
    """experiments/ of a source checkout, else the copy a wheel installs under <prefix>/share/nexsearch."""
    source = Path(__file__).resolve().parents[2] / "experiments"
    if (source / DEFAULT_EXPERIMENT).is_file():
        return source
    return Path(sysconfig.get_path("data")) / "share" / "nexsearch" / "experiments"


EXPERIMENTS_DIR = _experiments_dir()

# Training settings a trial takes from the experiment (one source each): train.<key> <- <experiment field>.
TRAIN_FROM_EXPERIMENT = {"epochs": "max_epochs", "crash_cost": "crash_cost", "device": "device"}

# May differ between the original run and a resume.
EXECUTION_FIELDS = ("workers", "workers_per_gpu", "scheduler", "device", "output_dir", "data_dir", "download")


def _device_name(value: str) -> bool:
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value) is not None


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {low:g}"


_POSITIVE = ((lambda v: math.isfinite(v) and v > 0), "a number greater than 0")
_FRACTION = ((lambda v: 0 <= v < 1), "a number from 0 up to (not including) 1")
_FINITE_NON_NEGATIVE = ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0")
_DEVICE = (_device_name, "auto, cpu, cuda or cuda:N")

# Value checks of the experiment's fields, checked before anything runs. Types need no entry: they come
# from the dataclass annotations (int, float, bool, str, list, dict, X | None), so a new field is
# type-checked as it is declared; add a line here for its range. None passes where the type allows it.
FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": ((lambda v: bool(v.strip()) and "/" not in v), "a non-empty name without '/'"),
    "dataset": ((lambda v: v in DATASETS), f"one of {', '.join(DATASETS)}"),
    "val_fraction": ((lambda v: 0 < v < 1), "a number between 0 and 1 (exclusive)"),
    "test_fraction": ((lambda v: 0 < v < 1), "a number between 0 and 1 (exclusive)"),
    "image_size": _at_least(8),
    "train_subset": _at_least(2),
    "device": _DEVICE,
    "seed": _at_least(0),
    "min_epochs": _at_least(1),
    "max_epochs": _at_least(1),
    "eta": _at_least(2),
    "initial_design": _at_least(0),
    "retrain_after": _at_least(1),
    "calls_per_config": _at_least(1),
    "max_trials": _at_least(1),
    "crash_cost": _FINITE_NON_NEGATIVE,
    "workers": _at_least(1),
    "workers_per_gpu": _at_least(1),
}
# The same for the ``train:`` block (TrainSettings fields; epochs, crash_cost and device come from the experiment).
TRAIN_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": _at_least(2),
    "lr": _POSITIVE,
    "weight_decay": _FINITE_NON_NEGATIVE,
    "warmup_frac": _FRACTION,
    "min_lr": _FINITE_NON_NEGATIVE,
    "mixup": _FINITE_NON_NEGATIVE,
    "cutmix": _FINITE_NON_NEGATIVE,
    "label_smoothing": _FRACTION,
    "drop_path": _FRACTION,
    "width": _POSITIVE,
    "depth": _at_least(0),
    "crop_padding": _at_least(0),
    "time_limit_s": _POSITIVE,
    "eval_batch_size": _at_least(1),
    "throughput_batch": _at_least(1),
    "throughput_iters": _at_least(1),
}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}


def _check_value(where: str, value: Any, hint: Any, rule: tuple[Callable[[Any], bool], str] | None) -> Any:
    """``value`` checked against the annotation ``hint`` and the value ``rule``; returns it (a number written
    as a string, as YAML reads ``1e-3``, becomes a float). Raises a one-line ``UserError`` naming ``where``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        exact = [a for a in members if isinstance(value, typing.get_origin(a) or a)
                 and not (isinstance(value, bool) and a is not bool)]
        hint = exact[0] if exact else members[0]  # int | str: "auto" is a str; 3 an int
    kind = typing.get_origin(hint) or hint
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
    if kind is float and not ok and not isinstance(value, bool):
        if isinstance(value, int):
            value, ok = float(value), True
        elif isinstance(value, str):
            try:
                value, ok = float(value), True
            except ValueError:
                pass
    if not ok:
        what = _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))
        none = " (or null)" if type(None) in args else ""
        raise UserError(f"setting '{where}' must be {what}{none}, got {value!r} ({type(value).__name__})")
    if rule is not None and not rule[0](value):
        raise UserError(f"setting '{where}' must be {rule[1]}, got {value!r}")
    return value


def check_fields(obj: Any, rules: Mapping[str, tuple[Callable[[Any], bool], str]], prefix: str = "") -> dict[str, Any]:
    """Type and value of every field of the dataclass instance ``obj``; returns the checked values."""
    hints = typing.get_type_hints(type(obj))
    return {f.name: _check_value(prefix + f.name, getattr(obj, f.name), hints[f.name], rules.get(f.name))
            for f in fields(obj)}


@dataclass
class Experiment(TrialInputs):
    """An experiment file: what each trial evaluates (``TrialInputs``: data, training recipe, objectives) and
    how SMAC searches and where the run goes."""

    name: str = "nexception-cifar100"
    device: str = "auto"
    seed: int = 0
    output_dir: str | None = None  # default: runs/<name>
    optimizer: str = "bo"
    min_epochs: int = 3  # hyperband's smallest budget
    max_epochs: int = 27  # every trial's epochs for bo / random / parego; hyperband's largest budget
    eta: int = 3  # hyperband
    initial_design: int = 20  # configurations SMAC evaluates before its surrogate takes over
    retrain_after: int = 8  # surrogate retraining frequency (trials)
    calls_per_config: int = 1  # bo/parego: calls with new seeds for the leading configurations (SMAC intensifies)
    max_trials: int = 1_000_000  # safety cap; the wall-clock budget normally ends a run
    crash_cost: float = 1.0
    workers: int | str = 1  # parallel trials (Dask), or "auto": #GPUs x workers_per_gpu, else the CPU slots
    workers_per_gpu: int = 4  # trials sharing one GPU under workers: auto (H100: 4 give 3.3x the trials per GPU-day)
    scheduler: str | None = None  # address of an existing Dask scheduler

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str):
            self.objectives = [o.strip() for o in self.objectives.split(",") if o.strip()]
        if not isinstance(self.train, dict):
            raise UserError(f"setting 'train' must be a mapping of training settings, got {self.train!r}")
        from nexsearch.device import resolve_workers

        self.workers = resolve_workers(self.workers, self.workers_per_gpu, self.device)  # "auto" -> a count
        for key, value in check_fields(self, FIELD_RULES).items():
            setattr(self, key, value)
        for key, owner in TRAIN_FROM_EXPERIMENT.items():
            if key in self.train:
                raise UserError(f"setting 'train.{key}' comes from the experiment's '{owner}': set {owner} instead "
                                f"(and remove train.{key})")
        checked = check_fields(TrainSettings.from_dict(self.train), TRAIN_RULES, prefix="train.")  # unknown keys too
        self.train = {k: checked[k] for k in self.train}
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer '{self.optimizer}': choose one of {', '.join(OPTIMIZERS)}")
        self.objectives = list(check_objectives(self.objectives))
        if self.optimizer == "evolution" and len(self.objectives) > 1:
            raise UserError("optimizer 'evolution' searches one objective: use 'parego' (or 'bo') for several")
        if self.optimizer == "parego" and len(self.objectives) < 2:
            raise UserError("optimizer 'parego' needs a second objective: --objectives error,latency (or params, macs)")
        if not (1 <= self.min_epochs <= self.max_epochs):
            raise UserError(f"epoch range must satisfy 1 <= min_epochs <= max_epochs, got {self.min_epochs}..{self.max_epochs}")
        check_layout(self.full_layout)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name).resolve()

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def objective_spec(self, run_dir: RunDir | None, deadline: float | None = None) -> ObjectiveSpec:
        """What each trial evaluates; ``run_dir``: where trials log (None: nowhere, e.g. the pre-run check).
        The training recipe takes the trial's device, epochs and crash cost from the experiment (their one
        source: an experiment file may not set them under ``train``)."""
        inputs = {f.name: getattr(self, f.name) for f in fields(TrialInputs)}
        inputs["train"] = dict(self.train, device=self.device, crash_cost=self.crash_cost, epochs=self.max_epochs)
        return ObjectiveSpec(
            **inputs, data_seed=self.seed, deadline=deadline,
            trials_path=str(run_dir.trials) if run_dir else None,
            latency_cache=str(run_dir.latency_cache) if run_dir else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define the experiment (everything but how it executes)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    def differences(self, other: "Experiment") -> list[str]:
        a, b = self.identity(), other.identity()
        out = []
        for key in a:
            if key == "train":
                for sub in sorted(set(a[key]) | set(b[key])):
                    if a[key].get(sub) != b[key].get(sub):
                        out.append(f"train.{sub}: {b[key].get(sub)!r} -> {a[key].get(sub)!r}")
            elif a[key] != b[key]:
                out.append(f"{key}: {b[key]!r} -> {a[key]!r}")
        return out


def resolve_config_path(path: str | Path | None) -> Path:
    if path is None:
        return EXPERIMENTS_DIR / DEFAULT_EXPERIMENT
    p = Path(path)
    if not p.exists() and not p.is_absolute() and (EXPERIMENTS_DIR / p).exists():
        return EXPERIMENTS_DIR / p
    if not p.is_file():
        raise UserError(f"experiment file {p} not found: pass --config with a YAML file (see experiments/)")
    return p


def load_experiment(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Experiment:
    """Read an experiment YAML file and apply non-None overrides (command-line flags)."""
    p = resolve_config_path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise UserError(f"experiment file {p} is not a text file (not UTF-8): pass a YAML experiment file") from None
    except OSError as exc:
        raise UserError(f"experiment file {p} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise UserError(f"experiment file {p} is not valid YAML: {first}") from None
    if data is None:
        raise UserError(f"experiment file {p} is empty: write the settings into it (see experiments/), or leave "
                        "out --config for the paper's CIFAR-100 experiment")
    if not isinstance(data, dict):
        raise UserError(f"experiment file {p} must hold a mapping of settings, not {type(data).__name__}")
    return experiment_from_dict(data, overrides, source=str(p))


def experiment_from_dict(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, source: str = "experiment") -> Experiment:
    try:
        check_known(Experiment, data, "setting")
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    merged = dict(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    try:
        return Experiment(**merged)
    except TypeError as exc:
        raise UserError(f"{source}: {exc}") from None


def save_experiment(exp: Experiment, run_dir: RunDir) -> None:
    run_dir.write_experiment(yaml.safe_dump(exp.to_dict(), sort_keys=False))


def read_saved_experiment(run_dir: RunDir | Path) -> Experiment:
    run_dir = RunDir(run_dir) if not isinstance(run_dir, RunDir) else run_dir
    return experiment_from_dict(yaml.safe_load(run_dir.experiment_text()), source=str(run_dir.experiment))
