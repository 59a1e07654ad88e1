"""BatchPlan, ViewDataset and make_loader of cellssl.train.data, pinned value by value (fast, no training)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch

from cellssl.errors import ConfigError
from cellssl.objectives.base import SEED_KEY
from cellssl.train.data import BatchPlan, ViewDataset, _seed_worker, derive_seed, make_loader


def test_derive_seed_by_hand() -> None:
    state = np.random.SeedSequence([7, 1, 0xDA7A]).generate_state(2, dtype=np.uint32)
    assert derive_seed(7, 1, 0xDA7A) == (int(state[0]) << 30) ^ int(state[1])
    assert derive_seed(-1) == derive_seed(2**63 - 1)  # parts are taken modulo 2**63
    assert derive_seed(1, 2) != derive_seed(2, 1)
    assert all(0 <= derive_seed(i, 5) < 2**62 for i in range(50))


def test_plan_argument_errors() -> None:
    with pytest.raises(ConfigError, match=r"every training dataset needs at least one sample, got sizes \[\]"):
        BatchPlan([], 2, 0)
    with pytest.raises(ConfigError, match=r"config key 'data': every training dataset needs at least one sample, "
                                          r"got sizes \[3, 0\]"):
        BatchPlan([3, 0], 2, 0)
    for weights in ([1.0], [1.0, 0.0], [1.0, -2.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match=rf"^need one positive weight per dataset, got {weights} for 2 "
                                             r"datasets$".replace("[", r"\[").replace("]", r"\]")):
            BatchPlan([3, 4], 2, 0, weights=weights)
    with pytest.raises(ConfigError, match=r"config key 'train\.batch_size': is 8 but an epoch has only 7 "
                                          r"training samples; lower the batch size, set train\.epoch_length, or use "
                                          r"more data\."):
        BatchPlan([3, 4], 8, 0)
    with pytest.raises(ConfigError, match=r"is 5 but an epoch has only 4 training samples"):
        BatchPlan([3, 4], 5, 0, epoch_length=4)
    assert BatchPlan([1], 1, 0).steps_per_epoch == 1
    assert BatchPlan([3, 4], 7, 0).steps_per_epoch == 1


def test_plan_fields_and_state() -> None:
    plan = BatchPlan([3, 5, 2], 3, seed=11, weights=[1, 2, 3])
    assert plan.offsets == [0, 3, 8] and plan.epoch_length == 10 and plan.steps_per_epoch == 3
    assert plan.state_dict() == {"sizes": [3, 5, 2], "weights": [1.0, 2.0, 3.0], "batch_size": 3, "seed": 11,
                                 "epoch_length": 10}
    assert BatchPlan([4], 2, 0, epoch_length=9).state_dict() == {"sizes": [4], "weights": None, "batch_size": 2,
                                                                 "seed": 0, "epoch_length": 9}


def test_plain_epoch_is_a_seeded_permutation_by_hand() -> None:
    plan = BatchPlan([10], 4, seed=3)
    indices, seeds = plan.epoch(2)
    rng = np.random.default_rng(derive_seed(3, 2, 0xDA7A))
    assert indices.tolist() == rng.permutation(10).tolist()
    assert seeds.tolist() == rng.integers(0, 2**62, size=10, dtype=np.int64).tolist()
    assert indices.dtype == np.int64 and seeds.dtype == np.int64
    batches = plan.batches(2)
    assert len(batches) == 2  # 10 // 4; the last 2 samples are dropped
    assert batches == [[(int(i), int(s)) for i, s in zip(indices[b * 4:(b + 1) * 4], seeds[b * 4:(b + 1) * 4],
                                                          strict=True)] for b in range(2)]
    assert all(type(i) is int and type(s) is int for batch in batches for i, s in batch)
    assert plan.batches(2, start=1) == batches[1:]
    assert plan.batches(2, start=2) == []


def test_mixed_epoch_keeps_each_dataset_in_its_range_without_early_repeats() -> None:
    sizes = [3, 50, 6]
    plan = BatchPlan(sizes, 5, seed=0, weights=[1.0, 1.0, 2.0], epoch_length=400)
    indices, seeds = plan.epoch(0)
    assert indices.shape == seeds.shape == (400,) and indices.dtype == np.int64
    owner = np.searchsorted([3, 53, 59], indices, side="right")
    counts = np.bincount(owner, minlength=3)
    assert counts.sum() == 400 and abs(counts[2] / 400 - 0.5) < 0.08 and abs(counts[0] / 400 - 0.25) < 0.08
    for d, (size, offset) in enumerate(zip(sizes, plan.offsets, strict=True)):
        local = indices[owner == d] - offset
        assert local.min() >= 0 and local.max() < size
        # drawn as whole permutations: every index of the dataset appears floor or ceil(count / size) times
        times = Counter(local.tolist())
        assert set(times.values()) <= {counts[d] // size, -(-counts[d] // size)} and len(times) == min(size, counts[d])
        first = local[:size]  # the first `size` draws of a dataset are one permutation
        assert len(set(first.tolist())) == len(first)
    again = plan.epoch(0)
    assert np.array_equal(again[0], indices) and np.array_equal(again[1], seeds)
    assert not np.array_equal(plan.epoch(1)[0], indices)


def test_unweighted_mix_follows_sizes_and_skips_undrawn_datasets() -> None:
    plan = BatchPlan([90, 10], 10, seed=1)  # no weights: proportional to the sizes, one epoch = 100 samples
    indices, _ = plan.epoch(0)
    share = float((indices >= 90).mean())
    assert 0.03 <= share <= 0.2 and len(set(indices[indices < 90].tolist())) == int((indices < 90).sum())
    single = BatchPlan([5], 2, seed=1, epoch_length=12)  # one dataset but a longer epoch: permutations repeated
    idx, _ = single.epoch(0)
    assert sorted(Counter(idx.tolist()).values()) == [2, 2, 2, 3, 3] and set(idx[:5].tolist()) == set(range(5))
    rare = BatchPlan([5, 5], 2, seed=0, weights=[1.0, 1e-12], epoch_length=6)  # dataset 1 is never drawn
    assert rare.epoch(0)[0].max() < 5


class Recorder:
    """A view function that records the generator's seed and the sample it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []

    def __call__(self, sample: Any, generator: torch.Generator) -> dict[str, Any]:
        self.calls.append((sample, generator.initial_seed()))
        return {"sample": sample, "draw": float(torch.rand((), generator=generator))}


