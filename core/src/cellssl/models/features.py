"""Feature variants of a frozen backbone for linear probing (DINOv2's linear-evaluation features).

:class:`FeatureExtractor` wraps a backbone so that ``forward(x)`` returns, for each image, the
concatenation of

- the (final-LayerNorm-normalised) CLS token of each of the last ``n_last_blocks`` blocks, in block
  order, and
- with ``avgpool``, the mean over patch tokens of the last block (registers excluded),

of dimension ``embed_dim * (n_last_blocks + avgpool)``. It is a drop-in backbone: it maps
``(B, in_chans, H, W)`` to ``(B, embed_dim)`` and exposes ``embed_dim`` and ``in_chans``, so channel
strategies (which call ``backbone(x)``) work unchanged; with ``bag_of_channels`` the per-channel features
are concatenated per channel as usual.

With ``n_last_blocks=1`` and ``avgpool=False`` the output is exactly ``backbone(x)``. Other settings need
a Vision Transformer (a module with ``get_intermediate_layers``).
"""

from __future__ import annotations

import torch
from torch import nn

from cellssl.errors import ConfigError


class FeatureExtractor(nn.Module):
    """``backbone`` whose output is the CLS tokens of its last blocks, optionally with the mean patch token.

    :param backbone: a module mapping ``(B, in_chans, H, W)`` to ``(B, D)`` with attribute ``embed_dim``.
    :param n_last_blocks: number of last blocks whose CLS tokens are concatenated (>= 1).
    :param avgpool: append the mean patch token of the last block.
    :param key: config key named in errors.
    :raises ConfigError: for ``n_last_blocks < 1``, more blocks than the ViT has, or a non-ViT backbone
        with ``n_last_blocks != 1`` or ``avgpool``.
    """

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 1, avgpool: bool = False,
                 key: str = "embed.features") -> None:
        super().__init__()
        if n_last_blocks < 1:
            raise ConfigError(f"{key}.n_last_blocks", f"must be >= 1, got {n_last_blocks}")
        base_dim = getattr(backbone, "embed_dim", None)
        if not isinstance(base_dim, int):
            raise ConfigError(key, f"backbone {type(backbone).__name__} has no integer attribute `embed_dim`")
        trivial = n_last_blocks == 1 and not avgpool
        if not trivial:
            if not hasattr(backbone, "get_intermediate_layers"):
                raise ConfigError(
                    key,
                    f"n_last_blocks={n_last_blocks} / avgpool={avgpool} need a Vision Transformer backbone, but "
                    f"{type(backbone).__name__} has no blocks to read; use n_last_blocks: 1 and avgpool: false",
                )
            depth = len(backbone.blocks)
            if n_last_blocks > depth:
                raise ConfigError(f"{key}.n_last_blocks",
                                  f"is {n_last_blocks} but the backbone has only {depth} blocks")
        self.backbone = backbone
        self.n_last_blocks = int(n_last_blocks)
        self.avgpool = bool(avgpool)
        self.base_dim = base_dim
        self.embed_dim = base_dim * (self.n_last_blocks + int(self.avgpool))
        self.in_chans = getattr(backbone, "in_chans", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> ``(B, embed_dim)`` features (see the module docstring)."""
        if self.n_last_blocks == 1 and not self.avgpool:
            return self.backbone(x)
        layers = self.backbone.get_intermediate_layers(x, self.n_last_blocks, return_class_token=True, norm=True)
        parts = [cls for _, cls in layers]
        if self.avgpool:
            parts.append(layers[-1][0].mean(dim=1))
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return f"n_last_blocks={self.n_last_blocks}, avgpool={self.avgpool}, embed_dim={self.embed_dim}"
