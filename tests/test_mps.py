"""CUDA MPS (runners/mps.py): "not available" without CUDA, and when run uses it."""

import os

from nexsearch.runners import mps


def test_mps_is_not_available_on_this_cpu_machine_and_changes_nothing():
    before = dict(os.environ)
    reason = mps.availability()
    assert reason is not None and reason.startswith("not available")
    with mps.mps_daemon() as status:
        assert status == reason and "CUDA_MPS_PIPE_DIRECTORY" not in os.environ
    assert dict(os.environ) == before


def test_mps_pays_only_where_bench_trials_measured_it(tmp_path):
    path = tmp_path / "mps.json"
    levels = [{"workers": 1, "mps": False, "aggregate_images_per_s": 100.0},
              {"workers": 4, "mps": False, "aggregate_images_per_s": 300.0},
              {"workers": 4, "mps": True, "aggregate_images_per_s": 360.0},
              {"workers": 8, "mps": False, "aggregate_images_per_s": 320.0},
              {"workers": 8, "mps": True, "aggregate_images_per_s": 400.0}]
    assert not mps.mps_pays("NVIDIA H200", 4, path)  # nothing measured yet
    assert mps.record_measurement("NVIDIA H200", levels, path) == 1.25  # the largest N measured both ways
    assert mps.mps_pays("NVIDIA H200", 4, path)
    assert not mps.mps_pays("NVIDIA H200", 1, path)  # one trial per GPU: nothing to share
    assert not mps.mps_pays("NVIDIA H100 80GB HBM3", 4, path)  # measured on another GPU
    slower = [dict(r, aggregate_images_per_s=r["aggregate_images_per_s"] * (0.7 if r["mps"] else 1.0))
              for r in levels]
    mps.record_measurement("NVIDIA H200", slower, path)
    assert not mps.mps_pays("NVIDIA H200", 4, path)
    assert mps.mps_speedup(levels[:2]) is None  # not measured both ways: nothing recorded
    assert mps.record_measurement("NVIDIA H200", levels[:2], path) is None and not mps.mps_pays("NVIDIA H200", 4, path)


def test_run_does_not_start_mps_without_cuda():
    assert mps.maybe_start_for_run(4).startswith("not available")
