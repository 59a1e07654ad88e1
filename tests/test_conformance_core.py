"""The core's own datasets, channel strategies, backbones and evaluators pass cellssl.testing's conformance suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellssl.api import CellDataset, DataError, EmbeddingTable, Evaluator
from cellssl.testing.conformance import (
    BackboneContract,
    ChannelStrategyContract,
    DatasetContract,
    EvaluatorContract,
    TinyBackbone,
)

JURKAT_CHANNELS = ("brightfield", "dna", "darkfield")
PHASES = ("G1", "S_phase", "G2", "Prophase")


def _jurkat(shared_data: Path, folder: Path, per_class: int = 2) -> CellDataset:
    """A ``table`` dataset of ``per_class`` real Jurkat cells of each large phase (40x40, 3 channels)."""
    from cellssl.api import TableDataset, TableDatasetConfig

    meta = pd.read_csv(shared_data / "jurkat-cellcycle" / "metadata.csv")
    rows = pd.concat([meta[meta["phase"] == p].head(per_class) for p in PHASES], ignore_index=True)
    table = folder / "cells.csv"
    rows.to_csv(table, index=False)
    config = TableDatasetConfig(table=str(table), root=str(shared_data / "jurkat-cellcycle"), bit_depth="uint16",
                                label_columns=["phase"])
    return TableDataset(config)


@pytest.fixture(scope="module")
def jurkat(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> CellDataset:
    return _jurkat(shared_data, tmp_path_factory.mktemp("jurkat"))


# ---------------------------------------------------------------- datasets


class TestTableDatasetContract(DatasetContract):
    expected_num_samples = 8
    expected_channels = JURKAT_CHANNELS
    expected_label_columns = ("phase",)

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, jurkat: CellDataset) -> CellDataset:
        return jurkat


class TestSyntheticCellsContract(DatasetContract):
    expected_num_samples = 6
    expected_channels = ("dna", "protein")

    def make_dataset(self) -> CellDataset:
        from cellssl.data.synthetic import build_synthetic_cells
        from cellssl.data.synthetic_config import SyntheticCellsConfig

        return build_synthetic_cells(SyntheticCellsConfig(num_samples=6, image_size=16, num_channels=2))


def test_dataset_contract_catches_a_broken_dataset(jurkat: CellDataset) -> None:
    """The contract's checks fail on a dataset that breaks the contract (non-canonical, duplicate names)."""
    contract = DatasetContract()

    class Broken(CellDataset):
        metadata = jurkat.metadata
        channel_names = ("DAPI", "DAPI", "darkfield")

        def load_image(self, index: int):
            return jurkat.load_image(index)

    with pytest.raises(AssertionError, match="duplicate channel names"):
        contract.test_channel_names_are_canonical_and_unique(Broken())
    with pytest.raises(pytest.fail.Exception, match="implement `dataset`"):
        contract.make_dataset()


# ---------------------------------------------------------------- channel strategies


class _OnJurkat(ChannelStrategyContract):
    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, jurkat: CellDataset) -> CellDataset:
        return jurkat


class TestFixedContract(_OnJurkat):
    rejected_channels = (("dna", "brightfield"), ("dna", "brightfield", "protein"))
    training_samples_per_image = 1

    def make_strategy(self):
        from cellssl.channels.fixed import FixedChannels, FixedChannelsConfig

        return FixedChannels(FixedChannelsConfig(channels=list(JURKAT_CHANNELS)))


class TestBagOfChannelsConcatContract(_OnJurkat):
    training_samples_per_image = 3

    def make_strategy(self):
        from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig

        return BagOfChannels(BagOfChannelsConfig(aggregate="concat"))


class TestBagOfChannelsMeanContract(_OnJurkat):
    training_samples_per_image = 3

    def make_strategy(self):
        from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig

        return BagOfChannels(BagOfChannelsConfig(aggregate="mean"))


class TestPerChannelConcatContract(_OnJurkat):
    rejected_channels = (("brightfield", "darkfield"),)
    training_samples_per_image = 3

    def make_strategy(self):
        from cellssl.channels.per_channel import PerChannelConcat, PerChannelConcatConfig

        return PerChannelConcat(PerChannelConcatConfig(channel_order=["dna", "brightfield", "darkfield"]))


class TestPerChannelConcatZerosContract(_OnJurkat):
    training_samples_per_image = 3

    def make_strategy(self):
        from cellssl.channels.per_channel import PerChannelConcat, PerChannelConcatConfig

        return PerChannelConcat(PerChannelConcatConfig(channel_order=["dna", "protein", "darkfield"], missing="zeros"))


