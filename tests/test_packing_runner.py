"""Trials admitted by GPU memory in the Dask runner (runners/workers.py with runners/packing.py), on the CPU:
in-process Dask workers declaring a fake GPU's memory as the resource GPU_MEMORY_MB, a fake target function that
records when it ran and what peak it "measured"."""

import os
import time
from pathlib import Path

import pytest
from ConfigSpace import Configuration, ConfigurationSpace, Integer
from distributed import Client, LocalCluster
from smac import Scenario
from smac.runhistory import TrialInfo
from smac.runner import TargetFunctionRunner

from nexsearch.runners.cluster import NexsearchWorkerPlugin
from nexsearch.runners.packing import GPU_MEMORY_RESOURCE, MemoryPacking
from nexsearch.runners.workers import RobustDaskRunner

GPU_MB = 1000.0
SLEEP_S = 0.4
MEET_TIMEOUT_S = 15.0
SPACE = ConfigurationSpace({"mb": Integer("mb", (1, 100_000)), "peak": Integer("peak", (0, 100_000)),
                            "id": Integer("id", (0, 1000)), "meet": Integer("meet", (0, 8))})


class TrialFailed(Exception):
    """Named as nexsearch's: SMAC keeps the repr, ``is_oom_value`` reads it."""


def fake_target(config, seed: int = 0):
    """Sleeps; returns when it ran and the ``peak`` it was told to report as CUDA's allocator peak. ``meet`` > 0:
    waits (at most MEET_TIMEOUT_S) until that many trials run at once (files in NEXSEARCH_TEST_MEET), ``met``
    says whether they did: concurrency shown without a race on timings. With NEXSEARCH_TEST_OOM set to a
    missing file: creates it and fails as out of memory (a retry then succeeds)."""
    marker = os.environ.get("NEXSEARCH_TEST_OOM")
    if marker and not Path(marker).exists():
        Path(marker).write_text("x")
        raise TrialFailed("oom: CUDA out of memory. Tried to allocate 2.00 GiB")
    start = time.time()
    met = None
    if config["meet"]:
        room = Path(os.environ["NEXSEARCH_TEST_MEET"])
        (room / str(config["id"])).write_text("here")
        while len(list(room.iterdir())) < config["meet"] and time.time() < start + MEET_TIMEOUT_S:
            time.sleep(0.02)
        met = len(list(room.iterdir())) >= config["meet"]
    time.sleep(SLEEP_S)
    info = {"t0": start, "t1": time.time(), "met": met, "peak_memory_kind": "cuda_max_allocated"}
    if config["peak"]:
        info["peak_memory_mb"] = float(config["peak"])
    return 0.5, info


def _cluster(resources):
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, resources=resources,
                           dashboard_address=None, silence_logs=50,
                           scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"})
    return cluster, Client(cluster)


@pytest.fixture(scope="module")
def gpu_client():
    """Two worker processes (here threads of this process) sharing one fake GPU of 1000 MiB."""
    cluster, client = _cluster({GPU_MEMORY_RESOURCE: GPU_MB})
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def cpu_client():
    cluster, client = _cluster(None)
    yield client
    client.close()
    cluster.close()


def _runner(client, tmp_path, packing=True):
    scenario = Scenario(SPACE, deterministic=True, n_trials=100, output_directory=tmp_path / "smac")
    single = TargetFunctionRunner(scenario, fake_target, required_arguments=[])
    mem = MemoryPacking(lambda config: float(config["mb"])) if packing else None
    return RobustDaskRunner(single_worker=single, dask_client=client, packing=mem)


_ids = iter(range(1000))


def _info(mb, peak=0, meet=0):
    values = {"mb": mb, "peak": peak, "id": next(_ids), "meet": meet}
    return TrialInfo(config=Configuration(SPACE, values=values), seed=0)


def _finish(runner):
    """What SMAC's loop does at the end: wait for every trial; the results as {config id: additional_info}."""
    out = {}
    while runner.is_running():
        runner.wait()
        out.update({info.config["id"]: value.additional_info for info, value in runner.iter_results()})
    out.update({info.config["id"]: value.additional_info for info, value in runner.iter_results()})
    return out


def _meeting_room(tmp_path, monkeypatch):
    (tmp_path / "meet").mkdir()
    monkeypatch.setenv("NEXSEARCH_TEST_MEET", str(tmp_path / "meet"))


def _overlap(a, b):
    return a["t0"] < b["t1"] and b["t0"] < a["t1"]


