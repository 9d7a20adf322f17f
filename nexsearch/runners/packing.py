"""Trials packed onto a GPU by memory, not by a count (``workers_per_gpu: auto``).

* :func:`estimate_peak_mb` -- a trial's peak training memory from its architecture and batch size:
  parameters with their gradients and LAMB's two moments (16 bytes each) plus the activations kept for
  the backward pass (every leaf module's output, counted on the meta device: no memory, no GPU).
* :class:`Calibration` -- that estimate corrected by what earlier trials of the run measured (every
  trial record has ``peak_memory_mb`` of CUDA's allocator): the largest measured / estimated ratio
  seen, so that an estimate errs on the large side.
* :class:`GpuLedger` -- which GPU a trial goes to and whether one more fits: each GPU's memory is
  the Dask worker resource ``GPU_MEMORY_RESOURCE`` (in MiB), each running trial holds its estimate.
* :func:`retry_alone` -- an out-of-memory trial is run again with the GPU to itself before it is
  recorded as failed.
* :class:`MemoryPacking` -- what ``RobustDaskRunner`` (runners/workers.py) admits trials with: each
  configuration's estimate (cached), its calibration, and the clip to a whole GPU; :func:`worker_gpu` -- which
  GPU a Dask worker trains on (several worker processes may share one).
* :func:`slots_per_gpu` -- how many worker processes a GPU gets: as many paper-size trials as fit.

Pure functions and plain data (torch only inside :func:`estimate_peak_mb`), tested with fake resources.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

GPU_MEMORY_RESOURCE = "GPU_MEMORY_MB"  # Dask worker resource: the GPU's memory in MiB
OPTIMIZER_BYTES_PER_PARAM = 16  # fp32 weight, gradient, LAMB's exp_avg and exp_avg_sq
FIXED_MB = 64.0  # cuDNN / cuBLAS workspaces, the static batch and the loss
RESERVE_FRACTION = 0.1  # of a GPU's memory kept free (allocator fragmentation, the CUDA context)
MAX_SLOTS = 8  # worker processes per GPU at most


def estimate_peak_mb(config: Mapping[str, Any], batch_size: int, width: float = 1.0, depth: int = 4,
                     image_size: int = 32, num_classes: int = 100, activation_bytes: int = 4) -> float:
    """Peak training memory (MiB) of the proxy of ``config``: parameter state plus ``batch_size`` x the elements of
    every leaf module's output at ``activation_bytes`` each (4: fp32; bf16 autocast keeps some fp32 copies)."""
    import torch

    from nexsearch.search_space.builder import build_model

    with torch.device("meta"):
        model = build_model(config, "proxy", num_classes=num_classes, width=width, depth=depth)
    elements = 0

    def count(module, inputs, output):
        nonlocal elements
        if isinstance(output, torch.Tensor):
            elements += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return (params * OPTIMIZER_BYTES_PER_PARAM + batch_size * elements * activation_bytes) / 2**20 + FIXED_MB


@dataclass
class Calibration:
    """Measured / estimated peak memory of the run's earlier trials: ``correct(estimate)`` scales a new estimate by
    the largest ratio seen (1.0 before any trial measured), times ``margin``."""

    margin: float = 1.1
    ratios: list[float] = field(default_factory=list)

    def observe(self, estimate_mb: float, record: Mapping[str, Any]) -> None:
        """Learn from a finished trial's record (only CUDA's allocator peaks: a process RSS says nothing here)."""
        peak = record.get("peak_memory_mb")
        if peak and estimate_mb > 0 and record.get("peak_memory_kind") == "cuda_max_allocated":
            self.ratios.append(float(peak) / estimate_mb)

    def correct(self, estimate_mb: float) -> float:
        return estimate_mb * (max(self.ratios) if self.ratios else 1.0) * self.margin


@dataclass
class GpuLedger:
    """The memory each GPU (a Dask worker resource) has left for trials, and which trial holds what."""

    capacity_mb: dict[str, float]  # GPU (or worker group) -> usable MiB
    held: dict[str, tuple[str, float]] = field(default_factory=dict)  # trial key -> (GPU, MiB)

    def free_mb(self, gpu: str) -> float:
        return self.capacity_mb[gpu] - sum(mb for g, mb in self.held.values() if g == gpu)

    def place(self, estimate_mb: float, alone: bool = False) -> str | None:
        """The GPU with the most free memory that fits ``estimate_mb`` (``alone``: an idle GPU), or None: wait."""
        busy = {g for g, _ in self.held.values()}
        options = [g for g in self.capacity_mb if (g not in busy if alone else self.free_mb(g) >= estimate_mb)]
        if not options and not self.held and not alone:  # larger than every GPU: run it alone, let it fail honestly
            options = list(self.capacity_mb)
        return max(options, key=self.free_mb) if options else None

    def hold(self, key: str, gpu: str, estimate_mb: float) -> None:
        self.held[key] = (gpu, estimate_mb)

    def release(self, key: str) -> None:
        self.held.pop(key, None)


