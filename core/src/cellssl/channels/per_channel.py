"""``per_channel_concat``: uniDINO's recipe — each channel embedded alone, concatenated in a named order."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cellssl.channels.base import ChannelStrategy
from cellssl.channels.configs import PerChannelConcatConfig
from cellssl.channels.single_channel import (
    ChannelSampleDataset,
    embed_channels_folded,
    embed_channels_one_by_one,
)
from cellssl.data.dataset import CellDataset
from cellssl.errors import DataError


class PerChannelConcat(ChannelStrategy):
    """Single-channel training across images (and datasets); per-channel embeddings concatenated by name."""

    name = "per_channel_concat"

    def __init__(self, config: PerChannelConcatConfig) -> None:
        self.config = config

    def layout(self, channel_names: Sequence[str]) -> list[str]:
        """Channel names of the concatenated blocks, in order."""
        return list(self.config.channel_order) if self.config.channel_order else list(channel_names)

    def _present(self, channel_names: Sequence[str]) -> list[tuple[int, int]]:
        """``(block position, data channel index)`` pairs of the layout's channels found in the data."""
        names = list(channel_names)
        pairs = []
        missing = []
        for position, name in enumerate(self.layout(names)):
            if name in names:
                pairs.append((position, names.index(name)))
            else:
                missing.append(name)
        if missing and self.config.missing == "error":
            raise DataError(
                f"per_channel_concat expects channels {self.layout(names)} but the data lacks {missing} "
                f"(data channels: {names}). Set `channels.missing: zeros` to leave their embedding blocks "
                "at zero, or change `channels.channel_order`."
            )
        if not pairs:
            raise DataError(f"none of the channels {self.layout(names)} is present in the data ({names})")
        return pairs

    def in_chans(self, channel_names: Sequence[str]) -> int:
        return 1

    def training_dataset(self, dataset: CellDataset) -> ChannelSampleDataset:
        return ChannelSampleDataset([dataset])

    def embed(self, backbone: nn.Module, images: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        pairs = self._present(channel_names)
        selected = images[:, [index for _, index in pairs]]
        encode = embed_channels_folded if self.config.fold else embed_channels_one_by_one
        per_channel = encode(backbone, selected)
        batch, _, dim = per_channel.shape
        blocks = len(self.layout(channel_names))
        if len(pairs) == blocks:
            return per_channel.flatten(1)
        out = per_channel.new_zeros(batch, blocks, dim)
        out[:, [position for position, _ in pairs]] = per_channel
        return out.flatten(1)

    def check_channels(self, channel_names: Sequence[str]) -> None:
        self._present(channel_names)

    def block_names(self, channel_names: Sequence[str]) -> list[str]:
        self._present(channel_names)
        return self.layout(channel_names)

    def describe(self) -> str:
        order = ", ".join(self.config.channel_order) or "data order"
        return f"per_channel_concat ({order}; missing={self.config.missing})"


def build_per_channel_concat(config: PerChannelConcatConfig) -> PerChannelConcat:
    """Factory of the ``per_channel_concat`` strategy."""
    return PerChannelConcat(config)