def test_trials_too_large_to_share_the_gpu_run_one_at_a_time(gpu_client, tmp_path):
    runner = _runner(gpu_client, tmp_path)
    assert runner.count_available_workers() == 2  # nothing runs: both idle workers
    a, b, c = _info(600), _info(600), _info(600)
    runner.submit_trial(a)
    assert [mb for _, mb in runner._ledger.held.values()] == [pytest.approx(660.0)]  # 600 x the 1.1 margin
    assert runner.count_available_workers() == 0  # a worker is idle, but another 660 MiB do not fit
    runner.submit_trial(b)  # waits for a: SMAC's loop is held here, not handed a worker that has no memory
    runner.submit_trial(c)
    res = _finish(runner)
    times = sorted((res[i.config["id"]]["t0"], res[i.config["id"]]["t1"]) for i in (a, b, c))
    assert all(t1 <= t0 for (_, t1), (t0, _) in zip(times, times[1:]))  # never two at once
    assert not runner._ledger.held


def test_trials_that_fit_together_run_together(gpu_client, tmp_path, monkeypatch):
    _meeting_room(tmp_path, monkeypatch)
    runner = _runner(gpu_client, tmp_path)
    a, b = _info(300, meet=2), _info(300, meet=2)
    runner.submit_trial(a)
    runner.submit_trial(b)  # 2 x 330 MiB fit into 1000: submitted at once, to the other worker
    assert sorted(mb for _, mb in runner._ledger.held.values()) == [pytest.approx(330.0)] * 2
    assert len(set(runner._worker_of.values())) == 2
    assert runner.count_available_workers() == 0  # room for one more 330, but no idle worker
    res = _finish(runner)
    assert res[a.config["id"]]["met"] and res[b.config["id"]]["met"]  # both ran at once


def test_a_trial_larger_than_the_gpu_is_clipped_and_runs_alone(gpu_client, tmp_path):
    runner = _runner(gpu_client, tmp_path)
    big, small = _info(5000), _info(100)
    runner.submit_trial(big)  # 5500 MiB estimated: clipped to the whole GPU, and it still starts
    assert [mb for _, mb in runner._ledger.held.values()] == [GPU_MB]
    runner.submit_trial(small)
    res = _finish(runner)
    assert res[big.config["id"]]["t1"] <= res[small.config["id"]]["t0"]


def test_a_measured_peak_raises_later_estimates(gpu_client, tmp_path):
    runner = _runner(gpu_client, tmp_path)
    first = _info(300, peak=600)  # estimated 300, measured 600: later estimates are doubled
    runner.submit_trial(first)
    _finish(runner)
    assert runner._packing.calibration.ratios == [pytest.approx(2.0)]
    a, b = _info(300), _info(300)
    runner.submit_trial(a)
    assert [mb for _, mb in runner._ledger.held.values()] == [pytest.approx(660.0)]  # 300 x 2 x 1.1
    runner.submit_trial(b)  # no longer fits beside a
    res = _finish(runner)
    assert not _overlap(res[a.config["id"]], res[b.config["id"]])


