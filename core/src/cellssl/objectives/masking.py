"""Random block masks of patch grids for masked-image modelling (BEiT, Bao et al. 2022; iBOT, Zhou et
al. 2022; DINOv2, Oquab et al. 2023).

:class:`BlockMaskingGenerator` masks random rectangles of patches (random area and log-uniform
aspect ratio) until the requested number of patches is masked. :func:`sample_masks` draws the masks
of a batch the way DINOv2's collate function does: a fraction ``mask_sample_probability`` of the
images get a mask, and their mask ratios are spread over ``mask_ratio_min_max`` (image ``i`` of the
``n`` masked ones draws its ratio from the ``i``-th of ``n`` equal sub-intervals); the other images
get no mask, and the order is shuffled.

Randomness comes only from the generator passed in (a ``numpy.random.Generator``, a
``torch.Generator`` or an int seed), so masks are reproducible; in a DataLoader give each worker its
own generator (e.g. seeded from ``torch.utils.data.get_worker_info().seed``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

RandomSource = np.random.Generator | torch.Generator | int | None


def as_numpy_generator(source: RandomSource) -> np.random.Generator:
    """A numpy Generator from a numpy Generator (returned as is), a torch Generator (a seed is drawn
    from it, advancing it), an int seed, or None (fresh OS entropy)."""
    if isinstance(source, np.random.Generator):
        return source
    if isinstance(source, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=source).item())
        return np.random.default_rng(seed)
    if source is None or isinstance(source, int):
        return np.random.default_rng(source)
    raise TypeError(f"expected a numpy/torch Generator, an int seed or None, got {type(source).__name__}")


def _grid_hw(grid: int | tuple[int, int]) -> tuple[int, int]:
    grid_h, grid_w = (grid, grid) if isinstance(grid, int) else grid
    if grid_h < 1 or grid_w < 1:
        raise ValueError(f"patch grid must be at least 1x1, got {grid_h}x{grid_w}")
    return grid_h, grid_w


class BlockMaskingGenerator:
    """Masks random rectangular blocks of a ``grid_h x grid_w`` patch grid.

    :param grid_h: patch rows.
    :param grid_w: patch columns.
    :param min_num_patches: smallest block area tried.
    :param max_num_patches: largest block area; default the whole grid (DINOv2 uses half of it).
    :param min_aspect: smallest height/width ratio of a block.
    :param max_aspect: largest ratio; default ``1 / min_aspect``.
    :param max_attempts: block draws tried per block before giving up on the block.
    :param fill_remainder: when blocks stop fitting before the target is reached (few patches left),
        mask randomly chosen single patches so the count is exact; with False the mask may fall short.
    """

    def __init__(
        self,
        grid_h: int,
        grid_w: int,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_attempts: int = 10,
        fill_remainder: bool = True,
    ) -> None:
        self.grid_h, self.grid_w = _grid_hw((grid_h, grid_w))
        self.num_patches = self.grid_h * self.grid_w
        self.min_num_patches = min_num_patches
        self.max_num_patches = self.num_patches if max_num_patches is None else max_num_patches
        if not 1 <= self.min_num_patches <= self.max_num_patches:
            raise ValueError(
                f"need 1 <= min_num_patches <= max_num_patches, got {min_num_patches} and {self.max_num_patches}"
            )
        if min_aspect <= 0:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got min_aspect={min_aspect}")
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        if not min_aspect <= max_aspect:
            raise ValueError(f"need 0 < min_aspect <= max_aspect, got {min_aspect} and {max_aspect}")
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.max_attempts = max_attempts
        self.fill_remainder = fill_remainder

    def __repr__(self) -> str:
        return (
            f"BlockMaskingGenerator(grid={self.grid_h}x{self.grid_w}, patches per block "
            f"{self.min_num_patches}..{self.max_num_patches}, aspect {math.exp(self.log_aspect[0]):.2f}.."
            f"{math.exp(self.log_aspect[1]):.2f})"
        )

    def _add_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Mask one random block adding at most ``budget`` new patches; return how many were added."""
        for _ in range(self.max_attempts):
            area = rng.uniform(self.min_num_patches, max(self.min_num_patches, budget))
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (1 <= h <= self.grid_h and 1 <= w <= self.grid_w):
                continue
            top = int(rng.integers(0, self.grid_h - h + 1))
            left = int(rng.integers(0, self.grid_w - w + 1))
            block = mask[top : top + h, left : left + w]
            added = h * w - int(block.sum())
            if 0 < added <= budget:
                block[...] = True
                return added
        return 0

    def __call__(self, num_masked: int, generator: RandomSource = None) -> torch.Tensor:
        """A ``(grid_h, grid_w)`` bool mask with ``num_masked`` True patches (exactly, with
        ``fill_remainder``; at most, without).

        :raises ValueError: if ``num_masked`` is outside ``[0, grid_h * grid_w]``.
        """
        if not 0 <= num_masked <= self.num_patches:
            raise ValueError(f"num_masked must be in [0, {self.num_patches}], got {num_masked}")
        rng = as_numpy_generator(generator)
        mask = np.zeros((self.grid_h, self.grid_w), dtype=bool)
        count = 0
        while count < num_masked:
            added = self._add_block(mask, min(num_masked - count, self.max_num_patches), rng)
            if added == 0:
                break
            count += added
        if self.fill_remainder and count < num_masked:
            free = np.flatnonzero(~mask.reshape(-1))
            chosen = rng.choice(free, size=num_masked - count, replace=False)
            mask.reshape(-1)[chosen] = True
        return torch.from_numpy(mask)


