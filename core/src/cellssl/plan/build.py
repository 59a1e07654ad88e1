"""Building the typed :class:`~cellssl.plan.model.RunPlan` from a resolved run config.

:func:`build_plan` validates every section (run, data and extra datasets, channels, backbone, objective,
train, embed, normalize, every ``eval[i]``, launcher, weights) against its dataclass, so an error
anywhere is reported before anything runs, with the full key path (``eval[3].k``). It reads no data and
imports no torch; :func:`cellssl.plan.checks.check_plan` adds the checks that open files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cellssl.config.schema import STAGES, EmbedSection, NormalizeSection, RunSection
from cellssl.config.validate import resolve_entry, validate_block
from cellssl.errors import CellsslError, ConfigError
from cellssl.plan.model import Component, DataSpec, ExtraDataset, LauncherSpec, RunPlan, WeightsSpec

#: Keys any ``data:`` block may carry besides the dataset's own parameters; the core handles them.
CORE_DATA_KEYS = ("use_channels", "allow_outside_root")


def _container(block: Any) -> Any:
    if isinstance(block, DictConfig | ListConfig):
        return OmegaConf.to_container(block, resolve=True)
    return block


def component(block: Any, kind: str, key: str) -> Component:
    """Validate one ``{name: ..., <params>}`` block of ``kind`` found at ``key``."""
    entry, config = resolve_entry(_container(block), kind, key)
    return Component(key, entry, config)


def data_spec(block: Any, key: str) -> DataSpec:
    """Validate a ``data:`` block: the core-level keys (:data:`CORE_DATA_KEYS`), then the dataset's own.

    :raises ConfigError: naming ``<key>.use_channels`` for a malformed channel list.
    """
    block = _container(block)
    if not isinstance(block, Mapping):
        raise ConfigError(key, f"must be a mapping with a `name`, e.g. `{key}: {{name: table, table: meta.csv}}`")
    block = dict(block)
    use_channels = block.pop("use_channels", None)
    allow_outside = block.pop("allow_outside_root", False)
    if use_channels is not None:
        if isinstance(use_channels, str):
            use_channels = [use_channels]
        if not isinstance(use_channels, list) or not use_channels or not all(
                isinstance(n, str) and n.strip() for n in use_channels):
            raise ConfigError(f"{key}.use_channels", f"must be a non-empty list of channel names, got {use_channels!r}")
        if len(set(use_channels)) != len(use_channels):
            raise ConfigError(f"{key}.use_channels", f"names a channel twice: {use_channels}")
    if not isinstance(allow_outside, bool):
        raise ConfigError(f"{key}.allow_outside_root", f"must be true or false, got {allow_outside!r}")
    return DataSpec(component(block, "dataset", key),
                    tuple(str(n).strip() for n in use_channels) if use_channels is not None else None,
                    allow_outside)


def _weights(raw: Any) -> WeightsSpec | None:
    raw = _container(raw)
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        path, prefix = raw, None
    elif isinstance(raw, Mapping):
        unknown = sorted(set(raw) - {"path", "key_prefix"})
        if unknown:
            raise ConfigError(f"weights.{unknown[0]}", "unknown key. Allowed keys here: path, key_prefix.")
        if not raw.get("path"):
            raise ConfigError("weights.path", "is required when `weights:` is a mapping.")
        path, prefix = str(raw["path"]), raw.get("key_prefix")
        if prefix is not None and not isinstance(prefix, str):
            raise ConfigError("weights.key_prefix", f"must be a string, got {prefix!r}")
    else:
        raise ConfigError("weights", f"must be a checkpoint path or {{path: ..., key_prefix: ...}}, got {raw!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            "weights", f"checkpoint file '{file}' does not exist. Point it at a backbone checkpoint (e.g. a "
            "run's teacher_backbone.pt) or remove `weights:` to embed with the run's trained teacher.")
    return WeightsSpec(file, prefix or None)


#: ``backbone: {name: auto}`` builds the architecture inferred from the ``weights:`` checkpoint.
AUTO_BACKBONE = "auto"


def _auto_backbone(raw: Any, weights: WeightsSpec | None) -> Any:
    """``backbone:`` with ``name: auto`` replaced by the block :func:`cellssl.zoo.inspect.inspect_weights`
    infers from ``weights:`` (other keys of the user's block win); any other block is returned as is.

    Opens the checkpoint (so imports torch) only for ``name: auto``.

    :raises ConfigError: naming ``backbone.name`` when there is no ``weights:``.
    :raises cellssl.errors.CheckpointError: when the checkpoint is unreadable or not a ViT.
    """
    raw = _container(raw)
    if not isinstance(raw, Mapping) or raw.get("name") != AUTO_BACKBONE:
        return raw
    if weights is None:
        raise ConfigError("backbone.name", "is 'auto', which infers the architecture from the `weights:` "
                                           "checkpoint; set `weights:` or name the backbone (e.g. vit_small).")
    from cellssl.zoo.inspect import inspect_weights

    try:
        inspection = inspect_weights(weights.path, key_prefix=weights.key_prefix)
    except CellsslError as exc:
        raise type(exc)(f"config key 'backbone' (name: auto): {exc}") from None
    return {**inspection.backbone, **{k: v for k, v in raw.items() if k != "name"}}


def _launcher(raw: Any) -> LauncherSpec:
    raw = _container(raw)
    if raw is None:
        raw = {"name": "local"}
    if not isinstance(raw, Mapping):
        raise ConfigError("launcher", "must be a mapping, e.g. `launcher: {name: slurm, nodes: 2}`")
    block = {"name": "local", **raw}
    entry, config = resolve_entry(block, "launcher", "launcher")
    return LauncherSpec("launcher", entry, config)


def default_stages(config: DictConfig, run: RunSection) -> list[str]:
    """``run.stages``, or ``train`` when an objective is configured, then ``embed``, then ``eval`` if listed."""
    if run.stages is not None:
        return list(run.stages)
    stages = ["train"] if config.get("objective") is not None else []
    if config.get("finetune") is not None:
        stages.append("finetune")
    stages.append("embed")
    if config.get("eval"):
        stages.append("eval")
    return stages


def _require(plan: RunPlan) -> None:
    """Each stage's required sections exist."""
    for stage in plan.stages:
        if stage == "train" and plan.objective is None:
            raise ConfigError("objective", "is required to train, e.g. `objective: {name: dino}` (see configs/train/).")
        if stage == "finetune" and plan.finetune is None:
            raise ConfigError("finetune", "is required by the finetune stage, e.g. `finetune: {label_column: phase}`.")
        if stage in ("train", "finetune", "embed"):
            if plan.data is None:
                raise ConfigError("data", f"is required by the {stage} stage, e.g. "
                                          "`data: {name: table, table: meta.csv}`.")
            if plan.backbone is None:
                raise ConfigError("backbone", "is required, e.g. `backbone: {name: vit_small, patch_size: 16}`.")
        if stage == "eval" and not plan.evaluators:
            raise ConfigError("eval", "lists no evaluator; add e.g. `eval: [{name: knn, label_column: label}]`.")


def build_plan(config: DictConfig, stages: list[str] | None = None) -> RunPlan:
    """Validate every section of ``config`` into a :class:`RunPlan` (no file is read but ``weights:``' existence).

    :param config: a config from :func:`cellssl.config.compose.load_run_config`.
    :param stages: the stages to run (default: :func:`default_stages`).
    :raises ConfigError: naming the full key path of the first invalid value.
    :raises cellssl.errors.UnknownNameError: for a name no installed plugin registers.
    """
    from cellssl.finetune.config import FinetuneSection
    from cellssl.train.config import TrainSection

    run = validate_block(config.get("run"), RunSection, "run")
    todo = list(stages) if stages is not None else default_stages(config, run)
    unknown = [s for s in todo if s not in STAGES]
    if unknown:
        raise ConfigError("run.stages", f"unknown stage '{unknown[0]}'; stages are {STAGES}")
    data = data_spec(config.data, "data") if config.get("data") is not None else None
    channels = component(config.get("channels") or {"name": "fixed"}, "channel_strategy", "channels")
    weights = _weights(config.get("weights"))
    backbone = (component(_auto_backbone(config.backbone, weights), "backbone", "backbone")
                if config.get("backbone") is not None else None)
    objective = component(config.objective, "objective", "objective") if config.get("objective") is not None else None
    train = validate_block(config.get("train"), TrainSection, "train")
    extras = [ExtraDataset(data_spec(entry.data, f"train.extra_datasets[{i}].data"), entry.weight)
              for i, entry in enumerate(train.extra_datasets)]
    embed = validate_block(config.get("embed"), EmbedSection, "embed")
    normalize = validate_block(config.get("normalize"), NormalizeSection, "normalize")
    blocks = config.get("eval") or []
    evaluators = [component(block, "evaluator", f"eval[{i}]") for i, block in enumerate(blocks)]
    plan = RunPlan(config=config, run=run, stages=todo, data=data, channels=channels, backbone=backbone,
                   objective=objective, train=train, extra_datasets=extras, embed=embed, normalize=normalize,
                   evaluators=evaluators, launcher=_launcher(config.get("launcher")), weights=weights,
                   model=config.get("model"),
                   finetune=validate_block(config.finetune, FinetuneSection, "finetune")
                   if config.get("finetune") is not None else None)
    _require(plan)
    return plan
