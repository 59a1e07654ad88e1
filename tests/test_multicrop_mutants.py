"""Edges of cellssl.data.multicrop that mutation testing found unpinned: defaults, wiring, collate, eval resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cellssl.data.augment import AugmentConfig, resize
from cellssl.data.multicrop import EvalTransform, MultiCropConfig, MultiCropTransform, collate_multicrop
from cellssl.data.normalize import ChannelStats, DatasetNormalizer, IdentityNormalizer, NormalizeConfig
from cellssl.data.sample import CellSample
from cellssl.errors import DataError

NAMES = ("brightfield", "dna", "darkfield")


@pytest.fixture(scope="module")
def jurkat(shared_data: Path) -> torch.Tensor:
    path = sorted((shared_data / "jurkat-cellcycle").rglob("*.tif*"))[0]
    return torch.from_numpy(tifffile.imread(path).astype(np.float32) / 65535.0)


def test_defaults_and_count_checks() -> None:
    transform = MultiCropTransform(16, 8)
    assert (transform.n_global, transform.n_local) == (2, 8)
    assert (transform.global_size, transform.local_size) == (16, 8)
    assert transform.global_views.crop.scale == [0.4, 1.0] and transform.local_views.crop.scale == [0.05, 0.4]
    assert transform.global_views.size == 16 and transform.local_views.size == 8
    assert isinstance(transform.normalizer, IdentityNormalizer)
    assert transform.global_views.config == AugmentConfig() == transform.local_views.config
    for n_global, n_local in ((0, 2), (1, -1)):
        with pytest.raises(ValueError, match=rf"^need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}$"):
            MultiCropTransform(16, 8, n_global=n_global, n_local=n_local)
    one = MultiCropTransform(16, 8, n_global=1, n_local=0)
    views = one(torch.rand(1, 20, 20), ("dna",), 0)
    assert len(views["global"]) == 1 and views["local"] == []


def test_from_config_wires_every_field() -> None:
    global_aug, local_aug = AugmentConfig(), AugmentConfig()
    global_aug.hflip.p, local_aug.hflip.p = 0.25, 0.75
    for aug in (global_aug, local_aug):  # geometry only: a constant image stays constant
        aug.brightness_contrast.enabled = aug.channel_drop.enabled = False
    config = MultiCropConfig(global_size=20, local_size=10, n_global=3, n_local=4, global_scale=[0.5, 0.9],
                             local_scale=[0.1, 0.3], global_aug=global_aug, local_aug=local_aug,
                             normalize=NormalizeConfig(mode="dataset"))
    stats = ChannelStats(mean={"dna": 0.5}, std={"dna": 0.25})
    transform = MultiCropTransform.from_config(config, stats)
    assert (transform.n_global, transform.n_local, transform.global_size, transform.local_size) == (3, 4, 20, 10)
    assert transform.global_views.crop.scale == [0.5, 0.9] and transform.local_views.crop.scale == [0.1, 0.3]
    assert transform.global_views.config.hflip.p == 0.25 and transform.local_views.config.hflip.p == 0.75
    assert isinstance(transform.normalizer, DatasetNormalizer) and transform.normalizer.stats is stats
    views = transform(torch.full((1, 30, 30), 0.75), ("dna",), 0)
    assert [tuple(v.shape) for v in views["global"]] == [(1, 20, 20)] * 3
    assert [tuple(v.shape) for v in views["local"]] == [(1, 10, 10)] * 4
    # (0.75 - 0.5) / (0.25 + 1e-7) everywhere
    torch.testing.assert_close(views["local"][2], torch.full((1, 10, 10), 0.25 / (0.25 + 1e-7)))


def test_views_are_float32_normalised_by_name(jurkat: torch.Tensor) -> None:
    seen: list[tuple[str, ...]] = []

    def record(image: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        seen.append(names)
        return image * 2

    transform = MultiCropTransform(16, 8, n_global=2, n_local=1, normalizer=record)
    plain = MultiCropTransform(16, 8, n_global=2, n_local=1)
    views = transform(jurkat.double(), list(NAMES), 3)
    reference = plain(jurkat, NAMES, 3)
    assert seen == [NAMES] * 3
    for v, r in zip(views["global"] + views["local"], reference["global"] + reference["local"], strict=True):
        assert v.dtype == torch.float32
        torch.testing.assert_close(v, r * 2)


def test_sample_views_carry_the_index(jurkat: torch.Tensor) -> None:
    transform = MultiCropTransform(16, 8, n_global=2, n_local=2)
    out = transform.sample_views(CellSample(jurkat, NAMES, 17, {"phase": "G1"}), 4)
    direct = transform(jurkat, NAMES, 4)
    assert sorted(out) == ["global", "index", "local"] and out["index"] == 17
    assert all(torch.equal(a, b) for a, b in zip(out["global"] + out["local"], direct["global"] + direct["local"],
                                                 strict=True))


def test_collate_messages_and_extra_keys() -> None:
    g = [torch.zeros(1, 4, 4), torch.ones(1, 4, 4)]
    with pytest.raises(DataError, match=r"^collate_multicrop: images have different numbers of 'local' views: "
                                        r"\[0, 2\]$"):
        collate_multicrop([{"global": g, "local": []}, {"global": g, "local": g}])
    with pytest.raises(DataError, match=r"^collate_multicrop: 'global' views have different shapes \[\(1, 4, 4\), "
                                        r"\(2, 4, 4\)\]; batch only images with the same channel count \(one dataset, "
                                        r"or a channel strategy that unifies channels\)$"):
        collate_multicrop([{"global": g}, {"global": [torch.zeros(2, 4, 4)] * 2}])
    with pytest.raises(DataError, match=r"^collate_multicrop got an empty batch$"):
        collate_multicrop([])
    batch = [{"global": g, "index": i, "weight": 0.5 * i, "flag": i == 1, "name": f"c{i}", "vec": torch.full((2,), i),
              "mixed": [1, "a"][i]} for i in range(2)]
    out = collate_multicrop(batch)
    assert out["local"].shape == (0,) and out["global"].shape == (4, 1, 4, 4)
    assert out["global"][:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # view-major
    assert torch.equal(out["index"], torch.tensor([0, 1])) and torch.equal(out["weight"], torch.tensor([0.0, 0.5]))
    assert out["flag"] == [False, True] and out["name"] == ["c0", "c1"] and out["mixed"] == [1, "a"]
    assert torch.equal(out["vec"], torch.tensor([[0, 0], [1, 1]]))
    assert sorted(out) == ["flag", "global", "index", "local", "mixed", "name", "vec", "weight"]


def test_eval_transform_arguments() -> None:
    for size, fraction in ((0, 1.0), (8, 0.0), (8, 1.5)):
        with pytest.raises(ValueError, match=rf"^EvalTransform needs size >= 1 and 0 < crop_fraction <= 1, got {size}, "
                                             rf"{fraction}$"):
            EvalTransform(size, crop_fraction=fraction)
    tiny = EvalTransform(1)
    assert tiny.crop_fraction == 1.0 and isinstance(tiny.normalizer, IdentityNormalizer)
    assert tiny(torch.rand(2, 5, 5), ("a", "b")).shape == (2, 1, 1)


@pytest.mark.parametrize("shape", [(3, 20, 30), (3, 30, 20)])
def test_eval_transform_resize_then_centre_crop_by_hand(jurkat: torch.Tensor, shape: tuple[int, int, int]) -> None:
    image = resize(jurkat, shape[1:])
    out = EvalTransform(10, crop_fraction=0.8)(image, NAMES)
    short, long = 12, 18  # round(10 / 0.8) = round(12.5) = 12; 30 * 12 / 20 = 18
    size = (short, long) if shape[1] < shape[2] else (long, short)
    resized = resize(image, size, antialias=True)
    top, left = (size[0] - 10) // 2, (size[1] - 10) // 2
    assert (top, left) == ((1, 4) if shape[1] < shape[2] else (4, 1))
    torch.testing.assert_close(out, resized[:, top:top + 10, left:left + 10], rtol=0, atol=0)
    assert out.is_contiguous() and out.dtype == torch.float32


def test_eval_transform_normalises_the_crop_by_name() -> None:
    stats = ChannelStats(mean={"a": 1.0, "b": 0.0}, std={"a": 1.0, "b": 2.0})
    out = EvalTransform(4, normalizer=DatasetNormalizer(stats, eps=0.0))(torch.full((2, 8, 8), 3.0), ["b", "a"])
    torch.testing.assert_close(out, torch.stack([torch.full((4, 4), 1.5), torch.full((4, 4), 2.0)]))


def test_collate_of_one_image(jurkat: torch.Tensor) -> None:
    views = MultiCropTransform(16, 8, n_global=2, n_local=3).sample_views(CellSample(jurkat, NAMES, 4), 0)
    out = collate_multicrop([views])
    assert out["global"].shape == (2, 3, 16, 16) and out["local"].shape == (3, 3, 8, 8)
    assert torch.equal(out["global"][1], views["global"][1]) and torch.equal(out["index"], torch.tensor([4]))
