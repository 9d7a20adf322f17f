"""Benchmarks (``nexsearch bench ...``), the device helper, the BlurPool switch, compile modes, trial timings."""

import json
import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
from timm.layers import BlurPool2d

from nexsearch.bench.trials import _summarise
from nexsearch.cli import main
from nexsearch.device import compile_mode
from nexsearch.errors import UserError
from nexsearch.objectives.datasets import load_dataset
from nexsearch.objectives.settings import DataSpec
from nexsearch.objectives.settings import TrainSettings
from nexsearch.objectives.trainer import train_proxy
from nexsearch.search_space.builder import (
    FormatKeepingBlurPool2d,
    build_model,
    reflect_pad_keep_format,
    use_blurpool,
)
from nexsearch.search_space.presets import preset

TINY = {"width": 0.125, "depth": 1, "batch_size": 32, "throughput_batch": 8, "throughput_iters": 1}


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("channels", [None, 6])
def test_format_keeping_blurpool_equals_timm(fmt, channels):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 12).contiguous(memory_format=fmt)  # odd and even sides
    timm_pool, ours = BlurPool2d(channels, filt_size=3, stride=2), FormatKeepingBlurPool2d(channels, filt_size=3, stride=2)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = timm_pool(x1), ours(x2)
    assert torch.equal(a, b)
    assert b.is_contiguous(memory_format=fmt)  # channels_last stays channels_last
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)  # same sums, another order


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_reflect_pad_keep_format_equals_f_pad(fmt):
    x = torch.randn(1, 3, 7, 8).contiguous(memory_format=fmt)
    for pad in [(1, 1, 1, 1), (2, 1, 0, 3), (0, 0, 2, 2)]:
        out = reflect_pad_keep_format(x, pad)
        assert torch.equal(out, torch.nn.functional.pad(x, pad, mode="reflect"))
        assert out.is_contiguous(memory_format=fmt)


