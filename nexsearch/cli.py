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


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_space]


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
