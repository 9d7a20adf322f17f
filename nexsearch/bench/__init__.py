"""``nexsearch bench ...``: one sub-command per benchmark, shared flags spelled the same.

Each benchmark lives in its own module with a library function (``bench_train``, ...) and a
``main(args)`` that validates, runs and prints; this file only declares the command line, so
that ``nexsearch --help`` imports neither torch nor SMAC.

* ``train``  -- nexsearch's trainer step against a plain DataLoader loop (``train.py``)
* ``trials`` -- N concurrent proxy trials on one device through Dask: proxy evaluations per day (``trials.py``)
* ``infer``  -- inference throughput of presets, exports and timm baselines (``infer.py``)
* ``smac``   -- SMAC's own overhead per trial (``smac.py``)
* ``optimizers`` -- the search itself on NAS-Bench-201 tables against its peers (``optimizers.py``)
* ``suite``  -- all of the above that measure a device, one JSON per part and a summary (``suite.py``)
"""

from __future__ import annotations

import argparse
import importlib

COMPILE_CHOICES = ("false", "default", "reduce-overhead", "max-autotune")


def _device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=f"auto, cpu, cuda, cuda:N (default {default})")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _proxy(p: argparse.ArgumentParser, width: float, batch_size: int) -> None:
    p.add_argument("--preset", default="nexception", help="configuration to train (default nexception)")
    p.add_argument("--width", type=float, default=width, help=f"proxy width multiplier (default {width:g})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"batch size (default {batch_size})")


def _variants(p: argparse.ArgumentParser, precision: str) -> None:
    """The A/B switches of one GPU call: precision, memory format, torch.compile mode, BlurPool's pad."""
    p.add_argument("--precision", default=precision, choices=["bf16", "fp16", "fp32"],
                   help=f"autocast precision on CUDA (default {precision}; the CPU always runs fp32)")
    p.add_argument("--memory-format", default="channels_last", choices=["channels_last", "contiguous"],
                   help="model and input memory format (default channels_last)")
    p.add_argument("--compile", default="false", choices=COMPILE_CHOICES, metavar="MODE",
                   help="torch.compile mode: false (default), default, reduce-overhead, max-autotune")
    p.add_argument("--blurpool", default="keep-format", choices=["keep-format", "timm"],
                   help="BlurPool's reflect pad: the one that keeps channels_last (default, what nexsearch builds) "
                        "or timm's BlurPool2d")


def variant_kwargs(args: argparse.Namespace) -> dict:
    """The A/B switches of ``_variants`` as keyword arguments of ``bench_train`` / ``bench_infer``."""
    return {"precision": args.precision, "memory": args.memory_format, "compile": args.compile,
            "blurpool_keep_format": args.blurpool == "keep-format"}


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="nexsearch's trainer step against a plain DataLoader loop (images/s, ratio)")
    _proxy(p, width=0.125, batch_size=128)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per method (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop (default 2)")
    p.add_argument("--step", default="auto", choices=["auto", "eager", "graph", "compile"],
                   help="the trainer's step: auto (graph on CUDA, eager on CPU), eager, graph (CUDA graph), compile")
    p.add_argument("--foreach", default="auto", choices=["auto", "true", "false"],
                   help="LAMB's multi-tensor path (true), single-tensor path (false) or the trainer's choice (auto)")
    _variants(p, "bf16")
    _device(p)
    _json(p)


def _add_trials(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trials", help="N proxy trials at once on one device through Dask: aggregate images/s, "
                                      "speed-up and trials per GPU-day for each N")
    _proxy(p, width=1.0, batch_size=256)
    p.add_argument("--concurrency", default="1,2,4,8",
                   help="comma-separated worker counts, auto: as many as fit into the GPU's memory (default 1,2,4,8)")
    p.add_argument("--mps", default="off", choices=["off", "on", "both"],
                   help="CUDA MPS: off (default), on, or both (each level without, then with; remembered for run)")
    p.add_argument("--step", default="auto", choices=["auto", "eager", "graph", "compile"],
                   help="the trials' train.step (default auto: graph on CUDA, eager on CPU)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial; the first is warm-up (default 2)")
    p.add_argument("--images", type=int, default=45000, help="synthetic training images (default 45000)")
    p.add_argument("--image-size", type=int, default=32, help="image side (default 32)")
    p.add_argument("--classes", type=int, default=100, help="classes (default 100)")
    p.add_argument("--depth", type=int, default=4, help="proxy middle-flow blocks (default 4)")
    p.add_argument("--trial-epochs", type=int, default=27,
                   help="epochs of the trials whose daily count is projected (default 27, the paper's)")
    p.add_argument("--trial-images", type=int, help="training images of those trials (default --images)")
    _device(p)
    _json(p)


def _add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="inference throughput of exported models, presets and timm baselines")
    p.add_argument("--models", help="comma-separated timm names and/or exported .safetensors files "
                                    "(default: the presets and convnext_tiny, legacy_xception, resnet50)")
    p.add_argument("--batch-size", type=int, help="batch size (default 256 on CUDA, 8 on CPU)")
    p.add_argument("--reps", type=int, default=30, help="timed batches (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    p.add_argument("--input-size", type=int, help="override every model's resolution")
    _variants(p, "fp16")
    _device(p)
    _json(p)


def _add_smac(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smac", help="SMAC's own overhead per trial, with a fake target that returns at once")
    p.add_argument("--trials", type=int, default=1000, help="trials of the fake target (default 1000)")
    p.add_argument("--trial-seconds", type=float, default=10.0, help="duration of a real trial (default 10)")
    p.add_argument("--optimizer", default="bo", choices=["bo", "random"], help="SMAC facade (default bo)")
    p.add_argument("--retrain-after", type=int, default=8, help="surrogate retraining frequency (default 8)")
    p.add_argument("--selector", default="batched", choices=["batched", "smac"],
                   help="incumbent estimate of nexsearch's batched selector or SMAC's own (default batched)")
    _json(p)


def _add_optimizers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("optimizers", help="nexsearch's optimizers against random search, evolution, SMAC's defaults "
                                          "and Optuna's TPE on NAS-Bench-201 tables: regret after k calls")
    p.add_argument("--tables", default="cifar10,imagenet", help="cifar10, cifar100, imagenet (default cifar10,imagenet)")
    p.add_argument("--noise", default="noisy,exact", help="noisy (one training seed per call), exact (their mean)")
    p.add_argument("--optimizers", default="bo,smac-defaults,tpe,evolution,random",
                   help="bo, smac-defaults, tpe, evolution, random (default all)")
    p.add_argument("--seeds", type=int, default=10, help="repetitions per optimizer (default 10)")
    p.add_argument("--ks", default="25,50,100,200,400", help="calls at which regret is read (default 25,...,400)")
    p.add_argument("--multi", default="latency", choices=["latency", "params", "none"],
                   help="second objective of the multi-objective part (default latency; none: skip it)")
    p.add_argument("--multi-optimizers", default="parego,tpe,random", help="parego, tpe, random (default all)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="experiment setting of the bo / parego rows (e.g. initial_design=40); repeatable")
    p.add_argument("--plot", help="PNG of regret against k")
    _json(p)


def _add_suite(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suite", help="measure a device in one call: train, trials, infer; one JSON per part "
                                     "and a summary table")
    p.add_argument("--out", required=True, help="folder for the JSON files and summary.md")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke test of the whole suite)")
    p.add_argument("--parts", help="comma-separated subset of the parts (default: all)")
    p.add_argument("--time-limit", type=float, default=450.0,
                   help="seconds the whole suite may take; later parts get what is left (default 450)")
    _device(p, default="auto")


BENCHES = {"train": _add_train, "trials": _add_trials, "infer": _add_infer, "smac": _add_smac, "optimizers": _add_optimizers,
           "suite": _add_suite}


def _run(args: argparse.Namespace) -> int:
    return importlib.import_module(f"nexsearch.bench.{args.bench}").main(args)


def add_bench(sub: argparse._SubParsersAction) -> None:
    """The ``bench`` verb with one sub-parser per benchmark."""
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES) + " (nexsearch bench NAME --help)")
    bench_sub = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    bench_sub.required = True
    for add in BENCHES.values():
        add(bench_sub)
    p.set_defaults(func=_run)
