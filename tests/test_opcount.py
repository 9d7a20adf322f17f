"""Aten ops per training step (bench/opcount.py): what a GPU launches, counted on the CPU."""

import json
import subprocess
import sys

import torch
import torch.nn.functional as F

from nexsearch.bench.opcount import count_step_ops, optimizer_ops
from nexsearch.objectives.step import optimizer_foreach
from nexsearch.search_space.builder import build_model
from nexsearch.search_space.presets import preset


def test_paper_proxy_optimizer_ops_on_the_cuda_path():
    """The paper's proxy (width 1.0, depth 4): the LAMB step the trainer takes on CUDA launches a few dozen ops, not
    the single-tensor path's ~1,600 (timm 1.0.31: 1,583 and 42)."""
    model = build_model(preset("nexception"), "proxy", num_classes=100, width=1.0, depth=4)
    ops = optimizer_ops(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    assert optimizer_foreach("cuda") and not optimizer_foreach("cuda", False)
    assert ops["multi_tensor"] <= 60  # eager CUDA steps (foreach=True)
    assert ops["graph_step"] <= 80  # the captured step's LAMB (tensor lr and bias corrections)
    assert ops["single_tensor"] > 1000


def test_step_ops_by_phase():
    torch.manual_seed(0)
    model = build_model(preset("nexception"), "proxy", num_classes=10, width=0.125, depth=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = lambda: (torch.randn(4, 3, 16, 16) * 2, torch.tensor([0, 1, 2, 3]))  # noqa: E731
    counts = count_step_ops(model, opt.step, data, F.cross_entropy, lambda: torch.autocast("cpu", enabled=False))
    assert set(counts) == {"data", "forward", "backward", "optimizer", "total"}
    assert counts["data"] >= 2 and counts["forward"] > 20 and counts["backward"] > counts["forward"] / 2
    assert counts["optimizer"] >= len(list(model.parameters()))  # SGD: one or more ops per parameter
    assert counts["total"] == sum(counts[k] for k in ("data", "forward", "backward", "optimizer"))


def test_bench_train_json_carries_the_ops_and_the_step_mode():
    out = subprocess.run(
        [sys.executable, "-m", "nexsearch.cli", "bench", "train", "--steps", "1", "--warmup", "1", "--batch-size", "8",
         "--workers", "0", "--step", "graph", "--foreach", "true", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["step"] == "eager" and "CUDA graphs need a CUDA device" in result["step_fallback"]
    assert result["foreach"] == "true" and result["warmup"] == 4  # graph mode: the capture inside the warm-up
    ops = result["ops_per_step"]
    assert ops["forward"] > 100 and ops["backward"] > ops["forward"] and ops["data"] > 0
    cpu_path = "multi_tensor" if optimizer_foreach("cpu") else "single_tensor"
    assert ops["optimizer"] == result["optimizer_ops"][cpu_path]  # the CPU trainer's LAMB path
    assert result["optimizer_ops"]["multi_tensor"] < result["optimizer_ops"]["single_tensor"] / 10
