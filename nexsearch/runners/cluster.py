"""The local Dask cluster of ``run --workers`` and ``bench trials``, and its worker setup (no SMAC here).

``worker_pool(N, ...)`` (around ``make_client``) starts N single-threaded worker processes (or joins an
existing scheduler) and closes them again; ``NexsearchWorkerPlugin`` tells every worker, also one that joins
or restarts later, what to evaluate, on which GPU (worker *i* on GPU *i mod #GPUs*) or with how many CPU threads,
and, when trials are packed by GPU memory (``workers_per_gpu: auto``), declares the worker's GPU memory as the
Dask resource ``GPU_MEMORY_MB`` (unless the worker was started with one: ``dask worker --resources GPU_MEMORY_MB=N``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distributed import Client, LocalCluster, WorkerPlugin

from nexsearch.errors import UserError

if TYPE_CHECKING:
    from nexsearch.objectives.settings import TrialSpec
    from nexsearch.objectives.target import TrialContext


class NexsearchWorkerPlugin(WorkerPlugin):
    """Configures a trial context (default: the search's, ``objectives.target.SEARCH``) in each Dask worker
    process with the trial spec, its device chosen there (and the thread count)."""

    def __init__(self, spec: TrialSpec, n_local_workers: int | None = None, context: TrialContext | None = None,
                 gpu_memory: bool = False):
        from nexsearch.objectives.target import SEARCH

        self.spec, self.n_local_workers, self.context = spec, n_local_workers, context or SEARCH
        self.gpu_memory = gpu_memory  # declare the GPU's memory as a Dask resource (packing by memory)
        # one plugin per purpose: an evaluation's beside a search's on a shared scheduler, not instead of it
        self.name = "nexsearch-objective" if self.context is SEARCH else f"nexsearch-{self.context.name}"

    def setup(self, worker: Any) -> Any:
        import torch

        from nexsearch.device import cpu_slots

        spec = self.spec
        index = worker.name if isinstance(worker.name, int) else 0
        device = spec.settings.device
        if device in ("auto", "cuda") and torch.cuda.is_available():  # one GPU per worker, round robin
            spec = spec.on_device(f"cuda:{index % torch.cuda.device_count()}")
        elif device in ("auto", "cpu") and self.n_local_workers:
            torch.set_num_threads(max(1, cpu_slots() // self.n_local_workers))
        self.context.configure(spec)
        device = str(spec.settings.device)
        if self.gpu_memory and device.startswith("cuda") and torch.cuda.is_available():
            return self.declare_gpu_memory(worker, torch.device(device).index or 0)
        return None

    @staticmethod
    def declare_gpu_memory(worker: Any, gpu: int) -> Any:
        """Record which GPU the worker trains on (host and device UUID: worker processes sharing a GPU share
        its memory) and, unless the worker already declares one, its usable memory as ``GPU_MEMORY_MB``
        (a coroutine: Dask awaits what ``setup`` returns)."""
        import socket

        import torch

        from nexsearch.runners.packing import GPU_MEMORY_RESOURCE, gpu_memory_resources

        props = torch.cuda.get_device_properties(gpu)
        uuid = getattr(props, "uuid", None) or f"{gpu}:{os.environ.get('CUDA_VISIBLE_DEVICES', '')}"
        worker.nexsearch_gpu = f"{socket.gethostname()}/{uuid}"
        if GPU_MEMORY_RESOURCE in worker.state.total_resources:
            return None
        return worker.set_resources(**gpu_memory_resources(props.total_memory / 2**20))


SECURITY_KEYS = ("tls_ca_file", "tls_client_cert", "tls_client_key", "require_encryption", "tls_min_version")


def scheduler_security(path: str | None) -> Any:
    """The ``distributed.Security`` of ``--scheduler-security FILE`` (YAML: tls_ca_file, tls_client_cert,
    tls_client_key, as dask-jobqueue's ``security=`` takes them); without a file, None: Dask reads its own
    configuration (``distributed.comm.tls.*``, e.g. from ~/.config/dask/ or DASK_DISTRIBUTED__COMM__TLS__...)."""
    if not path:
        return None
    import yaml
    from distributed import Security

    try:
        data = yaml.safe_load(open(path, encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"--scheduler-security {path} cannot be read as YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not set(data) <= set(SECURITY_KEYS) or "tls_ca_file" not in data:
        raise UserError(f"--scheduler-security {path} must map tls_ca_file (and tls_client_cert, tls_client_key) "
                        f"to files; known keys: {', '.join(SECURITY_KEYS)}")
    for key in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        if key in data and not (isinstance(data[key], str) and os.path.isfile(data[key])):
            raise UserError(f"--scheduler-security {path}: {key} {data[key]!r} is not a file")
    return Security(**{"require_encryption": True, **data})


def make_client(workers: int, scheduler: str | None, local_directory: str,
                security: str | None = None) -> tuple[Client, LocalCluster | None]:
    """A client of a new local cluster (TLS with temporary certificates: no other local user can connect to
    it, and no dashboard), or of the scheduler at ``scheduler`` (with ``security``, see ``scheduler_security``)."""
    import dask

    # A trial whose worker dies must not be retried on the next worker (it would likely kill it too).
    dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.worker.daemon": False,
                     # no dashboard and no HTTP routes (health, metrics, info pages) unless the user's config asks
                     "distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []})
    if scheduler:
        sec = scheduler_security(security)
        try:
            return Client(scheduler, timeout="10s", security=sec), None
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"cannot connect to the Dask scheduler at {scheduler}: {first}") from None
    from distributed import Security

    sec = Security.temporary()  # a fresh self-signed CA and certificate, held in memory by this process only
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, local_directory=local_directory,
        dashboard_address=None, memory_limit=0, silence_logs=50, security=sec, protocol="tls://",
        host="127.0.0.1", scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
    )
    return Client(cluster, security=sec), cluster


@contextlib.contextmanager
def worker_pool(workers: int, scheduler: str | None, local_directory: str | Path, security: str | None = None,
                plugin: WorkerPlugin | None = None) -> Iterator[Client]:
    """The one Dask client lifecycle (search, evaluate, bench trials): a client of a new local cluster of
    ``workers`` processes, or of ``scheduler`` (with ``security``), with ``plugin`` registered; closed with its
    cluster on the way out."""
    client, cluster = make_client(workers, scheduler, str(local_directory), security)
    try:
        if plugin is not None:
            client.register_plugin(plugin)
        yield client
    finally:
        close_quietly(client, cluster)


def close_quietly(*closables: Any) -> None:
    """Close Dask clients and clusters; what Dask raises while an interrupt tears them down is no news."""
    for c in closables:
        if c is not None:
            try:
                c.close()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # also asyncio's CancelledError
                pass
