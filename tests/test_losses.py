"""Losses, teacher targets and the DINO head against hand computations on tiny tensors."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cellssl.objectives.centering import EMACentering, sinkhorn_knopp
from cellssl.objectives.dino_loss import DINOLoss, num_loss_terms
from cellssl.objectives.heads import (
    DINOHead,
    WeightNormLinear,
    cancel_last_layer_gradients,
    set_last_layer_trainable,
)
from cellssl.objectives.ibot_loss import IBOTPatchLoss, masks_weight
from cellssl.objectives.koleo import KoLeoLoss


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- centring


def test_centering_update_is_an_ema_of_batch_means() -> None:
    centering = EMACentering(3, momentum=0.9)
    a = torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 0.0, 6.0]])
    centering.update(a)
    torch.testing.assert_close(centering.center, torch.tensor([[0.2, 0.1, 0.1]]))
    centering.update(b)
    expected = 0.9 * np.array([0.2, 0.1, 0.1]) + 0.1 * np.array([0.0, 0.0, 6.0])
    np.testing.assert_allclose(centering.center.numpy()[0], expected, rtol=1e-6)
    assert "center" in centering.state_dict()


def test_softmax_centered_matches_hand_computation() -> None:
    centering = EMACentering(3)
    centering.center.copy_(torch.tensor([[0.5, -0.5, 0.0]]))
    logits = torch.tensor([[1.0, 0.0, 2.0], [0.3, 0.2, 0.1]])
    probs = centering.softmax_centered(logits, temp=0.5)
    expected = _np_softmax((logits.numpy() - np.array([0.5, -0.5, 0.0])) / 0.5)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-6)
    assert probs.dtype == torch.float32


def test_centering_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"teacher logits must be \(B, 3\)"):
        EMACentering(3).update(torch.zeros(2, 4))


# ---------------------------------------------------------------- Sinkhorn-Knopp


def _np_sinkhorn(logits: np.ndarray, temp: float, n_iter: int) -> np.ndarray:
    q = np.exp(logits / temp).T  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(n_iter):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


def test_sinkhorn_matches_numpy_reference_and_marginals() -> None:
    logits = torch.tensor([[0.9, 0.1, -0.3, 0.2], [0.8, 0.0, -0.1, 0.3], [0.7, 0.2, 0.0, -0.5]], dtype=torch.float64)
    q = sinkhorn_knopp(logits, temp=0.5, n_iterations=3)
    assert q.shape == (3, 4) and q.dtype == torch.float32
    np.testing.assert_allclose(q.numpy(), _np_sinkhorn(logits.numpy(), 0.5, 3), rtol=1e-5)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(3))
    # prototype 0 dominates the raw scores; after balancing every column is close to B / K
    assert q.sum(dim=0).sub(3 / 4).abs().max() < 0.05
    raw = torch.softmax(logits.float() / 0.5, dim=-1).sum(dim=0)
    assert raw.sub(3 / 4).abs().max() > 0.3
    q_many = sinkhorn_knopp(logits, temp=0.5, n_iterations=50)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((4,), 0.75), atol=1e-4, rtol=0)


def test_sinkhorn_is_stable_for_large_scores() -> None:
    logits = torch.tensor([[100.0, 0.0, -50.0], [90.0, 80.0, 0.0]])
    q = sinkhorn_knopp(logits, temp=0.04)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(2))


# ---------------------------------------------------------------- distributed reductions


_DIST_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from cellssl.objectives.centering import EMACentering, sinkhorn_knopp
    rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    logits = torch.load(out + "/logits.pt", weights_only=True)
    rows = [slice(0, 2), slice(2, 5)][rank]  # uneven split: 2 + 3 rows
    centering = EMACentering(4, momentum=0.5)
    centering.update(logits[rows])
    q = sinkhorn_knopp(logits[rows], temp=0.3, n_iterations=3)
    torch.save({"center": centering.center, "q": q}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
    """
)


def test_centre_and_sinkhorn_reduce_across_ranks(tmp_path: Path) -> None:
    logits = torch.randn(5, 4)
    torch.save(logits, tmp_path / "logits.pt")
    script = tmp_path / "worker.py"
    script.write_text(_DIST_SCRIPT)
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), "2", init, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    reference = EMACentering(4, momentum=0.5)
    reference.update(logits)
    for result in results:
        torch.testing.assert_close(result["center"], reference.center)
    q_full = sinkhorn_knopp(logits, temp=0.3, n_iterations=3)
    torch.testing.assert_close(torch.cat([results[0]["q"], results[1]["q"]]), q_full)


# ---------------------------------------------------------------- DINO loss


