"""Embedding export: stream a dataset through a channel strategy and a backbone into Parquet shards.

Memory stays bounded for any dataset size: batches are embedded and handed to an
:class:`~cellssl.embed.store.EmbeddingWriter`, which flushes a shard every ``shard_rows`` rows. On CUDA the
DataLoader pins its batches, so the copy to the device does not block. The backbone runs as
:func:`cellssl.embed.fast.prepare_for_inference` prepared it (bf16 cast or autocast, compiled or not).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cellssl.channels.base import ChannelStrategy
from cellssl.data.dataset import CellDataset
from cellssl.data.sample import CellSample
from cellssl.embed.fast import Inference, prepare_for_inference
from cellssl.embed.store import EmbeddingWriter

logger = logging.getLogger(__name__)

Preprocess = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CPU and CUDA for ``precision="bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Batcher:
    """Collate function: preprocess each sample and stack; returns ``(images, indices)``."""

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, samples: list[CellSample]) -> tuple[torch.Tensor, list[int]]:
        images = [self.preprocess(s.image, s.channels) for s in samples]
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise ValueError(
                f"images of different sizes {sorted(shapes)} in one batch: set `embed.img_size` so every "
                "image is resized to one size"
            )
        return torch.stack(images), [s.index for s in samples]


@torch.no_grad()
def export_embeddings(
    dataset: CellDataset,
    strategy: ChannelStrategy,
    backbone: nn.Module,
    out_dir: str | Path,
    *,
    preprocess: Preprocess,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "bf16",
    device: torch.device | str = "cpu",
    bf16: str = "auto",
    compile: bool = False,
    inference: Inference | None = None,
    shard_rows: int = 50_000,
    indices: Sequence[int] | None = None,
    shard_prefix: str = "",
    manifest_info: dict[str, Any] | None = None,
    fingerprint: str = "",
    manifest_extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Embed ``dataset`` and write Parquet shards with its metadata columns and an ``embedding`` column.

    :param preprocess: maps one ``(C, H, W)`` image and its channel names to the backbone's input
        (resize, normalisation).
    :param indices: the samples to embed (default: all), e.g. this rank's share.
    :param shard_prefix: prefix of the shard files (distinct per rank when several processes write).
    :param fingerprint: digest of what the embeddings depend on. When given, an interrupted export into
        ``out_dir`` with the same fingerprint resumes: its complete shards are kept and the remaining rows are
        embedded. Batches never cross a shard boundary, so a resumed export equals an uninterrupted one.
    :param manifest_extra: top-level manifest entries (rank, world size, skipped rows).
    :param bf16: how ``precision="bf16"`` runs (``auto``, ``cast``, ``autocast``); :param compile: torch.compile
        the backbone. See :func:`cellssl.embed.fast.prepare_for_inference`.
    :param inference: the backbone already prepared (an :class:`~cellssl.embed.embedder.Embedder` passes its own, so
        nothing is cast or compiled again); then ``backbone``, ``precision``, ``device``, ``bf16`` and ``compile``
        are not used. The manifest's ``info.inference`` records its numerics and whether it was compiled.
    :return: ``out_dir``.
    """
    if inference is None:
        inference = prepare_for_inference(backbone, precision, bf16, compile, device)
    positions = list(indices) if indices is not None else list(range(len(dataset)))
    channel_names = tuple(dataset.channel_names)
    info = {"channels": list(channel_names), "strategy": strategy.describe(),
            "blocks": strategy.block_names(channel_names),
            "inference": {"numerics": inference.numerics, "compiled": inference.compiled}, **(manifest_info or {})}
    out_dir = Path(out_dir)
    batcher = _Batcher(preprocess)
    with EmbeddingWriter(out_dir, shard_rows=shard_rows, shard_prefix=shard_prefix, info=info, overwrite=True,
                         fingerprint=fingerprint, resume=bool(fingerprint), expected_rows=len(positions),
                         extra=manifest_extra) as writer:
        done = writer.resumed_rows
        with tqdm(total=len(positions), initial=done, desc="embed", unit="img", disable=not progress) as bar:
            for start in range(done, len(positions), shard_rows):
                shard = torch.utils.data.Subset(dataset, positions[start : start + shard_rows])
                loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=num_workers,
                                                     collate_fn=batcher, persistent_workers=False,
                                                     pin_memory=inference.device.type == "cuda")
                for images, batch_indices in loader:
                    with inference.context():
                        embeddings = strategy.embed(inference.module, inference.inputs(images), channel_names)
                    meta = dataset.metadata.iloc[batch_indices].reset_index(drop=True)
                    writer.write(meta, embeddings.float().cpu().numpy())
                    bar.update(len(batch_indices))
    logger.info("wrote embeddings of %d samples to %s", len(positions), out_dir)
    return out_dir
