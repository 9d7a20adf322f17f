"""Parallel trials through SMAC's Dask integration.

``--workers N`` starts a local Dask cluster of N single-threaded worker processes; with CUDA,
worker *i* trains on GPU *i mod #GPUs*, otherwise the CPU cores are shared out among the
workers. ``--scheduler ADDRESS`` joins an existing Dask scheduler instead (for example one
started with dask-jobqueue on SLURM); each worker there uses its own first GPU or its CPU.

Trials cut by the end of the budget are kept from SMAC (see ``objectives/target.py``).

A worker plugin tells every worker, also one that joins or is restarted later, what to
evaluate. A worker process that dies takes its trial with it: ``RobustDaskRunner`` records
that trial as CRASHED (with the reason) instead of letting the error end the search, and
Dask's nanny starts a replacement process. The cluster itself (``worker_pool``, the worker
plugin) lives in ``cluster.py``, which needs Dask but not SMAC (``bench trials`` uses it).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from distributed import Future
from smac.runhistory import StatusType, TrialInfo, TrialValue
from smac.runner.dask_runner import DaskParallelRunner

from nexsearch.runners.packing import rerun_alone_if_oom


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
                self._results_queue.append(rerun_alone_if_oom(fut.result(), self))  # out of memory: once alone
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
        from nexsearch.objectives.target import is_cut

        self._process_pending_trials()
        while self._results_queue:
            info, value = self._results_queue.pop(0)
            if not is_cut(value):  # cut by the budget's end: no result; SMAC keeps it RUNNING, a resume re-runs it
                yield info, value
