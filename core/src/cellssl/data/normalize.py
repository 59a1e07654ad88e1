"""Intensity normalisation of ``(C, H, W)`` (or ``(B, C, H, W)``) float images, chosen by config.

Modes (:class:`NormalizeConfig`):

- ``per_image``: every image, every channel: ``(x - mean) / (std + eps)`` over its own pixels
  (population std; Cell-DINO). Erases absolute intensity, which can carry biology (total DNA stain
  tracks the cell-cycle phase).
- ``dataset``: ``(x - mean_c) / (std_c + eps)`` with per-channel statistics computed once over a
  dataset by :func:`compute_channel_stats`, stored as JSON (:class:`ChannelStats`) and looked up by
  channel NAME. Keeps relative intensities between images.
- ``scale``: identity (only the bit-depth scaling the dataset already applied).
- ``none``: identity.

:func:`build_normalizer` turns a config into ``normalizer(image, channel_names) -> image``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from cellssl.atomic import atomic_write_text
from cellssl.data.normalize_config import NORMALIZE_MODES, NormalizeConfig
from cellssl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = [
    "NORMALIZE_MODES", "ChannelStats", "NormalizeConfig", "Normalizer", "build_normalizer", "compute_channel_stats",
]

Normalizer = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


@dataclass
class ChannelStats:
    """Per-channel intensity statistics, keyed by channel name.

    :ivar mean: channel name -> mean over all pixels of the images seen.
    :ivar std: channel name -> population standard deviation over those pixels.
    :ivar pixels: channel name -> number of pixels seen.
    :ivar num_images: number of images the statistics were computed from.
    :ivar source: where the stats were loaded from (for error messages; not saved).
    :ivar fingerprint: digest of what the statistics were computed from (``""``: unknown).
    """

    mean: dict[str, float]
    std: dict[str, float]
    pixels: dict[str, int] = field(default_factory=dict)
    num_images: int = 0
    source: str = ""
    fingerprint: str = ""

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.mean)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "pixels": self.pixels, "num_images": self.num_images,
                "fingerprint": self.fingerprint}

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (temporary file in the same folder, then rename). Returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ChannelStats:
        """Read stats written by :meth:`save`.

        :raises DataError: naming the file if it is missing, not JSON, or lacks ``mean``/``std`` for
            the same channels.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                f"channel stats file {path} does not exist; compute it with "
                "cellssl.data.normalize.compute_channel_stats(...).save(path)"
            ) from None
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"channel stats file {path} is not readable JSON ({err}); recompute it") from None
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), dict) for k in ("mean", "std")):
            raise DataError(f"channel stats file {path} lacks 'mean' and 'std' objects keyed by channel name")
        if set(raw["mean"]) != set(raw["std"]):
            raise DataError(f"channel stats file {path}: 'mean' and 'std' name different channels")
        values = [*raw["mean"].values(), *raw["std"].values()]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise DataError(f"channel stats file {path} holds non-numeric or non-finite values; recompute it")
        return cls(
            mean={k: float(v) for k, v in raw["mean"].items()},
            std={k: float(v) for k, v in raw["std"].items()},
            pixels={k: int(v) for k, v in raw.get("pixels", {}).items()},
            num_images=int(raw.get("num_images", 0)),
            source=str(path),
            fingerprint=str(raw.get("fingerprint") or ""),
        )