def test_num_loss_terms() -> None:
    assert num_loss_terms(2, 10) == 18
    assert num_loss_terms(2, 2) == 2
    assert num_loss_terms(2, 2, ignore_diagonal=False) == 4
    assert num_loss_terms(3, 2) == 4
    with pytest.raises(ValueError, match="at least one teacher and one student view"):
        num_loss_terms(0, 3)


def _np_dino(student: np.ndarray, teacher: np.ndarray, temp: float, ignore_diagonal: bool) -> float:
    total, n = 0.0, 0
    for i in range(teacher.shape[0]):
        for j in range(student.shape[0]):
            if ignore_diagonal and i == j:
                continue
            per_sample = -(teacher[i] * _np_log_softmax(student[j] / temp)).sum(axis=-1)
            total += per_sample.mean()
            n += 1
    return total / n


def test_dino_loss_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    student = rng.normal(size=(3, 2, 4)).astype(np.float32)  # 2 global + 1 local view, B=2, K=4
    teacher = _np_softmax(rng.normal(size=(2, 2, 4)) / 0.2).astype(np.float32)
    loss_fn = DINOLoss(4, student_temp=0.1)
    loss = loss_fn(list(torch.from_numpy(student)), list(torch.from_numpy(teacher)))
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(_np_dino(student, teacher, 0.1, True), rel=1e-5)
    # the pair (0, 0) and (1, 1) are left out: the result differs from the all-pairs mean
    all_pairs = loss_fn(torch.from_numpy(student), torch.from_numpy(teacher), ignore_diagonal=False)
    assert all_pairs.item() == pytest.approx(_np_dino(student, teacher, 0.1, False), rel=1e-5)
    assert abs(all_pairs.item() - loss.item()) > 1e-3


def test_dino_loss_pair_matrix_and_gradient() -> None:
    student = torch.randn(3, 2, 4, requires_grad=True)
    teacher = torch.softmax(torch.randn(2, 2, 4), dim=-1)
    loss_fn = DINOLoss(4)
    pairs = loss_fn.pair_losses(student, teacher)
    assert pairs.shape == (2, 3)
    expected_01 = -(teacher[0] * torch.log_softmax(student[1] / 0.1, dim=-1)).sum(-1).mean()
    torch.testing.assert_close(pairs[0, 1], expected_01)
    loss_fn(student, teacher).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


def test_dino_loss_under_bf16_autocast_is_float32() -> None:
    student = torch.randn(3, 4, 8).to(torch.bfloat16)
    teacher = torch.softmax(torch.randn(2, 4, 8), dim=-1).to(torch.bfloat16)
    loss_fn = DINOLoss(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(student, teacher)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, loss_fn(student.float(), teacher.float()))


def test_dino_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="K = out_dim = 4"):
        DINOLoss(4)(torch.randn(2, 3, 5), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="leaves no"):
        DINOLoss(4)(torch.randn(1, 3, 4), torch.randn(1, 3, 4))


# ---------------------------------------------------------------- iBOT loss


def test_ibot_loss_weights_each_image_by_its_masked_count() -> None:
    masks = torch.tensor([[True, False, True, False], [False, False, False, True], [False] * 4])
    torch.testing.assert_close(masks_weight(masks), torch.tensor([0.5, 0.5, 1.0]))
    rng = np.random.default_rng(1)
    student = rng.normal(size=(3, 3)).astype(np.float32)
    teacher = _np_softmax(rng.normal(size=(3, 3))).astype(np.float32)
    ce = (teacher * _np_log_softmax(student / 0.1)).sum(-1)  # per masked token
    expected = -(0.5 * ce[0] + 0.5 * ce[1] + 1.0 * ce[2]) / 3  # divided by B = 3 images
    loss_fn = IBOTPatchLoss(3)
    loss = loss_fn(torch.from_numpy(student), torch.from_numpy(teacher), masks)
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    # padded buffers: rows past n_masked_patches are ignored
    pad_s = torch.cat([torch.from_numpy(student), torch.randn(2, 3)])
    pad_t = torch.cat([torch.from_numpy(teacher), torch.softmax(torch.randn(2, 3), -1)])
    weights = torch.cat([masks_weight(masks), torch.ones(2)])
    padded = loss_fn(pad_s, pad_t, masks, weights=weights, n_masked_patches=3)
    torch.testing.assert_close(padded, loss)


def test_ibot_loss_rejects_bad_inputs() -> None:
    masks = torch.tensor([[True, True]])
    with pytest.raises(ValueError, match="expected 3"):
        IBOTPatchLoss(3)(torch.randn(2, 4), torch.randn(2, 4), masks)
    with pytest.raises(ValueError, match=r"weights have shape \(5,\)"):
        IBOTPatchLoss(3)(torch.randn(2, 3), torch.randn(2, 3), masks, weights=torch.ones(5))
    with pytest.raises(ValueError, match=r"masks must be a \(B, N\) bool tensor"):
        masks_weight(torch.ones(2, 2))


