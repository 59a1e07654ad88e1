"""The ``dinov2`` objective's parameters (:class:`DINOv2Config`, :class:`IBOTConfig`), importable without
torch; the objective itself is :class:`cellssl.objectives.dinov2.DINOv2Objective`."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellssl.objectives.dino_config import DINOConfig, HeadConfig


@dataclass
class IBOTConfig:
    """``objective.ibot``: the masked-patch term.

    :ivar enabled: compute the iBOT term (needs a ViT backbone).
    :ivar weight: its weight in the total loss.
    :ivar separate_head: use its own projection head (``head``) instead of sharing the DINO head.
    :ivar head: the separate patch head (only with ``separate_head``).
    :ivar mask_ratio_min_max: range of the fraction of patches masked in a masked crop.
    :ivar mask_sample_probability: fraction of the global crops that get a mask.
    """

    enabled: bool = True
    weight: float = 1.0
    separate_head: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    mask_ratio_min_max: list[float] = field(default_factory=lambda: [0.1, 0.5])
    mask_sample_probability: float = 0.5

    def __post_init__(self) -> None:
        if len(self.mask_ratio_min_max) != 2 or not 0.0 <= self.mask_ratio_min_max[0] <= self.mask_ratio_min_max[1] \
                <= 1.0:
            raise ValueError(f"ibot.mask_ratio_min_max must be [min, max] with 0 <= min <= max <= 1, "
                             f"got {list(self.mask_ratio_min_max)}")
        if not 0.0 <= self.mask_sample_probability <= 1.0:
            raise ValueError(f"ibot.mask_sample_probability must be in [0, 1], got {self.mask_sample_probability}")
        if self.weight < 0:
            raise ValueError(f"ibot.weight must be >= 0, got {self.weight}")


@dataclass
class DINOv2Config(DINOConfig):
    """``objective: {name: dinov2, ...}``: the fields of ``dino`` plus the weights and the iBOT block."""

    centering: str = "sinkhorn_knopp"
    dino_weight: float = 1.0
    koleo_weight: float = 0.1
    ibot: IBOTConfig = field(default_factory=IBOTConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dino_weight < 0 or self.koleo_weight < 0:
            raise ValueError(f"dino_weight and koleo_weight must be >= 0, got {self.dino_weight}, {self.koleo_weight}")
