"""Teacher target normalisation: EMA centring (DINO) and Sinkhorn-Knopp (SwAV / DINOv2).

The teacher's prototype scores are turned into target distributions in one of two ways:

- :class:`EMACentering`: subtract a running mean of the teacher scores, then a sharp softmax
  (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", DINO). Centring
  stops one prototype from dominating; sharpening (a low temperature) stops the uniform collapse.
- :func:`sinkhorn_knopp`: a few Sinkhorn-Knopp iterations (Cuturi 2013, "Sinkhorn Distances") that
  make the batch's soft assignments use every prototype equally, as in SwAV (Caron et al. 2020) and
  DINOv2 (Oquab et al. 2023).

Both compute in float32 with autocast disabled, so they are safe under bf16 autocast. When
``torch.distributed`` is initialised, the statistics that span the batch (the centre's mean, the
Sinkhorn sums) are all-reduced so that every rank uses the statistics of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce ``tensor`` in place (``op``: ``"sum"`` or ``"max"``) when torch.distributed is
    initialised; return it. ``ReduceOp`` is looked up lazily: builds without distributed lack it."""
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


def _check_logits(teacher_logits: torch.Tensor, temp: float) -> None:
    if teacher_logits.ndim != 2:
        raise ValueError(f"teacher logits must be (B, K), got shape {tuple(teacher_logits.shape)}")
    if temp <= 0:
        raise ValueError(f"temperature must be > 0, got {temp}")


class EMACentering(nn.Module):
    """Running centre of the teacher's prototype scores (DINO).

    :param out_dim: number of prototypes ``K``.
    :param momentum: EMA momentum of the centre: ``c <- m c + (1 - m) mean(teacher_logits)``.

    The centre is a buffer (``center``, shape ``(1, K)``, float32) so it is saved in checkpoints
    and moved with the module.
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"centre momentum must be in [0, 1], got {momentum}")
        self.out_dim = out_dim
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_centered(self, teacher_logits: torch.Tensor, temp: float) -> torch.Tensor:
        """Teacher targets ``softmax((logits - center) / temp)``.

        :param teacher_logits: ``(B, K)`` teacher scores (any float dtype).
        :param temp: teacher temperature (e.g. 0.04 to 0.07).
        :return: ``(B, K)`` float32 probabilities (rows sum to 1), no gradient.
        """
        _check_logits(teacher_logits, temp)
        with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
            return F.softmax((teacher_logits.float() - self.center) / temp, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """EMA update of the centre with the mean of ``teacher_logits`` over the (global) batch.

        Under torch.distributed the sum and the row count are all-reduced together, so ranks with
        different batch sizes are weighted by their number of rows.
        """
        if teacher_logits.ndim != 2 or teacher_logits.shape[1] != self.out_dim:
            raise ValueError(f"teacher logits must be (B, {self.out_dim}), got shape {tuple(teacher_logits.shape)}")
        logits = teacher_logits.detach().float()
        stats = torch.cat([logits.sum(dim=0), logits.new_tensor([logits.shape[0]])])
        _all_reduce(stats)
        count = stats[-1]
        if count <= 0:
            return
        batch_mean = (stats[:-1] / count).unsqueeze(0)
        self.center.mul_(self.momentum).add_(batch_mean, alpha=1.0 - self.momentum)

    def extra_repr(self) -> str:
        return f"out_dim={self.out_dim}, momentum={self.momentum}"


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft assignments of the batch to prototypes (SwAV / DINOv2 teacher targets).

    Starts from ``Q = exp(logits / temp)^T`` (``K x B``, normalised to total mass 1) and alternately
    rescales rows (each prototype gets mass ``1/K``) and columns (each sample gets mass ``1/B``);
    the result is scaled so that each sample's row of the output sums to 1. Under torch.distributed
    the total, the per-prototype sums and ``B`` are global (all-reduced); the per-sample sums are local.

    Before ``exp``, each prototype's scores are shifted by their (global) maximum over the batch:
    a per-prototype factor is removed exactly by the first row normalisation, so the result is that
    of the plain algorithm, without overflow for large logits or small temperatures. A sample or
    prototype whose mass underflows to zero keeps zeros instead of producing NaN.

    :param teacher_logits: ``(B, K)`` teacher scores (any float dtype).
    :param temp: teacher temperature.
    :param n_iterations: number of (row, column) normalisation rounds; DINOv2 uses 3.
    :return: ``(B, K)`` float32 assignments; each row sums to 1, columns sum to about ``B / K``.
    """
    _check_logits(teacher_logits, temp)
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")
    tiny = torch.finfo(torch.float32).tiny
    with torch.autocast(device_type=teacher_logits.device.type, enabled=False):
        scores = teacher_logits.detach().float() / temp
        shift = _all_reduce(scores.max(dim=0, keepdim=True).values, op="max")  # (1, K)
        q = torch.exp(scores - shift).t()  # (K, B)
        n_prototypes = q.shape[0]
        n_samples = _all_reduce(q.new_tensor(float(q.shape[1])))
        q /= _all_reduce(q.sum()).clamp_min(tiny)
        for _ in range(n_iterations):
            row_sums = _all_reduce(q.sum(dim=1, keepdim=True))
            q /= row_sums.clamp_min(tiny)
            q /= n_prototypes
            q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
            q /= n_samples
        q *= n_samples
        return q.t()
