"""The stages a run executes (train, embed, eval), built from a validated run config.

A :class:`Run` holds the resolved config, the run directory and the device. The stage functions take
a :class:`Run` and write their outputs inside its directory:

- ``train`` (when an ``objective`` is configured): ``checkpoints/`` and ``teacher_backbone.pt``;
- ``embed``: ``embeddings/part-*.parquet`` + ``manifest.json``;
- ``eval``: ``eval/<evaluator>.json``.
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
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cellssl.atomic import atomic_write_json
from cellssl.channels.base import ChannelStrategy
from cellssl.config.compose import save_resolved_config
from cellssl.config.schema import STAGES, EmbedSection, NormalizeSection, RunSection
from cellssl.config.validate import build_component, validate_block
from cellssl.data.dataset import CellDataset
from cellssl.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

TEACHER_BACKBONE_FILE = "teacher_backbone.pt"


@dataclass
class Run:
    """A run being executed: its config, directory and device."""

    config: DictConfig
    settings: RunSection
    run_dir: Path
    device: torch.device

    def stages(self) -> list[str]:
        """The stages to execute: ``run.stages``, or those the config's sections call for."""
        if self.settings.stages is not None:
            return list(self.settings.stages)
        stages = []
        if self.config.get("objective") is not None:
            stages.append("train")
        stages.append("embed")
        if self.config.get("eval"):
            stages.append("eval")
        return stages


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


def start_run(config: DictConfig, *, save_config: bool = True) -> Run:
    """Validate the ``run:`` section, seed, set threads, create the run directory, save the config.

    Started by torchrun or the slurm launcher (``WORLD_SIZE > 1``), the process joins the process group
    (:func:`cellssl.train.distributed.init_distributed`, options from ``train.distributed``) and uses the
    device of its local rank; only rank 0 writes the config.
    """
    from cellssl.train.distributed import init_distributed, is_main_process

    settings = validate_block(config.get("run"), RunSection, "run")
    seed_everything(settings.seed)
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    backend = str(OmegaConf.select(config, "train.distributed.backend", default="auto"))
    if backend not in ("auto", "nccl", "gloo"):
        raise ConfigError("train.distributed.backend", f"must be auto, nccl or gloo, got {backend!r}")
    timeout = int(OmegaConf.select(config, "train.distributed.timeout_minutes", default=30))
    device = init_distributed(select_device(settings.device), backend, timeout).device
    run_dir = Path(settings.output_dir or "runs/run")
    run_dir.mkdir(parents=True, exist_ok=True)
    if save_config and is_main_process():
        save_resolved_config(config, run_dir)
    return Run(config, settings, run_dir, device)


def build_dataset(config: DictConfig, key: str = "data") -> CellDataset:
    """Build the dataset of ``config.<key>``."""
    dataset = build_component(config.get(key), "dataset", key)
    logger.info("%s", dataset.describe())
    return dataset


def build_strategy(config: DictConfig) -> ChannelStrategy:
    """Build the channel strategy of ``config.channels`` (default ``fixed``)."""
    block = config.get("channels")
    return build_component(block if block is not None else {"name": "fixed"}, "channel_strategy", "channels")


def build_backbone(config: DictConfig, strategy: ChannelStrategy, channel_names: tuple[str, ...]) -> nn.Module:
    """Build ``config.backbone`` with the strategy's ``in_chans`` for ``channel_names``."""
    if config.get("backbone") is None:
        raise ConfigError("backbone", "is required, e.g. `backbone: {name: vit_small, patch_size: 16}`.")
    return build_component(config.backbone, "backbone", "backbone", in_chans=strategy.in_chans(channel_names))


def resolve_weights(run: Run) -> Path | None:
    """The backbone weights to embed with: ``weights:``, else this run's trained teacher, else none."""
    weights = run.config.get("weights")
    if weights:
        path = Path(str(weights))
        if not path.is_file():
            raise CheckpointError(
                f"config key 'weights': checkpoint file '{path}' does not exist. Point it at a backbone "
                f"checkpoint (e.g. a run's {TEACHER_BACKBONE_FILE}) or remove it to embed with random weights."
            )
        return path
    trained = run.run_dir / TEACHER_BACKBONE_FILE
    return trained if trained.is_file() else None


def embed_stage(run: Run) -> Path:
    """Embed the dataset into ``run_dir/embeddings`` and return that folder."""
    from cellssl.data.preprocess import build_eval_preprocess
    from cellssl.eval.distributed_embed import clear_embedding_dir, embedding_share, finish_embedding
    from cellssl.eval.export import export_embeddings
    from cellssl.models.checkpoint import load_backbone_weights
    from cellssl.train.distributed import main_process_first

    dataset = build_dataset(run.config)
    strategy = build_strategy(run.config)
    embed = validate_block(run.config.get("embed"), EmbedSection, "embed")
    backbone = build_backbone(run.config, strategy, tuple(dataset.channel_names))
    weights = resolve_weights(run)
    if weights is not None:
        load_backbone_weights(backbone, weights)
        logger.info("loaded backbone weights from %s", weights)
    else:
        logger.warning("embedding with a randomly initialised backbone (no `weights:` and no trained teacher)")
    features = embed.features
    if features.n_last_blocks != 1 or features.avgpool:
        from cellssl.models.features import FeatureExtractor

        backbone = FeatureExtractor(backbone, features.n_last_blocks, features.avgpool)
        logger.info("embedding features: %s", backbone.extra_repr())
    normalize = validate_block(run.config.get("normalize"), NormalizeSection, "normalize")
    with main_process_first():  # rank 0 computes and stores dataset statistics, the others read them
        preprocess = build_eval_preprocess(embed, normalize, dataset, run.run_dir)
    limit = embed.limit if embed.limit is not None else len(dataset)
    out_dir = run.run_dir / "embeddings"
    clear_embedding_dir(out_dir)
    indices, shard_prefix = embedding_share(min(limit, len(dataset)))  # this rank's share (all of it alone)
    export_embeddings(
        dataset, strategy, backbone, out_dir,
        preprocess=preprocess, batch_size=embed.batch_size, num_workers=embed.num_workers,
        precision=embed.precision, device=run.device, shard_rows=embed.shard_rows,
        indices=indices, shard_prefix=shard_prefix,
        manifest_info={"backbone": OmegaConf.to_container(run.config.backbone, resolve=True),
                       "weights": str(weights) if weights else None,
                       "features": {"n_last_blocks": features.n_last_blocks, "avgpool": features.avgpool},
                       "dataset": OmegaConf.to_container(run.config.data, resolve=True)},
    )
    finish_embedding()
    return out_dir


