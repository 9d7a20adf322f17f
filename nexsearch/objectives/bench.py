"""``nexsearch bench train``: the nexsearch trainer's step against a plain training loop.

Both train the same proxy configuration for the same number of steps in one process, with the
same optimizer (timm's LAMB) and batch size; the first steps of each are warm-up and not timed.

* nexsearch: the dataset is one uint8 tensor on the device; crop, flip and normalise batch-wise
  there; channels_last; bf16 autocast on CUDA.
* baseline, as most code writes it: a torchvision-style Dataset yielding PIL images through
  ``RandomCrop(padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``; a DataLoader
  with worker processes; NCHW; fp32 on CPU, fp16 AMP with a GradScaler on CUDA.
"""

from __future__ import annotations

import itertools
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from nexsearch.objectives.datasets import TensorData, load_dataset
from nexsearch.objectives.trainer import TrainSettings, _GpuBatches, _sync, resolve_device
from nexsearch.search_space.builder import build_model


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


def _time_steps(model, batches, steps: int, warmup: int, device, autocast, scaler=None) -> float:
    """Seconds for ``steps`` optimizer steps after ``warmup`` untimed ones."""
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, opt="lamb", lr=1e-3, weight_decay=0.02)
    model.train()
    start = None
    for i, (x, y) in enumerate(itertools.islice(batches, warmup + steps)):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
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
    _sync(device)
    return time.perf_counter() - start


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
) -> dict[str, Any]:
    """Images/s of the nexsearch step and of the plain loop, and their ratio."""
    from torchvision import transforms as T

    dev = resolve_device(device)
    n = max(batch_size * 8, 1024)
    splits = load_dataset("synthetic", seed=seed, image_size=image_size, synthetic_size=n,
                          synthetic_classes=num_classes, val_fraction=0.05)
    settings = TrainSettings(batch_size=batch_size, width=width, device=str(dev))

    def make_model(channels_last: bool):
        torch.manual_seed(seed)
        m = build_model(config, "proxy", num_classes=num_classes, width=width, drop_path_rate=0.05).to(dev)
        return m.to(memory_format=torch.channels_last) if channels_last else m

    # nexsearch: data on the device, augmentation batch-wise, channels_last, bf16 on CUDA.
    on_device = splits.to(dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    gpu_batches = _GpuBatches(on_device.train, on_device, settings, g)
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev.type == "cuda" else nullcontext
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    t_nex = _time_steps(make_model(True), _cycle(lambda: gpu_batches.epoch(batch_size)), steps, warmup, dev, amp)

    # baseline: PIL + torchvision transforms + DataLoader workers, NCHW, fp32 (CPU) / fp16 AMP (CUDA).
    tf = T.Compose([T.RandomCrop(image_size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(splits.mean, splits.std)])
    loader = torch.utils.data.DataLoader(
        _PilDataset(splits.train, tf), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=dev.type == "cuda", persistent_workers=workers > 0,
    )
    scaler = torch.amp.GradScaler("cuda") if dev.type == "cuda" else None
    amp16 = (lambda: torch.autocast("cuda", dtype=torch.float16)) if dev.type == "cuda" else nullcontext
    t_base = _time_steps(make_model(False), _cycle(lambda: iter(loader)), steps, warmup, dev, amp16, scaler)

    images = steps * batch_size
    nex, base = images / t_nex, images / t_base
    return {
        "nexsearch_images_per_s": round(nex, 2),
        "baseline_images_per_s": round(base, 2),
        "ratio": round(nex / base, 3),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "steps": steps,
        "batch_size": batch_size,
        "width": width,
        "image_size": image_size,
        "torch": torch.__version__,
    }
