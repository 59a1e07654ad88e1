"""``fixed``: one multi-channel backbone whose patch embedding takes all C channels (Cell-DINO, Dino4Cells)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cellssl.channels.base import ChannelStrategy
from cellssl.channels.configs import FixedChannelsConfig
from cellssl.data.dataset import CellDataset
from cellssl.errors import DataError


class FixedChannels(ChannelStrategy):
    """All channels enter the backbone together; channel set and order are fixed at training time."""

    name = "fixed"

    def __init__(self, config: FixedChannelsConfig) -> None:
        self.config = config
        self.expected: tuple[str, ...] = tuple(config.channels)

    def _order(self, channel_names: Sequence[str]) -> list[int]:
        names = tuple(channel_names)
        if not self.expected or names == self.expected:
            return list(range(len(names)))
        if self.config.reorder_by_name and sorted(names) == sorted(self.expected):
            return [names.index(name) for name in self.expected]
        missing = [c for c in self.expected if c not in names]
        extra = [c for c in names if c not in self.expected]
        raise DataError(
            f"the 'fixed' channel strategy was set up for channels {list(self.expected)} but the data has "
            f"{list(names)} (missing: {missing or 'none'}, unexpected: {extra or 'none'}). A fixed multichannel "
            "model only takes the channels it was trained on: "
            + (f"select them with `use_channels: {list(self.expected)}` in the `data:` block, " if not missing
               else "give it data with those channels (`use_channels: [...]` in the `data:` block selects and "
                    "orders a dataset's channels), ")
            + "or use a channel-adaptive strategy (bag_of_channels, per_channel_concat)."
        )

    def check_channels(self, channel_names: Sequence[str]) -> None:
        self._order(channel_names)

    def in_chans(self, channel_names: Sequence[str]) -> int:
        return len(self.expected) if self.expected else len(channel_names)

    def training_dataset(self, dataset: CellDataset) -> torch.utils.data.Dataset:
        self._order(dataset.channel_names)
        return dataset

    def embed(self, backbone: nn.Module, images: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        order = self._order(channel_names)
        if order != list(range(images.shape[1])):
            images = images[:, order]
        return backbone(images)

    def block_names(self, channel_names: Sequence[str]) -> list[str]:
        self._order(channel_names)
        return ["all channels"]

    def input_order(self, channel_names: Sequence[str]) -> list[int]:
        return self._order(channel_names)

    def describe(self) -> str:
        return f"fixed ({', '.join(self.expected) if self.expected else 'channels of the data'})"


def build_fixed(config: FixedChannelsConfig) -> FixedChannels:
    """Factory of the ``fixed`` strategy."""
    return FixedChannels(config)
