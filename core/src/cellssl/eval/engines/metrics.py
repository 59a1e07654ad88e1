"""Classification metrics on top of scikit-learn, returned as plain JSON-serialisable dicts.

Conventions:

- ``mean_per_class_multilabel_f1`` and ``mean_per_class_multiclass_f1`` are computed as the DINOv2 /
  Cell-DINO evaluations compute them with the torchmetrics version they pin (0.10.3):
  ``MultilabelF1Score(num_labels=L, average="macro")`` / ``MulticlassF1Score(num_classes=C,
  average="macro")`` are the plain mean of the per-label (per-class) F1 over **all** ``L`` labels (``C``
  classes) of the fixed label set, where a label with no true positive, no false positive and no false
  negative (never true, never predicted) scores F1 = 0 and still counts in the mean (torchmetrics'
  ``_safe_divide`` turns 0/0 into 0, and version 0.10.3 weighs every label 1 in the macro mean).
  Multi-label predictions are ``score > threshold`` (strictly greater, as torchmetrics).
- ``macro_f1`` (multi-class) is scikit-learn's macro F1 over the classes that occur in the ground truth
  or in the predictions (``num_classes_scored`` says how many), the blood-cell fork's figure;
  ``macro_f1`` (multi-label) equals ``mean_per_class_multilabel_f1`` (scikit-learn's multi-label macro
  F1 also averages every column); ``macro_f1_present_labels`` is the multi-label mean over only the labels
  true or predicted at least once. ``zero_division=0`` everywhere.
- Per-class reports are keyed by class name (``str``); values are Python floats / ints.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

HEADLINE_MULTICLASS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "mean_per_class_multiclass_f1")
"""The multi-class metrics evaluators report per setting (keys of :func:`multiclass_metrics`).

