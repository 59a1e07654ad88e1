"""Normalisation modes, dataset channel statistics on real images, and their JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from cellssl.data.dataset import CellDataset
from cellssl.data.normalize import (
    ChannelStats,
    DatasetNormalizer,
    NormalizeConfig,
    build_normalizer,
    compute_channel_stats,
)
from cellssl.errors import ConfigError, DataError

JURKAT_CHANNELS = ("brightfield", "dna", "darkfield")


class JurkatSubset(CellDataset):
    """A few real jurkat cells (uint16 OME-TIFF (3, 40, 40) scaled by 1/65535), optionally reordered."""

    def __init__(self, root: Path, per_class: int, order: tuple[int, ...] = (0, 1, 2)) -> None:
        meta = pd.read_csv(root / "metadata.csv")
        meta = meta[meta.phase.isin(["G1", "S_phase", "G2", "Prophase"])]
        self.metadata = meta.groupby("phase").head(per_class).reset_index(drop=True)
        self.root, self.order = root, list(order)
        self.channel_names = tuple(JURKAT_CHANNELS[i] for i in order)

    def raw(self, index: int) -> np.ndarray:
        return tifffile.imread(self.root / self.metadata.path[index])[self.order]

    def load_image(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.raw(index).astype(np.float32) / 65535.0)


@pytest.fixture(scope="module")
def jurkat(shared_data: Path) -> JurkatSubset:
    return JurkatSubset(shared_data / "jurkat-cellcycle", per_class=10)


@pytest.mark.parametrize("shape", [(1, 12, 9), (3, 40, 40), (5, 7, 11), (4, 3, 16, 16)])
def test_per_image_gives_zero_mean_unit_std(shape: tuple[int, ...]) -> None:
    image = torch.rand(shape) * torch.linspace(0.01, 3.0, shape[-3]).view(-1, 1, 1) + 0.2
    names = tuple(f"c{i}" for i in range(shape[-3]))
    out = build_normalizer(NormalizeConfig(mode="per_image"))(image, names)
    assert out.shape == image.shape and out.dtype == torch.float32
    mean = out.mean(dim=(-2, -1))
    std = out.double().std(dim=(-2, -1), correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)


def test_per_image_constant_channel_is_zero_not_nan() -> None:
    image = torch.stack([torch.zeros(6, 6), torch.rand(6, 6)])
    out = build_normalizer(NormalizeConfig())(image, ("a", "b"))
    assert torch.equal(out[0], torch.zeros(6, 6))


@pytest.mark.parametrize("mode", ["scale", "none"])
def test_scale_and_none_are_identity(mode: str) -> None:
    image = torch.rand(3, 5, 5)
    assert torch.equal(build_normalizer(NormalizeConfig(mode=mode))(image, ("a", "b", "c")), image)


def test_bad_mode_and_shape() -> None:
    with pytest.raises(ValueError, match=r"normalize\.mode must be one of .*'per_image'.*got 'zscore'"):
        NormalizeConfig(mode="zscore")
    with pytest.raises(ValueError, match=r"C=2"):
        build_normalizer(NormalizeConfig())(torch.rand(3, 4, 4), ("a", "b"))


def test_dataset_stats_match_numpy_on_real_images(jurkat: JurkatSubset) -> None:
    stats = compute_channel_stats(jurkat, progress=False)
    stack = np.stack([jurkat.raw(i) for i in range(len(jurkat))]).astype(np.float64) / 65535.0
    assert stats.num_images == len(jurkat) == 40
    for c, name in enumerate(JURKAT_CHANNELS):
        np.testing.assert_allclose(stats.mean[name], stack[:, c].mean(), rtol=1e-6)
        np.testing.assert_allclose(stats.std[name], stack[:, c].std(), rtol=1e-6)
        assert stats.pixels[name] == 40 * 40 * 40
    assert stats.mean["dna"] != stats.mean["brightfield"]


def test_dataset_stats_keyed_by_name_subset_and_workers(jurkat: JurkatSubset, shared_data: Path) -> None:
    reordered = JurkatSubset(shared_data / "jurkat-cellcycle", per_class=10, order=(2, 0, 1))
    assert reordered.channel_names == ("darkfield", "brightfield", "dna")
    a = compute_channel_stats(jurkat, progress=False)
    b = compute_channel_stats(reordered, num_workers=1, progress=False)
    for name in JURKAT_CHANNELS:
        assert a.mean[name] == pytest.approx(b.mean[name], rel=1e-9)
        assert a.std[name] == pytest.approx(b.std[name], rel=1e-9)
    sub1 = compute_channel_stats(jurkat, max_samples=7, seed=3, progress=False)
    sub2 = compute_channel_stats(jurkat, max_samples=7, seed=3, progress=False)
    sub3 = compute_channel_stats(jurkat, max_samples=7, seed=4, progress=False)
    assert sub1.num_images == 7 and sub1.mean == sub2.mean and sub1.mean != sub3.mean


def test_dataset_normalizer_by_name(jurkat: JurkatSubset) -> None:
    stats = compute_channel_stats(jurkat, progress=False)
    norm = build_normalizer(NormalizeConfig(mode="dataset"), stats)
    batch = torch.stack([jurkat[i].image for i in range(len(jurkat))])
    out = norm(batch, JURKAT_CHANNELS)
    per_channel = out.transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        per_channel.std(1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-3, rtol=0
    )
    # reversed channel order: each channel still gets its own statistics
    flipped = norm(batch.flip(1), tuple(reversed(JURKAT_CHANNELS)))
    torch.testing.assert_close(flipped, out.flip(1))
    # relative intensity between images is kept (unlike per_image)
    dna = out[:, 1].mean(dim=(-2, -1))
    assert float(dna.std()) > 0.1


def test_missing_channel_is_named(tmp_path: Path) -> None:
    stats = ChannelStats(mean={"dna": 0.1, "rna": 0.2}, std={"dna": 0.05, "rna": 0.1})
    path = stats.save(tmp_path / "stats.json")
    norm = build_normalizer(NormalizeConfig(mode="dataset", stats_path=str(path)))
    with pytest.raises(DataError, match=r"stats\.json have no entry for channel\(s\) \['protein'\].*'dna', 'rna'"):
        norm(torch.rand(2, 4, 4), ("dna", "protein"))


def test_stats_json_round_trip(tmp_path: Path) -> None:
    stats = ChannelStats(
        mean={"dna": 0.0026955, "brightfield": 0.0103}, std={"dna": 0.00357, "brightfield": 0.00095},
        pixels={"dna": 64000, "brightfield": 64000}, num_images=40,
    )
    path = stats.save(tmp_path / "sub" / "channel_stats.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["channel_stats.json"]  # no temp file left
    raw = json.loads(path.read_text())
    assert raw["mean"]["dna"] == 0.0026955 and raw["num_images"] == 40
    loaded = ChannelStats.load(path)
    assert (loaded.mean, loaded.std, loaded.pixels, loaded.num_images) == (
        stats.mean, stats.std, stats.pixels, stats.num_images,
    )
    assert loaded.source == str(path)
    image = torch.rand(2, 5, 5)
    expected = (image - torch.tensor([0.0026955, 0.0103]).view(2, 1, 1)) / (
        torch.tensor([0.00357, 0.00095]).view(2, 1, 1) + 1e-7
    )
    torch.testing.assert_close(DatasetNormalizer(loaded)(image, ("dna", "brightfield")), expected)


def test_stats_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.json does not exist; compute it with"):
        ChannelStats.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json is not readable JSON"):
        ChannelStats.load(bad)
    bad.write_text(json.dumps({"mean": {"dna": 1.0}}))
    with pytest.raises(DataError, match=r"lacks 'mean' and 'std'"):
        ChannelStats.load(bad)
    with pytest.raises(ConfigError, match=r"config key 'normalize\.stats_path'"):
        build_normalizer(NormalizeConfig(mode="dataset"))
