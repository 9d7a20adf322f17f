"""What a trial is told: the training recipe (``TrainSettings``), the data (``DataSpec``), both held with the
objectives, the run directory and the deadline by the frozen ``TrialSpec``, and the names they may take. Plain data without torch, so that an experiment
file is read and checked at once (a search's heartbeat starts before torch is imported).

Each check lives here once: unknown keys (:func:`check_known`), the objectives
(:func:`check_objectives`), the full-size layout (:func:`check_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from nexsearch.device import compile_mode
from nexsearch.errors import UserError
from nexsearch.objectives.table import objective_names

if TYPE_CHECKING:
    from nexsearch.rundir import RunDir

DATASETS = ("cifar100", "digits", "synthetic", "folder")
FULL_LAYOUTS = ("t", "s", "tp")  # full-size layouts of full_params / full_macs / full_latency
STEP_MODES = ("auto", "eager", "graph", "compile")  # TrainSettings.step (objectives/step.py)


def check_known(cls: type, values: Mapping[str, Any], what: str) -> None:
    """A one-line error for keys of ``values`` that are no field of the dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown {what}(s) {', '.join(unknown)}: known are {', '.join(sorted(known))}")


def check_objectives(objectives: Any) -> list[str]:
    objectives = list(objectives)
    names = objective_names()
    bad = [o for o in objectives if o not in names]
    if bad or not objectives or objectives[0] != "error":
        raise UserError(f"objectives must start with 'error' and come from {', '.join(names)}; "
                        f"got {list(objectives)}")
    return objectives


def check_layout(layout: str) -> None:
    if layout not in FULL_LAYOUTS:
        raise UserError(f"unknown full_layout '{layout}': choose one of {', '.join(FULL_LAYOUTS)}")


@dataclass(frozen=True)
class TrainSettings:
    """Everything about proxy training except the architecture. Experiment files set these."""

    epochs: int = 20  # when SMAC hands no budget
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.02
    optimizer: str = "lamb"
    warmup_frac: float = 0.05  # share of the trial's steps spent warming up
    min_lr: float = 1e-6
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    drop_path: float = 0.05
    width: float = 1.0  # proxy width multiplier
    depth: int = 4  # proxy middle-flow blocks
    crop_padding: int = 4  # random crop with this zero padding; 0 disables
    hflip: bool = True
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    channels_last: bool = True
    amp: bool = True  # bf16 autocast on CUDA
    compile: bool | str = False  # false, default, reduce-overhead, max-autotune: torch.compile's mode (~100 s per
    # new architecture on CPU; reduce-overhead uses CUDA graphs on CUDA)
    step: str = "auto"  # auto (graph on CUDA, compile where compile is set, else eager), eager, graph, compile
    foreach: bool | str = "auto"  # LAMB's multi-tensor path: auto (on CUDA; on the CPU where measured faster)
    cudnn_benchmark: bool | str = "auto"  # auto: on (CUDA) for trials of SHORT_TRIAL_EPOCHS epochs or more
    time_limit_s: float | None = None  # per trial, enforced between steps
    eval_batch_size: int = 1024
    throughput_batch: int = 256
    throughput_iters: int = 5
    crash_cost: float = 1.0  # cost of a failed trial (error rate of 100%)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainSettings:
        check_known(cls, values, "training setting")
        return cls(**dict(values))

    def __post_init__(self) -> None:
        compile_mode(self.compile)  # a bad mode name -> one-line error
        if self.foreach not in ("auto", True, False):
            raise UserError(f"foreach must be auto, true or false, got {self.foreach!r}")
        if self.step not in STEP_MODES:
            raise UserError(f"unknown train step '{self.step}': choose one of {', '.join(STEP_MODES)}")
        if self.cudnn_benchmark not in ("auto", True, False):
            raise UserError(f"cudnn_benchmark must be auto, true or false, got {self.cudnn_benchmark!r}")

    @property
    def precision(self) -> str:
        """The autocast precision of training and evaluation (``device.autocast``: reduced on CUDA only)."""
        return "bf16" if self.amp else "fp32"