def test_blurpool_switch_keeps_the_models_output():
    config = dict(preset("nexception"), downsample="blurpool")
    torch.manual_seed(0)
    model = build_model(config, "proxy", width=0.125, depth=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    # the builder's default is the format-keeping BlurPool (same output, faster on CUDA in channels_last)
    assert [type(m) for m in model.modules() if isinstance(m, BlurPool2d)] == [FormatKeepingBlurPool2d] * 2
    with torch.no_grad():
        before = model(x)
        use_blurpool(model, keep_format=False)
        timm_out = model(x)
        pools = [m for m in use_blurpool(model).modules() if isinstance(m, BlurPool2d)]
        after = model(x)
    assert pools and all(type(m) is FormatKeepingBlurPool2d for m in pools)
    assert torch.equal(before, after) and torch.equal(before, timm_out)
    use_blurpool(model, keep_format=False)
    assert all(type(m) is BlurPool2d for m in model.modules() if isinstance(m, BlurPool2d))


@pytest.fixture(scope="module")
def tiny_splits():
    return load_dataset(DataSpec("synthetic", image_size=16, synthetic_size=160, synthetic_classes=4))


def test_trial_record_times_its_fixed_costs(tiny_splits):
    record = train_proxy(preset("nexception"), tiny_splits, TrainSettings(**TINY), budget=2)
    assert record["status"] == "ok"
    assert 0 < record["setup_s"] < record["wall_time_s"]
    assert 0 < record["first_epoch_s"] <= record["train_time_s"]
    assert record["eval_s"] > 0
    assert record["setup_s"] + record["train_time_s"] + record["eval_s"] <= record["wall_time_s"]
    assert [e["images"] for e in record["curve"]] == [128, 128]  # 4 steps of 32 in each epoch
    assert record["curve"][0]["train_s"] == pytest.approx(record["first_epoch_s"], abs=1e-3)


def test_bench_train_times_the_steps_after_the_warm_up(monkeypatch):
    """bench train's clock (device.time_total) covers the timed steps and the fetches between them: with a
    fake clock, a fetch costs 1 s and a forward pass 100 s; 2 warm-up and 3 timed steps read 5 batches."""
    import nexsearch.device
    from nexsearch.bench.train import _time_steps

    clock = [0.0]
    monkeypatch.setattr(nexsearch.device.time, "perf_counter", lambda: clock[0])
    fetched = []

    def batches():
        while True:
            clock[0] += 1
            fetched.append(len(fetched))
            yield torch.randn(4, 3), torch.randint(0, 2, (4,))

    class Model(torch.nn.Linear):
        def forward(self, x):
            clock[0] += 100
            return super().forward(x)

    seconds = _time_steps(Model(3, 2), batches(), steps=3, warmup=2, device=torch.device("cpu"), autocast=nullcontext)
    assert seconds == 3 * 100 + 2 and len(fetched) == 5


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_compile_mode_passed_to_torch_compile(tiny_splits, monkeypatch, mode):
    seen = []

    def fake_compile(model, mode=None, **kwargs):  # pass-through: compiling costs ~100 s on CPU
        seen.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    record = train_proxy(preset("nexception"), tiny_splits, TrainSettings(**TINY, compile=mode), budget=1)
    assert record["status"] == "ok" and seen == [mode]
    seen.clear()
    train_proxy(preset("nexception"), tiny_splits, TrainSettings(**TINY, compile=False), budget=1)
    assert seen == []


def test_compile_mode_names_validated():
    assert [compile_mode(v) for v in (False, "false", True, "default", "max-autotune")] == \
        [None, None, "default", "default", "max-autotune"]
    with pytest.raises(UserError, match="unknown compile mode 'fast'.*reduce-overhead"):
        TrainSettings(compile="fast")
    with pytest.raises(UserError, match="cudnn_benchmark must be auto, true or false"):
        TrainSettings(cudnn_benchmark="sometimes")


def test_bad_compile_mode_in_experiment_file_is_one_line(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: x\ndataset: synthetic\ntrain:\n  compile: turbo\n")
    out = subprocess.run([sys.executable, "-m", "nexsearch.cli", "run", "--budget", "5s", "--config", str(cfg),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "nexsearch: unknown compile mode 'turbo': choose one of false, default, reduce-overhead, max-autotune"]
    assert not (tmp_path / "run").exists()


def test_bench_sub_parsers_have_their_own_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "smac", "--help"])
    assert exc.value.code == 0
    smac_help = capsys.readouterr().out
    assert "--trials" in smac_help and not any(f in smac_help for f in ("--steps", "--width", "--models", "--device"))
    helps = {}
    for name in ("train", "infer"):
        with pytest.raises(SystemExit):
            main(["bench", name, "--help"])
        helps[name] = capsys.readouterr().out
    for flag in ("--batch-size", "--warmup", "--device", "--precision", "--memory-format", "--compile", "--blurpool",
                 "--json"):
        assert flag in helps["train"] and flag in helps["infer"]
    with pytest.raises(SystemExit) as exc:
        main(["bench", "train", "--compile", "turbo"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'turbo'" in err


def _record(setup, first, steady, eval_s, images=1000, epochs=3, peak=100.0):
    curve = [{"images": images, "train_s": first}] + [{"images": images, "train_s": steady}] * (epochs - 1)
    return {"curve": curve, "setup_s": setup, "first_epoch_s": first, "eval_s": eval_s * epochs,
            "peak_memory_mb": peak, "peak_memory_kind": "cuda_max_allocated", "device": "cuda:0"}


def test_trials_summary_arithmetic():
    # two workers, each 1000 images per steady epoch: 2 s and 4 s -> 500 + 250 images/s together
    row = _summarise([_record(1.0, 5.0, 2.0, 0.5), _record(3.0, 7.0, 4.0, 0.5, peak=300.0)], 2, 27, scale=1.0)
    assert row["aggregate_images_per_s"] == 750.0 and row["images_per_s_per_worker"] == 375.0
    assert (row["setup_s"], row["first_epoch_s"], row["steady_epoch_s"]) == (2.0, 6.0, 3.0)
    assert row["peak_memory_mb_per_worker"] == 300.0
    # setup 2 + warm-up excess (6 - 3) + 27 x (1000 / 375 + 0.5)
    trial_s = 2.0 + 3.0 + 27 * (1000 / 375 + 0.5)
    assert row["projected_trial_s"] == pytest.approx(trial_s, abs=0.05)
    assert row["trials_per_day"] == pytest.approx(2 * 86400 / trial_s, rel=1e-3)
    # projecting to a set 2.25x larger scales the epoch and the evaluation, not the fixed costs
    big = _summarise([_record(1.0, 5.0, 2.0, 0.5), _record(3.0, 7.0, 4.0, 0.5)], 2, 27, scale=2.25)
    assert big["projected_trial_s"] == pytest.approx(2.0 + 3.0 + 27 * 2.25 * (1000 / 375 + 0.5), abs=0.05)


def test_bench_suite_quick_writes_every_file(tmp_path):
    """The whole suite on CPU with tiny sizes: every part's JSON, real figures in each, the summary."""
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, "-m", "nexsearch.cli", "bench", "suite", "--quick", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    names = [p["part"] for p in summary["parts"]]
    assert names == ["train_w0.25", "train_w0.25_eager", "train_w0.125", "steps", "trials", "infer_channels_last_timm",
                     "infer_channels_last_keep-format", "infer_contiguous_timm", "infer_contiguous_keep-format"]
    assert all(p["ok"] for p in summary["parts"])
    parts = {name: json.loads((out / f"{name}.json").read_text()) for name in names}
    for name in names[:3]:
        assert parts[name]["nexsearch_images_per_s"] > 0 and parts[name]["baseline_images_per_s"] > 0
        assert parts[name]["step"] == "eager" and parts[name]["ops_per_step"]["forward"] > 0
    for name in names[5:]:
        r = parts[name]
        assert [x["model"] for x in r["results"]] == ["nexception_t", "legacy_xception"]
        assert all(x["images_per_s"] > 0 for x in r["results"])
        assert r["memory_format"] == name.split("_", 1)[1].rsplit("_", 1)[0]
        assert r["blurpool_keep_format"] == name.endswith("keep-format")
    # bench trials at concurrency 1 and 2 (tiny sizes), through Dask worker processes
    levels = parts["trials"]["levels"]
    assert [lv["workers"] for lv in levels] == [1, 2] and not any(lv["mps"] or lv["packed"] for lv in levels)
    # no CUDA: packing by GPU memory and CUDA MPS say why they did not run
    assert [(e["workers"], e["error"]) for e in parts["trials"]["errors"]] == [
        ("auto", "UserError: auto: packing by GPU memory needs a CUDA device")]
    assert parts["trials"]["mps_status"].startswith("not available")
    assert all(lv["step"] == ["eager"] for lv in levels)
    for lv in levels:
        assert lv["aggregate_images_per_s"] > 0 and lv["first_epoch_s"] > 0 and lv["setup_s"] > 0
        assert lv["peak_memory_mb_per_worker"] > 0 and lv["trials_per_day"] > 0 and lv["devices"] == ["cpu"]
    assert levels[0]["speedup"] == 1.0
    assert levels[1]["speedup"] == pytest.approx(levels[1]["aggregate_images_per_s"] / levels[0]["aggregate_images_per_s"], rel=1e-2)
    table = (out / "summary.md").read_text()
    assert all(f"| {name} |" in table for name in names) and "FAILED" not in table
    assert "[5/9] trials" in proc.stdout
    steps = parts["steps"]  # eager and graph, same seed: on the CPU the graph falls back, the curves agree
    assert steps["runs"]["graph"]["step"] == "eager" and "CUDA" in steps["runs"]["graph"]["step_fallback"]
    assert steps["equal_within_tolerance"] and len(steps["runs"]["eager"]["train_loss"]) == 3


@pytest.mark.parametrize("workers, per_gpu, device, gpus, expected", [
    ("auto", 1, "auto", 4, 4),
    ("auto", 3, "cuda", 2, 6),
    ("auto", 2, "cuda:1", 4, 2),  # one named GPU
    ("auto", 2, "cpu", 4, "slots"),  # training on the CPU: one worker per CPU slot
    ("auto", 2, "auto", 0, "slots"),  # no GPU
    (5, 2, "cuda", 2, 5),  # an explicit count stays as given
    ("3", 1, "auto", 0, 3),
])
def test_workers_auto_resolves_from_the_gpu_count(monkeypatch, workers, per_gpu, device, gpus, expected):
    import os

    from nexsearch.runners.experiment import experiment_from_dict

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    exp = experiment_from_dict({"dataset": "synthetic", "device": device, "workers": workers,
                                "workers_per_gpu": per_gpu})
    assert exp.workers == (3 if expected == "slots" else expected)


@pytest.mark.parametrize("changes, message", [
    ({"workers": "many"}, "workers must be a number or 'auto', got 'many'"),
    ({"workers": 0}, "workers must be at least 1, got 0"),
    ({"workers": "auto", "workers_per_gpu": 0}, "workers_per_gpu must be a whole number of at least 1, got 0"),
])
def test_bad_worker_counts_are_one_line(changes, message):
    from nexsearch.runners.experiment import experiment_from_dict

    with pytest.raises(UserError, match=message):
        experiment_from_dict({"dataset": "synthetic", **changes})


def test_fast_mac_count_equals_torchs_flop_counter(space):
    """The trainer's hook-based MAC count matches FlopCounterMode on every layout and random designs."""
    from nexsearch.objectives.trainer import count_macs_fast
    from nexsearch.search_space.builder import count_macs

    configs = [preset("nexception"), preset("xception"), *(dict(c) for c in space.sample_configuration(6))]
    for i, config in enumerate(configs):
        for layout, size, kwargs in (("proxy", 32, {"width": 0.25, "depth": 1}), ("t", 64, {}), ("tp", 64, {})):
            if layout != "proxy" and i % 3:  # full-size layouts for every third design: they are slow to build
                continue
            model = build_model(config, layout, num_classes=10, **kwargs)
            assert count_macs_fast(model, size) == count_macs(model, size), (layout, config)
