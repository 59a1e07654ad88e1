"""Exponential moving average of the student into the teacher (the "momentum encoder" of MoCo / BYOL,
used as the DINO teacher: Caron et al. 2021; DINOv2, Oquab et al. 2023).

``teacher <- m * teacher + (1 - m) * student``, done with the fused ``torch._foreach_mul_`` /
``torch._foreach_add_`` kernels (one launch per dtype/device group instead of one per tensor).
Buffers (e.g. BatchNorm statistics) are not averaged, as in DINO.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def momentum_update(student_params: Iterable[torch.Tensor], teacher_params: Iterable[torch.Tensor], m: float) -> None:
    """In-place EMA ``t <- m * t + (1 - m) * s`` for matching (student, teacher) tensors.

    :param student_params: student tensors (not modified).
    :param teacher_params: teacher tensors, same order, shapes and dtypes.
    :param m: momentum in ``[0, 1]`` (1 keeps the teacher, 0 copies the student).
    :raises ValueError: if ``m`` is out of range, or the lists differ in length or shapes.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {m}")
    student = [p.detach() for p in student_params]
    teacher = [p.detach() for p in teacher_params]
    if len(student) != len(teacher):
        raise ValueError(f"student has {len(student)} tensors but teacher has {len(teacher)}")
    for i, (s, t) in enumerate(zip(student, teacher)):
        if s.shape != t.shape:
            raise ValueError(f"tensor {i}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}")
    if not teacher:
        return
    torch._foreach_mul_(teacher, m)
    torch._foreach_add_(teacher, student, alpha=1.0 - m)


def momentum_update_modules(student: nn.Module, teacher: nn.Module, m: float) -> None:
    """:func:`momentum_update` over the parameters of two modules of identical structure.

    :raises ValueError: if the parameter names differ (e.g. a DDP-wrapped student: pass ``.module``).
    """
    s_named = list(student.named_parameters())
    t_named = list(teacher.named_parameters())
    s_names = [n for n, _ in s_named]
    t_names = [n for n, _ in t_named]
    if s_names != t_names:
        missing = sorted(set(s_names) ^ set(t_names))[:5]
        raise ValueError(
            f"student and teacher parameters differ (first differing names: {missing}); "
            "unwrap DDP/compiled modules before the EMA update"
        )
    momentum_update([p for _, p in s_named], [p for _, p in t_named], m)