@dataclass
class TrialInputs:
    """What every trial of an experiment evaluates, as the experiment file spells it: the data, the training
    recipe, the objectives. ``Experiment`` (the file) is these fields plus its own; it builds each trial's
    ``TrialSpec`` from them (the data fields into its ``DataSpec``, by name)."""

    dataset: str = "cifar100"
    data_dir: str | None = "data"  # cifar100: the folder holding cifar-100-python; folder: the ImageFolder tree
    download: bool = True  # cifar100: download into data_dir when missing
    val_fraction: float = 0.1
    image_size: int | None = None
    train_subset: int | None = None  # train proxies on this many (random) training images only
    test_fraction: float = 0.1  # folder datasets without test_dir: seeded share held out for testing
    test_dir: str | None = None  # folder datasets: an ImageFolder tree of test images (same classes)
    objectives: list[str] = field(default_factory=lambda: ["error"])
    train: dict[str, Any] = field(default_factory=dict)  # TrainSettings fields
    full_layout: str = "tp"  # full-size layout of the full_params / full_macs / full_latency objectives


@dataclass(frozen=True)
class DataSpec:
    """The data of every trial, whole: what ``datasets.load_dataset`` loads (its fields are those of the
    experiment's ``TrialInputs`` of the same names, plus the seed and the synthetic set's size)."""

    dataset: str
    data_dir: str | None = None  # cifar100: the folder holding cifar-100-python (default data); folder: the tree
    download: bool = False  # cifar100: download into data_dir when missing
    val_fraction: float = 0.1
    image_size: int | None = None
    train_subset: int | None = None  # train proxies on this many (random) training images only
    test_fraction: float = 0.1  # folder datasets without test_dir: seeded share held out for testing
    test_dir: str | None = None  # folder datasets: an ImageFolder tree of test images (same classes)
    seed: int = 0  # the validation split, the subset, the synthetic images
    synthetic_size: int = 2048  # dataset "synthetic": images before the test and validation splits
    synthetic_classes: int = 10

    def __post_init__(self) -> None:
        for name, low, high in (("synthetic_size", 8, 1_000_000), ("synthetic_classes", 2, 10_000)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise UserError(f"{name} must be a whole number from {low} to {high:,}, got {value!r}")

    @classmethod
    def of(cls, inputs: TrialInputs, seed: int) -> "DataSpec":
        """The data fields of the experiment's ``inputs`` (the fields of both, by name) with the data seed."""
        shared = {f.name for f in fields(cls)} & {f.name for f in fields(TrialInputs)}
        return cls(**{name: getattr(inputs, name) for name in shared}, seed=seed)


@dataclass(frozen=True)
class TrialSpec:
    """What a trial evaluates, built once by the experiment (``Experiment.trial_spec``) and handed down unchanged:
    the data, the training recipe, the objectives, where trials log and when they must stop."""

    data: DataSpec
    settings: TrainSettings = field(default_factory=TrainSettings)
    objectives: tuple[str, ...] = ("error",)
    full_layout: str = "tp"  # full-size layout of the full_params / full_macs / full_latency objectives
    run_dir: RunDir | None = None  # where trials log (None: nowhere, e.g. the pre-run check)
    deadline: float | None = None  # epoch seconds: trials stop (status timeout) when the search's budget ends

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(check_objectives(self.objectives)))

    @property
    def data_key(self) -> tuple:
        """What the loaded data depends on: a process reloads it when this changes."""
        return self.data, self.settings.device

    @property
    def latency_cache(self) -> Path | None:
        """The run's full-size latency per configuration, layout and device (JSON lines)."""
        return self.run_dir.latency_cache if self.run_dir is not None else None

    def on_device(self, device: str) -> "TrialSpec":
        """This spec with trials on ``device``."""
        return replace(self, settings=replace(self.settings, device=device))
