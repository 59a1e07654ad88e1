"""AdamW parameter groups: weight-decay exclusions and layer-wise learning-rate decay.

As in BEiT / iBOT / DINOv2 (Oquab et al. 2023), for a ViT with ``L`` blocks:

- no weight decay (``wd_multiplier = 0``) for biases, every 1-D parameter (norms, layer-scale
  gammas, weight-norm gains), the tokens (``cls_token``, ``pos_embed``, ``register_tokens``,
  ``mask_token``) and any parameter whose name has a ``gamma`` component;
- layer-wise lr decay: layer id 0 for the patch embedding and the tokens, ``i + 1`` for
  ``blocks.<i>.``, ``L + 1`` for everything else (final norm, heads);
  ``lr_multiplier = layerwise_decay ** (L + 1 - layer_id)``;
- ``patch_embed`` parameters get an extra ``patch_embed_lr_mult``;
- parameters under a ``last_layer`` submodule (the DINO head's prototypes) are flagged
  ``is_last_layer`` so the trainer can use the last-layer lr schedule (zero during the freeze).

Names are matched by their dotted components anywhere in the path, so prefixes such as
``student.backbone.`` do not matter. A model without ``blocks.<i>.`` gets multiplier 1 everywhere
(except ``patch_embed_lr_mult``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)

TOKEN_NAMES: frozenset[str] = frozenset({"cls_token", "pos_embed", "register_tokens", "mask_token"})
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _block_index(name: str) -> int | None:
    match = _BLOCK_RE.search(name)
    return int(match.group(1)) if match else None


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for parameters excluded from weight decay (see the module docstring)."""
    parts = name.split(".")
    return param.ndim <= 1 or parts[-1] == "bias" or parts[-1] in TOKEN_NAMES or any("gamma" in part for part in parts)


def layer_id(name: str, num_layers: int) -> int:
    """Layer index of a parameter for lr decay: 0 (patch embedding, tokens), ``i + 1``
    (``blocks.<i>.``), ``num_layers + 1`` (anything else)."""
    parts = name.split(".")
    if "patch_embed" in parts or parts[-1] in TOKEN_NAMES:
        return 0
    block = _block_index(name)
    if block is not None:
        return block + 1
    return num_layers + 1


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    layerwise_decay: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
    num_layers: int | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim.AdamW``.

    :param model: any module; parameters with ``requires_grad=False`` are left out.
    :param weight_decay: base weight decay (each group's initial ``weight_decay`` is
        ``weight_decay * wd_multiplier``; the trainer rescales it per step).
    :param layerwise_decay: lr decay per ViT layer, in ``(0, 1]`` (1 = no decay).
    :param patch_embed_lr_mult: extra lr multiplier of the ``patch_embed`` parameters.
    :param num_layers: number of ViT blocks; default: 1 + the largest ``blocks.<i>.`` index found
        (0 if none, and then every layer multiplier is 1).
    :return: list of dicts with ``params``, ``lr_multiplier``, ``wd_multiplier`` (0.0 or 1.0),
        ``weight_decay``, ``is_last_layer`` and ``param_names_list`` (for logs); parameters with the
        same (lr_multiplier, wd_multiplier, is_last_layer) share a group; order follows the model.
    :raises ValueError: on a ``layerwise_decay`` outside ``(0, 1]`` or a negative ``num_layers``.
    """
    if not 0.0 < layerwise_decay <= 1.0:
        raise ValueError(f"layerwise_decay must be in (0, 1], got {layerwise_decay}")
    if patch_embed_lr_mult <= 0:
        raise ValueError(f"patch_embed_lr_mult must be > 0, got {patch_embed_lr_mult}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if num_layers is None:
        indices = [i for i in (_block_index(n) for n, _ in named) if i is not None]
        num_layers = max(indices) + 1 if indices else 0
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    is_vit = num_layers > 0

    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for name, param in named:
        lr_mult = layerwise_decay ** (num_layers + 1 - layer_id(name, num_layers)) if is_vit else 1.0
        if "patch_embed" in name.split("."):
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if no_weight_decay(name, param) else 1.0
        last = "last_layer" in name.split(".")
        key = (lr_mult, wd_mult, last)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names_list": [],
                "lr_multiplier": lr_mult,
                "wd_multiplier": wd_mult,
                "weight_decay": weight_decay * wd_mult,
                "is_last_layer": last,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names_list"].append(name)
    logger.debug("built %d parameter groups from %d parameters", len(groups), len(named))
    return list(groups.values())
