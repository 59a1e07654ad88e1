"""The DINO projection head (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers"; the same head is used for the DINO and iBOT terms of DINOv2, Oquab et al. 2023).

``x -> MLP -> L2-normalise (bottleneck) -> weight-normalised linear layer without bias -> K scores``.

The last layer is weight-normalised explicitly: its weight is ``g * v / ||v||`` with one gain ``g``
per output row (``weight_g``, shape ``(K,)``) and the direction ``v`` (``weight_v``, shape
``(K, bottleneck)``). With ``norm_last_layer=True`` the gain is fixed to 1, so every prototype is a
unit vector and the scores are cosine similarities in ``[-1, 1]``; this stabilises training.
(This replaces the deprecated ``torch.nn.utils.weight_norm``; the parameter names are the ones that
function used, so DINO-style checkpoints map over with ``weight_g`` reshaped from ``(K, 1)`` to ``(K,)``.)

DINO freezes the last layer during the first epoch: :func:`cancel_last_layer_gradients` (call it
after ``backward``; safe with DDP/FSDP) or :func:`set_last_layer_trainable` (single process, or
before wrapping the model).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

LAST_LAYER_NAME = "last_layer"


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``g[:, None] * v / ||v||_row``.

    :param in_features: input size.
    :param out_features: output size (one row, one gain per output).
    :param fix_gain: fix ``g`` to 1 (``requires_grad=False``): rows of the weight have unit norm.
    """

    def __init__(self, in_features: int, out_features: int, fix_gain: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.fix_gain = fix_gain
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_g = nn.Parameter(torch.ones(out_features), requires_grad=not fix_gain)
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        """The effective ``(out_features, in_features)`` weight."""
        norm = torch.linalg.vector_norm(self.weight_v, dim=1, keepdim=True)
        return self.weight_g.unsqueeze(1) * self.weight_v / norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fix_gain={self.fix_gain}"


class DINOHead(nn.Module):
    """MLP projection head with an L2-normalised bottleneck and weight-normalised prototypes.

    :param in_dim: input size (the backbone's embedding size).
    :param out_dim: number of prototypes ``K``.
    :param hidden_dim: width of the hidden MLP layers.
    :param bottleneck_dim: output size of the MLP (normalised to unit length).
    :param nlayers: number of linear layers in the MLP (>= 1); GELU (and BatchNorm with ``use_bn``)
        between them.
    :param use_bn: BatchNorm1d after each hidden linear layer.
    :param norm_last_layer: fix the last layer's gains to 1.

    ``forward`` maps ``(..., in_dim)`` to ``(..., out_dim)``; it also accepts the flattened masked
    patch tokens ``(M, in_dim)`` of iBOT.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        if min(in_dim, out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(
                "in_dim, out_dim, hidden_dim and bottleneck_dim must be >= 1, got "
                f"{in_dim}, {out_dim}, {hidden_dim}, {bottleneck_dim}"
            )
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if i < nlayers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_gain=norm_last_layer)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        # normalise in float32: bf16's few mantissa bits make tiny norms unreliable
        x = F.normalize(x.float(), p=2, dim=-1, eps=1e-6).to(x.dtype)
        return self.last_layer(x)


def _last_layer_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if LAST_LAYER_NAME in n.split(".")]


def cancel_last_layer_gradients(module: nn.Module) -> int:
    """Drop the gradients of every parameter under a submodule named ``last_layer`` (set to None).

    Call after ``backward`` and before ``optimizer.step`` during the freeze (DINO's first epoch):
    the optimizer then skips those parameters. Works with DDP and FSDP because the autograd graph
    is unchanged. Returns the number of parameters whose gradient was dropped.
    """
    count = 0
    for _, param in _last_layer_parameters(module):
        if param.grad is not None:
            param.grad = None
            count += 1
    return count


def set_last_layer_trainable(module: nn.Module, trainable: bool) -> int:
    """Freeze (``trainable=False``) or unfreeze the parameters of every ``last_layer`` submodule.

    A gain fixed by ``norm_last_layer`` stays fixed. Toggling ``requires_grad`` after wrapping the
    model in DDP is not supported by DDP: there use :func:`cancel_last_layer_gradients`. Returns the
    number of parameters changed.
    """
    count = 0
    for name, param in _last_layer_parameters(module):
        owner_name = name.rsplit(".", 1)[0] if "." in name else ""
        owner = module.get_submodule(owner_name)
        if isinstance(owner, WeightNormLinear) and owner.fix_gain and param is owner.weight_g:
            continue
        param.requires_grad_(trainable)
        count += 1
    return count
