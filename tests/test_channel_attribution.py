"""channel_attribution: the channel that carries the label dominates both measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cellssl.channels.bag import BagOfChannelsConfig, build_bag_of_channels
from cellssl.config.validate import build_component
from cellssl.data.dataset import CellDataset
from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError
from cellssl.eval.base import EvalContext
from cellssl.eval.channel_attribution import (
    ChannelAttributionConfig,
    ChannelAttributionEvaluator,
    block_layout,
)
from cellssl.eval.engines.knn import knn_classify
from cellssl.eval.engines.metrics import multiclass_metrics
from cellssl.report.results import schema_problems

CHANNELS = ["dna", "rna", "er"]


def _table(n: int = 240, blocks: list[str] | None = None) -> EmbeddingTable:
    """3 blocks of 4 dimensions; only the ``rna`` block depends on the label."""
    rng = np.random.default_rng(0)
    labels = np.array(["G1", "S", "G2"] * (n // 3))
    centres = rng.normal(size=(3, 4)) * 3.0
    signal = centres[pd.factorize(labels, sort=True)[0]] + rng.normal(size=(n, 4))
    emb = np.hstack([rng.normal(size=(n, 4)), signal, rng.normal(size=(n, 4))]).astype(np.float32)
    manifest = {"info": {"channels": CHANNELS, "strategy": "test", "blocks": CHANNELS if blocks is None else blocks}}
    return EmbeddingTable(metadata=pd.DataFrame({"phase": labels}), embeddings=emb, manifest=manifest)


def _config(**kwargs: object) -> ChannelAttributionConfig:
    settings: dict = {"label_column": "phase", "k": 10, "score": "accuracy",
                      "split": {"mode": "fraction", "test_fraction": 0.3, "seed": 0}, **kwargs}
    return ChannelAttributionConfig(**settings)


@pytest.mark.parametrize("classifier", ["knn", "linear"])
def test_the_informative_block_dominates(tmp_path: Path, classifier: str) -> None:
    result = ChannelAttributionEvaluator(_config(classifier=classifier)).evaluate(
        _table(), EvalContext(run_dir=tmp_path))
    rows = {row["channel"]: row for row in result["table"]}
    assert list(rows) == CHANNELS
    assert rows["rna"]["alone"] > 0.9
    assert rows["dna"]["alone"] < 0.6 and rows["er"]["alone"] < 0.6  # chance is 1/3
    assert rows["rna"]["without"] < 0.6
    assert rows["rna"]["block_drop"] > 0.3
    assert rows["rna"]["block_drop"] > max(rows["dna"]["block_drop"], rows["er"]["block_drop"]) + 0.3
    assert result["metrics"]["block_drop_rna"] == rows["rna"]["block_drop"]
    assert result["blocks"]["block_dim"] == 4 and result["split"]["test_rows"] == 72
    assert schema_problems(result) == []


def test_block_scores_are_the_knn_scores_of_the_block(tmp_path: Path) -> None:
    table = _table()
    result = ChannelAttributionEvaluator(_config()).evaluate(table, EvalContext(run_dir=tmp_path))
    # recompute "rna alone" independently with the same split
    from cellssl.eval.engines.splits import SplitConfig, make_split

    codes, names = pd.factorize(table.metadata["phase"], sort=True)
    train, test = make_split(table.metadata, SplitConfig(mode="fraction", test_fraction=0.3, seed=0), codes)
    block = table.embeddings[:, 4:8]
    predicted = knn_classify(block[train], codes[train], block[test], [10])[10].labels
    expected = multiclass_metrics(codes[test], predicted, list(names), per_class=False)["accuracy"]
    assert result["table"][1]["alone"] == pytest.approx(expected)


def test_block_layout_from_the_manifest() -> None:
    from cellssl.channels.bag import BagOfChannels
    from cellssl.channels.configs import BagOfChannelsConfig, FixedChannelsConfig, PerChannelConcatConfig
    from cellssl.channels.fixed import FixedChannels
    from cellssl.channels.per_channel import PerChannelConcat

    def recorded(strategy: object) -> EmbeddingTable:
        return _table(blocks=strategy.block_names(CHANNELS))  # what export_embeddings records

    assert block_layout(recorded(BagOfChannels(BagOfChannelsConfig("concat"))), [], "ca") == CHANNELS
    ordered = PerChannelConcat(PerChannelConcatConfig(channel_order=["er", "dna", "rna"], missing="zeros"))
    assert block_layout(recorded(ordered), [], "ca") == ["er", "dna", "rna"]
    assert block_layout(recorded(PerChannelConcat(PerChannelConcatConfig())), [], "ca") == CHANNELS
    fixed = recorded(FixedChannels(FixedChannelsConfig()))
    assert block_layout(fixed, ["a", "b"], "ca") == ["a", "b"]  # 12 / 2
    with pytest.raises(ConfigError, match=r"one block \(mean over channels\), not one block per channel"):
        block_layout(recorded(BagOfChannels(BagOfChannelsConfig("mean"))), [], "ca")
    with pytest.raises(ConfigError, match=r"one block \(all channels\)"):
        block_layout(fixed, [], "ca")
    with pytest.raises(ConfigError, match=r"ca\.block_names.*5 blocks"):
        block_layout(_table(), ["a", "b", "c", "d", "e"], "ca")


class _OneInformativeChannel(CellDataset):
    """8x8 images with channels dna, rna, er; only the brightness of ``rna`` depends on the label."""

    def __init__(self, n: int = 90) -> None:
        rng = np.random.default_rng(1)
        self.labels = np.array(["a", "b", "c"] * (n // 3))
        level = {"a": 0.2, "b": 0.6, "c": 1.0}
        self.images = rng.uniform(0.0, 1.0, size=(n, 3, 8, 8)).astype(np.float32)
        self.images[:, 1] = np.array([level[x] for x in self.labels])[:, None, None] + \
            rng.normal(scale=0.05, size=(n, 8, 8))
        self.metadata = pd.DataFrame({"phase": self.labels})
        self.channel_names = tuple(CHANNELS)

    def load_image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.images[index])


class _MeanStd(nn.Module):
    """A 1-channel 'backbone': mean and standard deviation of the image (embed_dim 2, no parameters)."""

    in_chans = 1
    embed_dim = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], dim=1)


def test_drop_one_channel_re_embeds_with_the_model(tmp_path: Path) -> None:
    dataset = _OneInformativeChannel()
    strategy = build_bag_of_channels(BagOfChannelsConfig())
    context = EvalContext(run_dir=tmp_path, load_model=lambda: (strategy, _MeanStd()),
                          load_dataset=lambda: (dataset, lambda image, names: image))
    config = _config(block_importance=False, drop_channel=True, max_images=60, metric="l2", k=5)
    result = ChannelAttributionEvaluator(config).evaluate(_table(), context)
    assert result["drop_channel"]["images"] == 60 and result["split"]["drop_channel_test_rows"] == 18
    assert schema_problems(result) == []
    rows = {row["channel"]: row for row in result["table"]}
    assert result["metrics"]["drop_channel_baseline"] > 0.9
    assert rows["rna"]["drop_channel_score"] < 0.6
    assert rows["rna"]["drop_channel_delta"] > 0.3
    assert abs(rows["dna"]["drop_channel_delta"]) < 0.2 and abs(rows["er"]["drop_channel_delta"]) < 0.2


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"channel_attribution\.drop_channel.*needs the run's model"):
        ChannelAttributionEvaluator(_config(block_importance=False, drop_channel=True)).evaluate(
            _table(), EvalContext(run_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"channel_attribution\.label_column"):
        ChannelAttributionEvaluator(ChannelAttributionConfig()).evaluate(_table(), EvalContext(run_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"eval\[1\].*enable block_importance and/or drop_channel"):
        build_component({"name": "channel_attribution", "block_importance": False}, "evaluator", "eval[1]")
    with pytest.raises(ConfigError, match=r"eval\[1\].*classifier must be one of"):
        build_component({"name": "channel_attribution", "classifier": "svm"}, "evaluator", "eval[1]")
