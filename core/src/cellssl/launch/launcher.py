"""Choosing and invoking a launcher from the ``launcher:`` block of a run config."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cellssl.config.validate import validate_block
from cellssl.errors import CellsslError, ConfigError

logger = logging.getLogger(__name__)


@dataclass
class LocalLauncherConfig:
    """``launcher: {name: local}``: run in this process (single process, or one rank under torchrun)."""


def _slurm_config() -> type:
    from cellssl.launch.slurm import SlurmLauncherConfig

    return SlurmLauncherConfig


LAUNCHERS = ("local", "slurm")


@dataclass
class LaunchResult:
    """What :func:`launch` did: the run directory, the stage outputs (local) or the job (slurm)."""

    run_dir: Path
    outputs: dict[str, Any] | None = None
    job: Any = None


def launch(config: DictConfig, stages: list[str] | None = None) -> LaunchResult:
    """Execute the run with the launcher its config names (default ``local``).

    :raises ConfigError: for an unknown launcher or invalid launcher parameters.
    :raises CellsslError: when a waited-for SLURM job fails (the message names its log folder).
    """
    raw = config.get("launcher")
    if raw is None:
        block: dict[str, Any] = {"name": "local"}
    elif isinstance(raw, DictConfig):
        block = OmegaConf.to_container(raw, resolve=True)  # type: ignore[assignment]
    else:
        raise ConfigError("launcher", "must be a mapping, e.g. `launcher: {name: slurm, nodes: 2}`")
    name = block.pop("name", "local")
    if name == "local":
        validate_block(block, LocalLauncherConfig, "launcher")
        from cellssl.pipeline import execute

        run, outputs = execute(config, stages)
        return LaunchResult(run.run_dir, outputs)
    if name != "slurm":
        raise ConfigError("launcher.name", f"unknown launcher '{name}'; launchers are {', '.join(LAUNCHERS)}")
    settings = validate_block(block, _slurm_config(), "launcher")
    from cellssl.launch.slurm import resolve_run_dir, submit

    output_dir = OmegaConf.select(config, "run.output_dir")
    if not output_dir:
        raise ConfigError("run.output_dir", "is required with the slurm launcher (the job writes there; `%j` in it "
                                            "is replaced by the job id), e.g. run.output_dir=runs/vitl_%j")
    run_dir = Path(str(output_dir))
    if "%j" not in str(run_dir):
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
