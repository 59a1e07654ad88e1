"""Training data: which samples each step uses, their augmentation seeds, and the DataLoader.

Everything random here is a pure function of ``(seed, epoch)``: :class:`BatchPlan` draws an epoch's
sample order (a permutation, or a weighted mix of several datasets) and one augmentation seed per
sample from a generator seeded with ``(seed, epoch)``; :class:`ViewDataset` builds each sample's views
with a ``torch.Generator`` seeded by that sample's seed. So a batch is the same whatever the number of
DataLoader workers, and resuming at ``(epoch, batch)`` only needs those two numbers (no RNG stream to
replay). For distributed training, a plan that gives each rank its share of every batch can replace
:class:`BatchPlan` (same ``batches(epoch, start)`` interface).
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cellssl.errors import ConfigError
from cellssl.objectives.base import SEED_KEY, CollateFn, ViewFn

Batch = list[tuple[int, int]]


def derive_seed(*parts: int) -> int:
    """A non-negative 62-bit seed derived from integers (stable across platforms and versions)."""
    state = np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])


class BatchPlan:
    """The batches of every epoch: lists of ``(sample index, augmentation seed)``.

    :param sizes: number of training samples of each dataset (indices are global: dataset ``d``'s
        samples follow those of datasets ``0 .. d-1``).
    :param batch_size: samples per batch; the last incomplete batch of an epoch is dropped.
    :param seed: the run seed.
    :param weights: sampling weight of each dataset (default: proportional to its size, i.e. a plain
        permutation of all samples).
    :param epoch_length: samples per epoch (default: ``sum(sizes)``).
    :raises ConfigError: if an epoch holds fewer samples than one batch.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        seed: int,
        weights: Sequence[float] | None = None,
        epoch_length: int | None = None,
    ) -> None:
        if not sizes or any(s < 1 for s in sizes):
            raise ConfigError("data", f"every training dataset needs at least one sample, got sizes {list(sizes)}")
        if weights is not None and (len(weights) != len(sizes) or any(not w > 0 for w in weights)):
            raise ValueError(f"need one positive weight per dataset, got {list(weights)} for {len(sizes)} datasets")
        self.sizes = [int(s) for s in sizes]
        self.offsets = [0, *np.cumsum(self.sizes)[:-1].tolist()]
        self.weights = [float(w) for w in weights] if weights is not None else None
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch_length = int(epoch_length) if epoch_length is not None else sum(self.sizes)
        if self.batch_size > self.epoch_length:
            raise ConfigError(
                "train.batch_size",
                f"is {self.batch_size} but an epoch has only {self.epoch_length} training samples; lower the "
                "batch size, set train.epoch_length, or use more data.",
            )
        self.steps_per_epoch = self.epoch_length // self.batch_size

    def _plain(self) -> bool:
        return self.weights is None and len(self.sizes) == 1 and self.epoch_length == self.sizes[0]

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, seeds)`` of the ``epoch_length`` samples of ``epoch``, in order."""
        rng = np.random.default_rng(derive_seed(self.seed, epoch, 0xDA7A))
        if self._plain():
            indices = rng.permutation(self.sizes[0])
        else:
            weights = np.asarray(self.weights if self.weights is not None else self.sizes, dtype=np.float64)
            choice = rng.choice(len(self.sizes), size=self.epoch_length, p=weights / weights.sum())
            indices = np.empty(self.epoch_length, dtype=np.int64)
            for d, (size, offset) in enumerate(zip(self.sizes, self.offsets)):
                count = int((choice == d).sum())
                if count == 0:
                    continue
                perms = [rng.permutation(size) for _ in range(math.ceil(count / size))]
                indices[choice == d] = offset + np.concatenate(perms)[:count]
        seeds = rng.integers(0, 2**62, size=self.epoch_length, dtype=np.int64)
        return indices.astype(np.int64), seeds

    def batches(self, epoch: int, start: int = 0) -> list[Batch]:
        """Batches ``start .. steps_per_epoch - 1`` of ``epoch``."""
        indices, seeds = self.epoch(epoch)
        size = self.batch_size
        return [
            [(int(i), int(s)) for i, s in zip(indices[b * size : (b + 1) * size], seeds[b * size : (b + 1) * size])]
            for b in range(start, self.steps_per_epoch)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The plan's parameters (for the consistency check on resume); plain Python values."""
        return {"sizes": list(self.sizes), "weights": self.weights, "batch_size": self.batch_size,
                "seed": self.seed, "epoch_length": self.epoch_length}


class ViewDataset(Dataset):
    """Views of the samples of one or more datasets, keyed by ``(global index, seed)``.

    :param datasets: datasets yielding :class:`~cellssl.data.sample.CellSample` (the channel strategy's
        training datasets).
    :param views: the objective's transform, ``views(sample, generator) -> item dict``.
    """

    def __init__(self, datasets: Sequence[Dataset], views: ViewFn) -> None:
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]  # type: ignore[arg-type]
        self.offsets = [0, *np.cumsum(self.sizes)[:-1].tolist()]
        self.views = views

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        which = bisect.bisect_right(self.offsets, index) - 1
        sample = self.datasets[which][index - self.offsets[which]]
        generator = torch.Generator()
        generator.manual_seed(int(seed))
        item = self.views(sample, generator)
        item[SEED_KEY] = int(seed)
        return item


def _seed_worker(worker_id: int) -> None:
    """Seed Python and NumPy in a DataLoader worker from its torch seed (set by the DataLoader)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_loader(
    dataset: ViewDataset,
    batches: list[Batch],
    collate: CollateFn,
    *,
    num_workers: int,
    seed: int,
    epoch: int,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``batches`` with its own seeded generator (the global RNG is never touched)."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, epoch, 0x10AD))
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker if num_workers else None,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
