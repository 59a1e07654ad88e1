"""The ``attention_maps`` evaluator's parameters (:class:`AttentionMapsConfig`), importable without torch;
the evaluator is :class:`cellssl.eval.attention_maps.AttentionMapsEvaluator`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AttentionMapsConfig:
    """Parameters of the ``attention_maps`` evaluator.

    :ivar num_images: images to draw, spread evenly over the dataset (ignored when ``indices`` is set).
    :ivar indices: dataset rows to draw.
    :ivar include_registers: also draw the attention of each register token.
    :ivar mean_over_heads: add a column with the mean over heads.
    :ivar panel_size: side of one panel, in inches.
    :ivar dpi: resolution of the PNGs.
    """

    num_images: int = 4
    indices: list[int] = field(default_factory=list)
    include_registers: bool = True
    mean_over_heads: bool = True
    panel_size: float = 1.4
    dpi: int = 100

    def __post_init__(self) -> None:
        if self.num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {self.num_images}")
        if any(i < 0 for i in self.indices):
            raise ValueError(f"indices must be >= 0, got {self.indices}")
        if not self.panel_size > 0:
            raise ValueError(f"panel_size must be > 0, got {self.panel_size}")
        if self.dpi < 20:
            raise ValueError(f"dpi must be >= 20, got {self.dpi}")
