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

Packing by GPU memory (``workers_per_gpu: auto`` on CUDA, ``packing=MemoryPacking``): every worker declares
its GPU's usable memory as the Dask resource ``GPU_MEMORY_MB`` (the worker plugin does, or
``dask worker --resources``); several worker processes may share one GPU. Each trial holds its estimate (the
configuration's, corrected by the measured peaks of finished trials, clipped to a whole GPU) in a ``GpuLedger``
of the GPUs: ``submit_trial`` waits, as SMAC's own runner waits for a free worker, until the trial fits on a GPU
with an idle worker process, then submits it to that worker with ``resources={GPU_MEMORY_MB: estimate}``. An
out-of-memory trial runs again alone, with a whole GPU's resource. Workers that declare no GPU memory (the CPU)
are used exactly as without packing.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from distributed import Future, wait
from smac.runhistory import StatusType, TrialInfo, TrialValue
from smac.runner.dask_runner import DaskParallelRunner

from nexsearch.runners.packing import GPU_MEMORY_RESOURCE, GpuLedger, MemoryPacking, rerun_alone_if_oom, worker_gpu


class RobustDaskRunner(DaskParallelRunner):
    """SMAC's Dask runner, except that a trial whose worker died comes back as CRASHED."""

    def __init__(self, *args: Any, on_lost_trial=None, packing: MemoryPacking | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._infos: dict[str, TrialInfo] = {}
        self._starts: dict[str, float] = {}
        self._on_lost_trial = on_lost_trial
        self._packing = packing
        self._ledger = GpuLedger({})  # GPU -> usable MiB; future key -> (GPU, MiB) of the running trials
        self._worker_of: dict[str, str] = {}  # future key -> the worker address it was sent to
        self._gpu_of: dict[str, str] = {}  # worker address -> its GPU (worker_gpu), asked once per worker
        self._last_mb = 0.0  # the last trial's estimate: the size count_available_workers plans with

    def submit_trial(self, trial_info: TrialInfo, **dask_data_to_scatter: dict[str, Any]) -> None:
        if self._packing is not None and self._gpu_workers():
            self._submit_packed(trial_info, **dask_data_to_scatter)
            return
        before = set(id(f) for f in self._pending_trials)
        super().submit_trial(trial_info, **dask_data_to_scatter)
        for fut in self._pending_trials:
            if id(fut) not in before:
                self._track(fut, trial_info)

    def _track(self, fut: Future, trial_info: TrialInfo) -> None:
        self._infos[fut.key] = trial_info
        self._starts[fut.key] = time.time()

    # -- packing by GPU memory ------------------------------------------------------------------------------------

    def _gpu_workers(self) -> dict[str, tuple[str, float]]:
        """Worker address -> (its GPU, the GPU memory it declares) for the workers declaring ``GPU_MEMORY_MB``;
        the ledger's capacities follow (a GPU shared by several worker processes: the least they declare)."""
        workers = self._client.scheduler_info(n_workers=-1).get("workers", {})
        declared = {a: float(w.get("resources", {}).get(GPU_MEMORY_RESOURCE, 0)) for a, w in workers.items()}
        declared = {a: mb for a, mb in declared.items() if mb > 0}
        new = [a for a in declared if a not in self._gpu_of]
        if new:
            try:
                self._gpu_of.update(self._client.run(worker_gpu, workers=new, on_error="ignore"))
            except Exception:  # a worker left meanwhile: asked again next time
                pass
        out = {a: (str(self._gpu_of[a]), mb) for a, mb in declared.items() if isinstance(self._gpu_of.get(a), str)}
        capacity: dict[str, float] = {}
        for gpu, mb in out.values():
            capacity[gpu] = min(mb, capacity.get(gpu, mb))
        self._ledger.capacity_mb = capacity
        return out

    def _idle_by_gpu(self, workers: dict[str, tuple[str, float]]) -> dict[str, list[str]]:
        busy = {self._worker_of[f.key] for f in self._pending_trials if f.key in self._worker_of}
        idle: dict[str, list[str]] = {}
        for address, (gpu, _) in sorted(workers.items()):
            if address not in busy:
                idle.setdefault(gpu, []).append(address)
        return idle

    def _submit_packed(self, trial_info: TrialInfo, **dask_data_to_scatter: Any) -> None:
        """Wait until the trial's estimate fits on a GPU with an idle worker process, then send it there."""
        while True:
            workers = self._gpu_workers()
            if not workers:  # the GPU workers left: as without packing
                return self.submit_trial(trial_info, **dask_data_to_scatter)
            mb = self._packing.trial_mb(trial_info.config, max(self._ledger.capacity_mb.values()))
            idle = self._idle_by_gpu(workers)
            view = GpuLedger({g: c for g, c in self._ledger.capacity_mb.items() if idle.get(g)}, self._ledger.held)
            gpu = view.place(mb) if view.capacity_mb else None
            if gpu is not None:
                break
            running = [f for f in self._pending_trials if not f.done()]
            if running:
                wait(running, return_when="FIRST_COMPLETED")
            else:
                time.sleep(self._patience if not self._pending_trials else 0)
            self._process_pending_trials()
        address = idle[gpu][0]
        # allow_other_workers: should the worker die before the trial starts, Dask runs it elsewhere, not never
        fut = self._client.submit(self._single_worker.run_wrapper, trial_info=trial_info, pure=False,
                                  workers=[address], allow_other_workers=True,
                                  resources={GPU_MEMORY_RESOURCE: mb}, **dask_data_to_scatter)
        self._pending_trials.append(fut)
        self._track(fut, trial_info)
        self._ledger.hold(fut.key, gpu, mb)
        self._worker_of[fut.key] = address
        self._last_mb = mb

    @property
    def meta(self) -> dict[str, Any]:
        # Same as a serial run's, so that a run may resume with another number of workers.
        return self._single_worker.meta

    def count_available_workers(self) -> int:
        """Idle worker threads; packing by memory: the trials of the last one's size that still fit on the GPUs
        with idle workers (at least 1 when nothing runs), so that SMAC is never promised more than fit."""
        workers = self._gpu_workers() if self._packing is not None else {}
        if not workers:
            return sum(self._client.nthreads().values()) - len(self._pending_trials)
        fit = 0
        for gpu, idle in self._idle_by_gpu(workers).items():
            room = int(self._ledger.free_mb(gpu) // self._last_mb) if self._last_mb > 0 else len(idle)
            fit += max(0, min(len(idle), room))
        return max(fit, 0 if self._pending_trials else 1)

    def _process_pending_trials(self) -> None:
        done: list[Future] = [f for f in self._pending_trials if f.done()]
        for fut in done:
            info = self._infos.pop(fut.key, None)
            start = self._starts.pop(fut.key, time.time())
            packed = fut.key in self._ledger.held  # admitted by memory: its measured peak calibrates
            self._ledger.release(fut.key)
            self._worker_of.pop(fut.key, None)
            whole_gpu = ({GPU_MEMORY_RESOURCE: max(self._ledger.capacity_mb.values())}
                         if self._packing is not None and self._ledger.capacity_mb else None)
            try:
                result = rerun_alone_if_oom(fut.result(), self, resources=whole_gpu)  # out of memory: once alone
                if packed:
                    self._packing.observe(result[0].config, result[1].additional_info)
                self._results_queue.append(result)
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
