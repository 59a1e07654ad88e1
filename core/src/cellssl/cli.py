"""The ``cellssl`` command line.

Subcommands: ``plugins``, ``config show``, ``train``, ``embed``, ``eval``, ``run``, ``report``,
``compare``, ``models``, ``weights``, ``benchmark`` (:mod:`cellssl.zoo.cli`). Configs are YAML files followed by
``key=value`` overrides. A user mistake (bad config, bad data, unknown plugin name) prints one paragraph
and exits with status 2; an unexpected error keeps its traceback (status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from cellssl import __version__
from cellssl.errors import CellsslError, ConfigError

logger = logging.getLogger("cellssl")


def _print_plugins() -> int:
    from cellssl.plugins import get_plugin_state
    from cellssl.plugins.registry import kind_title

    state = get_plugin_state()
    for info in state.plugins:
        status = "ERROR" if info.error else "ok"
        print(f"{info.name}  [{info.distribution} {info.version}]  {status}")
        if info.error:
            print(textwrap.indent(textwrap.fill(info.error, 100), "    "))
        for kind, names in info.registered.items():
            print(f"    {kind}: {', '.join(names)}")
    print()
    for kind, registry in state.registries.items():
        print(f"{kind_title(kind)}:")
        for entry in registry:
            print(f"    {entry.name:<22} {entry.summary}  ({entry.distribution})")
    return 1 if state.errors else 0


def _config_show(args: argparse.Namespace) -> int:
    """Validate the whole plan and print every section with all defaults.

    Reads no data; a ``weights:`` file is opened (``weights_only=True``, so torch is imported then) to check
    that it is a readable checkpoint. ``--check`` also runs the checks that open the data (label columns,
    channels, weight shapes), as ``cellssl run`` does before its first stage.
    """
    from omegaconf import OmegaConf

    from cellssl.config.compose import load_run_config
    from cellssl.plan.build import build_plan

    overrides = list(args.overrides)
    with _naming_overrides(overrides):
        plan = build_plan(load_run_config(args.config, overrides))
        if args.check:
            from cellssl.plan.checks import check_plan

            check_plan(plan)
        elif plan.weights is not None:
            from cellssl.models.checkpoint import read_checkpoint_file

            read_checkpoint_file(plan.weights.path, remedy="Point `weights:` at a readable backbone checkpoint.")
    print(OmegaConf.to_yaml(plan.sections()), end="")
    return 0


@contextlib.contextmanager
def _naming_overrides(overrides: Sequence[str]) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` about a key set on the command line so that it names the override."""
    try:
        yield
    except ConfigError as exc:
        given = {o.partition("=")[0].strip().lstrip("+").replace("[", ".").replace("]", ""): o for o in overrides}
        key = exc.key.replace("[", ".").replace("]", "")
        match = next((o for k, o in given.items() if k and (key == k or key.startswith(k + ".")
                                                            or k.startswith(key + "."))), None)
        if match is None:
            raise
        raise ConfigError(exc.key, f"{str(exc).split(': ', 1)[-1]} (set by the command-line override '{match}')"
                          ) from None


