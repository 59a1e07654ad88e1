"""``channel_subset``: a fixed multichannel model that only sees some named channels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cellssl.api import CellDataset, CellSample, ChannelStrategy, DataError
from cellssl_example_tiles.configs import ChannelSubsetConfig


class _SubsetView(torch.utils.data.Dataset[CellSample]):
    def __init__(self, dataset: CellDataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> CellSample:
        return self.dataset[index].select_channels(self.indices)


class ChannelSubset(ChannelStrategy):
    """Keep the channels named in ``keep`` (in that order) and feed them to one backbone."""

    name = "channel_subset"

    def __init__(self, config: ChannelSubsetConfig) -> None:
        self.keep = list(config.keep)

    def _indices(self, channel_names: Sequence[str]) -> list[int]:
        missing = [name for name in self.keep if name not in channel_names]
        if missing:
            raise DataError(f"channel_subset keeps {self.keep} but the data lacks {missing} "
                            f"(data channels: {list(channel_names)})")
        return [list(channel_names).index(name) for name in self.keep]

    def in_chans(self, channel_names: Sequence[str]) -> int:
        return len(self.keep)

    def training_dataset(self, dataset: CellDataset) -> torch.utils.data.Dataset:
        return _SubsetView(dataset, self._indices(dataset.channel_names))

    def embed(self, backbone: nn.Module, images: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        return backbone(images[:, self._indices(channel_names)])

    def check_channels(self, channel_names: Sequence[str]) -> None:
        self._indices(channel_names)

    def block_names(self, channel_names: Sequence[str]) -> list[str]:
        self._indices(channel_names)
        return ["+".join(self.keep)]  # one embedding over the kept channels
