"""Multi-crop views, their view-major collate, and the evaluation transform."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from cellssl.data.augment import AugmentConfig, UnknownChannelError
from cellssl.data.multicrop import EvalTransform, MultiCropConfig, MultiCropTransform, collate_multicrop
from cellssl.data.normalize import ChannelStats, NormalizeConfig, build_normalizer
from cellssl.data.sample import CellSample
from cellssl.errors import DataError

NAMES = {1: ("dna",), 3: ("brightfield", "dna", "darkfield"), 5: ("dna", "er", "rna", "agp", "mito")}


def no_drop() -> AugmentConfig:
    cfg = AugmentConfig()
    cfg.channel_drop.enabled = False
    return cfg


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_view_counts_and_shapes(channels: int) -> None:
    transform = MultiCropTransform(24, 12, n_global=2, n_local=5)
    views = transform(torch.rand(channels, 40, 33), NAMES[channels], 0)
    assert len(views["global"]) == 2 and len(views["local"]) == 5
    assert all(v.shape == (channels, 24, 24) and v.dtype == torch.float32 for v in views["global"])
    assert all(v.shape == (channels, 12, 12) and v.dtype == torch.float32 for v in views["local"])


def test_views_differ_and_are_reproducible() -> None:
    transform = MultiCropTransform(16, 8, n_global=2, n_local=3)
    image = torch.rand(3, 40, 40)
    a, b, c = (transform(image, NAMES[3], s) for s in (5, 5, 6))
    assert all(torch.equal(x, y) for x, y in zip(a["global"] + a["local"], b["global"] + b["local"]))
    assert not torch.allclose(a["global"][0], a["global"][1])
    assert not torch.allclose(a["global"][0], c["global"][0])


def test_images_smaller_than_crop_size() -> None:
    transform = MultiCropTransform(32, 16, n_global=2, n_local=4)
    views = transform(torch.rand(5, 6, 9), NAMES[5], 1)
    assert [tuple(v.shape) for v in views["global"]] == [(5, 32, 32)] * 2
    assert [tuple(v.shape) for v in views["local"]] == [(5, 16, 16)] * 4


def test_normalizer_applied_to_every_view() -> None:
    norm = build_normalizer(NormalizeConfig(mode="per_image"))
    transform = MultiCropTransform(16, 8, 2, 3, global_aug=no_drop(), local_aug=no_drop(), normalizer=norm)
    views = transform(torch.rand(3, 40, 40) + 0.5, NAMES[3], 2)
    for v in views["global"] + views["local"]:
        torch.testing.assert_close(v.mean(dim=(1, 2)), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(v.std(dim=(1, 2), correction=0), torch.ones(3), atol=1e-3, rtol=0)


def test_collate_is_view_major() -> None:
    batch = []
    for i in range(3):  # view v of image i is filled with 10*i + v
        batch.append({
            "global": [torch.full((2, 4, 4), 10.0 * i + v) for v in range(2)],
            "local": [torch.full((2, 3, 3), 10.0 * i + v) for v in range(4)],
            "index": i + 100,
            "name": f"cell{i}",
        })
    out = collate_multicrop(batch)
    assert out["global"].shape == (6, 2, 4, 4) and out["local"].shape == (12, 2, 3, 3)
    assert out["global"][:, 0, 0, 0].tolist() == [0, 10, 20, 1, 11, 21]
    assert out["local"][:, 0, 0, 0].tolist() == [10 * i + v for v in range(4) for i in range(3)]
    assert out["index"].tolist() == [100, 101, 102] and out["name"] == ["cell0", "cell1", "cell2"]


def test_collate_of_real_views_and_dataloader() -> None:
    transform = MultiCropTransform(16, 8, n_global=2, n_local=3)
    images = [torch.rand(3, 30, 30) for _ in range(4)]
    batch = [transform(img, NAMES[3], 10 + i) for i, img in enumerate(images)]
    out = collate_multicrop(batch)
    for v in range(2):
        for i in range(4):
            assert torch.equal(out["global"][v * 4 + i], batch[i]["global"][v])
    for v in range(3):
        for i in range(4):
            assert torch.equal(out["local"][v * 4 + i], batch[i]["local"][v])

    class Views(Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> dict:
            return transform.sample_views(CellSample(images[i % 4], NAMES[3], i), generator=i)

    loaded = next(iter(DataLoader(Views(), batch_size=5, collate_fn=collate_multicrop)))
    assert loaded["global"].shape == (10, 3, 16, 16) and loaded["local"].shape == (15, 3, 8, 8)
    assert loaded["index"].tolist() == [0, 1, 2, 3, 4]


def test_collate_errors_and_no_local_views() -> None:
    transform = MultiCropTransform(8, 4, n_global=2, n_local=0)
    a = transform(torch.rand(3, 10, 10), NAMES[3], 0)
    b = transform(torch.rand(1, 10, 10), NAMES[1], 0)
    assert collate_multicrop([a, a])["local"].numel() == 0
    with pytest.raises(DataError, match=r"'global' views have different shapes"):
        collate_multicrop([a, b])
    with pytest.raises(DataError, match="empty batch"):
        collate_multicrop([])


def test_protected_channel_checked_through_transform() -> None:
    cfg = AugmentConfig()
    cfg.channel_drop.protected = ["protein"]
    transform = MultiCropTransform(8, 4, global_aug=cfg)
    with pytest.raises(UnknownChannelError, match=r"\['protein'\].*\['dna', 'er'\]"):
        transform(torch.rand(2, 10, 10), ("dna", "er"), 0)


def test_config_from_yaml_with_dataset_stats() -> None:
    yaml = """
    global_size: 20
    local_size: 10
    n_local: 2
    global_aug: {channel_drop: {enabled: false}, brightness_contrast: {enabled: false}}
    local_aug: {channel_drop: {enabled: false}, brightness_contrast: {enabled: false}, blur: {enabled: true, p: 1.0}}
    normalize: {mode: dataset}
    """
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MultiCropConfig), OmegaConf.create(yaml)))
    assert isinstance(cfg, MultiCropConfig) and cfg.local_aug.blur.enabled
    stats = ChannelStats(mean={"dna": 0.5, "er": 0.5}, std={"dna": 0.25, "er": 0.25})
    views = MultiCropTransform.from_config(cfg, stats)(torch.full((2, 30, 30), 0.5), ("dna", "er"), 0)
    assert len(views["global"]) == 2 and len(views["local"]) == 2
    assert views["local"][0].shape == (2, 10, 10)
    # geometry and blur keep a constant image constant: at the dataset mean it normalises to 0
    assert all(float(v.abs().max()) < 1e-4 for v in views["global"] + views["local"])
    shifted = MultiCropTransform.from_config(cfg, stats)(torch.full((2, 30, 30), 1.0), ("dna", "er"), 0)
    torch.testing.assert_close(shifted["local"][1], torch.full((2, 10, 10), 2.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"multicrop\.local_scale must be"):
        MultiCropConfig(local_scale=[0.5, 0.1])


def test_eval_transform_resize_and_centre_crop() -> None:
    image = torch.rand(3, 40, 60)
    out = EvalTransform(40)(image, NAMES[3])
    assert torch.equal(out, image[:, :, 10:50])  # short side already 40: pure centre crop
    square = torch.rand(5, 20, 20)
    assert EvalTransform(32)(square, NAMES[5]).shape == (5, 32, 32)
    half = EvalTransform(10, crop_fraction=0.5)(square, NAMES[5])  # resize to 20 (no-op), keep centre
    assert torch.equal(half, square[:, 5:15, 5:15])
    norm = build_normalizer(NormalizeConfig(mode="per_image"))
    normed = EvalTransform(16, normalizer=norm)(torch.rand(1, 50, 30) + 1, NAMES[1])
    assert normed.shape == (1, 16, 16)
    assert abs(float(normed.mean())) < 1e-5
