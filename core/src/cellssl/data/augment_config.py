"""The augmentation parameters (:class:`AugmentConfig` and one dataclass per augmentation), importable
without torch; the augmentations themselves are in :mod:`cellssl.data.augment`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _check_p(owner: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{owner}.p must be in [0, 1], got {p}")


def _check_range(owner: str, name: str, value: list[float], low: float, high: float = math.inf) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"{owner}.{name} must be [min, max] with {low} <= min <= max <= {high}, got {list(value)}"
        )


@dataclass
class CropConfig:
    """Random resized crop to ``size x size`` px. ``scale``: crop area as a fraction of the image;
    ``ratio``: width/height range (sampled log-uniformly). Disabled: the whole image is resized to
    ``size``. Larger crops are downsampled (antialiased if ``antialias``), smaller ones upsampled.
    :class:`~cellssl.data.multicrop.MultiCropTransform` overrides ``size`` and ``scale`` per view kind."""

    enabled: bool = True
    size: int | None = None
    scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3.0 / 4.0, 4.0 / 3.0])
    antialias: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 1:
            raise ValueError(f"crop.size must be a positive int, got {self.size}")
        _check_range("crop", "scale", self.scale, 1e-6, 1.0)
        _check_range("crop", "ratio", self.ratio, 1e-6)


@dataclass
class FlipConfig:
    """Flip along one axis with probability ``p``."""

    enabled: bool = True
    p: float = 0.5

    def __post_init__(self) -> None:
        _check_p("flip", self.p)


@dataclass
class Rot90Config:
    """With probability ``p`` rotate by 90, 180 or 270 degrees (uniform). ``p = 0.75`` makes all four
    orientations equally likely."""

    enabled: bool = True
    p: float = 0.75

    def __post_init__(self) -> None:
        _check_p("rot90", self.p)


@dataclass
class BrightnessContrastConfig:
    """With probability ``p`` per image, every channel ``c`` independently gets a contrast factor
    ``k_c ~ U(contrast)`` and a brightness factor ``b_c ~ U(brightness)``:
    ``x_c' = ((x_c - mean(x_c)) * k_c + mean(x_c)) * b_c``. Both are multiplicative, so they do not
    depend on the intensity range of the data. Values are not clamped."""

    enabled: bool = True
    p: float = 0.8
    brightness: list[float] = field(default_factory=lambda: [0.8, 1.2])
    contrast: list[float] = field(default_factory=lambda: [0.8, 1.2])

    def __post_init__(self) -> None:
        _check_p("brightness_contrast", self.p)
        _check_range("brightness_contrast", "brightness", self.brightness, 0.0)
        _check_range("brightness_contrast", "contrast", self.contrast, 0.0)


@dataclass
class ChannelDropConfig:
    """With probability ``p`` per image, set ``k ~ U{1..max_drop}`` channels to 0. Never drops all
    channels (at most ``C - 1``; nothing for ``C = 1``) and never a channel named in ``protected``."""

    enabled: bool = True
    p: float = 0.2
    max_drop: int = 1
    protected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_p("channel_drop", self.p)
        if self.max_drop < 1:
            raise ValueError(f"channel_drop.max_drop must be >= 1, got {self.max_drop}")


@dataclass
class BlurConfig:
    """With probability ``p``, Gaussian blur of all channels with ``sigma ~ U(sigma)`` pixels."""

    enabled: bool = False
    p: float = 0.5
    sigma: list[float] = field(default_factory=lambda: [0.1, 1.5])

    def __post_init__(self) -> None:
        _check_p("blur", self.p)
        _check_range("blur", "sigma", self.sigma, 0.0)


@dataclass
class NoiseConfig:
    """With probability ``p``, add Gaussian noise of standard deviation ``s ~ U(std)``; if ``relative``,
    channel ``c`` gets ``s * std(x_c)`` (scale-free), otherwise ``s`` in intensity units."""

    enabled: bool = False
    p: float = 0.5
    std: list[float] = field(default_factory=lambda: [0.0, 0.1])
    relative: bool = True

    def __post_init__(self) -> None:
        _check_p("noise", self.p)
        _check_range("noise", "std", self.std, 0.0)


@dataclass
class IntensityRescaleConfig:
    """Protein-contrast style: with probability ``p``, multiply each channel named in ``channels`` by
    its own gain ``g ~ U(gain)`` (channels absent from an image are ignored)."""

    enabled: bool = False
    p: float = 0.5
    channels: list[str] = field(default_factory=lambda: ["protein"])
    gain: list[float] = field(default_factory=lambda: [0.5, 1.5])

    def __post_init__(self) -> None:
        _check_p("rescale", self.p)
        _check_range("rescale", "gain", self.gain, 0.0)


@dataclass
class AugmentConfig:
    """All augmentations of one kind of view (one YAML block per view kind)."""

    crop: CropConfig = field(default_factory=CropConfig)
    hflip: FlipConfig = field(default_factory=FlipConfig)
    vflip: FlipConfig = field(default_factory=FlipConfig)
    rot90: Rot90Config = field(default_factory=Rot90Config)
    rescale: IntensityRescaleConfig = field(default_factory=IntensityRescaleConfig)
    brightness_contrast: BrightnessContrastConfig = field(default_factory=BrightnessContrastConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    channel_drop: ChannelDropConfig = field(default_factory=ChannelDropConfig)


# --------------------------------------------------------------------------- augmentations
