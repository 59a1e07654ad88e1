"""The built-in channel strategies' parameters, importable without torch: :class:`FixedChannelsConfig`
(``fixed``), :class:`BagOfChannelsConfig` (``bag_of_channels``) and :class:`PerChannelConcatConfig`
(``per_channel_concat``); the strategies are in :mod:`cellssl.channels.fixed`, ``.bag`` and ``.per_channel``."""

from __future__ import annotations

from dataclasses import dataclass, field

AGGREGATES = ("concat", "mean")
MISSING_POLICIES = ("error", "zeros")


@dataclass
class FixedChannelsConfig:
    """``channels: {name: fixed, ...}``.

    :ivar channels: the channel names, in order, the model takes. Empty: the dataset's channels at
        training time (recorded in the resolved config of the run). At embedding time a dataset must
        provide these channels; with ``reorder_by_name`` a different order is rearranged by name.
    :ivar reorder_by_name: rearrange a dataset's channels by name when the set matches but the order
        differs (otherwise that is an error).
    """

    channels: list[str] = field(default_factory=list)
    reorder_by_name: bool = True


@dataclass
class BagOfChannelsConfig:
    """``channels: {name: bag_of_channels, aggregate: concat}``.

    :ivar aggregate: ``concat`` (per-channel embeddings side by side, dimension C x D, in the data's
        channel order) or ``mean`` (dimension D, independent of C).
    """

    aggregate: str = "concat"

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")


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
