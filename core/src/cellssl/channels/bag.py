"""``bag_of_channels``: a 1-channel backbone trained on every (image, channel) pair (Channel-Adaptive DINO)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cellssl.channels.base import ChannelStrategy
from cellssl.channels.configs import BagOfChannelsConfig
from cellssl.channels.single_channel import ChannelSampleDataset, embed_channels_folded
from cellssl.data.dataset import CellDataset


class BagOfChannels(ChannelStrategy):
    """Channels are independent samples for training; at inference they are folded into the batch."""

    name = "bag_of_channels"

    def __init__(self, config: BagOfChannelsConfig) -> None:
        self.config = config

    def in_chans(self, channel_names: Sequence[str]) -> int:
        return 1

    def training_dataset(self, dataset: CellDataset) -> ChannelSampleDataset:
        return ChannelSampleDataset([dataset])

    def embed(self, backbone: nn.Module, images: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        per_channel = embed_channels_folded(backbone, images)
        if self.config.aggregate == "mean":
            return per_channel.mean(dim=1)
        return per_channel.flatten(1)

    def block_names(self, channel_names: Sequence[str]) -> list[str]:
        return list(channel_names) if self.config.aggregate == "concat" else ["mean over channels"]

    def describe(self) -> str:
        return f"bag_of_channels (aggregate={self.config.aggregate})"


def build_bag_of_channels(config: BagOfChannelsConfig) -> BagOfChannels:
    """Factory of the ``bag_of_channels`` strategy."""
    return BagOfChannels(config)