class _Moments:
    """Streaming count / mean / M2 in float64, merged per image (Chan et al.'s parallel update)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        n = values.size
        if n == 0:
            return
        mean_b = float(values.mean())
        m2_b = float(((values - mean_b) ** 2).sum())
        total = self.count + n
        delta = mean_b - self.mean
        self.mean += delta * n / total
        self.m2 += m2_b + delta * delta * self.count * n / total
        self.count = total


def _as_list(batch: list) -> list:
    return batch


def _short(meta: dict) -> str:
    text = ", ".join(f"{k}={v}" for k, v in list(meta.items())[:4])
    return text if len(text) < 200 else text[:200] + "..."


def compute_channel_stats(
    dataset: Dataset,
    max_samples: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
) -> ChannelStats:
    """Per-channel mean and population std over (a random subset of) a dataset of ``CellSample``.

    Streams the samples once (one image in memory per worker), accumulating in float64 per channel
    name, so datasets whose samples have different channel sets are handled.

    :param dataset: map-style dataset yielding :class:`~cellssl.data.sample.CellSample`.
    :param max_samples: use at most this many samples, drawn without replacement with ``seed``
        (``None``: all).
    :param num_workers: DataLoader workers reading images.
    :param progress: show a tqdm bar.
    :raises DataError: if the dataset is empty.
    """
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise DataError("cannot compute channel statistics of an empty dataset")
    if max_samples is not None and 0 < max_samples < total:
        picked = np.sort(np.random.default_rng(seed).choice(total, size=max_samples, replace=False))
        dataset = Subset(dataset, picked.tolist())
    loader = DataLoader(dataset, batch_size=8, shuffle=False, num_workers=num_workers, collate_fn=_as_list)
    moments: dict[str, _Moments] = {}
    seen = 0
    count = len(dataset)  # type: ignore[arg-type]
    with tqdm(total=count, desc="channel stats", unit="img", disable=not progress) as bar:
        for batch in loader:
            for sample in batch:
                image = sample.image.detach().cpu().numpy().astype(np.float64)
                if not np.isfinite(image).all():
                    channel = int(np.flatnonzero(~np.isfinite(image).reshape(len(image), -1).all(axis=1))[0])
                    raise DataError(
                        f"sample {sample.index} has non-finite pixel values (NaN or inf) in channel "
                        f"'{sample.channels[channel]}' (metadata {_short(sample.meta)}); the channel statistics "
                        "would not be finite. Fix or remove that image (on_corrupt: skip drops such rows)."
                    )
                for c, name in enumerate(sample.channels):
                    moments.setdefault(name, _Moments()).add(image[c])
                seen += 1
            bar.update(len(batch))
    stats = ChannelStats(
        mean={k: m.mean for k, m in moments.items()},
        std={k: math.sqrt(m.m2 / m.count) for k, m in moments.items()},
        pixels={k: m.count for k, m in moments.items()},
        num_images=seen,
    )
    bad = [k for k in stats.channels if not (math.isfinite(stats.mean[k]) and math.isfinite(stats.std[k]))]
    if bad:
        raise DataError(f"channel statistics of channel(s) {bad} are not finite (overflow in the pixel values?)")
    logger.info("channel stats over %d images for channels %s", seen, list(stats.channels))
    return stats


def _check_shape(image: torch.Tensor, channel_names: Sequence[str]) -> None:
    if image.ndim not in (3, 4) or image.shape[-3] != len(channel_names):
        raise ValueError(
            f"expected (C, H, W) or (B, C, H, W) with C={len(channel_names)} ({tuple(channel_names)}), "
            f"got {tuple(image.shape)}"
        )


class PerImageNormalizer:
    """``(x - mean) / (std + eps)`` per image and channel (population std over H, W)."""

    def __init__(self, eps: float = 1e-7) -> None:
        self.eps = eps

    def __call__(self, image: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        _check_shape(image, channel_names)
        mean = image.mean(dim=(-2, -1), keepdim=True)
        std = image.std(dim=(-2, -1), correction=0, keepdim=True)
        return (image - mean) / (std + self.eps)


class DatasetNormalizer:
    """``(x - mean_c) / (std_c + eps)`` with dataset statistics looked up by channel name.

    :raises DataError: (when called) naming the channel if ``stats`` lacks it.
    """

    def __init__(self, stats: ChannelStats, eps: float = 1e-7) -> None:
        self.stats, self.eps = stats, eps
        self._cache: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _params(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if names not in self._cache:
            missing = [n for n in names if n not in self.stats.mean]
            if missing:
                where = f" in {self.stats.source}" if self.stats.source else ""
                raise DataError(
                    f"channel stats{where} have no entry for channel(s) {missing} (stats cover "
                    f"{list(self.stats.channels)}); recompute them with compute_channel_stats on data "
                    "that has these channels"
                )
            mean = torch.tensor([self.stats.mean[n] for n in names], dtype=torch.float64)
            std = torch.tensor([self.stats.std[n] for n in names], dtype=torch.float64)
            self._cache[names] = (mean.view(-1, 1, 1), (std + self.eps).view(-1, 1, 1))
        return self._cache[names]

    def __call__(self, image: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        _check_shape(image, channel_names)
        mean, denom = self._params(tuple(channel_names))
        return (image - mean.to(image)) / denom.to(image)


class IdentityNormalizer:
    """Returns the image unchanged (modes ``scale`` and ``none``)."""

    def __call__(self, image: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        _check_shape(image, channel_names)
        return image


def build_normalizer(config: NormalizeConfig, stats: ChannelStats | None = None) -> Normalizer:
    """The normaliser of ``config.mode``.

    :param stats: dataset statistics for ``dataset`` mode; if ``None``, read from ``config.stats_path``.
    :raises ConfigError: ``dataset`` mode with neither ``stats`` nor ``stats_path``.
    :raises DataError: if ``stats_path`` cannot be read.
    """
    if config.mode == "per_image":
        return PerImageNormalizer(config.eps)
    if config.mode == "dataset":
        if stats is None:
            if not config.stats_path:
                raise ConfigError(
                    "normalize.stats_path",
                    "mode 'dataset' needs per-channel statistics: set stats_path to a JSON file written by "
                    "ChannelStats.save (compute it once with compute_channel_stats)",
                )
            stats = ChannelStats.load(config.stats_path)
        return DatasetNormalizer(stats, config.eps)
    return IdentityNormalizer()
