"""Resource checks before a search starts (nothing is written, nothing is charged to the budget yet).

* ``check_workers``: ``--workers`` within what the machine runs at once (CPU slots, or GPUs x
  ``workers_per_gpu`` on CUDA) and within its free memory (each worker process holds torch and a copy
  of the dataset);
* ``check_dataset_memory``: the dataset at its ``image_size`` fits in memory while it loads;
* ``check_training_memory``: one image's activations of the default configuration, measured, times
  each batch size against what the device has (one line naming the setting);
* ``probe_scheduler``: an address given with ``--scheduler`` answers within seconds.

The memory figures are estimates: they refuse settings that cannot work, not tight ones.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexsearch.device import cpu_slots
from nexsearch.errors import UserError

if TYPE_CHECKING:
    from nexsearch.runners.experiment import Experiment

GIB = 1024**3
WORKER_BASE_BYTES = 1 * GIB  # a worker process with torch, timm and SMAC's client loaded (measured: ~0.25-0.6 GiB)
DATASET_IMAGES = {"cifar100": 60_000, "digits": 1_797}
DATASET_NATIVE_SIZE = {"cifar100": 32, "digits": 8}
SCHEDULER_TIMEOUT_S = 3.0


def available_memory() -> int:
    """Bytes of memory free for new processes (psutil; /proc/meminfo's MemAvailable without it)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def dataset_images(exp: "Experiment") -> int:
    """How many images the dataset loads (before train_subset keeps a part of them)."""
    if exp.dataset == "synthetic":
        from nexsearch.objectives.settings import DataSpec

        size = DataSpec.synthetic_size
        return size + size // 4
    if exp.dataset == "folder":
        return sum(_count_files(Path(d)) for d in (exp.data_dir, exp.test_dir) if d)
    return DATASET_IMAGES.get(exp.dataset, 0)


def _count_files(root: Path) -> int:
    n = 0
    for _, _, files in os.walk(root):
        n += len(files)
    return n


def dataset_bytes(exp: "Experiment") -> tuple[int, int]:
    """(bytes the loaded dataset keeps as uint8, peak bytes while it loads: the float copies of a resize)."""
    native = DATASET_NATIVE_SIZE.get(exp.dataset)
    size = exp.image_size or native or 32
    kept = dataset_images(exp) * 3 * size * size
    if size == native or exp.dataset == "folder":  # no float copy of the whole set: the images and their stack
        return kept, kept * 2
    return kept, kept * 9  # uint8 + float32 input and output of the bilinear resize (and synthetic's templates)


def check_dataset_memory(exp: "Experiment") -> int:
    """Refuse an ``image_size`` whose dataset cannot be loaded in this machine's free memory; returns the bytes
    the loaded dataset keeps."""
    kept, peak = dataset_bytes(exp)
    free = available_memory()
    if peak > free:
        raise UserError(f"setting 'image_size' {exp.image_size}: loading the {exp.dataset} dataset at that size needs "
                        f"about {_gib(peak)} of memory, {_gib(free)} are free: use a smaller image_size")
    return kept


def check_workers(exp: "Experiment") -> None:
    """``--workers`` within the CPU slots (or GPUs x workers_per_gpu on CUDA) and the free memory of a local
    cluster; a joined scheduler brings its own workers."""
    if exp.scheduler or exp.workers <= 1:
        return
    slots, gpus = cpu_slots(), 0
    limit, what = slots, f"{slots} CPU slot(s)"
    if exp.workers > slots and (exp.device == "auto" or exp.device.startswith("cuda")):
        import torch  # only here: most runs stay within the CPU slots

        if torch.cuda.is_available():
            gpus = 1 if ":" in exp.device else torch.cuda.device_count()
            limit, what = gpus * exp.workers_per_gpu, f"{gpus} GPU(s) x workers_per_gpu {exp.workers_per_gpu}"
            if exp.workers_per_gpu == "auto":  # the paper-size trials that fit into each GPU, as --workers auto
                from nexsearch.device import resolve_workers

                limit = resolve_workers("auto", "auto", exp.device)
    if exp.workers > limit:
        raise UserError(f"--workers {exp.workers} is more than this machine runs at once ({what}): use at most "
                        f"{limit}, or --workers auto")
    kept, _ = dataset_bytes(exp)
    need, free = exp.workers * (WORKER_BASE_BYTES + kept), available_memory()
    if need > free:
        fit = max(1, free // (WORKER_BASE_BYTES + kept))
        raise UserError(f"--workers {exp.workers} would need about {_gib(need)} of memory (a process and a copy of "
                        f"the data each), {_gib(free)} are free: use at most {fit}")


def activation_bytes(model: Any, image_size: int, device: Any) -> tuple[int, int]:
    """(sum, largest) bytes of the outputs of ``model``'s modules for one image: what a training step keeps per
    image, and what an inference batch needs per image at its widest layer."""
    import torch

    sizes: list[int] = []

    def hook(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train()
    return sum(sizes), max(sizes, default=0)


def device_memory(device: Any, workers: int) -> int:
    """Bytes one trial may use: the GPU's memory shared by the trials on it, or the free memory over the workers."""
    import torch

    if device.type == "cuda":
        gpus = max(1, torch.cuda.device_count())
        sharing = max(1, -(-workers // gpus))
        return int(torch.cuda.mem_get_info(device)[1]) // sharing
    return available_memory() // max(1, workers)


def check_training_memory(model: Any, image_size: int, settings: Any, device: Any, workers: int) -> None:
    """The batch sizes of ``settings`` against the device: training keeps every activation (and its gradient)
    per image; evaluation and the throughput measurement need about four of the widest layer per image."""
    total, widest = activation_bytes(model, image_size, device)
    have = device_memory(device, workers)
    for name, per_image in (("batch_size", 2 * total), ("eval_batch_size", 4 * widest),
                            ("throughput_batch", 4 * widest)):
        batch = getattr(settings, name)
        if batch * per_image > have:
            raise UserError(f"setting 'train.{name}' {batch}: the default configuration would need about "
                            f"{_gib(batch * per_image)} for one batch at {image_size}px, one trial has "
                            f"{_gib(have)} on {device}: use at most {max(1, have // max(1, per_image))}")


def probe_scheduler(address: str, timeout: float = SCHEDULER_TIMEOUT_S) -> None:
    """A TCP connection to a ``--scheduler`` address (tcp:// or tls://), within ``timeout`` seconds."""
    scheme, _, rest = address.rpartition("://")
    if scheme and scheme not in ("tcp", "tls"):
        return  # inproc://, ucx://: left to Dask
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--scheduler {address!r} is no Dask scheduler address: write tls://HOST:PORT "
                        "(or tcp://HOST:PORT)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UserError(f"cannot reach the Dask scheduler at {address} ({reason} within {timeout:g} s): start it "
                        "first, or check the address") from None
