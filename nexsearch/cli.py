"""The ``nexsearch`` command. Thin: each verb parses its arguments and calls one library function.

User mistakes (``UserError``) print one line, ``nexsearch: <what is wrong>``, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from nexsearch.bench import add_bench
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


def _int_or_auto(text: str) -> int | str:
    """A whole number, or the word auto (argparse names the flag when neither)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or auto, got {text!r}") from None


def _add_space(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="print the design space: every dimension, its values and the exact size")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: size, hyperparameters, ...)")
    p.set_defaults(func=_space)


def _run(args: argparse.Namespace) -> int:
    from nexsearch.runners.budget import parse_budget
    from nexsearch.runners.experiment import load_experiment
    from nexsearch.runners.search import run_search

    budget = parse_budget(args.budget)
    started_at = _process_start()
    overrides = {
        "dataset": args.dataset, "data_dir": args.data_dir, "device": args.device, "seed": args.seed,
        "output_dir": args.out, "optimizer": args.optimizer, "min_epochs": args.min_epochs,
        "max_epochs": args.max_epochs, "objectives": args.objectives, "workers": args.workers,
        "scheduler": args.scheduler, "download": args.download, "workers_per_gpu": args.workers_per_gpu,
        "test_dir": args.test_dir, "scheduler_security": args.scheduler_security, "tensorboard": args.tensorboard,
    }
    run_search(load_experiment(args.config, overrides), budget, started_at=started_at)
    return 0


def _process_start() -> float:
    """When this ``nexsearch`` process started (epoch seconds): the run's budget counts its start-up too. Called
    from elsewhere (a notebook or a test calling ``main``), the process is no fresh ``nexsearch run``: now."""
    import os
    import time

    now = time.time()
    if os.path.basename(sys.argv[0]) not in ("nexsearch", "cli.py"):
        return now
    try:
        import psutil

        return min(psutil.Process().create_time(), now)
    except Exception:  # no psutil, or no /proc: count from now
        return now


