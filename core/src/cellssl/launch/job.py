"""The entry function every launcher executes: :class:`RunJob`."""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import OmegaConf

logger = logging.getLogger(__name__)


class RunJob:
    """Execute the stages of a run config; checkpointable for submitit's requeue on preemption/timeout.

    The job carries the resolved config as YAML text (no other state), so a requeued job simply runs
    again: training resumes from the run directory's last checkpoint.

    :param config_yaml: the resolved run config.
    :param stages: stages to execute (``None``: what the config calls for).
    """

    def __init__(self, config_yaml: str, stages: list[str] | None = None) -> None:
        self.config_yaml = config_yaml
        self.stages = stages

    def __call__(self) -> str:
        """Run the stages; under submitit, export the torch.distributed environment first.

        :return: the run directory.
        """
        from cellssl.pipeline import execute

        if _under_submitit():
            import submitit

            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            logger.info("submitit task: rank %d of %d (local rank %d), master %s:%s",
                        env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port)
        config = OmegaConf.create(self.config_yaml)
        run, _ = execute(config, self.stages)
        return str(run.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on preemption or timeout: requeue the same job.

        Training state is restored from the run directory's last periodic checkpoint (written every
        ``train.checkpoint_every_steps``), so nothing is saved here, in the middle of a step.
        """
        import submitit

        logger.warning("preempted or timed out: requeueing; training resumes from the last checkpoint")
        return submitit.helpers.DelayedSubmission(RunJob(self.config_yaml, self.stages))


def _under_submitit() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ
