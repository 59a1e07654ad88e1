"""Preprocessing of images for embedding: resize to one size and normalise, by channel name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cellssl.data.dataset import CellDataset
from cellssl.data.normalize import ChannelStats, Normalizer, build_normalizer, compute_channel_stats

if TYPE_CHECKING:
    from cellssl.config.schema import EmbedSection, NormalizeSection

logger = logging.getLogger(__name__)

CHANNEL_STATS_FILE = "channel_stats.json"


class EvalPreprocess:
    """Resize ``(C, H, W)`` to ``(C, size, size)`` (bilinear, antialiased) then normalise.

    Picklable, so DataLoader workers can run it.

    :param normalizer: callable ``(image, channel_names) -> image``.
    :param size: output side; ``None`` keeps the input size.
    """

    def __init__(self, normalizer: Normalizer, size: int | None) -> None:
        self.normalizer = normalizer
        self.size = size

    def __call__(self, image: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        if self.size is not None and tuple(image.shape[-2:]) != (self.size, self.size):
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
        return self.normalizer(image, channel_names)


def resolve_channel_stats(
    run_dir: Path, stats_path: str | None, dataset: CellDataset, max_samples: int, seed: int = 0,
    fingerprint: str | None = None,
) -> ChannelStats:
    """Dataset-level channel statistics: from ``stats_path``, else ``run_dir/channel_stats.json`` when it was
    computed from the same inputs, else computed on up to ``max_samples`` images of ``dataset`` and saved there.

    :param fingerprint: digest of what the statistics depend on (:func:`cellssl.plan.fingerprint.stats_fingerprint`);
        a stored file with another (or no) fingerprint is recomputed. ``None``: a stored file is reused as is.
    :raises DataError: if the statistics would not be finite (naming the first offending sample).
    """
    if stats_path:
        return ChannelStats.load(stats_path)
    stored = run_dir / CHANNEL_STATS_FILE
    if stored.is_file():
        stats = ChannelStats.load(stored)
        if fingerprint is None or stats.fingerprint == fingerprint:
            return stats
        logger.info("recomputing %s: it was computed from other data or settings (fingerprint %s, now %s)",
                    stored, (stats.fingerprint or "none")[:12], fingerprint[:12])
    stats = compute_channel_stats(dataset, max_samples=max_samples, seed=seed)
    stats.fingerprint = fingerprint or ""
    stats.save(stored)
    logger.info("computed channel statistics on %d images -> %s", stats.num_images, stored)
    return stats


def build_run_normalizer(
    normalize: NormalizeSection, dataset: CellDataset, run_dir: Path, fingerprint: str | None = None
) -> Normalizer:
    """The normaliser of the ``normalize:`` section; ``dataset`` statistics are resolved as documented in
    :func:`resolve_channel_stats` (``fingerprint``: what they must have been computed from)."""
    stats = None
    if normalize.mode == "dataset":
        stats = resolve_channel_stats(run_dir, normalize.stats_path, dataset, normalize.stats_samples,
                                      fingerprint=fingerprint)
    return build_normalizer(normalize, stats)


def build_eval_preprocess(
    embed: EmbedSection, normalize: NormalizeSection, dataset: CellDataset, run_dir: Path,
    fingerprint: str | None = None,
) -> EvalPreprocess:
    """The preprocessing of the ``embed:`` and ``normalize:`` sections for ``dataset``."""
    return EvalPreprocess(build_run_normalizer(normalize, dataset, run_dir, fingerprint), embed.img_size)