def dinov2_block_generator(grid_h: int, grid_w: int) -> BlockMaskingGenerator:
    """DINOv2's block generator for a ``grid_h x grid_w`` grid: blocks of at most half the grid (at least one
    patch) and at least 4 patches, or fewer on a grid too small for that (a 2x2 grid: blocks of 1-2 patches).

    :raises ValueError: for an empty grid.
    """
    largest = max(1, grid_h * grid_w // 2)
    return BlockMaskingGenerator(grid_h, grid_w, min_num_patches=min(4, largest), max_num_patches=largest)


def sample_masks(
    batch_size: int,
    grid: int | tuple[int, int],
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    mask_sample_probability: float = 0.5,
    generator: RandomSource = None,
    mask_generator: BlockMaskingGenerator | None = None,
) -> torch.Tensor:
    """Masks of a batch, DINOv2-style.

    ``n = int(batch_size * mask_sample_probability)`` images get a block mask; the ``i``-th of them
    masks ``int(N * r_i)`` patches with ``r_i`` uniform in the ``i``-th of ``n`` equal sub-intervals
    of ``mask_ratio_min_max``; the rest get empty masks; the rows are returned in random order.

    :param batch_size: number of images ``B``.
    :param grid: patch grid ``(grid_h, grid_w)`` or one int for a square grid; ``N = grid_h * grid_w``.
    :param mask_ratio_min_max: range of mask ratios, ``0 <= min <= max <= 1``.
    :param mask_sample_probability: fraction of the batch that is masked, in ``[0, 1]``.
    :param generator: random source (see :func:`as_numpy_generator`).
    :param mask_generator: block generator for this grid; default :func:`dinov2_block_generator` (blocks of
        4 to ``N // 2`` patches, DINOv2's setting, the minimum lowered on grids under 8 patches).
    :return: ``(B, N)`` bool tensor, True = masked.
    :raises ValueError: on out-of-range arguments or a ``mask_generator`` for another grid.
    """
    grid_h, grid_w = _grid_hw(grid)
    n_patches = grid_h * grid_w
    ratio_min, ratio_max = mask_ratio_min_max
    if not 0.0 <= ratio_min <= ratio_max <= 1.0:
        raise ValueError(f"mask_ratio_min_max must satisfy 0 <= min <= max <= 1, got {mask_ratio_min_max}")
    if not 0.0 <= mask_sample_probability <= 1.0:
        raise ValueError(f"mask_sample_probability must be in [0, 1], got {mask_sample_probability}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if mask_generator is None:
        mask_generator = dinov2_block_generator(grid_h, grid_w)
    elif (mask_generator.grid_h, mask_generator.grid_w) != (grid_h, grid_w):
        raise ValueError(
            f"mask_generator is for a {mask_generator.grid_h}x{mask_generator.grid_w} grid, not {grid_h}x{grid_w}"
        )
    rng = as_numpy_generator(generator)
    n_masked_images = int(batch_size * mask_sample_probability)
    edges = np.linspace(ratio_min, ratio_max, n_masked_images + 1)
    masks = torch.zeros(batch_size, n_patches, dtype=torch.bool)
    for i in range(n_masked_images):
        ratio = rng.uniform(edges[i], edges[i + 1])
        masks[i] = mask_generator(int(n_patches * ratio), rng).reshape(-1)
    return masks[torch.from_numpy(rng.permutation(batch_size))]
