"""The ``dino`` objective's parameters (:class:`DINOConfig`, :class:`HeadConfig`), importable without torch;
the objective itself is :class:`cellssl.objectives.dino.DINOObjective`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cellssl.data.multicrop_config import MultiCropConfig

if TYPE_CHECKING:
    from cellssl.objectives.heads import DINOHead


CENTERINGS = ("ema", "sinkhorn_knopp")


@dataclass
class HeadConfig:
    """The projection head (``objective.head``): MLP -> L2 bottleneck -> ``out_dim`` prototypes."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    use_bn: bool = False
    norm_last_layer: bool = True

    def __post_init__(self) -> None:
        if min(self.out_dim, self.hidden_dim, self.bottleneck_dim, self.nlayers) < 1:
            raise ValueError("head.out_dim, hidden_dim, bottleneck_dim and nlayers must be >= 1")

    def build(self, in_dim: int) -> DINOHead:
        """The head for inputs of size ``in_dim``."""
        from cellssl.objectives.heads import DINOHead

        return DINOHead(in_dim, self.out_dim, self.hidden_dim, self.bottleneck_dim, self.nlayers,
                        self.use_bn, self.norm_last_layer)


@dataclass
class DINOConfig:
    """``objective: {name: dino, ...}``.

    :ivar multicrop: views (sizes, counts, crop scales, per-view augmentations). Views are normalised
        with the run's top-level ``normalize:`` section (shared with embedding); a ``normalize`` block here
        must be left out or equal that section.
    :ivar head: projection head.
    :ivar student_temp: student softmax temperature.
    :ivar centering: ``ema`` (centre + sharpen, DINO) or ``sinkhorn_knopp`` (SwAV / DINOv2).
    :ivar center_momentum: EMA momentum of the centre (``ema``).
    :ivar sinkhorn_iterations: Sinkhorn-Knopp rounds.
    """

    multicrop: MultiCropConfig = field(default_factory=MultiCropConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    student_temp: float = 0.1
    centering: str = "ema"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3

    def __post_init__(self) -> None:
        if self.centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {self.centering!r}")
        if self.student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {self.student_temp}")
        if not 0.0 <= self.center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {self.center_momentum}")
        if self.sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {self.sinkhorn_iterations}")
