"""``nexsearch bench train``: the nexsearch trainer's step against a plain training loop.

Both train the same proxy configuration for the same number of steps in one process, with the
same optimizer (timm's LAMB) and batch size; the first steps of each are warm-up and not timed.

* nexsearch: the dataset is one uint8 tensor on the device; crop, flip and normalise batch-wise
  there; channels_last; bf16 autocast on CUDA. ``precision``, ``memory_format``, ``compile`` and
  ``blurpool`` change this side only, so that one GPU call can compare them.
* baseline, as most code writes it: a torchvision-style Dataset yielding PIL images through
  ``RandomCrop(padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``; a DataLoader
  with worker processes; NCHW; fp32 on CPU, fp16 AMP with a GradScaler on CUDA.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from nexsearch.device import (
    autocast, check_precision, device_name, maybe_compile, memory_format, resolve_device, time_total,
)
from nexsearch.errors import UserError
from nexsearch.objectives.datasets import TensorData, load_dataset
from nexsearch.objectives.step import WARMUP_STEPS, resolve_step
from nexsearch.objectives.settings import DataSpec, TrainSettings
from nexsearch.objectives.trainer import DeviceLoader, TrainSteps, loss_fn_of
from nexsearch.search_space.builder import build_model, use_blurpool


class _PilDataset(torch.utils.data.Dataset):
    """A torchvision-style dataset over uint8 arrays: PIL image per sample, then transforms."""

    def __init__(self, data: TensorData, transform):
        self.images = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = data.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def _time_steps(model, batches, steps: int, warmup: int, device, autocast, scaler=None, params=None) -> float:
    """Seconds for ``steps`` optimizer steps after ``warmup`` untimed ones (``params``: the uncompiled model)."""
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(params if params is not None else model, opt="lamb", lr=1e-3, weight_decay=0.02)
    model.train()
    # Each step trains on the batch fetched before it, then fetches the next: the first timed batch is
    # fetched during the warm-up and the last step fetches nothing (islice ends), as the plain loop did.
    batches = itertools.islice(batches, warmup + steps)
    batch = next(batches)

    def step():
        nonlocal batch
        x, y = batch
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        batch = next(batches, None)

    return time_total(step, device, steps, warmup)


def _time_trainer_steps(model, net, batches, steps: int, warmup: int, device, settings, mode: str):
    """(seconds for ``steps`` steps after ``warmup`` untimed ones, the steps) of the trainer's own step
    (``TrainSteps``: eager, compile, or the captured graph, whose capture falls in the warm-up)."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from nexsearch.objectives.step import optimizer_foreach

    optimizer = create_optimizer_v2(model, opt="lamb", lr=settings.lr, weight_decay=settings.weight_decay,
                                    foreach=optimizer_foreach(device.type, settings.foreach))
    total = warmup + steps
    scheduler = CosineLRScheduler(optimizer, t_initial=total, lr_min=settings.min_lr, warmup_t=1,
                                  warmup_lr_init=settings.min_lr, t_in_epochs=False)
    train = TrainSteps(mode, net, optimizer, scheduler, loss_fn_of(settings), settings, total)
    model.train()
    batches = itertools.islice(batches, total)
    batch = next(batches)

    def step():
        nonlocal batch
        train.train(*batch)
        batch = next(batches, None)

    return time_total(step, device, steps, warmup), train


def _cycle(make_iter):
    while True:
        yield from make_iter()


