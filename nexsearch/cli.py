"""The ``nexsearch`` command. Thin: each verb parses its arguments and calls one library function.

User mistakes (``UserError``) print one line, ``nexsearch: <what is wrong>``, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from nexsearch.errors import UserError


def _space(args: argparse.Namespace) -> int:
    from nexsearch.search_space.space import describe

    info = describe()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"NEXcepTion design space: {info['size']:,} distinct valid configurations")
    for col in ("hyperparameter", "values", "default", "active when"):
        table.add_column(col, overflow="fold")
    for d in info["dimensions"]:
        table.add_row(d["name"], ", ".join(map(str, d["values"])), str(d["default"]), d["condition"] or "always")
    console = Console()
    console.print(table)
    for d in info["dimensions"]:
        console.print(f"[bold]{d['name']}[/bold]: {d['description']}", highlight=False)
    console.print(
        f"exact count {info['size']:,} (ConfigSpace's estimate_size, which ignores conditions: {info['upper_bound']:,})"
    )
    return 0


def _add_space(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="print the design space: every dimension, its values and the exact size")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: size, hyperparameters, ...)")
    p.set_defaults(func=_space)


def _bench(args: argparse.Namespace) -> int:
    if args.what == "train":
        from nexsearch.objectives.bench import bench_train
        from nexsearch.search_space.presets import preset

        if args.steps < 1 or args.batch_size < 2 or args.width <= 0:
            raise UserError("--steps must be >= 1, --batch-size >= 2 and --width > 0")
        result = bench_train(
            preset(args.preset), steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, width=args.width,
            device=args.device, workers=args.workers,
        )
        if args.json:
            print(json.dumps(result))
        else:
            print(f"device {result['device']}, proxy '{args.preset}' width {args.width}, batch {args.batch_size}, "
                  f"{args.steps} timed steps")
            print(f"  nexsearch trainer  {result['nexsearch_images_per_s']:10.1f} images/s")
            print(f"  plain loop         {result['baseline_images_per_s']:10.1f} images/s")
            print(f"  ratio              {result['ratio']:10.2f}x")
        return 0
    if args.what == "smac":
        from nexsearch.runners.bench import bench_smac

        if args.trials < 1 or args.trial_seconds <= 0:
            raise UserError("--trials must be >= 1 and --trial-seconds > 0")
        result = bench_smac(n_trials=args.trials, trial_s=args.trial_seconds, optimizer=args.optimizer,
                            retrain_after=args.retrain_after, selector=args.selector)
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['n_trials']} trials of a fake target with SMAC '{args.optimizer}' "
                  f"({args.selector} selector): {result['smac_s']:.1f} s of SMAC "
                  f"({result['smac_ms_per_trial']:.0f} ms per trial, "
                  f"{result['smac_ms_per_trial_last_100']:.0f} ms over the last 100)")
            print(f"overhead with {args.trial_seconds:g} s trials: {100 * result['overhead_frac']:.2f}% of wall time")
        return 0
    if args.what == "infer":
        from nexsearch.inference import bench_infer

        models = [m.strip() for m in args.models.split(",")] if args.models else None
        result = bench_infer(models, device=args.device, batch=args.batch, reps=args.reps, warmup=args.warmup,
                             input_size=args.input_size)
        if args.json:
            print(json.dumps(result))
            return 0
        print(f"device {result['device']}, batch {result['batch']}, {result['reps']} repetitions, {result['precision']}")
        for r in result["results"]:
            print(f"  {r['model']:<24} {r['input_size']:>4}px {r['params'] / 1e6:7.2f}M "
                  f"{r['images_per_s']:10.1f} +- {r['std']:.1f} images/s")
        for r in result["ratios"]:
            print(f"  {r['model']} / {r['baseline']}: {r['ratio']:.2f} (paper, RTX 2080 Ti: {r['paper']:.2f})")
        return 0
    raise UserError(f"unknown benchmark '{args.what}'")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: train (proxy training speed), smac (SMAC's overhead), "
                                     "infer (inference throughput)")
    p.add_argument("what", choices=["train", "smac", "infer"],
                   help="train: nexsearch's trainer step against a plain loop; smac: SMAC's overhead per trial; "
                        "infer: inference throughput of exported models, presets and timm baselines")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per method (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.125, help="proxy width multiplier (default 0.125)")
    p.add_argument("--preset", default="nexception", help="configuration to train (default nexception)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop (default 2)")
    p.add_argument("--trials", type=int, default=1000, help="smac: trials of the fake target (default 1000)")
    p.add_argument("--trial-seconds", type=float, default=10.0, help="smac: duration of a real trial (default 10)")
    p.add_argument("--optimizer", default="bo", choices=["bo", "random"], help="smac: facade (default bo)")
    p.add_argument("--retrain-after", type=int, default=8, help="smac: surrogate retraining frequency (default 8)")
    p.add_argument("--selector", default="batched", choices=["batched", "smac"],
                   help="smac: incumbent estimate of nexsearch's batched selector or SMAC's own (default batched)")
    p.add_argument("--models", help="infer: comma-separated timm names and/or exported .safetensors files "
                                    "(default: the presets and convnext_tiny, legacy_xception, resnet50)")
    p.add_argument("--batch", type=int, help="infer: batch size (default 256 on CUDA, 8 on CPU)")
    p.add_argument("--reps", type=int, default=30, help="infer: timed repetitions (default 30)")
    p.add_argument("--input-size", type=int, help="infer: override every model's resolution")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)


def _run(args: argparse.Namespace) -> int:
    from nexsearch.runners.budget import parse_budget
    from nexsearch.runners.experiment import load_experiment
    from nexsearch.runners.search import run_search

    budget = parse_budget(args.budget)
    overrides = {
        "dataset": args.dataset, "data_dir": args.data_dir, "device": args.device, "seed": args.seed,
        "output_dir": args.out, "optimizer": args.optimizer, "min_epochs": args.min_epochs,
        "max_epochs": args.max_epochs, "objectives": args.objectives, "workers": args.workers,
        "scheduler": args.scheduler, "download": args.download, "test_dir": args.test_dir,
    }
    run_search(load_experiment(args.config, overrides), budget)
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run (or resume) a SMAC search under a wall-clock budget")
    p.add_argument("--budget", required=True, help="wall-clock budget: 45s, 90m, 12h, 3d, 1d12h")
    p.add_argument("--config", help="experiment YAML file (default experiments/nexception_cifar100.yaml)")
    p.add_argument("--out", help="run directory (default runs/<experiment name>); the same one resumes")
    p.add_argument("--dataset", choices=["cifar100", "digits", "synthetic", "folder"])
    p.add_argument("--data-dir", help="folder holding cifar-100-python, or an ImageFolder tree")
    p.add_argument("--test-dir", help="folder dataset: an ImageFolder tree of test images (default: a seeded "
                                      "10%% of --data-dir, test_fraction)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="download CIFAR-100 into --data-dir if missing (--no-download: never)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--optimizer", help="bo, hyperband, random or parego")
    p.add_argument("--min-epochs", type=int, help="smallest budget (hyperband)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (bo, random, parego); largest budget (hyperband)")
    p.add_argument("--objectives", help="comma-separated: error[,latency|params|macs]")
    p.add_argument("--workers", type=int, help="parallel trials through Dask (one process per GPU or CPU slot)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler to join (e.g. tcp://host:8786)")
    p.set_defaults(func=_run)


def _status(args: argparse.Namespace) -> int:
    from nexsearch.runners.status import print_status, run_status

    if args.json:
        print(json.dumps(run_status(args.run_dir), default=str))
    else:
        print_status(args.run_dir)
    return 0


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="progress of a running or finished run, from its files")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--json", action="store_true", help="print the status as one JSON object instead of the table")
    p.set_defaults(func=_status)


def _export(args: argparse.Namespace) -> int:
    from nexsearch.export import export_model

    if args.run_dir is None and args.preset is None:
        raise UserError("export needs a run directory or --preset NAME")
    if args.incumbent and (args.trial is not None or args.run_dir is None):
        raise UserError("--incumbent needs a run directory and no --trial")
    result = export_model(args.run_dir, out=args.out, size=args.size, preset=args.preset, trial=args.trial,
                          onnx=args.format == "onnx", incumbent=args.incumbent)
    if result.get("chosen"):
        print(result["chosen"])
    print(result["card"])
    for kind, path in result["paths"].items():
        print(f"wrote {kind}: {path}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the evaluated winner or the incumbent (or a trial, or a preset) as a "
                                      "full ImageNet model")
    p.add_argument("run_dir", nargs="?", help="run directory (its evaluated winner, else its incumbent, is exported "
                                              "unless --trial or --incumbent)")
    p.add_argument("--preset", help="export a preset instead of a run: nexception or xception")
    p.add_argument("--size", default="t", help="t, s (isotropic) or tp (pyramid); default t")
    p.add_argument("--trial", type=int, help="export this trial of the run instead of the incumbent")
    p.add_argument("--incumbent", action="store_true",
                   help="export the search's incumbent even when `nexsearch evaluate` chose a winner")
    p.add_argument("--out", required=True, help="weights file NAME.safetensors (NAME.json and NAME.md beside it)")
    p.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                   help="onnx: also write NAME.onnx")
    p.set_defaults(func=_export)


def _evaluate(args: argparse.Namespace) -> int:
    from nexsearch.evaluate import evaluate_run

    presets = [] if args.presets.strip() == "none" else [p.strip() for p in args.presets.split(",") if p.strip()]
    evaluate_run(args.run_dir, top=args.top, seeds=args.seeds, epochs=args.epochs, presets=presets,
                 workers=args.workers, scheduler=args.scheduler, device=args.device)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="re-train the best configurations and the presets with new seeds; "
                                        "validation and test error, the winner by mean validation error")
    p.add_argument("run_dir", help="the run directory (a search may still be running in it)")
    p.add_argument("--top", type=int, default=5, help="best distinct configurations at the highest budget (default 5; "
                                                      "multi-objective: from the Pareto front)")
    p.add_argument("--seeds", type=int, default=3, help="trainings per candidate, seeds the search did not use (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per training (default: the run's largest epoch budget); "
                                              "another value is a separate evaluation")
    p.add_argument("--presets", default="xception,nexception", help="references, comma-separated, or 'none' "
                                                                    "(default xception,nexception)")
    p.add_argument("--workers", type=int, help="parallel trainings through Dask (default: the run's workers)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler to join (e.g. tcp://host:8786)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the run's)")
    p.set_defaults(func=_evaluate)


def _analyze(args: argparse.Namespace) -> int:
    from nexsearch.analysis.report import analyze, print_summary

    print_summary(analyze(args.run_dir, args.out, top=args.top))
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="trials table, DeepCAVE importances (LPI, fANOVA) and plots of a run")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--out", help="output folder (default RUN_DIR/analysis)")
    p.add_argument("--top", type=int, default=5, help="hyperparameters and learning curves to show (default 5)")
    p.set_defaults(func=_analyze)


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_space, _add_run, _add_status, _add_analyze,
                                                           _add_evaluate, _add_export, _add_bench]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit status 2) like every other mistake."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"nexsearch: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from nexsearch import __version__

    parser = _Parser(
        prog="nexsearch", description="Neural architecture search over the NEXcepTion design space with SMAC."
    )
    parser.add_argument("--version", action="version", version=f"nexsearch {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for add in VERBS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"nexsearch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nexsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