def test_view_dataset_maps_global_indices_and_seeds() -> None:
    views = Recorder()
    data = ViewDataset([["a0", "a1"], ["b0"], ["c0", "c1", "c2"]], views)
    assert len(data) == 6 and data.offsets == [0, 2, 3] and data.sizes == [2, 1, 3]
    got = [data[(i, 100 + i)]["sample"] for i in range(6)]
    assert got == ["a0", "a1", "b0", "c0", "c1", "c2"]
    assert [seed for _, seed in views.calls] == [100, 101, 102, 103, 104, 105]
    item = data[(4, 2**40 + 3)]
    assert item[SEED_KEY] == 2**40 + 3 and type(item[SEED_KEY]) is int
    generator = torch.Generator()
    generator.manual_seed(2**40 + 3)
    assert item["draw"] == float(torch.rand((), generator=generator))


def _collate(items: list[dict[str, Any]]) -> list[str]:
    return [item["sample"] for item in items]


def test_make_loader_follows_the_batches_and_seeds_its_generator() -> None:
    data = ViewDataset([["a", "b", "c", "d"]], Recorder())
    batches = [[(2, 5), (0, 6)], [(3, 7)], [(1, 8), (2, 9)]]
    loader = make_loader(data, batches, _collate, num_workers=0, seed=4, epoch=3)
    assert list(loader) == [["c", "a"], ["d"], ["b", "c"]]
    assert loader.generator.initial_seed() == derive_seed(4, 3, 0x10AD)
    assert loader.worker_init_fn is None and loader.num_workers == 0
    assert loader.pin_memory is False and loader.persistent_workers is False
    workers = make_loader(data, batches, _collate, num_workers=2, seed=4, epoch=3, pin_memory=True)
    assert workers.worker_init_fn is _seed_worker and workers.num_workers == 2 and workers.pin_memory is True
    assert workers.persistent_workers is False


def _reference_epoch(sizes: list[int], weights: list[float], length: int, seed: int, epoch: int) -> list[int]:
    """The documented draw, written out: datasets by weight, then whole permutations of each, then seeds."""
    rng = np.random.default_rng(derive_seed(seed, epoch, 0xDA7A))
    p = np.asarray(weights, dtype=np.float64)
    choice = rng.choice(len(sizes), size=length, p=p / p.sum())
    out = np.zeros(length, dtype=np.int64)
    offset = 0
    for d, size in enumerate(sizes):
        count = int((choice == d).sum())
        if count:
            n_perms = -(-count // size)
            out[choice == d] = offset + np.concatenate([rng.permutation(size) for _ in range(n_perms)])[:count]
        offset += size
    return out.tolist() + rng.integers(0, 2**62, size=length, dtype=np.int64).tolist()


def test_mixed_epoch_by_hand() -> None:
    sizes, weights = [3, 4, 2], [2.0, 1.0, 1.0]
    plan = BatchPlan(sizes, 4, seed=9, weights=weights, epoch_length=16)
    indices, seeds = plan.epoch(1)
    assert indices.tolist() + seeds.tolist() == _reference_epoch(sizes, weights, 16, 9, 1)


def test_a_dataset_never_drawn_does_not_stop_the_others() -> None:
    plan = BatchPlan([4, 4, 4], 3, seed=2, weights=[1.0, 1e-12, 1.0], epoch_length=12)
    indices, _ = plan.epoch(0)
    assert not ((indices >= 4) & (indices < 8)).any()
    assert ((indices >= 8) & (indices < 12)).sum() > 0 and ((indices >= 0) & (indices < 4)).sum() > 0
    assert indices.tolist() == _reference_epoch([4, 4, 4], [1.0, 1e-12, 1.0], 12, 2, 0)[:12]


def test_seed_worker_seeds_python_and_numpy_from_torch() -> None:
    torch.manual_seed(2**32 + 5)  # NumPy takes seeds below 2**32 only
    _seed_worker(0)
    got = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(5)
    assert got == (random.random(), np.random.random())
