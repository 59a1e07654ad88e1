"""The linear probe's option names and default grid, importable without torch (the probe is
:mod:`cellssl.eval.engines.linear_probe`; the ``linear`` evaluator's config validates against these)."""

from __future__ import annotations

DEFAULT_LEARNING_RATES: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)
MULTICLASS_SELECT = ("macro_f1", "accuracy", "balanced_accuracy")
MULTILABEL_SELECT = ("mean_per_class_multilabel_f1", "micro_f1")
PRECISIONS = ("fp32", "bf16")
