"""Training samples of single-channel strategies: every (image, channel) pair is one sample."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch
from torch import nn

from cellssl.data.dataset import CellDataset
from cellssl.data.sample import CellSample


class ChannelSampleDataset(torch.utils.data.Dataset[CellSample]):
    """The N x C single-channel samples of one or more datasets.

    Index ``i`` of a dataset with C channels maps to image ``i // C`` and channel ``i % C``, so one pass
    over ``range(len(self))`` visits every (image, channel) pair exactly once. Several datasets (with
    different channel counts) are concatenated.

    :param datasets: the multi-channel datasets.
    """

    def __init__(self, datasets: Sequence[CellDataset]) -> None:
        if not datasets:
            raise ValueError("ChannelSampleDataset needs at least one dataset")
        self.datasets = list(datasets)
        self._offsets: list[int] = []
        total = 0
        for dataset in self.datasets:
            self._offsets.append(total)
            total += len(dataset) * dataset.num_channels
        self._length = total

    def __len__(self) -> int:
        return self._length

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(dataset position, image index, channel index)`` of sample ``index``."""
        if not 0 <= index < self._length:
            raise IndexError(f"channel-sample index {index} out of range for {self._length} samples")
        which = bisect.bisect_right(self._offsets, index) - 1
        local = index - self._offsets[which]
        channels = self.datasets[which].num_channels
        return which, local // channels, local % channels

    def __getitem__(self, index: int) -> CellSample:
        which, image_index, channel = self.locate(index)
        sample = self.datasets[which][image_index]
        single = sample.select_channels([channel])
        single.meta = {**sample.meta, "channel": sample.channels[channel]}
        return single


def embed_channels_folded(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Encode every channel of ``images`` (B, C, H, W) in one forward pass: ``(B*C, 1, H, W)`` -> ``(B, C, D)``."""
    batch, channels, height, width = images.shape
    folded = images.reshape(batch * channels, 1, height, width)
    return backbone(folded).reshape(batch, channels, -1)


def embed_channels_one_by_one(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Encode the channels of ``images`` (B, C, H, W) one forward pass each -> ``(B, C, D)``."""
    return torch.stack([backbone(images[:, c : c + 1]) for c in range(images.shape[1])], dim=1)
