"""The embed stage and what it is built from: the run's channel statistics, preprocessing, weighted backbone,
expected fingerprint and :class:`~cellssl.embed.embedder.Embedder` (:func:`run_embedder`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellssl.data.dataset import CellDataset
from cellssl.errors import ConfigError
from cellssl.pipeline.run import Run, build_backbone, resolve_weights, skipped_count
from cellssl.plan.checks import build_dataset as build_dataset_spec
from cellssl.plan.checks import check_plan, plan_dataset
from cellssl.plan.model import RunPlan

logger = logging.getLogger(__name__)


def _stats_fingerprint(plan: RunPlan) -> str:
    """What this run's channel statistics depend on: ``data`` and, when configured, ``train.extra_datasets``."""
    from cellssl.plan.fingerprint import stats_fingerprint

    specs = [plan.data, *[e.data for e in plan.extra_datasets]]
    datasets = _stats_datasets(plan)
    return stats_fingerprint([s.as_dict() for s in specs if s is not None], datasets, plan.normalize, 0)


def _stats_datasets(plan: RunPlan) -> list[CellDataset]:
    built = plan.cache.setdefault("datasets", {})
    out = [plan_dataset(plan)]
    for extra in plan.extra_datasets:
        if extra.data.key not in built:
            built[extra.data.key] = build_dataset_spec(extra.data)
        out.append(built[extra.data.key])
    return out


def stats_source(plan: RunPlan) -> tuple[Any, str]:
    """``(dataset, fingerprint)`` channel statistics are computed from: ``data`` (+ extra datasets)."""
    from torch.utils.data import ConcatDataset

    datasets = _stats_datasets(plan)
    source = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    return source, _stats_fingerprint(plan)


def run_channel_stats(plan: RunPlan) -> Path:
    """The dataset channel statistics file the stages of ``plan`` normalise with, computed now if needed.

    ``normalize.stats_path`` when it is set (read by the plan's checks); otherwise
    ``<run_dir>/channel_stats.json``: kept when it was computed from the same inputs (:func:`stats_source`'s
    fingerprint: ``data`` and any ``train.extra_datasets``, their tables, rows, channels, bit depth, and the
    normalisation settings), else computed on up to ``normalize.stats_samples`` images and written there. This is
    the file the embed stage of the same plan would compute and read, so a workflow that runs many plans (one per
    plate, say) can compute it once and point each plan's ``normalize.stats_path`` at it.

    :raises ConfigError: naming ``normalize.mode`` when it is not ``dataset`` (there are no dataset statistics),
        or ``data`` when the plan has no dataset.
    :raises cellssl.errors.DataError: from the datasets, or when the statistics would not be finite.
    """
    from cellssl.data.preprocess import CHANNEL_STATS_FILE, resolve_channel_stats

    if plan.normalize.mode != "dataset":
        raise ConfigError("normalize.mode", f"is '{plan.normalize.mode}'; only normalize.mode: dataset uses channel "
                                            "statistics computed on the dataset")
    if plan.normalize.stats_path:
        check_plan(plan)
        return Path(plan.normalize.stats_path)
    if plan.data is None:
        raise ConfigError("data", "is required to compute channel statistics, e.g. `data: {name: table, ...}`.")
    source, fingerprint = stats_source(plan)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    resolve_channel_stats(plan.run_dir, None, source, plan.normalize.stats_samples, fingerprint=fingerprint)
    return plan.run_dir / CHANNEL_STATS_FILE


def eval_preprocess(run: Run) -> Any:
    from cellssl.data.preprocess import EvalPreprocess, build_run_normalizer
    from cellssl.distributed import main_process_first

    plan = run.require_plan()
    source, fingerprint = stats_source(plan)
    with main_process_first():  # rank 0 computes and stores dataset statistics, the others read them
        normalizer = build_run_normalizer(plan.normalize, source, run.run_dir, fingerprint)
    return EvalPreprocess(normalizer, plan.embed.img_size)


def weighted_backbone(run: Run, channel_names: tuple[str, ...]) -> tuple[nn.Module, Path | None]:
    """The plan's backbone with the run's weights (those the plan checked, when they are the ones used)."""
    from cellssl.models.checkpoint import load_backbone_weights

    plan = run.require_plan()
    weights = resolve_weights(run)
    cached = plan.cache.get("weighted_backbone")
    if cached is not None and plan.weights is not None and weights == plan.weights.path:
        return cached, weights
    key = f"backbone:{weights}"
    if key in plan.cache:
        return plan.cache[key], weights
    if weights is not None:
        backbone = build_backbone(plan, plan.cache["strategy"], channel_names)
        prefix = plan.weights.key_prefix if plan.weights is not None else None
        load_backbone_weights(backbone, weights, key_prefix=prefix)
        logger.info("loaded backbone weights from %s", weights)
    else:
        # a random initialisation that depends on run.seed only (what the embedding fingerprint records), not on
        # how much randomness was drawn before: every process and every stage gets the same weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.run.seed)
            backbone = build_backbone(plan, plan.cache["strategy"], channel_names)
        logger.warning("embedding with a randomly initialised backbone (no `weights:` and no trained teacher), "
                       "seeded by run.seed=%d", plan.run.seed)
    plan.cache[key] = backbone
    return backbone, weights


