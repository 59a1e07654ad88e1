"""Edges of the teacher centring and the KoLeo regulariser that mutation testing found unpinned."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cellssl.objectives.centering import EMACentering, _check_logits, sinkhorn_knopp
from cellssl.objectives.koleo import KoLeoLoss


def test_centering_arguments_and_defaults() -> None:
    with pytest.raises(ValueError, match=r"^out_dim must be >= 1, got 0$"):
        EMACentering(0)
    for momentum in (-0.01, 1.01):
        with pytest.raises(ValueError, match=rf"^centre momentum must be in \[0, 1\], got {momentum}$"):
            EMACentering(2, momentum=momentum)
    one = EMACentering(1)
    assert one.center.shape == (1, 1) and one.center.dtype == torch.float32
    assert torch.equal(one.center, torch.zeros(1, 1))
    assert repr(EMACentering(3)) == "EMACentering(out_dim=3, momentum=0.9)"
    default = EMACentering(2)
    default.update(torch.tensor([[4.0, -2.0], [2.0, 0.0]]))  # batch mean (3, -1); c = 0.9 * 0 + 0.1 * mean
    torch.testing.assert_close(default.center, torch.tensor([[0.3, -0.1]]))
    frozen, follow = EMACentering(2, momentum=1.0), EMACentering(2, momentum=0.0)
    frozen.update(torch.ones(3, 2))
    follow.update(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    assert torch.equal(frozen.center, torch.zeros(1, 2)) and torch.equal(follow.center, torch.tensor([[2.0, 5.0]]))


def test_teacher_logit_checks() -> None:
    with pytest.raises(ValueError, match=r"^teacher logits must be \(B, K\), got shape \(2, 3, 4\)$"):
        _check_logits(torch.zeros(2, 3, 4), 0.1)
    for temp in (0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^temperature must be > 0, got {temp}$"):
            _check_logits(torch.zeros(2, 3), temp)
    _check_logits(torch.zeros(2, 3), 1e-6)
    with pytest.raises(ValueError, match=r"^temperature must be > 0"):
        EMACentering(3).softmax_centered(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match=r"^teacher logits must be \(B, K\)"):
        sinkhorn_knopp(torch.zeros(3), 0.1)


def test_koleo_default_eps_and_its_bound() -> None:
    duplicates = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # the same direction: distance 0, loss -log(eps)
    assert KoLeoLoss()(duplicates).item() == pytest.approx(-math.log(1e-8), rel=1e-6)
    for eps in (0.0, -1e-3):
        with pytest.raises(ValueError, match=rf"^eps must be > 0, got {eps}$"):
            KoLeoLoss(eps=eps)
    assert KoLeoLoss(eps=1e-30).eps == 1e-30
    assert repr(KoLeoLoss()) == "KoLeoLoss(eps=1e-08)"
    with pytest.raises(ValueError, match=r"^KoLeo needs a \(B, D\) batch with B >= 2, got shape \(4,\)$"):
        KoLeoLoss()(torch.randn(4))


def test_koleo_is_scale_free_and_uses_euclidean_distance_on_the_sphere() -> None:
    x = np.array([[0.3, 0.1, 0.0], [0.05, 0.2, 0.1], [0.0, 0.02, 0.01], [-0.1, 0.0, 0.05]])  # norms below 1
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = -np.log(d.min(axis=1)).mean()
    small = KoLeoLoss()(torch.tensor(x, dtype=torch.float32))
    large = KoLeoLoss()(torch.tensor(x * 1000, dtype=torch.float32))
    assert small.item() == pytest.approx(expected, rel=1e-5) and large.item() == pytest.approx(expected, rel=1e-5)
    assert small.dtype == torch.float32


def test_koleo_of_two_orthogonal_vectors() -> None:
    loss = KoLeoLoss()(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    assert loss.item() == pytest.approx(-math.log(math.sqrt(2.0)), rel=1e-6)


def test_a_one_rank_process_group_gives_the_single_process_results(tmp_path: Path) -> None:
    import torch.distributed as dist

    logits = torch.tensor([[1.0, 0.5, -0.2], [0.1, 2.0, 0.3], [-1.0, 0.0, 0.7], [0.4, 0.4, 0.4]])
    alone = EMACentering(3, momentum=0.5)
    alone.update(logits)
    expected_q = sinkhorn_knopp(logits, temp=0.3)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        grouped = EMACentering(3, momentum=0.5)
        grouped.update(logits)
        q = sinkhorn_knopp(logits, temp=0.3)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(grouped.center, alone.center)
    torch.testing.assert_close(q, expected_q)


_LARGE_SCORES_RANK = """
import sys
import torch
import torch.distributed as dist
from cellssl.objectives.centering import sinkhorn_knopp
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
logits = torch.load(out + "/logits.pt", weights_only=True)
torch.save(sinkhorn_knopp(logits[3 * rank:3 * rank + 3], temp=0.04), f"{out}/q{rank}.pt")
dist.destroy_process_group()
"""


def test_sinkhorn_across_ranks_shifts_by_the_global_maximum_of_large_scores(tmp_path: Path) -> None:
    # scores of 60 / 0.04 = 1500: shifting by anything but the global maximum (e.g. the sum of the ranks'
    # maxima) under- or overflows exp, so the two-rank result equals the one-process result only with MAX
    logits = torch.tensor([[60.0, 58.0, 55.0], [59.0, 60.0, 57.0], [58.5, 59.5, 60.0],
                           [57.0, 59.0, 58.0], [60.0, 56.0, 59.5], [58.0, 58.0, 58.0]])
    torch.save(logits, tmp_path / "logits.pt")
    script = tmp_path / "rank.py"
    script.write_text(_LARGE_SCORES_RANK)
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), init, str(tmp_path)],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for rank in range(2)]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode()
    q = torch.cat([torch.load(tmp_path / f"q{rank}.pt", weights_only=True) for rank in range(2)])
    expected = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(expected).all() and expected.sum(dim=1).allclose(torch.ones(6))
    torch.testing.assert_close(q, expected)


def test_koleo_under_bf16_autocast_matches_float64_with_close_neighbours() -> None:
    # sample 0's two neighbours differ in cosine by 3e-4, below bf16's resolution near 1 (2**-8)
    angles = np.array([0.0, 0.301, -0.3, 2.0, 3.5])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = -np.log(d.min(axis=1)).mean()
    features = torch.tensor(x, dtype=torch.float32)
    plain = KoLeoLoss()(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = KoLeoLoss()(features)
    assert plain.item() == pytest.approx(expected, rel=1e-5)
    assert under_autocast.dtype == torch.float32 and under_autocast.item() == pytest.approx(expected, rel=1e-5)


def test_koleo_searches_the_nearest_neighbour_in_float32_whatever_the_autocast_state() -> None:
    # sample 0's three neighbours (angles 0.05, -0.03, 0.06) have cosines 0.99875, 0.99955, 0.9982: all round
    # to 1.0 in bf16 (spacing 2**-8 below 1), so a bf16 similarity ties them and argmax takes the first or the
    # last, never the true nearest (index 2) in the middle. first_of_tie is the loss CPU argmax gives then.
    angles = np.array([0.0, 0.05, -0.03, 0.06, 2.0, 3.5])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = -np.log(d.min(axis=1)).mean()
    first_of_tie = -np.log(np.array([d[0, 1], d[1, 0], d[2, 0], d[3, 0], d[4, 5], d[5, 4]])).mean()
    assert expected - first_of_tie > 0.5  # what a bf16 neighbour search gives: far outside the tolerance below
    features = torch.tensor(x, dtype=torch.float32)
    plain = KoLeoLoss()(features)
    assert plain.dtype == torch.float32 and plain.item() == pytest.approx(expected, rel=1e-5)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            under_autocast = KoLeoLoss()(features)
        assert under_autocast.dtype == torch.float32 and under_autocast.item() == pytest.approx(expected, rel=1e-5)
