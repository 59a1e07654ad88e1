"""What the classifier evaluators (``knn``, ``linear``, ``cross_validation``) share.

- :class:`LabelSettings`: the label keys of their YAML blocks, and :func:`resolve_labels` which reads the
  labels from the embedding metadata (falling back to the dataset's label columns in the context).
- :class:`FoldClassifier`: the protocol an evaluator implements to be run inside ``cross_validation``:
  fit on the training rows only, then predict the held-out rows.
- :func:`classification_scores`: the flat scores every fold and split is reported with (macro or
  support-weighted F1, recall and precision, balanced accuracy, accuracy; multi-label: macro/micro F1 at 0.5).
- :func:`mean_std` / :func:`format_mean_std`: aggregation over folds or few-shot draws. The standard
  deviation is the population one by default (``ddof=0``, numpy's default, 0 for a single value); ``ddof=1``
  gives the sample one (pandas' ``DataFrame.std``, which the blood-cell fork prints).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from cellssl.eval.base import EvalContext, EvalLabels, labels_from_metadata

AVERAGES = ("macro", "weighted")

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class LabelSettings:
    """Label keys shared by classifier evaluators.

    :ivar label_column: metadata column of the labels (default: the dataset's label columns).
    :ivar label_separator: separator of a multi-label ``label_column`` (e.g. ``"|"``).
    :ivar label_columns: boolean columns, one per label (multi-label); overrides ``label_column``.
    :ivar skip_unlabelled: skip multi-label rows with no label set (``false``: score them as all-zero
        label vectors, as the Cell-DINO HPAone evaluation does). Recorded in the result's ``labels`` block.
    :ivar classes: a fixed class (label) list in index order, e.g. a published label set: class ``i`` of
        the result is ``classes[i]`` whatever the data holds, multi-label vectors have ``len(classes)``
        entries, and classes absent from the data still count in the fixed-set metrics
        (``mean_per_class_*_f1``). Empty: the classes present, sorted by name (or the ``label_columns``
        order). A label outside the list is an error.
    """

    label_column: str = ""
    label_separator: str | None = None
    label_columns: list[str] = field(default_factory=list)
    skip_unlabelled: bool = True
    classes: list[str] = field(default_factory=list)


def resolve_labels(settings: LabelSettings, metadata: pd.DataFrame, context: EvalContext, key: str) -> EvalLabels:
    """Labels of ``metadata`` from ``settings``, else from the context's (dataset's) label columns; with
    ``settings.classes``, re-indexed to that fixed list (:func:`fix_classes`).

    :raises cellssl.errors.ConfigError: naming ``<key>.label_column`` when no label column is known, or
        ``<key>.classes`` when it lists a class twice.
    :raises cellssl.errors.DataError: for a missing column, unusable labels, or a label outside ``classes``.
    """
    if settings.label_columns or settings.label_column:
        column, separator, columns = settings.label_column, settings.label_separator, settings.label_columns
        if separator is None and list(context.label_columns) == [column]:
            separator = context.label_separator  # the dataset's own multi-label column
    elif len(context.label_columns) > 1:
        column, separator, columns = "", None, list(context.label_columns)
    else:
        column = context.label_columns[0] if context.label_columns else ""
        separator, columns = context.label_separator, []
    labels = labels_from_metadata(metadata, column, separator, columns,
                                  skip_unlabelled=settings.skip_unlabelled, key=key)
    return fix_classes(labels, settings.classes, key) if settings.classes else labels


def fix_classes(labels: EvalLabels, classes: Sequence[str], key: str) -> EvalLabels:
    """``labels`` re-indexed to the fixed list ``classes``: class / label ``i`` becomes ``classes[i]``.

    Multi-class indices are mapped by name; multi-label columns are moved to their position in
    ``classes`` (labels of the list that the data never holds are all-zero columns).

    :raises ConfigError: naming ``<key>.classes`` when a name is listed twice.
    :raises DataError: naming the labels of the data that ``classes`` lacks.
    """
    from cellssl.errors import ConfigError, DataError

    fixed = [str(c) for c in classes]
    if len(set(fixed)) != len(fixed):
        twice = sorted({c for c in fixed if fixed.count(c) > 1})
        raise ConfigError(f"{key}.classes", f"lists {twice} more than once; each class has one index")
    position = {name: i for i, name in enumerate(fixed)}
    unknown = [n for n in labels.names if n not in position]
    if labels.multilabel:  # a label of the data that is never set cannot be wrong
        used = labels.values.astype(bool).any(axis=0)
        unknown = [n for n, on in zip(labels.names, used, strict=True) if on and n not in position]
    if unknown:
        raise DataError(f"labels {unknown[:5]} of the data are not in {key}.classes ({len(fixed)} classes: "
                        f"{fixed[:3]}...); add them to the list, or fix the label column")
    if labels.multilabel:
        values = np.zeros((labels.values.shape[0], len(fixed)), dtype=labels.values.dtype)
        for column, name in enumerate(labels.names):
            if name in position:
                values[:, position[name]] = labels.values[:, column]
    else:
        mapping = np.array([position[n] for n in labels.names], dtype=np.int64)
        values = mapping[labels.values] if labels.values.size else labels.values
    return dataclasses.replace(labels, values=values, names=fixed)


def labels_summary(labels: EvalLabels, rows_total: int, settings: LabelSettings | None = None) -> dict[str, Any]:
    """The ``labels`` block of a result: source columns, names, rows used and skipped, and (with ``settings``)
    how rows without any label were treated (``unlabelled_rows``: ``skipped`` / ``kept``, and how many of the
    rows used are all-zero label vectors) and whether the class list is fixed."""
    summary: dict[str, Any] = {
        "source": labels.source,
        "names": labels.names,
        "rows_total": int(rows_total),
        "rows_used": int(labels.valid.sum()),
        "rows_missing_label": labels.missing,
        "rows_without_any_label": labels.unlabelled,
    }
    if settings is not None:
        summary["fixed_classes"] = bool(settings.classes)
        if labels.multilabel:
            summary["unlabelled_rows"] = "skipped" if settings.skip_unlabelled else "kept"
            summary["rows_used_without_any_label"] = int((labels.values.sum(axis=1) == 0).sum())
    return summary


@dataclass
class FoldOutput:
    """What a :class:`FoldClassifier` returns for one train/test split.

    :ivar predictions: row name (``"1-NN"``, ``"linear probe"``) -> ``(n_test,)`` class indices, or
        ``(n_test, L)`` 0/1 for multi-label.
    :ivar info: JSON-serialisable details (e.g. the chosen linear head).
    """

    predictions: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class FoldClassifier(Protocol):
    """An evaluator that can be cross-validated: it fits on training rows, then predicts test rows."""

    def fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        test_x: np.ndarray,
        *,
        labels: EvalLabels,
        train_metadata: pd.DataFrame,
    ) -> FoldOutput:
        """Fit on ``(train_x, train_y)`` (model selection uses these rows only), then predict ``test_x``.

        :param labels: the label set (names, multi-label flag); its ``values`` must not be read.
        :param train_metadata: metadata rows of ``train_x`` (e.g. for a grouped validation split).
        """


def row_key(name: str) -> str:
    """Metric-name prefix of a table row name: ``"20-NN"`` -> ``"20_nn"``, ``"linear probe"`` -> ``"linear_probe"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "row"


