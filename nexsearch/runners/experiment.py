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
from nexsearch.objectives.settings import DATASETS, DataSpec, TrainSettings, TrialInputs, TrialSpec, check_known, \
    check_layout, check_objectives
from nexsearch.rundir import RunDir
from nexsearch.runners.optimizers import OPTIMIZERS
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
EXECUTION_FIELDS = ("workers", "workers_per_gpu", "scheduler", "scheduler_security", "device", "output_dir", "data_dir",
                    "download", "tensorboard")


def _device_name(value: str) -> bool:
    return re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", value) is not None


def _between(low: float, high: float) -> tuple[Callable[[Any], bool], str]:
    """A range with an upper bound too: values past it would exhaust memory or time before a trial ends."""
    return (lambda v: math.isfinite(v) and low <= v <= high), f"at least {low:g} and at most {high:g}"


def _run_name(value: str) -> bool:
    """A run name is one folder under runs/: not '.', '..', no path separator, no control character."""
    return (bool(value.strip()) and value.strip(".") != "" and len(value) <= 100 and "/" not in value
            and "\\" not in value and value.isprintable())


_POSITIVE = ((lambda v: math.isfinite(v) and v > 0), "a number greater than 0")
_FINITE_NON_NEGATIVE = ((lambda v: math.isfinite(v) and v >= 0), "a finite number >= 0")
_FRACTION = ((lambda v: 0 <= v < 1), "a number from 0 up to (not including) 1")
_PATH = ((lambda v: "\0" not in v and len(v) <= 4096 and all(len(part.encode()) <= 255 for part in v.split("/"))),
         "a path without NUL characters, of at most 4096 characters and 255 bytes per folder name")
_DEVICE = (_device_name, "auto, cpu, cuda or cuda:N")

# Value checks of the experiment's fields, checked before anything runs. Types need no entry: they come
# from the dataclass annotations (int, float, bool, str, list, dict, X | None), so a new field is
# type-checked as it is declared; add a line here for its range. None passes where the type allows it.
FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (_run_name, "a name of 1 to 100 printable characters, without '/' or '\\', not '.' or '..'"),
    "dataset": ((lambda v: v in DATASETS), f"one of {', '.join(DATASETS)}"),
    "val_fraction": ((lambda v: 0 < v < 1), "a number between 0 and 1 (exclusive)"),
    "test_fraction": ((lambda v: 0 < v < 1), "a number between 0 and 1 (exclusive)"),
    "image_size": _between(8, 1024),
    "train_subset": _between(2, 100_000_000),
    "device": _DEVICE,
    "output_dir": _PATH,
    "data_dir": _PATH,
    "test_dir": _PATH,
    "scheduler": ((lambda v: len(v) <= 1000 and v.isprintable()), "a scheduler address like tls://host:8786"),
    "scheduler_security": _PATH,
    "seed": _between(0, 2**31 - 1),
    "min_epochs": _between(1, 100_000),
    "max_epochs": _between(1, 100_000),
    "eta": _between(2, 1000),
    "initial_design": _between(0, 1_000_000),
    "retrain_after": _between(1, 1_000_000),
    "calls_per_config": _between(1, 100),
    "max_trials": _between(1, 1_000_000_000),
    "crash_cost": _between(0, 1e12),
    "workers": _between(1, 4096),
    "workers_per_gpu": ((lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 64)),
                        "between 1 and 64, or auto (trials packed by GPU memory)"),
}
# The same for the ``train:`` block (TrainSettings fields; epochs, crash_cost and device come from the experiment).
TRAIN_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "batch_size": _between(2, 65536),
    "lr": _POSITIVE,  # no upper bound: a huge rate is a legitimate way to make a trial diverge (tests do)
    "weight_decay": _FINITE_NON_NEGATIVE,
    "warmup_frac": _FRACTION,
    "min_lr": _FINITE_NON_NEGATIVE,
    "mixup": _FINITE_NON_NEGATIVE,
    "cutmix": _FINITE_NON_NEGATIVE,
    "label_smoothing": _FRACTION,
    "drop_path": _FRACTION,
    "width": ((lambda v: 0 < v <= 8), "a number greater than 0, at most 8"),
    "depth": _between(0, 64),
    "crop_padding": _between(0, 256),
    "time_limit_s": ((lambda v: 0 < v <= 1e8), "a number greater than 0, at most 1e8"),
    "eval_batch_size": _between(1, 65536),
    "throughput_batch": _between(1, 4096),
    "throughput_iters": _between(1, 10_000),
}
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping"}