def eval_loaders(run: Run) -> tuple[Callable[[], tuple[Any, Any]] | None, Callable[[], tuple[Any, Any]] | None]:
    """Lazy, cached loaders for evaluators that need images or the model (see :class:`EvalContext`).

    :return: ``(load_dataset, load_model)``: ``load_dataset() -> (dataset, preprocess)`` (the embed
        stage's preprocessing) and ``load_model() -> (channel strategy, backbone)`` (the run's weights,
        eval mode, on the run's device; the plain backbone, without the embed stage's feature wrapper).
        Each is ``None`` when the config lacks ``data`` (or ``backbone``).
    """
    cache: dict[str, tuple[Any, Any]] = {}

    def load_dataset() -> tuple[Any, Any]:
        if "dataset" not in cache:
            from cellssl.data.preprocess import build_eval_preprocess

            dataset = build_dataset(run.config)
            embed = validate_block(run.config.get("embed"), EmbedSection, "embed")
            normalize = validate_block(run.config.get("normalize"), NormalizeSection, "normalize")
            cache["dataset"] = (dataset, build_eval_preprocess(embed, normalize, dataset, run.run_dir))
        return cache["dataset"]

    def load_model() -> tuple[Any, Any]:
        if "model" not in cache:
            from cellssl.models.checkpoint import load_backbone_weights

            dataset, _ = load_dataset()
            strategy = build_strategy(run.config)
            backbone = build_backbone(run.config, strategy, tuple(dataset.channel_names))
            weights = resolve_weights(run)
            if weights is not None:
                load_backbone_weights(backbone, weights)
            cache["model"] = (strategy, backbone.to(run.device).eval())
        return cache["model"]

    has_data = run.config.get("data") is not None
    has_model = has_data and run.config.get("backbone") is not None
    return (load_dataset if has_data else None), (load_model if has_model else None)


def _weights_identity(run: Run) -> str | None:
    """The weights the run's backbone uses, for result identities (``None``: random initialisation)."""
    if not run.config.get("backbone"):
        return None
    weights = resolve_weights(run)
    return str(weights) if weights is not None else None


def eval_stage(run: Run) -> list[dict[str, Any]]:
    """Run every evaluator of ``eval:`` on the run's embeddings; write ``eval/<name>.json`` each."""
    from cellssl.eval.base import EvalContext
    from cellssl.eval.embeddings import read_embeddings
    from cellssl.train.distributed import is_main_process

    if not is_main_process():  # evaluation reads every rank's shards, once, on rank 0
        return []
    blocks = run.config.get("eval") or []
    if not blocks:
        raise ConfigError("eval", "lists no evaluator; add e.g. `eval: [{name: knn, label_column: label}]`.")
    table = read_embeddings(run.run_dir / "embeddings")
    load_dataset, load_model = eval_loaders(run)
    context = EvalContext(run_dir=run.run_dir, identity={
        "dataset": OmegaConf.to_container(run.config.get("data"), resolve=True) if run.config.get("data") else None,
        "backbone": OmegaConf.to_container(run.config.get("backbone"), resolve=True)
        if run.config.get("backbone") else None,
        "weights": _weights_identity(run),
    }, load_model=load_model, load_dataset=load_dataset, device=str(run.device))
    results = []
    names_seen: dict[str, int] = {}
    for position, block in enumerate(blocks):
        key = f"eval[{position}]"
        evaluator = build_component(block, "evaluator", key)
        logger.info("evaluating with %s", block.get("name"))
        result = evaluator.evaluate(table, context)
        name = str(block.get("name"))
        names_seen[name] = names_seen.get(name, 0) + 1
        file_name = name if names_seen[name] == 1 else f"{name}_{names_seen[name]}"
        result = {"evaluator": name, **result}
        atomic_write_json(run.run_dir / "eval" / f"{file_name}.json", result)
        results.append(result)
    return results


def execute(config: DictConfig, stages: list[str] | None = None) -> tuple[Run, dict[str, Any]]:
    """Execute ``stages`` (default: :meth:`Run.stages`) of the run described by ``config``.

    :return: the run and a mapping stage -> its output (path or results).
    """
    from cellssl.train.distributed import shutdown_distributed

    run = start_run(config)
    todo = stages if stages is not None else run.stages()
    outputs: dict[str, Any] = {}
    try:
        for stage in todo:
            if stage not in STAGES:
                raise ConfigError("run.stages", f"unknown stage '{stage}'; stages are {STAGES}")
            logger.info("stage %s (run dir %s)", stage, run.run_dir)
            if stage == "train":
                from cellssl.train.stage import train_stage

                outputs[stage] = train_stage(run)
            elif stage == "embed":
                outputs[stage] = embed_stage(run)
            else:
                outputs[stage] = eval_stage(run)
    finally:
        shutdown_distributed()  # leaves the process group only if start_run joined it
    return run, outputs
