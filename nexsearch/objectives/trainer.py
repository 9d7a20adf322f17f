"""Budgeted proxy training: one configuration -> one honest result record.

The data path never leaves the training device: the dataset is one uint8 tensor there, and
crop-with-padding, flip and normalisation run batch-wise on it (no per-sample Python, no
DataLoader). The model runs channels_last (on CPU depthwise backward is ~9x faster that way),
with bf16 autocast and ``cudnn.benchmark`` on CUDA and ``torch.compile`` as an option.

Recipe (paper table 1, scaled to a short proxy run): LAMB (timm), cosine decay with warm-up
to ``min_lr``, optional mixup / cutmix (timm's ``Mixup``) and label smoothing, stochastic depth.

Budgets: SMAC hands float budgets (epochs). A budget is rounded half-up to whole epochs, with
at least one: 0.4 -> 1, 2.5 -> 3, 3.33 -> 3, 11.1 -> 11. The cosine schedule spans exactly the
epochs of the trial.

Failures never escape ``train_proxy``: out-of-memory, a non-finite loss and any exception
come back as a record with ``status`` (``oom``, ``diverged``, ``crashed``), a ``reason`` and
``cost`` = ``crash_cost``; a trial that hits ``time_limit_s`` stops between steps, is evaluated
as it stands and reports ``status="timeout"``.
"""

from __future__ import annotations

import gc
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from nexsearch.device import autocast, compile_mode, maybe_compile, peak_memory_mb, sync, time_total
from nexsearch.errors import UserError
from nexsearch.objectives.datasets import Splits, TensorData
from nexsearch.objectives.record import TrialRecord
from nexsearch.objectives.settings import TrainSettings
from nexsearch.objectives.step import GraphStep, StepFallback, cosine_lr_table, optimizer_foreach, resolve_step
from nexsearch.search_space.builder import build_model, count_params
from nexsearch.search_space.space import validate



def budget_to_epochs(budget: float | None, default: int) -> int:
    """Round a SMAC budget half-up to whole epochs (at least 1); ``None`` -> ``default``."""
    if budget is None:
        return max(1, int(default))
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget}")
    return max(1, int(math.floor(float(budget) + 0.5)))


SHORT_TRIAL_EPOCHS = 4  # shorter trials: no cuDNN autotuning (cudnn_benchmark auto), half the throughput batches


