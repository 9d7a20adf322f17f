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
    raise UserError(f"unknown benchmark '{args.what}'")


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: train (proxy training throughput against a plain loop)")
    p.add_argument("what", choices=["train"], help="train: nexsearch's trainer step against a plain training loop")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per method (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.125, help="proxy width multiplier (default 0.125)")
    p.add_argument("--preset", default="nexception", help="configuration to train (default nexception)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the plain loop (default 2)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_space, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    from nexsearch import __version__

    parser = argparse.ArgumentParser(
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
