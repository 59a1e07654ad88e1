"""Microscopy augmentations for float32 ``(C, H, W)`` images with any channel count.

Every augmentation is a small class built from its config dataclass (in :mod:`cellssl.data.augment_config`,
importable without torch) and called as
``aug(image, channel_names, generator) -> image``. Randomness comes only from the explicit
``torch.Generator`` (never the global RNG), so a seed reproduces a view exactly. Inputs are never
modified in place. Channels are referred to by name (``channel_names``), never by index.

:class:`AugmentationPipeline` applies the enabled augmentations of an :class:`AugmentConfig` in a
fixed order: crop (or resize) -> flips -> 90-degree rotation -> intensity rescale of named channels
-> per-channel brightness/contrast -> blur -> noise -> channel drop. Dropping comes last so that a
dropped channel is exactly 0 (an absent stain) before normalisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cellssl.data.augment_config import (
    AugmentConfig,
    BlurConfig,
    BrightnessContrastConfig,
    ChannelDropConfig,
    FlipConfig,
    IntensityRescaleConfig,
    NoiseConfig,
    Rot90Config,
    _check_range,
)
from cellssl.data.augment_config import (
    CropConfig as CropConfig,
)
from cellssl.errors import ConfigError

Names = tuple[str, ...]


class UnknownChannelError(ConfigError, ValueError):
    """A config names a channel that the image does not have (a :class:`ConfigError` and a ValueError)."""


def make_generator(rng: torch.Generator | int | None = None) -> torch.Generator:
    """A CPU generator: ``rng`` itself, one seeded with the int ``rng``, or (``None``) one seeded from the
    global torch RNG (so DataLoader workers, which seed torch per worker, draw different streams)."""
    if isinstance(rng, torch.Generator):
        return rng
    if rng is None:
        rng = int(torch.randint(0, 2**62, (1,)).item())
    gen = torch.Generator()
    gen.manual_seed(int(rng))
    return gen


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _coin(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen)) < p


def resize(image: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of ``(C, H, W)`` (or ``(B, C, H, W)``) to ``size = (h, w)``; works for any C."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.clone()
    batched = image if image.ndim == 4 else image.unsqueeze(0)
    out = F.interpolate(batched, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return out if image.ndim == 4 else out.squeeze(0)


# --------------------------------------------------------------------------- configs


class RandomResizedCrop:
    """Crop a random box (area fraction in ``scale``, aspect ratio in ``ratio``) and resize it to
    ``size x size``. After 10 rejected draws, falls back to the largest centred box within ``ratio``."""

    def __init__(self, size: int, scale: list[float], ratio: list[float], antialias: bool = True) -> None:
        self.size, self.scale, self.ratio, self.antialias = int(size), list(scale), list(ratio), antialias

    def box(self, height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of a random crop of an image of ``height x width``."""
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            area = height * width * _uniform(gen, *self.scale)
            aspect = math.exp(_uniform(gen, log_lo, log_hi))
            w = round(math.sqrt(area * aspect))
            h = round(math.sqrt(area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (), generator=gen))
                left = int(torch.randint(0, width - w + 1, (), generator=gen))
                return top, left, h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, max(1, min(height, round(width / self.ratio[0])))
        elif aspect > self.ratio[1]:
            h, w = height, max(1, min(width, round(height * self.ratio[1])))
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        top, left, h, w = self.box(image.shape[-2], image.shape[-1], gen)
        return resize(image[:, top : top + h, left : left + w], (self.size, self.size), self.antialias)


class RandomFlip:
    """Flip along ``dim`` (-1: horizontal, -2: vertical) with probability ``p``."""

    def __init__(self, config: FlipConfig, dim: int) -> None:
        self.p, self.dim = config.p, dim

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        return torch.flip(image, dims=(self.dim,)) if _coin(gen, self.p) else image


class RandomRot90:
    """Rotate by ``k * 90`` degrees (``k`` in 1..3, counter-clockwise in the (H, W) plane) with
    probability ``p``. Non-square images swap H and W for odd ``k``."""

    def __init__(self, config: Rot90Config) -> None:
        self.p = config.p

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        if not _coin(gen, self.p):
            return image
        k = int(torch.randint(1, 4, (), generator=gen))
        return torch.rot90(image, k, dims=(-2, -1))


class IntensityRescale:
    """Multiply each channel named in ``config.channels`` by its own random gain (see the config)."""

    def __init__(self, config: IntensityRescaleConfig) -> None:
        self.config = config

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        if not _coin(gen, self.config.p):
            return image
        picked = [i for i, name in enumerate(channel_names) if name in self.config.channels]
        gains = torch.ones(image.shape[0], dtype=image.dtype)
        for i in picked:
            gains[i] = _uniform(gen, *self.config.gain)
        return image * gains.to(image.device).view(-1, 1, 1)


class BrightnessContrast:
    """Per-channel contrast then brightness (see :class:`BrightnessContrastConfig` for the formula)."""

    def __init__(self, config: BrightnessContrastConfig) -> None:
        self.config = config

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        if not _coin(gen, self.config.p):
            return image
        n = image.shape[0]
        (b_lo, b_hi), (k_lo, k_hi) = self.config.brightness, self.config.contrast
        contrast = (k_lo + (k_hi - k_lo) * torch.rand(n, generator=gen)).to(image).view(-1, 1, 1)
        bright = (b_lo + (b_hi - b_lo) * torch.rand(n, generator=gen)).to(image).view(-1, 1, 1)
        mean = image.mean(dim=(-2, -1), keepdim=True)
        return ((image - mean) * contrast + mean) * bright


