"""Backbones: the DINOv2-layout Vision Transformer, torchvision ResNets, attention backends and
checkpoint I/O.

Importing this package is cheap; the names below are imported (with torch) on first access:

- :class:`~cellssl.models.vit.ViTConfig`, :func:`~cellssl.models.vit.build_vit`,
  :class:`~cellssl.models.vit.VisionTransformer`
- :class:`~cellssl.models.resnet.ResNetConfig`, :func:`~cellssl.models.resnet.build_resnet`
- :func:`~cellssl.models.attention.attention`, :func:`~cellssl.models.attention.attention_probs`,
  :func:`~cellssl.models.attention.available_backends`
- :func:`~cellssl.models.checkpoint.load_backbone_weights`,
  :func:`~cellssl.models.checkpoint.save_state_dict_atomic`
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ViTConfig": "vit",
    "VisionTransformer": "vit",
    "build_vit": "vit",
    "ARCHS": "vit",
    "ResNetConfig": "resnet",
    "build_resnet": "resnet",
    "attention": "attention",
    "attention_probs": "attention",
    "available_backends": "attention",
    "AttentionBackendError": "attention",
    "load_backbone_weights": "checkpoint",
    "save_state_dict_atomic": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cellssl.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cellssl.models.{module}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
