"""``nexsearch bench suite --device cuda --out DIR``: measure a device in one call.

Parts, in this order, each written to ``DIR/<part>.json`` as soon as it finishes (so a call
cut short still leaves what it measured), then ``DIR/summary.json`` and ``DIR/summary.md``:

* ``train_w1.0``, ``train_w1.0_eager``, ``train_w1.0_compile``, ``train_w0.125`` -- bench train at the paper's
  proxy width with the trainer's default step (graph on CUDA), eager and torch.compile steps, and at an eighth
  of the width (``quick``: 0.25 and 0.125); each with the aten ops of one step by phase
* ``steps``                        -- one trial trained eagerly and as a CUDA graph with the same seed: both
  loss curves and their largest difference, images/s and first-epoch seconds of each
* ``trials``                       -- bench trials at concurrency 1, 2, 4, 8 and auto (packed by GPU memory),
  then 4 and 8 under CUDA MPS where its daemon starts (the first-epoch surplus is the capture's cost)
* ``infer_<format>_<blurpool>``     -- bench infer of the presets and timm baselines, channels_last
  and contiguous, timm's BlurPool and the format-keeping one (four parts; the first runs every
  default model, the other three the paper's two ratio pairs; last, as the time limit allows)

A part that fails (a missing package, out of memory) records its error in its JSON and in the
summary, and the suite goes on. Every part imports what it needs only when it runs. The
whole suite keeps within ``time_limit_s`` (7.5 minutes by default): bench trials gets what is
left, level by level. ``quick``: tiny sizes, for a CPU smoke test.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nexsearch.errors import UserError
from nexsearch.rundir import write_json_atomic

QUICK_INFER_MODELS = ("nexception_t", "legacy_xception")
# The paper's two ratio pairs: every A/B variant of bench infer runs these; the first variant runs all defaults.
PAIR_MODELS = ("nexception_t", "legacy_xception", "nexception_tp", "convnext_tiny")


def _parts(device: str, quick: bool, time_left: Callable[[], float]) -> list[tuple[str, str, Callable[[], dict]]]:
    """(name, equivalent command, thunk) of every part."""

    def train(width: float, step: str = "auto") -> Callable[[], dict]:
        def run() -> dict:
            from nexsearch.bench.train import bench_train
            from nexsearch.search_space.presets import preset

            if quick:
                return bench_train(preset("nexception"), steps=2, warmup=1, batch_size=16, width=width, device=device,
                                   workers=0, image_size=16, num_classes=10, step=step)
            return bench_train(preset("nexception"), steps=60, warmup=10, batch_size=256, width=width, device=device,
                               workers=8, step=step)
        return run

    def infer(memory: str, keep_format: bool, models: tuple[str, ...] | None) -> Callable[[], dict]:
        def run() -> dict:
            from nexsearch.bench.infer import bench_infer

            if quick:
                return bench_infer(list(QUICK_INFER_MODELS), device=device, batch=1, reps=1, warmup=1, input_size=32,
                                   memory=memory, blurpool_keep_format=keep_format)
            return bench_infer(list(models) if models else None, device=device, reps=20, warmup=5, memory=memory,
                               blurpool_keep_format=keep_format)
        return run

    def trials() -> dict:
        from nexsearch.bench.trials import bench_trials

        progress = (lambda line: print(f"  {line}", flush=True))
        if quick:
            return bench_trials((1, 2, "auto"), epochs=2, images=128, image_size=16, classes=10, width=0.125, depth=1,
                                batch_size=32, device=device, level_timeout_s=time_left, progress=progress, mps="both",
                                mps_concurrency=(2,))
        return bench_trials((1, 2, 4, 8, "auto"), epochs=2, images=20000, trial_images=45000, device=device,
                            level_timeout_s=time_left, progress=progress, mps="both", mps_concurrency=(4, 8))

    train_cmd = ("nexsearch bench train --width {w} --batch-size 256 --steps 60 --warmup 10 --workers 8 --step {s}"
                 if not quick else "nexsearch bench train --width {w} --batch-size 16 --steps 2 --warmup 1 --workers 0 "
                                   "--step {s}")
    w1, w8 = (0.25, 0.125) if quick else (1.0, 0.125)
    # the paper's proxy with each step mode (auto: graph on CUDA), then an eighth of its width
    parts = [(f"train_w{w}{'' if s == 'auto' else '_' + s}", train_cmd.format(w=w, s=s), train(w, s))
             for w, s in ((w1, "auto"), (w1, "eager"), (w1, "compile"), (w8, "auto"))
             if not (quick and s == "compile")]  # compilation takes minutes on a CPU
    parts.append(("steps", "one trial per step mode, same seed (bench/suite.py: step_equality)",
                  lambda: step_equality(device, quick)))
    parts.append(("trials", "nexsearch bench trials --concurrency 1,2,4,8,auto --epochs 2 --images 20000 "
                            "--trial-images 45000 --mps both (MPS at 4,8)" if not quick
                  else "nexsearch bench trials (quick sizes, --mps both)", trials))
    for memory in ("channels_last", "contiguous"):
        for keep in (False, True):
            blur = "keep-format" if keep else "timm"
            models = None if (memory, keep) == ("channels_last", False) else PAIR_MODELS
            cmd = (f"nexsearch bench infer{f' --models {chr(44).join(models)}' if models else ''} --reps 20 "
                   f"--warmup 5 --memory-format {memory} --blurpool {blur}" if not quick
                   else f"nexsearch bench infer --models {','.join(QUICK_INFER_MODELS)} --batch-size 1 --reps 1 "
                        f"--warmup 1 --input-size 32 --memory-format {memory} --blurpool {blur}")
            parts.append((f"infer_{memory}_{blur}", cmd, infer(memory, keep, models)))
    return [(name, f"{cmd} --device {device}", thunk) for name, cmd, thunk in parts]


def step_equality(device: str, quick: bool = False) -> dict[str, Any]:
    """The same trial (paper proxy, same seed) trained with ``train.step`` eager and graph: both loss curves, their
    largest relative difference, each mode's steady images/s and first-epoch seconds (the capture's cost)."""
    from nexsearch.objectives.datasets import load_dataset
    from nexsearch.objectives.settings import DataSpec, TrainSettings
    from nexsearch.objectives.trainer import train_proxy
    from nexsearch.search_space.presets import preset

    size, classes, width, batch = (256, 10, 0.125, 32) if quick else (12800, 100, 1.0, 256)
    from nexsearch.device import resolve_device

    splits = load_dataset(DataSpec("synthetic", image_size=16 if quick else 32, synthetic_size=size,
                                   synthetic_classes=classes, val_fraction=0.1)).to(resolve_device(device))
    runs = {}
    for mode in ("eager", "graph"):
        settings = TrainSettings(step=mode, width=width, batch_size=batch, device=device, throughput_iters=2,
                                 throughput_batch=batch, cudnn_benchmark=False)
        r = train_proxy(preset("nexception"), splits, settings, seed=0, budget=3)
        steady = r["curve"][1:]
        runs[mode] = {"step": r["step"], "step_fallback": r["step_fallback"], "status": r["status"],
                      "train_loss": [e["train_loss"] for e in r["curve"]], "val_loss": [e["val_loss"] for e in r["curve"]],
                      "images_per_s": round(sum(e["images"] for e in steady) / sum(e["train_s"] for e in steady), 1),
                      "first_epoch_s": r["first_epoch_s"], "throughput": r["throughput"]}
    pairs = [(a, b) for key in ("train_loss", "val_loss") for a, b in zip(runs["eager"][key], runs["graph"][key])]
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)
    return {"runs": runs, "max_relative_loss_difference": round(diff, 6), "tolerance": 0.02,
            "equal_within_tolerance": diff <= 0.02}


def _headline(name: str, result: dict[str, Any]) -> str:
    """One line of the summary for a part's result."""
    if "error" in result:
        return f"FAILED: {result['error']}"
    if name.startswith("train"):
        ops = result.get("ops_per_step") or {}
        return (f"nexsearch {result['nexsearch_images_per_s']:.0f} images/s ({result.get('step')}"
                + (f", fell back: {result['step_fallback']}" if result.get("step_fallback") else "")
                + f"), plain loop {result['baseline_images_per_s']:.0f}, ratio {result['ratio']:.2f}x"
                + (f"; ops/step {ops['total']} (optimizer {ops['optimizer']})" if ops else ""))
    if name.startswith("infer"):
        rows = ", ".join(f"{r['model']} {r['images_per_s']:.0f}" for r in result["results"])
        ratios = ", ".join(f"{r['model']}/{r['baseline']} {r['ratio']:.2f}" for r in result["ratios"])
        return f"{rows} images/s" + (f"; {ratios}" if ratios else "")
    if name == "steps":
        e, g = result["runs"]["eager"], result["runs"]["graph"]
        return (f"eager {e['images_per_s']:.0f} images/s (1st epoch {e['first_epoch_s']:.1f} s), {g['step']} "
                f"{g['images_per_s']:.0f} images/s (1st epoch {g['first_epoch_s']:.1f} s)"
                + (f" [fell back: {g['step_fallback']}]" if g["step_fallback"] else "")
                + f"; loss curves differ by at most {100 * result['max_relative_loss_difference']:.2f}%")
    if name == "trials":
        rows = ", ".join(f"N={r['workers']}{' packed' if r.get('packed') else ''}{' MPS' if r.get('mps') else ''}: "
                         f"{r['aggregate_images_per_s']:.0f} images/s ({r['speedup']:.2f}x), "
                         f"{r['trials_per_day']:.0f} trials/day, 1st epoch +{r['first_epoch_s'] - r['steady_epoch_s']:.1f} s"
                         for r in result["levels"])
        rows += f"; MPS {result.get('mps_status')}"
        failed = [f"N={e['workers']} failed: {e['error']}" for e in result["errors"]]
        return "; ".join(([rows] if rows else []) + failed)
    return ""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data)


