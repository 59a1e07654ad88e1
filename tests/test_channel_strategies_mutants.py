"""Edges of the bag_of_channels and per_channel_concat strategies that mutation testing found unpinned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig, build_bag_of_channels
from cellssl.channels.per_channel import PerChannelConcat, PerChannelConcatConfig, build_per_channel_concat
from cellssl.data.synthetic import SyntheticCells, SyntheticCellsConfig
from cellssl.errors import DataError


class Stats(nn.Module):
    """(N, 1, H, W) -> (N, 3): mean, max, min of each image; records the batch sizes it saw."""

    embed_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == 1, "a single-channel backbone"
        self.batch_sizes.append(x.shape[0])
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat.amax(1), flat.amin(1)], dim=1)


def _images(batch: int, channels: int) -> torch.Tensor:
    # channel c of image b is constant 10 * b + c (+ a ramp), so every block is recognisable
    ramp = torch.linspace(0, 1, 16).view(1, 1, 4, 4)
    values = (10 * torch.arange(batch).view(-1, 1) + torch.arange(channels).view(1, -1)).float()
    return values.view(batch, channels, 1, 1) + ramp


def _close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def _block(value: float) -> list[float]:
    return [value + 0.5, value + 1.0, value]


# ------------------------------------------------------------------------------------------------ bag_of_channels


def test_bag_contract_and_names() -> None:
    concat = build_bag_of_channels(BagOfChannelsConfig(aggregate="concat"))
    mean = build_bag_of_channels(BagOfChannelsConfig(aggregate="mean"))
    assert isinstance(concat, BagOfChannels) and concat.config.aggregate == "concat"
    assert concat.in_chans(["dna", "rna", "er"]) == 1 == mean.in_chans(["dna"])
    assert concat.block_names(["dna", "rna"]) == ["dna", "rna"]
    assert mean.block_names(["dna", "rna"]) == ["mean over channels"]
    assert concat.describe() == "bag_of_channels (aggregate=concat)"
    assert mean.describe() == "bag_of_channels (aggregate=mean)"
    assert BagOfChannels.name == "bag_of_channels"


def test_bag_embed_values_by_hand() -> None:
    images = _images(2, 3)
    concat = BagOfChannels(BagOfChannelsConfig(aggregate="concat")).embed(Stats(), images, ["a", "b", "c"])
    _close(concat, [_block(0) + _block(1) + _block(2), _block(10) + _block(11) + _block(12)])
    mean = BagOfChannels(BagOfChannelsConfig(aggregate="mean")).embed(Stats(), images, ["a", "b", "c"])
    _close(mean, [_block(1), _block(11)])


def test_training_datasets_have_one_sample_per_channel() -> None:
    data = SyntheticCells(SyntheticCellsConfig(num_samples=3, image_size=16, num_channels=2))
    for strategy in (BagOfChannels(BagOfChannelsConfig()), PerChannelConcat(PerChannelConcatConfig())):
        samples = strategy.training_dataset(data)
        assert len(samples) == 6 and samples[5].image.shape == (1, 16, 16)
        assert torch.equal(samples[5].image[0], data[2].image[1])


# ------------------------------------------------------------------------------------------------ per_channel_concat


def test_per_channel_layout_follows_data_without_an_order() -> None:
    strategy = build_per_channel_concat(PerChannelConcatConfig())
    assert isinstance(strategy, PerChannelConcat) and strategy.name == "per_channel_concat"
    assert strategy.layout(("er", "dna")) == ["er", "dna"]
    assert strategy.block_names(("er", "dna")) == ["er", "dna"]
    assert strategy.in_chans(["er", "dna"]) == 1
    assert strategy.describe() == "per_channel_concat (data order; missing=error)"
    out = strategy.embed(Stats(), _images(1, 2), ["er", "dna"])
    _close(out, [_block(0) + _block(1)])


def test_per_channel_order_selects_and_reorders_by_name() -> None:
    config = PerChannelConcatConfig(channel_order=["dna", "protein"])
    strategy = PerChannelConcat(config)
    assert strategy.describe() == "per_channel_concat (dna, protein; missing=error)"
    assert strategy.layout(["protein", "er", "dna"]) == ["dna", "protein"]
    backbone = Stats()
    out = strategy.embed(backbone, _images(2, 3), ["protein", "er", "dna"])  # er is not in the layout: dropped
    _close(out, [_block(2) + _block(0), _block(12) + _block(10)])
    assert backbone.batch_sizes == [4]  # folded: 2 images x 2 selected channels in one pass
    strategy.check_channels(["dna", "protein"])


def test_per_channel_missing_zeros_one_by_one() -> None:
    strategy = PerChannelConcat(PerChannelConcatConfig(channel_order=["rna", "dna", "mito"], missing="zeros",
                                                       fold=False))
    assert strategy.describe() == "per_channel_concat (rna, dna, mito; missing=zeros)"
    backbone = Stats()
    out = strategy.embed(backbone, _images(2, 2), ["dna", "er"])
    _close(out, [[0.0] * 3 + _block(0) + [0.0] * 3, [0.0] * 3 + _block(10) + [0.0] * 3])
    assert backbone.batch_sizes == [2]  # one pass per present channel
    assert strategy.block_names(["dna"]) == ["rna", "dna", "mito"]
    strategy.check_channels(["dna"])


def test_per_channel_error_messages() -> None:
    strict = PerChannelConcat(PerChannelConcatConfig(channel_order=["dna", "rna"]))
    message = (r"^per_channel_concat expects channels \['dna', 'rna'\] but the data lacks \['rna'\] \(data channels: "
               r"\['dna', 'er'\]\)\. Set `channels.missing: zeros` to leave their embedding blocks at zero, or change "
               r"`channels.channel_order`\.$")
    for call in (lambda: strict.check_channels(("dna", "er")), lambda: strict.block_names(("dna", "er")),
                 lambda: strict.embed(Stats(), _images(1, 2), ("dna", "er"))):
        with pytest.raises(DataError, match=message):
            call()
    lenient = PerChannelConcat(PerChannelConcatConfig(channel_order=["dna", "rna"], missing="zeros"))
    none_present = r"^none of the channels \['dna', 'rna'\] is present in the data \(\['er'\]\)$"
    for call in (lambda: lenient.check_channels(["er"]), lambda: lenient.block_names(["er"])):
        with pytest.raises(DataError, match=none_present):
            call()
    plain = PerChannelConcat(PerChannelConcatConfig())
    with pytest.raises(DataError, match=r"^none of the channels \[\] is present in the data \(\[\]\)$"):
        plain.check_channels([])