``mean_per_class_multiclass_f1`` is the figure the Cell-DINO / Channel-Adaptive DINO evaluations report and
select on for multi-class tasks (``--val-metric-type mean_per_class_multiclass_f1`` for HPA cell lines and
CHAMMI); ``macro_f1`` (classes seen only) is MorphEm's CHAMMI figure. The two differ only when a class of a
fixed class list is absent from both the truth and the predictions."""
HEADLINE_MULTILABEL: tuple[str, ...] = ("mean_per_class_multilabel_f1", "micro_f1", "subset_accuracy")
"""The multi-label metrics evaluators report per setting (keys of :func:`multilabel_metrics`)."""


def _names(count: int, names: Sequence[str] | None, what: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(count)]
    if len(names) != count:
        raise ValueError(f"got {len(names)} {what} names for {count} {what}s")
    return [str(n) for n in names]


def _report(
    precision: np.ndarray, recall: np.ndarray, f1: np.ndarray, support: np.ndarray, names: list[str]
) -> dict[str, dict[str, float | int]]:
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
    }


def multiclass_metrics(
    y_true: Any,
    y_pred: Any,
    class_names: Sequence[str] | None = None,
    per_class: bool = True,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 and a per-class report for single-label predictions.

    :param y_true: ``(n,)`` true class indices ``0..C-1`` (or any hashable labels when
        ``class_names`` is ``None``).
    :param y_pred: ``(n,)`` predicted classes, same encoding.
    :param class_names: ``C`` names; index ``i`` names class ``i``. Without it, labels are named
        ``str(label)``.
    :param per_class: include ``per_class``: name -> precision, recall, f1, support.
    :return: ``{"task": "multiclass", "n", "accuracy", "balanced_accuracy", "macro_f1",
        "mean_per_class_multiclass_f1", "num_classes_scored", "num_classes", "per_class"?}``. Balanced
        accuracy is the mean recall over the classes present in ``y_true``.
        ``mean_per_class_multiclass_f1`` averages over all ``len(class_names)`` classes (absent ones
        score 0, see the module docstring); without ``class_names``, over the labels seen.
    :raises ValueError: on empty or mismatched inputs, or class indices outside ``class_names``.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.shape != y_true.shape:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.size == 0:
        raise ValueError("cannot compute metrics on zero samples")
    labels = np.unique(np.concatenate([y_true, y_pred]))
    if class_names is not None:
        integers = np.issubdtype(labels.dtype, np.integer)
        if not integers or labels.min() < 0 or labels.max() >= len(class_names):
            raise ValueError(
                f"with {len(class_names)} class names, labels must be integers in [0, {len(class_names) - 1}]"
            )
        names = [str(class_names[int(i)]) for i in labels]
    else:
        names = [str(v) for v in labels]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # y_pred classes absent from y_true
        balanced = balanced_accuracy_score(y_true, y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    every = np.arange(len(class_names)) if class_names is not None else labels
    all_f1 = precision_recall_fscore_support(y_true, y_pred, labels=every, zero_division=0)[2]
    result: dict[str, Any] = {
        "task": "multiclass",
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "macro_f1": float(np.mean(f1)),
        "mean_per_class_multiclass_f1": float(np.mean(all_f1)),
        "num_classes_scored": len(labels),
        "num_classes": len(every),
    }
    if per_class:
        result["per_class"] = _report(precision, recall, f1, support, names)
    return result


def multilabel_metrics(
    y_true: Any,
    y_score: Any,
    label_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    per_label: bool = True,
) -> dict[str, Any]:
    """Macro / micro F1, subset accuracy and a per-label report for multi-label predictions.

    :param y_true: ``(n, L)`` 0/1 (or bool) indicator matrix.
    :param y_score: ``(n, L)`` scores (probabilities, vote fractions) or 0/1 predictions; label ``l``
        is predicted for a row when ``score > threshold`` (torchmetrics' rule).
    :param label_names: ``L`` names (default ``"0"..``).
    :param threshold: decision threshold, 0.5 by default.
    :param per_label: include ``per_label``: name -> precision, recall, f1, support.
    :return: ``{"task": "multilabel", "n", "threshold", "mean_per_class_multilabel_f1", "macro_f1" (the
        same value), "macro_f1_present_labels", "micro_f1", "subset_accuracy", "num_labels",
        "num_labels_scored", "per_label"?}``. ``mean_per_class_multilabel_f1`` is the mean over all ``L``
        labels (see the module docstring); ``macro_f1_present_labels`` the mean over the
        ``num_labels_scored`` labels true or predicted at least once; micro F1 pools every label.
    :raises ValueError: on empty or mismatched inputs, or ``y_true`` values other than 0/1.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    if y_true.ndim != 2 or y_score.shape != y_true.shape:
        raise ValueError(
            f"y_true and y_score must be (n, L) of equal shape, got {y_true.shape} and {y_score.shape}"
        )
    if y_true.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("y_true of a multi-label task must hold only 0/1 (or bool) values")
    truth = y_true.astype(np.int8)
    pred = (y_score > threshold).astype(np.int8)
    names = _names(truth.shape[1], label_names, "label")
    scored = np.flatnonzero(truth.any(axis=0) | pred.any(axis=0))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, pred, labels=np.arange(truth.shape[1]), zero_division=0
    )
    macro = float(np.mean(f1)) if f1.size else 0.0
    result: dict[str, Any] = {
        "task": "multilabel",
        "n": int(truth.shape[0]),
        "threshold": float(threshold),
        "mean_per_class_multilabel_f1": macro,
        "macro_f1": macro,
        "macro_f1_present_labels": float(np.mean(f1[scored])) if scored.size else 0.0,
        "micro_f1": float(f1_score(truth, pred, average="micro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(truth, pred)),
        "num_labels": int(truth.shape[1]),
        "num_labels_scored": int(scored.size),
    }
    if per_label:
        result["per_label"] = _report(precision, recall, f1, support, names)
    return result
