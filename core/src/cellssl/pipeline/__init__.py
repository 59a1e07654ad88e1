"""The stages a run executes (train, finetune, embed, eval), from one validated :class:`~cellssl.plan.model.RunPlan`.

:func:`execute` builds the plan (every section, every ``eval[i]``, the launcher, the weights) and runs
its cross-section checks before any stage starts or anything is written; then it prepares the run
directory (:func:`cellssl.plan.run_dir.prepare_run_dir`) and runs the stages, each reading its typed
section of the plan:

- ``train`` (when an ``objective`` is configured): ``checkpoints/`` and ``teacher_backbone.pt``;
- ``finetune`` (when a ``finetune`` section is configured): ``finetune/`` and ``eval/finetune.json``;
- ``embed``: ``embeddings/part-*.parquet`` + ``manifest.json`` (written last; resumable by shard);
- ``eval``: ``eval/<evaluator>.json``.

Rows a dataset skipped (``on_corrupt: skip``) are listed in ``skipped.csv`` and counted in the manifest and
in every evaluator's result. The run object and the component builders are in :mod:`cellssl.pipeline.run`, the
embed stage in :mod:`cellssl.pipeline.embedding`, the eval stage in :mod:`cellssl.pipeline.evaluation`.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from cellssl.pipeline.embedding import (
    embed_stage,
    eval_preprocess,
    expected_embedding,
    run_channel_stats,
    run_embedder,
    stats_source,
    weighted_backbone,
)
from cellssl.pipeline.evaluation import eval_loaders, eval_stage
from cellssl.pipeline.run import (
    SKIPPED_FILE,
    TEACHER_BACKBONE_FILE,
    Run,
    build_backbone,
    build_dataset,
    build_strategy,
    resolve_weights,
    seed_everything,
    select_device,
    skipped_count,
    start_run,
)
from cellssl.plan.build import build_plan
from cellssl.plan.model import RunPlan

__all__ = [
    "SKIPPED_FILE", "TEACHER_BACKBONE_FILE", "Run", "build_backbone", "build_dataset", "build_strategy", "embed_stage",
    "eval_loaders", "eval_preprocess", "eval_stage", "execute", "expected_embedding", "resolve_weights",
    "run_channel_stats", "run_embedder", "seed_everything", "select_device", "skipped_count", "start_run",
    "stats_source", "weighted_backbone",
]

logger = logging.getLogger(__name__)


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
