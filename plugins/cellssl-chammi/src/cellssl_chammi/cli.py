"""``cellssl chammi-table RUN_DIR...``: the CHAMMI tables of several runs side by side."""

from __future__ import annotations

import argparse
from typing import Any

FORMATS = ("text", "markdown", "csv")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", help="run directories evaluated with the chammi evaluator")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    parser.add_argument("--percent", action="store_true", help="show macro F1 in percent (text / markdown)")


def _run(args: argparse.Namespace) -> int:
    from cellssl_chammi.table import load_run_rows, to_csv, to_markdown, to_text

    rows = load_run_rows(args.run_dirs)
    if args.format == "csv":
        print(to_csv(rows), end="")
    elif args.format == "markdown":
        print(to_markdown(rows, percent=args.percent), end="")
    else:
        print(to_text(rows, percent=args.percent), end="")
    return 0


def chammi_table_command() -> Any:
    """The :class:`~cellssl.plugins.registry.CliCommand` ``chammi-table``."""
    from cellssl.api import CliCommand

    return CliCommand(name="chammi-table", help="print the CHAMMI tables (macro F1 per task) of runs side by side",
                      add_arguments=_add_arguments, run=_run)
