"""``cellssl benchmark MODEL_OR_RUN [...] --suite SUITE.yaml [--out DIR]``: models x benchmarks, one leaderboard.

A *model* is given as

- a model card name (``cell_dino_cp_vits8``): the card's backbone, channel strategy, normalisation and embedding
  recipe, its weights from the cache (:func:`cellssl.zoo.card.weights_path`);
- a run directory holding ``teacher_backbone.pt`` and ``config.yaml``: that run's backbone, channel strategy,
  normalisation mode and embedding recipe, and its trained teacher;
- a weights file (``.pt``, ``.pth``, ``.safetensors``): the backbone inferred by
  :func:`cellssl.zoo.inspect.inspect_weights` (or the ``config.yaml`` / ``card.json`` beside the file); a
  1-channel backbone embeds with ``bag_of_channels``;
- ``random:<any of the above>``: the same architecture and recipe, randomly initialised (seeded by the
  benchmark's ``run.seed``), the usual baseline.

``LABEL=MODEL`` names the model's column (default: the card name, the run directory's name, the file's stem).
``--set KEY=VALUE`` overrides apply to every benchmark, after the suite's own (e.g. ``embed.precision=fp32`` on a
CPU without bf16 instructions).

A *suite* YAML lists the benchmarks, each a run config of ``configs/eval/`` with ``key=value`` overrides::

    name: cpu_suite
    benchmarks:
      - name: jurkat                                  # folder and row label; default: the config's stem
        config: configs/eval/jurkat_bag_of_channels.yaml
        overrides: [embed.batch_size=64]
        evaluators: [knn]                             # keep these eval entries (default: all)
        metrics: ["*macro_f1*"]                       # leaderboard rows (shell patterns; default: all)
      - name: chammi
        config: configs/eval/chammi_knn.yaml
        overrides: [data.root=data/CHAMMI]
        optional: true                                # skipped, with the reason, when its plugin or data is absent

Relative ``config`` paths are taken from the current directory, else from the suite file's folder. For each
(benchmark, model) the benchmark config gets the model's sections (``backbone``, ``channels``, ``normalize``,
``embed.img_size`` / ``embed.features``, ``weights``) and ``run.output_dir = OUT/<benchmark>/<model>``, and runs
the ``embed`` and ``eval`` stages through :func:`cellssl.pipeline.execute`. Every plan (and every run
directory's check against earlier outputs) is validated before the first run starts. Then
:func:`cellssl.report.leaderboard.write_leaderboard` writes ``OUT/leaderboard.{md,html,json}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from cellssl.errors import CellsslError, CheckpointError, ConfigError, DataError, UnknownNameError

logger = logging.getLogger(__name__)

RUN_WEIGHTS = "teacher_backbone.pt"
RANDOM_PREFIX = "random:"
#: ``embed`` keys a model brings (the size it was trained at and the features its authors evaluate).
MODEL_EMBED_KEYS = ("img_size", "features")
_ENTRY_KEYS = {"name", "config", "overrides", "optional", "evaluators", "metrics"}


@dataclass(frozen=True)
class SuiteEntry:
    """One benchmark of a suite (see the module docstring for the keys)."""

    name: str
    config: Path
    overrides: tuple[str, ...] = ()
    optional: bool = False
    evaluators: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    """A suite file: its name and benchmarks, in order."""

    name: str
    path: Path
    entries: tuple[SuiteEntry, ...]


@dataclass
class ModelSource:
    """A model to benchmark: its column label, what the user gave, and the config sections it brings.

    :ivar sections: ``backbone`` (always), ``channels`` / ``normalize`` / ``embed`` (when the model has them).
    :ivar weights: the ``weights:`` value (``None``: random initialisation).
    :ivar use_channels: for a fixed-channel card, the channel names its input needs (selected by name).
    """

    label: str
    given: str
    kind: str
    sections: dict[str, Any]
    weights: Any = None
    card: str | None = None
    use_channels: tuple[str, ...] | None = None


@dataclass
class BenchmarkOutcome:
    """What :func:`run_benchmark` did: the leaderboard files, the run directories and the skipped benchmarks."""

    leaderboard: dict[str, Path]
    runs: dict[str, dict[str, Path]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    return tuple(value)


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite YAML.

    :raises ConfigError: naming the suite file and the key (``benchmarks[1].config``) of a bad or missing value,
        an unknown key, a duplicate benchmark name, or a config file found neither from the current directory
        nor from the suite's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--suite", f"suite file '{path}' does not exist; see configs/benchmarks/ for examples")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError("--suite", f"suite file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("benchmarks"), list) or not raw["benchmarks"]:
        raise ConfigError("benchmarks", f"suite file '{path}' must hold a mapping with a non-empty `benchmarks:` list")
    unknown = sorted(set(raw) - {"name", "benchmarks", "description"})
    if unknown:
        raise ConfigError(unknown[0], f"unknown key in suite file '{path}'; allowed: name, description, benchmarks")
    entries: list[SuiteEntry] = []
    for i, item in enumerate(raw["benchmarks"]):
        key = f"benchmarks[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("config"), str):
            raise ConfigError(f"{key}.config", f"suite file '{path}': every benchmark needs `config: PATH.yaml`")
        bad = sorted(set(item) - _ENTRY_KEYS)
        if bad:
            raise ConfigError(f"{key}.{bad[0]}", f"unknown key in suite file '{path}'; allowed: "
                                                 f"{', '.join(sorted(_ENTRY_KEYS))}")
        config = Path(item["config"])
        if not config.is_absolute() and not config.is_file() and (path.parent / config).is_file():
            config = path.parent / config
        if not config.is_file():
            raise ConfigError(f"{key}.config", f"suite file '{path}': config '{item['config']}' does not exist "
                                               f"(looked in the current directory and in {path.parent})")
        name = str(item.get("name") or config.name.split(".")[0])
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"{key}.name", f"'{name}' must be letters, digits, '_', '-', '.' (it names a folder)")
        if any(e.name == name for e in entries):
            raise ConfigError(f"{key}.name", f"suite file '{path}': benchmark name '{name}' is used twice")
        optional = item.get("optional", False)
        if not isinstance(optional, bool):
            raise ConfigError(f"{key}.optional", f"must be true or false, got {optional!r}")
        entries.append(SuiteEntry(name, config, _strings(item.get("overrides"), f"{key}.overrides"), optional,
                                  _strings(item.get("evaluators"), f"{key}.evaluators"),
                                  _strings(item.get("metrics"), f"{key}.metrics")))
    return Suite(str(raw.get("name") or path.name.split(".")[0]), path, tuple(entries))


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "model"


def _run_sections(config_path: Path) -> dict[str, Any]:
    """``backbone``, ``channels``, ``normalize`` (without the run's own ``stats_path``) and the model's ``embed``
    keys of a run's resolved ``config.yaml``."""
    config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    if not isinstance(config, dict) or not isinstance(config.get("backbone"), dict):
        raise ConfigError("backbone", f"{config_path} has no `backbone:` block; it is not a cellssl run's config")
    sections: dict[str, Any] = {"backbone": config["backbone"]}
    if isinstance(config.get("channels"), dict):
        sections["channels"] = config["channels"]
    if isinstance(config.get("normalize"), dict):
        sections["normalize"] = {k: v for k, v in config["normalize"].items() if k != "stats_path"}
    embed = config.get("embed") if isinstance(config.get("embed"), dict) else {}
    if any(embed.get(k) is not None for k in MODEL_EMBED_KEYS):
        sections["embed"] = {k: embed[k] for k in MODEL_EMBED_KEYS if embed.get(k) is not None}
    return sections


def _file_sections(path: Path) -> dict[str, Any]:
    """Sections of a weights file: its run's ``config.yaml`` or exported ``card.json`` beside it, else inferred."""
    import json

    if (path.parent / "config.yaml").is_file():
        return _run_sections(path.parent / "config.yaml")
    card = path.parent / "card.json"
    if card.is_file():
        info = json.loads(card.read_text(encoding="utf-8"))
        sections = {k: info[k] for k in ("backbone", "channels", "normalize") if isinstance(info.get(k), dict)}
        embed = info.get("embed") if isinstance(info.get("embed"), dict) else {}
        sections["embed"] = {k: embed[k] for k in MODEL_EMBED_KEYS if embed.get(k) is not None}
        if "backbone" in sections:
            return sections
    from cellssl.zoo.inspect import inspect_weights

    inspection = inspect_weights(path)
    sections = {"backbone": dict(inspection.backbone)}
    if inspection.in_chans == 1:
        sections["channels"] = {"name": "bag_of_channels", "aggregate": "concat"}
    return sections


def resolve_model(given: str) -> ModelSource:
    """The :class:`ModelSource` of a command-line model argument (see the module docstring).

    :raises CheckpointError: for a run directory without ``teacher_backbone.pt`` (and not ``random:``).
    :raises ConfigError: for a run directory without ``config.yaml``, or a card whose weights are not cached (the
        message says where to get them).
    :raises UnknownNameError: when the argument is neither a directory, a file nor a card (closest card named).
    """
    label, spec = None, given
    head, sep, tail = given.partition("=")
    if sep and head and not Path(given).exists() and re.fullmatch(r"[A-Za-z0-9_.-]+", head):
        label, spec = head, tail
    random = spec.startswith(RANDOM_PREFIX)
    spec = spec[len(RANDOM_PREFIX):] if random else spec
    path = Path(spec).expanduser()
    weights: Any = None
    card_name = use_channels = None
    if path.is_dir():
        kind, default = "run", path.resolve().name
        if not (path / "config.yaml").is_file():
            raise ConfigError("MODEL_OR_RUN", f"'{path}' has no config.yaml: give a cellssl run directory, a weights "
                                              "file or a model card name")
        sections = _run_sections(path / "config.yaml")
        if not random:
            if not (path / RUN_WEIGHTS).is_file():
                raise CheckpointError(f"'{path}' holds no {RUN_WEIGHTS}: train the run first (`cellssl run ...`), "
                                      f"or benchmark its architecture untrained with random:{spec}")
            weights = str(path / RUN_WEIGHTS)
    elif path.is_file():
        kind = "weights"
        default = path.parent.name if path.stem in ("teacher_backbone", "model", "backbone") else path.stem
        sections = _file_sections(path)
        weights = None if random else str(path)
    else:
        from cellssl.zoo.card import get_card, weights_path

        try:
            card = get_card(spec)
        except UnknownNameError as exc:
            raise UnknownNameError(f"model '{spec}' is neither a run directory, a weights file nor a model card: "
                                   f"{exc}") from None
        kind, default, card_name = "card", card.name, card.name
        sections = card.sections()
        if card.channel_names and sections["channels"].get("name") == "fixed":
            use_channels = tuple(card.channel_names)
        if not random:
            file = weights_path(card)
            if not file.is_file():
                raise ConfigError("model", card.how_to_get(file))
            weights = {"path": str(file), "key_prefix": card.key_prefix} if card.key_prefix else str(file)
    label = label or _label(("random_" if random else "") + default)
    return ModelSource(label, given, ("random " if random else "") + kind, sections, weights, card_name, use_channels)


def benchmark_config(entry: SuiteEntry, model: ModelSource, out: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The run config of ``model`` on ``entry``: the benchmark's config, its overrides and ``overrides``, then the
    model's sections.

    :raises ConfigError: for a benchmark config that trains (``objective:``), or an ``evaluators`` name it lacks.
    """
    from cellssl.config.compose import load_run_config

    config = load_run_config(entry.config, [*entry.overrides, *overrides])
    if config.get("objective") is not None or config.get("finetune") is not None:
        raise ConfigError(f"{entry.name}.config", f"{entry.config} trains a model (objective: / finetune:); a "
                                                  "benchmark runs eval configs (configs/eval/)")
    if entry.evaluators:
        blocks = list(config.get("eval") or [])
        names = [str(b.get("name")) for b in blocks]
        missing = [n for n in entry.evaluators if n not in names]
        if missing:
            raise ConfigError(f"{entry.name}.evaluators", f"{entry.config} has no eval entry {missing}; it has {names}")
        config.eval = [b for b in blocks if str(b.get("name")) in entry.evaluators]
    config.backbone = OmegaConf.create(model.sections["backbone"])
    for section in ("channels", "normalize"):
        if model.sections.get(section):
            config[section] = OmegaConf.create(model.sections[section])
    embed = model.sections.get("embed") or {}
    if config.get("embed") is None:
        config.embed = {}
    for key in MODEL_EMBED_KEYS:
        if embed.get(key) is not None:
            config.embed[key] = embed[key]
    config.weights = model.weights
    if model.card is not None and model.weights is not None:
        config.model = model.card
    if model.use_channels and config.get("data") is not None and config.data.get("use_channels") is None:
        config.data.use_channels = list(model.use_channels)
    config.run.output_dir = str(out / entry.name / model.label)
    config.run.stages = ["embed", "eval"]
    return config


def _registered(kind: str, name: Any) -> str | None:
    """``None`` when ``name`` is registered under ``kind``, else the reason (with the distribution to install)."""
    from cellssl.plugins import get_registry
    from cellssl.plugins.registry import KNOWN_PROVIDERS

    if name in get_registry(kind):
        return None
    provider = KNOWN_PROVIDERS.get(kind, {}).get(str(name))
    where = f": install the plugin {provider} (pip install -e plugins/{provider})" if provider else ""
    return f"{kind} '{name}' is not registered by any installed plugin{where}"


def absence_reason(entry: SuiteEntry) -> str | None:
    """Why an optional benchmark cannot run here (its plugin or data is absent); ``None`` when it can.

    Looks at the config (with the entry's overrides) only: the dataset and evaluator names must be registered and
    ``data.root`` must be set and exist.
    """
    from cellssl.config.compose import load_run_config

    config = load_run_config(entry.config, entry.overrides)
    data = config.get("data")
    if data is not None:
        reason = _registered("dataset", data.get("name"))
        if reason:
            return reason
    for block in config.get("eval") or []:
        reason = _registered("evaluator", block.get("name"))
        if reason:
            return reason
    if data is not None and (OmegaConf.is_missing(data, "root") or "root" in data):
        if OmegaConf.is_missing(data, "root") or not data.root:
            return "data.root is not set (add `data.root=PATH` to the benchmark's overrides)"
        if not Path(str(data.root)).expanduser().exists():
            return f"data.root '{data.root}' does not exist"
    return None


def plan_benchmarks(suite: Suite, models: Sequence[ModelSource], out: Path, *, restart: bool = False,
                    overrides: Sequence[str] = ()
                    ) -> tuple[list[tuple[SuiteEntry, ModelSource, Any]], list[dict[str, str]]]:
    """Validate every (benchmark, model) plan and its run directory before anything runs.

    :return: the plans to execute, in order, and the skipped benchmarks (``benchmark``, ``config``, ``reason``).
    :raises CellsslError: for a plan that does not validate (an optional benchmark whose data turns out to be
        unreadable is skipped instead).
    """
    from cellssl.plan.build import build_plan
    from cellssl.plan.checks import check_plan
    from cellssl.plan.run_dir import prepare_run_dir

    planned: list[tuple[SuiteEntry, ModelSource, Any]] = []
    skipped: list[dict[str, str]] = []
    for entry in suite.entries:
        reason = absence_reason(entry) if entry.optional else None
        pending = []
        try:
            if reason is None:
                for model in models:
                    plan = check_plan(build_plan(benchmark_config(entry, model, out, overrides)))
                    prepare_run_dir(plan, restart=restart, write=False)
                    pending.append((entry, model, plan))
        except DataError as exc:
            if not entry.optional:
                raise
            reason = f"its data is not readable: {exc}"
        except ConfigError as exc:
            where = f"benchmark '{entry.name}' ({entry.config}), model '{model.label}'"
            raise ConfigError(exc.key, f"{where}: {str(exc).split(': ', 1)[-1] if exc.key else exc}") from None
        except CellsslError as exc:
            raise type(exc)(f"benchmark '{entry.name}' ({entry.config}), model '{model.label}': {exc}") from None
        if reason is not None:
            logger.warning("benchmark %s skipped: %s", entry.name, reason)
            skipped.append({"benchmark": entry.name, "config": str(entry.config), "reason": reason})
        else:
            planned.extend(pending)
    return planned, skipped


def run_benchmark(models: Sequence[str], suite: str | Path, out: str | Path | None = None, *,
                  restart: bool = False, overrides: Sequence[str] = ()) -> BenchmarkOutcome:
    """Evaluate every model on every benchmark of ``suite`` and write the leaderboard into ``out``.

    :param models: model arguments (see the module docstring); labels must be unique.
    :param out: output folder (default ``runs/benchmark_<suite name>``).
    :param restart: start over in run directories holding another config's outputs.
    :param overrides: ``key=value`` overrides applied to every benchmark config (after the suite's).
    :return: the leaderboard files, the run directory of each (benchmark, model), and the skipped benchmarks.
    :raises ConfigError: for no model, two models with one label, or a benchmark that ran for no model.
    """
    from cellssl.pipeline import execute
    from cellssl.report.leaderboard import BenchmarkSection, Leaderboard, write_leaderboard

    if not models:
        raise ConfigError("MODEL_OR_RUN", "give at least one model: a card name, a run directory or a weights file")
    loaded = load_suite(suite)
    sources = [resolve_model(m) for m in models]
    labels = [s.label for s in sources]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError("MODEL_OR_RUN", f"two models get the column label {twice}: name them with LABEL=MODEL")
    out_dir = Path(out) if out is not None else Path("runs") / f"benchmark_{_label(loaded.name)}"
    planned, skipped = plan_benchmarks(loaded, sources, out_dir, restart=restart, overrides=overrides)
    outcome = BenchmarkOutcome({}, skipped=skipped)
    for entry, model, plan in planned:
        logger.info("benchmark %s, model %s -> %s", entry.name, model.label, plan.run_dir)
        run, _ = execute(plan, restart=restart)
        outcome.runs.setdefault(entry.name, {})[model.label] = run.run_dir
    sections = [BenchmarkSection(e.name, str(e.config), outcome.runs[e.name], e.metrics)
                for e in loaded.entries if e.name in outcome.runs]
    board = Leaderboard(loaded.name, [(s.label, s.given, s.kind) for s in sources], sections, skipped)
    outcome.leaderboard = write_leaderboard(board, out_dir)
    return outcome


def describe(outcome: BenchmarkOutcome) -> str:
    """Lines for the terminal: the files written and the skipped benchmarks with their reasons."""
    lines = [f"wrote {p}" for p in outcome.leaderboard.values()]
    lines += [f"skipped {s['benchmark']} ({s['config']}): {s['reason']}" for s in outcome.skipped]
    return "\n".join(lines)