def bench_train(
    config: dict[str, Any],
    steps: int = 20,
    warmup: int = 3,
    batch_size: int = 128,
    width: float = 1.0,
    device: str = "auto",
    workers: int = 2,
    image_size: int = 32,
    num_classes: int = 100,
    seed: int = 0,
    precision: str = "bf16",
    memory: str = "channels_last",
    compile: str | bool = False,
    blurpool_keep_format: bool = True,
    step: str = "auto",
    foreach: str = "auto",
    count_ops: bool = True,
) -> dict[str, Any]:
    """Images/s of the nexsearch step and of the plain loop, and their ratio.

    ``precision`` (bf16, fp16, fp32; reduced precision on CUDA only), ``memory``
    (channels_last, contiguous), ``compile`` (a torch.compile mode or false) and
    ``blurpool_keep_format`` apply to the nexsearch side, which runs the trainer's step in the mode ``step``
    (auto, eager, graph, compile; fp16 runs eagerly with a GradScaler) with LAMB's multi-tensor path
    (``foreach`` true), its single-tensor path (false) or the trainer's choice (auto). ``count_ops``: also the
    aten ops of one step by phase and of each LAMB path (``bench/opcount.py``).
    """
    check_precision(precision)
    fmt = memory_format(memory)
    dev = resolve_device(device)
    splits, settings, batches = _inputs(batch_size, seed, image_size, num_classes, width, dev, fmt, foreach)

    def make_model(fmt: torch.memory_format):
        torch.manual_seed(seed)
        m = build_model(config, "proxy", num_classes=num_classes, width=width, drop_path_rate=0.05).to(dev)
        return use_blurpool(m.to(memory_format=fmt), blurpool_keep_format)

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = make_model(fmt)
    t_nex, warmup, mode, fallback = _nexsearch_side(model, _cycle(lambda: batches.epoch(batch_size)), steps, warmup,
                                                    dev, settings, precision, step, compile)
    del model
    ops = _count_ops(make_model(fmt), batches, batch_size, dev, precision) if count_ops else None

    t_base = _baseline_side(make_model(torch.contiguous_format), splits, image_size, batch_size, workers, dev, steps,
                            warmup)
    images = steps * batch_size
    nex, base = images / t_nex, images / t_base
    return {
        "nexsearch_images_per_s": round(nex, 2), "baseline_images_per_s": round(base, 2), "ratio": round(nex / base, 3),
        "device": device_name(dev), "steps": steps, "warmup": warmup, "batch_size": batch_size, "width": width,
        "image_size": image_size, "precision": precision if dev.type == "cuda" else "fp32", "memory_format": memory,
        "compile": compile or False, "step": mode, "step_fallback": fallback, "foreach": foreach,
        "ops_per_step": ops and ops["step"], "optimizer_ops": ops and ops["optimizer"],
        "blurpool_keep_format": blurpool_keep_format, "torch": torch.__version__,
    }


def _inputs(batch_size: int, seed: int, image_size: int, num_classes: int, width: float, dev, fmt, foreach):
    """The synthetic data (on the CPU), the trainer's settings, and the nexsearch side's batches: data on the
    device, augmentation batch-wise, channels_last, bf16 on CUDA."""
    n = max(batch_size * 8, 1024)
    splits = load_dataset(DataSpec("synthetic", seed=seed, image_size=image_size, synthetic_size=n,
                                   synthetic_classes=num_classes, val_fraction=0.05))
    settings = TrainSettings(batch_size=batch_size, width=width, device=str(dev),
                             channels_last=fmt == torch.channels_last,
                             foreach={"true": True, "false": False}.get(str(foreach).lower(), foreach))
    on_device = splits.to(dev)
    batches = DeviceLoader(on_device.train, on_device, settings, torch.Generator(device=dev).manual_seed(seed))
    return splits, settings, batches


def _baseline_side(model, splits, image_size: int, batch_size: int, workers: int, dev, steps: int,
                   warmup: int) -> float:
    """Seconds of the plain loop: PIL + torchvision transforms + DataLoader workers, NCHW, fp32 (CPU) / fp16 AMP
    (CUDA)."""
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(splits.mean, splits.std)])
    loader = torch.utils.data.DataLoader(
        _PilDataset(splits.train, tf), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
    )
    scaler = torch.amp.GradScaler("cuda") if dev.type == "cuda" else None
    amp16 = lambda: autocast(dev, "fp16")  # noqa: E731
    return _time_steps(model, _cycle(lambda: iter(loader)), steps, warmup, dev, amp16, scaler)


