"""The entry function every launcher executes: :class:`RunJob`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

logger = logging.getLogger(__name__)

JOB_ID_PATTERN = "%j"
LOG_DIR = "logs"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunJob:
    """Execute the stages of a run config; checkpointable for submitit's requeue on preemption/timeout.

    The job carries the resolved config as YAML text (no other state), so a requeued job simply runs
    again: training resumes from the run directory's last checkpoint.

    Under submitit (the ``slurm`` launcher) each task exports the torch.distributed environment, replaces
    ``%j`` in ``run.output_dir`` by the job id (a requeued job keeps its id, hence its run directory), and logs
    to ``<run_dir>/logs/<job id>_rank<r>.log`` besides submitit's own stdout/stderr files.

    :param config_yaml: the resolved run config.
    :param stages: stages to execute (``None``: what the config calls for).
    :param attempt: 1 for the first submission, +1 at every requeue.
    """

    def __init__(self, config_yaml: str, stages: list[str] | None = None, attempt: int = 1) -> None:
        self.config_yaml = config_yaml
        self.stages = stages
        self.attempt = attempt

    def __call__(self) -> str:
        """Run the stages; under submitit, export the torch.distributed environment first.

        :return: the run directory.
        """
        from cellssl.pipeline import execute

        config = OmegaConf.create(self.config_yaml)
        job_id, rank, handler = None, 0, None
        if _under_submitit():
            import submitit

            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            job_id, rank = str(submitit.JobEnvironment().job_id), env.rank
            output_dir = OmegaConf.select(config, "run.output_dir")
            if output_dir and JOB_ID_PATTERN in str(output_dir):
                config.run.output_dir = str(output_dir).replace(JOB_ID_PATTERN, job_id)
            handler = _log_to_run_dir(config, job_id, rank)
            logger.info("submitit job %s, attempt %d: rank %d of %d (local rank %d), master %s:%s", job_id,
                        self.attempt, env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port)
        try:
            run, _ = execute(config, self.stages)
        finally:
            if handler is not None:
                logging.getLogger().removeHandler(handler)
                handler.close()
        return str(run.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or timeout: requeue the same job.

        Training state is restored from the run directory's last periodic checkpoint (written every
        ``train.checkpoint_every_steps``), so nothing is saved here, in the middle of a step.
        """
        import submitit

        logger.warning("preempted or timed out (attempt %d): requeueing; training resumes from the last checkpoint",
                       self.attempt)
        return submitit.helpers.DelayedSubmission(RunJob(self.config_yaml, self.stages, self.attempt + 1))


def _under_submitit() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ


def _log_to_run_dir(config: Any, job_id: str, rank: int) -> logging.Handler | None:
    """INFO logging to stderr (submitit's log file) and to ``<run_dir>/logs/<job id>_rank<r>.log``."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("cellssl").setLevel(logging.INFO)
    output_dir = OmegaConf.select(config, "run.output_dir")
    if not output_dir:
        return None
    folder = Path(str(output_dir)) / LOG_DIR
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(folder / f"{job_id}_rank{rank}.log")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    return handler