def _add_run(sub: argparse._SubParsersAction) -> None:
    from nexsearch.objectives.settings import DATASETS
    from nexsearch.objectives.table import objective_names
    from nexsearch.runners.optimizers import OPTIMIZERS

    p = sub.add_parser("run", help="run (or resume) a SMAC search under a wall-clock budget")
    p.add_argument("--budget", required=True, help="wall-clock budget: 45s, 90m (90min), 1.5h, 1h30m, 12h, 3d, 1d12h")
    p.add_argument("--config", help="experiment YAML file (default experiments/nexception_cifar100.yaml)")
    p.add_argument("--out", help="run directory (default runs/<experiment name>); the same one resumes")
    p.add_argument("--dataset", choices=DATASETS,
                   help="cifar100 (downloads with --download), digits (scikit-learn's 8x8 digits, no download), "
                        "synthetic (random images, for tests), folder (an ImageFolder tree in --data-dir)")
    p.add_argument("--data-dir", help="folder holding cifar-100-python, or an ImageFolder tree")
    p.add_argument("--test-dir", help="folder dataset: an ImageFolder tree of test images (default: a seeded "
                                      "10%% of --data-dir, test_fraction)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="download CIFAR-100 into --data-dir if missing (--no-download: never)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, help="SMAC's seed and the data split's (default 0); a run with another seed "
                                            "is another run")
    p.add_argument("--optimizer", help=f"{', '.join(OPTIMIZERS)}")
    p.add_argument("--min-epochs", type=int, help="smallest budget (hyperband)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial (bo, random, parego); largest budget (hyperband)")
    p.add_argument("--objectives", help=f"comma-separated, error first, from {', '.join(objective_names())} "
                                        "(e.g. error,full_latency)")
    p.add_argument("--workers", help="parallel trials through Dask: a number, or auto (#GPUs x --workers-per-gpu, "
                                     "else one per CPU slot)")
    p.add_argument("--workers-per-gpu", type=_int_or_auto, help="trials sharing each GPU under --workers auto "
                   "(default 4; pick it with nexsearch bench trials), or auto: as many as fit by memory")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler to join (e.g. tls://host:8786)")
    p.add_argument("--scheduler-security", metavar="FILE", help="YAML with tls_ca_file, tls_client_cert, "
                   "tls_client_key for --scheduler (default: Dask's distributed.comm.tls configuration)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="write each trial's curve and configuration under RUN_DIR/tensorboard/ (needs tensorboard)")
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
    if args.trial is not None and (args.trial < 0 or args.run_dir is None):
        raise UserError(f"--trial {args.trial}: give a run directory and a trial number of it (0 or more)")
    if args.incumbent and (args.trial is not None or args.run_dir is None):
        raise UserError("--incumbent needs a run directory and no --trial")
    result = export_model(args.run_dir, out=args.out, size=args.size, preset=args.preset, trial=args.trial,
                          onnx=args.format == "onnx", incumbent=args.incumbent, force=args.force)
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
    p.add_argument("--force", action="store_true", help="replace existing NAME.safetensors / .json / .md files")
    p.set_defaults(func=_export)


def _evaluate(args: argparse.Namespace) -> int:
    from nexsearch.evaluate import evaluate_run

    presets = [] if args.presets.strip() == "none" else [p.strip() for p in args.presets.split(",") if p.strip()]
    evaluate_run(args.run_dir, top=args.top, seeds=args.seeds, epochs=args.epochs, presets=presets,
                 workers=args.workers, scheduler=args.scheduler, device=args.device,
                 scheduler_security=args.scheduler_security)
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
    p.add_argument("--scheduler", help="address of an existing Dask scheduler to join (e.g. tls://host:8786)")
    p.add_argument("--scheduler-security", metavar="FILE", help="YAML with tls_ca_file, tls_client_cert, "
                   "tls_client_key for --scheduler (default: the run's, else Dask's distributed.comm.tls configuration)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (default: the run's)")
    p.set_defaults(func=_evaluate)


def _analyze(args: argparse.Namespace) -> int:
    from nexsearch.analysis.report import analyze, compare, print_comparison, print_summary

    if args.tensorboard:
        from nexsearch.tensorboard import write_run

        for run_dir in args.run_dir:
            written = write_run(run_dir)
            print(f"wrote tensorboard: {written['tensorboard']} ({written['trials']} trials)")
    if len(args.run_dir) == 1:
        print_summary(analyze(args.run_dir[0], args.out, top=args.top))
    elif not args.out:
        raise UserError(f"comparing {len(args.run_dir)} runs needs --out DIR for the comparison's files")
    else:
        print_comparison(compare(args.run_dir, args.out, top=args.top))
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="trials table, DeepCAVE importances (LPI, fANOVA), plots and report.html "
                                       "of a run, or several runs compared")
    p.add_argument("run_dir", nargs="+", help="the run directory; several (with --out) to compare them")
    p.add_argument("--out", help="output folder (default RUN_DIR/analysis; required to compare runs)")
    p.add_argument("--top", type=int, default=5, help="hyperparameters and learning curves to show (default 5)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write every trial under RUN_DIR/tensorboard/ for TensorBoard (needs tensorboard)")
    p.set_defaults(func=_analyze)


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_space, _add_run, _add_status, _add_analyze,
                                                           _add_evaluate, _add_export, add_bench]


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


def _negative_values(argv: Sequence[str]) -> list[str]:
    """``--budget -5m`` would be taken for an option by argparse: hand the value over as ``--budget=-5m``,
    so that the budget parser can say what is wrong with it."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--budget" and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"--budget={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from nexsearch.errors import RunStopped

    parser = build_parser()
    args = parser.parse_args(_negative_values(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"nexsearch: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        print(f"nexsearch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        from nexsearch.errors import Terminated

        if isinstance(exc, Terminated):
            print("nexsearch: terminated (SIGTERM): stopped cleanly; the same command resumes", file=sys.stderr)
            return 143
        print("nexsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
