"""The KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search"; used by
DINOv2, Oquab et al. 2023).

KoLeo is the Kozachenko-Leonenko differential-entropy estimator: it rewards features that spread
uniformly on the sphere by penalising the log distance of each sample to its nearest neighbour in
the batch, ``-mean_i log min_{j != i} ||x_i - x_j||`` on L2-normalised ``x``.

It is computed per rank (the nearest neighbour is searched in the local batch only), like DINOv2.
The nearest neighbour is chosen without gradient; the distance to it carries the gradient. Float32
with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko nearest-neighbour entropy regulariser.

    :param eps: added inside the square root of the squared distance (``sqrt(d^2 + eps^2)``), so
        duplicate samples give a large finite loss and a finite (zero) gradient instead of ``inf``.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """:param features: ``(B, D)`` features, ``B >= 2`` (normalised here).
        :return: scalar float32 loss.
        :raises ValueError: for fewer than 2 samples or a non-2-D input.
        """
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"KoLeo needs a (B, D) batch with B >= 2, got shape {tuple(features.shape)}")
        with torch.autocast(device_type=features.device.type, enabled=False):
            x = F.normalize(features.float(), p=2, dim=-1, eps=1e-12)
            with torch.no_grad():
                similarity = x @ x.t()
                similarity.fill_diagonal_(-float("inf"))
                nearest = similarity.argmax(dim=1)
            diff = x - x[nearest]
            distance = torch.sqrt(diff.pow(2).sum(dim=-1) + self.eps**2)
            return -torch.log(distance).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
