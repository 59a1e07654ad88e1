"""The ``synthetic_cells`` dataset's parameters (:class:`SyntheticCellsConfig`), importable without torch;
the dataset is :class:`cellssl.data.synthetic.SyntheticCells`."""

from __future__ import annotations

from dataclasses import dataclass

CLASSES: tuple[str, ...] = ("round", "large_nucleus", "elongated", "punctate")
CHANNELS: tuple[str, ...] = ("dna", "protein", "membrane")


@dataclass
class SyntheticCellsConfig:
    """``data: {name: synthetic_cells, ...}``.

    :ivar num_samples: number of cells.
    :ivar image_size: side of the square images, in pixels.
    :ivar num_channels: 1 to 3 (``dna``, ``protein``, ``membrane``).
    :ivar num_classes: 2 to 4 phenotypes, balanced.
    :ivar noise: standard deviation of the additive Gaussian noise.
    :ivar seed: dataset seed.
    """

    num_samples: int = 512
    image_size: int = 48
    num_channels: int = 3
    num_classes: int = 4
    noise: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.num_channels <= len(CHANNELS):
            raise ValueError(f"num_channels must be between 1 and {len(CHANNELS)}, got {self.num_channels}")
        if not 2 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes must be between 2 and {len(CLASSES)}, got {self.num_classes}")
        if self.num_samples < 1 or self.image_size < 16:
            raise ValueError("num_samples must be >= 1 and image_size >= 16")
