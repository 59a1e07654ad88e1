"""The ``cellssl models`` and ``cellssl weights`` command groups.

- ``cellssl models list``: every registered model card, one line each.
- ``cellssl models show NAME [--json]``: a card in full, with the run-config sections it fills and where its
  weights are expected.
- ``cellssl models fetch NAME``: download a card's weights into the cache through the resumable, checksummed
  download engine (:mod:`cellssl.data.download`), when the card has a public URL.
- ``cellssl weights inspect FILE [--key-prefix P] [--json]``: layout, inferred architecture, block to paste.
- ``cellssl weights export RUN_DIR_OR_FILE --to DIR [--license L]``: safetensors + card.json + README.
- ``cellssl benchmark MODEL_OR_RUN [...] --suite SUITE.yaml [--out DIR]``: every model on every benchmark of a
  suite, one leaderboard (:mod:`cellssl.zoo.benchmark`).

Building the parsers imports nothing heavy; torch is imported by the commands that read checkpoints.
"""

from __future__ import annotations

import argparse
import json

import yaml

from cellssl.errors import ConfigError


def add_zoo_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``models``, ``weights`` and ``benchmark`` to the ``cellssl`` subcommands."""
    models = sub.add_parser("models", help="released models by name: list, show, fetch their weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="every model card")
    show = models_sub.add_parser("show", help="one model card in full")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the card as JSON")
    fetch = models_sub.add_parser("fetch", help="download a model's weights into the cache (CELLSSL_HOME)")
    fetch.add_argument("name")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")

    weights = sub.add_parser("weights", help="backbone checkpoints: inspect a file, export to safetensors")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    inspect = weights_sub.add_parser("inspect", help="layout and architecture of a checkpoint, block to paste")
    inspect.add_argument("file")
    inspect.add_argument("--key-prefix", help="inspect the tensors under this prefix (e.g. student.backbone.)")
    inspect.add_argument("--json", action="store_true", help="print the findings as JSON")
    export = weights_sub.add_parser("export", help="write safetensors + card.json + README.md")
    export.add_argument("source", metavar="RUN_DIR_OR_FILE")
    export.add_argument("--to", required=True, help="output folder")
    export.add_argument("--key-prefix", help="export the tensors under this prefix")
    export.add_argument("--license", help="licence written into the card and README")
    export.add_argument("--name", help="the model's name in the card")

    bench = sub.add_parser("benchmark", help="evaluate models on every benchmark of a suite; one leaderboard")
    bench.add_argument("models", nargs="+", metavar="MODEL_OR_RUN",
                       help="a model card name, a run directory, a weights file, or random:<one of them>; "
                            "LABEL=MODEL names its column")
    bench.add_argument("--suite", required=True, help="suite YAML listing the benchmark configs "
                                                      "(e.g. configs/benchmarks/cpu_suite.yaml)")
    bench.add_argument("--out", help="output folder (default: runs/benchmark_<suite name>)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override applied to every benchmark config, e.g. embed.precision=fp32 (repeatable)")
    bench.add_argument("--restart", action="store_true",
                       help="start over in run directories holding the outputs of another config")


def run_zoo_command(args: argparse.Namespace) -> int | None:
    """Run ``models`` / ``weights`` commands; ``None`` for any other command."""
    if args.command == "models":
        return {"list": _list, "show": _show, "fetch": _fetch}[args.models_command](args)
    if args.command == "weights":
        return {"inspect": _inspect, "export": _export}[args.weights_command](args)
    if args.command == "benchmark":
        return _benchmark(args)
    return None


def _list(args: argparse.Namespace) -> int:
    from cellssl.plugins import get_registry
    from cellssl.zoo.card import CardParams, weights_path

    registry = get_registry("model")
    for entry in registry:
        card = entry.factory(CardParams())
        state = "cached" if weights_path(card).is_file() else ("fetch" if card.download_url else "manual")
        print(f"{card.name:<30} {state:<7} {card.license.split(' (')[0]:<14} {card.summary}  ({entry.distribution})")
    print("\ncached: weights in the cache; fetch: `cellssl models fetch NAME` downloads them; manual: see "
          "`cellssl models show NAME`")
    return 0


def _show(args: argparse.Namespace) -> int:
    from cellssl.zoo.card import get_card, weights_path

    card = get_card(args.name)
    path = weights_path(card)
    if args.json:
        print(json.dumps({**card.as_dict(), "weights_path": str(path), "cached": path.is_file()}, indent=2))
        return 0
    lines = [f"{card.name}: {card.summary}", f"licence: {card.license}", f"source: {card.source}",
             f"download: {card.download_url or 'no public URL (see source)'}",
             f"file: {path} ({'present' if path.is_file() else 'missing'})",
             f"sha256: {card.sha256 or 'not published'}",
             f"channels: {', '.join(card.channel_names) if card.channel_names else 'any (channel-adaptive)'}",
             f"citation: {card.citation}"]
    lines += [f"verified: {fact}" for fact in card.verified]
    lines += [f"unverified: {fact}" for fact in card.unverified]
    lines += [f"note: {note}" for note in card.notes]
    lines += ["", f"# `model: {card.name}` fills these sections (your keys win):",
              yaml.safe_dump(card.sections(), sort_keys=False).rstrip()]
    print("\n".join(lines))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from cellssl.data.download import DownloadFile, DownloadSpec, download
    from cellssl.zoo.card import get_card, weights_path

    card = get_card(args.name)
    path = weights_path(card)
    if not card.download_url:
        raise ConfigError("", f"model '{card.name}' has no public download URL. {card.how_to_get(path)}")
    spec = DownloadSpec(name=card.name, files=(DownloadFile(card.download_url, card.file_name, sha256=card.sha256),),
                        description=card.summary, homepage=card.source, license=card.license)
    print(f"{card.name}: licence {card.license}")
    path.parent.mkdir(parents=True, exist_ok=True)
    result = download(spec, path.parent, progress=not args.no_progress)
    for item in result.unverified:
        print(f"note: {item.name} has no published sha256; its digest is recorded in {item.name}.sha256")
    print(f"weights of {card.name}: {path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from cellssl.zoo.inspect import inspect_weights

    inspection = inspect_weights(args.file, key_prefix=args.key_prefix)
    print(json.dumps(inspection.as_dict(), indent=2) if args.json else inspection.text())
    return 0


def _export(args: argparse.Namespace) -> int:
    from cellssl.zoo.export import export_weights

    result = export_weights(args.source, args.to, key_prefix=args.key_prefix, license=args.license, name=args.name)
    for path in (result.weights, result.card, result.readme, result.stats):
        if path is not None:
            print(f"wrote {path}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from cellssl.zoo.benchmark import describe, run_benchmark

    outcome = run_benchmark(args.models, args.suite, args.out, restart=args.restart, overrides=args.overrides)
    print(describe(outcome))
    return 0
