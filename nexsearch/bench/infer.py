"""``nexsearch bench infer``: inference throughput as the paper's table 3 measured it.

Random input at each model's resolution, eval mode, warm-up batches, then ``reps`` timed
batches; images/s as mean +- std over the repetitions. On CUDA: batch 256, fp16 autocast,
channels_last, ``cudnn.benchmark``. On CPU: fp32, channels_last, a batch that fits.
Exported files, the paper's presets and timm baselines run side by side in one process.
``precision``, ``memory_format``, ``compile`` and the BlurPool switch change the protocol for
an A/B comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from nexsearch.device import (
    autocast, check_precision, device_name, maybe_compile, memory_format, resolve_device, time_iterations,
)
from nexsearch.errors import UserError

DEFAULT_MODELS = ("nexception_t", "nexception_tp", "nexception_s", "xception_nexsearch", "nexception_i_t",
                  "nexception_i_tp", "convnext_tiny", "legacy_xception", "resnet50")
# Paper table 3 throughput ratios (RTX 2080 Ti): ours / baseline.
PAPER_RATIOS = {("nexception_tp", "convnext_tiny"): 1428 / 1125, ("nexception_t", "legacy_xception"): 965 / 756}


def _load(name: str) -> tuple[str, torch.nn.Module, int, str | None]:
    """(label, model, input size, layout of an exported file -- None for a timm name)."""
    import timm

    import nexsearch  # noqa: F401  (registers the presets with timm)

    if name.endswith((".safetensors", ".json")):
        from nexsearch.export import load_model, read_sidecar

        _, meta = read_sidecar(name)
        check_sidecar(name, meta)
        return Path(name).stem, load_model(name), int(meta["input_size"]), meta.get("size")
    try:
        model = timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise UserError(f"unknown model '{name}': give a timm model name or an exported .safetensors file ({exc})") from None
    return name, model, int(model.pretrained_cfg["input_size"][-1]), None


def check_sidecar(name: str, meta: dict[str, Any]) -> None:
    """The sidecar's numbers and names, before a model is built from them: one line naming the bad field."""
    from nexsearch.export import SIZES

    checks = {"size": (lambda v: v in (*SIZES, "xception"), f"one of {', '.join(SIZES)}, xception"),
              "num_classes": (lambda v: type(v) is int and 1 <= v <= 100_000, "a whole number from 1 to 100000"),
              "input_size": (lambda v: type(v) is int and 8 <= v <= 4096, "a whole number from 8 to 4096")}
    for key, (ok, what) in checks.items():
        if not ok(meta.get(key)):
            raise UserError(f"sidecar of {name}: '{key}' must be {what}, got {meta.get(key)!r}")


@torch.no_grad()
def bench_model(model: torch.nn.Module, input_size: int, device: torch.device, batch: int, reps: int,
                warmup: int, precision: str = "fp16", memory: str = "channels_last",
                compile: str | bool = False) -> dict[str, float]:
    fmt = memory_format(memory)
    model = model.to(device).eval().to(memory_format=fmt)
    net = maybe_compile(model, compile)
    x = torch.randn(batch, 3, input_size, input_size, device=device).contiguous(memory_format=fmt)

    def forward():
        with autocast(device, precision):
            net(x)

    rates = [batch / t for t in time_iterations(forward, device, reps, warmup)]
    return {"mean": statistics.fmean(rates), "std": statistics.stdev(rates) if len(rates) > 1 else 0.0}


def bench_infer(models: list[str] | None = None, device: str = "auto", batch: int | None = None, reps: int = 30,
                warmup: int = 5, input_size: int | None = None, precision: str = "fp16",
                memory: str = "channels_last", compile: str | bool = False,
                blurpool_keep_format: bool = True) -> dict[str, Any]:
    from nexsearch.search_space.builder import count_params, use_blurpool

    check_precision(precision)
    memory_format(memory)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    batch = batch or (256 if dev.type == "cuda" else 8)
    if not (1 <= reps <= 100_000 and 1 <= batch <= 65_536 and 0 <= warmup <= 100_000):
        raise UserError("--reps must be from 1 to 100000, --batch-size from 1 to 65536, --warmup from 0 to 100000")
    if input_size is not None and not 8 <= input_size <= 4096:
        raise UserError(f"--input-size must be from 8 to 4096 pixels, got {input_size}")
    rows, exported = [], {}
    for name in models or DEFAULT_MODELS:
        label, model, size, layout = _load(name)
        if layout is not None:
            exported[label] = layout
        size = input_size or size
        use_blurpool(model, blurpool_keep_format)
        r = bench_model(model, size, dev, batch, reps, warmup, precision, memory, compile)
        rows.append({"model": label, "input_size": size, "params": count_params(model),
                     "images_per_s": round(r["mean"], 2), "std": round(r["std"], 2)})
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    by_name = {r["model"]: r["images_per_s"] for r in rows}
    ratios = []
    pairs = [(ours, base, round(paper, 2)) for (ours, base), paper in PAPER_RATIOS.items()]
    # an exported model against the baseline of its layout, beside the paper's ratio for that layout
    pairs += [(stem, base, round(paper, 2)) for stem, size in exported.items()
              for (ours, base), paper in PAPER_RATIOS.items() if ours == f"nexception_{size}"]
    for ours, base, paper in pairs:
        if ours in by_name and base in by_name:
            ratios.append({"model": ours, "baseline": base, "ratio": round(by_name[ours] / by_name[base], 3),
                           "paper": paper})
    return {"device": device_name(dev), "batch": batch, "reps": reps,
            "precision": f"{precision} autocast" if dev.type == "cuda" and precision != "fp32" else "fp32",
            "memory_format": memory, "compile": compile or False, "blurpool_keep_format": blurpool_keep_format,
            "results": rows, "ratios": ratios}


def main(args: argparse.Namespace) -> int:
    """``nexsearch bench infer``: run, then print a table or one JSON object."""
    from nexsearch.bench import variant_kwargs

    models = [m.strip() for m in args.models.split(",")] if args.models else None
    result = bench_infer(models, device=args.device, batch=args.batch_size, reps=args.reps, warmup=args.warmup,
                         input_size=args.input_size, **variant_kwargs(args))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"device {result['device']}, batch {result['batch']}, {result['reps']} repetitions, {result['precision']}, "
          f"{result['memory_format']}, compile {result['compile']}, "
          f"BlurPool {'keep-format' if result['blurpool_keep_format'] else 'timm'}")
    for r in result["results"]:
        print(f"  {r['model']:<24} {r['input_size']:>4}px {r['params'] / 1e6:7.2f}M "
              f"{r['images_per_s']:10.1f} +- {r['std']:.1f} images/s")
    for r in result["ratios"]:
        print(f"  {r['model']} / {r['baseline']}: {r['ratio']:.2f} (paper, RTX 2080 Ti: {r['paper']:.2f})")
    return 0
