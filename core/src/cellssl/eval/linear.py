"""The ``linear`` evaluator: a linear probe on frozen embeddings, head chosen on validation rows only.

YAML block::

    eval:
      - name: linear
        label_column: phase                  # or label_columns: [...] / label_separator: "|"
        split: {mode: fraction, test_fraction: 0.2, seed: 0}
        val_split: null                      # null: a stratified val_fraction of the train side
        val_fraction: 0.2
        learning_rates: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
        weight_decays: [0.0, 1.0e-5, 1.0e-4, 1.0e-3]
        epochs: 10
        class_balance: false

Protocol: ``split`` separates train and test rows; the validation rows come from the train side only
(``val_split`` applied to the train rows, its test side being the validation set, e.g. a grouped split
by ``fov_id`` or ``{mode: column, column: split, train_values: [train], test_values: [val]}``; otherwise a
stratified ``val_fraction``). :func:`cellssl.eval.engines.linear_probe.fit_linear_probe` trains the grid, picks the head
on the validation rows and (``refit``) retrains it on train + validation. The test rows are scored once,
at the end. Multi-class metrics: accuracy, balanced accuracy, macro F1; multi-label:
``mean_per_class_multilabel_f1`` (macro F1 at probability 0.5) and micro F1.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.eval.base import EvalContext, EvalLabels, Evaluator, to_jsonable
from cellssl.eval.classifier import FoldOutput, labels_summary, resolve_labels, split_summary
from cellssl.eval.engines.linear_probe import (
    MULTICLASS_SELECT,
    MULTILABEL_SELECT,
    LinearProbe,
    fit_linear_probe,
)
from cellssl.eval.engines.metrics import (
    HEADLINE_MULTICLASS,
    HEADLINE_MULTILABEL,
    multiclass_metrics,
    multilabel_metrics,
)
from cellssl.eval.engines.splits import make_split
from cellssl.eval.linear_config import LinearEvaluatorConfig

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        from cellssl.errors import ConfigError

        raise ConfigError("linear.device", "is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return name


class LinearEvaluator(Evaluator):
    """Linear probe: grid of heads on the train rows, chosen on validation rows, scored once on test rows."""

    name = "linear"

    def __init__(self, config: LinearEvaluatorConfig) -> None:
        self.config = config

    def fit(self, train_x: np.ndarray, train_y: np.ndarray, labels: EvalLabels,
            train_metadata: pd.DataFrame) -> LinearProbe:
        """Fit the probe on training rows only (validation carved from them)."""
        cfg = self.config
        if cfg.select_metric:
            allowed = MULTILABEL_SELECT if labels.multilabel else MULTICLASS_SELECT
            if cfg.select_metric not in allowed:
                from cellssl.errors import ConfigError

                raise ConfigError(f"{self.name}.select_metric",
                                  f"'{cfg.select_metric}' does not fit this task; use one of {allowed}")
        val_x = val_y = None
        fit_x, fit_y = train_x, train_y
        if cfg.val_split is not None:
            stratify = None if labels.multilabel else train_y
            fit_idx, val_idx = make_split(train_metadata, cfg.val_split, stratify, key=f"{self.name}.val_split")
            fit_x, fit_y, val_x, val_y = train_x[fit_idx], train_y[fit_idx], train_x[val_idx], train_y[val_idx]
        return fit_linear_probe(
            fit_x, fit_y, multilabel=labels.multilabel, val_x=val_x, val_y=val_y, val_fraction=cfg.val_fraction,
            learning_rates=cfg.learning_rates, weight_decays=cfg.weight_decays, epochs=cfg.epochs,
            batch_size=cfg.batch_size, class_balance=cfg.class_balance, seed=cfg.seed, device=_device(cfg.device),
            num_classes=None if labels.multilabel else len(labels.names), select_metric=cfg.select_metric or None,
            refit=cfg.refit, min_steps=cfg.min_steps, precision=cfg.precision,
        )

    def fit_predict(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, labels: EvalLabels,
                    train_metadata: pd.DataFrame) -> FoldOutput:
        """Cross-validation row ``"linear probe"`` (see :class:`~cellssl.eval.classifier.FoldClassifier`)."""
        probe = self.fit(train_x, train_y, labels, train_metadata)
        return FoldOutput({"linear probe": probe.predict(test_x)}, {"chosen": _chosen(probe), "sizes": probe.sizes})

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Split ``table``, fit the probe on the train side, score the test side once.

        :return: ``{"evaluator", "task", "metrics", "per_class" (or "per_label"), "chosen" (lr,
            weight_decay, val_score, metric), "grid" (validation score and loss of every head),
            "labels", "split" (mode, train / val / fit / test rows), "embedding_dim", "config",
            "identity"}``.
        :raises cellssl.errors.ConfigError: no label column, a bad split or select_metric.
        :raises cellssl.errors.DataError: a missing column, unusable labels, an empty split side.
        """
        cfg = self.config
        labels = resolve_labels(cfg, table.metadata, context, key=self.name)
        metadata = table.metadata.loc[labels.valid].reset_index(drop=True)
        embeddings = table.embeddings[labels.valid]
        train_idx, test_idx = make_split(metadata, cfg.split, None if labels.multilabel else labels.values,
                                         key=f"{self.name}.split")
        train_meta = metadata.iloc[train_idx].reset_index(drop=True)
        probe = self.fit(embeddings[train_idx], labels.values[train_idx], labels, train_meta)
        # The test rows are used here, once, after the head is chosen.
        test_y = labels.values[test_idx]
        if labels.multilabel:
            report = multilabel_metrics(test_y, probe.predict_scores(embeddings[test_idx]), labels.names,
                                        per_label=cfg.per_class_report)
            names = HEADLINE_MULTILABEL
        else:
            report = multiclass_metrics(test_y, probe.predict(embeddings[test_idx]), labels.names,
                                        per_class=cfg.per_class_report)
            names = HEADLINE_MULTICLASS
        split = split_summary(cfg.split.mode, cfg.split.column, metadata, train_idx, test_idx)
        split.update(val_rows=probe.sizes["val_rows"], fit_rows=probe.sizes["fit_rows"])
        result: dict[str, Any] = {
            "evaluator": self.name,
            "task": "multilabel" if labels.multilabel else "multiclass",
            "metrics": {name: report[name] for name in names},
            "chosen": _chosen(probe),
            "grid": probe.grid,
            "labels": labels_summary(labels, len(table), cfg),
            "split": split,
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        for key in ("per_class", "per_label"):
            if key in report:
                result[key] = report[key]
        return to_jsonable(result)


def _chosen(probe: LinearProbe) -> dict[str, Any]:
    return {"lr": probe.chosen.lr, "weight_decay": probe.chosen.weight_decay, "val_score": probe.chosen.val_score,
            "metric": probe.selection_metric, "refit": probe.refit}


def build_linear_evaluator(config: LinearEvaluatorConfig) -> LinearEvaluator:
    """Factory registered under the name ``linear``."""
    return LinearEvaluator(config)
