"""Channel strategies: N x C training samples, folded inference, named concatenation, fixed checks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch import nn

from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig
from cellssl.channels.fixed import FixedChannels, FixedChannelsConfig
from cellssl.channels.per_channel import PerChannelConcat, PerChannelConcatConfig
from cellssl.channels.single_channel import ChannelSampleDataset
from cellssl.data.synthetic import SyntheticCells, SyntheticCellsConfig
from cellssl.errors import DataError


class CountingBackbone(nn.Module):
    """(N, C, H, W) -> (N, 4): simple per-image statistics; counts forward calls."""

    embed_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        flat = x.flatten(1)
        return torch.stack([flat.mean(1), flat.std(1), flat.amax(1), flat.amin(1)], dim=1)


def _dataset(n: int = 6, channels: int = 3) -> SyntheticCells:
    return SyntheticCells(SyntheticCellsConfig(num_samples=n, image_size=16, num_channels=channels))


def test_bag_training_samples_are_every_image_channel_pair_once() -> None:
    dataset = _dataset(n=7, channels=3)
    samples = BagOfChannels(BagOfChannelsConfig()).training_dataset(dataset)
    assert len(samples) == 7 * 3
    seen = Counter()
    for i in range(len(samples)):
        sample = samples[i]
        assert sample.image.shape == (1, 16, 16)
        source = dataset[sample.index]
        channel = source.channels.index(sample.channels[0])
        # the selected channel is really the requested one, pixel for pixel
        assert torch.equal(sample.image[0], source.image[channel])
        assert sample.meta["channel"] == sample.channels[0]
        seen[(sample.index, sample.channels[0])] += 1
    assert set(seen.values()) == {1}
    assert len(seen) == 21
    assert {channel for _, channel in seen} == {"dna", "protein", "membrane"}


def test_channel_samples_concatenate_datasets_with_different_channel_counts() -> None:
    combined = ChannelSampleDataset([_dataset(n=3, channels=3), _dataset(n=4, channels=2)])
    assert len(combined) == 3 * 3 + 4 * 2
    assert combined.locate(8) == (0, 2, 2)
    assert combined.locate(9) == (1, 0, 0)
    assert combined.locate(16) == (1, 3, 1)
    with pytest.raises(IndexError, match="out of range"):
        combined.locate(17)


def test_bag_embed_folds_channels_into_one_forward() -> None:
    images = torch.rand(5, 3, 8, 8)
    backbone = CountingBackbone()
    concat = BagOfChannels(BagOfChannelsConfig(aggregate="concat")).embed(backbone, images, ["a", "b", "c"])
    assert backbone.calls == 1 and backbone.batch_sizes == [15]
    assert concat.shape == (5, 12)
    # block c of image i is the embedding of channel c alone
    expected = CountingBackbone()(images[2:3, 1:2])
    torch.testing.assert_close(concat[2, 4:8], expected[0])
    mean = BagOfChannels(BagOfChannelsConfig(aggregate="mean")).embed(backbone, images, ["a", "b", "c"])
    torch.testing.assert_close(mean, concat.reshape(5, 3, 4).mean(1))
    assert BagOfChannels(BagOfChannelsConfig("mean")).out_dim(["a", "b", "c"], 4) == 4
    assert BagOfChannels(BagOfChannelsConfig("concat")).out_dim(["a", "b", "c"], 4) == 12


def test_bag_config_rejects_unknown_aggregate() -> None:
    with pytest.raises(ValueError, match="aggregate must be one of"):
        BagOfChannelsConfig(aggregate="max")


def test_per_channel_concat_orders_by_name_and_fills_missing() -> None:
    images = torch.rand(2, 3, 8, 8)
    names = ["protein", "dna", "er"]
    strategy = PerChannelConcat(PerChannelConcatConfig(channel_order=["dna", "rna", "protein"], missing="zeros"))
    out = strategy.embed(CountingBackbone(), images, names)
    assert out.shape == (2, 12) == (2, strategy.out_dim(names, 4))
    reference = CountingBackbone()
    torch.testing.assert_close(out[:, 0:4], reference(images[:, 1:2]))  # dna
    assert torch.count_nonzero(out[:, 4:8]) == 0  # rna is missing
    torch.testing.assert_close(out[:, 8:12], reference(images[:, 0:1]))  # protein


def test_per_channel_concat_fold_and_loop_agree() -> None:
    images = torch.rand(3, 4, 8, 8)
    names = ["a", "b", "c", "d"]
    backbone = CountingBackbone()
    folded = PerChannelConcat(PerChannelConcatConfig(fold=True)).embed(backbone, images, names)
    looped = PerChannelConcat(PerChannelConcatConfig(fold=False)).embed(backbone, images, names)
    torch.testing.assert_close(folded, looped)
    assert backbone.batch_sizes == [12, 3, 3, 3, 3]


def test_per_channel_concat_missing_channel_error() -> None:
    strategy = PerChannelConcat(PerChannelConcatConfig(channel_order=["dna", "rna"]))
    with pytest.raises(DataError, match=r"lacks \['rna'\].*channels.missing: zeros"):
        strategy.embed(CountingBackbone(), torch.rand(1, 2, 8, 8), ["dna", "er"])


def test_fixed_uses_all_channels_and_checks_them() -> None:
    strategy = FixedChannels(FixedChannelsConfig(channels=["dna", "protein", "membrane"]))
    assert strategy.in_chans(["dna", "protein", "membrane"]) == 3
    images = torch.rand(2, 3, 8, 8)
    seen = []

    class Recorder(CountingBackbone):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return super().forward(x)

    strategy.embed(Recorder(), images, ["membrane", "dna", "protein"])  # same set, other order
    torch.testing.assert_close(seen[0], images[:, [1, 2, 0]])
    with pytest.raises(DataError, match=r"missing: \['membrane'\], unexpected: \['er'\]"):
        strategy.embed(Recorder(), images, ["dna", "protein", "er"])
    strict = FixedChannels(FixedChannelsConfig(channels=["dna", "protein"], reorder_by_name=False))
    with pytest.raises(DataError, match="only takes the channels it was trained on"):
        strict.out_dim(["protein", "dna"], 8)
