"""Block masks: counts, shapes, block structure, the DINOv2 batch recipe, and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellssl.objectives.masking import BlockMaskingGenerator, as_numpy_generator, sample_masks


@pytest.mark.parametrize("num_masked", [0, 1, 3, 7, 24, 32, 48])
def test_block_mask_has_exact_count_and_shape(num_masked: int) -> None:
    gen = BlockMaskingGenerator(6, 8, max_num_patches=24)
    mask = gen(num_masked, np.random.default_rng(num_masked))
    assert mask.shape == (6, 8) and mask.dtype == torch.bool
    assert int(mask.sum()) == num_masked


def test_without_fill_the_count_never_exceeds_the_target() -> None:
    gen = BlockMaskingGenerator(8, 8, fill_remainder=False)
    counts = [int(gen(n, seed).sum()) for seed, n in enumerate([5, 10, 20, 30, 40] * 4)]
    targets = [5, 10, 20, 30, 40] * 4
    assert all(c <= t for c, t in zip(counts, targets))
    assert sum(counts) > 0.7 * sum(targets)  # blocks do most of the work


def test_single_block_is_a_rectangle() -> None:
    gen = BlockMaskingGenerator(8, 8, min_num_patches=12, max_num_patches=12, fill_remainder=False)
    seen = 0
    for seed in range(20):
        mask = gen(12, seed).numpy()
        if not mask.any():
            continue
        rows, cols = np.nonzero(mask)
        box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all(), f"seed {seed}: masked patches do not form one rectangle\n{mask.astype(int)}"
        seen += 1
    assert seen >= 10


def test_block_mask_is_deterministic_with_a_seed() -> None:
    gen = BlockMaskingGenerator(10, 10, max_num_patches=50)
    a, b, c = gen(40, 123), gen(40, 123), gen(40, 124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    t1, t2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(gen(30, t1), gen(30, t2))


def test_block_mask_argument_errors() -> None:
    gen = BlockMaskingGenerator(4, 4)
    with pytest.raises(ValueError, match=r"num_masked must be in \[0, 16\], got 17"):
        gen(17)
    with pytest.raises(ValueError, match="min_num_patches <= max_num_patches"):
        BlockMaskingGenerator(4, 4, min_num_patches=8, max_num_patches=4)
    with pytest.raises(ValueError, match="0 < min_aspect <= max_aspect"):
        BlockMaskingGenerator(4, 4, min_aspect=0.0)
    with pytest.raises(TypeError, match="got str"):
        as_numpy_generator("seed")  # type: ignore[arg-type]


def test_sample_masks_follows_the_dinov2_recipe() -> None:
    batch, grid = 8, (10, 10)
    masks = sample_masks(batch, grid, (0.1, 0.5), mask_sample_probability=0.5, generator=0)
    assert masks.shape == (8, 100) and masks.dtype == torch.bool
    counts = sorted(int(c) for c in masks.sum(dim=1))
    assert counts[:4] == [0, 0, 0, 0]
    edges = np.linspace(0.1, 0.5, 5)
    for i, count in enumerate(counts[4:]):
        assert int(100 * edges[i]) <= count <= int(100 * edges[i + 1]), (i, count)


def test_sample_masks_is_seeded_and_shuffled() -> None:
    a = sample_masks(16, 8, generator=7)
    b = sample_masks(16, 8, generator=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_masks(16, 8, generator=8))
    masked_rows = a.any(dim=1)
    assert int(masked_rows.sum()) == 8
    assert not torch.equal(masked_rows, torch.arange(16) < 8)  # not all masked images first
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_masks(4, 6, generator=g1), sample_masks(4, 6, generator=g2))


def test_sample_masks_edge_cases_and_errors() -> None:
    assert not sample_masks(5, 4, mask_sample_probability=0.0, generator=0).any()
    full = sample_masks(3, 4, (1.0, 1.0), mask_sample_probability=1.0, generator=0)
    assert full.all()
    with pytest.raises(ValueError, match="0 <= min <= max <= 1"):
        sample_masks(2, 4, (0.6, 0.2))
    with pytest.raises(ValueError, match=r"mask_sample_probability must be in \[0, 1\]"):
        sample_masks(2, 4, mask_sample_probability=1.5)
    with pytest.raises(ValueError, match="for a 4x4 grid, not 5x5"):
        sample_masks(2, 5, mask_generator=BlockMaskingGenerator(4, 4))
