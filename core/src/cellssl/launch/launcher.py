"""Choosing and invoking a launcher from the ``launcher:`` block of a run config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cellssl.errors import CellsslError, ConfigError

logger = logging.getLogger(__name__)


@dataclass
class LocalLauncherConfig:
    """``launcher: {name: local}``: run in this process (single process, or one rank under torchrun)."""


LAUNCHERS = ("local", "slurm")


@dataclass
class LaunchResult:
    """What :func:`launch` did: the run directory, the stage outputs (local) or the job (slurm)."""

    run_dir: Path
    outputs: dict[str, Any] | None = None
    job: Any = None


def launch(config: DictConfig, stages: list[str] | None = None, *, restart: bool = False) -> LaunchResult:
    """Validate the whole run plan, then execute the run with the launcher its config names (default ``local``).

    The plan (every section, every ``eval[i]``, the launcher, the weights) is built and checked before anything
    runs or is submitted, so a mistake anywhere is reported at once.

    :param restart: start over in a run directory whose finished outputs came from another config.
    :raises ConfigError: for an invalid plan, an unknown launcher or invalid launcher parameters.
    :raises CellsslError: when a waited-for SLURM job fails (the message names its log folder).
    """
    from cellssl.plan.build import build_plan
    from cellssl.plan.checks import check_plan

    plan = build_plan(config, stages)
    if plan.launcher.name == "local":
        from cellssl.pipeline import execute

        run, outputs = execute(plan, stages, restart=restart)
        return LaunchResult(run.run_dir, outputs)
    check_plan(plan)
    settings = plan.launcher.settings
    from cellssl.launch.slurm import resolve_run_dir, submit

    output_dir = OmegaConf.select(config, "run.output_dir")
    if not output_dir:
        raise ConfigError("run.output_dir", "is required with the slurm launcher (the job writes there; `%j` in it "
                                            "is replaced by the job id), e.g. run.output_dir=runs/vitl_%j")
    run_dir = Path(str(output_dir))
    if "%j" not in str(run_dir):
        from cellssl.plan.run_dir import prepare_run_dir

        prepare_run_dir(plan, restart=restart, write=False)  # refuse a mismatched run directory before submitting
        run_dir.mkdir(parents=True, exist_ok=True)
    job_config = config.copy()
    job_config.launcher = None  # the job itself runs locally
    job = submit(settings, OmegaConf.to_yaml(job_config, resolve=True), run_dir, stages)
    run_dir = resolve_run_dir(run_dir, str(job.job_id))
    if settings.wait:
        try:
            job.results()
        except Exception as exc:
            raise CellsslError(f"job {job.job_id} failed: {exc}. Logs: {job.paths.folder} and {run_dir / 'logs'}"
                               ) from exc
    return LaunchResult(run_dir, None, job)
