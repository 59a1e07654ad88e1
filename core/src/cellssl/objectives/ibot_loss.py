"""The iBOT masked-patch loss (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online
Tokenizer"), weighted as in DINOv2 (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features
without Supervision").

The student sees a global crop with some patch tokens replaced by a mask token; the teacher sees the
same crop unmasked. For each masked patch the loss is the cross-entropy between the teacher's target
distribution for that patch and the student's prediction ``log softmax(s / student_temp)``. Each
image's masked patches are weighted by ``1 / num_masked(image)``, so every masked image counts the
same whatever its mask ratio; the weighted sum is divided by the number of images ``B`` (images
without masks contribute zero, as in DINOv2).

Inputs are the *flattened* masked tokens (``M`` rows = all masked patches of the batch, in the
row-major order of ``masks``, i.e. ``tokens[masks]``), which keeps the head's work proportional to the
number of masked patches. All arithmetic is float32 with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masks_weight(masks: torch.Tensor) -> torch.Tensor:
    """Per-masked-token weights ``1 / num_masked(image)``, flattened like ``tokens[masks]``.

    :param masks: ``(B, N)`` bool, True where a patch is masked.
    :return: ``(M,)`` float32 with ``M = masks.sum()``.
    """
    if masks.ndim != 2 or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a (B, N) bool tensor, got {masks.dtype} of shape {tuple(masks.shape)}")
    per_image = 1.0 / masks.sum(dim=-1, dtype=torch.float32).clamp(min=1.0)
    return per_image.unsqueeze(-1).expand_as(masks)[masks]


class IBOTPatchLoss(nn.Module):
    """Cross-entropy over masked patch tokens between teacher targets and student predictions.

    :param patch_out_dim: number of patch prototypes ``K`` (checked against the inputs).
    :param student_temp: temperature of the student's softmax (0.1).
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1) -> None:
        super().__init__()
        if patch_out_dim < 1:
            raise ValueError(f"patch_out_dim must be >= 1, got {patch_out_dim}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        self.patch_out_dim = patch_out_dim
        self.student_temp = student_temp

    def forward(
        self,
        student_masked_logits: torch.Tensor,
        teacher_masked_probs: torch.Tensor,
        masks: torch.Tensor,
        weights: torch.Tensor | None = None,
        n_masked_patches: int | None = None,
    ) -> torch.Tensor:
        """Weighted masked-patch cross-entropy.

        :param student_masked_logits: ``(M', K)`` student head outputs for the masked tokens.
        :param teacher_masked_probs: ``(M', K)`` teacher targets (centred / Sinkhorn), no gradient.
        :param masks: ``(B, N)`` bool masks of the student's global crops; ``B`` is the divisor.
        :param weights: ``(M',)`` per-token weights; default :func:`masks_weight` ``(masks)``.
        :param n_masked_patches: use only the first ``n_masked_patches`` rows (the rest is padding,
            as when the tokens are gathered into a fixed-size buffer); default all rows.
        :return: scalar float32 loss ``-sum_m w_m sum_k t_mk log p_mk / B``.
        :raises ValueError: on shape mismatches.
        """
        if student_masked_logits.shape != teacher_masked_probs.shape or student_masked_logits.ndim != 2:
            raise ValueError(
                f"student {tuple(student_masked_logits.shape)} and teacher "
                f"{tuple(teacher_masked_probs.shape)} masked tokens must both be (M, K) with the same shape"
            )
        if student_masked_logits.shape[1] != self.patch_out_dim:
            raise ValueError(f"masked tokens have K = {student_masked_logits.shape[1]}, expected {self.patch_out_dim}")
        if weights is None:
            weights = masks_weight(masks)
        with torch.autocast(device_type=student_masked_logits.device.type, enabled=False):
            student = student_masked_logits.float()
            teacher = teacher_masked_probs.detach().float()
            if n_masked_patches is not None:
                student, teacher = student[:n_masked_patches], teacher[:n_masked_patches]
                weights = weights[:n_masked_patches]
            if weights.shape != student.shape[:1]:
                raise ValueError(
                    f"weights have shape {tuple(weights.shape)}, expected ({student.shape[0]},): one per masked token"
                )
            per_token = torch.sum(teacher * F.log_softmax(student / self.student_temp, dim=-1), dim=-1)
            return -(per_token * weights.float()).sum() / masks.shape[0]

    def extra_repr(self) -> str:
        return f"patch_out_dim={self.patch_out_dim}, student_temp={self.student_temp}"
