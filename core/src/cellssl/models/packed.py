"""One ViT pass over crop batches of different sizes (multi-crop): packed token sequences.

The straightforward multi-crop student runs the whole ViT once per crop size (global crops, then local
crops). Here the tokens of every crop batch are concatenated along the sequence axis into one packed
sequence ``(1, T, D)``; each block then runs its LayerNorms, QKV and output projections, MLP, LayerScale and
residuals once on all tokens, and attention is restricted to each crop's own tokens (a block-diagonal
attention pattern) by one of these modes:

- ``xformers``: one ``memory_efficient_attention`` call with an xformers ``BlockDiagonalMask`` (CUDA).
- ``grouped``: one :func:`~cellssl.models.attention.attention` call per crop *size* on a reshaped view of
  that size's tokens (the block diagonal, batched; 2 calls for global + local crops). The default on CPU:
  the fastest exact variant there.
- ``padded``: one SDPA call over all crops padded to the longest crop with a key mask (pad-and-mask; pays
  attention on the padding, e.g. local crops of 37 tokens padded to 197).
- ``auto``: ``xformers`` on CUDA when xformers runs, else ``grouped``. ``off``: the per-crop-size loop.

(PyTorch's nested/jagged tensors with SDPA work on CPU but were ~200x slower than ``grouped`` in a
measurement here, so they are not offered.)

Patch embedding and positional embedding still run per crop size (a convolution per input shape), which is
a small share of the work. Stochastic depth is drawn per crop, as in the per-crop loop (the random draws
differ, the distribution does not). The results equal the per-crop loop up to floating-point summation order
(tests/test_packed_multicrop.py: within 1e-5 in fp32).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cellssl.models.attention import _xformers_ops, attention
from cellssl.models.vit_config import PACKING_MODES

if TYPE_CHECKING:
    from cellssl.models.vit import VisionTransformer
    from cellssl.models.vit_blocks import Block



@dataclass(frozen=True)
class PackedLayout:
    """How a packed sequence is made: ``groups[i] = (crops, tokens per crop)`` of crop batch ``i``, in order.

    Tokens of crop ``c`` of group ``i`` occupy ``tokens`` consecutive positions; groups follow each other.
    """

    groups: tuple[tuple[int, int], ...]
    mode: str = "grouped"

    @property
    def total(self) -> int:
        """Number of tokens ``T``."""
        return sum(b * n for b, n in self.groups)

    @property
    def seqlens(self) -> list[int]:
        """Token count of every crop, in packed order (the block sizes of the block-diagonal mask)."""
        return [n for b, n in self.groups for _ in range(b)]

    def slices(self) -> list[slice]:
        """Token range of each group."""
        out, start = [], 0
        for b, n in self.groups:
            out.append(slice(start, start + b * n))
            start += b * n
        return out


def pack(tokens: Sequence[torch.Tensor], mode: str = "grouped") -> tuple[torch.Tensor, PackedLayout]:
    """Concatenate ``(B_i, N_i, D)`` token batches into ``(1, sum B_i N_i, D)`` and describe the layout."""
    layout = PackedLayout(tuple((int(t.shape[0]), int(t.shape[1])) for t in tokens), mode)
    return torch.cat([t.reshape(1, -1, t.shape[-1]) for t in tokens], dim=1), layout


def unpack(x: torch.Tensor, layout: PackedLayout) -> list[torch.Tensor]:
    """Inverse of :func:`pack`: ``(1, T, ...)`` -> ``[(B_i, N_i, ...)]`` (views)."""
    return [x[0, s].reshape(b, n, *x.shape[2:]) for s, (b, n) in zip(layout.slices(), layout.groups)]


@functools.lru_cache(maxsize=32)
def _block_diagonal_mask(seqlens: tuple[int, ...]) -> Any:
    from xformers.ops import fmha

    return fmha.BlockDiagonalMask.from_seqlens(list(seqlens))


def xformers_block_diagonal_mask(layout: PackedLayout) -> Any:
    """The xformers ``BlockDiagonalMask`` of ``layout`` (cached per layout); needs xformers."""
    return _block_diagonal_mask(tuple(layout.seqlens))


def resolve_mode(mode: str, device: torch.device, backend: str) -> str:
    """The packing mode actually used for ``mode`` on ``device`` with the attention ``backend``.

    :raises ValueError: for an unknown mode.
    """
    if mode not in PACKING_MODES:
        raise ValueError(f"unknown crop packing mode {mode!r}; choose one of {list(PACKING_MODES)}")
    if mode != "auto":
        return mode
    if device.type == "cuda" and backend in ("auto", "xformers") and _xformers_ops() is not None:
        return "xformers"
    return "grouped"


def packed_attention(attn: nn.Module, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """Multi-head self-attention of ``attn`` (an :class:`~cellssl.models.attention.Attention`) over a packed
    ``(1, T, D)`` sequence, each crop attending to its own tokens only."""
    _, total, dim = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(total, 3, heads, dim // heads)  # one projection for every crop
    if layout.mode == "xformers":
        xops = _xformers_ops()
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else qkv.dtype
        q, k, v = (qkv[:, i].unsqueeze(0).to(dtype) for i in range(3))  # (1, T, H, hd)
        out = xops.memory_efficient_attention(q, k, v, attn_bias=xformers_block_diagonal_mask(layout))
        out = out.reshape(1, total, dim)
    elif layout.mode == "padded":
        out = _padded_attention(qkv, layout, attn.backend).reshape(1, total, dim)
    else:  # grouped: the block diagonal, one batched call per crop size
        parts = []
        for s, (b, n) in zip(layout.slices(), layout.groups):
            group = qkv[s].reshape(b, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            o = attention(group[0], group[1], group[2], backend=attn.backend)  # (b, H, n, hd)
            parts.append(o.transpose(1, 2).reshape(b * n, dim))
        out = torch.cat(parts).unsqueeze(0)
    return attn.proj(out)


def _padded_attention(qkv: torch.Tensor, layout: PackedLayout, backend: str) -> torch.Tensor:
    """Pad every crop to the longest, one SDPA call with a key-padding mask, then drop the padding."""
    longest = max(n for _, n in layout.groups)
    heads, head_dim = qkv.shape[2], qkv.shape[3]
    padded, valid = [], []
    for s, (b, n) in zip(layout.slices(), layout.groups):
        group = qkv[s].reshape(b, n, 3, heads, head_dim)
        padded.append(F.pad(group, (0, 0, 0, 0, 0, 0, 0, longest - n)))
        keep = torch.zeros(b, longest, dtype=torch.bool, device=qkv.device)
        keep[:, :n] = True
        valid.append(keep)
    qkv_p = torch.cat(padded).permute(2, 0, 3, 1, 4)  # (3, crops, H, longest, hd)
    keep = torch.cat(valid)
    mask = keep[:, None, None, :]  # keys
    out = F.scaled_dot_product_attention(qkv_p[0], qkv_p[1], qkv_p[2], attn_mask=mask)
    out = out.transpose(1, 2)  # (crops, longest, H, hd)
    return out[keep]  # (T, H, hd), packed order


def _drop_path(x: torch.Tensor, module: nn.Module, layout: PackedLayout) -> torch.Tensor:
    """Stochastic depth of a packed residual branch: one keep/drop draw per crop."""
    p = float(getattr(module, "p", 0.0))
    if not module.training or p == 0.0:
        return x
    keep = 1.0 - p
    crops = sum(b for b, _ in layout.groups)
    draws = x.new_empty(crops).bernoulli_(keep)
    counts = torch.tensor(layout.seqlens, device=x.device)
    return x * (draws.repeat_interleave(counts) / keep).view(1, -1, 1)


def packed_block_forward(block: Block, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """:class:`~cellssl.models.vit.Block` on a packed sequence (called from ``Block.forward``, so wrappers
    such as FSDP see a normal block call)."""
    x = x + _drop_path(block.ls1(packed_attention(block.attn, block.norm1(x), layout)), block.drop_path1, layout)
    return x + _drop_path(block.ls2(block.mlp(block.norm2(x))), block.drop_path2, layout)


def forward_crops(
    vit: VisionTransformer,
    crops: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None],
    mode: str,
) -> list[dict[str, torch.Tensor | None]]:
    """``vit.forward_features`` of every crop batch in one pass of the blocks (see the module docstring).

    :param crops: ``(B_i, C, H_i, W_i)`` batches (sizes may differ). :param masks: ``(B_i, N_i)`` bool or None
        per batch. :param mode: a resolved packing mode (not ``auto`` / ``off``).
    :return: one dict per batch, as :meth:`VisionTransformer.forward_features` returns for a tensor.
    """
    tokens = [vit.prepare_tokens(x, m) for x, m in zip(crops, masks)]
    x, layout = pack(tokens, mode)
    for blk in vit.blocks:
        x = blk(x, layout=layout)
    normed = vit.norm(x)
    r = vit.num_register_tokens
    out = []
    for pre, post, m in zip(unpack(x, layout), unpack(normed, layout), masks):
        out.append({"x_norm_clstoken": post[:, 0], "x_norm_regtokens": post[:, 1 : r + 1],
                    "x_norm_patchtokens": post[:, r + 1 :], "x_prenorm": pre, "masks": m})
    return out