def gpu_memory_resources(total_mb: float, reserve: float = RESERVE_FRACTION) -> dict[str, float]:
    """The Dask worker resources of a worker process owning a GPU of ``total_mb`` MiB."""
    return {GPU_MEMORY_RESOURCE: round(total_mb * (1 - reserve), 1)}


def slots_per_gpu(total_mb: float, estimate_mb: float, reserve: float = RESERVE_FRACTION,
                  max_slots: int = MAX_SLOTS) -> int:
    """Worker processes for one GPU under ``workers_per_gpu: auto``: how many trials of ``estimate_mb`` fit into
    its usable memory, between 1 and ``max_slots``."""
    usable = total_mb * (1 - reserve)
    return max(1, min(max_slots, int(usable // max(estimate_mb, 1.0))))


def retry_alone(record: Mapping[str, Any], retried: bool) -> bool:
    """Whether a finished trial runs again with its GPU to itself: out of memory, and not already retried alone."""
    return record.get("status") == "oom" and not retried


def paper_proxy_slots(total_mb: float) -> int:
    """``workers_per_gpu: auto`` for a GPU of ``total_mb`` MiB: the paper-size proxy trials (nexception, width 1.0,
    depth 4, batch 256) that fit."""
    from nexsearch.search_space.presets import preset

    return slots_per_gpu(total_mb, estimate_peak_mb(preset("nexception"), 256))


def is_oom_value(value: Any) -> bool:
    """Whether a SMAC ``TrialValue`` comes from a trial that ran out of memory (``TrialFailed`` of an ``oom``
    record; SMAC keeps the exception's repr)."""
    error = str((getattr(value, "additional_info", None) or {}).get("error", ""))
    return error.startswith(("TrialFailed('oom:", 'TrialFailed("oom:'))


def rerun_alone_if_oom(result: tuple[Any, Any], runner: Any, wait: Any = None,
                       resources: Mapping[str, float] | None = None) -> tuple[Any, Any]:
    """A Dask runner's finished ``(TrialInfo, TrialValue)``, or for a first out-of-memory failure the result of
    running it again alone: after the runner's other pending trials finish, with none submitted meanwhile (the
    caller, SMAC's loop, waits), and with ``resources`` (packing by memory: a whole GPU's
    ``GPU_MEMORY_RESOURCE``, so that it goes to a worker of the largest GPU). A retry that fails otherwise (its
    worker lost) keeps the first result."""
    info, value = result
    if not is_oom_value(value):
        return result
    retried = runner.__dict__.setdefault("_oom_retried", set())
    key = (str(dict(info.config)), info.seed, info.budget, info.instance)
    if not retry_alone({"status": "oom"}, key in retried):
        return result
    retried.add(key)
    if wait is None:
        from distributed import wait
    others = [f for f in runner._pending_trials if not f.done()]
    if others:
        wait(others)
    try:
        extra = {"resources": dict(resources)} if resources else {}
        return runner._client.submit(runner._single_worker.run_wrapper, trial_info=info, pure=False,
                                     **extra).result()
    except Exception:
        return result


def worker_gpu(dask_worker: Any) -> str:
    """The GPU a Dask worker trains on, the same string for every worker process sharing it (``client.run``
    calls this on the workers): what ``NexsearchWorkerPlugin`` recorded (host and the device's UUID), else the
    host and ``CUDA_VISIBLE_DEVICES`` (a worker started with ``--resources GPU_MEMORY_MB=...`` and no plugin)."""
    gpu = getattr(dask_worker, "nexsearch_gpu", None)
    if gpu:
        return str(gpu)
    from distributed.comm import get_address_host

    return f"{get_address_host(dask_worker.address)}/{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"


@dataclass
class MemoryPacking:
    """A running search's admission by GPU memory: ``estimate(config)`` is a configuration's raw peak estimate
    (MiB, :func:`estimate_peak_mb` with the experiment's batch size, width and depth), computed once per
    configuration; ``trial_mb`` corrects it by what finished trials measured and clips it to ``gpu_mb``, the
    largest GPU (such a trial runs alone)."""

    estimate: Callable[[Mapping[str, Any]], float]
    calibration: Calibration = field(default_factory=Calibration)
    cache: dict[Any, float] = field(default_factory=dict)

    def raw_mb(self, config: Mapping[str, Any]) -> float:
        key = tuple(sorted(dict(config).items()))
        if key not in self.cache:
            self.cache[key] = float(self.estimate(config))
        return self.cache[key]

    def trial_mb(self, config: Mapping[str, Any], gpu_mb: float) -> float:
        return min(self.calibration.correct(self.raw_mb(config)), gpu_mb)

    def observe(self, config: Mapping[str, Any], additional_info: Mapping[str, Any] | None) -> None:
        """A finished trial's measured peak (its TrialValue's ``additional_info``) corrects later estimates."""
        self.calibration.observe(self.raw_mb(config), additional_info or {})
