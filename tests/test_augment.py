"""Augmentations: shapes for any channel count, reproducibility, exact geometry and intensity maths."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms.v2 import functional as TF

from cellssl.data.augment import (
    AugmentationPipeline,
    AugmentConfig,
    BrightnessContrast,
    BrightnessContrastConfig,
    ChannelDrop,
    ChannelDropConfig,
    CropConfig,
    FlipConfig,
    GaussianNoise,
    IntensityRescale,
    IntensityRescaleConfig,
    NoiseConfig,
    RandomFlip,
    RandomResizedCrop,
    RandomRot90,
    Rot90Config,
    UnknownChannelError,
    gaussian_blur,
    make_generator,
)
from cellssl.errors import CellsslError, ConfigError

NAMES = {1: ("dna",), 3: ("brightfield", "dna", "darkfield"), 5: ("dna", "er", "rna", "agp", "mito")}


def everything_on() -> AugmentConfig:
    cfg = AugmentConfig()
    for sub in (cfg.blur, cfg.noise, cfg.rescale):
        sub.enabled = True
    cfg.rescale.channels = ["dna"]
    cfg.channel_drop.p = 0.5
    return cfg


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_pipeline_shapes_and_dtype(channels: int) -> None:
    pipe = AugmentationPipeline(everything_on(), size=24)
    image = torch.rand(channels, 37, 29)
    for seed in range(5):
        out = pipe(image, NAMES[channels], seed)
        assert out.shape == (channels, 24, 24)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
    before = image.clone()
    pipe(image, NAMES[channels], 0)
    assert torch.equal(image, before)


def test_same_seed_same_output_other_seed_differs() -> None:
    pipe = AugmentationPipeline(everything_on(), size=16)
    image = torch.rand(3, 40, 40)
    a = pipe(image, NAMES[3], 123)
    b = pipe(image, NAMES[3], torch.Generator().manual_seed(123))
    c = pipe(image, NAMES[3], 124)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_generator_stream_advances() -> None:
    gen = make_generator(7)
    pipe = AugmentationPipeline(everything_on(), size=16)
    image = torch.rand(3, 40, 40)
    assert not torch.allclose(pipe(image, NAMES[3], gen), pipe(image, NAMES[3], gen))


def test_missing_size_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"augment\.crop\.size"):
        AugmentationPipeline(AugmentConfig())


def test_flips_exact() -> None:
    image = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    gen = make_generator(0)
    h = RandomFlip(FlipConfig(p=1.0), dim=-1)(image, ("a", "b"), gen)
    v = RandomFlip(FlipConfig(p=1.0), dim=-2)(image, ("a", "b"), gen)
    for c in range(2):
        for i in range(3):
            for j in range(4):
                assert h[c, i, j] == image[c, i, 3 - j]
                assert v[c, i, j] == image[c, 2 - i, j]
    assert torch.equal(RandomFlip(FlipConfig(p=0.0), dim=-1)(image, ("a", "b"), gen), image)


def _rotate_ccw_by_hand(plane: list[list[float]]) -> list[list[float]]:
    rows, cols = len(plane), len(plane[0])
    return [[plane[j][cols - 1 - i] for j in range(rows)] for i in range(cols)]


def test_rot90_exact_and_all_angles_drawn() -> None:
    image = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3)
    expected = {}
    plane = [image[c].tolist() for c in range(2)]
    for k in (1, 2, 3):
        plane = [_rotate_ccw_by_hand(p) for p in plane]
        expected[k] = torch.tensor(plane)
    rot = RandomRot90(Rot90Config(p=1.0))
    seen = set()
    for seed in range(40):
        out = rot(image, ("a", "b"), make_generator(seed))
        matches = [k for k, e in expected.items() if e.shape == out.shape and torch.equal(e, out)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {1, 2, 3}


def test_brightness_contrast_fixed_factors() -> None:
    image = torch.rand(3, 8, 8)
    aug = BrightnessContrast(BrightnessContrastConfig(p=1.0, brightness=[1.5, 1.5], contrast=[0.5, 0.5]))
    out = aug(image, NAMES[3], make_generator(0))
    mean = image.mean(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out, ((image - mean) * 0.5 + mean) * 1.5)
    # contrast changes the spread around the channel mean, brightness scales the mean
    torch.testing.assert_close(out.mean(dim=(1, 2)), 1.5 * image.mean(dim=(1, 2)))


def test_brightness_contrast_independent_per_channel() -> None:
    image = torch.rand(5, 6, 6) + 0.5
    cfg = BrightnessContrastConfig(p=1.0, brightness=[0.5, 2.0], contrast=[0.3, 1.7])
    out = BrightnessContrast(cfg)(image, NAMES[5], make_generator(3))
    brights, contrasts = [], []
    for c in range(5):
        x, y = image[c].flatten().double(), out[c].flatten().double()
        slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
        intercept = y.mean() - slope * x.mean()
        # y = k*b*x + m*b*(1-k)  =>  b = slope + intercept / m,  k = slope / b
        b = slope + intercept / x.mean()
        brights.append(float(b))
        contrasts.append(float(slope / b))
    assert all(0.5 - 1e-4 <= b <= 2.0 + 1e-4 for b in brights)
    assert all(0.3 - 1e-4 <= k <= 1.7 + 1e-4 for k in contrasts)
    assert len({round(b, 3) for b in brights}) == 5
    assert len({round(k, 3) for k in contrasts}) == 5


def test_channel_drop_never_all_never_protected() -> None:
    names = ("microtubules", "protein", "dna", "er")
    drop = ChannelDrop(ChannelDropConfig(p=1.0, max_drop=3, protected=["protein"]))
    image = torch.rand(4, 5, 5) + 0.1
    gen = make_generator(0)
    counts = torch.zeros(4)
    sizes = set()
    for _ in range(1500):
        out = drop(image, names, gen)
        zero = (out == 0).flatten(1).all(dim=1)
        kept = ~zero
        assert kept.any()
        assert not zero[1]
        assert torch.equal(out[kept], image[kept])
        counts += zero.float()
        sizes.add(int(zero.sum()))
    assert sizes == {1, 2, 3}
    assert counts[1] == 0 and (counts[[0, 2, 3]] > 100).all()


def test_channel_drop_single_and_all_protected_channels_never_drop() -> None:
    drop = ChannelDrop(ChannelDropConfig(p=1.0, max_drop=5))
    one = torch.rand(1, 4, 4) + 0.1
    gen = make_generator(1)
    for _ in range(300):
        assert torch.equal(drop(one, ("dna",), gen), one)
    two = torch.rand(2, 4, 4) + 0.1
    for _ in range(300):
        out = drop(two, ("dna", "rna"), gen)
        assert int((out == 0).flatten(1).all(dim=1).sum()) == 1  # at most C - 1 even with max_drop=5
    guarded = ChannelDrop(ChannelDropConfig(p=1.0, protected=["dna", "rna"]))
    for _ in range(100):
        assert torch.equal(guarded(two, ("dna", "rna"), gen), two)


def test_channel_drop_probability() -> None:
    drop = ChannelDrop(ChannelDropConfig(p=0.2))
    image = torch.rand(3, 4, 4) + 0.1
    gen = make_generator(2)
    dropped = sum(bool((drop(image, NAMES[3], gen) == 0).any()) for _ in range(2000))
    assert 0.16 < dropped / 2000 < 0.24


def test_unknown_protected_channel_names_it_and_the_available_ones() -> None:
    cfg = AugmentConfig()
    cfg.channel_drop.protected = ["protien", "dna"]
    pipe = AugmentationPipeline(cfg, size=8)
    with pytest.raises(ValueError, match=r"unknown channel name\(s\) \['protien'\].*'brightfield', 'dna', 'darkfield'"):
        pipe(torch.rand(3, 8, 8), NAMES[3], 0)
    with pytest.raises(UnknownChannelError, match=r"augment\.channel_drop\.protected") as info:
        AugmentationPipeline(cfg, size=8, channel_names=NAMES[3])
    assert isinstance(info.value, CellsslError)


def test_random_resized_crop_boxes_in_bounds_and_scale() -> None:
    crop = RandomResizedCrop(8, scale=[0.2, 0.5], ratio=[0.75, 4 / 3])
    gen = make_generator(0)
    for _ in range(300):
        top, left, h, w = crop.box(50, 70, gen)
        assert top >= 0 and top + h <= 50 and left >= 0 and left + w <= 70
        assert 0.2 * 3500 * 0.85 <= h * w <= 0.5 * 3500 * 1.15
        assert 0.75 * 0.85 <= w / h <= 4 / 3 * 1.15


def test_full_crop_of_same_size_is_identity_and_small_images_upsample() -> None:
    image = torch.rand(2, 16, 16)
    full = RandomResizedCrop(16, scale=[1.0, 1.0], ratio=[1.0, 1.0])
    assert torch.equal(full(image, ("a", "b"), make_generator(0)), image)
    tiny = torch.rand(5, 6, 9)
    out = AugmentationPipeline(everything_on(), size=32)(tiny, NAMES[5], 0)
    assert out.shape == (5, 32, 32)


def test_crop_disabled_resizes_whole_image() -> None:
    cfg = AugmentConfig()
    cfg.crop.enabled = False
    for sub in (cfg.hflip, cfg.vflip, cfg.rot90, cfg.brightness_contrast, cfg.channel_drop):
        sub.enabled = False
    image = torch.rand(3, 20, 20)
    out = AugmentationPipeline(cfg, size=10)(image, NAMES[3], 0)
    torch.testing.assert_close(out, TF.resize(image, [10, 10], antialias=True), atol=1e-5, rtol=0)


def test_gaussian_blur_matches_torchvision() -> None:
    image = torch.rand(5, 21, 17)
    ours = gaussian_blur(image, 1.0)
    ref = TF.gaussian_blur(image, kernel_size=[7, 7], sigma=[1.0, 1.0])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    flat = torch.full((2, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)


def test_relative_noise_scale() -> None:
    image = torch.rand(2, 200, 200) * torch.tensor([0.01, 1.0]).view(2, 1, 1)
    out = GaussianNoise(NoiseConfig(enabled=True, p=1.0, std=[0.5, 0.5]))(image, ("a", "b"), make_generator(0))
    ratio = (out - image).std(dim=(1, 2)) / image.std(dim=(1, 2))
    torch.testing.assert_close(ratio, torch.tensor([0.5, 0.5]), atol=0.01, rtol=0)


def test_intensity_rescale_only_named_channel() -> None:
    image = torch.rand(3, 5, 5) + 0.1
    cfg = IntensityRescaleConfig(enabled=True, p=1.0, channels=["protein"], gain=[0.5, 1.5])
    out = IntensityRescale(cfg)(image, ("dna", "protein", "er"), make_generator(4))
    assert torch.equal(out[[0, 2]], image[[0, 2]])
    gain = out[1] / image[1]
    torch.testing.assert_close(gain, torch.full_like(gain, float(gain[0, 0])))
    assert 0.5 <= float(gain[0, 0]) <= 1.5 and abs(float(gain[0, 0]) - 1.0) > 1e-6


def test_config_validation_and_yaml() -> None:
    with pytest.raises(ValueError, match=r"channel_drop\.p must be in \[0, 1\], got 2\.0"):
        ChannelDropConfig(p=2.0)
    with pytest.raises(ValueError, match=r"crop\.scale must be \[min, max\]"):
        CropConfig(scale=[0.9, 0.1])
    yaml = "crop: {size: 12, scale: [0.5, 1.0]}\nchannel_drop: {protected: [protein]}\nblur: {enabled: true}"
    merged = OmegaConf.merge(OmegaConf.structured(AugmentConfig), OmegaConf.create(yaml))
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, AugmentConfig)
    assert cfg.crop.size == 12 and cfg.channel_drop.protected == ["protein"] and cfg.blur.enabled
    assert AugmentationPipeline(cfg)(torch.rand(2, 30, 30), ("protein", "dna"), 0).shape == (2, 12, 12)
    bad = OmegaConf.merge(OmegaConf.structured(AugmentConfig), OmegaConf.create("noise: {std: [0.3, 0.1]}"))
    with pytest.raises(ValueError, match=r"noise\.std"):
        OmegaConf.to_object(bad)
