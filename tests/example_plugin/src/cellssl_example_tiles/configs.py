"""The YAML blocks of the example components (plain dataclasses, no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FovTilesConfig:
    """``data: {name: fov_tiles, files: [...], channels: [...], tile_size: 64}``.

    :ivar files: field-of-view images (multi-page TIFF or ImageJ hyperstack, ``(C, H, W)``).
    :ivar channels: names of the C channels, in file order.
    :ivar tile_size: side of the square tiles; tiles that would cross the border are dropped.
    :ivar stride: step between tiles (default: ``tile_size``, no overlap).
    :ivar bit_depth: explicit bit depth of the files (see ``cellssl.data.bitdepth``).
    """

    files: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    tile_size: int = 64
    stride: int | None = None
    bit_depth: str = "dtype"

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("files: list at least one field-of-view image")
        if self.tile_size < 8:
            raise ValueError(f"tile_size must be >= 8, got {self.tile_size}")


@dataclass
class ChannelSubsetConfig:
    """``channels: {name: channel_subset, keep: [brightfield, darkfield]}``."""

    keep: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keep:
            raise ValueError("keep: name at least one channel to keep")


@dataclass
class NearestCentroidConfig:
    """``eval: [{name: nearest_centroid, label_column: moa, test_fraction: 0.3}]``."""

    label_column: str = "label"
    test_fraction: float = 0.3
    seed: int = 0
