"""``nexsearch bench trials``: how many proxy evaluations a device does per day, for N trials at once.

For each N in ``concurrency``, a local Dask cluster of N worker processes is started exactly as
``nexsearch run --workers N`` starts it (same ``worker_pool``, same worker plugin: GPU i mod
#GPUs, or the CPU threads shared out), every worker loads a CIFAR-100-shaped synthetic set
onto its device, and then all N train the same paper-size proxy at once through the trial
target (``evaluate_trial``) for ``epochs`` epochs.

Per N: aggregate training images/s over the steady-state epochs (every epoch after the first,
summed over the workers), the first-epoch time, the setup time before the first step, peak
memory per worker, the speed-up over the first N, and the implied trials per device-day of
``trial_epochs``-epoch trials on ``trial_images`` training images (default: the set measured),
each worker training at its measured steady rate r:

    trial_s = setup + (first epoch - steady epoch) + E * (trial_images / r + eval per epoch)
    trials per day = N * 86400 / trial_s

(the evaluation time is scaled by trial_images / images, as the validation set is a fixed share).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from nexsearch.errors import UserError

DAY_S = 86400.0


def _load_data() -> int:
    """Runs in each worker: load the dataset onto the worker's device; returns the training images."""
    from nexsearch.objectives.target import SEARCH

    return len(SEARCH.loaded()[1].train)


def _summarise(records: list[dict[str, Any]], n: int, trial_epochs: int, scale: float) -> dict[str, Any]:
    """The figures of one concurrency level from its N trial records (``scale``: trial images / images)."""
    rates, steady_epoch_s, eval_epoch_s = [], [], []
    for r in records:
        steady = r["curve"][1:] or r["curve"]
        rates.append(sum(e["images"] for e in steady) / sum(e["train_s"] for e in steady))
        steady_epoch_s.append(statistics.fmean(e["train_s"] for e in steady))
        eval_epoch_s.append(r["eval_s"] / max(1, len(r["curve"])))
    setup = statistics.fmean(r["setup_s"] for r in records)
    first = statistics.fmean(r["first_epoch_s"] for r in records)
    steady = statistics.fmean(steady_epoch_s)
    rate = statistics.fmean(rates)
    epoch_s = scale * sum(e["images"] for e in records[0]["curve"][:1]) / rate
    trial_s = setup + max(0.0, first - steady) + trial_epochs * (epoch_s + scale * statistics.fmean(eval_epoch_s))
    return {
        "workers": n,
        "aggregate_images_per_s": round(sum(rates), 1),
        "images_per_s_per_worker": round(rate, 1),
        "steady_epoch_s": round(steady, 3),
        "first_epoch_s": round(first, 3),
        "first_epoch_s_max": round(max(r["first_epoch_s"] for r in records), 3),
        "setup_s": round(setup, 3),
        "eval_s_per_epoch": round(statistics.fmean(eval_epoch_s), 3),
        "peak_memory_mb_per_worker": round(max(r["peak_memory_mb"] for r in records), 1),
        "peak_memory_kind": records[0]["peak_memory_kind"],
        "devices": sorted({r["device"] for r in records}),
        "step": sorted({str(r.get("step")) for r in records}),
        "step_fallback": sorted({r["step_fallback"] for r in records if r.get("step_fallback")}),
        "projected_trial_s": round(trial_s, 1),
        "trials_per_day": round(n * DAY_S / trial_s, 1),
    }


def _level(n: int, spec: dict[str, Any], config: dict[str, Any], epochs: int, trial_epochs: int, scale: float,
           timeout_s: float | None) -> dict[str, Any]:
    """Start N Dask workers, load the data in each, run N trials at once, summarise."""
    from nexsearch.objectives.target import evaluate_trial
    from nexsearch.runners.cluster import NexsearchWorkerPlugin, worker_pool

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nexsearch-bench-trials-") as tmp, \
            worker_pool(n, None, tmp, plugin=NexsearchWorkerPlugin(spec, n)) as client:
        client.wait_for_workers(n, timeout=300 if timeout_s is None else max(1.0, min(300.0, timeout_s)))
        started = time.perf_counter()
        train_images = max(client.run(_load_data).values())
        loaded = time.perf_counter()
        addresses = sorted(client.scheduler_info()["workers"])
        futures = [client.submit(evaluate_trial, config, 0, float(epochs), pure=False, workers=[a],
                                 allow_other_workers=False) for a in addresses[:n]]
        left = None if timeout_s is None else max(1.0, timeout_s - (time.perf_counter() - t0))
        results = client.gather(futures) if left is None else _gather(client, futures, left)
        finished = time.perf_counter()
    records = [info for _, info in results]
    row = _summarise(records, n, trial_epochs, scale)
    row.update(cluster_start_s=round(started - t0, 2), data_load_s=round(loaded - started, 2),
               trials_wall_s=round(finished - loaded, 2), train_images=train_images)
    return row