def expected_embedding(run: Run) -> tuple[str, dict[str, Any]] | None:
    """``(fingerprint, parts)`` the run's embeddings must have (``None`` without data or backbone)."""
    from cellssl.plan.fingerprint import digest, embedding_parts

    plan = run.require_plan()
    if plan.data is None or plan.backbone is None:
        return None
    dataset = plan_dataset(plan)
    parts = embedding_parts(plan, dataset, resolve_weights(run))
    parts["rows_embedded"] = min(plan.embed.limit if plan.embed.limit is not None else len(dataset), len(dataset))
    return digest(parts), parts


def _preprocess_factory(run: Run) -> Any:
    """The run's preprocessing for another dataset (``Embedder.for_dataset``): ``embed.img_size`` and
    ``normalize:``, with the run's ``channel_stats.json`` used when it covers that dataset's channels."""
    from cellssl.data.preprocess import CHANNEL_STATS_FILE, DatasetPreprocessFactory

    plan = run.require_plan()
    return DatasetPreprocessFactory(plan.normalize, plan.embed.img_size, run.run_dir / CHANNEL_STATS_FILE)


def run_embedder(run: Run) -> Any:
    """The run's :class:`~cellssl.embed.embedder.Embedder`: its strategy, its weighted backbone with the feature
    recipe of ``embed.features``, the embed stage's preprocessing, precision, device, batch size and shard size;
    its identity (the embed stage's fingerprint parts but ``data``) and the run's preprocessing factory, so
    ``Embedder.for_dataset`` embeds other datasets (other channels) with the same model and recipe."""
    from cellssl.embed import Embedder
    from cellssl.plan.fingerprint import embedding_parts

    plan = run.require_plan()
    dataset = plan_dataset(plan)
    backbone, weights = weighted_backbone(run, tuple(dataset.channel_names))
    features = plan.embed.features
    if features.n_last_blocks != 1 or features.avgpool:
        from cellssl.models.features import FeatureExtractor

        backbone = FeatureExtractor(backbone, features.n_last_blocks, features.avgpool)
        logger.info("embedding features: %s", backbone.extra_repr())
    identity = {k: v for k, v in embedding_parts(plan, dataset, weights).items() if k != "data"}
    return Embedder(plan.cache["strategy"], backbone, eval_preprocess(run), precision=plan.embed.precision,
                    bf16=plan.embed.bf16, compile=plan.embed.compile,
                    device=run.device, batch_size=plan.embed.batch_size, num_workers=plan.embed.num_workers,
                    shard_rows=plan.embed.shard_rows, identity=identity, preprocess_factory=_preprocess_factory(run))


def embed_stage(run: Run) -> Path:
    """Embed the dataset into ``run_dir/embeddings`` (resuming a killed export) and return that folder."""
    from cellssl.distributed import get_rank, get_world_size
    from cellssl.embed.distributed import clear_embedding_dir, embedding_share, finish_embedding

    plan = run.require_plan()
    dataset = plan_dataset(plan)
    embedder = run_embedder(run)
    weights = resolve_weights(run)
    expected = expected_embedding(run)
    assert expected is not None
    fingerprint, parts = expected
    total = parts["rows_embedded"]
    out_dir = run.run_dir / "embeddings"
    indices, shard_prefix = embedding_share(total)  # this rank's share (all of it alone)
    clear_embedding_dir(out_dir)
    rank, world = get_rank(), get_world_size()
    extra = {"rank": rank, "world_size": world, "total_rows": total,
             "skipped_rows": skipped_count(plan) if rank == 0 else 0}
    features = plan.embed.features
    embedder.export(
        dataset, out_dir, shard_rows=plan.embed.shard_rows, indices=indices, shard_prefix=shard_prefix,
        fingerprint=fingerprint, manifest_extra=extra,
        manifest_info={"backbone": plan.backbone.as_dict() if plan.backbone else None,
                       "weights": str(weights) if weights else None,
                       "features": {"n_last_blocks": features.n_last_blocks, "avgpool": features.avgpool},
                       "dataset": plan.data.as_dict() if plan.data else None,
                       "fingerprint_parts": parts},
    )
    finish_embedding()
    return out_dir
