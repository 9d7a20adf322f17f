"""CUDA MPS (Multi-Process Service) for trials that share a GPU.

Processes sharing a GPU without MPS are time-sliced; under MPS their kernels run side by side.
:func:`mps_daemon` starts ``nvidia-cuda-mps-control -d`` with its pipe and log folders in a
temporary folder and points this process's environment (which the Dask worker processes started
afterwards inherit) at it; it must run before any process initialises CUDA. Starting the daemon
usually needs the GPU's owner or root (see the README); where it cannot start, every function here
says "not available" with the reason and nothing changes.

``bench trials --mps both`` measures each concurrency level with and without MPS and remembers
the outcome (:func:`record_measurement`); ``nexsearch run`` starts MPS for a local cluster with more
than one worker per GPU when that measurement says it pays (:func:`mps_pays`, :func:`maybe_start_for_run`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

CONTROL = "nvidia-cuda-mps-control"
PAYS_AT = 1.05  # MPS is used where it gave at least 5% more aggregate images/s
MEASUREMENT = Path(os.environ.get("NEXSEARCH_CACHE", Path.home() / ".cache" / "nexsearch")) / "mps.json"


def availability() -> str | None:
    """``None`` where the MPS daemon could be started here, else why not (one line, starting 'not available')."""
    if shutil.which(CONTROL) is None:
        return f"not available: {CONTROL} not found"
    try:
        import torch

        if not torch.cuda.is_available():
            return "not available: no CUDA device"
    except ImportError:
        return "not available: no torch"
    if os.environ.get("CUDA_MPS_PIPE_DIRECTORY"):
        return "not available: an MPS daemon is already configured (CUDA_MPS_PIPE_DIRECTORY)"
    return None


@contextmanager
def mps_daemon() -> Iterator[str | None]:
    """Start the MPS control daemon for this process's children; yields None when it runs, else the reason."""
    reason = availability()
    if reason is not None:
        yield reason
        return
    folder = tempfile.mkdtemp(prefix="nexsearch-mps-")
    env = {"CUDA_MPS_PIPE_DIRECTORY": f"{folder}/pipe", "CUDA_MPS_LOG_DIRECTORY": f"{folder}/log"}
    for path in env.values():
        os.makedirs(path, exist_ok=True)
    started = subprocess.run([CONTROL, "-d"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30)
    if started.returncode != 0:
        yield f"not available: {CONTROL} -d failed ({(started.stderr or started.stdout).strip()[:200]})"
        return
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield None
    finally:
        subprocess.run([CONTROL], input="quit\n", env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=30)
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        shutil.rmtree(folder, ignore_errors=True)


def mps_speedup(levels: list[dict[str, Any]]) -> float | None:
    """Aggregate images/s with MPS over without, at the largest concurrency measured both ways (``bench trials``
    rows with ``mps`` true / false); None where not measured both ways."""
    both = {}
    for row in levels:
        both.setdefault(row["workers"], {})[bool(row.get("mps"))] = row["aggregate_images_per_s"]
    shared = [n for n, rates in both.items() if n > 1 and len(rates) == 2]
    if not shared:
        return None
    rates = both[max(shared)]
    return rates[True] / rates[False] if rates[False] else None


def record_measurement(device: str, levels: list[dict[str, Any]], path: Path = MEASUREMENT) -> float | None:
    """Remember a ``bench trials`` outcome for ``run`` (only where both ways were measured)."""
    speedup = mps_speedup(levels)
    if speedup is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"device": device, "speedup": round(speedup, 3)}))
    return speedup


def mps_pays(device: str, workers_per_gpu: int, path: Path = MEASUREMENT) -> bool:
    """Whether ``run`` starts MPS: more than one trial per GPU, and ``bench trials`` on this device measured that
    MPS gave at least ``PAYS_AT`` times the images/s."""
    if workers_per_gpu <= 1 or not path.is_file():
        return False
    try:
        seen = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return seen.get("device") == device and float(seen.get("speedup", 0)) >= PAYS_AT


def maybe_start_for_run(workers: int) -> str | None:
    """Before a local cluster of ``workers`` processes starts: MPS where it pays on this GPU (stopped at exit).
    Returns None where MPS runs, else why not."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "not available: no CUDA device"
        gpus = torch.cuda.device_count()
        device = torch.cuda.get_device_name(0)
    except Exception as exc:
        return f"not available: {type(exc).__name__}"
    if not mps_pays(device, -(-workers // max(1, gpus))):
        return "not used: no bench trials measurement on this GPU says it pays"
    context = mps_daemon()
    reason = context.__enter__()
    atexit.register(context.__exit__, None, None, None)
    return reason
