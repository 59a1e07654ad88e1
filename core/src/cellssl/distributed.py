"""torch.distributed for cellssl: process-group setup and rank helpers, used by training, embedding and
fine-tuning alike.

A run becomes distributed when it is started with ``WORLD_SIZE > 1`` in its environment: by ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or by the ``slurm`` launcher
(submitit exports the same variables). :func:`init_distributed` then joins the process group (``nccl`` on
CUDA, ``gloo`` on CPU) and picks the device ``cuda:LOCAL_RANK``; without those variables everything here is
a no-op and the run is a plain single process.

Writing: only rank 0 writes files and logs at INFO level (:func:`configure_rank_logging`); the other ranks
log warnings and errors only. Embedding shards use :func:`rank_range` and :func:`rank_shard_prefix`.
Each rank's share of the training data: :mod:`cellssl.train.distributed`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from cellssl.errors import ConfigError

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


def current_env(device: torch.device) -> DistEnv:
    """The :class:`DistEnv` of the current process group (a single process without one), on ``device``."""
    if not is_initialized():
        return DistEnv(device=device)
    _, _, local = env_ranks()
    return DistEnv(dist.get_rank(), dist.get_world_size(), local, device, str(dist.get_backend()))
