"""Parallel trials through SMAC's Dask integration.

``--workers N`` starts a local Dask cluster of N single-threaded worker processes; with CUDA,
worker *i* trains on GPU *i mod #GPUs*, otherwise the CPU cores are shared out among the
workers. ``--scheduler ADDRESS`` joins an existing Dask scheduler instead (for example one
started with dask-jobqueue on SLURM); each worker there uses its own first GPU or its CPU.

A worker plugin tells every worker, also one that joins or is restarted later, what to
evaluate. A worker process that dies takes its trial with it: ``RobustDaskRunner`` records
that trial as CRASHED (with the reason) instead of letting the error end the search, and
Dask's nanny starts a replacement process.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

from distributed import Client, Future, LocalCluster, WorkerPlugin
from smac.runhistory import StatusType, TrialInfo, TrialValue
from smac.runner.dask_runner import DaskParallelRunner

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


class RobustDaskRunner(DaskParallelRunner):
    """SMAC's Dask runner, except that a trial whose worker died comes back as CRASHED."""

    def __init__(self, *args: Any, on_lost_trial=None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._infos: dict[str, TrialInfo] = {}
        self._starts: dict[str, float] = {}
        self._on_lost_trial = on_lost_trial

    def submit_trial(self, trial_info: TrialInfo, **dask_data_to_scatter: dict[str, Any]) -> None:
        before = set(id(f) for f in self._pending_trials)
        super().submit_trial(trial_info, **dask_data_to_scatter)
        for fut in self._pending_trials:
            if id(fut) not in before:
                self._infos[fut.key] = trial_info
                self._starts[fut.key] = time.time()

    @property
    def meta(self) -> dict[str, Any]:
        # Same as a serial run's, so that a run may resume with another number of workers.
        return self._single_worker.meta

    def count_available_workers(self) -> int:
        return sum(self._client.nthreads().values()) - len(self._pending_trials)

    def _process_pending_trials(self) -> None:
        done: list[Future] = [f for f in self._pending_trials if f.done()]
        for fut in done:
            info = self._infos.pop(fut.key, None)
            start = self._starts.pop(fut.key, time.time())
            try:
                self._results_queue.append(fut.result())
            except Exception as exc:  # KilledWorker, a lost connection, a worker-side error outside the trial
                reason = f"worker process died or was lost ({type(exc).__name__}: {exc})"
                if info is not None:
                    cost: float | list[float] = self._crash_cost
                    value = TrialValue(
                        cost=cost, time=time.time() - start, cpu_time=0.0, status=StatusType.CRASHED,
                        starttime=start, endtime=time.time(), additional_info={"error": reason, "status": "crashed"},
                    )
                    self._results_queue.append((info, value))
                    if self._on_lost_trial is not None:
                        self._on_lost_trial(info, reason, start)
            self._pending_trials.remove(fut)

    def iter_results(self) -> Iterator[tuple[TrialInfo, TrialValue]]:
        self._process_pending_trials()
        while self._results_queue:
            yield self._results_queue.pop(0)
