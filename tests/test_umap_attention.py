"""The umap and attention_maps evaluators write non-empty PNGs with the expected content and layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellssl.channels.bag import BagOfChannelsConfig, build_bag_of_channels
from cellssl.channels.fixed import FixedChannelsConfig, build_fixed
from cellssl.data.normalize import IdentityNormalizer
from cellssl.data.preprocess import EvalPreprocess
from cellssl.data.table import TableDatasetConfig, build_table_dataset
from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError, DataError
from cellssl.eval.attention_maps import AttentionMapsConfig, AttentionMapsEvaluator
from cellssl.eval.base import EvalContext
from cellssl.eval.umap import UMAPConfig, UMAPEvaluator, umap_2d
from cellssl.models.resnet import ResNetConfig, build_resnet
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.report.results import schema_problems


def _png(path: Path) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 1000
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image


def _two_clusters(n: int = 60) -> EmbeddingTable:
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b"] * (n // 2))
    emb = rng.normal(size=(n, 16)) + (labels == "a")[:, None] * 6.0
    meta = pd.DataFrame({"label": labels, "value": np.linspace(0.0, 1.0, n), "plate": ["p 1"] * n})
    meta.loc[::5, "plate"] = None  # 12 missing values: some are in any subsample of 50
    return EmbeddingTable(metadata=meta, embeddings=emb.astype(np.float32), manifest={})


def test_umap_pngs_are_written_per_column(tmp_path: Path) -> None:
    table = _two_clusters()
    config = UMAPConfig(color_by=["label", "value", "plate"], max_points=50, n_neighbors=10, metric="euclidean")
    result = UMAPEvaluator(config).evaluate(table, EvalContext(run_dir=tmp_path))
    assert result["metrics"] == {"points": 50, "rows_total": 60}
    assert schema_problems(result) == []
    files = [image["file"] for image in result["images"]]
    assert files == ["eval/umap/label.png", "eval/umap/value.png", "eval/umap/plate.png"]
    kinds = {image["column"]: (image["kind"], image["categories"]) for image in result["images"]}
    assert kinds["label"][0] == "categorical" and sorted(kinds["label"][1]) == ["a", "b"]
    assert kinds["value"][0] == "continuous"
    assert kinds["plate"] == ("categorical", ["p 1", "missing"])
    for file in files:
        width, height = _png(tmp_path / file).size
        assert width > 200 and height > 200
    # the categorical PNG is not blank: it holds the two category colours
    pixels = np.asarray(_png(tmp_path / files[0]).convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 20


def test_umap_is_seeded_and_separates_clusters() -> None:
    table = _two_clusters()
    first = umap_2d(table.embeddings, n_neighbors=10, metric="euclidean", seed=3)
    second = umap_2d(table.embeddings, n_neighbors=10, metric="euclidean", seed=3)
    np.testing.assert_array_equal(first, second)
    is_a = table.metadata["label"].to_numpy() == "a"
    gap = np.linalg.norm(first[is_a].mean(0) - first[~is_a].mean(0))
    spread = max(first[is_a].std(0).max(), first[~is_a].std(0).max())
    assert gap > 3 * spread


def test_umap_configuration_errors(tmp_path: Path) -> None:
    table = _two_clusters()
    with pytest.raises(ConfigError, match=r"umap\.color_by"):
        UMAPEvaluator(UMAPConfig()).evaluate(table, EvalContext(run_dir=tmp_path))
    with pytest.raises(DataError, match=r"columns \['moa'\] \(config key 'umap.color_by'\)"):
        UMAPEvaluator(UMAPConfig(color_by=["moa"])).evaluate(table, EvalContext(run_dir=tmp_path))
    with pytest.raises(ValueError, match="metric must be one of"):
        UMAPConfig(metric="hamming")


def _context(tmp_path: Path, shared_data: Path, strategy: object, backbone: object) -> EvalContext:
    root = shared_data / "bbbc021-crops"
    dataset = build_table_dataset(TableDatasetConfig(table=str(root / "metadata.csv"), bit_depth="uint16", limit=8))
    preprocess = EvalPreprocess(IdentityNormalizer(), 32)
    return EvalContext(run_dir=tmp_path, load_model=lambda: (strategy, backbone),
                       load_dataset=lambda: (dataset, preprocess))


def _tiny_vit(in_chans: int, registers: int) -> object:
    config = ViTConfig(arch="vit_tiny", patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2,
                       num_register_tokens=registers, layerscale_init=None)
    return build_vit(config, in_chans).eval()


def test_attention_grids_for_a_bag_of_channels_vit(tmp_path: Path, shared_data: Path) -> None:
    strategy = build_bag_of_channels(BagOfChannelsConfig())
    context = _context(tmp_path, shared_data, strategy, _tiny_vit(1, registers=1))
    result = AttentionMapsEvaluator(AttentionMapsConfig(indices=[0, 5])).evaluate(None, context)
    assert result["metrics"] == {"images": 2, "heads": 2, "registers": 1}
    assert schema_problems(result) == []
    assert result["channels"] == ["dna", "microtubules", "actin"]
    for entry in result["images"]:
        # one row per channel and query token (CLS, reg 1); columns: the channel, 2 heads, the mean
        assert (entry["rows"], entry["columns"], entry["panels"]) == (6, 4, 24)
        width, height = _png(tmp_path / entry["file"]).size
        assert height > width
    assert [entry["file"] for entry in result["images"]] == ["eval/attention_maps/image_000000.png",
                                                             "eval/attention_maps/image_000005.png"]


def test_attention_grids_for_a_fixed_multichannel_vit(tmp_path: Path, shared_data: Path) -> None:
    strategy = build_fixed(FixedChannelsConfig(channels=["actin", "dna", "microtubules"]))
    context = _context(tmp_path, shared_data, strategy, _tiny_vit(3, registers=0))
    config = AttentionMapsConfig(num_images=3, mean_over_heads=False)
    result = AttentionMapsEvaluator(config).evaluate(None, context)
    assert [entry["index"] for entry in result["images"]] == [0, 4, 7]  # spread over the 8 rows
    for entry in result["images"]:
        # one row (CLS, no registers); columns: the 3 input channels, then 2 heads
        assert (entry["rows"], entry["columns"], entry["panels"]) == (1, 5, 5)
        width, height = _png(tmp_path / entry["file"]).size
        assert width > 2 * height


def test_attention_maps_need_a_vit_and_a_model(tmp_path: Path, shared_data: Path) -> None:
    resnet = build_resnet(ResNetConfig(arch="resnet18", stem="small"), 1)
    context = _context(tmp_path, shared_data, build_bag_of_channels(BagOfChannelsConfig()), resnet)
    with pytest.raises(ConfigError, match=r"need a Vision Transformer backbone .* ResNet"):
        AttentionMapsEvaluator(AttentionMapsConfig()).evaluate(None, context)
    with pytest.raises(ConfigError, match="cannot run on an embedding table alone"):
        AttentionMapsEvaluator(AttentionMapsConfig()).evaluate(None, EvalContext(run_dir=tmp_path))
    context = _context(tmp_path, shared_data, build_bag_of_channels(BagOfChannelsConfig()), _tiny_vit(1, 0))
    with pytest.raises(ConfigError, match=r"rows \[99\] are past the end"):
        AttentionMapsEvaluator(AttentionMapsConfig(indices=[99])).evaluate(None, context)
