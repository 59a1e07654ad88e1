"""The ``knn`` evaluator: split an embedding table, classify the test rows by kNN, report metrics.

YAML block (every key optional except where labels cannot be taken from the dataset)::

    eval:
      - name: knn
        label_column: phase            # or label_columns: [Nucleoplasm, Cytosol, ...]
        ks: [1, 20]                    # a k sweep: the search runs once for max(ks)
        metric: cosine                 # cosine | l2
        temperature: 0.07
        voting: weighted               # weighted | majority
        split: {mode: group, column: fov_id, test_fraction: 0.2, seed: 0}
        few_shot: {shots: [1, 5, 10], draws: 5, seed: 0}
        index: {kind: ivf, nlist: 4096, nprobe: 32}   # default exact; faiss GPU when available (knn_index)

Rows without a label are skipped and counted in the result (``labels.rows_missing_label``). Multi-label
labels vote per label (a label is predicted when its weighted vote fraction is >= 0.5).

Few-shot: for each ``n`` in ``few_shot.shots`` and each of ``few_shot.draws`` draws (draw ``d`` is
seeded by ``few_shot.seed + d``), ``n`` training rows per class are drawn without replacement from the
train side (all of a class's rows when it has fewer, reported in ``few_shot.short_classes``; for
multi-label, ``n`` rows carrying each label, pooled), the whole test side is classified against them,
and every ``k <= n_drawn`` of ``ks`` is scored. Results are the mean and population standard deviation
over the draws (metrics ``fewshot<n>_k<k>_<metric>_mean`` / ``_std``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.eval.base import EvalContext, EvalLabels, Evaluator, to_jsonable
from cellssl.eval.classifier import (
    FoldOutput,
    LabelSettings,
    format_mean_std,
    labels_summary,
    mean_std,
    resolve_labels,
    split_summary,
)
from cellssl.eval.engines.knn import METRICS, VOTINGS, check_ks, knn_classify, knn_evaluate
from cellssl.eval.engines.knn_index import KNNIndexConfig, index_report
from cellssl.eval.engines.metrics import (
    HEADLINE_MULTICLASS,
    HEADLINE_MULTILABEL,
    multiclass_metrics,
    multilabel_metrics,
)
from cellssl.eval.engines.splits import SplitConfig, make_split

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)



@dataclass
class FewShotConfig:
    """Few-shot kNN (YAML block ``few_shot:`` of ``knn``).

    :ivar shots: training rows per class to draw (empty: no few-shot evaluation).
    :ivar draws: independent draws per shot count; results are mean +/- std over them.
    :ivar seed: draw ``d`` uses seed ``seed + d``.
    """

    shots: list[int] = field(default_factory=list)
    draws: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if any(int(n) < 1 for n in self.shots):
            raise ValueError(f"few_shot.shots must hold integers >= 1, got {self.shots}")
        if self.draws < 1:
            raise ValueError(f"few_shot.draws must be >= 1, got {self.draws}")


@dataclass
class KNNEvaluatorConfig(LabelSettings):
    """Parameters of the ``knn`` evaluator (label keys: see :class:`~cellssl.eval.classifier.LabelSettings`).

    :ivar ks: neighbour counts to report.
    :ivar metric: ``cosine`` (L2-normalised features) or ``l2``.
    :ivar temperature: softmax temperature of weighted voting.
    :ivar voting: ``weighted`` (softmax(sim / T)) or ``majority``.
    :ivar split: how rows are split into train (the kNN memory) and test.
    :ivar few_shot: few-shot draws from the train side (off unless ``few_shot.shots`` is set).
    :ivar per_class_report: include per-class precision / recall / F1 / support.
    :ivar batch_size: test rows per faiss search.
    :ivar num_threads: faiss threads (default: the CPUs available to the process).
    :ivar index: the faiss index: exact (default) or IVF, CPU or GPU; IVF recall@k against the exact search is
        reported under ``index`` in the result (:class:`~cellssl.eval.engines.knn_index.KNNIndexConfig`).
    """

    ks: list[int] = field(default_factory=lambda: [1, 20])
    metric: str = "cosine"
    temperature: float = 0.07
    voting: str = "weighted"
    split: SplitConfig = field(default_factory=SplitConfig)
    few_shot: FewShotConfig = field(default_factory=FewShotConfig)
    per_class_report: bool = True
    batch_size: int = 4096
    num_threads: int | None = None
    index: KNNIndexConfig = field(default_factory=KNNIndexConfig)

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
        if isinstance(self.index, dict):
            self.index = KNNIndexConfig(**self.index)
        if isinstance(self.few_shot, dict):
            self.few_shot = FewShotConfig(**self.few_shot)


def _flat_metrics(per_k: dict[str, dict[str, Any]]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for k, metrics in per_k.items():
        for name, value in metrics.items():
            if isinstance(value, float):
                flat[f"k{k}_{name}"] = value
    return flat


def draw_few_shot(train_y: np.ndarray, shots: int, rng: np.random.Generator, multilabel: bool) -> tuple[
        np.ndarray, list[int]]:
    """Positions of ``shots`` rows per class (or per label) drawn without replacement from ``train_y``.

    :return: ``(sorted positions, classes that had fewer than shots rows)``. For multi-label, the rows
        drawn for each label are pooled (a row drawn for two labels counts once).
    """
    chosen: list[np.ndarray] = []
    short: list[int] = []
    columns = range(train_y.shape[1]) if multilabel else np.unique(train_y)
    for c in columns:
        members = np.flatnonzero(train_y[:, c] == 1 if multilabel else train_y == c)
        if members.size == 0:
            continue
        if members.size < shots:
            short.append(int(c))
        chosen.append(rng.choice(members, size=min(shots, members.size), replace=False))
    return np.unique(np.concatenate(chosen)), short


def _score(test_y: np.ndarray, pred: np.ndarray, multilabel: bool) -> dict[str, Any]:
    if multilabel:
        return multilabel_metrics(test_y, pred, per_label=False)
    return multiclass_metrics(test_y, pred, per_class=False)


class KNNEvaluator(Evaluator):
    """kNN classification of held-out rows (see :mod:`cellssl.eval.engines.knn` for the voting rules)."""

    name = "knn"

    def __init__(self, config: KNNEvaluatorConfig) -> None:
        self.config = config

    def _labels(self, table: EmbeddingTable, context: EvalContext) -> EvalLabels:
        return resolve_labels(self.config, table.metadata, context, key=self.name)

    def _classify(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, ks: list[int],
                  labels: EvalLabels) -> dict[int, np.ndarray]:
        cfg = self.config
        predictions = knn_classify(
            train_x, train_y, test_x, ks, metric=cfg.metric, temperature=cfg.temperature, voting=cfg.voting,
            multilabel=labels.multilabel, num_classes=None if labels.multilabel else len(labels.names),
            batch_size=cfg.batch_size, num_threads=cfg.num_threads, index=cfg.index,
        )
        return {k: p.labels.astype(np.int8) if labels.multilabel else p.labels for k, p in predictions.items()}

    def fit_predict(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, labels: EvalLabels,
                    train_metadata: pd.DataFrame) -> FoldOutput:
        """Cross-validation rows ``"<k>-NN"``, one per ``k`` of ``ks`` (see :class:`FoldClassifier`)."""
        ks = check_ks(self.config.ks, len(train_x), key=f"{self.name}.ks")
        predictions = self._classify(train_x, train_y, test_x, ks, labels)
        return FoldOutput({f"{k}-NN": predictions[k] for k in ks})

    def _few_shot(self, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                  labels: EvalLabels) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
        cfg = self.config
        columns = HEADLINE_MULTILABEL if labels.multilabel else HEADLINE_MULTICLASS
        section: dict[str, Any] = {"draws": cfg.few_shot.draws, "seed": cfg.few_shot.seed, "shots": {}}
        metrics: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        for shots in sorted({int(n) for n in cfg.few_shot.shots}):
            scores: dict[int, dict[str, list[float]]] = {}
            train_sizes, short = [], set()
            for draw in range(cfg.few_shot.draws):
                rng = np.random.default_rng(cfg.few_shot.seed + draw)
                picked, short_classes = draw_few_shot(train_y, shots, rng, labels.multilabel)
                short.update(short_classes)
                train_sizes.append(int(picked.size))
                ks = [k for k in cfg.ks if k <= picked.size]
                if not ks:
                    continue
                predictions = self._classify(train_x[picked], train_y[picked], test_x, ks, labels)
                for k, pred in predictions.items():
                    result = _score(test_y, pred, labels.multilabel)
                    for column in columns:
                        scores.setdefault(k, {}).setdefault(column, []).append(float(result[column]))
            summary: dict[str, Any] = {"train_rows": train_sizes,
                                       "short_classes": [labels.names[c] for c in sorted(short)], "per_k": {}}
            for k, by_metric in scores.items():
                summary["per_k"][str(k)] = {}
                row: dict[str, Any] = {"train": f"{shots}-shot x{len(by_metric[columns[0]])}", "k": k}
                for column, values in by_metric.items():
                    mean, std = mean_std(values)
                    metrics[f"fewshot{shots}_k{k}_{column}_mean"] = mean
                    metrics[f"fewshot{shots}_k{k}_{column}_std"] = std
                    summary["per_k"][str(k)][column] = {"mean": mean, "std": std, "values": values}
                    row[column] = format_mean_std(mean, std)
                rows.append(row)
            skipped = [k for k in cfg.ks if k not in scores]
            if skipped:
                summary["ks_skipped"] = skipped
                logger.warning("knn few-shot %d: k=%s exceed the rows drawn and are skipped", shots, skipped)
            section["shots"][str(shots)] = summary
        return section, metrics, rows

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Split ``table``, classify its test rows and score them for every ``k`` (and every few-shot draw).

        :return: ``{"evaluator", "task", "metrics" (flat ``k<k>_<metric>`` and few-shot means / stds),
            "table" (one row per k, then per few-shot setting), "per_k" (full reports), "few_shot"
            (per-draw values, when configured), "labels", "split" (mode, sizes), "config", "identity",
            "embedding_dim"}``.
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
        check_ks(cfg.ks, int(train_idx.size), key=f"{self.name}.ks")
        train_y, test_y = labels.values[train_idx], labels.values[test_idx]
        if not labels.multilabel:
            unseen = sorted(set(np.unique(test_y)) - set(np.unique(train_y)))
            if unseen:
                logger.warning("knn: test classes absent from the train side: %s",
                               [labels.names[i] for i in unseen])
        train_x, test_x = embeddings[train_idx], embeddings[test_idx]
        per_k = knn_evaluate(
            train_x, train_y, test_x, test_y, cfg.ks,
            metric=cfg.metric, temperature=cfg.temperature, voting=cfg.voting,
            multilabel=labels.multilabel, class_names=labels.names,
            per_class_report=cfg.per_class_report, batch_size=cfg.batch_size,
            num_threads=cfg.num_threads, index=cfg.index,
        )
        columns = HEADLINE_MULTILABEL if labels.multilabel else HEADLINE_MULTICLASS
        rows = [{"train": "all", "k": int(k), **{c: scores[c] for c in columns}} for k, scores in per_k.items()]
        metrics = _flat_metrics(per_k)
        result: dict[str, Any] = {
            "evaluator": self.name,
            "task": "multilabel" if labels.multilabel else "multiclass",
            "metrics": metrics,
            "table": rows,
            "per_k": per_k,
            "labels": labels_summary(labels, len(table), cfg),
            "split": split_summary(cfg.split.mode, cfg.split.column, metadata, train_idx, test_idx),
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
            "index": index_report(train_x, test_x, cfg.ks, cfg.metric, cfg.index),
        }
        if cfg.few_shot.shots:
            section, few_metrics, few_rows = self._few_shot(train_x, train_y, test_x, test_y, labels)
            metrics.update(few_metrics)
            rows.extend(few_rows)
            result["few_shot"] = section
        return to_jsonable(result)


def build_knn_evaluator(config: KNNEvaluatorConfig) -> KNNEvaluator:
    """Factory registered under the name ``knn``."""
    return KNNEvaluator(config)
