"""Edges of the AdamW parameter groups that mutation testing found unpinned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cellssl.train.param_groups import param_groups


class _Odd(nn.Module):
    """2-D parameters named like biases and gains, which the ndim rule alone would decay."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Module()
        self.table.bias = nn.Parameter(torch.zeros(3, 3))
        self.table.layer_gamma = nn.Parameter(torch.ones(2, 2))
        self.table.weight = nn.Parameter(torch.ones(2, 2))


def _multipliers(model: nn.Module, **kwargs: float) -> dict[str, tuple[float, float]]:
    return {name: (group["lr_multiplier"], group["wd_multiplier"])
            for group in param_groups(model, weight_decay=0.1, **kwargs) for name in group["param_names_list"]}


def test_biases_and_gammas_of_any_shape_are_not_decayed() -> None:
    found = _multipliers(_Odd())
    assert found == {"table.bias": (1.0, 0.0), "table.layer_gamma": (1.0, 0.0), "table.weight": (1.0, 1.0)}


def test_layerwise_decay_needs_blocks_and_counts_a_single_one() -> None:
    plain = nn.Module()  # no blocks.<i>.: every multiplier is 1, the patch embedding and tokens' too
    plain.patch_embed = nn.Linear(2, 2)
    plain.cls_token = nn.Parameter(torch.zeros(1, 1, 2))
    plain.head = nn.Linear(2, 2)
    found = _multipliers(plain, layerwise_decay=0.5)
    assert {v[0] for v in found.values()} == {1.0} and set(found) >= {"patch_embed.weight", "cls_token"}
    one = nn.Module()
    one.patch_embed = nn.Linear(2, 2)
    one.blocks = nn.ModuleList([nn.Linear(2, 2)])
    one.head = nn.Linear(2, 2)
    found = _multipliers(one, layerwise_decay=0.5)  # L = 1: patch_embed 0.5**2, block 0.5, head 1
    assert found["patch_embed.weight"][0] == 0.25 and found["blocks.0.weight"][0] == 0.5
    assert found["head.weight"][0] == 1.0
    assert _multipliers(one)["patch_embed.weight"][0] == 1.0  # patch_embed_lr_mult defaults to 1


def test_argument_checks() -> None:
    model = nn.Linear(2, 2)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"^layerwise_decay must be in \(0, 1\], got {bad}$"):
            param_groups(model, weight_decay=0.1, layerwise_decay=bad)
    with pytest.raises(ValueError, match=r"^patch_embed_lr_mult must be > 0, got 0\.0$"):
        param_groups(model, weight_decay=0.1, patch_embed_lr_mult=0.0)
    with pytest.raises(ValueError, match=r"^num_layers must be >= 0, got -1$"):
        param_groups(model, weight_decay=0.1, num_layers=-1)
