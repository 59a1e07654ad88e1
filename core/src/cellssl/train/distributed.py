"""Each rank's share of the training data (:class:`ShardedBatchPlan`), and the process-group helpers of
:mod:`cellssl.distributed` (re-exported here).

``train.batch_size`` is the global batch. :class:`ShardedBatchPlan` cuts every global batch of the
single-process :class:`~cellssl.train.data.BatchPlan` into ``W`` contiguous slices, one per rank, so the
union over ranks of a step is exactly the single-process batch (same samples, same augmentation seeds):
over an epoch every training sample (for ``bag_of_channels`` every (image, channel) pair) is used once, by
one rank. As in the single-process plan, an epoch holds ``steps_per_epoch`` full batches; when the epoch
length is not a multiple of the global batch the remaining ``epoch_length mod batch_size`` samples (a
different random subset each epoch) wait for a later epoch. The position in the data is the global sample
count ``step * batch_size``; it does not depend on the number of processes, so a run saved with 2 processes
resumes with 1 and vice versa, in the middle of an epoch too (:func:`data_position`).
"""

from __future__ import annotations

from typing import Any

from cellssl.distributed import (
    DistEnv,
    barrier,
    configure_rank_logging,
    current_env,
    env_ranks,
    get_rank,
    get_world_size,
    init_distributed,
    is_initialized,
    is_main_process,
    main_process_first,
    rank_range,
    rank_shard_prefix,
    shutdown_distributed,
)
from cellssl.errors import ConfigError
from cellssl.train.data import Batch, BatchPlan

__all__ = [
    "DistEnv", "ShardedBatchPlan", "barrier", "configure_rank_logging", "current_env", "data_position", "env_ranks",
    "get_rank", "get_world_size", "init_distributed", "is_initialized", "is_main_process", "main_process_first",
    "rank_range", "rank_shard_prefix", "shard_plan", "shutdown_distributed",
]


def data_position(samples_seen: int, batch_size: int, steps_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batch in epoch)`` of the next batch after ``samples_seen`` samples of global batches.

    :raises ValueError: if ``samples_seen`` is not a whole number of global batches.
    """
    if samples_seen % batch_size:
        raise ValueError(f"{samples_seen} samples is not a whole number of batches of {batch_size}")
    return divmod(samples_seen // batch_size, steps_per_epoch)


class ShardedBatchPlan:
    """Rank ``rank``'s share of every global batch of ``plan`` (see the module docstring).

    Same interface as :class:`~cellssl.train.data.BatchPlan` (``batches``, ``steps_per_epoch``,
    ``state_dict``); the state is the global plan's, so it does not depend on the number of processes.

    :param plan: the global plan (``plan.batch_size`` is the global batch).
    :param rank: this process's rank. :param world_size: number of processes.
    :raises ConfigError: naming ``train.batch_size`` when it is not a multiple of ``world_size``.
    """

    def __init__(self, plan: BatchPlan, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
        if plan.batch_size % world_size:
            raise ConfigError(
                "train.batch_size",
                f"is {plan.batch_size}, the global batch, which must be a multiple of the {world_size} processes; "
                f"use e.g. {max(world_size, plan.batch_size // world_size * world_size)}.",
            )
        self.plan = plan
        self.rank = rank
        self.world_size = world_size
        self.batch_size = plan.batch_size
        self.local_batch_size = plan.batch_size // world_size
        self.steps_per_epoch = plan.steps_per_epoch
        self.sizes = plan.sizes

    def epoch(self, epoch: int) -> Any:
        """The global plan's ``(indices, seeds)`` of ``epoch``."""
        return self.plan.epoch(epoch)

    def batches(self, epoch: int, start: int = 0) -> list[Batch]:
        """This rank's slices of global batches ``start .. steps_per_epoch - 1`` of ``epoch``."""
        lo = self.rank * self.local_batch_size
        hi = lo + self.local_batch_size
        return [batch[lo:hi] for batch in self.plan.batches(epoch, start)]

    def state_dict(self) -> dict[str, Any]:
        """The global plan's parameters (world-size independent)."""
        return self.plan.state_dict()


def shard_plan(plan: BatchPlan, env: DistEnv | None = None) -> BatchPlan | ShardedBatchPlan:
    """``plan`` itself for one process, else this rank's :class:`ShardedBatchPlan`."""
    rank, world = (env.rank, env.world_size) if env is not None else (get_rank(), get_world_size())
    return plan if world == 1 else ShardedBatchPlan(plan, rank, world)
