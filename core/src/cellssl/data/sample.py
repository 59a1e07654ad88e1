"""The unit of data every dataset yields: :class:`CellSample`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class CellSample:
    """One image of one cell (or one field of view) with its channel names and metadata.

    :ivar image: float32 tensor of shape ``(C, H, W)``, scaled by the dataset's declared bit depth
        (integer images land in ``[0, 1]``).
    :ivar channels: the ``C`` channel names, in the order of ``image``'s first axis.
    :ivar index: position of the sample in its dataset (row of ``dataset.metadata``).
    :ivar meta: that metadata row as a plain dict (plate, well, labels, ...).
    """

    image: torch.Tensor
    channels: tuple[str, ...]
    index: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"CellSample.image must be (C, H, W), got shape {tuple(self.image.shape)}")
        if self.image.shape[0] != len(self.channels):
            raise ValueError(
                f"CellSample has {self.image.shape[0]} image channels but {len(self.channels)} channel "
                f"names {self.channels}"
            )

    def select_channels(self, indices: list[int] | tuple[int, ...]) -> CellSample:
        """A new sample with only the channels at ``indices`` (in that order); metadata is shared."""
        picked = list(indices)
        return CellSample(self.image[picked], tuple(self.channels[i] for i in picked), self.index, self.meta)
