"""Experiment files (YAML): what a search evaluates, how SMAC searches, where results go.

Command-line flags override the file. The resolved experiment is written into the run
directory; resuming compares the new one with it and names any field that changed.
Fields that only say *how* the run executes (workers, scheduler, device, output
directory, data location) may change between resumes; everything else may not.
"""

from __future__ import annotations

import dataclasses
import sysconfig
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from nexsearch.errors import UserError
from nexsearch.objectives.target import OBJECTIVES, ObjectiveSpec
from nexsearch.objectives.trainer import TrainSettings

OPTIMIZERS = ("bo", "hyperband", "random", "parego")
DEFAULT_EXPERIMENT = "nexception_cifar100.yaml"


def _experiments_dir() -> Path:
    """experiments/ of a source checkout, else the copy a wheel installs under <prefix>/share/nexsearch."""
    source = Path(__file__).resolve().parents[2] / "experiments"
    if (source / DEFAULT_EXPERIMENT).is_file():
        return source
    return Path(sysconfig.get_path("data")) / "share" / "nexsearch" / "experiments"


EXPERIMENTS_DIR = _experiments_dir()

# May differ between the original run and a resume.
EXECUTION_FIELDS = ("workers", "scheduler", "device", "output_dir", "data_dir", "download")


@dataclass
class Experiment:
    name: str = "nexception-cifar100"
    dataset: str = "cifar100"
    data_dir: str | None = "data"
    download: bool = True
    val_fraction: float = 0.1
    image_size: int | None = None
    train_subset: int | None = None  # train proxies on this many (random) training images only
    test_fraction: float = 0.1  # folder datasets without test_dir: seeded share held out for testing
    test_dir: str | None = None  # folder datasets: an ImageFolder tree of test images (same classes)
    device: str = "auto"
    seed: int = 0
    output_dir: str | None = None  # default: runs/<name>
    optimizer: str = "bo"
    objectives: list[str] = field(default_factory=lambda: ["error"])
    min_epochs: int = 3  # hyperband's smallest budget
    max_epochs: int = 27  # every trial's epochs for bo / random / parego; hyperband's largest budget
    eta: int = 3  # hyperband
    initial_design: int = 20  # configurations SMAC evaluates before its surrogate takes over
    retrain_after: int = 8  # surrogate retraining frequency (trials)
    max_trials: int = 1_000_000  # safety cap; the wall-clock budget normally ends a run
    crash_cost: float = 1.0
    workers: int = 1
    scheduler: str | None = None  # address of an existing Dask scheduler
    train: dict[str, Any] = field(default_factory=dict)  # TrainSettings fields

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer '{self.optimizer}': choose one of {', '.join(OPTIMIZERS)}")
        if isinstance(self.objectives, str):
            self.objectives = [o.strip() for o in self.objectives.split(",") if o.strip()]
        self.objectives = list(self.objectives)
        bad = [o for o in self.objectives if o not in OBJECTIVES]
        if bad or not self.objectives or self.objectives[0] != "error":
            raise UserError(
                f"objectives must start with 'error' and come from {', '.join(OBJECTIVES)}; got {self.objectives}"
            )
        if self.optimizer == "parego" and len(self.objectives) < 2:
            raise UserError("optimizer 'parego' needs a second objective: --objectives error,latency (or params, macs)")
        if not (1 <= self.min_epochs <= self.max_epochs):
            raise UserError(f"epoch range must satisfy 1 <= min_epochs <= max_epochs, got {self.min_epochs}..{self.max_epochs}")
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"test_fraction must be between 0 and 1 (exclusive), got {self.test_fraction}")
        if self.workers < 1:
            raise UserError(f"workers must be at least 1, got {self.workers}")
        if not 0 <= self.crash_cost < float("inf"):
            raise UserError(f"crash_cost must be finite and non-negative, got {self.crash_cost}")
        TrainSettings.from_dict(self.train)  # unknown keys -> one-line error

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name).resolve()

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def objective_spec(self, trials_path: Path | None, deadline: float | None = None) -> ObjectiveSpec:
        train = dict(self.train, device=self.device, crash_cost=self.crash_cost, epochs=self.max_epochs)
        return ObjectiveSpec(
            dataset=self.dataset, data_dir=self.data_dir, download=self.download, val_fraction=self.val_fraction,
            data_seed=self.seed, image_size=self.image_size, train_subset=self.train_subset, train=train,
            test_fraction=self.test_fraction, test_dir=self.test_dir, objectives=tuple(self.objectives),
            trials_path=str(trials_path) if trials_path else None, deadline=deadline,
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
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise UserError(f"experiment file {p} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"experiment file {p} must hold a mapping of settings, not {type(data).__name__}")
    return experiment_from_dict(data, overrides, source=str(p))


def experiment_from_dict(data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, source: str = "experiment") -> Experiment:
    known = {f.name for f in fields(Experiment)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}; known are {', '.join(sorted(known))}")
    merged = dict(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    try:
        return Experiment(**merged)
    except TypeError as exc:
        raise UserError(f"{source}: {exc}") from None


def save_experiment(exp: Experiment, path: Path) -> None:
    path.write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))


def read_saved_experiment(run_dir: Path) -> Experiment:
    data = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    return experiment_from_dict(data, source=str(run_dir / "experiment.yaml"))