# Settings whose default (null) lets a resumed run keep the value it recorded (the optimizer reads it back from
# SMAC's record: nexsearch.runners.optimizers.SearchSetup), so that a changed default leaves old runs resumable.
KEEP_RECORDED = ("initial_design", "retrain_after")


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
    initial_design: int | None = None  # configurations SMAC evaluates before its surrogate takes over; null: 10
    retrain_after: int | None = None  # surrogate retraining frequency (trials); null: the workers (1: every trial)
    calls_per_config: int = 1  # bo/parego: calls with new seeds for the leading configurations (SMAC intensifies)
    max_trials: int = 1_000_000  # safety cap; the wall-clock budget normally ends a run
    crash_cost: float = 1.0
    workers: int | str = 1  # parallel trials (Dask), or "auto": #GPUs x workers_per_gpu, else the CPU slots
    workers_per_gpu: int | str = 4  # trials sharing one GPU under workers: auto (H100: 4 give 3.3x the trials per GPU-day)
    scheduler: str | None = None  # address of an existing Dask scheduler
    scheduler_security: str | None = None  # YAML file: the TLS files of that scheduler (Dask's tls_* settings)
    tensorboard: bool = False  # write each trial under RUN_DIR/tensorboard/ (nexsearch/tensorboard.py)

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str):
            self.objectives = [o.strip() for o in self.objectives.split(",") if o.strip()]
        if not isinstance(self.train, dict):
            raise UserError(f"setting 'train' must be a mapping of training settings, got {self.train!r}")
        from nexsearch.device import resolve_workers

        if not isinstance(self.workers, (int, str)) or isinstance(self.workers, bool):
            raise UserError(f"setting 'workers' must be a whole number or 'auto', got {self.workers!r}")
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

    def trial_spec(self, run_dir: RunDir | None, deadline: float | None = None) -> TrialSpec:
        """What each trial evaluates, built once here; ``run_dir``: where trials log (None: nowhere, e.g. the
        pre-run check). The training recipe takes the trial's device, epochs and crash cost from the experiment
        (their one source: an experiment file may not set them under ``train``)."""
        settings = TrainSettings.from_dict(dict(self.train, device=self.device, crash_cost=self.crash_cost,
                                                epochs=self.max_epochs))
        return TrialSpec(DataSpec.of(self, self.seed), settings, tuple(self.objectives), self.full_layout,
                         run_dir, deadline)

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
            elif a[key] != b[key] and not (key in KEEP_RECORDED and a[key] is None):
                out.append(f"{key}: {b[key]!r} -> {a[key]!r}")
        return out


def resolve_config_path(path: str | Path | None) -> Path:
    if path is None:
        return EXPERIMENTS_DIR / DEFAULT_EXPERIMENT
    p = Path(path)
    try:
        if not p.exists() and not p.is_absolute() and (EXPERIMENTS_DIR / p).exists():
            return EXPERIMENTS_DIR / p
        found = p.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL character
        raise UserError(f"experiment file {str(p)[:200]!r} cannot be opened ({getattr(exc, 'strerror', None) or exc})"
                        ) from None
    if not found:
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
    try:
        data = yaml.safe_load(run_dir.experiment_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        data = None
    except OSError as exc:
        raise UserError(f"{run_dir.experiment} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{run_dir.experiment} is empty or corrupt (not a mapping of settings): put back the "
                        "experiment the run was made with")
    return experiment_from_dict(data, source=str(run_dir.experiment))
