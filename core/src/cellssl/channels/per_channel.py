"""``per_channel_concat``: uniDINO's recipe — each channel embedded alone, concatenated in a named order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from cellssl.channels.base import ChannelStrategy
from cellssl.channels.single_channel import (
    ChannelSampleDataset,
    embed_channels_folded,
    embed_channels_one_by_one,
)
from cellssl.data.dataset import CellDataset
from cellssl.errors import DataError

MISSING_POLICIES = ("error", "zeros")


@dataclass
class PerChannelConcatConfig:
    """``channels: {name: per_channel_concat, channel_order: [dna, rna, ...]}``.

    :ivar channel_order: the named order of the concatenated embedding. Empty: the data's own order.
        Channels of the data that are not listed are ignored (logged once).
    :ivar missing: what to do when a listed channel is absent from the data: ``error``, or ``zeros``
        (its block of the embedding is zero), so datasets with different channel sets share one layout.
    :ivar fold: encode all channels in one forward pass (channels folded into the batch); ``false``
        runs one pass per channel (same result, lower peak memory).
    """

    channel_order: list[str] = field(default_factory=list)
    missing: str = "error"
    fold: bool = True

    def __post_init__(self) -> None:
        if self.missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {self.missing!r}")
        if len(set(self.channel_order)) != len(self.channel_order):
            raise ValueError(f"channel_order has duplicate names: {self.channel_order}")


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

    def training_dataset(self, dataset: CellDataset | Sequence[CellDataset]) -> ChannelSampleDataset:
        datasets = [dataset] if isinstance(dataset, CellDataset) else list(dataset)
        return ChannelSampleDataset(datasets)

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

    def out_dim(self, channel_names: Sequence[str], embed_dim: int) -> int:
        self._present(channel_names)
        return embed_dim * len(self.layout(channel_names))

    def describe(self) -> str:
        order = ", ".join(self.config.channel_order) or "data order"
        return f"per_channel_concat ({order}; missing={self.config.missing})"


def build_per_channel_concat(config: PerChannelConcatConfig) -> PerChannelConcat:
    """Factory of the ``per_channel_concat`` strategy."""
    return PerChannelConcat(config)
