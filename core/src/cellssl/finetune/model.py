"""The fine-tuned model: the channel strategy's embedding of the backbone, then a linear or MLP head.

:class:`Classifier` computes ``head(strategy.embed(backbone, images, channels))``, so any channel strategy
feeds the head. :func:`optimizer_groups` gives the head its own learning rate and the backbone a lower
one with layer-wise decay (:func:`cellssl.train.param_groups.param_groups`: the final norm gets
``backbone_lr``, block ``i`` of ``L`` ``backbone_lr * layer_decay ** (L - i)``, the patch embedding and
tokens ``backbone_lr * layer_decay ** (L + 1)``; no weight decay on biases, norms and tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cellssl.finetune.config import FinetuneSection


def make_head(kind: str, in_dim: int, num_outputs: int, hidden_dim: int = 256, dropout: float = 0.0) -> nn.Module:
    """``linear``: Dropout-Linear; ``mlp``: Linear-GELU-Dropout-Linear.

    :raises ValueError: for an unknown kind.
    """
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_outputs))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                             nn.Linear(hidden_dim, num_outputs))
    raise ValueError(f"unknown head {kind!r}")


class Classifier(nn.Module):
    """``head(strategy.embed(backbone, images, channel_names))``.

    :param strategy: the run's channel strategy (not a module; it holds no parameters).
    :param backbone: the backbone with its starting weights.
    :param channel_names: channel names of the images.
    :param in_dim: the embedding dimension the strategy gives.
    """

    def __init__(self, strategy: Any, backbone: nn.Module, channel_names: Sequence[str], in_dim: int,
                 num_outputs: int, section: FinetuneSection) -> None:
        super().__init__()
        self.strategy = strategy
        self.backbone = backbone
        self.channel_names = tuple(channel_names)
        self.head = make_head(section.head, in_dim, num_outputs, section.hidden_dim, section.dropout)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` embeddings of ``(B, C, H, W)`` images."""
        return self.strategy.embed(self.backbone, images, self.channel_names).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def optimizer_groups(model: Classifier, section: FinetuneSection) -> list[dict[str, Any]]:
    """AdamW groups with a ``base_lr`` each (the schedule scales it): the head, then the backbone's groups
    (none when ``freeze_backbone``)."""
    from cellssl.train.param_groups import param_groups

    groups = [{"params": list(model.head.parameters()), "base_lr": section.lr, "weight_decay": section.weight_decay,
               "name": "head"}]
    if not section.freeze_backbone:
        for group in param_groups(model.backbone, weight_decay=section.weight_decay,
                                  layerwise_decay=section.layer_decay):
            groups.append({"params": group["params"], "base_lr": section.backbone_lr * group["lr_multiplier"],
                           "weight_decay": group["weight_decay"],
                           "name": f"backbone x{group['lr_multiplier']:.4g}"})
    return groups
