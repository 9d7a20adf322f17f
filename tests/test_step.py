"""The training step modes (objectives/step.py): the tensor schedule, the capturable LAMB step, the fallback."""

import pytest
import torch
import torch.nn.functional as F

from nexsearch.errors import UserError
from nexsearch.objectives.datasets import load_dataset
from nexsearch.objectives.settings import DataSpec
from nexsearch.objectives.step import GraphStep, cosine_lr_table, resolve_step
from nexsearch.objectives.settings import TrainSettings
from nexsearch.objectives.trainer import train_proxy
from nexsearch.search_space.builder import build_model
from nexsearch.search_space.presets import preset

TINY = dict(width=0.125, batch_size=64, throughput_batch=32, throughput_iters=1, eval_batch_size=512)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset(DataSpec("synthetic", synthetic_size=512, synthetic_classes=4, image_size=16, seed=0))


@pytest.mark.parametrize("total,warmup", [(1, 0), (7, 0), (40, 2), (300, 15), (1000, 50)])
def test_tensor_schedule_equals_timms_cosine_schedule(total, warmup):
    from timm.scheduler import CosineLRScheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2e-3)
    sched = CosineLRScheduler(opt, t_initial=total, lr_min=1e-6, warmup_t=warmup, warmup_lr_init=1e-6,
                              t_in_epochs=False)
    used = []
    for k in range(total):  # the trainer's loop: update k+1 trains with the lr set after update k
        used.append(opt.param_groups[0]["lr"])
        sched.step_update(num_updates=k + 1)
    used.append(opt.param_groups[0]["lr"])
    table = cosine_lr_table(total, 2e-3, 1e-6, warmup)
    assert table.dtype == torch.float64 and len(table) == total + 1
    assert torch.allclose(table, torch.tensor(used, dtype=torch.float64), rtol=1e-12, atol=1e-15)


def test_step_modes_resolve():
    assert resolve_step("auto", False, "cuda") == "graph"
    assert resolve_step("auto", False, "cpu") == "eager"
    assert resolve_step("auto", "reduce-overhead", "cuda") == "compile"  # the old compile setting keeps working
    assert resolve_step("eager", False, "cuda") == "eager"
    assert resolve_step("graph", False, "cpu") == "graph"
    with pytest.raises(UserError, match="unknown train step"):
        TrainSettings(step="fast")


def _model(seed):
    torch.manual_seed(seed)
    return build_model(preset("nexception"), "proxy", num_classes=4, width=0.125, depth=1,
                       drop_path_rate=0.1).to(memory_format=torch.channels_last)


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 16, 16, generator=g).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 4, (8,), generator=g)) for _ in range(n)]


def _plain_loop(batches, total, warmup, foreach):
    """Today's eager step: timm's LAMB and cosine scheduler."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    model = _model(0)
    opt = create_optimizer_v2(model, opt="lamb", lr=5e-3, weight_decay=0.02, foreach=foreach)
    sched = CosineLRScheduler(opt, t_initial=total, lr_min=1e-6, warmup_t=warmup, warmup_lr_init=1e-6,
                              t_in_epochs=False)
    torch.manual_seed(5)  # stochastic depth draws
    for k, (x, y) in enumerate(batches):
        loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step_update(num_updates=k + 1)
    return model


def test_multi_tensor_lamb_matches_the_single_tensor_path():
    batches = _batches(6)
    a, b = _plain_loop(batches, 6, 2, foreach=False), _plain_loop(batches, 6, 2, foreach=True)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(pa, pb0) for pa, pb0 in zip(a.parameters(), _model(0).parameters()))  # it trained


def test_capturable_step_matches_the_plain_loop():
    """The graph step's body (device lr table, device bias corrections, multi-tensor LAMB), run eagerly."""
    from timm.optim import create_optimizer_v2

    batches, total, warmup = _batches(8), 8, 2
    ref = _plain_loop(batches, total, warmup, foreach=False)
    model = _model(0)
    opt = create_optimizer_v2(model, opt="lamb", lr=5e-3, weight_decay=0.02, foreach=True)
    x0, y0 = batches[0]
    step = GraphStep(model, opt, cosine_lr_table(total, 5e-3, 1e-6, warmup), F.cross_entropy, x0, y0, "bf16",
                     capture=False)
    torch.manual_seed(5)
    for x, y in batches:
        step.load(x, y)
        step.run()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)
    assert int(step.count) == total and step.x.is_contiguous(memory_format=torch.channels_last)
    step.sync_optimizer(1e-3)
    assert float(opt.param_groups[0]["step"]) == total and opt.param_groups[1]["lr"] == 1e-3


def test_graph_step_on_the_cpu_falls_back_to_eager_with_its_reason(synthetic):
    eager = train_proxy(preset("nexception"), synthetic, TrainSettings(**TINY), seed=0, budget=2)
    graph = train_proxy(preset("nexception"), synthetic, TrainSettings(step="graph", **TINY), seed=0, budget=2)
    assert eager["status"] == graph["status"] == "ok", graph["reason"]
    assert (eager["step"], eager["step_fallback"]) == ("eager", None)
    assert graph["step"] == "eager" and "CUDA graphs need a CUDA device" in graph["step_fallback"]
    # the warm-up steps ran the graph step's body, the rest eager: the same training within fp tolerance
    assert graph["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-3)
    for a, b in zip(eager["curve"], graph["curve"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-9)


def test_graph_step_falls_back_with_mixup_and_another_optimizer(synthetic):
    s = TrainSettings(step="graph", mixup=0.2, cutmix=1.0, label_smoothing=0.1, **TINY)
    r = train_proxy(preset("nexception"), synthetic, s, seed=0, budget=1)
    assert r["status"] == "ok" and "CUDA" in r["step_fallback"], r["reason"]
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(step="graph", optimizer="adamw", **TINY), seed=0,
                    budget=1)
    assert r["status"] == "ok" and "LAMB optimizer only" in r["step_fallback"]


def test_a_graph_step_that_fails_before_its_capture_falls_back(synthetic, monkeypatch):
    """An error in the graph step's warm-up (say a timm without the functional multi-tensor LAMB) leaves the trial
    eager, with the reason; out of memory stays out of memory."""
    def missing(self):
        raise AttributeError("module 'timm.optim.lamb' has no attribute 'lamb'")

    monkeypatch.setattr(GraphStep, "_lamb", missing)
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(step="graph", **TINY), seed=0, budget=1)
    assert r["status"] == "ok" and r["step"] == "eager"
    assert r["step_fallback"].startswith("graph step failed before its capture: AttributeError")

    def oom(self):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(GraphStep, "_lamb", oom)
    r = train_proxy(preset("nexception"), synthetic, TrainSettings(step="graph", **TINY), seed=0, budget=1)
    assert r["status"] == "oom"