def _environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        import torch

        from nexsearch.device import device_name, resolve_device

        env.update(torch=torch.__version__, device=device_name(resolve_device(device)),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None)
    except Exception as exc:
        env["error"] = f"{type(exc).__name__}: {exc}"
    return env


def run_suite(out: str | Path, device: str = "auto", quick: bool = False, parts: list[str] | None = None,
              time_limit_s: float = 450.0) -> dict[str, Any]:
    """Run every part (or ``parts``), writing each JSON as it finishes; return the summary."""
    from nexsearch.device import resolve_device

    resolve_device(device)  # --device cuda without CUDA: one line, before anything runs
    start = time.perf_counter()
    reserve = 20.0  # for the summary and the process's exit

    def time_left() -> float:
        return time_limit_s - reserve - (time.perf_counter() - start)

    plan = _parts(device, quick, time_left)
    names = [name for name, _, _ in plan]
    if parts:
        unknown = sorted(set(parts) - set(names))
        if unknown:
            raise UserError(f"unknown suite part(s) {', '.join(unknown)}: choose from {', '.join(names)}")
        plan = [p for p in plan if p[0] in parts]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = _environment(device)
    print(f"bench suite on {env.get('device', device)} -> {out} ({len(plan)} parts, "
          f"{'quick' if quick else f'limit {time_limit_s:.0f} s'})", flush=True)
    rows = []
    for i, (name, command, thunk) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {name}: {command}", flush=True)
        t = time.perf_counter()
        if time_left() <= 0:
            result: dict[str, Any] = {"error": "skipped: the suite's time limit was reached"}
        else:
            try:
                result = thunk()
            except Exception as exc:  # record, go on with the next part
                result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          "traceback": traceback.format_exc(limit=8)}
            finally:
                _free_device_memory()
        result.update(part=name, command=command, elapsed_s=round(time.perf_counter() - t, 2))
        _write_json(out / f"{name}.json", result)
        line = _headline(name, result)
        print(f"    {line} ({result['elapsed_s']:.0f} s)", flush=True)
        rows.append({"part": name, "ok": "error" not in result, "elapsed_s": result["elapsed_s"], "summary": line,
                     "command": command})
    summary = {"environment": env, "quick": quick, "total_s": round(time.perf_counter() - start, 1), "parts": rows}
    _write_json(out / "summary.json", summary)
    lines = [f"# nexsearch bench suite: {env.get('device', device)}", "",
             f"{env['date']}, torch {env.get('torch')}, Python {env['python']}, {env['cpus']} CPUs, "
             f"total {summary['total_s']:.0f} s{' (quick sizes)' if quick else ''}", "",
             "| part | s | result | command |", "| --- | ---: | --- | --- |"]
    lines += [f"| {r['part']} | {r['elapsed_s']:.0f} | {r['summary']} | `{r['command']}` |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return summary


def _free_device_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def main(args: argparse.Namespace) -> int:
    """``nexsearch bench suite``: every part, one JSON each, summary.json and summary.md in --out."""
    parts = [p.strip() for p in args.parts.split(",") if p.strip()] if args.parts else None
    summary = run_suite(args.out, device=args.device, quick=args.quick, parts=parts, time_limit_s=args.time_limit)
    return 0 if all(r["ok"] for r in summary["parts"]) else 1
