"""The training device, in one place: resolve a name, synchronise, autocast, time a loop.

Used by the trainer and by every benchmark, so that "images/s on cuda with bf16" means the
same measurement everywhere.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from nexsearch.errors import UserError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: ``import nexsearch`` and the experiment's checks (``compile_mode``,
# ``resolve_workers`` with a count) run without it. ``workers: auto`` imports torch to count the GPUs (and their
# memory for ``workers_per_gpu: auto``): a few seconds before a search's heartbeat starts.
PRECISIONS = {"bf16": "bfloat16", "fp16": "float16", "fp32": None}  # torch dtype names
MEMORY_FORMATS = {"channels_last": "channels_last", "contiguous": "contiguous_format"}
COMPILE_MODES = ("false", "default", "reduce-overhead", "max-autotune")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first GPU if there is one, else the CPU; ``cuda`` without CUDA is a user error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but CUDA is not available here: use --device cpu")
    return device


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str = "bf16", cache: bool = True):
    """A context manager running the forward pass in ``precision`` (bf16, fp16, fp32).

    Reduced precision is used on CUDA only; on the CPU every precision runs fp32 (CPU autocast
    is slower than fp32 for these convolutions). ``cache=False`` for a forward pass captured as a
    CUDA graph (autocast's cache of cast weights must not outlive the capture).
    """
    import torch

    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None or device.type != "cuda":
        return nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, dtype), cache_enabled=cache)


def memory_format(name: str) -> torch.memory_format:
    import torch

    if name not in MEMORY_FORMATS:
        raise UserError(f"unknown memory format '{name}': choose one of {', '.join(MEMORY_FORMATS)}")
    return getattr(torch, MEMORY_FORMATS[name])


def compile_mode(value: Any) -> str | None:
    """A ``compile`` setting -> torch.compile's mode, or ``None`` for no compilation.

    Accepts ``false`` / ``default`` / ``reduce-overhead`` / ``max-autotune`` (and the booleans
    ``False`` / ``True`` = ``default``); anything else is a user error.
    """
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    name = str(value).strip().lower()
    if name not in COMPILE_MODES:
        raise UserError(f"unknown compile mode '{value}': choose one of {', '.join(COMPILE_MODES)}")
    return None if name == "false" else name


def maybe_compile(model: torch.nn.Module, mode: Any) -> torch.nn.Module:
    """``torch.compile(model, mode=...)`` for a compile setting, or the model itself for ``false``."""
    import torch

    resolved = compile_mode(mode)
    return model if resolved is None else torch.compile(model, mode=resolved)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(peak memory in MiB, what was measured): CUDA's max allocated, or the process's max RSS."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def time_iterations(step: Callable[[], Any], device: torch.device, iters: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``iters`` calls of ``step`` after ``warmup`` untimed calls (device synchronised)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def time_total(step: Callable[[], Any], device: torch.device, iters: int, warmup: int = 0) -> float:
    """Seconds of ``iters`` back-to-back calls of ``step`` (one synchronisation at each end)."""
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return time.perf_counter() - start


def cpu_slots() -> int:
    """The CPU cores this process may run on (its affinity; the machine's count where that is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(workers: int | str, workers_per_gpu: int | str = 1, device: str = "auto") -> int:
    """The number of parallel trial processes: ``workers`` itself, or for ``auto``
    #GPUs x ``workers_per_gpu`` when trials train on CUDA (one GPU for ``cuda:N``), else the CPU slots.
    ``workers_per_gpu: auto``: as many paper-size proxy trials as fit into each GPU's memory
    (``runners/packing.py``).
    """
    if workers_per_gpu != "auto" and (not isinstance(workers_per_gpu, int) or workers_per_gpu < 1):
        raise UserError(f"workers_per_gpu must be a whole number of at least 1, got {workers_per_gpu!r} "
                        "(or auto: as many trials as fit into a GPU's memory)")
    if isinstance(workers, str) and workers.strip().lower() == "auto":
        uses_cuda = device == "auto" or str(device).startswith("cuda")
        import torch

        if uses_cuda and torch.cuda.is_available():
            gpus = [int(str(device).split(":")[1])] if ":" in str(device) else range(torch.cuda.device_count())
            return sum(_per_gpu(workers_per_gpu, gpu) for gpu in gpus)
        return cpu_slots()
    try:
        n = int(workers)
    except (TypeError, ValueError):
        raise UserError(f"workers must be a number or 'auto', got {workers!r}") from None
    if n < 1:
        raise UserError(f"workers must be at least 1, got {n}")
    return n


def _per_gpu(workers_per_gpu: int | str, gpu: int) -> int:
    if workers_per_gpu != "auto":
        return int(workers_per_gpu)
    import torch

    from nexsearch.runners.packing import paper_proxy_slots

    return paper_proxy_slots(torch.cuda.get_device_properties(gpu).total_memory / 2**20)
