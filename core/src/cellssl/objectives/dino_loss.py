"""The DINO self-distillation loss (Caron et al. 2021, "Emerging Properties in Self-Supervised
Vision Transformers"; used for the image-level term of DINOv2, Oquab et al. 2023).

For every pair (teacher view ``i``, student view ``j``) the loss is the cross-entropy
``-sum_k p_t[i, b, k] * log softmax(s[j, b] / student_temp)[k]`` averaged over the batch ``b``; the
pair losses are averaged over all pairs. Student views ``0 .. n_teacher - 1`` are the same global
crops that the teacher saw, so the pairs ``(i, i)`` are skipped (``ignore_diagonal=True``, the DINO
default): the student must predict the teacher's output for *another* view.

The teacher probabilities are computed by the caller (centred and sharpened with
:class:`~cellssl.objectives.centering.EMACentering`, or with
:func:`~cellssl.objectives.centering.sinkhorn_knopp`); they carry no gradient.

All arithmetic runs in float32 with autocast disabled, so the loss is exact under bf16 autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def num_loss_terms(n_teacher_views: int, n_student_views: int, ignore_diagonal: bool = True) -> int:
    """Number of (teacher view, student view) pairs the DINO loss averages over.

    With ``ignore_diagonal`` the ``min(n_teacher_views, n_student_views)`` pairs in which the
    student sees the teacher's own view are left out: 2 global + 8 local crops give
    ``2 * 10 - 2 = 18`` terms.
    """
    if n_teacher_views < 1 or n_student_views < 1:
        raise ValueError(f"need at least one teacher and one student view, got {n_teacher_views} and {n_student_views}")
    n = n_teacher_views * n_student_views
    if ignore_diagonal:
        n -= min(n_teacher_views, n_student_views)
    return n


def _stack_views(views: Sequence[torch.Tensor] | torch.Tensor, what: str) -> torch.Tensor:
    """``(V, B, K)`` float32 tensor from a ``(V, B, K)`` tensor or a sequence of ``(B, K)`` tensors."""
    stacked = views if isinstance(views, torch.Tensor) else torch.stack(list(views))
    if stacked.ndim != 3:
        raise ValueError(f"{what} must be (views, B, K) or a list of (B, K), got shape {tuple(stacked.shape)}")
    return stacked.float()


class DINOLoss(nn.Module):
    """Cross-entropy between teacher probabilities and student predictions over view pairs.

    :param out_dim: number of prototypes ``K`` (checked against the inputs).
    :param student_temp: temperature of the student's softmax (0.1 in DINO and DINOv2).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        self.out_dim = out_dim
        self.student_temp = student_temp

    def pair_losses(
        self,
        student_logits: Sequence[torch.Tensor] | torch.Tensor,
        teacher_probs: Sequence[torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        """Matrix of per-pair losses, ``(n_teacher_views, n_student_views)`` float32.

        Entry ``[i, j]`` is ``mean_b sum_k -teacher_probs[i, b, k] * log_softmax(student[j, b] / T)[k]``.
        """
        first = student_logits if isinstance(student_logits, torch.Tensor) else student_logits[0]
        device_type = first.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            student = _stack_views(student_logits, "student logits")
            teacher = _stack_views(teacher_probs, "teacher probabilities").detach()
            if student.shape[1:] != teacher.shape[1:] or student.shape[2] != self.out_dim:
                raise ValueError(
                    f"student views (B, K) = {tuple(student.shape[1:])} and teacher views "
                    f"{tuple(teacher.shape[1:])} must match, with K = out_dim = {self.out_dim}"
                )
            log_probs = F.log_softmax(student / self.student_temp, dim=-1)
            batch_size = student.shape[1]
            return -torch.einsum("tbk,sbk->ts", teacher, log_probs) / batch_size

    def forward(
        self,
        student_logits: Sequence[torch.Tensor] | torch.Tensor,
        teacher_probs: Sequence[torch.Tensor] | torch.Tensor,
        ignore_diagonal: bool = True,
    ) -> torch.Tensor:
        """Mean cross-entropy over the view pairs.

        :param student_logits: ``S`` student views, a ``(S, B, K)`` tensor or a list of ``(B, K)``;
            views ``0 .. T - 1`` are the teacher's global views, in the same order.
        :param teacher_probs: ``T`` teacher target distributions, ``(T, B, K)`` or a list of ``(B, K)``.
        :param ignore_diagonal: skip the pairs in which student view ``i`` is teacher view ``i``.
        :return: scalar float32 loss: the sum of the pair losses divided by
            :func:`num_loss_terms` ``(T, S, ignore_diagonal)``.
        :raises ValueError: on shape mismatches, or if no pair is left.
        """
        losses = self.pair_losses(student_logits, teacher_probs)
        n_teacher, n_student = losses.shape
        if ignore_diagonal:
            n_diag = min(n_teacher, n_student)
            keep = torch.ones_like(losses, dtype=torch.bool)
            diag = torch.arange(n_diag, device=losses.device)
            keep[diag, diag] = False
            if not keep.any():
                raise ValueError("ignore_diagonal=True leaves no (teacher, student) view pair; pass more views")
            losses = losses[keep]
        return losses.sum() / num_loss_terms(n_teacher, n_student, ignore_diagonal)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, student_temp={self.student_temp}"
