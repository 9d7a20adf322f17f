"""What a trial is told: the training recipe (``TrainSettings``), the objectives and the data
(``ObjectiveSpec``), and the names they may take. Plain data without torch, so that an experiment
file is read and checked at once (a search's heartbeat starts before torch is imported).

Each check lives here once: unknown keys (:func:`check_known`), the objectives
(:func:`check_objectives`), the full-size layout (:func:`check_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from nexsearch.device import compile_mode
from nexsearch.errors import UserError
from nexsearch.objectives.table import objective_names

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


@dataclass
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
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainSettings":
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
    recipe, the objectives. Declared once: ``Experiment`` (the file) and ``ObjectiveSpec`` (what each trial
    process is told) both are these fields plus their own."""

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


@dataclass
class ObjectiveSpec(TrialInputs):
    """What a trial evaluates (the experiment's ``TrialInputs``), plus where it logs and when it must stop."""

    data_seed: int = 0
    synthetic_size: int = 2048  # dataset "synthetic": images before the test and validation splits
    synthetic_classes: int = 10
    trials_path: str | None = None  # JSON lines, one per finished trial
    deadline: float | None = None  # epoch seconds: trials stop (status timeout) when the search's budget ends
    latency_cache: str | None = None  # JSON lines: full-size latency per configuration, layout and device

    def __post_init__(self) -> None:
        self.objectives = check_objectives(self.objectives)
        for name, low, high in (("synthetic_size", 8, 1_000_000), ("synthetic_classes", 2, 10_000)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise UserError(f"{name} must be a whole number from {low} to {high:,}, got {value!r}")

    @property
    def settings(self) -> TrainSettings:
        return TrainSettings.from_dict(self.train)

    @property
    def data_key(self) -> tuple:
        return (self.dataset, self.data_dir, self.val_fraction, self.data_seed, self.image_size, self.train_subset,
                self.synthetic_size, self.synthetic_classes, self.train.get("device", "auto"),
                self.test_fraction, self.test_dir)