def _nexsearch_side(model, batches, steps: int, warmup: int, dev, settings, precision: str, step: str,
                    compile: str | bool) -> tuple[float, int, str, str | None]:
    """(seconds, warm-up steps, step mode, why a capture fell back) of the trainer's step in ``step`` mode; fp16
    runs eagerly with a GradScaler; graph mode captures within the warm-up."""
    mode = "eager" if precision == "fp16" else resolve_step(step, compile, dev.type)
    if mode == "graph":
        warmup = max(warmup, WARMUP_STEPS + 1)  # the capture happens in the untimed steps
    net = maybe_compile(model, (compile if compile not in (False, "false") else "default") if mode == "compile"
                        else False)
    if precision == "fp16":
        scaler = torch.amp.GradScaler("cuda") if dev.type == "cuda" else None
        return (_time_steps(net, batches, steps, warmup, dev, lambda: autocast(dev, precision), scaler, params=model),
                warmup, mode, None)
    settings = replace(settings, amp=precision == "bf16", lr=1e-3)
    seconds, train = _time_trainer_steps(model, net, batches, steps, warmup, dev, settings, mode)
    return seconds, warmup, train.mode, train.fallback


def _count_ops(model, loader: DeviceLoader, batch_size: int, dev, precision: str) -> dict[str, Any]:
    """Aten ops of one step (the second: the first creates LAMB's state) of the trainer's eager path on ``dev``
    (LAMB as the trainer takes it there) by phase, and of one LAMB step on each path."""
    from timm.optim import create_optimizer_v2

    from nexsearch.bench.opcount import count_step_ops, optimizer_ops
    from nexsearch.objectives.step import optimizer_foreach

    opt = create_optimizer_v2(model, opt="lamb", lr=1e-3, weight_decay=0.02, foreach=optimizer_foreach(dev.type))
    model.train()
    epoch = loader.epoch(batch_size)
    for _ in range(2):
        counts = count_step_ops(model, opt.step, lambda: next(epoch), F.cross_entropy,
                                lambda: autocast(dev, precision))
    x, y = next(epoch)
    return {"step": counts, "optimizer": optimizer_ops(model, x, y)}


def main(args: argparse.Namespace) -> int:
    """``nexsearch bench train``: run, then print a table or one JSON object."""
    from nexsearch.bench import variant_kwargs
    from nexsearch.search_space.presets import preset

    if args.steps < 1 or args.batch_size < 2 or args.width <= 0 or args.warmup < 0:
        raise UserError("--steps must be >= 1, --warmup >= 0, --batch-size >= 2 and --width > 0")
    result = bench_train(
        preset(args.preset), steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, width=args.width,
        device=args.device, workers=args.workers, step=args.step, foreach=args.foreach, **variant_kwargs(args),
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device {result['device']}, proxy '{args.preset}' width {args.width}, batch {args.batch_size}, "
          f"{args.steps} timed steps; nexsearch side: {result['precision']}, {result['memory_format']}, "
          f"compile {result['compile']}, step {result['step']}"
          + (f" (fell back: {result['step_fallback']})" if result["step_fallback"] else "")
          + f", LAMB foreach {result['foreach']}")
    print(f"  nexsearch trainer  {result['nexsearch_images_per_s']:10.1f} images/s")
    print(f"  plain loop         {result['baseline_images_per_s']:10.1f} images/s")
    print(f"  ratio              {result['ratio']:10.2f}x")
    if result["ops_per_step"]:
        ops = result["ops_per_step"]
        print("  aten ops per step  " + ", ".join(f"{k} {v}" for k, v in ops.items()))
        print("  LAMB step ops      " + ", ".join(f"{k} {v}" for k, v in result["optimizer_ops"].items()))
    return 0
