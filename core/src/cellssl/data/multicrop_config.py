"""The multi-crop parameters (:class:`MultiCropConfig`), importable without torch; the views themselves
are built by :class:`cellssl.data.multicrop.MultiCropTransform`."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellssl.data.augment_config import AugmentConfig
from cellssl.data.normalize_config import NormalizeConfig


def _default_local_aug() -> AugmentConfig:
    return AugmentConfig()


@dataclass
class MultiCropConfig:
    """YAML block of the multi-crop views (sizes in px; scales are crop-area fractions of the image)."""

    global_size: int = 224
    local_size: int = 96
    n_global: int = 2
    n_local: int = 8
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    global_aug: AugmentConfig = field(default_factory=AugmentConfig)
    local_aug: AugmentConfig = field(default_factory=_default_local_aug)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)

    def __post_init__(self) -> None:
        if self.global_size < 1 or self.local_size < 1:
            raise ValueError(f"multicrop sizes must be >= 1, got {self.global_size} and {self.local_size}")
        if self.n_global < 1 or self.n_local < 0:
            raise ValueError(
                f"multicrop needs n_global >= 1 and n_local >= 0, got {self.n_global}, {self.n_local}"
            )
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(
                    f"multicrop.{name} must be [min, max] with 0 < min <= max <= 1, got {[lo, hi]}"
                )