def test_an_oom_trial_is_retried_alone_with_the_whole_gpu(gpu_client, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXSEARCH_TEST_OOM", str(tmp_path / "oom-once"))
    runner = _runner(gpu_client, tmp_path)
    sent = []
    submit = gpu_client.submit

    def recording(*args, **kwargs):
        sent.append(kwargs.get("resources"))
        return submit(*args, **kwargs)

    monkeypatch.setattr(gpu_client, "submit", recording)
    trial = _info(200)
    runner.submit_trial(trial)
    res = _finish(runner)
    assert "t0" in res[trial.config["id"]]  # the retry succeeded: no failed record
    assert sent == [{GPU_MEMORY_RESOURCE: pytest.approx(220.0)}, {GPU_MEMORY_RESOURCE: GPU_MB}]


@pytest.mark.parametrize("packing", [True, False])
def test_without_gpu_memory_workers_nothing_changes(cpu_client, tmp_path, monkeypatch, packing):
    """No worker declares GPU memory (the CPU): two trials on two workers at once, with or without packing."""
    _meeting_room(tmp_path, monkeypatch)
    runner = _runner(cpu_client, tmp_path, packing=packing)
    assert runner.count_available_workers() == 2
    a, b = _info(600, meet=2), _info(600, meet=2)
    runner.submit_trial(a)
    runner.submit_trial(b)
    assert not runner._ledger.held and runner.count_available_workers() == 0
    res = _finish(runner)
    assert res[a.config["id"]]["met"] and res[b.config["id"]]["met"]
    assert not packing or not runner._packing.cache  # no estimate was needed


class _Props:
    total_memory = 16 * 2**30
    uuid = "GPU-fake-uuid"


class _Worker:
    def __init__(self, name, resources=None):
        self.name, self.declared = name, []
        self.state = type("S", (), {"total_resources": dict(resources or {})})()

    def set_resources(self, **resources):
        self.declared.append(resources)
        return "awaitable"


class _Context:  # the trial context the plugin configures (this process's search context left alone)
    name = "fake"

    def configure(self, spec):
        self.spec_seen = spec


def _Plugin(spec, workers, gpu_memory=False):
    return NexsearchWorkerPlugin(spec, workers, _Context(), gpu_memory=gpu_memory)


def _spec():
    from nexsearch.runners.experiment import experiment_from_dict

    return experiment_from_dict({"device": "auto"}).trial_spec(None)


def test_the_worker_plugin_declares_its_gpus_memory(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Props())
    spec = _spec()
    worker = _Worker(3)
    assert _Plugin(spec, 4, gpu_memory=True).setup(worker) == "awaitable"  # Dask awaits set_resources' coroutine
    assert worker.declared == [{GPU_MEMORY_RESOURCE: pytest.approx(16384 * 0.9)}]
    assert worker.nexsearch_gpu.endswith("/GPU-fake-uuid")
    started_with = _Worker(0, {GPU_MEMORY_RESOURCE: 5000.0})  # dask worker --resources GPU_MEMORY_MB=5000
    assert _Plugin(spec, 4, gpu_memory=True).setup(started_with) is None and not started_with.declared
    plain = _Worker(1)
    assert _Plugin(spec, 4).setup(plain) is None and not plain.declared  # workers_per_gpu a number: no resource


def test_the_worker_plugin_declares_nothing_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the CPU workers' share: not this process's
    worker = _Worker(0)
    assert _Plugin(_spec(), 2, gpu_memory=True).setup(worker) is None
    assert not worker.declared and not hasattr(worker, "nexsearch_gpu")


def test_the_search_packs_only_with_workers_per_gpu_auto_off_the_cpu(monkeypatch):
    """The runner's packing as ``run`` builds it: the experiment's batch size, width and depth in the estimate
    (per configuration, once); none on the CPU, with a count, or with local workers and no CUDA."""
    import torch

    from nexsearch.runners.experiment import experiment_from_dict
    from nexsearch.runners.packing import estimate_peak_mb
    from nexsearch.runners.search import _memory_packing
    from nexsearch.search_space.presets import preset
    from nexsearch.search_space.space import validate

    train = {"batch_size": 64, "width": 0.5, "depth": 2}
    cluster = experiment_from_dict({"workers_per_gpu": "auto", "scheduler": "tls://127.0.0.1:1", "train": train})
    packing = _memory_packing(cluster)  # the cluster's workers may have GPUs where this machine has none
    config = validate(preset("nexception"))
    expected = estimate_peak_mb(preset("nexception"), 64, width=0.5, depth=2)
    assert packing.raw_mb(config) == pytest.approx(expected)
    packing.estimate = lambda c: pytest.fail("estimated twice")
    assert packing.trial_mb(config, 1e9) == pytest.approx(expected * 1.1)
    assert _memory_packing(experiment_from_dict({"workers_per_gpu": 4, "scheduler": "tls://127.0.0.1:1"})) is None
    assert _memory_packing(experiment_from_dict({"workers_per_gpu": "auto", "device": "cpu",
                                                 "scheduler": "tls://127.0.0.1:1"})) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _memory_packing(experiment_from_dict({"workers_per_gpu": "auto"})) is None


def test_preflight_takes_workers_per_gpu_auto_as_the_trials_that_fit(monkeypatch):
    """``--workers N`` above the CPU slots on CUDA is checked against the GPUs' worker count; with
    ``workers_per_gpu: auto`` that is the paper-size trials that fit (it was ``#GPUs x "auto"``: a TypeError)."""
    import torch

    from nexsearch.runners import preflight
    from nexsearch.runners.experiment import experiment_from_dict

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Props())  # 16 GiB
    monkeypatch.setattr(preflight, "cpu_slots", lambda: 1)
    monkeypatch.setattr(preflight, "dataset_bytes", lambda exp: (0, 0))
    monkeypatch.setattr(preflight, "available_memory", lambda: 2**50)
    import nexsearch.runners.packing as packing

    monkeypatch.setattr(packing, "paper_proxy_slots", lambda total_mb: 3)
    preflight.check_workers(experiment_from_dict({"workers": 3, "workers_per_gpu": "auto", "device": "cuda"}))
    with pytest.raises(preflight.UserError, match="use at most 3"):
        preflight.check_workers(experiment_from_dict({"workers": 4, "workers_per_gpu": "auto", "device": "cuda"}))