def test_ibot_loss_bf16_autocast() -> None:
    masks = torch.tensor([[True, True, False], [True, False, False]])
    student = torch.randn(3, 5).to(torch.bfloat16)
    teacher = torch.softmax(torch.randn(3, 5), -1).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = IBOTPatchLoss(5)(student, teacher, masks)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, IBOTPatchLoss(5)(student.float(), teacher.float(), masks))


# ---------------------------------------------------------------- KoLeo


def test_koleo_matches_numpy() -> None:
    x = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 2.0, 1.0], [-1.0, 0.0, 0.5]], dtype=np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.linalg.norm(xn[:, None] - xn[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = -np.log(d.min(axis=1)).mean()
    loss = KoLeoLoss()(torch.from_numpy(x))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_koleo_duplicates_give_finite_gradient_and_bad_shapes_raise() -> None:
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = KoLeoLoss(eps=1e-8)(x)
    assert loss.item() == pytest.approx(-(2 * math.log(1e-8) + math.log(math.sqrt(2))) / 3, rel=1e-4)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="B >= 2"):
        KoLeoLoss()(torch.randn(1, 4))


# ---------------------------------------------------------------- DINO head


def test_head_output_is_cosine_to_unit_prototypes() -> None:
    head = DINOHead(6, 5, hidden_dim=8, bottleneck_dim=4, nlayers=3)
    x = torch.randn(7, 6)
    out = head(x)
    assert out.shape == (7, 5)
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(5))
    assert not head.last_layer.weight_g.requires_grad
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    v = head.last_layer.weight_v
    torch.testing.assert_close(out, z @ (v / v.norm(dim=1, keepdim=True)).t())
    assert out.abs().max() <= 1.0 + 1e-6
    assert sum(isinstance(m, torch.nn.Linear) for m in head.mlp) == 3


def test_head_variants() -> None:
    single = DINOHead(6, 5, bottleneck_dim=4, nlayers=1, use_bn=True)
    assert isinstance(single.mlp[0], torch.nn.Linear) and len(single.mlp) == 1
    bn = DINOHead(6, 5, hidden_dim=8, bottleneck_dim=4, nlayers=2, use_bn=True)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in bn.mlp)
    free = DINOHead(6, 5, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad
    with torch.no_grad():
        free.last_layer.weight_g.fill_(2.0)
    torch.testing.assert_close(free.last_layer.weight.norm(dim=1), torch.full((5,), 2.0))
    with pytest.raises(ValueError, match="nlayers must be >= 1"):
        DINOHead(6, 5, nlayers=0)


def test_head_bf16_autocast() -> None:
    head = DINOHead(6, 5, hidden_dim=8, bottleneck_dim=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(3, 6))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_last_layer_freeze_helpers() -> None:
    model = torch.nn.ModuleDict({"backbone": torch.nn.Linear(6, 6), "head": DINOHead(6, 5, 8, 4)})
    model["head"](model["backbone"](torch.randn(3, 6))).sum().backward()
    assert model["head"].last_layer.weight_v.grad is not None
    assert cancel_last_layer_gradients(model) == 1
    assert model["head"].last_layer.weight_v.grad is None
    assert model["backbone"].weight.grad is not None

    assert set_last_layer_trainable(model, False) == 1  # weight_v only; the gain stays fixed
    assert not model["head"].last_layer.weight_v.requires_grad
    assert set_last_layer_trainable(model, True) == 1
    assert model["head"].last_layer.weight_v.requires_grad
    assert not model["head"].last_layer.weight_g.requires_grad

    layer = WeightNormLinear(4, 3, fix_gain=False)
    holder = torch.nn.Module()
    holder.last_layer = layer
    assert set_last_layer_trainable(holder, False) == 2
    assert set_last_layer_trainable(holder, True) == 2
    assert layer.weight_g.requires_grad


def test_package_exports_resolve_lazily() -> None:
    import cellssl.objectives as objectives

    assert objectives.DINOLoss is DINOLoss and objectives.sinkhorn_knopp is sinkhorn_knopp
    assert "KoLeoLoss" in dir(objectives)
    with pytest.raises(AttributeError, match="has no attribute 'NotALoss'"):
        _ = objectives.NotALoss


def test_teacher_targets_under_bf16_autocast_are_float32() -> None:
    logits = torch.randn(4, 6).to(torch.bfloat16)
    centering = EMACentering(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = centering.softmax_centered(logits, 0.04)
        q = sinkhorn_knopp(logits, 0.05)
        centering.update(logits)
    assert probs.dtype == q.dtype == centering.center.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn_knopp(logits.float(), 0.05))
