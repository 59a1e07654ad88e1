"""The one embedding path: dataset -> preprocessing -> channel strategy -> backbone and feature recipe.

:class:`Embedder` holds the pieces of a run's embedding (built from the run plan by
:func:`cellssl.pipeline.run_embedder`) and offers them at three sizes: a batch of preprocessed images
(:meth:`Embedder.embed_images`), chosen dataset rows in memory (:meth:`Embedder.embed_rows`), and a whole
dataset (or one rank's share) written as a sharded, resumable embedding set (:meth:`Embedder.export`). The
embed stage, and evaluators that need fresh embeddings (``EvalContext.embedder``), use the same object, so
their numbers come from the same preprocessing, weights and feature recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cellssl.embed.fast import eager, prepare_for_inference

Preprocess = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


class Embedder:
    """A channel strategy, a backbone (with its feature recipe) and the preprocessing, on one device.

    :param strategy: the run's :class:`~cellssl.channels.base.ChannelStrategy`.
    :param backbone: maps ``(N, in_chans, H, W)`` to ``(N, D)`` (the feature wrapper included); put in eval mode.
    :param preprocess: ``(image (C, H, W), channel names) -> image`` (resize and normalise).
    :param precision: ``bf16`` or ``fp32``. :param bf16: how bf16 runs (``auto``, ``cast``: weights cast once,
        ``autocast``); :param compile: ``torch.compile`` the backbone (see :mod:`cellssl.embed.fast`).
    :param device: where the backbone runs.
    :param batch_size: images per forward pass. :param num_workers: DataLoader workers of :meth:`export`.
    """

    def __init__(self, strategy: Any, backbone: nn.Module, preprocess: Preprocess, *, precision: str = "bf16",
                 device: torch.device | str = "cpu", batch_size: int = 64, num_workers: int = 0,
                 bf16: str = "auto", compile: bool = False) -> None:
        self.strategy = strategy
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.preprocess = preprocess
        self.precision = precision
        self.inference = prepare_for_inference(self.backbone, precision, bf16, compile, self.device)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, channel_names: Sequence[str], *,
                     precision: str | None = None) -> torch.Tensor:
        """Embeddings ``(B, D_out)`` (float32, on the CPU) of preprocessed ``images`` ``(B, C, H, W)``.

        :param precision: override the embedder's precision for this call.
        :raises cellssl.errors.DataError: if the channels do not fit the strategy.
        """
        use = self.inference if precision in (None, self.precision) else eager(self.backbone, precision, self.device)
        with use.context():
            out = self.strategy.embed(use.module, use.inputs(images), tuple(channel_names))
        return out.float().cpu()

    def preprocessed(self, dataset: Any, rows: Sequence[int]) -> tuple[torch.Tensor, tuple[str, ...]]:
        """The preprocessed images ``(len(rows), C, H, W)`` of dataset ``rows`` and their channel names."""
        samples = [dataset[int(i)] for i in rows]
        return torch.stack([self.preprocess(s.image, s.channels) for s in samples]).float(), tuple(samples[0].channels)

    def embed_rows(self, dataset: Any, rows: Sequence[int]) -> np.ndarray:
        """Embeddings ``(len(rows), D_out)`` of dataset ``rows``, in memory, in batches of ``batch_size``."""
        parts = []
        for start in range(0, len(rows), self.batch_size):
            images, names = self.preprocessed(dataset, rows[start : start + self.batch_size])
            parts.append(self.embed_images(images, names).numpy())
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def export(self, dataset: Any, out_dir: str | Path, **writer: Any) -> Path:
        """Write the embeddings of ``dataset`` as a sharded set (see :func:`cellssl.embed.export.export_embeddings`
        for ``writer``: ``shard_rows``, ``indices``, ``shard_prefix``, ``fingerprint``, ``manifest_info``, ...)."""
        from cellssl.embed.export import export_embeddings

        return export_embeddings(dataset, self.strategy, self.backbone, out_dir, preprocess=self.preprocess,
                                 batch_size=self.batch_size, num_workers=self.num_workers, precision=self.precision,
                                 device=self.device, inference=self.inference, **writer)
