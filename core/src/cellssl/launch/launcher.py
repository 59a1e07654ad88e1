"""Launchers, a component kind: where a validated run plan executes (:class:`Launcher`, :func:`launch`).

The core registers ``local`` (this process, or one rank under torchrun) and ``slurm`` (a job through
submitit, :mod:`cellssl.launch.slurm`) through the ``cellssl_register_launchers`` hook; a plugin adds its own
the same way. A run config names one with ``launcher: {name: ..., <params>}`` (default ``local``); the block
is validated with the rest of the plan.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from cellssl.launch.launcher_config import LocalLauncherConfig

if TYPE_CHECKING:
    from cellssl.plan.model import RunPlan

logger = logging.getLogger(__name__)

__all__ = ["LaunchResult", "Launcher", "LocalLauncher", "LocalLauncherConfig", "build_local_launcher", "launch"]


@dataclass
class LaunchResult:
    """What a launcher did: the run directory, the stage outputs (in-process) or the submitted job."""

    run_dir: Path
    outputs: dict[str, Any] | None = None
    job: Any = None


class Launcher(ABC):
    """Executes a validated :class:`~cellssl.plan.model.RunPlan`. Subclasses set :attr:`name`."""

    name: str = ""

    @abstractmethod
    def launch(self, plan: RunPlan, stages: list[str] | None, *, restart: bool = False) -> LaunchResult:
        """Run (or submit) ``stages`` of ``plan`` (``None``: the plan's stages).

        :param restart: start over in a run directory whose finished outputs came from another config.
        :raises cellssl.errors.CellsslError: for a mistake the user can fix (the message says what to do).
        """


class LocalLauncher(Launcher):
    """Runs the plan in this process (one rank under torchrun)."""

    name = "local"

    def __init__(self, config: LocalLauncherConfig) -> None:
        self.config = config

    def launch(self, plan: RunPlan, stages: list[str] | None, *, restart: bool = False) -> LaunchResult:
        from cellssl.pipeline import execute

        run, outputs = execute(plan, stages, restart=restart)
        return LaunchResult(run.run_dir, outputs)


def build_local_launcher(config: LocalLauncherConfig) -> LocalLauncher:
    """Factory of the ``local`` launcher."""
    return LocalLauncher(config)


def launch(config: DictConfig | RunPlan, stages: list[str] | None = None, *, restart: bool = False) -> LaunchResult:
    """Validate the whole run plan, then hand it to the launcher its config names (default ``local``).

    The plan (every section, every ``eval[i]``, the launcher, the weights) is built before anything runs or is
    submitted, so a mistake anywhere is reported at once.

    :param config: a run config, or a plan already built from one (:func:`cellssl.plan.build.build_plan`); a plan
        is used as it is when ``stages`` is ``None`` or its own stages, so what the run's checks build (its
        datasets, ``plan.cache``) stays readable by the caller afterwards (``local`` launcher).
    :param restart: start over in a run directory whose finished outputs came from another config.
    :raises ConfigError: for an invalid plan or launcher block.
    :raises CellsslError: from the launcher (e.g. a waited-for SLURM job that failed).
    """
    from cellssl.plan.build import build_plan
    from cellssl.plan.model import RunPlan

    if isinstance(config, RunPlan):
        plan = config if stages is None or list(stages) == config.stages else build_plan(config.config, stages)
    else:
        plan = build_plan(config, stages)
    launcher = plan.launcher.build()
    logger.debug("launching with %s", plan.launcher.name)
    return launcher.launch(plan, stages, restart=restart)
