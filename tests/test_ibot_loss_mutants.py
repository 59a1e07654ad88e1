"""Argument and shape checks of the iBOT patch loss that mutation testing found unpinned."""

from __future__ import annotations

import pytest
import torch

from cellssl.objectives.ibot_loss import IBOTPatchLoss


def test_constructor_limits_and_messages() -> None:
    assert IBOTPatchLoss(1).patch_out_dim == 1  # one prototype is allowed
    with pytest.raises(ValueError, match=r"^patch_out_dim must be >= 1, got 0$"):
        IBOTPatchLoss(0)
    assert IBOTPatchLoss(3, student_temp=1e-6).student_temp == 1e-6
    for temp in (0.0, -0.1):
        with pytest.raises(ValueError, match=rf"^student_temp must be > 0, got {temp}$"):
            IBOTPatchLoss(3, student_temp=temp)


def test_shape_checks_name_both_inputs_and_the_weights() -> None:
    loss = IBOTPatchLoss(3)
    masks = torch.tensor([[True, False, True]])
    with pytest.raises(ValueError, match=r"^student \(2, 3\) and teacher \(2, 4\) masked tokens must both be \(M, K\) "
                                         r"with the same shape$"):
        loss(torch.zeros(2, 3), torch.zeros(2, 4), masks)
    with pytest.raises(ValueError, match=r"^student \(1, 2, 3\) and teacher \(1, 2, 3\) masked tokens must both be"):
        loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), masks)  # same shapes, but not (M, K)
    with pytest.raises(ValueError, match=r"^weights have shape \(5,\), expected \(2,\): one per masked token$"):
        loss(torch.zeros(2, 3), torch.full((2, 3), 1 / 3), masks, weights=torch.ones(5))
    one = IBOTPatchLoss(1)(torch.zeros(2, 1), torch.ones(2, 1), masks)  # softmax of one logit is 1: loss 0
    assert one.item() == 0.0
