"""torch.distributed for cellssl: process-group setup, rank helpers and each rank's share of the data.

A run becomes distributed when it is started with ``WORLD_SIZE > 1`` in its environment: by ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or by the ``slurm`` launcher
(submitit exports the same variables). :func:`init_distributed` then joins the process group (``nccl`` on
CUDA, ``gloo`` on CPU) and picks the device ``cuda:LOCAL_RANK``; without those variables everything here is
a no-op and the run is a plain single process.

Data: ``train.batch_size`` is the global batch. :class:`ShardedBatchPlan` cuts every global batch of the
single-process :class:`~cellssl.train.data.BatchPlan` into ``W`` contiguous slices, one per rank, so the
union over ranks of a step is exactly the single-process batch (same samples, same augmentation seeds):
over an epoch every training sample (for ``bag_of_channels`` every (image, channel) pair) is used once, by
one rank. As in the single-process plan, an epoch holds ``steps_per_epoch`` full batches; when the epoch
length is not a multiple of the global batch the remaining ``epoch_length mod batch_size`` samples (a
different random subset each epoch) wait for a later epoch. The position in the data is the global sample
count ``step * batch_size``; it does not depend on the number of processes, so a run saved with 2 processes
resumes with 1 and vice versa, in the middle of an epoch too (:func:`data_position`).

Writing: only rank 0 writes files and logs at INFO level (:func:`configure_rank_logging`); the other ranks
log warnings and errors only. Embedding shards use :func:`rank_range` and :func:`rank_shard_prefix`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from cellssl.errors import ConfigError
from cellssl.train.data import Batch, BatchPlan

logger = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_STATE: dict[str, bool] = {"initialised_here": False}


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, the number of processes, its device and the backend.

    :ivar rank: global rank (0 .. world_size - 1). :ivar world_size: number of processes.
    :ivar local_rank: rank on this node (selects the GPU). :ivar device: the device this process uses.
    :ivar backend: ``nccl`` / ``gloo``, or None for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError("", f"environment variable {name}={value!r} is not an integer; it is set by torchrun "
                              "or submitit: unset it to run a single process.") from None


def env_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment (``(0, 1, 0)`` when unset).

    :raises ConfigError: when the values are not integers or the rank is out of range.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError("", f"inconsistent distributed environment RANK={rank}, WORLD_SIZE={world}, "
                              f"LOCAL_RANK={local}: need 0 <= RANK < WORLD_SIZE; launch with torchrun or the "
                              "slurm launcher, or unset these variables for a single process.")
    return rank, world, local


def is_initialized() -> bool:
    """Whether a torch.distributed process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0 (or a single process)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (nothing without a process group)."""
    if is_initialized():
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (e.g. compute and store dataset statistics once,
    which the others then read)."""
    if not is_initialized():
        yield
        return
    if not is_main_process():
        dist.barrier()
    try:
        yield
    finally:
        if is_main_process():
            dist.barrier()


def configure_rank_logging(rank: int) -> None:
    """Rank 0 logs as configured; the other ranks log warnings and errors only (their progress is rank 0's)."""
    if rank != 0:
        logging.getLogger("cellssl").setLevel(logging.WARNING)


def init_distributed(device: torch.device, backend: str = "auto", timeout_minutes: int = 30) -> DistEnv:
    """Join the process group described by the environment, once per process; return this process's place.

    :param device: the device the run asked for (``cuda`` becomes ``cuda:LOCAL_RANK``).
    :param backend: ``auto`` (``nccl`` on CUDA, ``gloo`` on CPU), ``nccl`` or ``gloo``.
    :param timeout_minutes: collective timeout.
    :return: the :class:`DistEnv`; a single process (``WORLD_SIZE`` unset or 1) gets rank 0 of 1 and no group.
    :raises ConfigError: for an inconsistent environment, missing ``MASTER_ADDR`` / ``MASTER_PORT``, or
        ``nccl`` without CUDA.
    """
    rank, world, local = env_ranks()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    if is_initialized():
        return DistEnv(dist.get_rank(), dist.get_world_size(), local, device, str(dist.get_backend()))
    if world == 1:
        return DistEnv(0, 1, 0, device, None)
    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(key)]
    if missing:
        raise ConfigError("", f"WORLD_SIZE={world} but {' and '.join(missing)} not set; start the run with "
                              "torchrun (python -m torch.distributed.run) or the slurm launcher.")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("train.distributed.backend", "is 'nccl' but the run uses the CPU; use 'gloo' or 'auto'.")
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=timeout_minutes),
                            device_id=device if device.type == "cuda" else None)
    _STATE["initialised_here"] = True
    configure_rank_logging(rank)
    logger.info("torch.distributed: %d processes, backend %s, rank 0 on %s", world, backend, device)
    return DistEnv(rank, world, local, device, backend)


def shutdown_distributed() -> None:
    """Leave the process group if :func:`init_distributed` created it (at the end of a run)."""
    if _STATE["initialised_here"] and is_initialized():
        dist.destroy_process_group()
    _STATE["initialised_here"] = False


# ----------------------------------------------------------------------------- data


def rank_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)``: shares differ in size by at most one, cover every
    index exactly once, and concatenated in rank order give ``range(n)``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def rank_shard_prefix(rank: int, world_size: int) -> str:
    """File prefix of rank ``rank``'s embedding shards: ``""`` for one process, else ``rank003-``."""
    return "" if world_size == 1 else f"rank{rank:03d}-"


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


def current_env(device: torch.device) -> DistEnv:
    """The :class:`DistEnv` of the current process group (a single process without one), on ``device``."""
    if not is_initialized():
        return DistEnv(device=device)
    _, _, local = env_ranks()
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, device, str(dist.get_backend()))