def _gather(client: Any, futures: list, timeout_s: float) -> list:
    from distributed import wait

    done, not_done = wait(futures, timeout=timeout_s, return_when="ALL_COMPLETED")
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(futures)} trials still running after {timeout_s:g} s")
    return client.gather(futures)


def bench_trials(
    concurrency: Sequence[int] = (1, 2, 4, 8),
    epochs: int = 2,
    images: int = 45000,
    image_size: int = 32,
    classes: int = 100,
    width: float = 1.0,
    depth: int = 4,
    batch_size: int = 256,
    device: str = "auto",
    preset_name: str = "nexception",
    trial_epochs: int = 27,
    trial_images: int | None = None,
    level_timeout_s: float | Callable[[], float] | None = None,  # per level; a callable is asked before each
    progress: Callable[[str], None] | None = None,
    mps: str = "off",
    step: str = "auto",
    mps_concurrency: Sequence[int | str] | None = None,
) -> dict[str, Any]:
    """Trials of the proxy of ``preset_name`` at each concurrency level (a count, or ``auto``: as many as fit into
    the GPU's memory); one dict with every level. ``mps``: off, on or both (each level without, then with CUDA MPS
    where its daemon starts; ``both`` remembers whether MPS paid, for ``run``; ``mps_concurrency``: the levels run
    with MPS, default all). ``step``: the trials' train.step."""
    import torch

    from nexsearch.device import device_name, resolve_device
    from nexsearch.search_space.presets import preset

    counts = [c for c in concurrency if c != "auto"]
    if epochs < 2 or images < 2 * batch_size or trial_epochs < 1 or not concurrency or (counts and min(counts) < 1) \
            or mps not in ("off", "on", "both"):
        raise UserError("bench trials needs --epochs >= 2 (the first is warm-up), --images >= 2 x --batch-size, "
                        "--trial-epochs >= 1, concurrency levels >= 1 (or auto) and --mps off, on or both")
    dev = resolve_device(device)
    try:
        import nexsearch.runners.cluster  # noqa: F401
    except ImportError as exc:
        raise UserError(f"bench trials needs Dask ({exc}): pip install dask distributed") from None
    spec = _spec(images, image_size, classes, width, depth, batch_size, str(dev), epochs, step)
    config = preset(preset_name)
    scale = (trial_images or images) / images
    levels, errors, mps_status = _all_levels(concurrency, mps, mps_concurrency, dev, spec, config, epochs,
                                             trial_epochs, scale, level_timeout_s, progress)
    _speedups(levels)
    if mps == "both" and mps_status is None:
        from nexsearch.runners.mps import record_measurement

        record_measurement(device_name(dev), levels)
    return {
        "device": device_name(dev),
        "preset": preset_name, "width": width, "depth": depth, "batch_size": batch_size,
        "train_images": levels[0]["train_images"] if levels else None,
        "image_size": image_size, "classes": classes, "epochs": epochs, "trial_epochs": trial_epochs, "trial_images": trial_images or images,
        "levels": levels, "errors": errors, "mps": mps, "mps_status": mps_status or ("used" if mps != "off" else "off"),
        "torch": torch.__version__,
    }


def _spec(images: int, image_size: int, classes: int, width: float, depth: int, batch_size: int, device: str,
          epochs: int, step: str) -> Any:
    """The trials' spec: a CIFAR-100-shaped synthetic set of ``images`` training images; cuDNN autotuning on as
    in a long trial (the projection is for trial_epochs-epoch trials)."""
    from nexsearch.objectives.settings import DataSpec, TrainSettings, TrialSpec

    val_fraction = 0.1
    data = DataSpec("synthetic", val_fraction=val_fraction, image_size=image_size,
                    synthetic_size=round(images / (1 - val_fraction)), synthetic_classes=classes)
    settings = TrainSettings(width=width, depth=depth, batch_size=batch_size, device=device, epochs=epochs,
                             cudnn_benchmark=True, throughput_iters=2, throughput_batch=min(256, batch_size), step=step)
    return TrialSpec(data, settings)


def _all_levels(concurrency, mps, mps_concurrency, dev, spec, config, epochs, trial_epochs, scale, level_timeout_s,
                progress) -> tuple[list[dict], list[dict], str | None]:
    """(rows, errors, why MPS did not run or None) of every level, without and / or with CUDA MPS."""
    levels, errors, mps_status = [], [], None
    for use_mps in {"off": (False,), "on": (True,), "both": (False, True)}[mps]:
        if not use_mps:
            _run_levels(concurrency, dev, spec, config, epochs, trial_epochs, scale, level_timeout_s, progress,
                        levels, errors, False)
            continue
        from nexsearch.runners.mps import mps_daemon

        with mps_daemon() as mps_status:
            if mps_status is None:
                _run_levels(mps_concurrency or concurrency, dev, spec, config, epochs, trial_epochs, scale,
                            level_timeout_s, progress, levels, errors, True)
        if progress and mps_status:
            progress(f"bench trials: MPS {mps_status}")
    return levels, errors, mps_status


