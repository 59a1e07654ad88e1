"""SSL objectives: the building blocks of DINO (Caron et al. 2021) and DINOv2 (Oquab et al. 2023).

One small module per concept, each testable on its own:

- :mod:`.centering`: teacher targets by EMA centring + sharpening, or Sinkhorn-Knopp (SwAV).
- :mod:`.dino_loss`: the image-level self-distillation loss over (teacher, student) view pairs.
- :mod:`.ibot_loss`: the masked-patch loss of iBOT (Zhou et al. 2022), DINOv2 weighting.
- :mod:`.koleo`: the KoLeo nearest-neighbour regulariser (Sablayrolles et al. 2019).
- :mod:`.heads`: the DINO projection head (MLP, L2 bottleneck, weight-normalised prototypes).
- :mod:`.masking`: random block masks of the patch grid (BEiT / DINOv2).

The names below are imported lazily on first access, so ``import cellssl.objectives`` stays cheap
(no torch import until a name is used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "EMACentering": "centering",
    "sinkhorn_knopp": "centering",
    "DINOLoss": "dino_loss",
    "num_loss_terms": "dino_loss",
    "IBOTPatchLoss": "ibot_loss",
    "masks_weight": "ibot_loss",
    "KoLeoLoss": "koleo",
    "DINOHead": "heads",
    "WeightNormLinear": "heads",
    "cancel_last_layer_gradients": "heads",
    "set_last_layer_trainable": "heads",
    "BlockMaskingGenerator": "masking",
    "sample_masks": "masking",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
