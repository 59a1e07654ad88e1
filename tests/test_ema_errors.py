"""The teacher EMA over modules refuses a student and teacher whose parameter names differ, and says which."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from cellssl.train.ema import momentum_update_modules


class Wrapper(nn.Module):
    """What DDP and ``torch.compile`` do to names: every parameter gains a ``module.`` prefix."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_a_wrapped_student_is_refused_naming_the_first_five_differing_parameters() -> None:
    student = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1))
    teacher = Wrapper(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 1)))
    before = [p.detach().clone() for p in teacher.parameters()]
    # 6 names on each side, none shared: the 5 first of the 12 in sorted order
    expected = ("student and teacher parameters differ (first differing names: ['0.bias', '0.weight', '1.bias', "
                "'1.weight', '2.bias']); unwrap DDP/compiled modules before the EMA update")
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        momentum_update_modules(Wrapper(student), student, 0.5)
    with pytest.raises(ValueError, match=r"first differing names: \['0\.bias', '0\.weight', '1\.bias', '1\.weight', "
                                         r"'2\.bias'\]\); unwrap DDP"):
        momentum_update_modules(student, teacher, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # nothing was averaged


def test_matching_modules_are_averaged_parameter_by_parameter() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [0.9 * t.detach() + 0.1 * s.detach() for s, t in zip(student.parameters(), teacher.parameters())]
    momentum_update_modules(student, teacher, 0.9)
    for got, want in zip(teacher.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-7)