def _speedups(levels: list[dict[str, Any]]) -> None:
    """Each row's speed-up over the first level that ran (N=1 normally) of the same MPS setting."""
    for row in levels:
        first = next(r for r in levels if r["mps"] == row["mps"])
        row["speedup"] = round(row["aggregate_images_per_s"] / first["aggregate_images_per_s"], 3)


def _packed_workers(dev: Any) -> int:
    """The ``auto`` level: the paper-size trials that fit into the GPU's memory (``workers_per_gpu: auto``)."""
    if dev.type != "cuda":
        raise UserError("auto: packing by GPU memory needs a CUDA device")
    import torch

    from nexsearch.runners.packing import paper_proxy_slots

    return paper_proxy_slots(torch.cuda.get_device_properties(dev).total_memory / 2**20)


def _run_levels(concurrency, dev, spec, config, epochs, trial_epochs, scale, level_timeout_s, progress, levels,
                errors, use_mps: bool) -> None:
    """Every concurrency level (a count, or ``auto``: packed by memory) once, appending rows or errors."""
    tag = " with MPS" if use_mps else ""
    for level in concurrency:
        if progress:
            progress(f"bench trials: {level} worker(s){tag} ...")
        try:
            n = _packed_workers(dev) if level == "auto" else level
            timeout = level_timeout_s() if callable(level_timeout_s) else level_timeout_s
            if timeout is not None and timeout <= 0:
                raise TimeoutError("no time left for this level")
            row = _level(n, spec, config, epochs, trial_epochs, scale, timeout)
        except Exception as exc:  # one level failing (out of memory, a lost worker) must not lose the others
            errors.append({"workers": level, "mps": use_mps,
                           "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
            if progress:
                progress(f"bench trials: {level} worker(s){tag} failed: {errors[-1]['error']}")
            continue
        row.update(mps=use_mps, packed=level == "auto")
        levels.append(row)
        if progress:
            progress(f"bench trials: {n} worker(s){tag}: {row['aggregate_images_per_s']:.0f} images/s, "
                     f"{row['trials_per_day']:.0f} trials/day")


def _levels(text: str) -> list[int | str]:
    try:
        levels = [x.strip() if x.strip() == "auto" else int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or min([n for n in levels if n != "auto"] or [1]) < 1:
        raise UserError(f"--concurrency must be comma-separated worker counts >= 1 or auto (packed by GPU memory), "
                        f"e.g. 1,2,4,8,auto; got '{text}'")
    return levels


def print_result(result: dict[str, Any]) -> None:
    print(f"device {result['device']}: proxy '{result['preset']}' width {result['width']:g}, depth "
          f"{result['depth']}, batch {result['batch_size']}, {result['train_images']} images "
          f"{result['image_size']}px, {result['epochs']} epochs per trial")
    print(f"  {'N':>3} {'images/s':>10} {'speed-up':>8} {'1st epoch':>10} {'setup':>7} {'peak MiB':>9} "
          f"{'trials/day':>11} (of {result['trial_epochs']} epochs, {result['trial_images']} images)")
    for r in result["levels"]:
        print(f"  {r['workers']:>3}{'M' if r['mps'] else ' '}{'P' if r['packed'] else ' '}"
              f"{r['aggregate_images_per_s']:>9.0f} {r['speedup']:>7.2f}x "
              f"{r['first_epoch_s']:>9.1f}s {r['setup_s']:>6.1f}s {r['peak_memory_mb_per_worker']:>9.0f} "
              f"{r['trials_per_day']:>11.0f}")
    print(f"  (M: with CUDA MPS, P: packed by GPU memory; MPS {result['mps_status']})")
    for e in result["errors"]:
        print(f"  {e['workers']:>3} failed: {e['error']}")


def main(args: argparse.Namespace) -> int:
    """``nexsearch bench trials``: run every level, then print a table or one JSON object."""
    result = bench_trials(
        _levels(args.concurrency), epochs=args.epochs, images=args.images, image_size=args.image_size,
        classes=args.classes, width=args.width, depth=args.depth, batch_size=args.batch_size, device=args.device,
        preset_name=args.preset, trial_epochs=args.trial_epochs, trial_images=args.trial_images,
        progress=None if args.json else (lambda line: print(line, flush=True)), mps=args.mps, step=args.step,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print_result(result)
    return 0
