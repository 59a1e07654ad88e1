"""The example plugin's dataset, channel strategy and evaluator pass cellssl.testing's conformance suite
(on a real Cell Painting field of view)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cellssl.api import EmbeddingTable
from cellssl.testing.conformance import ChannelStrategyContract, DatasetContract, EvaluatorContract

sys.path.insert(0, str(Path(__file__).resolve().parent / "example_plugin" / "src"))

from cellssl_example_tiles.centroid import NearestCentroid
from cellssl_example_tiles.configs import ChannelSubsetConfig, FovTilesConfig, NearestCentroidConfig
from cellssl_example_tiles.subset import ChannelSubset
from cellssl_example_tiles.tiles import FovTiles

FOV = "fields-of-view/bbbc022/IXMtest_A02_s9.tif"


@pytest.fixture(scope="module")
def tiles(shared_data: Path) -> FovTiles:
    config = FovTilesConfig(files=[str(shared_data / FOV)], channels=["Hoechst", "ConA", "SYTO14"], tile_size=96,
                            stride=96, bit_depth="uint16")
    return FovTiles(config)


class TestFovTilesContract(DatasetContract):
    expected_num_samples = 4 * 7  # 395 x 695 px field, 96 px tiles without overlap
    expected_channels = ("dna", "er", "rna")

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tiles: FovTiles) -> FovTiles:
        return tiles


class TestChannelSubsetContract(ChannelStrategyContract):
    rejected_channels = (("dna", "er"), ("er", "agp"))
    training_samples_per_image = 1

    def make_strategy(self) -> ChannelSubset:
        return ChannelSubset(ChannelSubsetConfig(keep=["dna", "rna"]))

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, tiles: FovTiles) -> FovTiles:
        return tiles


class TestNearestCentroidContract(EvaluatorContract):
    expected_metrics = ("accuracy",)

    def make_evaluator(self) -> NearestCentroid:
        return NearestCentroid(NearestCentroidConfig(label_column="half", test_fraction=0.4))

    @pytest.fixture(scope="class")
    @classmethod
    def table(cls, tiles: FovTiles) -> EmbeddingTable:
        """Per-channel mean and standard deviation of every real tile."""
        features = []
        for i in range(len(tiles)):
            pixels = tiles[i].image.flatten(1).numpy()
            features.append(np.concatenate([pixels.mean(1), pixels.std(1)]))
        return EmbeddingTable(tiles.metadata.copy(), np.asarray(features, dtype=np.float32))
