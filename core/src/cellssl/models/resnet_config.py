"""The ResNet backbones' parameters (:class:`ResNetConfig`), importable without torch or torchvision; the
networks are built by :func:`cellssl.models.resnet.build_resnet`."""

from __future__ import annotations

from dataclasses import dataclass

RESNET_ARCHS: dict[str, str] = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50"}
STEMS: tuple[str, ...] = ("imagenet", "small")


@dataclass
class ResNetConfig:
    """Parameters of a ResNet backbone.

    :ivar arch: ``resnet18`` / ``resnet34`` (embed_dim 512) or ``resnet50`` (2048).
    :ivar stem: ``imagenet`` keeps the 7x7 stride-2 convolution and the max-pool (total stride 32);
        ``small`` uses a 3x3 stride-1 convolution and no max-pool (total stride 8), for small crops.
    :ivar zero_init_residual: zero the last BatchNorm of each residual branch (torchvision option).
    :raises ValueError: in ``__post_init__`` for an unknown arch or stem.
    """

    arch: str = "resnet18"
    stem: str = "imagenet"
    zero_init_residual: bool = False

    def __post_init__(self) -> None:
        if self.arch not in RESNET_ARCHS:
            raise ValueError(f"arch: unknown ResNet arch {self.arch!r}; choose one of {sorted(RESNET_ARCHS)}")
        if self.stem not in STEMS:
            raise ValueError(f"stem: unknown stem {self.stem!r}; choose one of {list(STEMS)}")
