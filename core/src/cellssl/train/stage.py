"""The ``train`` stage of a run: build data, channel strategy, backbone and objective from the config, train,
and export the teacher backbone to ``run_dir/teacher_backbone.pt`` for the ``embed`` stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from torch.utils.data import ConcatDataset

from cellssl.config.schema import NormalizeSection
from cellssl.config.validate import build_component, validate_block
from cellssl.data.normalize import NormalizeConfig
from cellssl.errors import ConfigError
from cellssl.train.checkpointing import latest_checkpoint, missing_checkpoint_error
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

    :raises ConfigError: if ``objective:`` is missing or a block is invalid; with extra datasets, if the
        strategy cannot mix them (``fixed`` needs the same channels in every dataset).
    :raises cellssl.errors.TrainingDivergedError: on a NaN/inf loss (the last good checkpoint is kept).
    :raises cellssl.errors.CheckpointError: see :meth:`cellssl.train.trainer.Trainer.resume`.
    """
    from cellssl.data.preprocess import build_run_normalizer
    from cellssl.pipeline import TEACHER_BACKBONE_FILE, build_backbone, build_dataset, build_strategy
    from cellssl.train.distributed import main_process_first
    from cellssl.train.trainer import Trainer

    config = run.config
    if config.get("objective") is None:
        raise ConfigError("objective", "is required to train, e.g. `objective: {name: dino}` (see configs/train/).")
    section = load_train_section(config.get("train"))
    if section.resume and latest_checkpoint(run.run_dir) is None:
        raise missing_checkpoint_error(run.run_dir)
    dataset = build_dataset(config)
    extras = [build_component(entry.data, "dataset", f"train.extra_datasets[{i}].data")
              for i, entry in enumerate(section.extra_datasets)]
    datasets = [dataset, *extras]
    strategy = build_strategy(config)
    channel_names = tuple(dataset.channel_names)
    for i, extra in enumerate(extras):
        if strategy.in_chans(extra.channel_names) != strategy.in_chans(channel_names):
            raise ConfigError(
                f"train.extra_datasets[{i}]",
                f"has channels {list(extra.channel_names)} but `data:` has {list(channel_names)}; the "
                f"'{strategy.name}' strategy needs the same channels in every dataset (use bag_of_channels or "
                "per_channel_concat to mix datasets with different channels).",
            )
    train_sets = [strategy.training_dataset(d) for d in datasets]
    normalize = validate_block(config.get("normalize"), NormalizeSection, "normalize")
    stats_source = dataset if not extras else ConcatDataset(datasets)
    with main_process_first():  # rank 0 computes and stores the statistics, the other ranks read them
        normalizer = build_run_normalizer(normalize, stats_source, run.run_dir)  # type: ignore[arg-type]

    def backbone_factory() -> Any:
        return build_backbone(config, strategy, channel_names)

    objective = build_component(config.objective, "objective", "objective", backbone_factory=backbone_factory)
    check_view_normalize(config, objective, normalize)
    logger.info("%s; strategy %s; %d training samples from %d dataset(s)", objective.describe(), strategy.describe(),
                sum(len(t) for t in train_sets), len(train_sets))
    weights = [section.data_weight] + [e.weight for e in section.extra_datasets] if extras else None
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