def format_results(results: list[dict[str, Any]]) -> str:
    """Render evaluator results (their ``table`` rows, else their flat ``metrics``) as text tables."""
    blocks = []
    for result in results:
        title = result.get("evaluator", "eval")
        rows = result.get("table")
        if rows:
            columns = list(rows[0].keys())
            widths = [max(len(str(c)), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
            lines = [f"{title}:", "  ".join(str(c).ljust(w) for c, w in zip(columns, widths))]
            lines += ["  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) for r in rows]
            blocks.append("\n".join(lines))
        elif isinstance(result.get("metrics"), dict):
            lines = [f"{title}:"] + [f"  {k}: {_fmt(v)}" for k, v in result["metrics"].items()]
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _run_stages(args: argparse.Namespace, stages: list[str] | None) -> int:
    from cellssl.config.compose import load_run_config
    from cellssl.launch import launch

    with _naming_overrides(args.overrides):
        config = load_run_config(args.config, args.overrides)
        if getattr(args, "resume", False):
            if config.get("train") is None:
                config.train = {}
            config.train.resume = True
        result = launch(config, stages, restart=getattr(args, "restart", False))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for every process
        return 0
    if result.job is not None:
        print(f"submitted job {result.job.job_id}; logs in {result.job.paths.folder}")
    if result.outputs and "eval" in result.outputs:
        print(format_results(result.outputs["eval"]))
    print(f"run directory: {result.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cellssl``."""
    parser = argparse.ArgumentParser(prog="cellssl", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cellssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list installed plugins, what they register, and load errors")

    config = sub.add_parser("config", help="inspect configs")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the validated config with all defaults")
    show.add_argument("config")
    show.add_argument("overrides", nargs="*", help="key=value overrides")
    show.add_argument("--check", action="store_true",
                      help="also open the data and the weights: label columns, channels, weight shapes")

    for name, help_text in (
        ("train", "pretrain the backbone with the configured SSL objective"),
        ("embed", "write embeddings of the dataset to the run directory"),
        ("eval", "evaluate the run's embeddings with the configured evaluators"),
        ("run", "execute every stage the config names (train, embed, eval)"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("config")
        command.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
        command.add_argument("--restart", action="store_true",
                             help="delete the run directory's outputs when they came from another config "
                                  "and start over")
        if name in ("train", "run"):
            command.add_argument("--resume", action="store_true",
                                 help="continue from the run directory's last checkpoint")
    report = sub.add_parser("report", help="write report.md and report.html with a run's results and pictures")
    report.add_argument("run_dir")
    report.add_argument("--out", help="folder for report.md / report.html (default: the run directory)")
    compare = sub.add_parser("compare", help="runs side by side: one table per evaluator, metrics x runs")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", help="also write the comparison to this .md, .html or .json file")
    compare.add_argument("--metrics", action="append", metavar="PATTERN",
                         help="keep metrics matching this pattern, e.g. '*_f1_mean' (repeatable)")
    compare.add_argument("--evaluator", action="append", metavar="NAME",
                         help="keep this result, eval/NAME.json (repeatable)")
    from cellssl.zoo.cli import add_zoo_commands

    add_zoo_commands(sub)
    _add_plugin_commands(sub)
    return parser


def _report(args: argparse.Namespace) -> int:
    from cellssl.report import write_report

    markdown, page = write_report(args.run_dir, args.out)
    print(f"wrote {markdown}\nwrote {page}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from cellssl.report import compare_runs, comparison_text, write_comparison

    comparison = compare_runs(args.run_dirs, metrics=args.metrics or [], evaluators=args.evaluator or [])
    print(comparison_text(comparison))
    if args.out:
        print(f"wrote {write_comparison(comparison, args.out)}")
    return 0


def _add_plugin_commands(sub: argparse._SubParsersAction) -> None:
    """Subcommands contributed by plugins through ``cellssl_cli_commands`` (grouped ones nest)."""
    from cellssl.plugins import get_plugin_state

    groups: dict[str, argparse._SubParsersAction] = {}
    for command, distribution in get_plugin_state().commands.values():
        target = sub
        if command.group:
            if command.group not in groups:
                group_parser = sub.add_parser(command.group, help=f"{command.group} commands")
                groups[command.group] = group_parser.add_subparsers(dest=f"{command.group}_command", required=True)
            target = groups[command.group]
        parser = target.add_parser(command.name, help=f"{command.help} ({distribution})")
        command.add_arguments(parser)
        parser.set_defaults(plugin_command=command)


def _show_warning(default: Any) -> Any:
    """A ``warnings.showwarning`` that logs a plugin's load failure as one line (not file:line + source)."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if category.__name__ == "PluginLoadWarning":
            logger.warning("%s", message)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cellssl`` command; returns the exit status.

    Building the parser loads the plugins (their commands are subcommands) but imports no torch: only
    the commands that build models or read checkpoints do.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning(warnings.showwarning)
        args = build_parser().parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
        else:
            logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; a :class:`CellsslError` is printed as one paragraph (status 2)."""
    try:
        if args.command == "plugins":
            return _print_plugins()
        if args.command == "config":
            return _config_show(args)
        if args.command == "report":
            return _report(args)
        if args.command == "compare":
            return _compare(args)
        if args.command in ("models", "weights", "benchmark"):
            from cellssl.zoo.cli import run_zoo_command

            return int(run_zoo_command(args))
        if getattr(args, "plugin_command", None) is not None:
            return int(args.plugin_command.run(args))
        stages = None if args.command == "run" else [args.command]
        return _run_stages(args, stages)
    except CellsslError as exc:
        print(f"cellssl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellssl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
