"""Checks across the sections of a :class:`~cellssl.plan.model.RunPlan` that open the data and the weights.

:func:`check_plan` runs after :func:`~cellssl.plan.build.build_plan` and before any stage starts or
anything is written. It builds the datasets (reading their tables; the datasets check their files as
configured), the channel strategy and, when ``weights:`` is set, the backbone with those weights, and checks
that the pieces fit: the strategy takes the data's channels, every evaluator's (and, when the finetune stage
runs, the ``finetune:`` section's) columns exist in the dataset table, a ``normalize.stats_path`` is readable,
the checkpoint loads with ``weights_only=True`` and fits the backbone's shapes. What it builds is kept in
``plan.cache`` for the stages.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from cellssl.data.dataset import CellDataset
from cellssl.errors import CellsslError, ConfigError, DataError
from cellssl.plan.model import Component, DataSpec, RunPlan

logger = logging.getLogger(__name__)


def build_dataset(spec: DataSpec) -> CellDataset:
    """Build the dataset of ``spec`` under the core's data policy, with ``use_channels`` applied.

    :raises cellssl.errors.DataError: from the dataset (table, files, channels).
    :raises ConfigError: naming ``<key>.use_channels`` for a channel the dataset lacks.
    """
    from cellssl.data.policy import DatasetPolicy, dataset_policy
    from cellssl.data.selection import ChannelSelection

    with dataset_policy(DatasetPolicy(allow_outside_root=spec.allow_outside_root)):
        dataset = spec.component.build()
    if spec.use_channels is not None:
        dataset = ChannelSelection(dataset, spec.use_channels, f"{spec.key}.use_channels")
    logger.info("%s", dataset.describe())
    return dataset


def evaluator_columns(config: Any) -> list[tuple[str, str]]:
    """``(field, column)`` pairs of the metadata columns an evaluator's config names.

    An evaluator config may define ``required_columns() -> list[tuple[str, str]]``; otherwise every
    non-empty string field ending in ``_column`` and every string-list field ending in ``_columns`` counts.
    """
    custom = getattr(config, "required_columns", None)
    if callable(custom):
        return list(custom())
    pairs: list[tuple[str, str]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name.endswith("_column") and isinstance(value, str) and value:
            pairs.append((f.name, value))
        elif f.name.endswith("_columns") and isinstance(value, list | tuple):
            pairs += [(f"{f.name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, str) and v]
    return pairs


def check_config_columns(key: str, config: Any, dataset: CellDataset) -> None:
    """Every column the section ``config`` (at config key ``key``) names exists in ``dataset.metadata``.

    :raises ConfigError: naming ``<key>.<field>``, the missing column and the columns available.
    """
    available = [str(c) for c in dataset.metadata.columns]
    for field_name, column in evaluator_columns(config):
        if column not in available:
            shown = ", ".join(available[:40]) + (" ..." if len(available) > 40 else "")
            raise ConfigError(f"{key}.{field_name}",
                              f"names column '{column}', which the dataset table does not have. Columns: {shown}.")


def check_evaluator_columns(evaluator: Component, dataset: CellDataset) -> None:
    """Every column ``evaluator`` names exists in ``dataset.metadata``.

    :raises ConfigError: naming ``eval[i].<field>``, the missing column and the columns available.
    """
    check_config_columns(evaluator.key, evaluator.config, dataset)


def _check_strategy(plan: RunPlan, strategy: Any, datasets: list[tuple[str, CellDataset]]) -> None:
    first_key, first = datasets[0]
    for key, dataset in datasets:
        try:
            strategy.check_channels(tuple(dataset.channel_names))
        except CellsslError as exc:
            raise type(exc)(f"config key 'channels' with {key}: {exc}") from None
        if key != first_key and strategy.in_chans(dataset.channel_names) != strategy.in_chans(first.channel_names):
            raise ConfigError(
                key,
                f"has channels {list(dataset.channel_names)} but `{first_key}:` has {list(first.channel_names)}; the "
                f"'{plan.channels.name}' strategy needs the same channels in every dataset (use bag_of_channels or "
                "per_channel_concat to mix datasets with different channels, or `use_channels:` to align them).",
            )


def _check_weights(plan: RunPlan, strategy: Any, channels: tuple[str, ...]) -> None:
    from cellssl.models.checkpoint import load_backbone_weights

    assert plan.weights is not None and plan.backbone is not None
    backbone = plan.backbone.build(in_chans=strategy.in_chans(channels))
    try:
        load_backbone_weights(backbone, plan.weights.path, key_prefix=plan.weights.key_prefix)
    except CellsslError as exc:
        raise type(exc)(f"config key 'weights': {exc}") from None
    logger.info("weights %s fit the backbone %s", plan.weights.path, plan.backbone.name)
    plan.cache["weighted_backbone"] = backbone


def check_plan(plan: RunPlan) -> RunPlan:
    """Run the cross-section checks, keeping what they build in ``plan.cache``; returns ``plan``.

    :raises ConfigError: naming the key whose value does not fit another section.
    :raises cellssl.errors.DataError: for unreadable data (from the datasets).
    :raises cellssl.errors.CheckpointError: for a ``weights:`` file that does not load or fit.
    """
    if plan.checked:
        return plan
    datasets: list[tuple[str, CellDataset]] = []
    if plan.data is not None:
        datasets.append(("data", build_dataset(plan.data)))
        if "train" in plan.stages:
            datasets += [(e.data.key, build_dataset(e.data)) for e in plan.extra_datasets]
    plan.cache["datasets"] = dict(datasets)
    strategy = plan.channels.build()
    plan.cache["strategy"] = strategy
    if datasets:
        _check_strategy(plan, strategy, datasets)
        main = datasets[0][1]
        for evaluator in plan.evaluators:
            check_evaluator_columns(evaluator, main)
        if plan.finetune is not None and "finetune" in plan.stages:
            check_config_columns("finetune", plan.finetune, main)
    if plan.normalize.mode == "dataset" and plan.normalize.stats_path:
        from cellssl.data.normalize import ChannelStats

        try:
            ChannelStats.load(plan.normalize.stats_path)
        except DataError as exc:
            raise ConfigError("normalize.stats_path", str(exc)) from None
    if plan.objective is not None and "train" in plan.stages:
        from types import SimpleNamespace

        from cellssl.train.stage import check_view_normalize

        check_view_normalize(plan.config, SimpleNamespace(config=plan.objective.config), plan.normalize)
    if plan.weights is not None and plan.backbone is not None and datasets:
        _check_weights(plan, strategy, tuple(datasets[0][1].channel_names))
    plan.checked = True
    return plan


def plan_dataset(plan: RunPlan, key: str = "data") -> CellDataset:
    """The dataset ``check_plan`` built for ``key`` (``data`` or ``train.extra_datasets[i].data``)."""
    check_plan(plan)
    try:
        return plan.cache["datasets"][key]
    except KeyError:
        raise ConfigError(key, "is required by this stage.") from None
