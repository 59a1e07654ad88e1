"""The ``cellssl data download [NAME] --to DIR [key=value ...]`` command (registered by the built-in plugin).

Without ``NAME`` it lists the registered downloads; with it, the ``key=value`` options are validated
against the download's config dataclass, the plugin's :class:`~cellssl.data.download.DownloadSpec` is
built and :func:`~cellssl.data.download.download` fetches it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellssl.data.download import DownloadSpec, download
from cellssl.errors import ConfigError


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="registered download name (omit to list them)")
    parser.add_argument("options", nargs="*", help="key=value settings of the download (e.g. a mirror URL)")
    parser.add_argument("--to", dest="to", help="target folder (created if missing)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_options(options: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values stay text (the config dataclass converts them: a checksum made only of
    digits must not become a number), except ``null`` / empty, which mean ``None``."""
    parsed: dict[str, Any] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        if not sep or not key.strip():
            raise ConfigError(option, "download options look like key=value")
        value = raw.strip()
        parsed[key.strip()] = None if value.lower() in ("", "null", "none", "~") else value
    return parsed


def _run(args: argparse.Namespace) -> int:
    from cellssl.config.validate import validate_block
    from cellssl.plugins import get_registry

    registry = get_registry("download")
    if not args.name:
        print("downloadable datasets:")
        for entry in registry:
            print(f"    {entry.name:<16} {entry.summary}  ({entry.distribution})")
        if not len(registry):
            print("    (none: install a dataset plugin such as cellssl-chammi)")
        return 0
    if not args.to:
        raise ConfigError("--to", f"say where to put the data: cellssl data download {args.name} --to DIR")
    entry = registry.get(args.name)
    config = validate_block(_parse_options(args.options), entry.config_cls, f"download {args.name}")
    spec = entry.factory(config)
    if not isinstance(spec, DownloadSpec):
        raise TypeError(f"download '{args.name}' of {entry.distribution} returned {type(spec).__name__}, "
                        "not a DownloadSpec")
    if spec.description:
        print(spec.description)
    if spec.note:
        print(f"note: {spec.note}")
    result = download(spec, args.to, progress=not args.no_progress)
    print(f"{spec.name}: {len(result.downloaded)} downloaded, {len(result.skipped)} already complete, "
          f"{len(result.unpacked)} unpacked, in {Path(args.to).expanduser().resolve()}")
    for path in result.unverified:
        print(f"warning: {path.name} has no published checksum; its sha256 is in {path.name}.sha256")
    return 0


def download_cli_command() -> Any:
    """The ``cellssl data download [NAME] --to DIR [key=value ...]`` command."""
    from cellssl.plugins.registry import CliCommand

    return CliCommand(name="download", help="download a public dataset (resumable, checksummed)",
                      add_arguments=_add_arguments, run=_run, group="data")

