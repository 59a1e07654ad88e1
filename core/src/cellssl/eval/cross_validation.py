"""The ``cross_validation`` evaluator: k-fold cross-validation around classifier evaluators.

YAML block::

    eval:
      - name: cross_validation
        label_column: label
        folds: 5
        group_column: null          # e.g. fov_id: whole groups go to one fold (no group in two folds)
        stratify: true              # keep class proportions per fold (single-label tasks)
        seed: 0
        average: macro              # macro | weighted (F1, recall, precision; the blood-cell fork: weighted)
        std_ddof: 0                 # 0: population std over the folds; 1: sample std (the blood-cell fork)
        classifiers:                # any evaluator implementing FoldClassifier; each adds table rows
          - {name: knn, ks: [1, 20]}
          - {name: logistic_regression}
          - {name: linear}

Folds: ``StratifiedKFold`` (single-label, ``stratify``), ``StratifiedGroupKFold`` (with ``group_column``
and ``stratify``), ``GroupKFold`` (with ``group_column`` otherwise) or ``KFold``; all shuffled with
``seed``. In fold ``i`` each classifier is fitted on the other folds only (the linear probe carves its
validation rows, and chooses its head, inside those training folds) and predicts fold ``i``. Every table
row (``1-NN``, ``20-NN``, ``logistic regression``, ``linear probe``) is scored per fold with
:func:`~cellssl.eval.classifier.classification_scores` (``average``: macro or support-weighted F1, recall,
precision) and reported as mean +/- std over the folds (``std_ddof``: population or sample): metrics
``<row>_<score>_mean`` / ``_std``, and a ``table`` in the blood-cell seed's format (percentages: F1,
recall, precision, balanced accuracy). The averaging and the std used are recorded under ``scoring``.
The classifier blocks' own label, ``split`` and ``few_shot`` keys are ignored: the labels and folds are
the cross-validation's (a linear block's ``val_split``, e.g. grouped by field of view, is applied inside
each training fold).

The blood-cell fork's own table (``notebooks/embedding_testing.ipynb``) is, in these terms,
``stratify: false, seed: 24, average: weighted, std_ddof: 1`` with ``knn`` ``{ks: [1, 20], metric: l2,
voting: majority}`` and ``logistic_regression`` ``{multi_class: ovr}`` (``configs/eval/bccd_cv.yaml``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext, EvalLabels, Evaluator, to_jsonable
from cellssl.eval.classifier import (
    AVERAGES,
    FoldClassifier,
    LabelSettings,
    classification_scores,
    format_mean_std,
    labels_summary,
    mean_std,
    resolve_labels,
    row_key,
)

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)

TABLE_COLUMNS = (("f1", "F1 (%)"), ("recall", "recall (%)"), ("precision", "precision (%)"),
                 ("balanced_accuracy", "balanced accuracy (%)"))
MULTILABEL_TABLE_COLUMNS = (("f1", "F1 (%)"), ("recall", "recall (%)"), ("precision", "precision (%)"),
                            ("micro_f1", "micro F1 (%)"))


def _default_classifiers() -> list[dict[str, Any]]:
    return [{"name": "knn", "ks": [1, 20]}, {"name": "linear"}]


@dataclass
class CrossValidationConfig(LabelSettings):
    """Parameters of ``cross_validation`` (label keys: see :class:`~cellssl.eval.classifier.LabelSettings`).

    :ivar folds: number of folds (>= 2).
    :ivar group_column: metadata column whose groups are never split across folds (``None``: rows).
    :ivar stratify: stratify folds by class (single-label tasks).
    :ivar seed: seed of the fold assignment.
    :ivar average: ``macro`` or ``weighted`` (by class support) F1, recall and precision per fold.
    :ivar std_ddof: 0 (population) or 1 (sample) standard deviation over the folds.
    :ivar classifiers: evaluator blocks (``{name: ..., <params>}``) run in every fold.
    """

    folds: int = 5
    group_column: str | None = None
    stratify: bool = True
    seed: int = 0
    average: str = "macro"
    std_ddof: int = 0
    classifiers: list[dict[str, Any]] = field(default_factory=_default_classifiers)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.average not in AVERAGES:
            raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {self.average!r}")
        if self.std_ddof not in (0, 1):
            raise ValueError(f"std_ddof must be 0 (population) or 1 (sample std over the folds), got {self.std_ddof}")
        if not self.classifiers:
            raise ValueError("classifiers must list at least one evaluator block, e.g. [{name: knn, ks: [1]}]")
        from cellssl.config.validate import resolve_entry
        from cellssl.errors import CellsslError

        for position, block in enumerate(self.classifiers):
            if not isinstance(block, dict) or "name" not in block:
                raise ValueError(f"classifiers[{position}] must be a mapping with a 'name' key, got {block!r}")
            try:  # unknown names and bad parameters fail when the config is validated, not after embedding
                resolve_entry(block, "evaluator", f"classifiers[{position}]")
            except CellsslError as exc:
                raise ValueError(str(exc)) from None


def group_values(metadata: pd.DataFrame, column: str, key: str) -> np.ndarray:
    """The groups of grouped folds: ``metadata[column]`` as strings.

    :param key: the evaluator's config key, for messages (``<key>.group_column``).
    :raises DataError: when the column is missing or has missing values.
    """
    if column not in metadata.columns:
        raise DataError(f"group column '{column}' (config key '{key}.group_column') is not in the embedding "
                        f"metadata; available columns: {list(metadata.columns)}")
    values = metadata[column]
    if values.isna().any():
        raise DataError(f"group column '{column}' has {int(values.isna().sum())} missing values; fill them or drop "
                        "those rows")
    return values.astype(str).to_numpy()


def fold_assignment(
    n: int, folds: int, *, labels: np.ndarray | None = None, groups: np.ndarray | None = None, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` pairs ``(train positions, test positions)``; every row is tested exactly once.

    :param labels: ``(n,)`` class indices to stratify by (``None``: no stratification).
    :param groups: ``(n,)`` group ids; a group's rows all land in one test fold.
    :raises DataError: when there are fewer rows (or groups) than folds.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if n < folds:
        raise DataError(f"cannot make {folds} folds from {n} labelled rows; lower `folds`")
    rows = np.arange(n)
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < folds:
            raise DataError(f"cannot make {folds} grouped folds from {n_groups} groups; lower `folds`")
        if labels is not None:
            splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
            splits = splitter.split(rows, labels, groups)
        else:
            splits = GroupKFold(folds, shuffle=True, random_state=seed).split(rows, groups=groups)
    elif labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        if counts.max() < folds:
            raise DataError(f"no class has {folds} rows; stratified {folds}-fold splits are impossible")
        if counts.min() < folds:
            logger.warning("cross-validation: the smallest class has %d rows, fewer than %d folds",
                           int(counts.min()), folds)
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, labels)
    else:
        splits = KFold(folds, shuffle=True, random_state=seed).split(rows)
    return [(np.sort(train), np.sort(test)) for train, test in splits]


class CrossValidationEvaluator(Evaluator):
    """k-fold cross-validation of classifier evaluators (see the module docstring)."""

    name = "cross_validation"

    def __init__(self, config: CrossValidationConfig) -> None:
        self.config = config

    def _classifiers(self) -> list[FoldClassifier]:
        from cellssl.config.validate import build_component

        built = []
        for position, block in enumerate(self.config.classifiers):
            key = f"{self.name}.classifiers[{position}]"
            evaluator = build_component(block, "evaluator", key)
            if not isinstance(evaluator, FoldClassifier):
                raise ConfigError(key, f"evaluator '{block['name']}' cannot be cross-validated (it has no "
                                       "fit_predict); use a classifier evaluator such as knn or linear")
            built.append(evaluator)
        return built

    def _folds(self, metadata: pd.DataFrame, labels: EvalLabels) -> list[tuple[np.ndarray, np.ndarray]]:
        cfg = self.config
        groups = group_values(metadata, cfg.group_column, self.name) if cfg.group_column else None
        stratify = labels.values if cfg.stratify and not labels.multilabel else None
        return fold_assignment(len(metadata), cfg.folds, labels=stratify, groups=groups, seed=cfg.seed)

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Run every classifier in every fold and aggregate the scores.

        :return: ``{"evaluator", "task", "metrics" (``<row>_<score>_mean`` / ``_std``), "table" (rows
            1-NN, 20-NN, linear probe, ...: mean +/- std in percent), "scoring" (average, std), "folds"
            (per-fold sizes, scores and classifier details), "labels", "split" (mode, folds, per-fold train /
            test rows),
            "embedding_dim", "config", "identity"}``.
        :raises cellssl.errors.ConfigError: no label column, a classifier that cannot be cross-validated.
        :raises cellssl.errors.DataError: a missing column, unusable labels, too few rows or groups.
        """
        cfg = self.config
        labels = resolve_labels(cfg, table.metadata, context, key=self.name)
        metadata = table.metadata.loc[labels.valid].reset_index(drop=True)
        embeddings = table.embeddings[labels.valid]
        classifiers = self._classifiers()
        folds = self._folds(metadata, labels)
        per_row: dict[str, list[dict[str, float]]] = {}
        fold_records = []
        for index, (train_idx, test_idx) in enumerate(folds):
            train_y = labels.values[train_idx]
            train_meta = metadata.iloc[train_idx].reset_index(drop=True)
            record: dict[str, Any] = {"fold": index, "train_rows": int(train_idx.size),
                                      "test_rows": int(test_idx.size), "scores": {}, "classifiers": []}
            if cfg.group_column:
                record["test_groups"] = int(metadata[cfg.group_column].iloc[test_idx].nunique())
            predictions: dict[str, np.ndarray] = {}
            for classifier in classifiers:
                output = classifier.fit_predict(embeddings[train_idx], train_y, embeddings[test_idx],
                                                labels=labels, train_metadata=train_meta)
                record["classifiers"].append(output.info)
                for row, pred in output.predictions.items():
                    name, copy = row, 1
                    while name in predictions:  # two classifiers giving the same row name
                        copy += 1
                        name = f"{row} #{copy}"
                    predictions[name] = pred
            # Fold i's labels are read here, after every classifier has predicted it.
            test_y = labels.values[test_idx]
            for row, pred in predictions.items():
                scores = classification_scores(test_y, pred, labels.multilabel, cfg.average)
                record["scores"][row] = scores
                per_row.setdefault(row, []).append(scores)
            fold_records.append(record)
            logger.info("cross-validation fold %d/%d: %s", index + 1, len(folds),
                        {r: round(s["f1"], 4) for r, s in record["scores"].items()})
        columns = MULTILABEL_TABLE_COLUMNS if labels.multilabel else TABLE_COLUMNS
        metrics: dict[str, float] = {}
        rows = []
        for row, fold_scores in per_row.items():
            line: dict[str, Any] = {"classifier": row}
            for score in fold_scores[0]:
                mean, std = mean_std([s[score] for s in fold_scores], ddof=cfg.std_ddof)
                metrics[f"{row_key(row)}_{score}_mean"] = mean
                metrics[f"{row_key(row)}_{score}_std"] = std
            for score, title in columns:
                line[title] = format_mean_std(metrics[f"{row_key(row)}_{score}_mean"],
                                              metrics[f"{row_key(row)}_{score}_std"], percent=True)
            rows.append(line)
        mode = ("stratified_" if cfg.stratify and not labels.multilabel else "") + (
            "group_kfold" if cfg.group_column else "kfold")
        result = {
            "evaluator": self.name,
            "task": "multilabel" if labels.multilabel else "multiclass",
            "metrics": metrics,
            "table": rows,
            "scoring": {"average": cfg.average, "std": "sample (ddof=1)" if cfg.std_ddof else "population (ddof=0)",
                        "columns": [title for _, title in columns]},
            "folds": fold_records,
            "labels": labels_summary(labels, len(table), cfg),
            "split": {"mode": mode, "folds": len(folds), "group_column": cfg.group_column, "rows": len(metadata),
                      "train_rows": [r["train_rows"] for r in fold_records],
                      "test_rows": [r["test_rows"] for r in fold_records]},
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_cross_validation(config: CrossValidationConfig) -> CrossValidationEvaluator:
    """Factory registered under the name ``cross_validation``."""
    return CrossValidationEvaluator(config)
