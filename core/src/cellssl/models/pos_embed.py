"""Resizing a DINOv2 positional embedding to another patch grid (both interpolation variants of the field)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def interpolate_pos_embed(
    pos_embed: torch.Tensor, rows: int, cols: int, *, offset: float = 0.1, antialias: bool = False
) -> torch.Tensor:
    """Resize a DINOv2 positional embedding to a ``rows x cols`` patch grid.

    :param pos_embed: ``(1, 1 + M*M, D)``: CLS embedding then a row-major ``M x M`` grid.
    :param rows: patch rows of the input (``H // patch_size``; DINOv2 calls it ``w0``).
    :param cols: patch columns (``W // patch_size``; DINOv2's ``h0``).
    :param offset: if > 0, bicubic resize by scale factor ``((rows + offset) / M, (cols + offset) / M)``;
        if 0, bicubic resize to size ``(rows, cols)``.
    :param antialias: passed to :func:`torch.nn.functional.interpolate`.
    :return: ``(1, 1 + rows*cols, D)`` in ``pos_embed``'s dtype (computed in float32); ``pos_embed``
        itself when the grid already is ``rows x cols``.
    :raises ValueError: if the stored grid is not square.
    """
    n_grid = pos_embed.shape[1] - 1
    m = math.isqrt(n_grid)
    if m * m != n_grid:
        raise ValueError(f"pos_embed holds {n_grid} grid positions, not a square grid")
    if (rows, cols) == (m, m):
        return pos_embed
    dim = pos_embed.shape[-1]
    with torch.autocast(pos_embed.device.type, enabled=False):
        pe = pos_embed.float()
        grid = pe[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
        if offset:
            kwargs: dict[str, Any] = {"scale_factor": ((rows + offset) / m, (cols + offset) / m)}
        else:
            kwargs = {"size": (rows, cols)}
        grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
    if tuple(grid.shape[-2:]) != (rows, cols):
        raise ValueError(f"pos_embed interpolation gave grid {tuple(grid.shape[-2:])}, expected {(rows, cols)}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
    return torch.cat([pe[:, :1], grid], dim=1).to(pos_embed.dtype)
