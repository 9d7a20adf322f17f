"""The full-size model's cost as an objective: what a user deploys, not the 32x32 proxy.

For every trial the configuration is also built in a full-size layout (experiment key
``full_layout``: ``t``, ``s`` or ``tp``, default ``tp``):

* ``full_params`` and ``full_macs`` on the meta device: shapes only, no weights are allocated (a
  fraction of a second, once per configuration and process; not for trials that diverged or crashed);
* ``full_latency_ms`` (the objective ``full_latency``): inference time per image of the full-size
  model on the trial's own device, measured only when that objective is asked for. CUDA: batch 64,
  fp16 autocast, channels_last, median of 10 timed batches after 3 warm-up batches. CPU: batch 1,
  fp32, channels_last, median of 3 after one warm-up. Measured once per configuration, layout and
  device: the result is cached in the run directory (``full_latency.jsonl``, appended under a lock),
  so seeds, budgets, resumes and other workers on the same device reuse it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from nexsearch.device import autocast, time_iterations
from nexsearch.errors import UserError
from nexsearch.objectives.settings import check_layout
from nexsearch.rundir import append_jsonl, read_jsonl
from nexsearch.search_space.builder import LAYOUTS, build_model, count_macs, count_params
from nexsearch.search_space.space import to_dict

# (batch, timed repetitions, warm-up batches) per device type
PROTOCOL = {"cuda": (64, 10, 3), "cpu": (1, 3, 1)}


_COSTS: dict[str, dict[str, int]] = {}  # this process's full-size costs by configuration and layout


def full_size_cost(config: Mapping[str, Any], layout: str = "tp") -> dict[str, int]:
    """Parameters and MACs of ``config`` built in the full-size ``layout``, on the meta device."""
    key = json.dumps([to_dict(config), layout], sort_keys=True)
    if key not in _COSTS:
        with torch.device("meta"):
            model = build_model(config, layout)  # a trial's Configuration as it is: checked once, by the trainer
        _COSTS[key] = {"full_params": count_params(model), "full_macs": count_macs(model, LAYOUTS[layout].input_size)}
    return dict(_COSTS[key])


def device_name(device: torch.device) -> str:
    """What a latency was measured on: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return f"cuda {torch.cuda.get_device_name(device)}"
    return f"cpu {platform.machine()} {torch.get_num_threads()} threads"


def _key(config: Mapping[str, Any], layout: str, device: str) -> str:
    return json.dumps([to_dict(config), layout, device], sort_keys=True)


def _cached(path: Path, key: str) -> float | None:
    for entry in read_jsonl(path):  # a line being written right now is left out
        if _key(entry["config"], entry["layout"], entry["device"]) == key:
            return float(entry["latency_ms"])
    return None


@torch.no_grad()
def measure_latency_ms(model: torch.nn.Module, input_size: int, device: torch.device) -> float:
    """Median time per image of a forward pass (``PROTOCOL`` for the device type)."""
    batch, reps, warmup = PROTOCOL["cuda" if device.type == "cuda" else "cpu"]
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, input_size, input_size, device=device).contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with autocast(device, "fp16"):  # fp16 on CUDA; the CPU runs fp32
            model(x)

    times = time_iterations(forward, device, reps, warmup=warmup)
    return 1000.0 * statistics.median(times) / batch


def full_latency(config: Mapping[str, Any], layout: str, device: torch.device,
                 cache: str | Path | None = None) -> tuple[float, bool]:
    """(ms per image of the full-size model on ``device``, whether it came from the cache)."""
    name = device_name(device)
    key = _key(config, layout, name)
    if cache is not None and (hit := _cached(Path(cache), key)) is not None:
        return hit, True
    model = build_model(config, layout)
    try:
        latency = measure_latency_ms(model, LAYOUTS[layout].input_size, device)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if cache is not None:
        append_jsonl(cache, {"config": to_dict(config), "layout": layout, "device": name, "latency_ms": latency,
                             "measured_at": time.time()})
    return latency, False


def full_size_record(record: Mapping[str, Any], layout: str, latency: bool, cache: str | Path | None = None,
                     crash_cost: float = 1.0) -> dict[str, Any]:
    """The full-size fields of a trial's record: params and MACs of every trial that trained, the latency
    when ``latency`` and the trial succeeded. A latency measurement that fails turns the trial into a
    failed one, with its reason."""
    out: dict[str, Any] = {"full_layout": layout, "full_params": None, "full_macs": None,
                           "full_latency_ms": None, "full_latency_cached": None}
    if record["status"] not in ("ok", "timeout"):  # diverged, out of memory, crashed: no model to speak of
        return out
    out.update(full_size_cost(record["config"], layout))
    if latency and record["status"] == "ok":
        try:
            out["full_latency_ms"], out["full_latency_cached"] = full_latency(
                record["config"], layout, torch.device(record["device"]), cache)
        except torch.OutOfMemoryError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "OutOfMemoryError"
            out.update(status="oom", reason=f"full-size '{layout}' latency: out of memory: {first}", cost=crash_cost)
        except Exception as exc:  # a trial must never end the search
            out.update(status="crashed", reason=f"full-size '{layout}' latency: {type(exc).__name__}: {exc}",
                       cost=crash_cost)
    return out


def produce(record: Mapping[str, Any], spec: Any) -> dict[str, Any]:
    """The objective table's ``full_size`` producer: :func:`full_size_record` for a trial of ``spec``."""
    return full_size_record(record, spec.full_layout, "full_latency" in spec.objectives, spec.latency_cache,
                            spec.settings.crash_cost)


def _peak_bytes(config: Mapping[str, Any], layout: str, batch: int, param_bytes: int, act_bytes: int) -> int:
    """Weights plus three times the largest activation of a forward pass, from shapes on the meta device."""
    with torch.device("meta"):
        model = build_model(dict(config), layout).eval()
    largest = [0]

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    size = LAYOUTS[layout].input_size
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size, device="meta"))
    for h in handles:
        h.remove()
    return count_params(model) * param_bytes + 3 * largest[0] * batch * act_bytes


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


MEMORY_MARGIN = 2.0  # the presets are typical members of the space; the largest ones need more


def check_fits(objectives: Sequence[str], layout: str, device: str) -> None:
    """Refuse (one line) a ``full_latency`` search whose full-size models would not fit on ``device``.

    The need is estimated from the presets built in ``layout`` (weights, plus three times the
    largest activation at the protocol's batch) with a margin of ``MEMORY_MARGIN`` for the larger
    configurations of the space; a trial that still runs out of memory is recorded as ``oom``.
    """
    from nexsearch.device import resolve_device
    from nexsearch.search_space.presets import PRESETS

    check_layout(layout)
    if "full_latency" not in objectives:
        return
    device = resolve_device(device)
    batch = PROTOCOL["cuda" if device.type == "cuda" else "cpu"][0]
    param_bytes, act_bytes = (6, 2) if device.type == "cuda" else (4, 4)  # fp32 weights (+ fp16 copies), fp16 maps
    need = MEMORY_MARGIN * max(_peak_bytes(c, layout, batch, param_bytes, act_bytes) for c in PRESETS.values())
    free = _available_bytes(device)
    if need > free:
        raise UserError(
            f"full_latency: full-size '{layout}' models need about {need / 2**30:.1f} GiB at batch {batch} on "
            f"{device_name(device)}, {free / 2**30:.1f} GiB are free: choose a smaller full_layout or another objective"
        )
