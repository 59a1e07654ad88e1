"""The ``attention_maps`` evaluator: last-block self-attention of a ViT over the patches, as PNG grids.

For a few images of the run's dataset, the attention of the CLS token (and of each register token) to
the patch tokens in the last block is drawn per head, next to the input channels. One PNG per image,
``<run_dir>/eval/attention_maps/image_<row>.png``, laid out as a grid:

- one row per (unit, query token): the *unit* is the whole image for a multi-channel backbone
  (``fixed``), or each channel for a 1-channel backbone (``bag_of_channels``, ``per_channel_concat``:
  every channel is encoded on its own, so it has its own attention); the query tokens are ``CLS`` and,
  with ``include_registers``, ``reg 1..R``;
- columns: the unit's input channel(s) as the model sees them (after resize and normalisation; shown with
  a 1-99 percentile stretch), then one panel per head, then the mean over heads (``mean_over_heads``).

The images are preprocessed exactly as for embedding (``EvalContext.load_dataset``) and encoded by the
run's backbone with its weights (``EvalContext.load_model``).

YAML block::

    eval:
      - name: attention_maps
        num_images: 4            # rows spread evenly over the dataset, or `indices: [0, 17, 42]`
        include_registers: true
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellssl.errors import ConfigError, DataError
from cellssl.eval.attention_maps_config import AttentionMapsConfig
from cellssl.eval.base import EvalContext, Evaluator, to_jsonable
from cellssl.eval.engines.figures import display_range, new_figure, relative_to, save_png

if TYPE_CHECKING:
    from torch import nn

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)


def require_vit(backbone: nn.Module, key: str = "backbone") -> None:
    """:raises ConfigError: naming ``key`` unless ``backbone`` is a ViT with ``get_last_self_attention``."""
    needed = ("get_last_self_attention", "patch_size", "num_register_tokens", "in_chans")
    if not all(hasattr(backbone, attr) for attr in needed):
        raise ConfigError(
            key,
            f"attention maps need a Vision Transformer backbone (e.g. vit_small), but the run's backbone is "
            f"{type(backbone).__name__}, which has no self-attention; remove `attention_maps` from `eval:` "
            "or use a ViT backbone.",
        )


def model_units(
    strategy: Any, backbone: nn.Module, image: torch.Tensor, channel_names: Sequence[str]
) -> tuple[torch.Tensor, list[str], list[list[int]]]:
    """The backbone inputs of one preprocessed ``(C, H, W)`` image, one per unit (see the module docstring).

    :return: ``(inputs (U, in_chans, H, W), unit names, channel indices of ``image`` shown per unit)``.
    :raises DataError: when the image's channels do not fit a multi-channel backbone.
    """
    names = list(channel_names)
    in_chans = int(backbone.in_chans)
    if in_chans == 1:
        return image[:, None], names, [[c] for c in range(len(names))]
    order = strategy.input_order(names)
    if len(order) != in_chans:
        raise DataError(f"the backbone takes {in_chans} channels but the image has {len(names)} ({names})")
    return image[order][None], ["all channels"], [order]


@torch.no_grad()
def patch_attention(backbone: nn.Module, inputs: torch.Tensor, include_registers: bool) -> tuple[np.ndarray, list[str]]:
    """Attention of the CLS (and register) tokens to the patches in the last block.

    :param inputs: ``(U, in_chans, H, W)``.
    :return: ``(maps (U, Q, heads, H / p, W / p) float32, query names ["CLS", "reg 1", ...])``.
    """
    patch = int(backbone.patch_size)
    registers = int(backbone.num_register_tokens)
    rows, cols = inputs.shape[-2] // patch, inputs.shape[-1] // patch
    attention = backbone.get_last_self_attention(inputs.float()).float()
    queries = [0] + (list(range(1, registers + 1)) if include_registers else [])
    maps = attention[:, :, queries, 1 + registers :]  # (U, heads, Q, N)
    maps = maps.permute(0, 2, 1, 3).reshape(inputs.shape[0], len(queries), attention.shape[1], rows, cols)
    names = ["CLS"] + [f"reg {r}" for r in range(1, len(queries))]
    return maps.cpu().numpy(), names


def draw_attention_grid(
    image: np.ndarray,
    channel_names: Sequence[str],
    unit_names: Sequence[str],
    unit_channels: Sequence[Sequence[int]],
    maps: np.ndarray,
    query_names: Sequence[str],
    path: Any,
    mean_over_heads: bool = True,
    panel_size: float = 1.4,
    dpi: int = 100,
    title: str = "",
) -> dict[str, int]:
    """Draw the grid described in the module docstring and save it at ``path``.

    :param image: ``(C, H, W)`` model input. :param maps: ``(U, Q, heads, rows, cols)``.
    :return: ``{"rows", "columns", "panels"}`` of the grid.
    """
    units, n_queries, heads = maps.shape[:3]
    n_inputs = max(len(c) for c in unit_channels)
    n_rows = units * n_queries
    n_cols = n_inputs + heads + (1 if mean_over_heads else 0)
    figure = new_figure(panel_size * n_cols + 0.8, panel_size * n_rows + 0.6, layout="constrained")
    grid = figure.subplots(n_rows, n_cols, squeeze=False)
    height, width = image.shape[-2:]
    panels = 0
    for u in range(units):
        for q in range(n_queries):
            row = u * n_queries + q
            for col in range(n_cols):
                axes = grid[row, col]
                axes.set_xticks([])
                axes.set_yticks([])
                if col < n_inputs:
                    if col >= len(unit_channels[u]):
                        axes.set_axis_off()
                        continue
                    channel = unit_channels[u][col]
                    vmin, vmax = display_range(image[channel])
                    axes.imshow(image[channel], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
                    header = str(channel_names[channel])
                else:
                    head = col - n_inputs
                    data = maps[u, q, head] if head < heads else maps[u, q].mean(axis=0)
                    axes.imshow(data, cmap="inferno", interpolation="nearest", extent=(0, width, height, 0))
                    header = f"head {head + 1}" if head < heads else "mean"
                panels += 1
                if row == 0 or (col < n_inputs and n_inputs > 1):
                    axes.set_title(header, fontsize=8)
                if col == 0:
                    axes.set_ylabel(f"{unit_names[u]}\n{query_names[q]}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    save_png(figure, path, dpi=dpi)
    return {"rows": n_rows, "columns": n_cols, "panels": panels}


def pick_indices(config: AttentionMapsConfig, size: int) -> list[int]:
    """Dataset rows to draw: ``config.indices`` or ``num_images`` rows spread evenly.

    :raises ConfigError: for an index past the end of the dataset.
    """
    if config.indices:
        bad = [i for i in config.indices if i >= size]
        if bad:
            raise ConfigError("attention_maps.indices", f"rows {bad} are past the end of the dataset ({size} rows)")
        return list(config.indices)
    count = min(config.num_images, size)
    return sorted({int(x) for x in np.rint(np.linspace(0, size - 1, count))})


class AttentionMapsEvaluator(Evaluator):
    """Per-head attention maps of the run's ViT on a few images."""

    name = "attention_maps"

    def __init__(self, config: AttentionMapsConfig) -> None:
        self.config = config

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Draw one attention grid per selected image (the embedding table is not used).

        :return: ``{"evaluator", "metrics" (images, heads, registers), "split" (sizes), "images" ([{"index",
            "file" (relative to the run directory), "rows", "columns", "panels"}]), "config", "identity"}``.
        :raises ConfigError: when the run provides no model or images, or the backbone is not a ViT.
        """
        cfg = self.config
        if context.load_model is None or context.load_dataset is None:
            raise ConfigError(self.name, "needs the run's model and images (a config with `data:` and "
                                         "`backbone:`); it cannot run on an embedding table alone.")
        strategy, backbone = context.load_model()
        require_vit(backbone)
        dataset, preprocess = context.load_dataset()
        channel_names = tuple(dataset.channel_names)
        device = next(backbone.parameters()).device
        folder = context.run_dir / "eval" / self.name
        images = []
        heads = 0
        for index in pick_indices(cfg, len(dataset)):
            sample = dataset[index]
            image = preprocess(sample.image, sample.channels).float()
            inputs, units, unit_channels = model_units(strategy, backbone, image, channel_names)
            maps, queries = patch_attention(backbone, inputs.to(device), cfg.include_registers)
            heads = maps.shape[2]
            path = folder / f"image_{index:06d}.png"
            layout = draw_attention_grid(image.cpu().numpy(), channel_names, units, unit_channels, maps, queries,
                                         path, cfg.mean_over_heads, cfg.panel_size, cfg.dpi,
                                         title=f"row {index}: last-block attention to patches")
            images.append({"index": index, "file": relative_to(path, context.run_dir), **layout})
        logger.info("attention_maps: wrote %d grids to %s", len(images), folder)
        result = {
            "evaluator": self.name,
            "metrics": {"images": len(images), "heads": heads,
                        "registers": int(backbone.num_register_tokens)},
            "split": {"mode": "selected dataset rows", "image_rows": len(images)},
            "images": images,
            "channels": list(channel_names),
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_attention_maps(config: AttentionMapsConfig) -> AttentionMapsEvaluator:
    """Factory registered under the name ``attention_maps``."""
    return AttentionMapsEvaluator(config)
