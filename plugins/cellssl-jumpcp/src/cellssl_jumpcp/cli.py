"""``cellssl jump array CONFIG`` and ``cellssl jump merge CONFIG``: JUMP plates as a (SLURM) job array.

``jump array`` validates the config, skips the plates already done, submits one task per chunk of the
others (:mod:`cellssl_jumpcp.array`) and, with ``--wait`` (always with ``--local``), waits for them and runs
the merge step (:mod:`cellssl_jumpcp.merge`). ``jump merge`` runs the merge step alone, once every plate is done.
"""

from __future__ import annotations

import argparse
from typing import Any


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (a jump_cells or jump_sites data block and a jump_map evaluator)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (data.root=/data/source_4)")
    parser.add_argument("--plates", nargs="+", default=None, help="plates to run (default: every plate of data.root)")


def _add_array_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--chunk", type=int, default=1, help="plates per task (default 1)")
    parser.add_argument("--local", action="store_true",
                        help="run the tasks on this machine with submitit's local executor (implies --wait)")
    parser.add_argument("--wait", action="store_true", help="wait for the tasks, then merge")
    parser.add_argument("--parallel", type=int, default=None, help="at most N tasks at once (SLURM)")
    parser.add_argument("--stats-plates", nargs="+", default=None,
                        help="with normalize.mode: dataset and no normalize.stats_path: compute the channel "
                             "statistics every plate shares on these plates first")
    parser.add_argument("--restart", action="store_true",
                        help="let plates embedded with another config start over")


def _load(args: argparse.Namespace) -> Any:
    from cellssl.api import load_run_config

    return load_run_config(args.config, args.overrides)


def _run_array(args: argparse.Namespace) -> int:
    from cellssl.api import ConfigError
    from cellssl_jumpcp.array import prepare_array, submit_array, wait_array
    from cellssl_jumpcp.merge import merge_array

    if args.chunk < 1:
        raise ConfigError("--chunk", f"must be >= 1, got {args.chunk}")
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError("--parallel", f"must be >= 1, got {args.parallel}")
    array = prepare_array(_load(args), args.plates, args.chunk, local=args.local, stats_plates=args.stats_plates)
    jobs = submit_array(array, restart=args.restart, parallel=args.parallel)
    print(f"{len(array.plates)} plate(s): {len(array.done)} done before, {sum(map(len, array.todo))} submitted in "
          f"{len(jobs)} task(s); run directory {array.run_dir}")
    if not (args.wait or args.local) and jobs:
        print(f"job ids: {' '.join(str(j.job_id) for j in jobs)}; when they finish: cellssl jump merge "
              f"{args.config} {' '.join(args.overrides)}".rstrip())
        return 0
    wait_array(jobs)
    result = merge_array(array.config, array.plates)
    _print_result(result, array.run_dir)
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cellssl_jumpcp.merge import merge_array

    config = _load(args)
    result = merge_array(config, args.plates)
    _print_result(result, Path(str(config.run.output_dir)))
    return 0


def _print_result(result: dict[str, Any], run_dir: Any) -> None:
    metrics = result["metrics"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"jump_map over {result['counts']['plates']} plate(s), {result['counts']['wells']} wells: {shown}")
    print(f"wrote {run_dir}/eval/jump_map.json")


def jump_commands() -> list[Any]:
    """The :class:`~cellssl.api.CliCommand` objects ``jump array`` and ``jump merge``."""
    from cellssl.api import CliCommand

    return [
        CliCommand(name="array", group="jump", add_arguments=_add_array_arguments, run=_run_array,
                   help="embed JUMP plates as a SLURM job array (one task per plate chunk, resumable per plate)"),
        CliCommand(name="merge", group="jump", add_arguments=_add_common, run=_run_merge,
                   help="well profiles of every plate of a plate array, then jump_map once"),
    ]
