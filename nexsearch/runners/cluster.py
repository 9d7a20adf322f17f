"""The local Dask cluster of ``run --workers`` and ``bench trials``, and its worker setup (no SMAC here).

``make_client(N)`` starts N single-threaded worker processes (or joins an existing scheduler);
``NexsearchWorkerPlugin`` tells every worker, also one that joins or restarts later, what to
evaluate, on which GPU (worker *i* on GPU *i mod #GPUs*) or with how many CPU threads.
"""

from __future__ import annotations

import os
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin

from nexsearch.errors import UserError


class NexsearchWorkerPlugin(WorkerPlugin):
    """Configures the objective (and the GPU / thread count) in each Dask worker process."""

    name = "nexsearch-objective"

    def __init__(self, spec: dict[str, Any], n_local_workers: int | None = None):
        self.spec = spec
        self.n_local_workers = n_local_workers

    def setup(self, worker: Any) -> None:
        import torch

        spec = dict(self.spec, train=dict(self.spec.get("train", {})))
        index = worker.name if isinstance(worker.name, int) else 0
        device = spec["train"].get("device", "auto")
        if device in ("auto", "cuda") and torch.cuda.is_available():  # one GPU per worker, round robin
            spec["train"]["device"] = f"cuda:{index % torch.cuda.device_count()}"
        elif device in ("auto", "cpu") and self.n_local_workers:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.n_local_workers))
        self.configure(spec)

    def configure(self, spec: dict[str, Any]) -> None:
        """Hand the worker's spec (its device chosen) to what it evaluates: SMAC's target function here."""
        from nexsearch.objectives.target import configure

        configure(spec)


def make_client(workers: int, scheduler: str | None, local_directory: str) -> tuple[Client, LocalCluster | None]:
    import dask

    # A trial whose worker dies must not be retried on the next worker (it would likely kill it too).
    dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.worker.daemon": False})
    if scheduler:
        try:
            return Client(scheduler, timeout="30s"), None
        except Exception as exc:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, local_directory=local_directory,
        dashboard_address=None, memory_limit=0, silence_logs=40,
    )
    return Client(cluster), cluster
