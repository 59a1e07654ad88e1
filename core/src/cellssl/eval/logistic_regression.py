"""The ``logistic_regression`` evaluator: scikit-learn's ``LogisticRegression`` on frozen embeddings.

This is the "linear probing" row of the DINOv2 blood-cell fork's 5-fold table (its notebook fits
``LogisticRegression(multi_class="ovr")`` with every other setting at scikit-learn's default: L2 penalty,
``C=1``, ``lbfgs``, ``max_iter=100``, ``tol=1e-4``, raw features, convergence warnings silenced). Since
scikit-learn 1.7 removed ``multi_class``, ``multi_class: ovr`` here is
``OneVsRestClassifier(LogisticRegression(...))``: one binary logistic regression per class, the class with
the largest decision value wins (the same per-class problems the fork's setting fitted);
``multi_class: multinomial`` is a single softmax ``LogisticRegression``. Multi-label labels always get one
binary regression per label (a label is predicted when its probability is > 0.5).

A fit that stops at ``max_iter`` before reaching ``tol`` is reported (``converged: false`` and the
iteration count in the result, one warning in the log) rather than silenced; raise ``max_iter`` or set
``standardize: true`` (features centred and scaled on the training rows) to make it converge.

YAML block, standalone (one train / test split) or inside ``cross_validation``'s ``classifiers``::

    eval:
      - name: logistic_regression
        label_column: label
        multi_class: ovr       # ovr (the blood-cell fork) | multinomial
        C: 1.0
        max_iter: 100
        standardize: false
        split: {mode: fraction, test_fraction: 0.2, seed: 0}
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.eval.base import EvalContext, EvalLabels, Evaluator, to_jsonable
from cellssl.eval.classifier import (
    FoldOutput,
    LabelSettings,
    labels_summary,
    resolve_labels,
    split_summary,
)
from cellssl.eval.engines.splits import SplitConfig, make_split

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)

MULTI_CLASS = ("ovr", "multinomial")
ROW_NAME = "logistic regression"


@dataclass
class LogisticRegressionConfig(LabelSettings):
    """Parameters of ``logistic_regression`` (label keys: see :class:`~cellssl.eval.classifier.LabelSettings`).

    :ivar multi_class: ``ovr`` (one binary regression per class, the blood-cell fork's setting) or
        ``multinomial`` (one softmax regression).
    :ivar C: inverse L2 regularisation strength (scikit-learn's ``C``).
    :ivar max_iter: lbfgs iterations per regression (scikit-learn's default, 100).
    :ivar tol: lbfgs stopping tolerance.
    :ivar standardize: centre and scale the features on the training rows first (the fork does not).
    :ivar split: train / test split when run standalone (ignored inside ``cross_validation``).
    :ivar per_class_report: include per-class precision / recall / F1 / support (standalone).
    """

    multi_class: str = "ovr"
    C: float = 1.0
    max_iter: int = 100
    tol: float = 1e-4
    standardize: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    per_class_report: bool = True

    def __post_init__(self) -> None:
        if self.multi_class not in MULTI_CLASS:
            raise ValueError(f"multi_class must be one of {', '.join(MULTI_CLASS)}, got {self.multi_class!r}")
        if not self.C > 0:
            raise ValueError(f"C must be > 0, got {self.C}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if isinstance(self.split, dict):
            self.split = SplitConfig(**self.split)


def build_model(config: LogisticRegressionConfig, multilabel: bool) -> Any:
    """The scikit-learn estimator ``config`` describes (unfitted).

    :return: ``OneVsRestClassifier(LogisticRegression)`` for ``ovr`` and for multi-label labels, else a
        ``LogisticRegression``; wrapped in a ``Pipeline`` after a ``StandardScaler`` with ``standardize``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model: Any = LogisticRegression(C=config.C, max_iter=config.max_iter, tol=config.tol)
    if multilabel or config.multi_class == "ovr":
        model = OneVsRestClassifier(model)
    return make_pipeline(StandardScaler(), model) if config.standardize else model


def _iterations(model: Any) -> list[int]:
    """lbfgs iteration counts of every regression inside a fitted :func:`build_model` estimator."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    estimators = getattr(final, "estimators_", [final])
    counts: list[int] = []
    for estimator in estimators:
        n_iter = getattr(estimator, "n_iter_", None)  # a constant-label column has a dummy estimator
        if n_iter is not None:
            counts.extend(int(n) for n in np.ravel(n_iter))
    return counts


def fit_logistic(config: LogisticRegressionConfig, train_x: np.ndarray, train_y: np.ndarray,
                 multilabel: bool) -> tuple[Any, dict[str, Any]]:
    """Fit :func:`build_model` on float64 features.

    :return: ``(fitted model, info)`` with ``info = {"multi_class", "iterations" (max over the regressions),
        "converged" (every regression stopped before max_iter)}``.
    :raises cellssl.errors.DataError: when the training rows hold a single class.
    """
    from sklearn.exceptions import ConvergenceWarning

    from cellssl.errors import DataError

    if not multilabel and len(np.unique(train_y)) < 2:
        raise DataError("logistic_regression: the training rows hold a single class; a classifier needs two "
                        "(check the label column and the split)")
    model = build_model(config, multilabel)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below, once per fit
        warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
        model.fit(np.asarray(train_x, dtype=np.float64), train_y)
    counts = _iterations(model)
    converged = all(n < config.max_iter for n in counts)
    if not converged:
        logger.warning("logistic_regression: lbfgs stopped at max_iter=%d before tol=%g; raise max_iter or "
                       "set standardize: true", config.max_iter, config.tol)
    info = {"multi_class": "ovr" if multilabel else config.multi_class,
            "iterations": max(counts) if counts else 0, "converged": converged}
    return model, info


class LogisticRegressionEvaluator(Evaluator):
    """scikit-learn logistic regression of held-out rows (see the module docstring)."""

    name = "logistic_regression"

    def __init__(self, config: LogisticRegressionConfig) -> None:
        self.config = config

    def fit_predict(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, labels: EvalLabels,
                    train_metadata: pd.DataFrame) -> FoldOutput:
        """Cross-validation row ``"logistic regression"`` (see :class:`~cellssl.eval.classifier.FoldClassifier`)."""
        model, info = fit_logistic(self.config, train_x, train_y, labels.multilabel)
        pred = model.predict(np.asarray(test_x, dtype=np.float64))
        return FoldOutput({ROW_NAME: pred.astype(np.int8) if labels.multilabel else pred.astype(np.int64)},
                          {"classifier": self.name, **info})

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Fit on the train side of ``split``, score the test side.

        :return: ``{"evaluator", "task", "metrics" (the headline metrics), "report" (every metric, per-class),
            "fit" (iterations, converged), "labels", "split", "embedding_dim", "config", "identity"}``.
        :raises cellssl.errors.ConfigError: no label column.
        :raises cellssl.errors.DataError: a missing column, unusable labels, a one-class training side.
        """
        from cellssl.eval.engines.metrics import (
            HEADLINE_MULTICLASS,
            HEADLINE_MULTILABEL,
            multiclass_metrics,
            multilabel_metrics,
        )

        cfg = self.config
        labels = resolve_labels(cfg, table.metadata, context, key=self.name)
        metadata = table.metadata.loc[labels.valid].reset_index(drop=True)
        embeddings = table.embeddings[labels.valid]
        train_idx, test_idx = make_split(metadata, cfg.split, None if labels.multilabel else labels.values,
                                         key=f"{self.name}.split")
        model, info = fit_logistic(cfg, embeddings[train_idx], labels.values[train_idx], labels.multilabel)
        test_x = np.asarray(embeddings[test_idx], dtype=np.float64)
        test_y = labels.values[test_idx]
        if labels.multilabel:
            report = multilabel_metrics(test_y, model.predict_proba(test_x), labels.names,
                                        per_label=cfg.per_class_report)
            names = HEADLINE_MULTILABEL
        else:
            report = multiclass_metrics(test_y, model.predict(test_x), labels.names, per_class=cfg.per_class_report)
            names = HEADLINE_MULTICLASS
        logger.info("logistic_regression: %s", {n: round(report[n], 4) for n in names})
        result = {
            "evaluator": self.name,
            "task": "multilabel" if labels.multilabel else "multiclass",
            "metrics": {n: report[n] for n in names},
            "report": report,
            "fit": info,
            "labels": labels_summary(labels, len(table), cfg),
            "split": split_summary(cfg.split.mode, cfg.split.column, metadata, train_idx, test_idx),
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_logistic_regression(config: LogisticRegressionConfig) -> LogisticRegressionEvaluator:
    """Factory registered under the name ``logistic_regression``."""
    return LogisticRegressionEvaluator(config)
