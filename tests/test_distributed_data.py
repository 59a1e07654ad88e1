"""Each rank's share of the data (sampler coverage, mid-epoch resume), rank helpers, global-batch BatchNorm
and the single-process behaviour of the parallel helper. No process group is needed here."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch import nn

from cellssl.channels.bag import BagOfChannels, BagOfChannelsConfig
from cellssl.data.synthetic import SyntheticCellsConfig, build_synthetic_cells
from cellssl.errors import ConfigError
from cellssl.train.config import DistributedConfig
from cellssl.train.data import BatchPlan
from cellssl.train.distributed import (
    DistEnv,
    ShardedBatchPlan,
    data_position,
    env_ranks,
    init_distributed,
    rank_range,
    rank_shard_prefix,
    shard_plan,
)
from cellssl.train.parallel import GlobalBatchNorm, ParallelTraining, convert_batchnorm


def _channel_samples(images: int = 10, channels: int = 3) -> int:
    """Number of bag-of-channels training samples (N x C) of a synthetic dataset."""
    data = build_synthetic_cells(SyntheticCellsConfig(num_samples=images, image_size=16, num_channels=channels))
    return len(BagOfChannels(BagOfChannelsConfig()).training_dataset(data))


def test_every_channel_sample_once_per_epoch_across_ranks() -> None:
    n = _channel_samples(10, 3)
    assert n == 30
    plan = BatchPlan([n], batch_size=6, seed=3)
    for world in (1, 2, 3):
        shards = [ShardedBatchPlan(plan, rank, world) for rank in range(world)]
        for epoch in (0, 1):
            per_rank = [[i for batch in s.batches(epoch) for i, _ in batch] for s in shards]
            used = Counter(i for indices in per_rank for i in indices)
            assert sorted(used) == list(range(30)) and set(used.values()) == {1}
            assert all(len(indices) == 30 // world for indices in per_rank)


def test_rank_slices_make_the_single_process_batch() -> None:
    plan = BatchPlan([40], batch_size=8, seed=0)
    shards = [ShardedBatchPlan(plan, rank, 4) for rank in range(4)]
    for step, batch in enumerate(plan.batches(2)):
        joined = [key for s in shards for key in s.batches(2)[step]]
        assert joined == batch  # same samples and the same augmentation seeds, in rank order
    assert shards[1].local_batch_size == 2 and shards[1].state_dict() == plan.state_dict()


def test_partial_last_batch_waits_for_a_later_epoch() -> None:
    plan = BatchPlan([32], batch_size=6, seed=1)  # 5 steps of 6: 30 of 32 samples per epoch
    shards = [ShardedBatchPlan(plan, rank, 2) for rank in range(2)]
    left_out = []
    for epoch in range(3):
        used = Counter(i for s in shards for batch in s.batches(epoch) for i, _ in batch)
        assert len(used) == 30 and set(used.values()) == {1}
        left_out.append(set(range(32)) - set(used))
    assert len({frozenset(s) for s in left_out}) > 1  # a different remainder each epoch


def test_resume_mid_epoch_from_the_global_sample_count() -> None:
    plan = BatchPlan([30], batch_size=6, seed=2)
    two = ShardedBatchPlan(plan, 1, 2)
    epoch, start = data_position(samples_seen=7 * 6, batch_size=6, steps_per_epoch=plan.steps_per_epoch)
    assert (epoch, start) == (1, 2)
    assert two.batches(epoch, start) == two.batches(epoch)[start:]
    # the same position read by a run with another number of processes: its batches are the union of these
    one = plan.batches(epoch, start)
    zero = ShardedBatchPlan(plan, 0, 2).batches(epoch, start)
    assert [a + b for a, b in zip(zero, two.batches(epoch, start))] == one
    with pytest.raises(ValueError, match="not a whole number of batches of 6"):
        data_position(samples_seen=40, batch_size=6, steps_per_epoch=5)


def test_global_batch_must_divide_among_processes() -> None:
    plan = BatchPlan([30], batch_size=6, seed=0)
    with pytest.raises(ConfigError, match=r"train.batch_size.*is 6, the global batch, which must be a multiple of "
                                          r"the 4 processes; use e.g. 4"):
        ShardedBatchPlan(plan, 0, 4)
    assert shard_plan(plan, DistEnv()) is plan


def test_rank_range_and_prefix() -> None:
    shares = [rank_range(10, r, 3) for r in range(3)]
    assert [list(s) for s in shares] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert [i for s in shares for i in s] == list(range(10))
    assert (rank_shard_prefix(0, 1), rank_shard_prefix(2, 8)) == ("", "rank002-")
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        rank_range(10, 3, 3)


def test_environment_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert env_ranks() == (0, 1, 0)
    assert init_distributed(torch.device("cpu")) == DistEnv(device=torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="inconsistent distributed environment RANK=2, WORLD_SIZE=2"):
        env_ranks()
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT not set"):
        init_distributed(torch.device("cpu"))


def test_global_batchnorm_conversion_keeps_state_and_matches_batchnorm_alone() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.GELU(), nn.Sequential(nn.BatchNorm1d(6)))
    net[1].weight.data.uniform_(0.5, 1.5)
    reference = copy.deepcopy(net)
    keys = list(net.state_dict())
    weight = net[1].weight
    convert_batchnorm(net, torch.device("cpu"))
    assert isinstance(net[1], GlobalBatchNorm) and isinstance(net[3][0], GlobalBatchNorm)
    assert list(net.state_dict()) == keys and net[1].weight is weight
    x = torch.randn(8, 4)
    torch.testing.assert_close(net(x), reference(x))  # no process group: plain BatchNorm
    torch.testing.assert_close(net[1].running_var, reference[1].running_var)


def test_parallel_helper_is_identity_for_one_process() -> None:
    helper = ParallelTraining(DistributedConfig(), DistEnv())
    assert helper.strategy is None and helper.world_size == 1
    terms = {"loss": torch.tensor(2.5), "dino_loss": torch.tensor(1.25)}
    assert helper.reduce_terms(terms) == {"loss": 2.5, "dino_loss": 1.25}
    assert helper.any_rank(True) and not helper.any_rank(False)
    assert helper.rng_states({"torch": torch.zeros(1)}) is None
    with pytest.raises(ValueError, match="strategy must be one of"):
        DistributedConfig(strategy="zero3")
