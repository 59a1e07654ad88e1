"""The CHAMMI evaluation protocol on one subset's embeddings (no model involved).

For a subset with metadata ``meta`` (``enriched_meta.csv`` rows) and embeddings ``x`` (row-aligned):

- classes: every distinct ``Label`` of the subset, numbered in order of first appearance in the metadata
  (as MorphEm encodes them: it matters for the seeded ``sgd`` classifier, whose one-vs-rest problems draw
  their seeds in class order); the classifier is fitted on the rows whose ``train_test_split`` is ``Train``;
- task ``T``: its rows are those whose boolean column ``T`` is true (rows of several tasks are scored in
  each); when the column is absent, those whose ``train_test_split`` equals ``T``;
- the novel-class task (HPA ``Task_three``, CP ``Task_four``) is scored leave-one-group-out: for every
  distinct value ``g`` of the group column among the task's rows, the classifier is fitted on the Train
  rows plus the task's rows outside ``g`` and predicts the rows of ``g``; the predictions of all groups
  are pooled;
- score: macro F1 over the classes present in the task's ground truth (``sklearn.metrics.f1_score`` with
  ``labels = unique(truth)``, ``zero_division=0``), and accuracy.

Classifiers are callables ``fit_predict(train_x, train_y, test_x, num_classes) -> predicted classes``:
:func:`one_nn` (faiss, exact), :func:`linear_probe` (``cellssl.eval.engines.linear_probe``) and :func:`sgd_classifier`
(MorphEm's ``SGDClassifier(alpha=0.001, max_iter=100)``, seeded).

This is MorphEm's ``evaluation.evaluate`` (broadinstitute/MorphEm, ``morphem/evaluation.py``): same rows,
same leave-one-group-out, same ``f1_score(truth, pred, labels=unique(truth), average="macro")``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cellssl.api import DataError, parse_flags
from cellssl_chammi.subsets import LABEL_COLUMN, SPLIT_COLUMN, TRAIN, Subset

logger = logging.getLogger(__name__)

Classifier = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class TaskScore:
    """The score of one task.

    :ivar task: ``Task_one`` ... :ivar macro_f1: macro F1 over the classes in the ground truth.
    :ivar accuracy: fraction of correct predictions. :ivar test_rows: rows scored.
    :ivar train_rows: rows the classifier was fitted on (for leave-one-group-out: the mean over groups).
    :ivar classes_scored: number of classes in the ground truth.
    :ivar leave_one_group_out: whether the task was scored leave-one-group-out.
    :ivar groups: the groups (leave-one-group-out only), in scoring order.
    :ivar per_class: class name -> F1 (classes in the ground truth).
    """

    task: str
    macro_f1: float
    accuracy: float
    test_rows: int
    train_rows: float
    classes_scored: int
    leave_one_group_out: bool = False
    groups: list[str] = field(default_factory=list)
    per_class: dict[str, float] = field(default_factory=dict)


def score_predictions(truth: np.ndarray, predicted: np.ndarray, class_names: list[str]
                      ) -> tuple[float, float, dict[str, float]]:
    """``(macro F1 over the classes in truth, accuracy, per-class F1)``."""
    from sklearn.metrics import f1_score

    present = np.unique(truth)
    per_class = f1_score(truth, predicted, labels=present, average=None, zero_division=0)
    macro = float(np.mean(per_class)) if present.size else 0.0
    accuracy = float(np.mean(truth == predicted)) if truth.size else 0.0
    return macro, accuracy, {class_names[int(c)]: float(f) for c, f in zip(present, per_class)}


def task_mask(metadata: pd.DataFrame, task: str, source: str = "the metadata") -> np.ndarray:
    """Rows of ``task``: its boolean column, else ``train_test_split == task``.

    :raises DataError: when neither exists, or the column holds values other than booleans.
    """
    if task in metadata.columns:
        return parse_flags(metadata[task], f"task column '{task}' of {source}")
    if SPLIT_COLUMN in metadata.columns and (metadata[SPLIT_COLUMN] == task).any():
        return (metadata[SPLIT_COLUMN] == task).to_numpy()
    raise DataError(f"{source} has no column '{task}' and no row with {SPLIT_COLUMN} == '{task}'")


def encode_labels(metadata: pd.DataFrame, source: str = "the metadata") -> tuple[np.ndarray, list[str]]:
    """Class indices of the ``Label`` column and the class names, in order of first appearance (MorphEm's).

    :raises DataError: when the column is missing or has empty values.
    """
    if LABEL_COLUMN not in metadata.columns:
        raise DataError(f"{source} has no '{LABEL_COLUMN}' column")
    labels = metadata[LABEL_COLUMN]
    if labels.isna().any():
        raise DataError(f"{source}: {int(labels.isna().sum())} rows have an empty '{LABEL_COLUMN}'")
    codes, names = pd.factorize(labels.astype(str), sort=False)
    return codes.astype(np.int64), [str(n) for n in names]


def evaluate_subset(
    embeddings: np.ndarray,
    metadata: pd.DataFrame,
    subset: Subset,
    classifier: Classifier,
    *,
    leave_out_task: str | None,
    group_column: str | None,
    source: str = "the metadata",
) -> dict[str, TaskScore]:
    """Score every task of ``subset`` (see the module docstring).

    :param embeddings: ``(N, D)`` rows aligned with ``metadata``.
    :param leave_out_task: the task scored leave-one-group-out (``None``: none).
    :param group_column: the metadata column of that task's groups.
    :return: task -> :class:`TaskScore`, in the subset's task order.
    :raises DataError: when the metadata lacks Train rows, a task, its rows or the group column.
    """
    if len(embeddings) != len(metadata):
        raise DataError(f"{len(embeddings)} embeddings for {len(metadata)} metadata rows of CHAMMI {subset.title}")
    y, class_names = encode_labels(metadata, source)
    num_classes = len(class_names)
    train = (metadata[SPLIT_COLUMN] == TRAIN).to_numpy() if SPLIT_COLUMN in metadata.columns else None
    if train is None or not train.any():
        raise DataError(f"{source} has no row with {SPLIT_COLUMN} == '{TRAIN}': nothing to fit the classifier on")
    train_idx = np.flatnonzero(train)
    scores: dict[str, TaskScore] = {}
    for task in subset.tasks:
        rows = task_mask(metadata, task, source)
        if not rows.any():
            raise DataError(f"{source}: task {task} of CHAMMI {subset.title} has no rows")
        if task == leave_out_task:
            scores[task] = _leave_one_group_out(embeddings, y, class_names, train_idx, rows, metadata, task,
                                                group_column, classifier, source)
            continue
        test_idx = np.flatnonzero(rows)
        predicted = classifier(embeddings[train_idx], y[train_idx], embeddings[test_idx], num_classes)
        macro, accuracy, per_class = score_predictions(y[test_idx], predicted, class_names)
        scores[task] = TaskScore(task, macro, accuracy, int(test_idx.size), float(train_idx.size),
                                 len(per_class), per_class=per_class)
        logger.info("CHAMMI %s %s: macro F1 %.4f on %d rows", subset.title, task, macro, test_idx.size)
    return scores


def _leave_one_group_out(
    x: np.ndarray, y: np.ndarray, class_names: list[str], train_idx: np.ndarray, rows: np.ndarray,
    metadata: pd.DataFrame, task: str, group_column: str | None, classifier: Classifier, source: str,
) -> TaskScore:
    if not group_column or group_column not in metadata.columns:
        raise DataError(f"{source} has no group column '{group_column}' for the leave-one-group-out task {task}; "
                        "set the evaluator's group_columns")
    groups = metadata[group_column]
    if groups[rows].isna().any():
        raise DataError(f"{source}: {int(groups[rows].isna().sum())} rows of {task} have no '{group_column}' value")
    group_text = groups.astype(str).to_numpy()
    names = sorted(set(group_text[rows]))
    if len(names) < 2:
        logger.warning("%s: task %s has a single '%s' group; it is scored with the Train rows only",
                       source, task, group_column)
    truth, predicted, fitted = [], [], []
    for name in names:
        held = np.flatnonzero(rows & (group_text == name))
        others = np.flatnonzero(rows & (group_text != name))
        fit = np.concatenate([train_idx, others])
        predicted.append(classifier(x[fit], y[fit], x[held], len(class_names)))
        truth.append(y[held])
        fitted.append(fit.size)
    all_truth, all_predicted = np.concatenate(truth), np.concatenate(predicted)
    macro, accuracy, per_class = score_predictions(all_truth, all_predicted, class_names)
    return TaskScore(task, macro, accuracy, int(all_truth.size), float(np.mean(fitted)), len(per_class),
                     leave_one_group_out=True, groups=names, per_class=per_class)


def one_nn(metric: str = "l2", num_threads: int | None = None) -> Classifier:
    """The benchmark's 1-nearest-neighbour classifier (exact faiss search, ``l2`` or ``cosine``)."""
    from cellssl.api import knn_classify

    def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int) -> np.ndarray:
        prediction = knn_classify(train_x, train_y, test_x, ks=[1], metric=metric, voting="majority",
                                  num_classes=num_classes, num_threads=num_threads)[1]
        return prediction.labels

    return fit_predict


