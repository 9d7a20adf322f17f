"""The training step as one CUDA graph: forward, backward and the LAMB update replayed without launches.

``train.step`` chooses how the trainer runs a step (:func:`resolve_step`):

* ``eager``   -- the plain PyTorch loop (the default on the CPU);
* ``graph``   -- :class:`GraphStep`: every input of the step lives in a static tensor on the device (the
  batch, its labels or mixed targets, the update count), the learning rate comes from the cosine
  schedule as a device table (:func:`cosine_lr_table`) indexed by that count, LAMB's bias
  corrections are computed from it on the device, and timm's multi-tensor LAMB updates the
  parameters; after a few warm-up steps on a side stream the whole step is captured once with
  ``torch.cuda.graph`` and replayed every step (the default on CUDA);
* ``compile`` -- ``torch.compile`` of the model (the ``compile`` setting's mode, ``default`` if unset).

Data augmentation and mixup / cutmix run before the step (eager, they draw host random numbers);
stochastic depth draws from the default CUDA generator, which a graph replay advances; BatchNorm's
running statistics are updated in place. A capture that fails leaves the trial in eager mode with the
reason (:class:`GraphStep` keeps timm's optimizer state and its step count in step, so the trial
goes on where the graph stopped).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from nexsearch.device import autocast

WARMUP_STEPS = 3  # eager steps on a side stream before the capture (cuDNN / cuBLAS workspaces, lazy state)
# timm's LAMB on CPU tensors: single-tensor (False) or multi-tensor (True). `nexsearch bench train --foreach`
# measured both (docs/benchmarks.md): the single-tensor path is not slower on the CPU.
CPU_FOREACH = False


def resolve_step(step: str, compile: Any, device_type: str) -> str:
    """The step mode a trial runs: ``auto`` -> ``compile`` where a compile mode is set, else ``graph`` on CUDA and
    ``eager`` elsewhere; an explicit mode is kept (``graph`` on the CPU then falls back at the capture)."""
    from nexsearch.device import compile_mode

    if step != "auto":
        return step
    if compile_mode(compile) is not None:
        return "compile"
    return "graph" if device_type == "cuda" else "eager"


def optimizer_foreach(device_type: str, setting: bool | str = "auto") -> bool:
    """Whether timm's LAMB takes its multi-tensor path: the ``foreach`` setting, or for ``auto`` always on CUDA and
    on the CPU where it measured faster (``CPU_FOREACH``)."""
    if setting != "auto":
        return bool(setting)
    return device_type == "cuda" or CPU_FOREACH


def cosine_lr_table(total: int, lr: float, min_lr: float, warmup_t: int) -> torch.Tensor:
    """The learning rate of every update 0..``total`` (float64, CPU) of timm's ``CosineLRScheduler`` as the trainer
    configures it (``t_initial=total``, ``lr_min=min_lr``, warm-up from ``min_lr`` over ``warmup_t`` updates,
    one cycle): update *k* (0-based) trains with entry *k*."""
    t = torch.arange(total + 1, dtype=torch.float64)
    cosine = min_lr + 0.5 * (lr - min_lr) * (1 + torch.cos(math.pi * t / total))
    cosine = torch.where(t >= total, torch.full_like(t, min_lr), cosine)  # timm's second cycle: lr_min
    if warmup_t > 0:
        warm = min_lr + t * ((lr - min_lr) / warmup_t)
        cosine = torch.where(t < warmup_t, warm, cosine)
    return cosine


class StepFallback(RuntimeError):
    """The capture of a step failed; the trial goes on eagerly (the message is the recorded reason)."""


class GraphStep:
    """One training step whose inputs are static device tensors, run eagerly or replayed as a captured CUDA graph.

    ``load(x, y)`` copies a batch (and its labels or mixed soft targets) into the static buffers; ``run()``
    trains on them: eagerly for the first ``WARMUP_STEPS`` calls (on a side stream on CUDA), captured at the
    next call, replayed from then on. ``sync_optimizer()`` writes the update count and the learning rate
    back into timm's optimizer, so that eager steps may take over at any point.
    """

    def __init__(self, net: torch.nn.Module, optimizer: Any, lr_table: torch.Tensor, loss_fn: Callable,
                 x: torch.Tensor, y: torch.Tensor, precision: str, capture: bool = True):
        self.net, self.optimizer, self.loss_fn, self.precision = net, optimizer, loss_fn, precision
        self.device = x.device
        self.x, self.y = torch.zeros_like(x), torch.zeros_like(y)  # x keeps its memory format
        self.lr_table = lr_table.to(self.device, torch.float32)
        self.count = torch.zeros((), dtype=torch.int64, device=self.device)  # updates done
        self.loss_sum = torch.zeros((), device=self.device)
        self.host_count = 0
        self.capture, self.graph, self.calls = capture, None, 0
        for group in optimizer.param_groups:  # LAMB's state, created as timm creates it at its first step
            group.setdefault("step", torch.tensor(0.0))
            for p in group["params"]:
                state = optimizer.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)

    def load(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)

    def _step(self) -> None:
        """Forward, backward, LAMB: device work only (no host synchronisation), so that it can be captured."""
        for p in self.net.parameters():
            p.grad = None
        with autocast(self.device, self.precision, cache=False):
            logits = self.net(self.x)
        loss = self.loss_fn(logits.float(), self.y)
        loss.backward()
        with torch.no_grad():
            self._lamb()
        self.loss_sum.add_(loss.detach())  # after the update: a step that fails leaves the sum as it was

    def _lamb(self) -> None:
        """timm's multi-tensor LAMB with the learning rate and the bias corrections as device tensors."""
        from timm.optim.lamb import lamb

        # index_select, not [count]: indexing with a 0-dim tensor would read it on the host (no capture)
        lr = self.lr_table.index_select(0, self.count.clamp(max=len(self.lr_table) - 1).view(1)).view(())
        self.count.add_(1)
        step = self.count.float()
        opt = self.optimizer
        clip = opt._get_clip_grad_norm()
        for group in opt.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            beta1, beta2 = group["betas"]
            bc1, bc2 = (1 - beta1 ** step, 1 - beta2 ** step) if group["bias_correction"] else (1.0, 1.0)
            lamb(params, [p.grad for p in params], [opt.state[p]["exp_avg"] for p in params],
                 [opt.state[p]["exp_avg_sq"] for p in params], clip, True, lr=lr, beta1=beta1, beta2=beta2,
                 beta3=1 - beta1 if group["grad_averaging"] else 1.0, bias_correction1=bc1, bias_correction2=bc2,
                 eps=group["eps"], weight_decay=group["weight_decay"],
                 decoupled_decay=group.get("decoupled_decay", False), max_lr=None, trust_clip=group["trust_clip"],
                 always_adapt=group["always_adapt"], caution=group.get("caution", False))

    def run(self) -> None:
        """One training step on the loaded batch."""
        self.calls += 1
        self.host_count += 1
        if self.graph is not None:
            self.graph.replay()
        elif self.calls <= WARMUP_STEPS or not self.capture:
            try:
                self._warm_step()
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # e.g. a timm without the functional multi-tensor LAMB: train eagerly
                self.host_count -= 1
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise StepFallback(f"graph step failed before its capture: {type(exc).__name__}: {first}") from exc
        else:
            self._capture()
            self.graph.replay()

    def _warm_step(self) -> None:
        if self.device.type != "cuda":
            self._step()
            return
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self) -> None:
        if self.device.type != "cuda":
            self.host_count -= 1
            raise StepFallback(f"CUDA graphs need a CUDA device, the trial trains on {self.device}")
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # Dask's threads keep running
                self._step()
        except Exception as exc:
            self.host_count -= 1
            for p in self.net.parameters():
                p.grad = None
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise StepFallback(f"CUDA graph capture failed: {type(exc).__name__}: {first}") from exc
        self.graph = graph

    def sync_optimizer(self, lr: float) -> None:
        """Write the update count and the current learning rate into timm's optimizer (for eager steps or
        the record); ``lr`` is the learning rate of the next update."""
        for group in self.optimizer.param_groups:
            group["step"].fill_(self.host_count)
            group["lr"] = lr

    def take_loss_sum(self) -> torch.Tensor:
        """The summed training loss since the last call (a device tensor), then zero."""
        total = self.loss_sum.clone()
        self.loss_sum.zero_()
        return total