def test_strategy_contract_block_check_catches_a_wrong_out_dim(jurkat: CellDataset) -> None:
    """A strategy whose block names disagree with its embedding fails the contract."""
    import torch

    from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig

    class Lying(BagOfChannels):
        def block_names(self, channel_names):
            return ["one block"]

    strategy = Lying(BagOfChannelsConfig())
    images = torch.stack([jurkat[i].image for i in range(2)])
    with pytest.raises(AssertionError):
        ChannelStrategyContract().test_embed_shape_matches_block_names(strategy, jurkat, TinyBackbone(1), images)


def test_tiny_backbone_refuses_the_wrong_channel_count() -> None:
    import torch

    with pytest.raises(DataError, match=r"takes \(N, 2, H, W\)"):
        TinyBackbone(2)(torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------- backbones


class TestViTContract(BackboneContract):
    image_size = 16

    def make_backbone(self):
        from cellssl.models.vit import build_vit
        from cellssl.models.vit_config import ViTConfig

        config = ViTConfig(arch="vit_tiny", patch_size=8, img_size=16, embed_dim=32, depth=2, num_heads=2)
        return build_vit(config, in_chans=3)


class TestViTRegistersContract(BackboneContract):
    image_size = 16

    def make_backbone(self):
        from cellssl.models.vit import build_vit
        from cellssl.models.vit_config import ViTConfig

        config = ViTConfig(arch="vit_tiny", patch_size=8, img_size=16, embed_dim=32, depth=1, num_heads=2,
                           num_register_tokens=2)
        return build_vit(config, in_chans=1)


class TestResNetContract(BackboneContract):
    image_size = 16

    def make_backbone(self):
        from cellssl.models.resnet import build_resnet
        from cellssl.models.resnet_config import ResNetConfig

        return build_resnet(ResNetConfig(arch="resnet18", stem="small"), in_chans=2)


# ---------------------------------------------------------------- evaluators


def _intensity_table(dataset: CellDataset) -> EmbeddingTable:
    """Per-channel mean, std and 90th percentile of each real cell: a 9-D embedding with its metadata."""
    features = []
    for i in range(len(dataset)):
        image = dataset[i].image.flatten(1).numpy()
        features.append(np.concatenate([image.mean(1), image.std(1), np.quantile(image, 0.9, axis=1)]))
    return EmbeddingTable(dataset.metadata.copy(), np.asarray(features, dtype=np.float32))


@pytest.fixture(scope="module")
def jurkat_24(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> EmbeddingTable:
    return _intensity_table(_jurkat(shared_data, tmp_path_factory.mktemp("jurkat24"), per_class=6))


class _OnIntensities(EvaluatorContract):
    @pytest.fixture(scope="class")
    @classmethod
    def table(cls, jurkat_24: EmbeddingTable) -> EmbeddingTable:
        return jurkat_24


class TestKNNContract(_OnIntensities):
    expected_metrics = ("k1_macro_f1", "k3_macro_f1")

    def make_evaluator(self) -> Evaluator:
        from cellssl.eval.engines.splits import SplitConfig
        from cellssl.eval.knn import KNNEvaluatorConfig, build_knn_evaluator

        config = KNNEvaluatorConfig(label_column="phase", ks=[1, 3],
                                    split=SplitConfig(mode="fraction", test_fraction=0.5, seed=0))
        return build_knn_evaluator(config)


class TestLinearContract(_OnIntensities):
    def make_evaluator(self) -> Evaluator:
        from cellssl.eval.engines.splits import SplitConfig
        from cellssl.eval.linear import build_linear_evaluator
        from cellssl.eval.linear_config import LinearEvaluatorConfig

        config = LinearEvaluatorConfig(label_column="phase", split=SplitConfig(mode="fraction", test_fraction=0.5),
                                       learning_rates=[0.1], weight_decays=[0.0], epochs=2, min_steps=20)
        return build_linear_evaluator(config)


def test_evaluator_contract_refuses_non_numeric_metrics(jurkat_24: EmbeddingTable) -> None:
    with pytest.raises(AssertionError, match="finite numbers"):
        EvaluatorContract().test_returns_flat_numeric_metrics({"metrics": {"f1": float("nan")}, "config": {}})
    with pytest.raises(AssertionError, match="finite numbers"):
        EvaluatorContract().test_returns_flat_numeric_metrics({"metrics": {"ok": True}, "config": {}})
