"""The crop boxes the multi-crop views really draw: local crops cover ``local_scale`` of the image, global
crops ``global_scale``.

The views are built the way training builds them (the objective's ``make_views``, and
``MultiCropTransform.from_config``) and applied to real Jurkat cells (40 x 40 px). Every box passed to the
resize is recorded by wrapping :meth:`RandomResizedCrop.box`; its area fraction is compared with the
configured range, allowing only for the rounding of the box sides to whole pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from cellssl.data.augment import RandomResizedCrop
from cellssl.data.multicrop import MultiCropConfig, MultiCropTransform
from cellssl.data.normalize import PerImageNormalizer
from cellssl.data.sample import CellSample
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.objectives.dino import DINOConfig, DINOObjective, HeadConfig
from cellssl.objectives.dinov2 import DINOv2Config, DINOv2Objective

CHANNELS = ("brightfield", "dna", "darkfield")
GLOBAL_SIZE, LOCAL_SIZE = 32, 16
GLOBAL_SCALE, LOCAL_SCALE = [0.6, 1.0], [0.1, 0.3]  # disjoint: a box drawn from the wrong range shows
HEAD = HeadConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, nlayers=2)


def _multicrop() -> MultiCropConfig:
    return MultiCropConfig(global_size=GLOBAL_SIZE, local_size=LOCAL_SIZE, n_global=2, n_local=6,
                           global_scale=list(GLOBAL_SCALE), local_scale=list(LOCAL_SCALE))


def _vit() -> torch.nn.Module:
    return build_vit(ViTConfig(arch="vit_tiny", patch_size=8, img_size=32, embed_dim=16, depth=1, num_heads=2,
                               layerscale_init=None), len(CHANNELS))


@pytest.fixture(scope="module")
def cells(shared_data: Path) -> list[torch.Tensor]:
    root = shared_data / "jurkat-cellcycle"
    paths = pd.read_csv(root / "metadata.csv")["path"][::300]
    return [torch.from_numpy(tifffile.imread(root / p).astype(np.float32) / 65535.0) for p in paths]


def _record_boxes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    """Record ``(output size, image area, box height, box width)`` of every crop drawn."""
    boxes: list[Any] = []
    original = RandomResizedCrop.box

    def box(self: RandomResizedCrop, height: int, width: int, gen: torch.Generator) -> tuple[int, int, int, int]:
        top, left, h, w = original(self, height, width, gen)
        assert 0 <= top <= height - h and 0 <= left <= width - w
        boxes.append((self.size, height * width, h, w))
        return top, left, h, w

    monkeypatch.setattr(RandomResizedCrop, "box", box)
    return boxes


def _fraction_range(image_area: int, h: int, w: int) -> tuple[float, float]:
    """Area fractions the unrounded box could have had: each side was rounded to the nearest pixel."""
    return (h - 0.5) * (w - 0.5) / image_area, (h + 0.5) * (w + 0.5) / image_area


def _check(boxes: list[Any], size: int, scale: list[float], expected: int) -> np.ndarray:
    picked = [(area, h, w) for s, area, h, w in boxes if s == size]
    assert len(picked) == expected
    for area, h, w in picked:
        low, high = _fraction_range(area, h, w)
        assert low <= scale[1] and high >= scale[0], f"a {h}x{w} crop of a {area}-px image is outside {scale}"
    return np.array([h * w / area for area, h, w in picked])


Views = Callable[[torch.Tensor, torch.Generator], dict[str, Any]]


def _objective_views(kind: str) -> Views:
    if kind == "dino":
        objective = DINOObjective(DINOConfig(multicrop=_multicrop(), head=HEAD), _vit)
    else:
        objective = DINOv2Objective(DINOv2Config(multicrop=_multicrop(), head=HEAD), _vit)
    views = objective.make_views(PerImageNormalizer())
    return lambda image, gen: views(CellSample(image, CHANNELS, 0), gen)


def _config_views(kind: str) -> Views:
    transform = MultiCropTransform.from_config(_multicrop())
    return lambda image, gen: transform(image, CHANNELS, gen)


@pytest.mark.parametrize(("build", "kind"), [(_objective_views, "dino"), (_objective_views, "dinov2"),
                                             (_config_views, "from_config")])
def test_local_and_global_crops_cover_their_configured_area(monkeypatch: pytest.MonkeyPatch,
                                                            cells: list[torch.Tensor], build: Any, kind: str) -> None:
    views = build(kind)
    boxes = _record_boxes(monkeypatch)
    rounds = 8
    for i, image in enumerate(cells):
        for r in range(rounds):
            out = views(image, torch.Generator().manual_seed(1000 * i + r))
            assert [tuple(v.shape) for v in out["local"]] == [(3, LOCAL_SIZE, LOCAL_SIZE)] * 6
            assert [tuple(v.shape) for v in out["global"]] == [(3, GLOBAL_SIZE, GLOBAL_SIZE)] * 2
    n = len(cells) * rounds
    local = _check(boxes, LOCAL_SIZE, LOCAL_SCALE, 6 * n)
    global_ = _check(boxes, GLOBAL_SIZE, GLOBAL_SCALE, 2 * n)
    # the draws span their ranges (uniform in area): not one fixed box
    assert local.min() < 0.13 and local.max() > 0.27 and 0.17 < local.mean() < 0.23
    assert global_.min() < 0.68 and global_.max() > 0.9
