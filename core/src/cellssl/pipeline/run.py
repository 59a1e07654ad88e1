"""The run being executed (:class:`Run`), its start (:func:`start_run`) and the component builders every stage uses."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from cellssl.atomic import atomic_write_text
from cellssl.channels.base import ChannelStrategy
from cellssl.config.schema import RunSection
from cellssl.data.dataset import CellDataset
from cellssl.errors import ConfigError
from cellssl.plan.build import build_plan, component, data_spec
from cellssl.plan.checks import build_dataset as build_dataset_spec
from cellssl.plan.checks import check_plan
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
