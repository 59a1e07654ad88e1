"""The stages a run executes (train, embed, eval), from one validated :class:`~cellssl.plan.model.RunPlan`.

:func:`execute` builds the plan (every section, every ``eval[i]``, the launcher, the weights) and runs
its cross-section checks before any stage starts or anything is written; then it prepares the run
directory (:func:`cellssl.plan.run_dir.prepare_run_dir`) and runs the stages, each reading its typed
section of the plan:

- ``train`` (when an ``objective`` is configured): ``checkpoints/`` and ``teacher_backbone.pt``;
- ``embed``: ``embeddings/part-*.parquet`` + ``manifest.json`` (written last; resumable by shard);
- ``eval``: ``eval/<evaluator>.json``.

Rows a dataset skipped (``on_corrupt: skip``) are listed in ``skipped.csv`` and counted in the manifest and
in every evaluator's result.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from cellssl.atomic import atomic_write_json, atomic_write_text
from cellssl.channels.base import ChannelStrategy
from cellssl.config.schema import RunSection
from cellssl.data.dataset import CellDataset
from cellssl.errors import ConfigError
from cellssl.plan.build import build_plan, component, data_spec
from cellssl.plan.checks import build_dataset as build_dataset_spec
from cellssl.plan.checks import check_plan, plan_dataset
from cellssl.plan.model import RunPlan

logger = logging.getLogger(__name__)

TEACHER_BACKBONE_FILE = "teacher_backbone.pt"
SKIPPED_FILE = "skipped.csv"


@dataclass
class Run:
    """A run being executed: its plan, config, directory and device."""

    config: DictConfig
    settings: RunSection
    run_dir: Path
    device: torch.device
    plan: RunPlan | None = None

    def stages(self) -> list[str]:
        """The stages to execute (the plan's)."""
        return list(self.require_plan().stages)

    def require_plan(self) -> RunPlan:
        """The run's checked plan (built from ``config`` when the run was made without one)."""
        if self.plan is None:
            self.plan = build_plan(self.config)
        return check_plan(self.plan)


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    :raises ConfigError: for ``cuda`` on a machine without a CUDA device.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device", "is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_skipped(plan: RunPlan, run_dir: Path) -> None:
    """``skipped.csv``: one line per row a dataset of the plan skipped (dataset key, row, file, reason)."""
    import pandas as pd

    frames = []
    for key, dataset in plan.cache.get("datasets", {}).items():
        skipped = getattr(dataset, "skipped", None)
        if skipped is None or not len(skipped):
            continue
        frames.append(pd.DataFrame({
            "dataset": key,
            "row": skipped["table_row"] if "table_row" in skipped else range(len(skipped)),
            "file": skipped.get("file", ""),
            "reason": skipped.get("error", ""),
        }))
    path = run_dir / SKIPPED_FILE
    if frames:
        table = pd.concat(frames, ignore_index=True)
        atomic_write_text(path, table.to_csv(index=False))
        logger.warning("%d row(s) skipped (on_corrupt: skip), listed in %s", len(table), path)
    elif path.exists():
        path.unlink()


def skipped_count(plan: RunPlan, key: str = "data") -> int:
    """Rows the dataset ``key`` of the plan skipped."""
    skipped = getattr(plan.cache.get("datasets", {}).get(key), "skipped", None)
    return 0 if skipped is None else len(skipped)


def start_run(config: DictConfig | RunPlan, *, save_config: bool = True, restart: bool = False) -> Run:
    """Validate and check the plan, seed, set threads, join the process group, then prepare the run directory.

    Nothing is written before the plan validated and its checks passed. Started by torchrun or the slurm
    launcher (``WORLD_SIZE > 1``), the process joins the process group (options from ``train.distributed``)
    and uses the device of its local rank; only rank 0 writes the config.

    :param restart: start over in a run directory whose finished outputs came from another config.
    :raises ConfigError: for an invalid plan, or a run directory holding another config's outputs.
    """
    from cellssl.distributed import init_distributed, is_main_process
    from cellssl.plan.run_dir import prepare_run_dir

    plan = config if isinstance(config, RunPlan) else build_plan(config)
    settings = plan.run
    seed_everything(settings.seed)
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    check_plan(plan)
    distributed = plan.train.distributed
    device = init_distributed(select_device(settings.device), distributed.backend, distributed.timeout_minutes).device
    main = is_main_process()
    run_dir = prepare_run_dir(plan, restart=restart, write=save_config and main)
    if save_config and main:
        _write_skipped(plan, run_dir)
    return Run(plan.config, settings, run_dir, device, plan)


def build_dataset(config: DictConfig, key: str = "data") -> CellDataset:
    """Build the dataset of the block ``config.<key>`` (``use_channels`` and the data policy applied)."""
    return build_dataset_spec(data_spec(config.get(key), key))


def build_strategy(config: DictConfig) -> ChannelStrategy:
    """Build the channel strategy of ``config.channels`` (default ``fixed``)."""
    return component(config.get("channels") or {"name": "fixed"}, "channel_strategy", "channels").build()


def build_backbone(
    config: DictConfig | RunPlan, strategy: ChannelStrategy, channel_names: tuple[str, ...]
) -> nn.Module:
    """Build the backbone (``config.backbone`` or the plan's) with the strategy's ``in_chans`` for ``channel_names``."""
    if isinstance(config, RunPlan):
        spec = config.backbone
    else:
        spec = component(config.backbone, "backbone", "backbone") if config.get("backbone") is not None else None
    if spec is None:
        raise ConfigError("backbone", "is required, e.g. `backbone: {name: vit_small, patch_size: 16}`.")
    return spec.build(in_chans=strategy.in_chans(channel_names))


def resolve_weights(run: Run) -> Path | None:
    """The backbone weights to embed with: ``weights:``, else this run's trained teacher, else none."""
    plan = run.plan if run.plan is not None else build_plan(run.config)
    if plan.weights is not None:
        return plan.weights.path
    trained = run.run_dir / TEACHER_BACKBONE_FILE
    return trained if trained.is_file() else None


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


def _eval_preprocess(run: Run) -> Any:
    from cellssl.data.preprocess import EvalPreprocess, build_run_normalizer
    from cellssl.distributed import main_process_first

    plan = run.require_plan()
    source, fingerprint = stats_source(plan)
    with main_process_first():  # rank 0 computes and stores dataset statistics, the others read them
        normalizer = build_run_normalizer(plan.normalize, source, run.run_dir, fingerprint)
    return EvalPreprocess(normalizer, plan.embed.img_size)


def _weighted_backbone(run: Run, channel_names: tuple[str, ...]) -> tuple[nn.Module, Path | None]:
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
    backbone, weights = _weighted_backbone(run, tuple(dataset.channel_names))
    features = plan.embed.features
    if features.n_last_blocks != 1 or features.avgpool:
        from cellssl.models.features import FeatureExtractor

        backbone = FeatureExtractor(backbone, features.n_last_blocks, features.avgpool)
        logger.info("embedding features: %s", backbone.extra_repr())
    identity = {k: v for k, v in embedding_parts(plan, dataset, weights).items() if k != "data"}
    return Embedder(plan.cache["strategy"], backbone, _eval_preprocess(run), precision=plan.embed.precision,
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


def eval_loaders(run: Run) -> tuple[Callable[[], tuple[Any, Any]] | None, Callable[[], tuple[Any, Any]] | None]:
    """Lazy, cached loaders for evaluators that need images or the model (see :class:`EvalContext`).

    :return: ``(load_dataset, load_model)``: ``load_dataset() -> (dataset, preprocess)`` (the embed
        stage's preprocessing) and ``load_model() -> (channel strategy, backbone)`` (the run's weights,
        eval mode, on the run's device; the plain backbone, without the embed stage's feature wrapper).
        Each is ``None`` when the plan lacks ``data`` (or ``backbone``).
    """
    plan = run.require_plan()
    cache: dict[str, tuple[Any, Any]] = {}

    def load_dataset() -> tuple[Any, Any]:
        if "dataset" not in cache:
            cache["dataset"] = (plan_dataset(plan), _eval_preprocess(run))
        return cache["dataset"]

    def load_model() -> tuple[Any, Any]:
        if "model" not in cache:
            dataset = plan_dataset(plan)
            backbone, _ = _weighted_backbone(run, tuple(dataset.channel_names))
            cache["model"] = (plan.cache["strategy"], backbone.to(run.device).eval())
        return cache["model"]

    has_data = plan.data is not None
    has_model = has_data and plan.backbone is not None
    return (load_dataset if has_data else None), (load_model if has_model else None)


def _cached_embedder(run: Run) -> Callable[[], Any] | None:
    """A lazy, cached :func:`run_embedder` for ``EvalContext.embedder`` (``None`` without data or backbone)."""
    plan = run.require_plan()
    if plan.data is None or plan.backbone is None:
        return None
    cache: dict[str, Any] = {}

    def load() -> Any:
        if "embedder" not in cache:
            cache["embedder"] = run_embedder(run)
        return cache["embedder"]

    return load


def eval_stage(run: Run) -> list[dict[str, Any]]:
    """Run every evaluator of ``eval:`` on the run's (complete, current) embeddings; write ``eval/<name>.json``."""
    from cellssl.distributed import is_main_process
    from cellssl.embed.store import read_embeddings
    from cellssl.eval.base import EvalContext

    if not is_main_process():  # evaluation reads every rank's shards, once, on rank 0
        return []
    plan = run.require_plan()
    if not plan.evaluators:
        raise ConfigError("eval", "lists no evaluator; add e.g. `eval: [{name: knn, label_column: label}]`.")
    expected = expected_embedding(run)
    table = read_embeddings(run.run_dir / "embeddings", expected_fingerprint=expected[0] if expected else None,
                            expected_parts=expected[1] if expected else None, lazy=True)
    load_dataset, load_model = eval_loaders(run)
    dataset = plan_dataset(plan) if plan.data is not None else None
    weights = resolve_weights(run) if plan.backbone is not None else None
    context = EvalContext(
        run_dir=run.run_dir,
        label_columns=list(getattr(dataset, "label_columns", ()) or ()),
        label_separator=getattr(dataset, "label_separator", None),
        identity={"dataset": plan.data.as_dict() if plan.data else None,
                  "backbone": plan.backbone.as_dict() if plan.backbone else None,
                  "weights": str(weights) if weights is not None else None},
        load_model=load_model, load_dataset=load_dataset, embedder=_cached_embedder(run), device=str(run.device))
    skipped = int(table.manifest.get("skipped_rows", 0))
    results = []
    names_seen: dict[str, int] = {}
    for evaluator_spec in plan.evaluators:
        evaluator = evaluator_spec.build()
        logger.info("evaluating with %s", evaluator_spec.name)
        result = evaluator.evaluate(table, context)
        name = evaluator_spec.name
        names_seen[name] = names_seen.get(name, 0) + 1
        file_name = name if names_seen[name] == 1 else f"{name}_{names_seen[name]}"
        result = {"evaluator": name, **result,
                  "skipped_rows": {"count": skipped, "file": SKIPPED_FILE if skipped else None}}
        atomic_write_json(run.run_dir / "eval" / f"{file_name}.json", result)
        results.append(result)
    return results


def execute(config: DictConfig | RunPlan, stages: list[str] | None = None, *,
            restart: bool = False) -> tuple[Run, dict[str, Any]]:
    """Execute ``stages`` (default: the plan's) of the run described by ``config``.

    The whole plan is validated and checked first: an error in any section stops the run before any stage
    starts and before the run directory is created or changed.

    :param restart: see :func:`start_run`.
    :return: the run and a mapping stage -> its output (path or results).
    """
    from cellssl.distributed import shutdown_distributed

    plan = config if isinstance(config, RunPlan) else build_plan(config, stages)
    if stages is not None and plan.stages != list(stages):
        plan = build_plan(plan.config, stages)
    try:
        run = start_run(plan, restart=restart)
        outputs: dict[str, Any] = {}
        for stage in plan.stages:
            logger.info("stage %s (run dir %s)", stage, run.run_dir)
            if stage == "train":
                from cellssl.train.stage import train_stage

                outputs[stage] = train_stage(run)
            elif stage == "finetune":
                from cellssl.finetune.stage import finetune_stage

                outputs[stage] = finetune_stage(run)
            elif stage == "embed":
                outputs[stage] = embed_stage(run)
            else:
                outputs[stage] = eval_stage(run)
    finally:
        shutdown_distributed()  # leaves the process group only if start_run joined it
    return run, outputs