def classification_scores(y_true: Any, y_pred: Any, multilabel: bool, average: str = "macro") -> dict[str, float]:
    """Flat scores of predictions against the truth.

    Multi-class (``(n,)`` indices): ``f1``, ``recall``, ``precision`` (``average="macro"``: the plain mean
    over the classes present in the truth or the predictions; ``"weighted"``: the same per-class scores
    weighted by their support in the truth, scikit-learn's ``average="weighted"``, so ``recall`` equals
    ``accuracy``; ``zero_division=0``), ``balanced_accuracy`` (mean recall over the classes of the truth)
    and ``accuracy``. Multi-label (``(n, L)`` 0/1): ``f1`` (macro: over all ``L`` labels, a label never
    true nor predicted scoring 0, equal to ``mean_per_class_multilabel_f1``; weighted: by label support),
    ``recall``, ``precision`` (same averaging), ``micro_f1`` and ``subset_accuracy``.

    :raises ValueError: on empty or mismatched inputs, or an unknown ``average``.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    truth, pred = np.asarray(y_true), np.asarray(y_pred)
    if truth.shape != pred.shape or truth.shape[0] == 0:
        raise ValueError(f"truth and predictions must be non-empty and of equal shape, got {truth.shape}, {pred.shape}")
    if multilabel:
        truth, pred = truth.astype(np.int8), pred.astype(np.int8)
        every = np.arange(truth.shape[1])
    else:
        every = np.unique(np.concatenate([truth, pred]))
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, labels=every, zero_division=0)
    weights = support if average == "weighted" else np.ones_like(support)
    if weights.sum() == 0:  # weighted, and no label is ever true: scikit-learn's zero_division value
        weights = np.ones_like(support)
        precision = recall = f1 = np.zeros_like(f1)

    def mean(values: np.ndarray) -> float:
        return float(np.average(values, weights=weights))

    if multilabel:
        return {
            "f1": mean(f1),
            "recall": mean(recall),
            "precision": mean(precision),
            "micro_f1": float(f1_score(truth, pred, average="micro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(truth, pred)),
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # predicted classes absent from the truth
        balanced = balanced_accuracy_score(truth, pred)
    return {
        "f1": mean(f1),
        "recall": mean(recall),
        "precision": mean(precision),
        "balanced_accuracy": float(balanced),
        "accuracy": float(accuracy_score(truth, pred)),
    }


def mean_std(values: Sequence[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of ``values``: population (``ddof=0``) or sample (``ddof=1``).

    The sample standard deviation of a single value is reported as 0 (not NaN).

    :raises ValueError: for an empty sequence or a ``ddof`` other than 0 and 1.
    """
    if len(values) == 0:
        raise ValueError("mean_std needs at least one value")
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 (population) or 1 (sample), got {ddof}")
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=ddof)) if array.size > ddof else 0.0
    return float(array.mean()), std


def format_mean_std(mean: float, std: float, percent: bool = False) -> str:
    """``"0.8660 ± 0.0070"``, or with ``percent`` ``"86.6 ± 0.7"`` (the blood-cell seed's format)."""
    if percent:
        return f"{100 * mean:.1f} ± {100 * std:.1f}"
    return f"{mean:.4f} ± {std:.4f}"


def split_summary(mode: str, column: str | None, metadata: pd.DataFrame, train_idx: np.ndarray,
                  test_idx: np.ndarray) -> dict[str, Any]:
    """The ``split`` block of a result: ``mode``, ``train_rows``, ``test_rows`` (and group counts for
    ``group`` splits)."""
    info: dict[str, Any] = {"mode": mode, "train_rows": int(train_idx.size), "test_rows": int(test_idx.size)}
    if mode == "group" and column:
        groups = metadata[column].astype(str)
        info["train_groups"] = int(groups.iloc[train_idx].nunique())
        info["test_groups"] = int(groups.iloc[test_idx].nunique())
    return info