def sgd_classifier(alpha: float = 0.001, max_iter: int = 100, seed: int = 0) -> Classifier:
    """MorphEm's ``sgd`` classifier: ``SGDClassifier(alpha=alpha, max_iter=max_iter, random_state=seed)`` fitted on
    the raw embeddings (MorphEm passes no ``random_state``; cellssl seeds each fit). Convergence warnings of
    scikit-learn (``max_iter`` reached) are logged once per fit at debug level, not raised."""

    def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int) -> np.ndarray:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import SGDClassifier

        model = SGDClassifier(alpha=alpha, max_iter=max_iter, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(train_x, train_y)
        if caught:
            logger.debug("sgd (seed %d): %s", seed, caught[0].message)
        return model.predict(test_x).astype(np.int64)

    return fit_predict


def linear_probe(settings: Any, device: str = "cpu") -> Classifier:
    """A linear probe per fit (``cellssl.eval.engines.linear_probe.fit_linear_probe``), head chosen on a validation
    split carved from the training rows.

    :param settings: a :class:`~cellssl_chammi.config.ChammiLinearConfig`.
    """

    def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int) -> np.ndarray:
        from cellssl.api import DEFAULT_LEARNING_RATES, DEFAULT_WEIGHT_DECAYS, fit_linear_probe

        probe = fit_linear_probe(
            train_x, train_y, multilabel=False, val_fraction=settings.val_fraction,
            learning_rates=list(settings.learning_rates or DEFAULT_LEARNING_RATES),
            weight_decays=list(settings.weight_decays or DEFAULT_WEIGHT_DECAYS),
            epochs=settings.epochs, batch_size=settings.batch_size, class_balance=settings.class_balance,
            seed=settings.seed, device=device, num_classes=num_classes,
        )
        return probe.predict(test_x)

    return fit_predict
