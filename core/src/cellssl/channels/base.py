"""The channel-strategy contract: :class:`ChannelStrategy`.

A channel strategy decides

(a) what the SSL objective trains on: :meth:`ChannelStrategy.training_dataset` wraps a dataset of
    C-channel samples into the dataset the objective sees (the same samples for ``fixed``; one sample
    per (image, channel) pair for ``bag_of_channels``);
(b) the backbone's input channels: :meth:`ChannelStrategy.in_chans`;
(c) how a batch of C-channel images becomes one embedding per image: :meth:`ChannelStrategy.embed`,
    of dimension :meth:`ChannelStrategy.out_dim`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

from cellssl.data.dataset import CellDataset


class ChannelStrategy(ABC):
    """Base class of channel strategies. Subclasses are registered with
    ``cellssl_register_channel_strategies`` and built from their config dataclass."""

    name: str = "abstract"

    def check_channels(self, channel_names: Sequence[str]) -> None:
        """Raise if data with ``channel_names`` cannot be trained on or embedded; called before a run starts.

        The default accepts any channels. :raises cellssl.errors.DataError: saying what to change.
        """
        return None

    @abstractmethod
    def in_chans(self, channel_names: Sequence[str]) -> int:
        """Input channels of the backbone for data with ``channel_names``."""

    @abstractmethod
    def training_dataset(self, dataset: CellDataset) -> torch.utils.data.Dataset:
        """The dataset the SSL objective iterates over for ``dataset`` (yields
        :class:`~cellssl.data.sample.CellSample` with ``in_chans`` channels); called once per dataset."""

    @abstractmethod
    def embed(self, backbone: nn.Module, images: torch.Tensor, channel_names: Sequence[str]) -> torch.Tensor:
        """Embed a batch.

        :param backbone: module mapping ``(N, in_chans, H, W)`` to ``(N, D)``; ``D = backbone.embed_dim``.
        :param images: ``(B, C, H, W)`` float tensor, channels named by ``channel_names``.
        :param channel_names: the ``C`` channel names of ``images``.
        :return: ``(B, out_dim(channel_names, D))`` embeddings.
        :raises cellssl.errors.DataError: if the channels do not fit the strategy (e.g. a ``fixed``
            model given other channels).
        """

    @abstractmethod
    def block_names(self, channel_names: Sequence[str]) -> list[str]:
        """Names of the equal-sized blocks an embedding of data with ``channel_names`` is made of, in order.

        One name per channel for strategies that concatenate per-channel embeddings; a single name for an
        embedding over all channels (``fixed``) or a channel-independent aggregate (``mean``). Recorded in
        the embedding manifest (``info.blocks``), where channel attribution reads it.
        """

    def input_order(self, channel_names: Sequence[str]) -> list[int]:
        """Indices of ``channel_names`` in the order the backbone takes them (default: as given).

        :raises cellssl.errors.DataError: if the channels do not fit the strategy.
        """
        self.check_channels(channel_names)
        return list(range(len(channel_names)))

    def out_dim(self, channel_names: Sequence[str], embed_dim: int) -> int:
        """Dimension of the embedding of an image with ``channel_names`` for a backbone of ``embed_dim``:
        ``embed_dim`` per block of :meth:`block_names`."""
        return embed_dim * len(self.block_names(channel_names))

    def describe(self) -> str:
        """One line for logs."""
        return self.name
