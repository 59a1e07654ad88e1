"""Vision Transformer in the DINOv2 layout (so released DINOv2 / Cell-DINO checkpoints load).

State-dict keys: ``cls_token``, ``pos_embed``, ``mask_token``, ``register_tokens`` (only with registers),
``patch_embed.proj.{weight,bias}``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,
mlp.fc2,ls2.gamma}.*`` (``ls*`` only with LayerScale), ``norm.{weight,bias}``.

Token sequence: ``[CLS, registers..., patches...]``; the positional embedding (CLS + an ``M x M``
grid, ``M = img_size // patch_size``) is interpolated to the input's patch grid and added before the
registers are inserted, so registers have no positional embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cellssl.errors import DataError
from cellssl.models.packed import forward_crops, resolve_mode
from cellssl.models.pos_embed import interpolate_pos_embed
from cellssl.models.vit_blocks import Block, PatchEmbed
from cellssl.models.vit_config import ARCHS, BACKENDS, ViTConfig

logger = logging.getLogger(__name__)

__all__ = ["ARCHS", "Block", "ViTConfig", "VisionTransformer", "build_vit", "interpolate_pos_embed"]


class VisionTransformer(nn.Module):
    """DINOv2-layout ViT mapping ``(B, in_chans, H, W)`` images to embeddings.

    ``H`` and ``W`` must be multiples of ``patch_size``; the positional embedding is interpolated to
    any such size. Build it with :func:`build_vit`.
    """

    def __init__(self, config: ViTConfig, in_chans: int) -> None:
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        dim, depth, heads = config.dims()
        self.config = config
        self.embed_dim = self.num_features = dim
        self.n_blocks = depth
        self.num_heads = heads
        self.patch_size = config.patch_size
        self.in_chans = in_chans
        self.num_register_tokens = config.num_register_tokens
        self.crop_packing = config.crop_packing
        self.interpolate_offset = config.interpolate_offset
        self.interpolate_antialias = config.interpolate_antialias
        grid = config.img_size // config.patch_size

        self.patch_embed = PatchEmbed(config.patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        if self.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, self.num_register_tokens, dim))
        else:
            self.register_tokens = None
        rates = torch.linspace(0, config.drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(dim, heads, config.mlp_ratio, config.qkv_bias, config.layerscale_init, rate, config.attention)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.init_weights()

    def init_weights(self) -> None:
        """DINOv2 initialisation: trunc-normal(0.02) for pos_embed and Linear weights (zero biases),
        normal(1e-6) for the CLS and register tokens, zeros for the mask token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_attention_backend(self, backend: str) -> None:
        """Use ``backend`` (see :data:`cellssl.models.attention.BACKENDS`) in every block."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {list(BACKENDS)}")
        for blk in self.blocks:
            blk.attn.backend = backend

    def pos_embed_for_grid(self, rows: int, cols: int) -> torch.Tensor:
        """Positional embedding ``(1, 1 + rows*cols, D)`` for a ``rows x cols`` patch grid."""
        return interpolate_pos_embed(
            self.pos_embed, rows, cols, offset=self.interpolate_offset, antialias=self.interpolate_antialias
        )

    def _grid(self, x: torch.Tensor) -> tuple[int, int]:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise DataError(
                f"the ViT was built for input (B, {self.in_chans}, H, W) but got shape {tuple(x.shape)}; "
                "check the channel strategy / the number of channels of the data"
            )
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise DataError(
                f"input size {h}x{w} is not a multiple of patch_size {p}; crop or resize images to a "
                f"multiple of {p} (e.g. {max(p, h // p * p)}x{max(p, w // p * p)})"
            )
        return h // p, w // p

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Token sequence ``(B, 1 + R + N, D)`` before the blocks.

        :param x: ``(B, in_chans, H, W)`` images.
        :param masks: optional ``(B, N)`` bool; True patches are replaced by ``mask_token`` (before the
            positional embedding is added).
        :raises DataError: for a wrong channel count or a size that is not a multiple of the patch size.
        """
        rows, cols = self._grid(x)
        b = x.shape[0]
        tokens = self.patch_embed(x)
        if masks is not None:
            if masks.shape != tokens.shape[:2] or masks.dtype != torch.bool:
                raise ValueError(
                    f"masks must be a bool tensor of shape {tuple(tokens.shape[:2])}, "
                    f"got {masks.dtype} {tuple(masks.shape)}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = tokens + self.pos_embed_for_grid(rows, cols)
        if self.register_tokens is not None:
            regs = self.register_tokens.expand(b, -1, -1)
            tokens = torch.cat([tokens[:, :1], regs, tokens[:, 1:]], dim=1)
        return tokens

    def _features(self, x: torch.Tensor, masks: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        tokens = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            tokens = blk(tokens)
        normed = self.norm(tokens)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1 : r + 1],
            "x_norm_patchtokens": normed[:, r + 1 :],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def forward_features(
        self,
        x: torch.Tensor | Sequence[torch.Tensor],
        masks: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    ) -> dict[str, torch.Tensor | None] | list[dict[str, torch.Tensor | None]]:
        """Token features.

        :param x: ``(B, in_chans, H, W)`` images, or a list of such batches (sizes may differ, e.g.
            global and local crops); a list gives a list of dicts, computed in one pass of the blocks over
            packed sequences unless ``crop_packing`` is ``off`` (:mod:`cellssl.models.packed`).
        :param masks: ``(B, N)`` bool patch masks (iBOT), or a list matching ``x``, or None.
        :return: dict with ``x_norm_clstoken`` ``(B, D)``, ``x_norm_regtokens`` ``(B, R, D)``,
            ``x_norm_patchtokens`` ``(B, N, D)``, ``x_prenorm`` ``(B, 1 + R + N, D)`` (tokens before the
            final norm) and ``masks`` (as given).
        """
        if isinstance(x, torch.Tensor):
            if masks is not None and not isinstance(masks, torch.Tensor):
                raise ValueError("masks must be a tensor when x is a tensor")
            return self._features(x, masks)
        if masks is None:
            masks = [None] * len(x)
        if len(masks) != len(x):
            raise ValueError(f"got {len(x)} crop batches but {len(masks)} masks")
        mode = resolve_mode(self.crop_packing, self.pos_embed.device, self.blocks[0].attn.backend) \
            if len(x) > 1 and len(self.blocks) else "off"
        if mode == "off":
            return [self._features(xi, mi) for xi, mi in zip(x, masks)]
        return forward_crops(self, list(x), list(masks), mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` -> normalised CLS token ``(B, embed_dim)``."""
        return self._features(x, None)["x_norm_clstoken"]

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple[Any, ...]:
        """Outputs of intermediate blocks (as DINOv2).

        :param n: the last ``n`` blocks (int) or these block indices (sequence).
        :param reshape: return patch tokens as ``(B, D, rows, cols)`` instead of ``(B, N, D)``.
        :param return_class_token: return ``(patch_tokens, cls_token)`` pairs.
        :param norm: apply the final LayerNorm to each output.
        :return: one entry per selected block, in block order; registers are dropped.
        :raises ValueError: for a block index out of range.
        """
        depth = len(self.blocks)
        wanted = list(range(depth - n, depth)) if isinstance(n, int) else [int(i) for i in n]
        if not wanted or any(not 0 <= i < depth for i in wanted):
            raise ValueError(f"block indices {wanted} out of range for a ViT of depth {depth}")
        rows, cols = self._grid(x)
        tokens = self.prepare_tokens(x)
        outputs = []
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = blk(tokens)
            if i in wanted:
                outputs.append(self.norm(tokens) if norm else tokens)
        start = 1 + self.num_register_tokens
        patches = [o[:, start:] for o in outputs]
        if reshape:
            patches = [p.reshape(x.shape[0], rows, cols, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, [o[:, 0] for o in outputs]))
        return tuple(patches)

    def get_last_self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of the last block, ``(B, heads, T, T)`` with ``T = 1 + R + N``
        (token order CLS, registers, patches), computed with the math path."""
        tokens = self.prepare_tokens(x)
        for blk in self.blocks[:-1]:
            tokens = blk(tokens)
        last = self.blocks[-1]
        return last.attn.attention_map(last.norm1(tokens))


def build_vit(config: ViTConfig, in_chans: int) -> VisionTransformer:
    """Build a randomly initialised :class:`VisionTransformer` taking ``in_chans`` input channels."""
    model = VisionTransformer(config, in_chans)
    logger.debug("built %s (dims %s, patch %d, in_chans %d)", config.arch, config.dims(), config.patch_size, in_chans)
    return model
