"""Preprocessing of images for embedding: resize to one size and normalise, by channel name.

:func:`build_eval_preprocess` is the preprocessing of a run's own data; :class:`DatasetPreprocessFactory`
rebuilds the same recipe for another dataset (other channels), as ``Embedder.for_dataset`` needs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from cellssl.data.dataset import CellDataset
from cellssl.data.digests import stats_fingerprint
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

    :param fingerprint: digest of what the statistics depend on (:func:`cellssl.data.digests.stats_fingerprint`);
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


class DatasetPreprocessFactory:
    """The run's preprocessing rebuilt for ANOTHER dataset (other channels, other images): resize to
    ``img_size``, then the ``normalize:`` section.

    - per-image modes (``per_image``, ``scale``, ``none``): as configured;
    - ``dataset`` mode: the statistics of ``normalize.stats_path``; else the run's ``channel_stats.json``
      (``run_stats``) when it covers every channel of the dataset; else statistics computed on up to
      ``normalize.stats_samples`` images of the dataset and stored in ``<stats_dir>/channel_stats.json`` with
      their :func:`~cellssl.data.digests.stats_fingerprint` (data block, rows, table content, channels,
      settings), so they are computed once and recomputed only when the dataset or the settings change.

    Calling the factory returns ``(preprocess, normalisation identity)``: the picklable
    :class:`EvalPreprocess`, and plain data naming the settings and the statistics used (their values), for an
    embedding fingerprint.

    :param normalize: the run's ``normalize:`` section. :param img_size: the run's ``embed.img_size``.
    :param run_stats: the run's statistics file (``<run_dir>/channel_stats.json``; ``None``: none).
    """

    def __init__(self, normalize: NormalizeSection, img_size: int | None, run_stats: Path | None = None) -> None:
        self.normalize = normalize
        self.img_size = img_size
        self.run_stats = Path(run_stats) if run_stats is not None else None

    def _stats(self, dataset: CellDataset, stats_dir: Path, data_block: Mapping[str, Any]) -> ChannelStats:
        if self.normalize.stats_path:
            return ChannelStats.load(self.normalize.stats_path)
        if self.run_stats is not None and self.run_stats.is_file():
            stats = ChannelStats.load(self.run_stats)
            if set(dataset.channel_names) <= set(stats.mean):
                return stats
            logger.info("%s covers channels %s, not %s: using statistics of the dataset itself", self.run_stats,
                        list(stats.channels), list(dataset.channel_names))
        fingerprint = stats_fingerprint([dict(data_block)], [dataset], self.normalize, 0)
        return resolve_channel_stats(Path(stats_dir), None, dataset, self.normalize.stats_samples,
                                     fingerprint=fingerprint)

    def __call__(self, dataset: CellDataset, stats_dir: str | Path,
                 data_block: Mapping[str, Any] | None = None) -> tuple[EvalPreprocess, dict[str, Any]]:
        """The preprocessing of ``dataset`` and its identity (see the class docstring).

        :param stats_dir: where statistics computed on ``dataset`` are stored (created if needed).
        :param data_block: the options ``dataset`` was read with (bit depth, ...), part of the stats fingerprint.
        :raises DataError: when the statistics cannot be read or would not be finite.
        """
        identity: dict[str, Any] = {"settings": dataclasses.asdict(self.normalize), "img_size": self.img_size}
        stats = None
        if self.normalize.mode == "dataset":
            stats = self._stats(dataset, Path(stats_dir), data_block or {})
            names = tuple(dataset.channel_names)
            identity["stats"] = {"mean": {c: stats.mean.get(c) for c in names},
                                 "std": {c: stats.std.get(c) for c in names}}
        return EvalPreprocess(build_normalizer(self.normalize, stats), self.img_size), identity
