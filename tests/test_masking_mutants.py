"""Block masking, pinned down where a plausible slip would go unnoticed: grid bounds, block shapes and
aspect bounds, the retry and fill rules, the default block size of the batch recipe, and seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellssl.objectives.masking import BlockMaskingGenerator, as_numpy_generator, sample_masks


class CountingGenerator(np.random.Generator):
    """A numpy Generator that counts its ``uniform`` calls (two per block attempt: area, log-aspect)."""

    def __init__(self, seed: int) -> None:
        super().__init__(np.random.PCG64(seed))
        self.uniform_calls = 0

    def uniform(self, *args, **kwargs):  # type: ignore[override]
        self.uniform_calls += 1
        return super().uniform(*args, **kwargs)


def _box(mask: torch.Tensor) -> tuple[int, int]:
    """Height and width of the masked patches, checked to form one filled rectangle."""
    m = mask.numpy()
    rows, cols = np.nonzero(m)
    box = m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all(), f"not one rectangle:\n{m.astype(int)}"
    return box.shape


# --- patch grids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(0, 5), (5, 0), (0, 0), (-1, 3)])
def test_a_grid_without_rows_or_columns_is_refused_by_name(grid: tuple[int, int]) -> None:
    message = rf"patch grid must be at least 1x1, got {grid[0]}x{grid[1]}"
    with pytest.raises(ValueError, match=message):
        BlockMaskingGenerator(*grid)
    with pytest.raises(ValueError, match=message):
        sample_masks(2, grid)


@pytest.mark.parametrize("grid", [(1, 8), (8, 1)])
def test_one_row_and_one_column_grids_are_masked_exactly(grid: tuple[int, int]) -> None:
    gen = BlockMaskingGenerator(*grid)
    for seed in range(20):
        mask = gen(5, seed)
        assert mask.shape == grid and int(mask.sum()) == 5
    # default generator: max_num_patches = 8 // 2 = 4; each masked row has int(8 * 0.5) = 4 patches
    masks = sample_masks(3, grid, (0.5, 0.5), mask_sample_probability=1.0, generator=0)
    assert masks.shape == (3, 8)
    assert masks.sum(dim=1).tolist() == [4, 4, 4]


def test_blocks_are_placed_on_a_one_row_grid_and_retried_when_they_do_not_fit() -> None:
    # 1x16 grid, blocks of area 4 with aspect log-uniform in [0.3, 1/0.3]: h = round(sqrt(4 a)) is 1 only
    # for a < 0.5625, i.e. with probability ln(0.5625 / 0.3) / ln(1 / 0.09) = 0.26 per attempt; a block
    # that is too tall is redrawn (10 attempts: placed with probability 1 - 0.74**10 = 0.95), never
    # placed out of the grid.
    gen = BlockMaskingGenerator(1, 16, min_num_patches=4, max_num_patches=4, fill_remainder=False)
    placed = 0
    for seed in range(60):
        mask = gen(4, seed)
        count = int(mask.sum())
        assert count <= 4
        if count:
            placed += 1
            assert _box(mask.reshape(1, 16))[1] in (3, 4)  # w = round(sqrt(4 / a)) for a in [0.3, 0.5625)
    assert placed >= 48, placed  # a generator that gave up at the first misfit would place ~16 of 60
    for seed in range(20):  # with fill: exact, whatever the block draws
        assert int(BlockMaskingGenerator(1, 16)(7, seed).sum()) == 7


# --- block shapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "area", "aspect", "shape"),
    [
        ((8, 8), 8, 0.5, (2, 4)),  # h = round(sqrt(8 * 0.5)) = 2, w = round(sqrt(8 / 0.5)) = 4
        ((8, 8), 8, 2.0, (4, 2)),
        ((4, 4), 4, 0.25, (1, 4)),  # one-row block
        ((4, 4), 4, 4.0, (4, 1)),  # one-column block
        ((4, 4), 16, 1.0, (4, 4)),  # the block is the whole grid
        ((3, 3), 1, 1.0, (1, 1)),  # a block of one patch
    ],
)
def test_a_fixed_area_and_aspect_gives_one_block_of_the_computed_shape(
    grid: tuple[int, int], area: int, aspect: float, shape: tuple[int, int]
) -> None:
    gen = BlockMaskingGenerator(*grid, min_num_patches=area, max_num_patches=area, min_aspect=aspect,
                                max_aspect=aspect, fill_remainder=False)
    tops = set()
    for seed in range(15):
        mask = gen(area, seed)
        assert int(mask.sum()) == area  # the block adds exactly the budget: accepted
        assert _box(mask) == shape
        tops.add(int(np.nonzero(mask.numpy())[0].min()))
    if shape[0] < grid[0]:
        assert len(tops) > 1  # placed at random rows


def test_default_max_aspect_is_the_inverse_of_min_aspect() -> None:
    # area 8, aspect a in [0.5, 2]: h = round(sqrt(8 a)) and w = round(sqrt(8 / a)) lie in {2, 3, 4}, and
    # h * w <= 8 leaves the shapes 2x3, 2x4, 3x2, 4x2 (3x3 = 9 exceeds the budget of 8).
    gen = BlockMaskingGenerator(8, 8, min_num_patches=8, max_num_patches=8, min_aspect=0.5)
    assert math.isclose(math.exp(gen.log_aspect[1]), 2.0)
    assert repr(gen) == "BlockMaskingGenerator(grid=8x8, patches per block 8..8, aspect 0.50..2.00)"
    shapes = set()
    for seed in range(200):
        mask = np.zeros((8, 8), dtype=bool)
        added = gen._add_block(mask, 8, np.random.default_rng(seed))
        if added:
            shapes.add(_box(torch.from_numpy(mask)))
    assert shapes <= {(2, 3), (2, 4), (3, 2), (4, 2)}, shapes
    assert any(h > w for h, w in shapes) and any(h < w for h, w in shapes)  # tall and wide blocks


def test_generator_defaults_and_argument_messages() -> None:
    gen = BlockMaskingGenerator(2, 2)  # default min_num_patches = 4 = the whole 2x2 grid: allowed
    assert repr(gen) == "BlockMaskingGenerator(grid=2x2, patches per block 4..4, aspect 0.30..3.33)"
    assert repr(BlockMaskingGenerator(4, 6, min_num_patches=2, max_num_patches=12, min_aspect=0.5)) == (
        "BlockMaskingGenerator(grid=4x6, patches per block 2..12, aspect 0.50..2.00)")
    one = BlockMaskingGenerator(3, 3, min_num_patches=1)  # blocks of one patch are allowed
    assert int(one(9, 0).sum()) == 9
    with pytest.raises(ValueError, match="need 1 <= min_num_patches <= max_num_patches, got 0 and 9"):
        BlockMaskingGenerator(3, 3, min_num_patches=0)
    with pytest.raises(ValueError, match=r"need 0 < min_aspect <= max_aspect, got 2\.0 and 1\.0"):
        BlockMaskingGenerator(4, 4, min_aspect=2.0, max_aspect=1.0)


# --- retries, attempts and the fill ---------------------------------------------------------------------------


def test_a_block_over_masked_patches_only_is_redrawn() -> None:
    # 1x2 grid, 1x1 blocks: the second block lands on the masked patch half of the time; such a block adds
    # nothing and is redrawn (50 attempts: reaching 2 fails with probability 2**-50)
    gen = BlockMaskingGenerator(1, 2, min_num_patches=1, max_num_patches=1, min_aspect=1.0, max_attempts=50,
                                fill_remainder=False)
    assert [int(gen(2, seed).sum()) for seed in range(20)] == [2] * 20


def test_a_block_gives_up_after_max_attempts_and_the_fill_completes_the_count() -> None:
    # 4x4 grid, blocks of 16 patches: never within a budget of 5, so every attempt fails
    for attempts, kwargs in ((10, {}), (3, {"max_attempts": 3})):
        gen = BlockMaskingGenerator(4, 4, min_num_patches=16, **kwargs)
        rng = CountingGenerator(0)
        mask = gen(5, rng)
        assert int(mask.sum()) == 5  # all five from the fill
        assert rng.uniform_calls == 2 * attempts  # one block tried `attempts` times, then given up


def test_no_block_is_drawn_once_the_target_is_met() -> None:
    gen = BlockMaskingGenerator(8, 8, min_num_patches=8, max_num_patches=8, min_aspect=0.5, max_aspect=0.5)
    rng = CountingGenerator(1)
    assert int(gen(8, rng).sum()) == 8
    assert rng.uniform_calls == 2  # one block of 8, placed at the first attempt; nothing drawn after it
    rng = CountingGenerator(1)
    assert int(gen(0, rng).sum()) == 0 and rng.uniform_calls == 0


@pytest.mark.parametrize("num_masked", range(1, 16))
def test_the_fill_masks_distinct_patches_up_to_the_exact_count(num_masked: int) -> None:
    gen = BlockMaskingGenerator(4, 4, min_num_patches=16)  # no block ever fits: the fill does it all
    for seed in range(5):
        mask = gen(num_masked, seed)
        assert mask.shape == (4, 4) and int(mask.sum()) == num_masked


# --- the batch recipe ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(5, 5), (6, 6), (3, 7)])
def test_the_default_generator_caps_blocks_at_half_the_grid(grid: tuple[int, int]) -> None:
    n = grid[0] * grid[1]
    half = BlockMaskingGenerator(*grid, max_num_patches=n // 2)
    whole = BlockMaskingGenerator(*grid, max_num_patches=n)
    for seed in range(4):
        default = sample_masks(4, grid, (0.6, 1.0), mask_sample_probability=1.0, generator=seed)
        assert torch.equal(default, sample_masks(4, grid, (0.6, 1.0), 1.0, generator=seed, mask_generator=half))
    # the cap matters for these ratios: whole-grid blocks give other masks from the same seeds
    assert any(
        not torch.equal(sample_masks(4, grid, (0.6, 1.0), 1.0, generator=s, mask_generator=half),
                        sample_masks(4, grid, (0.6, 1.0), 1.0, generator=s, mask_generator=whole))
        for s in range(4)
    )


def test_sample_masks_bounds_and_messages() -> None:
    empty = sample_masks(0, 4, generator=0)
    assert empty.shape == (0, 16) and empty.dtype == torch.bool
    none = sample_masks(3, 4, (0.0, 0.0), mask_sample_probability=1.0, generator=0)
    assert none.shape == (3, 16) and not none.any()
    low = sample_masks(4, 10, (0.0, 0.2), mask_sample_probability=1.0, generator=0)
    edges = np.linspace(0.0, 0.2, 5)  # image i masks int(100 * r_i) patches, r_i in [edges[i], edges[i+1]]
    for i, count in enumerate(sorted(int(c) for c in low.sum(dim=1))):
        assert int(100 * edges[i]) <= count <= int(100 * edges[i + 1])
    with pytest.raises(ValueError, match=r"mask_ratio_min_max must satisfy 0 <= min <= max <= 1, got \(0\.5, 1\.5\)"):
        sample_masks(2, 4, (0.5, 1.5))
    with pytest.raises(ValueError, match="batch_size must be >= 0, got -1"):
        sample_masks(-1, 4)


def test_the_share_of_masked_images_is_int_of_batch_times_probability() -> None:
    for batch, p, expected in ((10, 0.35, 3), (7, 0.5, 3), (4, 1.0, 4), (9, 0.0, 0)):
        masks = sample_masks(batch, 6, (0.2, 0.4), mask_sample_probability=p, generator=batch)
        assert int(masks.any(dim=1).sum()) == expected


# --- seeding ---------------------------------------------------------------------------------------------------


def test_a_torch_generator_seeds_numpy_with_its_next_draw_in_0_to_2_pow_62() -> None:
    for seed in (0, 1, 12345):
        drawn = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)).item())
        g = torch.Generator().manual_seed(seed)
        rng = as_numpy_generator(g)
        assert rng.integers(2**63) == np.random.default_rng(drawn).integers(2**63)
        after_one = torch.Generator().manual_seed(seed)
        torch.randint(0, 2**62, (1,), generator=after_one)
        assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=after_one))  # advanced by one draw


def test_distinct_torch_seeds_give_distinct_mask_streams() -> None:
    # 200 seeds: a seed range of fewer than 200 values would force two of them onto one numpy stream
    firsts = {int(as_numpy_generator(torch.Generator().manual_seed(s)).integers(2**63)) for s in range(200)}
    assert len(firsts) == 200
    numpy_gen = np.random.default_rng(0)
    assert as_numpy_generator(numpy_gen) is numpy_gen


@pytest.mark.parametrize(("grid", "ratio"), [(1, 1.0), (2, 0.5), (2, 1.0), (3, 0.5)])
def test_default_masks_work_on_grids_too_small_for_four_patch_blocks(grid: int, ratio: float) -> None:
    # a 16 px crop with 8 px patches is a 2x2 grid: DINOv2's blocks of >= 4 patches but <= N // 2 cannot both hold
    from cellssl.objectives.masking import dinov2_block_generator

    n = grid * grid
    generator = dinov2_block_generator(grid, grid)
    assert (generator.min_num_patches, generator.max_num_patches) == (min(4, max(1, n // 2)), max(1, n // 2))
    masks = sample_masks(6, grid, (ratio, ratio), 1.0, torch.Generator().manual_seed(0))
    assert masks.shape == (6, n) and masks.sum(dim=1).tolist() == [int(n * ratio)] * 6
