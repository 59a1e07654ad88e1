"""The ``normalize`` parameters (:class:`NormalizeConfig`), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

NORMALIZE_MODES = ("per_image", "dataset", "scale", "none")


@dataclass
class NormalizeConfig:
    """Which normalisation to apply.

    :ivar mode: one of ``per_image``, ``dataset``, ``scale``, ``none``.
    :ivar eps: added to the std in the denominator.
    :ivar stats_path: JSON written by :meth:`ChannelStats.save`; used by ``dataset`` mode when no
        stats object is passed to :func:`build_normalizer`.
    """

    mode: str = "per_image"
    eps: float = 1e-7
    stats_path: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize.mode must be one of {list(NORMALIZE_MODES)}, got {self.mode!r}")
        if not self.eps >= 0:
            raise ValueError(f"normalize.eps must be >= 0, got {self.eps}")

