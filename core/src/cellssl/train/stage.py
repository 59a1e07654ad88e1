"""The ``train`` stage of a run: build data, channel strategy, backbone and objective from the config, train,
and export the teacher backbone to ``run_dir/teacher_backbone.pt`` for the ``embed`` stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from cellssl.config.schema import NormalizeSection
from cellssl.config.validate import validate_block
from cellssl.data.normalize import NormalizeConfig
from cellssl.errors import ConfigError
from cellssl.train.config import TrainSection

if TYPE_CHECKING:
    from cellssl.pipeline import Run
    from cellssl.train.trainer import Callback, TrainResult

logger = logging.getLogger(__name__)

def load_train_section(block: Any) -> TrainSection:
    """Validate the ``train:`` block (``None``: all defaults).

    :raises ConfigError: naming the key (``train.lr``) for a wrong or unknown value.
    """
    return validate_block(block, TrainSection, "train")


def check_view_normalize(config: Any, objective: Any, normalize: NormalizeSection) -> None:
    """A ``normalize`` block under ``objective.multicrop`` must agree with the top-level ``normalize:``.

    Training normalises every view with the top-level section, the one embedding uses; a differing block
    under the objective would be ignored silently, so it is an error.

    :raises ConfigError: naming ``objective.multicrop.normalize``.
    """
    if OmegaConf.select(config, "objective.multicrop.normalize") is None:
        return
    views = getattr(getattr(getattr(objective, "config", None), "multicrop", None), "normalize", None)
    if not isinstance(views, NormalizeConfig):
        return
    if (views.mode, views.eps, views.stats_path) != (normalize.mode, normalize.eps, normalize.stats_path):
        raise ConfigError(
            "objective.multicrop.normalize",
            f"asks for mode {views.mode!r} but the top-level `normalize:` section has mode {normalize.mode!r}. "
            "Training and embedding both normalise with the top-level section: set it there and remove "
            "objective.multicrop.normalize.",
        )


def train_run(run: Run, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train the run's objective and export the teacher; returns the :class:`TrainResult`.

    Reads the run's checked plan (datasets, strategy, backbone, objective, ``train`` and ``normalize``
    sections); nothing is re-validated here.

    :raises ConfigError: if the plan has no objective.
    :raises cellssl.errors.TrainingDivergedError: on a NaN/inf loss (the last good checkpoint is kept).
    :raises cellssl.errors.CheckpointError: see :meth:`cellssl.train.trainer.Trainer.resume`.
    """
    from cellssl.data.preprocess import build_run_normalizer
    from cellssl.distributed import main_process_first
    from cellssl.pipeline import TEACHER_BACKBONE_FILE, build_backbone, stats_source
    from cellssl.plan.checks import plan_dataset
    from cellssl.train.trainer import Trainer

    plan = run.require_plan()
    if plan.objective is None:
        raise ConfigError("objective", "is required to train, e.g. `objective: {name: dino}` (see configs/train/).")
    section = plan.train
    dataset = plan_dataset(plan)
    extras = [plan_dataset(plan, entry.data.key) for entry in plan.extra_datasets]
    datasets = [dataset, *extras]
    strategy = plan.cache["strategy"]
    channel_names = tuple(dataset.channel_names)
    train_sets = [strategy.training_dataset(d) for d in datasets]
    normalize = plan.normalize
    source, fingerprint = stats_source(plan)
    with main_process_first():  # rank 0 computes and stores the statistics, the other ranks read them
        normalizer = build_run_normalizer(normalize, source, run.run_dir, fingerprint)

    def backbone_factory() -> Any:
        return build_backbone(plan, strategy, channel_names)

    objective = plan.objective.build(backbone_factory=backbone_factory)
    check_view_normalize(plan.config, objective, normalize)
    logger.info("%s; strategy %s; %d training samples from %d dataset(s)", objective.describe(), strategy.describe(),
                sum(len(t) for t in train_sets), len(train_sets))
    weights = [section.data_weight] + [e.weight for e in plan.extra_datasets] if extras else None
    trainer = Trainer(objective, train_sets, normalizer, section, run.run_dir, run.device, run.settings.seed,
                      weights=weights, callbacks=callbacks or [], teacher_file=TEACHER_BACKBONE_FILE)
    result = trainer.fit()
    logger.info("training %s at step %d/%d; teacher backbone -> %s",
                "complete" if result.completed else "stopped", result.step, result.total_steps,
                run.run_dir / TEACHER_BACKBONE_FILE)
    return result


def train_stage(run: Run) -> Path:
    """The pipeline's ``train`` stage: :func:`train_run`; returns ``run_dir/teacher_backbone.pt``."""
    from cellssl.pipeline import TEACHER_BACKBONE_FILE

    train_run(run)
    return run.run_dir / TEACHER_BACKBONE_FILE

