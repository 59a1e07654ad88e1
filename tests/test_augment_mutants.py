"""Edges of the augmentations that mutation testing found unpinned: the crop's fallback box, blur and resize
limits, absolute noise, the probability gates, the pipeline's size / scale / channel checks and a generator
seeded from the global RNG."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from cellssl.data.augment import (
    AugmentationPipeline,
    AugmentConfig,
    BlurConfig,
    BrightnessContrast,
    BrightnessContrastConfig,
    ChannelDrop,
    ChannelDropConfig,
    GaussianBlur,
    GaussianNoise,
    IntensityRescale,
    IntensityRescaleConfig,
    NoiseConfig,
    RandomResizedCrop,
    RandomRot90,
    Rot90Config,
    gaussian_blur,
    make_generator,
    resize,
)
from cellssl.errors import ConfigError


def _only_crop(**crop: object) -> AugmentConfig:
    cfg = AugmentConfig()
    for sub in (cfg.hflip, cfg.vflip, cfg.rot90, cfg.brightness_contrast, cfg.channel_drop):
        sub.enabled = False
    for key, value in crop.items():
        setattr(cfg.crop, key, value)
    return cfg


def test_crop_falls_back_to_the_largest_centred_box_within_ratio() -> None:
    # a square crop of 90-100 % of the area never fits a 4 x 100 strip: after 10 draws the centred box is used
    square = RandomResizedCrop(4, scale=[0.9, 1.0], ratio=[1.0, 1.0])
    assert square.box(4, 100, make_generator(0)) == (0, 48, 4, 4)  # too wide: full height, width 4 * ratio
    assert square.box(100, 4, make_generator(0)) == (48, 0, 4, 4)  # too tall: full width, height 4 / ratio
    wide = RandomResizedCrop(4, scale=[1.0, 1.0], ratio=[0.5, 2.0])
    assert wide.box(3, 30, make_generator(1)) == (0, 12, 3, 6)  # 30 / 3 = 10 > 2: width round(3 * 2) = 6
    assert wide.box(30, 3, make_generator(1)) == (12, 0, 6, 3)  # 3 / 30 < 0.5: height round(3 / 0.5) = 6
    out = square(torch.arange(400, dtype=torch.float32).reshape(1, 4, 100), ("dna",), make_generator(0))
    torch.testing.assert_close(out, torch.arange(400, dtype=torch.float32).reshape(1, 4, 100)[:, :, 48:52])


def test_crop_draws_the_area_and_aspect_it_is_given() -> None:
    # scale [0.25, 0.25], ratio [4, 4] on 40 x 40: area 400, w = sqrt(400 * 4) = 40, h = sqrt(400 / 4) = 10
    crop = RandomResizedCrop(8, scale=[0.25, 0.25], ratio=[4.0, 4.0])
    for seed in range(20):
        top, left, h, w = crop.box(40, 40, make_generator(seed))
        assert (h, w, left) == (10, 40, 0) and 0 <= top <= 30
    tops = {crop.box(40, 40, make_generator(seed))[0] for seed in range(60)}
    assert min(tops) == 0 and max(tops) == 30  # every offset is reachable, both ends included


def test_resize_returns_a_new_tensor_and_takes_batches() -> None:
    image = torch.rand(2, 6, 6)
    same = resize(image, (6, 6))
    assert torch.equal(same, image) and same.data_ptr() != image.data_ptr()
    batch = torch.rand(3, 2, 10, 8)
    out = resize(batch, (5, 4))
    assert out.shape == (3, 2, 5, 4)
    torch.testing.assert_close(out[1], resize(batch[1], (5, 4)))
    sharp = torch.zeros(1, 8, 8)
    sharp[0, ::2] = 1.0  # stripes one pixel wide: antialiasing averages them, plain bilinear picks rows
    assert not torch.allclose(resize(sharp, (4, 4), antialias=True), resize(sharp, (4, 4), antialias=False))
    torch.testing.assert_close(resize(sharp, (4, 4), antialias=False),
                               TF.resize(sharp, [4, 4], antialias=False), atol=1e-6, rtol=0)


def test_blur_radius_is_limited_by_the_image_and_small_sigma_is_identity() -> None:
    image = torch.rand(2, 4, 5)
    # sigma 2 wants radius 6; a 4 px side allows 3: the 7-tap kernel, reflect-padded like torchvision
    torch.testing.assert_close(gaussian_blur(image, 2.0), TF.gaussian_blur(image, [7, 7], [2.0, 2.0]),
                               atol=1e-6, rtol=0)
    wide = torch.rand(1, 9, 6)  # here the width (6 px) limits the radius to 5: an 11-tap kernel
    torch.testing.assert_close(gaussian_blur(wide, 3.0), TF.gaussian_blur(wide, [11, 11], [3.0, 3.0]),
                               atol=1e-6, rtol=0)
    small = torch.rand(1, 6, 6)
    torch.testing.assert_close(gaussian_blur(small, 0.3), TF.gaussian_blur(small, [3, 3], [0.3, 0.3]),
                               atol=1e-6, rtol=0)  # radius ceil(0.9) = 1: blurred, not skipped
    for sigma, img in ((0.0, small), (-1.0, small), (1.0, torch.rand(2, 1, 7))):
        out = gaussian_blur(img, sigma)
        assert torch.equal(out, img) and out.data_ptr() != img.data_ptr()
    blur = GaussianBlur(BlurConfig(enabled=True, p=1.0, sigma=[1.0, 1.0]))
    torch.testing.assert_close(blur(small, ("dna",), make_generator(0)), gaussian_blur(small, 1.0))
    never = GaussianBlur(BlurConfig(enabled=True, p=0.0, sigma=[1.0, 1.0]))
    assert torch.equal(never(small, ("dna",), make_generator(0)), small)


def test_absolute_noise_has_the_drawn_std_whatever_the_image() -> None:
    image = torch.rand(2, 200, 200) * torch.tensor([0.01, 1.0]).view(2, 1, 1)
    noise = GaussianNoise(NoiseConfig(enabled=True, p=1.0, std=[0.2, 0.2], relative=False))
    diff = noise(image, ("a", "b"), make_generator(0)) - image
    torch.testing.assert_close(diff.std(dim=(1, 2)), torch.tensor([0.2, 0.2]), atol=0.005, rtol=0)
    assert abs(float(diff.mean())) < 0.005
    never = GaussianNoise(NoiseConfig(enabled=True, p=0.0, std=[0.2, 0.2]))
    assert torch.equal(never(image, ("a", "b"), make_generator(0)), image)


def test_probability_zero_leaves_every_intensity_step_out() -> None:
    image = torch.rand(3, 6, 6) + 0.1
    names = ("dna", "protein", "er")
    steps = [
        BrightnessContrast(BrightnessContrastConfig(p=0.0, brightness=[2.0, 2.0], contrast=[0.5, 0.5])),
        IntensityRescale(IntensityRescaleConfig(enabled=True, p=0.0, channels=["dna"], gain=[2.0, 2.0])),
        RandomRot90(Rot90Config(p=0.0)),
    ]
    for step in steps:
        for seed in range(20):
            assert torch.equal(step(image, names, make_generator(seed)), image), type(step).__name__
    half = BrightnessContrast(BrightnessContrastConfig(p=0.5, brightness=[2.0, 2.0], contrast=[1.0, 1.0]))
    changed = sum(not torch.equal(half(image, names, make_generator(s)), image) for s in range(400))
    assert 160 < changed < 240


def test_a_generator_from_the_global_rng_follows_torch_manual_seed() -> None:
    torch.manual_seed(11)
    first = torch.rand(4, generator=make_generator(None))
    second = torch.rand(4, generator=make_generator(None))
    torch.manual_seed(11)
    assert torch.equal(torch.rand(4, generator=make_generator(None)), first)
    assert not torch.equal(first, second)
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    assert torch.equal(torch.rand(4, generator=make_generator(seed)), first)
    gen = torch.Generator()
    assert make_generator(gen) is gen
    assert torch.equal(torch.rand(3, generator=make_generator(5)), torch.rand(3, generator=torch.Generator()
                                                                               .manual_seed(5)))


def test_pipeline_size_scale_and_input_checks() -> None:
    with pytest.raises(ConfigError, match=r"augment\.crop\.size.*an output size \(int >= 1\) is needed, got 0"):
        AugmentationPipeline(_only_crop(), size=0)
    assert AugmentationPipeline(_only_crop(size=6)).size == 6
    assert AugmentationPipeline(_only_crop(size=6), size=9).size == 9  # the argument wins over the config
    with pytest.raises(ValueError, match=r"crop\.scale must be \[min, max\] with 1e-06 <= min <= max <= 1\.0, "
                                         r"got \[0\.5, 1\.5\]"):
        AugmentationPipeline(_only_crop(), size=4, scale=[0.5, 1.5])
    pipe = AugmentationPipeline(_only_crop(scale=[0.5, 0.5], ratio=[1.0, 1.0]), size=4, scale=(0.25, 0.25))
    assert pipe.crop.scale == [0.25, 0.25] and pipe.crop.ratio == [1.0, 1.0] and pipe.crop.size == 4
    assert pipe.crop.box(40, 40, make_generator(0))[2:] == (20, 20)  # a quarter of the area: the override
    assert AugmentationPipeline(_only_crop(scale=[0.25, 0.25]), size=4).crop.scale == [0.25, 0.25]
    assert AugmentationPipeline(_only_crop(antialias=False), size=4).crop.antialias is False
    with pytest.raises(ValueError, match=r"^expected a \(C, H, W\) image with C=2 \('a', 'b'\), got "
                                         r"torch\.Size\(\[3, 8, 8\]\)$"):
        pipe(torch.rand(3, 8, 8), ("a", "b"), 0)
    with pytest.raises(ValueError, match=r"^expected a \(C, H, W\) image with C=1"):
        pipe(torch.rand(8, 8), ("a",), 0)
    steps = [type(s).__name__ for s in AugmentationPipeline(AugmentConfig(), size=4).steps]
    assert steps == ["RandomFlip", "RandomFlip", "RandomRot90", "BrightnessContrast", "ChannelDrop"]


def test_unknown_protected_names_are_fine_while_channel_drop_is_off() -> None:
    cfg = _only_crop()
    cfg.channel_drop.protected = ["protein"]
    pipe = AugmentationPipeline(cfg, size=4, channel_names=("dna",))  # channel_drop disabled: not checked
    assert pipe(torch.rand(1, 8, 8), ("dna",), 0).shape == (1, 4, 4)
    cfg.channel_drop.enabled = True
    on = AugmentationPipeline(cfg, size=4)
    on.check_channels(("protein", "dna"))
    assert on._checked == {("protein", "dna")}
    with pytest.raises(ValueError, match=r"unknown channel name\(s\) \['protein'\]; the image's channels are "
                                         r"\['dna'\]"):
        on(torch.rand(1, 8, 8), ("dna",), 0)
    assert ("dna",) not in on._checked  # a refused channel list is not remembered as checked
    assert math.isfinite(float(on(torch.rand(2, 8, 8), ("protein", "dna"), 0).sum()))


def _replay(seed: int, p: float, low: float, high: float) -> tuple[torch.Generator, float | None]:
    """The documented draws of a gated step: a coin ``rand < p``, then ``low + (high - low) * rand``."""
    gen = torch.Generator().manual_seed(seed)
    if not float(torch.rand((), generator=gen)) < p:
        return gen, None
    return gen, low + (high - low) * float(torch.rand((), generator=gen))


def test_rescale_and_noise_draw_only_from_their_generator_with_the_documented_formula() -> None:
    image = (torch.rand(3, 30, 30, dtype=torch.float64) + 0.1) * torch.tensor([1.0, 3.0, 0.2],
                                                                               dtype=torch.float64).view(3, 1, 1)
    names = ("dna", "protein", "er")
    rescale = IntensityRescale(IntensityRescaleConfig(enabled=True, p=0.5, channels=["protein"], gain=[0.5, 1.5]))
    relative = GaussianNoise(NoiseConfig(enabled=True, p=0.5, std=[0.1, 0.3], relative=True))
    absolute = GaussianNoise(NoiseConfig(enabled=True, p=0.5, std=[0.1, 0.3], relative=False))
    population_std = torch.from_numpy(image.numpy().std(axis=(1, 2), ddof=0)).view(3, 1, 1)
    applied = 0
    for seed in range(12):
        torch.manual_seed(1000 + seed)  # the global RNG must not matter
        gen, gain = _replay(seed, 0.5, 0.5, 1.5)
        expected = image.clone()
        if gain is not None:
            expected[1] = image[1] * gain  # float64 gain, exactly the drawn value
            applied += 1
        assert torch.equal(rescale(image, names, make_generator(seed)), expected)
        for step, scale in ((relative, population_std), (absolute, 1.0)):
            torch.manual_seed(2000 + seed)
            gen, std = _replay(seed, 0.5, 0.1, 0.3)
            out = step(image, names, make_generator(seed))
            if std is None:
                assert torch.equal(out, image)
                continue
            noise = torch.randn(image.shape, generator=gen).double()
            torch.testing.assert_close(out, image + noise * std * scale, rtol=0, atol=1e-12)
    assert 3 <= applied <= 9  # both sides of the coin were seen


def test_blur_keeps_float64_precision() -> None:
    image = torch.rand(2, 12, 11, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(image, 1.3), TF.gaussian_blur(image, [9, 9], [1.3, 1.3]),
                               rtol=0, atol=1e-12)


def test_every_step_keeps_the_image_on_its_device() -> None:
    # the meta device stands in for an accelerator: a step that mixed CPU tensors into it would raise
    cfg = AugmentConfig()
    for sub in (cfg.blur, cfg.noise, cfg.rescale):
        sub.enabled = True
    for sub in (cfg.hflip, cfg.vflip, cfg.rot90, cfg.rescale, cfg.brightness_contrast, cfg.blur, cfg.noise,
                cfg.channel_drop):
        sub.p = 1.0
    cfg.rescale.channels = ["dna"]
    names = ("dna", "protein", "er")
    image = torch.empty(3, 20, 20, device="meta")
    for relative in (True, False):
        cfg.noise.relative = relative
        out = AugmentationPipeline(cfg, size=8)(image, names, 0)
        assert out.device.type == "meta" and out.shape == (3, 8, 8) and out.dtype == torch.float32


def test_crop_accepts_one_pixel_and_full_side_boxes_and_refuses_empty_ones() -> None:
    one = RandomResizedCrop(1, scale=[0.25, 0.25], ratio=[1.0, 1.0])  # area 1 of 4: a 1 x 1 box, drawn
    assert {one.box(4, 1, make_generator(s))[0] for s in range(30)} == {0, 1, 2, 3}  # fallback would be top 1
    assert {one.box(1, 4, make_generator(s))[1] for s in range(30)} == {0, 1, 2, 3}
    tall = RandomResizedCrop(4, scale=[0.25, 0.25], ratio=[0.5, 0.5])  # 10 x 20: w 5, h 10 = the full height
    lefts = {tall.box(10, 20, make_generator(s)) for s in range(30)}
    assert {b[0] for b in lefts} == {0} and {b[2:] for b in lefts} == {(10, 5)} and len({b[1] for b in lefts}) > 5
    # w = round(sqrt(0.8 * 0.1)) = 0 (or h = 0 for ratio 10): never a box; the fallback keeps at least 1 px
    assert RandomResizedCrop(4, scale=[0.05, 0.05], ratio=[0.1, 0.1]).box(4, 4, make_generator(0)) == (0, 1, 4, 1)
    assert RandomResizedCrop(4, scale=[0.05, 0.05], ratio=[10.0, 10.0]).box(4, 4, make_generator(0)) == (1, 0, 1, 4)
    # a 1 px wide (or high) image whose 2 x 2 draws never fit: the centred fallback is 1 x 1
    square = RandomResizedCrop(1, scale=[0.9, 1.0], ratio=[1.0, 1.0])
    assert square.box(5, 1, make_generator(0)) == (2, 0, 1, 1) and square.box(1, 5, make_generator(0)) == (0, 2, 1, 1)


def test_crop_gives_up_after_exactly_ten_draws() -> None:
    # seed 8: on 10 x 10 with area 50 and aspect in [1/16, 16] the first ten draws do not fit, the eleventh would
    crop = RandomResizedCrop(4, scale=[0.5, 0.5], ratio=[1 / 16, 16.0])
    assert crop.box(10, 10, make_generator(8)) == (0, 0, 10, 10)  # the whole image (aspect 1 is within ratio)
    other = crop.box(10, 10, make_generator(0))
    assert abs(other[2] * other[3] - 50) < 8  # a seed whose draws fit gets the drawn area


def test_resize_defaults_and_single_item_batches() -> None:
    sharp = torch.zeros(1, 8, 8)
    sharp[0, ::2] = 1.0
    assert torch.equal(resize(sharp, (4, 4)), resize(sharp, (4, 4), antialias=True))
    assert resize(torch.rand(1, 2, 6, 6), (3, 3)).shape == (1, 2, 3, 3)  # a batch of one stays 4-D
    default = RandomResizedCrop(4, scale=[1.0, 1.0], ratio=[1.0, 1.0])
    plain = RandomResizedCrop(4, scale=[1.0, 1.0], ratio=[1.0, 1.0], antialias=False)
    assert torch.equal(default(sharp, ("dna",), make_generator(0)), resize(sharp, (4, 4), antialias=True))
    assert torch.equal(plain(sharp, ("dna",), make_generator(0)), resize(sharp, (4, 4), antialias=False))
    whole = AugmentationPipeline(_only_crop(enabled=False, antialias=False), size=4)
    assert torch.equal(whole(sharp, ("dna",), 0), resize(sharp, (4, 4), antialias=False))


def test_pipeline_flips_the_named_axis_and_takes_a_one_pixel_output() -> None:
    image = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5)
    for axis, dim in (("hflip", -1), ("vflip", -2)):
        cfg = _only_crop(enabled=False)
        getattr(cfg, axis).enabled, getattr(cfg, axis).p = True, 1.0
        assert torch.equal(AugmentationPipeline(cfg, size=5)(image, ("a", "b"), 0), image.flip(dim)), axis
    assert AugmentationPipeline(_only_crop(), size=1)(image, ("a", "b"), 0).shape == (2, 1, 1)
    with pytest.raises(ConfigError, match=r"^config key 'augment\.crop\.size': an output size \(int >= 1\) is "
                                          r"needed, got None$"):
        AugmentationPipeline(_only_crop())
    cfg = AugmentConfig()
    cfg.channel_drop.protected = ["protien"]
    with pytest.raises(ConfigError, match=r"^config key 'augment\.channel_drop\.protected': unknown channel"):
        AugmentationPipeline(cfg, size=4, channel_names=("dna",))


def test_channel_drop_limits_and_one_pixel_high_images() -> None:
    names = ("a", "b", "c", "d", "e")
    image = torch.rand(5, 4, 4) + 0.1
    one = ChannelDrop(ChannelDropConfig(p=1.0, max_drop=1))
    gen = make_generator(0)
    assert {int((one(image[:4], names[:4], gen) == 0).flatten(1).all(1).sum()) for _ in range(200)} == {1}
    # 2 of 5 protected, max_drop 4: at most the 3 eligible, each count 1..3 equally likely
    three = ChannelDrop(ChannelDropConfig(p=1.0, max_drop=4, protected=["a", "b"]))
    sizes = [int((three(image, names, gen) == 0).flatten(1).all(1).sum()) for _ in range(1500)]
    assert set(sizes) == {1, 2, 3} and 0.28 < sizes.count(3) / 1500 < 0.39
    flat = torch.rand(3, 1, 6) + 0.1  # a single row: channels still drop
    assert int((ChannelDrop(ChannelDropConfig(p=1.0))(flat, names[:3], gen) == 0).all(dim=(1, 2)).sum()) >= 1


def test_every_random_step_draws_only_from_its_generator() -> None:
    names = ("dna", "protein", "er", "rna")
    image = torch.rand(4, 12, 12) + 0.1
    steps = [
        ChannelDrop(ChannelDropConfig(p=0.5, max_drop=3)),
        GaussianBlur(BlurConfig(enabled=True, p=0.5, sigma=[0.5, 2.0])),
        BrightnessContrast(BrightnessContrastConfig(p=0.5)),
        RandomRot90(Rot90Config(p=0.5)),
        RandomResizedCrop(6, scale=[0.2, 1.0], ratio=[0.5, 2.0]),
    ]
    for step in steps:
        for seed in range(16):
            torch.manual_seed(seed)
            first = step(image, names, make_generator(seed))
            torch.manual_seed(seed + 100)
            assert torch.equal(step(image, names, make_generator(seed)), first), (type(step).__name__, seed)
