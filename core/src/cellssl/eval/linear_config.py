"""The ``linear`` evaluator's parameters (:class:`LinearEvaluatorConfig`), importable without torch.

The probe is :mod:`cellssl.eval.engines.linear_probe` (its option names: :mod:`cellssl.eval.engines.linear_options`),
the evaluator :class:`cellssl.eval.linear.LinearEvaluator`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cellssl.eval.classifier import LabelSettings
from cellssl.eval.engines.linear_options import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_WEIGHT_DECAYS,
    MULTICLASS_SELECT,
    MULTILABEL_SELECT,
    PRECISIONS,
)
from cellssl.eval.engines.splits import SplitConfig

__all__ = ["DEFAULT_LEARNING_RATES", "DEFAULT_WEIGHT_DECAYS", "DEVICES", "MULTICLASS_SELECT", "MULTILABEL_SELECT",
           "PRECISIONS", "LinearEvaluatorConfig"]

DEVICES = ("cpu", "cuda", "auto")


@dataclass
class LinearEvaluatorConfig(LabelSettings):
    """Parameters of the ``linear`` evaluator (label keys: see :class:`~cellssl.eval.classifier.LabelSettings`).

    :ivar split: train / test split of the labelled rows.
    :ivar val_split: split of the train rows into fit / validation rows (its ``test`` side validates);
        ``None``: a stratified ``val_fraction`` of the train rows.
    :ivar val_fraction: fraction of the train rows used for validation when ``val_split`` is ``None``.
    :ivar learning_rates: the grid's learning rates (features are standardised to norm ~1).
    :ivar weight_decays: the grid's weight decays.
    :ivar epochs: passes over the fit rows (at least ``min_steps`` steps).
    :ivar batch_size: rows per SGD step.
    :ivar min_steps: minimum number of SGD steps (small data sets get more passes).
    :ivar class_balance: weight the loss by inverse class frequency (multi-label: positive weights).
    :ivar select_metric: validation metric; empty: ``macro_f1`` (multi-class) or
        ``mean_per_class_multilabel_f1`` (multi-label).
    :ivar refit: retrain the chosen head on fit + validation rows before scoring the test rows.
    :ivar per_class_report: include per-class precision / recall / F1 / support.
    :ivar seed: seed of the validation split and of the batch order.
    :ivar device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
    :ivar precision: ``fp32``, or ``bf16`` matrix products while training (several times faster on CPUs
        with AMX / AVX512-BF16 and on GPUs, slower on CPUs without bfloat16 support).
    """

    split: SplitConfig = field(default_factory=SplitConfig)
    val_split: SplitConfig | None = None
    val_fraction: float = 0.2
    learning_rates: list[float] = field(default_factory=lambda: list(DEFAULT_LEARNING_RATES))
    weight_decays: list[float] = field(default_factory=lambda: list(DEFAULT_WEIGHT_DECAYS))
    epochs: int = 10
    batch_size: int = 256
    min_steps: int = 300
    class_balance: bool = False
    select_metric: str = ""
    refit: bool = True
    per_class_report: bool = True
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if isinstance(self.split, dict):  # built from a plain mapping rather than by omegaconf
            self.split = SplitConfig(**self.split)
        if isinstance(self.val_split, dict):
            self.val_split = SplitConfig(**self.val_split)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ValueError(f"learning_rates must be a non-empty list of values > 0, got {self.learning_rates}")
        if not self.weight_decays or min(self.weight_decays) < 0:
            raise ValueError(f"weight_decays must be a non-empty list of values >= 0, got {self.weight_decays}")
        if self.epochs < 1 or self.batch_size < 1 or self.min_steps < 0:
            raise ValueError("epochs and batch_size must be >= 1 and min_steps >= 0")
        if self.select_metric and self.select_metric not in MULTICLASS_SELECT + MULTILABEL_SELECT:
            raise ValueError(f"select_metric must be empty or one of {MULTICLASS_SELECT + MULTILABEL_SELECT}, "
                             f"got {self.select_metric!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