class GaussianBlur:
    """Separable Gaussian blur of every channel (reflect padding; kernel radius ``ceil(3 sigma)``,
    limited by the image size)."""

    def __init__(self, config: BlurConfig) -> None:
        self.config = config

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        if not _coin(gen, self.config.p):
            return image
        return gaussian_blur(image, _uniform(gen, *self.config.sigma))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``(C, H, W)`` with an isotropic Gaussian of ``sigma`` pixels (identity for ``sigma <= 0``)."""
    n, height, width = image.shape
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    if sigma <= 0 or radius < 1:
        return image.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(image)
    x = F.pad(image.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(n, 1, 1, -1), groups=n)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(n, 1, -1, 1), groups=n)
    return x.squeeze(0)


class GaussianNoise:
    """Additive Gaussian noise (see :class:`NoiseConfig`)."""

    def __init__(self, config: NoiseConfig) -> None:
        self.config = config

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        if not _coin(gen, self.config.p):
            return image
        std = _uniform(gen, *self.config.std)
        noise = torch.randn(image.shape, generator=gen).to(image)
        if self.config.relative:
            return image + noise * (std * image.std(dim=(-2, -1), correction=0, keepdim=True))
        return image + noise * std


class ChannelDrop:
    """Set random non-protected channels to 0 (see :class:`ChannelDropConfig`)."""

    def __init__(self, config: ChannelDropConfig) -> None:
        self.config = config
        self.protected = set(config.protected)

    def __call__(self, image: torch.Tensor, channel_names: Names, gen: torch.Generator) -> torch.Tensor:
        if image.shape[0] < 2 or not _coin(gen, self.config.p):
            return image
        eligible = [i for i, name in enumerate(channel_names) if name not in self.protected]
        most = min(self.config.max_drop, len(eligible), image.shape[0] - 1)
        if most < 1:
            return image
        k = int(torch.randint(1, most + 1, (), generator=gen))
        order = torch.randperm(len(eligible), generator=gen)[:k]
        out = image.clone()
        out[[eligible[int(j)] for j in order]] = 0.0
        return out


# --------------------------------------------------------------------------- pipeline


class AugmentationPipeline:
    """The enabled augmentations of ``config``, applied in the module's fixed order.

    :param config: the view's :class:`AugmentConfig`.
    :param size: output side; overrides ``config.crop.size`` (required from one of them).
    :param scale: crop area range; overrides ``config.crop.scale``.
    :param channel_names: if given, names in the config are checked against them now.
    :raises ConfigError: if no output size is set.
    :raises UnknownChannelError: (also a ValueError) if ``channel_drop.protected`` names a channel the
        image does not have; raised here or at the first call with those channel names.
    """

    def __init__(
        self,
        config: AugmentConfig,
        size: int | None = None,
        scale: list[float] | tuple[float, float] | None = None,
        channel_names: tuple[str, ...] | None = None,
    ) -> None:
        self.config = config
        self.size = size if size is not None else config.crop.size
        if self.size is None or self.size < 1:
            raise ConfigError("augment.crop.size", f"an output size (int >= 1) is needed, got {self.size}")
        crop_scale = list(scale) if scale is not None else list(config.crop.scale)
        _check_range("crop", "scale", crop_scale, 1e-6, 1.0)
        self.crop = RandomResizedCrop(self.size, crop_scale, config.crop.ratio, config.crop.antialias)
        c = config
        candidates = [
            (c.hflip, lambda: RandomFlip(c.hflip, dim=-1)),
            (c.vflip, lambda: RandomFlip(c.vflip, dim=-2)),
            (c.rot90, lambda: RandomRot90(c.rot90)),
            (c.rescale, lambda: IntensityRescale(c.rescale)),
            (c.brightness_contrast, lambda: BrightnessContrast(c.brightness_contrast)),
            (c.blur, lambda: GaussianBlur(c.blur)),
            (c.noise, lambda: GaussianNoise(c.noise)),
            (c.channel_drop, lambda: ChannelDrop(c.channel_drop)),
        ]
        self.steps = [build() for sub, build in candidates if sub.enabled]
        self._checked: set[tuple[str, ...]] = set()
        if channel_names is not None:
            self.check_channels(tuple(channel_names))

    def check_channels(self, channel_names: tuple[str, ...]) -> None:
        """Raise :class:`UnknownChannelError` if ``channel_drop.protected`` names a missing channel."""
        if channel_names in self._checked:
            return
        unknown = [n for n in self.config.channel_drop.protected if n not in channel_names]
        if unknown and self.config.channel_drop.enabled:
            raise UnknownChannelError(
                "augment.channel_drop.protected",
                f"unknown channel name(s) {unknown}; the image's channels are {list(channel_names)}",
            )
        self._checked.add(channel_names)

    def __call__(
        self,
        image: torch.Tensor,
        channel_names: tuple[str, ...] | list[str],
        generator: torch.Generator | int | None = None,
    ) -> torch.Tensor:
        """Augment one ``(C, H, W)`` float image; returns a new ``(C, size, size)`` tensor.

        :param generator: a ``torch.Generator``, an int seed, or ``None`` (seeded from the global RNG).
        :raises ValueError: if ``image`` is not 3-D or its channel count differs from ``channel_names``.
        """
        names = tuple(channel_names)
        if image.ndim != 3 or image.shape[0] != len(names):
            raise ValueError(f"expected a (C, H, W) image with C={len(names)} {names}, got {image.shape}")
        self.check_channels(names)
        gen = make_generator(generator)
        if self.config.crop.enabled:
            out = self.crop(image, names, gen)
        else:
            out = resize(image, (self.size, self.size), self.config.crop.antialias)
        for step in self.steps:
            out = step(out, names, gen)
        return out
