"""Embedding on several processes: each rank embeds its contiguous share of the samples into its own shards.

Under torch.distributed (``torchrun``, the slurm launcher) the ``embed`` stage gives rank ``r`` of ``W`` the
samples :func:`~cellssl.distributed.rank_range` ``(n, r, W)`` and the shard prefix ``rank<r>-``
(``rank000-part-00000.parquet``, ``rank000-manifest.json``). Shares are contiguous and the reader sorts
shards by name, so :func:`~cellssl.embed.store.read_embeddings` returns the rows in dataset order, the
same table a single process writes. One process writes unprefixed shards, as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cellssl.distributed import barrier, get_rank, get_world_size, rank_range, rank_shard_prefix

logger = logging.getLogger(__name__)


def embedding_share(n: int) -> tuple[range, str]:
    """This process's ``(sample indices, shard prefix)`` out of ``n`` samples."""
    rank, world = get_rank(), get_world_size()
    indices = rank_range(n, rank, world)
    if world > 1:
        logger.info("rank %d of %d embeds samples %d..%d", rank, world, indices.start, indices.stop - 1)
    return indices, rank_shard_prefix(rank, world)


def clear_embedding_dir(out_dir: str | Path) -> None:
    """Remove (rank 0) the shards and manifests that belong to no rank of this run, then wait for every rank.

    Files of this world's prefixes stay: each rank's writer keeps the complete shards of an interrupted export
    with the same fingerprint and deletes the rest. Shards of a run with another number of processes never mix.
    """
    out_dir = Path(out_dir)
    world = get_world_size()
    prefixes = {rank_shard_prefix(r, world) for r in range(world)}
    if get_rank() == 0 and out_dir.is_dir():
        for stale in [*out_dir.glob("*.parquet"), *out_dir.glob("*manifest.json")]:
            name = stale.name
            prefix = name[: name.index("part-")] if "part-" in name else name[: -len("manifest.json")]
            if prefix not in prefixes:
                stale.unlink()
        for temporary in out_dir.glob(".*.tmp"):  # left by a write that was killed
            temporary.unlink(missing_ok=True)
    barrier()


def finish_embedding() -> None:
    """Wait until every rank has written its shards (before anyone reads the folder)."""
    barrier()
