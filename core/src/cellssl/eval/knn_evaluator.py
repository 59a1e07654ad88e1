"""The ``knn`` evaluator: split an embedding table, classify the test rows by kNN, report metrics.

YAML block (every key optional except where labels cannot be taken from the dataset)::

    eval:
      - name: knn
        label_column: phase            # or label_columns: [Nucleoplasm, Cytosol, ...]
        ks: [1, 20]
        metric: cosine                 # cosine | l2
        temperature: 0.07
        voting: weighted               # weighted | majority
        split: {mode: group, column: fov_id, test_fraction: 0.2, seed: 0}

Rows without a label are skipped and counted in the result (``labels.rows_missing_label``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.eval.base import EvalContext, EvalLabels, Evaluator, labels_from_metadata, to_jsonable
from cellssl.eval.knn import METRICS, VOTINGS, knn_evaluate
from cellssl.eval.splits import SplitConfig, make_split

if TYPE_CHECKING:
    from cellssl.eval.embeddings import EmbeddingTable

logger = logging.getLogger(__name__)


@dataclass
class KNNEvaluatorConfig:
    """Parameters of the ``knn`` evaluator.

    :ivar label_column: metadata column of the labels (default: the dataset's label columns).
    :ivar label_separator: separator of a multi-label ``label_column`` (e.g. ``"|"``).
    :ivar label_columns: boolean columns, one per label (multi-label); overrides ``label_column``.
    :ivar ks: neighbour counts to report.
    :ivar metric: ``cosine`` (L2-normalised features) or ``l2``.
    :ivar temperature: softmax temperature of weighted voting.
    :ivar voting: ``weighted`` (softmax(sim / T)) or ``majority``.
    :ivar split: how rows are split into train (the kNN memory) and test.
    :ivar per_class_report: include per-class precision / recall / F1 / support.
    :ivar skip_unlabelled: skip multi-label rows with no label set.
    :ivar batch_size: test rows per faiss search.
    :ivar num_threads: faiss threads (default: the CPUs available to the process).
    """

    label_column: str = ""
    label_separator: str | None = None
    label_columns: list[str] = field(default_factory=list)
    ks: list[int] = field(default_factory=lambda: [1, 20])
    metric: str = "cosine"
    temperature: float = 0.07
    voting: str = "weighted"
    split: SplitConfig = field(default_factory=SplitConfig)
    per_class_report: bool = True
    skip_unlabelled: bool = True
    batch_size: int = 4096
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of integers >= 1, got {self.ks}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.voting not in VOTINGS:
            raise ValueError(f"voting must be one of {', '.join(VOTINGS)}, got {self.voting!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or null, got {self.num_threads}")
        if isinstance(self.split, dict):  # built from a plain mapping rather than by omegaconf
            self.split = SplitConfig(**self.split)


def _flat_metrics(per_k: dict[str, dict[str, Any]]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, metrics in per_k.items():
        for name, value in metrics.items():
            if isinstance(value, float):
                flat[f"k{k}_{name}"] = value
    return flat


class KNNEvaluator(Evaluator):
    """kNN classification of held-out rows (see :mod:`cellssl.eval.knn` for the voting rules)."""

    name = "knn"

    def __init__(self, config: KNNEvaluatorConfig) -> None:
        self.config = config

    def _labels(self, table: EmbeddingTable, context: EvalContext) -> EvalLabels:
        cfg = self.config
        if cfg.label_columns or cfg.label_column:
            column, separator, columns = cfg.label_column, cfg.label_separator, cfg.label_columns
        elif len(context.label_columns) > 1:
            column, separator, columns = "", None, context.label_columns
        else:
            column = context.label_columns[0] if context.label_columns else ""
            separator, columns = context.label_separator, []
        return labels_from_metadata(table.metadata, column, separator, columns,
                                    skip_unlabelled=cfg.skip_unlabelled, key=self.name)

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Split ``table``, classify its test rows and score them for every ``k``.

        :return: ``{"evaluator", "task", "metrics" (flat ``k<k>_<metric>``), "per_k" (full reports),
            "labels" (source, names, rows used / skipped), "split" (mode, sizes), "config",
            "identity", "embedding_dim"}``.
        :raises cellssl.errors.ConfigError: no label column, a ``k`` above the train size, a bad split.
        :raises cellssl.errors.DataError: a missing column, unusable labels, an empty split side.
        """
        cfg = self.config
        labels = self._labels(table, context)
        metadata = table.metadata.loc[labels.valid].reset_index(drop=True)
        embeddings = table.embeddings[labels.valid]
        if labels.missing or labels.unlabelled:
            logger.info("knn: skipped %d rows with a missing label and %d without any label",
                        labels.missing, labels.unlabelled)
        train_idx, test_idx = make_split(metadata, cfg.split, None if labels.multilabel else labels.values,
                                         key=f"{self.name}.split")
        train_y, test_y = labels.values[train_idx], labels.values[test_idx]
        if not labels.multilabel:
            unseen = sorted(set(np.unique(test_y)) - set(np.unique(train_y)))
            if unseen:
                logger.warning("knn: test classes absent from the train side: %s",
                               [labels.names[i] for i in unseen])
        per_k = knn_evaluate(
            embeddings[train_idx], train_y, embeddings[test_idx], test_y, cfg.ks,
            metric=cfg.metric, temperature=cfg.temperature, voting=cfg.voting,
            multilabel=labels.multilabel, class_names=labels.names,
            per_class_report=cfg.per_class_report, batch_size=cfg.batch_size,
            num_threads=cfg.num_threads,
        )
        split_info: dict[str, Any] = {"mode": cfg.split.mode, "train_rows": int(train_idx.size),
                                      "test_rows": int(test_idx.size)}
        if cfg.split.mode == "group" and cfg.split.column:
            groups = metadata[cfg.split.column].astype(str)
            split_info["train_groups"] = int(groups.iloc[train_idx].nunique())
            split_info["test_groups"] = int(groups.iloc[test_idx].nunique())
        result = {
            "evaluator": self.name,
            "task": "multilabel" if labels.multilabel else "multiclass",
            "metrics": _flat_metrics(per_k),
            "per_k": per_k,
            "labels": {
                "source": labels.source,
                "names": labels.names,
                "rows_total": len(table),
                "rows_used": int(labels.valid.sum()),
                "rows_missing_label": labels.missing,
                "rows_without_any_label": labels.unlabelled,
            },
            "split": split_info,
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_knn_evaluator(config: KNNEvaluatorConfig) -> KNNEvaluator:
    """Factory registered under the name ``knn``."""
    return KNNEvaluator(config)