@torch.no_grad()
def count_macs_fast(model: torch.nn.Module, input_size: int, in_chans: int = 3) -> int:
    """``builder.count_macs`` (torch's FlopCounterMode / 2) from shapes seen by forward hooks, ~5x cheaper.

    Counts what FlopCounterMode counts in these networks: convolutions, linear layers and the
    blur filter of BlurPool (tested equal to ``count_macs`` across the design space).
    """
    from timm.layers import BlurPool2d

    total = 0

    def conv(m, inputs, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inputs, out):
        nonlocal total
        total += out.numel() * m.in_features

    def blur(m, inputs, out):
        nonlocal total
        total += out.numel() * m.filt_size * m.filt_size

    kinds = ((torch.nn.Conv2d, conv), (torch.nn.Linear, linear), (BlurPool2d, blur))
    hooks = [mod.register_forward_hook(fn) for mod in model.modules() for cls, fn in kinds if isinstance(mod, cls)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total


class _Diverged(RuntimeError):
    pass


class DeviceLoader:
    """Batches of a uint8 image tensor on its own device, augmented batch-wise there (like airbench's loader).

    ``epoch(batch_size)`` yields shuffled, cropped, flipped, normalised training batches;
    ``eval_batches(data, batch_size)`` yields the batches of an evaluation split (validation, test)
    in order, normalised the same way without augmentation, on this loader's device.
    """

    def __init__(self, data: TensorData, splits: Splits, settings: TrainSettings, generator: torch.Generator):
        self.data, self.settings, self.g = data, settings, generator
        self.device = device = data.images.device
        mean = torch.tensor(splits.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(splits.std, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std), mean / std
        self.memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().mul_(self.scale).sub_(self.shift)
        return x.contiguous(memory_format=self.memory_format)

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        pad, device = self.settings.crop_padding, images.device
        if pad > 0:
            padded = F.pad(images, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (b,), generator=self.g, device=device)
            dx = torch.randint(0, 2 * pad + 1, (b,), generator=self.g, device=device)
            rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
            batch_idx = torch.arange(b, device=device)[:, None, None, None]
            chan_idx = torch.arange(c, device=device)[None, :, None, None]
            images = padded[batch_idx, chan_idx, rows, cols]
        if self.settings.hflip:
            flip = torch.rand(b, generator=self.g, device=device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return self.normalize(images)

    def epoch(self, batch_size: int):
        n = len(self.data)
        perm = torch.randperm(n, generator=self.g, device=self.data.images.device)
        for i in range(n // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            yield self.augment(self.data.images[idx]), self.data.labels[idx]

    def eval_batches(self, data: TensorData, batch_size: int):
        """(normalised images, labels) of ``data`` in order, moved here batch by batch where ``data`` is elsewhere."""
        for i in range(0, len(data), batch_size):
            images = data.images[i:i + batch_size].to(self.device, non_blocking=True)
            yield self.normalize(images), data.labels[i:i + batch_size].to(self.device, non_blocking=True)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             precision: str = "bf16") -> tuple[float, float]:
    """(mean cross-entropy, top-1 error) over ``batches`` of (model-ready images, labels), such as
    ``DeviceLoader.eval_batches``; the forward pass runs under ``device.autocast(precision)``."""
    model.eval()
    loss_sum, wrong, n = 0.0, 0, 0  # become tensors on the batches' device: no synchronisation per batch
    for x, y in batches:
        with autocast(x.device, precision):
            logits = model(x)
        loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum").double()
        wrong = wrong + (logits.argmax(1) != y).sum()
        n += len(y)
    model.train()
    n = max(1, n)
    return float(loss_sum) / n, int(wrong) / n


@torch.no_grad()
def measure_throughput(model: torch.nn.Module, image_size: int, device: torch.device, settings: TrainSettings,
                       iters: int | None = None, graph: bool = False) -> float:
    """Inference images/s on ``device``: eval mode, random input, one warm-up batch, then ``iters`` timed
    batches (default ``settings.throughput_iters``). The validation pass before it has already run
    the model in eval mode, so one warm-up batch (for the new batch shape) is enough. ``graph`` (a trial in
    graph mode, on CUDA): the forward pass is captured once and replayed, so that a small model's figure is
    not its kernel launches' (falls back to eager batches where the capture fails)."""
    iters = iters or settings.throughput_iters
    model.eval()
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    x = torch.randn(settings.throughput_batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)

    def forward():
        with autocast(device, settings.precision, cache=not graph):
            model(x)

    step = _captured(forward, device) if graph and device.type == "cuda" else None
    elapsed = time_total(step.replay if step is not None else forward, device, iters, warmup=1)
    model.train()
    return settings.throughput_batch * iters / max(elapsed, 1e-9)


def _captured(forward, device: torch.device):
    """``forward`` captured as a CUDA graph after a warm-up call on a side stream, or None where that fails."""
    try:
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            forward()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            forward()
        return graph
    except Exception:
        return None


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _Run:
    """Mutable state of one trial, turned into the result record at the end."""

    epochs: int
    epochs_run: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    params: int | None = None
    macs: int | None = None
    throughput: float | None = None
    train_time_s: float = 0.0
    setup_s: float | None = None  # build, MAC count, move to device, optimizer: everything before the first step
    first_epoch_s: float | None = None  # training time of the first epoch (compilation and autotuning included)
    eval_s: float = 0.0  # validation passes and the throughput measurement
    val_loss: float | None = None
    val_error: float | None = None
    test_loss: float | None = None
    test_error: float | None = None
    step_mode: str | None = None  # eager, graph or compile: how the steps ran (objectives/step.py)
    step_fallback: str | None = None  # why a graph capture fell back to eager steps

    def measures(self, ok: bool, test: bool, device: torch.device, peak: tuple[float, str],
                 wall_s: float) -> dict[str, Any]:
        """What the trial measured, as the record's keys (the errors only where it trained to an end)."""
        r4 = lambda v: None if v is None else round(v, 4)  # noqa: E731
        return {
            "val_error": self.val_error if ok else None, "val_loss": self.val_loss if ok else None,
            "epochs": self.epochs, "epochs_run": self.epochs_run, "train_time_s": r4(self.train_time_s),
            "setup_s": r4(self.setup_s), "first_epoch_s": r4(self.first_epoch_s), "eval_s": r4(self.eval_s),
            "wall_time_s": r4(wall_s), "params": self.params, "macs": self.macs, "throughput": self.throughput,
            "latency_ms": 1000.0 / self.throughput if self.throughput else None,
            "peak_memory_mb": round(peak[0], 1), "peak_memory_kind": peak[1], "device": str(device),
            "step": self.step_mode, "step_fallback": self.step_fallback,
            **({"test_error": self.test_error if ok else None, "test_loss": self.test_loss if ok else None}
               if test else {}),
        }


def train_proxy(
    config: Mapping[str, Any],
    splits: Splits,
    settings: TrainSettings | None = None,
    seed: int = 0,
    budget: float | None = None,
    test: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrialRecord:
    """Train the proxy of ``config`` for ``budget`` epochs; return the result record (never raises for a bad trial).

    ``config``: SMAC's ``Configuration`` (as it is) or a mapping; either is checked here, once (``validate``: a
    Configuration of the space passes), and the builder and the objectives' producers take it as checked.
    ``test=True`` (final evaluations only, never a search) also reports ``test_error`` and ``test_loss``;
    ``on_epoch`` is called with each epoch's row of the learning curve as it ends.
    """
    settings = settings or TrainSettings()
    device = splits.train.images.device
    run = _Run(epochs=budget_to_epochs(budget, settings.epochs))
    status, reason = "ok", ""
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = optimizer = None
    try:
        config = validate(config)
        status, reason, model, optimizer = _train(config, splits, settings, seed, device, run, start, test,
                                                  on_epoch)
    except torch.OutOfMemoryError as exc:
        status, reason = "oom", f"out of memory: {str(exc).splitlines()[0] if str(exc) else 'OutOfMemoryError'}"
    except _Diverged as exc:
        status, reason = "diverged", str(exc)
    except Exception as exc:  # contain everything: a trial must never end the search
        status, reason = "crashed", f"{type(exc).__name__}: {exc}"
    finally:
        peak = peak_memory_mb(device)
        del model, optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = status in ("ok", "timeout") and run.val_error is not None
    return TrialRecord(status, reason, config, seed, budget, cost=run.val_error if status == "ok" else settings.crash_cost,
                       curve=run.curve, measures=run.measures(ok, test, device, peak, time.perf_counter() - start))


def loss_fn_of(settings: TrainSettings):
    """The training loss of (float logits, labels), or of mixed soft targets where mixup / cutmix is on."""
    if settings.mixup > 0 or settings.cutmix > 0:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()  # mixed targets: timm's soft-target cross-entropy
    smoothing = settings.label_smoothing
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)


class TrainSteps:
    """The training steps of one trial in its step mode: eager (and compile) through timm's optimizer and
    scheduler, ``graph`` through a captured :class:`GraphStep`, which falls back to eager steps (the reason in
    ``fallback``) where the capture fails."""

    def __init__(self, mode, net, optimizer, scheduler, loss_fn, settings, total):
        self.mode, self.fallback = mode, None
        self.net, self.optimizer, self.scheduler, self.loss_fn, self.settings = net, optimizer, scheduler, loss_fn, settings
        self.count, self.graph, self._loss_sum = 0, None, None
        self.table = cosine_lr_table(total, settings.lr, settings.min_lr, scheduler.warmup_t)
        if mode == "graph" and settings.optimizer != "lamb":
            self._fall_back(f"the graph step supports the LAMB optimizer only, not '{settings.optimizer}'")

    def _fall_back(self, reason: str) -> None:
        self.mode, self.fallback = "eager", reason
        if self.graph is not None:
            self.graph.sync_optimizer(float(self.table[min(self.count, len(self.table) - 1)]))
            self._loss_sum = self.graph.take_loss_sum()
            self.graph = None

    def train(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One update on the batch ``x`` with labels (or soft targets) ``y``."""
        if self.mode == "graph":
            if self.graph is None:
                self.graph = GraphStep(self.net, self.optimizer, self.table, self.loss_fn, x, y,
                                       self.settings.precision)
            self.graph.load(x, y)
            try:
                self.graph.run()
                self.count += 1
                return
            except StepFallback as exc:
                self._fall_back(str(exc))
        with autocast(x.device, self.settings.precision):
            logits = self.net(x)
        loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.count += 1
        self.scheduler.step_update(num_updates=self.count)
        self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()

    def loss_sum(self) -> torch.Tensor:
        """The summed training loss of this epoch so far (a device tensor)."""
        own = self._loss_sum if self._loss_sum is not None else torch.zeros(())
        return own if self.graph is None else self.graph.loss_sum + own.to(self.graph.loss_sum.device)

    def take_loss_sum(self) -> torch.Tensor:
        total = self.loss_sum()
        self._loss_sum = None
        if self.graph is not None:
            self.graph.loss_sum.zero_()
        return total

    def lr(self) -> float:
        """The learning rate of the next update."""
        if self.mode == "graph":
            return float(self.table[min(self.count, len(self.table) - 1)])
        return self.optimizer.param_groups[0]["lr"]


@dataclass
class _Setup:
    """What one trial trains with: the model (and ``net``, compiled where asked), its optimizer and steps."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: Any
    steps: TrainSteps
    loader: DeviceLoader
    mixup: Any
    batch_size: int
    steps_per_epoch: int


def _setup(config, splits: Splits, settings: TrainSettings, seed: int, device: torch.device, run: _Run) -> _Setup:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    _seed_everything(seed)
    model = build_model(config, "proxy", num_classes=splits.num_classes, width=settings.width, depth=settings.depth,
                        drop_path_rate=settings.drop_path)
    run.params = count_params(model)
    run.macs = count_macs_fast(model, splits.image_size)
    model = model.to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        bench = settings.cudnn_benchmark
        torch.backends.cudnn.benchmark = run.epochs >= SHORT_TRIAL_EPOCHS if bench == "auto" else bool(bench)
    mode = resolve_step(settings.step, settings.compile, device.type)
    net = maybe_compile(model, (compile_mode(settings.compile) or "default") if mode == "compile" else False)
    batch_size = min(settings.batch_size, len(splits.train) - len(splits.train) % 2)
    steps_per_epoch = max(1, len(splits.train) // batch_size)
    total = steps_per_epoch * run.epochs
    foreach = optimizer_foreach(device.type, settings.foreach) if settings.optimizer == "lamb" else None
    optimizer = create_optimizer_v2(model, opt=settings.optimizer, lr=settings.lr, weight_decay=settings.weight_decay,
                                    foreach=foreach)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total, lr_min=settings.min_lr, warmup_t=int(round(settings.warmup_frac * total)),
        warmup_lr_init=settings.min_lr, t_in_epochs=False,
    )
    mixup = None
    if settings.mixup > 0 or settings.cutmix > 0:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                      label_smoothing=settings.label_smoothing, num_classes=splits.num_classes)
    loader = DeviceLoader(splits.train, splits, settings, torch.Generator(device=device).manual_seed(seed))
    steps = TrainSteps(mode, net, optimizer, scheduler, loss_fn_of(settings), settings, total)
    return _Setup(model, net, optimizer, steps, loader, mixup, batch_size, steps_per_epoch)


def _train(config, splits, settings, seed, device, run, start, test=False, on_epoch=None):
    t = _setup(config, splits, settings, seed, device, run)
    status, reason = "ok", ""
    t.model.train()
    sync(device)
    run.setup_s = time.perf_counter() - start
    for epoch in range(run.epochs):
        status = _epoch(t, splits, settings, device, run, start, epoch, on_epoch)
        if status == "timeout":
            reason = (f"time limit {settings.time_limit_s:g} s reached after {run.epochs_run:.2f} "
                      f"of {run.epochs} epochs")
            break
    eval_start = time.perf_counter()
    if test:
        if splits.test is None:
            raise UserError(f"dataset '{splits.name}' has no test split")
        run.test_loss, run.test_error = evaluate(t.net, t.loader.eval_batches(splits.test, settings.eval_batch_size),
                                                 settings.precision)
    short = run.epochs < SHORT_TRIAL_EPOCHS  # a short trial is a cheap estimate: half the timed batches
    iters = max(1, settings.throughput_iters // 2) if short else settings.throughput_iters
    run.throughput = measure_throughput(t.net, splits.image_size, device, settings, iters,
                                        graph=t.steps.mode == "graph")
    run.eval_s += time.perf_counter() - eval_start
    run.step_mode, run.step_fallback = t.steps.mode, t.steps.fallback
    return status, reason, t.model, t.optimizer


def _epoch(t: _Setup, splits: Splits, settings: TrainSettings, device: torch.device, run: _Run, start: float,
           epoch: int, on_epoch) -> str:
    """One epoch's steps (stopped by the time limit: ``timeout``), its validation and its row of the curve."""
    status, epoch_start, n_steps = "ok", time.perf_counter(), 0
    for x, y in t.loader.epoch(t.batch_size):
        t.steps.train(*(t.mixup(x, y) if t.mixup is not None else (x, y)))
        n_steps += 1
        if n_steps % 25 == 0 and not torch.isfinite(t.steps.loss_sum()):
            raise _Diverged(f"non-finite training loss at epoch {epoch + 1}, step {n_steps}")
        if settings.time_limit_s is not None and time.perf_counter() - start > settings.time_limit_s:
            status = "timeout"
            break
    loss_sum = t.steps.take_loss_sum()
    sync(device)
    epoch_s = time.perf_counter() - epoch_start
    run.train_time_s += epoch_s
    if epoch == 0:
        run.first_epoch_s = epoch_s
    train_loss = float(loss_sum) / max(1, n_steps)
    if not math.isfinite(train_loss):
        raise _Diverged(f"non-finite training loss in epoch {epoch + 1}")
    eval_start = time.perf_counter()
    run.val_loss, run.val_error = evaluate(t.net, t.loader.eval_batches(splits.val, settings.eval_batch_size),
                                           settings.precision)
    run.eval_s += time.perf_counter() - eval_start
    if not math.isfinite(run.val_loss):
        raise _Diverged(f"non-finite validation loss after epoch {epoch + 1}")
    run.epochs_run = epoch + 1 if status == "ok" else epoch + (n_steps / t.steps_per_epoch)
    run.curve.append({
        "epoch": epoch + 1, "train_loss": train_loss, "val_loss": run.val_loss, "val_error": run.val_error,
        "lr": t.steps.lr(), "time_s": round(time.perf_counter() - start, 4),
        "train_s": round(epoch_s, 4), "images": n_steps * t.batch_size, "end_time": time.time(),
    })
    if on_epoch is not None:
        on_epoch(run.curve[-1])
    return status
