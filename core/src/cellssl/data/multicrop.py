"""Multi-crop views for DINO / DINOv2 training and the fixed-size transform for embedding.

:class:`MultiCropTransform` maps one ``(C, H, W)`` image and its channel names to
``{"global": [n_global tensors (C, gs, gs)], "local": [n_local tensors (C, ls, ls)]}``: each view is a
random resized crop (resized up when the image is smaller than the crop size), augmented by its view
kind's :class:`~cellssl.data.augment.AugmentConfig`, then normalised. :func:`collate_multicrop` stacks
a list of those dicts view-major (all images' view 0, then all images' view 1, ...), the layout the
DINO losses expect. :class:`EvalTransform` resizes and centre-crops to a fixed size for embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cellssl.data.augment import AugmentationPipeline, AugmentConfig, make_generator, resize
from cellssl.data.multicrop_config import MultiCropConfig
from cellssl.data.normalize import (
    ChannelStats,
    IdentityNormalizer,
    Normalizer,
    build_normalizer,
)
from cellssl.data.sample import CellSample
from cellssl.errors import DataError


class MultiCropTransform:
    """Build ``n_global`` global and ``n_local`` local augmented, normalised views of one image.

    :param global_size: side of global views; overrides ``global_aug.crop.size``.
    :param local_size: side of local views; overrides ``local_aug.crop.size``.
    :param global_scale: crop-area range of global views; overrides ``global_aug.crop.scale``.
    :param local_scale: crop-area range of local views; overrides ``local_aug.crop.scale``.
    :param global_aug: augmentations of global views (default :class:`AugmentConfig()`).
    :param local_aug: augmentations of local views (default :class:`AugmentConfig()`).
    :param normalizer: ``normalizer(image, channel_names)`` applied last to every view (default:
        identity); see :func:`cellssl.data.normalize.build_normalizer`.
    """

    def __init__(
        self,
        global_size: int,
        local_size: int,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: Sequence[float] = (0.4, 1.0),
        local_scale: Sequence[float] = (0.05, 0.4),
        global_aug: AugmentConfig | None = None,
        local_aug: AugmentConfig | None = None,
        normalizer: Normalizer | None = None,
    ) -> None:
        if n_global < 1 or n_local < 0:
            raise ValueError(f"need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
        self.n_global, self.n_local = n_global, n_local
        self.global_size, self.local_size = global_size, local_size
        self.global_views = AugmentationPipeline(
            global_aug or AugmentConfig(), global_size, list(global_scale)
        )
        self.local_views = AugmentationPipeline(local_aug or AugmentConfig(), local_size, list(local_scale))
        self.normalizer = normalizer or IdentityNormalizer()

    @classmethod
    def from_config(cls, config: MultiCropConfig, stats: ChannelStats | None = None) -> MultiCropTransform:
        """Build from a :class:`MultiCropConfig` (``stats`` for ``normalize.mode = dataset``)."""
        return cls(
            config.global_size,
            config.local_size,
            config.n_global,
            config.n_local,
            config.global_scale,
            config.local_scale,
            config.global_aug,
            config.local_aug,
            build_normalizer(config.normalize, stats),
        )

    def __call__(
        self,
        image: torch.Tensor,
        channel_names: Sequence[str],
        generator: torch.Generator | int | None = None,
    ) -> dict[str, list[torch.Tensor]]:
        """Views of ``image`` (float ``(C, H, W)``, any C, any size).

        :param generator: a ``torch.Generator``, an int seed, or ``None`` (seeded from the global torch
            RNG, which DataLoader seeds differently in each worker).
        :return: ``{"global": [n_global x (C, gs, gs)], "local": [n_local x (C, ls, ls)]}``, float32.
        :raises UnknownChannelError: if an augmentation config names a channel the image lacks.
        """
        names = tuple(channel_names)
        gen = make_generator(generator)
        image = image.float()
        views_g = [self.normalizer(self.global_views(image, names, gen), names) for _ in range(self.n_global)]
        views_l = [self.normalizer(self.local_views(image, names, gen), names) for _ in range(self.n_local)]
        return {"global": views_g, "local": views_l}

    def sample_views(
        self, sample: CellSample, generator: torch.Generator | int | None = None
    ) -> dict[str, Any]:
        """Views of a :class:`CellSample`, plus its ``index`` (for use as a dataset transform)."""
        out: dict[str, Any] = dict(self(sample.image, sample.channels, generator))
        out["index"] = sample.index
        return out


def _stack_view_major(items: list[list[torch.Tensor]], key: str) -> torch.Tensor:
    counts = {len(views) for views in items}
    if len(counts) != 1:
        raise DataError(
            f"collate_multicrop: images have different numbers of {key!r} views: {sorted(counts)}"
        )
    shapes = {tuple(v.shape) for views in items for v in views}
    if len(shapes) > 1:
        raise DataError(
            f"collate_multicrop: {key!r} views have different shapes {sorted(shapes)}; batch only images "
            "with the same channel count (one dataset, or a channel strategy that unifies channels)"
        )
    n_views = counts.pop()
    if n_views == 0:
        return torch.empty(0)
    return torch.cat([torch.stack([views[v] for views in items]) for v in range(n_views)])


def collate_multicrop(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of :class:`MultiCropTransform` outputs.

    :return: ``{"global": (n_global * B, C, gs, gs), "local": (n_local * B, C, ls, ls)}``, view-major:
        row ``v * B + i`` is view ``v`` of image ``i``. ``"local"`` is an empty tensor when
        ``n_local = 0``. Other keys are collected per image: numbers become a tensor, tensors are
        stacked, anything else stays a list.
    :raises DataError: if the images' views differ in count or shape (e.g. mixed channel counts).
    """
    if not batch:
        raise DataError("collate_multicrop got an empty batch")
    out: dict[str, Any] = {
        "global": _stack_view_major([b["global"] for b in batch], "global"),
        "local": _stack_view_major([b.get("local", []) for b in batch], "local"),
    }
    for key in batch[0]:
        if key in ("global", "local"):
            continue
        values = [b[key] for b in batch]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.stack(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class EvalTransform:
    """Deterministic transform for embedding: resize the shorter side to ``round(size / crop_fraction)``
    (bilinear, antialiased), centre-crop ``size x size``, normalise.

    :param size: output side in px.
    :param normalizer: ``normalizer(image, channel_names)`` (default: identity).
    :param crop_fraction: fraction of the resized image kept by the centre crop (1.0: whole image
        for square inputs).
    """

    def __init__(self, size: int, normalizer: Normalizer | None = None, crop_fraction: float = 1.0) -> None:
        if size < 1 or not 0 < crop_fraction <= 1:
            raise ValueError(
                f"EvalTransform needs size >= 1 and 0 < crop_fraction <= 1, got {size}, {crop_fraction}"
            )
        self.size, self.crop_fraction = size, crop_fraction
        self.normalizer = normalizer or IdentityNormalizer()

    def __call__(self, image: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        """``(C, H, W)`` float image -> ``(C, size, size)`` float32."""
        height, width = image.shape[-2:]
        short = max(self.size, round(self.size / self.crop_fraction))
        if height <= width:
            new_h, new_w = short, max(short, round(width * short / height))
        else:
            new_h, new_w = max(short, round(height * short / width)), short
        out = resize(image.float(), (new_h, new_w), antialias=True)
        top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
        out = out[..., top : top + self.size, left : left + self.size]
        return self.normalizer(out.contiguous(), tuple(channel_names))
