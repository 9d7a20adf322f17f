"""What a training step launches: aten ops per phase (data, forward, backward, optimizer), on any device.

A ``TorchDispatchMode`` sees every aten op that reaches a kernel (after autograd, so the backward
pass's ops too); on a GPU nearly each is a kernel launch, which is what bounds a small proxy's step.
The count hardly depends on the batch size or the device, so the CPU counts what a GPU will launch.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PHASES = ("data", "forward", "backward", "optimizer")


class OpCounter(TorchDispatchMode):
    """Counts aten ops into ``counts[phase]``; set ``phase`` between the parts of a step."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.phase = "data"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.phase] += 1
        return func(*args, **(kwargs or {}))


def count_step_ops(net: torch.nn.Module, optimizer_step: Callable[[], Any], next_batch: Callable[[], tuple],
                   loss_fn: Callable, autocast: Callable) -> dict[str, int]:
    """Aten ops of one training step by phase: ``next_batch()`` (data), the forward pass and the loss under
    ``autocast()``, the backward pass, ``optimizer_step()``; plus their ``total``."""
    counter = OpCounter()
    with counter:
        x, y = next_batch()
        counter.phase = "forward"
        with autocast():
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        counter.phase = "backward"
        for p in net.parameters():
            p.grad = None
        loss.backward()
        counter.phase = "optimizer"
        optimizer_step()
    counts = {phase: counter.counts[phase] for phase in PHASES}
    counts["total"] = sum(counts.values())
    return counts


def optimizer_ops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Aten ops of one LAMB step of ``model`` on (``x``, ``y``) on each path: timm's single-tensor and multi-tensor
    (``foreach=True``, what CUDA takes eagerly) steps and the graph step's (``objectives/step.GraphStep``). Each is
    counted at its second step: the first creates the optimizer's state."""
    import torch.nn.functional as F
    from timm.optim import create_optimizer_v2

    from nexsearch.objectives.step import GraphStep, cosine_lr_table

    def grads() -> None:
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x).float(), y).backward()

    out = {}
    for name, foreach in (("single_tensor", False), ("multi_tensor", True)):
        opt = create_optimizer_v2(model, opt="lamb", lr=1e-3, weight_decay=0.02, foreach=foreach)
        grads()
        opt.step()
        with OpCounter() as counter:
            opt.step()
        out[name] = counter.counts["data"]
    opt = create_optimizer_v2(model, opt="lamb", lr=1e-3, weight_decay=0.02, foreach=True)
    step = GraphStep(model, opt, cosine_lr_table(10, 1e-3, 1e-6, 1), F.cross_entropy, x, y, "fp32", capture=False)
    grads()
    with OpCounter() as counter, torch.no_grad():
        step._lamb()
    out["graph_step"] = counter.counts["data"]
    return out
