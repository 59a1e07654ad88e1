"""The documented edges of :class:`~cellssl.objectives.dino_loss.DINOLoss`: the smallest valid inputs, and the
exact messages of the errors (bad settings, wrong shapes, no view pair left)."""

from __future__ import annotations

import re

import pytest
import torch

from cellssl.objectives.dino_loss import DINOLoss, num_loss_terms


def test_number_of_terms_at_the_smallest_view_counts() -> None:
    assert num_loss_terms(1, 1, ignore_diagonal=False) == 1
    assert num_loss_terms(1, 3) == 2 and num_loss_terms(2, 1) == 1 and num_loss_terms(2, 10) == 18
    for teacher, student in ((0, 1), (1, 0)):
        with pytest.raises(ValueError, match=rf"^need at least one teacher and one student view, got {teacher} and "
                                             rf"{student}$"):
            num_loss_terms(teacher, student)


def test_settings_are_checked_with_their_value_in_the_message() -> None:
    assert DINOLoss(1, 1e-3).out_dim == 1  # one prototype and a tiny temperature are valid
    with pytest.raises(ValueError, match=r"^out_dim must be >= 1, got 0$"):
        DINOLoss(0)
    with pytest.raises(ValueError, match=r"^student_temp must be > 0, got 0$"):
        DINOLoss(4, student_temp=0)


def test_one_view_given_as_a_list_and_one_teacher_view() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 4), torch.softmax(torch.randn(3, 4), dim=-1)
    loss_fn = DINOLoss(4, student_temp=0.5)
    pairs = loss_fn.pair_losses([student], [teacher])
    expected = -(teacher * torch.log_softmax(student / 0.5, dim=-1)).sum(-1).mean()
    assert pairs.shape == (1, 1)
    torch.testing.assert_close(pairs[0, 0], expected)
    torch.testing.assert_close(loss_fn([student], [teacher], ignore_diagonal=False), expected)
    message = "ignore_diagonal=True leaves no (teacher, student) view pair; pass more views"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        loss_fn([student], [teacher])


def test_shape_errors_name_the_argument_and_the_shapes() -> None:
    loss_fn = DINOLoss(4)
    good = torch.softmax(torch.randn(2, 3, 4), dim=-1)
    with pytest.raises(ValueError, match=re.escape("student logits must be (views, B, K) or a list of (B, K), got "
                                                   "shape (2, 3, 4, 1)")):
        loss_fn.pair_losses(torch.randn(2, 3, 4, 1), good)
    with pytest.raises(ValueError, match=re.escape("teacher probabilities must be (views, B, K) or a list of (B, K), "
                                                   "got shape (3, 4)")):
        loss_fn.pair_losses(torch.randn(2, 3, 4), good[0])
    with pytest.raises(ValueError, match=re.escape("student views (B, K) = (3, 5) and teacher views (3, 4) must "
                                                   "match, with K = out_dim = 4")):
        loss_fn.pair_losses(torch.randn(2, 3, 5), good)
    with pytest.raises(ValueError, match=re.escape("student views (B, K) = (2, 4) and teacher views (3, 4) must "
                                                   "match, with K = out_dim = 4")):
        loss_fn.pair_losses(torch.randn(2, 2, 4), good)
