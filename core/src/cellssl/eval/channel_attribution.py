"""The ``channel_attribution`` evaluator: how much each named channel contributes to a classification.

Two measurements, both scored on one train/test split (``split``) with the kNN classifier of
:func:`cellssl.eval.engines.knn.knn_classify` (or a logistic-regression ``linear`` classifier):

(a) **Block importance** (``block_importance``) for embeddings that concatenate one block per channel
    (``bag_of_channels`` with ``aggregate: concat``, ``per_channel_concat``): the embedding of dimension
    ``B x d`` is cut into ``B`` blocks named by the channels (the manifest's ``info.channels``, or the
    ``per_channel_concat`` order recorded in ``info.strategy``, or ``block_names``). Per channel it reports
    the score with that block alone (``alone``), with every other block (``without``), and
    ``block_drop = all - without`` (the score lost when that block is removed).
(b) **Drop-one-channel** (``drop_channel``; needs the run's model and images): up to ``max_images``
    images are re-embedded once as they are and once per channel with that channel replaced by
    ``drop_fill`` in the model input (after preprocessing: with dataset or per-image normalisation, 0 is
    the channel's mean intensity); ``drop_channel_delta = baseline - score without the channel``.

The result's ``table`` has one row per channel with the columns of the measurements that ran.

YAML block::

    eval:
      - name: channel_attribution
        label_column: moa
        classifier: knn          # knn | linear
        k: 20
        score: macro_f1          # macro_f1 | accuracy | balanced_accuracy
        split: {mode: group, column: fov_id, test_fraction: 0.3}
        drop_channel: true
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError
from cellssl.eval.base import EvalContext, Evaluator, labels_from_metadata, to_jsonable
from cellssl.eval.engines.knn import METRICS, knn_classify
from cellssl.eval.engines.metrics import multiclass_metrics
from cellssl.eval.engines.splits import SplitConfig, make_split

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)

CLASSIFIERS = ("knn", "linear")
SCORES = ("macro_f1", "accuracy", "balanced_accuracy")
PRECISIONS = ("bf16", "fp32")


@dataclass
class ChannelAttributionConfig:
    """Parameters of the ``channel_attribution`` evaluator (see the module docstring).

    :ivar label_column: single-label column to classify (default: the dataset's label column).
    :ivar classifier: ``knn`` (cosine / L2, weighted votes) or ``linear`` (logistic regression on
        standardised features).
    :ivar k: neighbours of the kNN classifier (capped at the number of training rows).
    :ivar metric: / :ivar temperature: kNN similarity and vote temperature.
    :ivar score: the reported score: macro_f1, accuracy or balanced_accuracy.
    :ivar split: train / test split of the rows.
    :ivar block_importance: measure (a). :ivar block_names: names of the blocks, overriding the manifest.
    :ivar drop_channel: measure (b) (re-embeds images with the run's model).
    :ivar max_images: images re-embedded for (b) (a seeded subsample of the dataset).
    :ivar drop_fill: value written into the dropped channel of the model input.
    :ivar batch_size: images per forward pass in (b). :ivar precision: ``bf16`` autocast or ``fp32`` in (b).
    :ivar seed: seed of the subsample of (b).
    """

    label_column: str = ""
    classifier: str = "knn"
    k: int = 20
    metric: str = "cosine"
    temperature: float = 0.07
    score: str = "macro_f1"
    split: SplitConfig = field(default_factory=SplitConfig)
    block_importance: bool = True
    block_names: list[str] = field(default_factory=list)
    drop_channel: bool = False
    max_images: int = 2000
    drop_fill: float = 0.0
    batch_size: int = 64
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.split, dict):
            self.split = SplitConfig(**self.split)
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {self.classifier!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.k < 1 or self.max_images < 2 or self.batch_size < 1:
            raise ValueError(f"k, batch_size must be >= 1 and max_images >= 2, got {self.k}, {self.batch_size}, "
                             f"{self.max_images}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (self.block_importance or self.drop_channel):
            raise ValueError("enable block_importance and/or drop_channel")


def block_layout(table: EmbeddingTable, block_names: list[str], key: str) -> list[str]:
    """Channel names of the concatenated blocks of ``table``'s embeddings, in order.

    :raises ConfigError: naming ``key`` when the embeddings are not per-channel blocks (``fixed`` or
        ``aggregate=mean``), no names are known, or the dimension is not a multiple of the block count.
    """
    info = table.manifest.get("info", {}) if table.manifest else {}
    names = list(block_names)
    if not names:
        recorded = [str(n) for n in info.get("blocks", [])]
        if len(recorded) == 1:
            raise ConfigError(f"{key}.block_importance",
                              f"the embeddings come from strategy '{info.get('strategy', '')}', whose embedding is one "
                              f"block ({recorded[0]}), not one block per channel; block importance needs "
                              "bag_of_channels (aggregate: concat) or per_channel_concat. Set block_importance: false "
                              "(drop_channel still works).")
        names = recorded
    if not names:
        raise ConfigError(f"{key}.block_names", "the embedding manifest records no channels; list the channel "
                                                 "names of the blocks, in order")
    if table.dim % len(names):
        raise ConfigError(f"{key}.block_names", f"{len(names)} blocks {names} do not divide the embedding "
                                                 f"dimension {table.dim}")
    return names


class _Scorer:
    """Scores feature matrices on a fixed train/test split with the configured classifier."""

    def __init__(self, cfg: ChannelAttributionConfig, labels: np.ndarray, names: list[str],
                 train: np.ndarray, test: np.ndarray) -> None:
        self.cfg, self.labels, self.names, self.train, self.test = cfg, labels, names, train, test
        self.k = min(cfg.k, len(train))
        if self.k < cfg.k:
            logger.warning("channel_attribution: k=%d capped at the %d training rows", cfg.k, len(train))

    def __call__(self, features: np.ndarray) -> float:
        x_train, x_test = features[self.train], features[self.test]
        y_train = self.labels[self.train]
        if self.cfg.classifier == "knn":
            predicted = knn_classify(x_train, y_train, x_test, [self.k], metric=self.cfg.metric,
                                     temperature=self.cfg.temperature, num_classes=len(self.names))[self.k].labels
        else:
            from sklearn.linear_model import LogisticRegression
            from sklearn.pipeline import make_pipeline
            from sklearn.preprocessing import StandardScaler

            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            predicted = model.fit(x_train, y_train).predict(x_test)
        scores = multiclass_metrics(self.labels[self.test], predicted, self.names, per_class=False)
        return float(scores[self.cfg.score])


def _labels(metadata: pd.DataFrame, cfg: ChannelAttributionConfig, context: EvalContext, key: str) -> Any:
    column = cfg.label_column or (context.label_columns[0] if context.label_columns else "")
    if not column:
        raise ConfigError(f"{key}.label_column", "is required (the dataset declares no label column).")
    labels = labels_from_metadata(metadata, column, key=key)
    if labels.multilabel:
        raise ConfigError(f"{key}.label_column", "must be a single-label column (multi-label is not supported)")
    return labels


def _embed_variants(cfg: ChannelAttributionConfig, context: EvalContext, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Embeddings of dataset ``rows``: ``""`` as they are, and per channel name with that channel dropped.

    Uses the run's :class:`~cellssl.embed.embedder.Embedder` (``context.embedder``: the embed stage's
    preprocessing, weights and feature recipe) when there is one, else the plain model and preprocessing.
    """
    from cellssl.embed import Embedder

    dataset, preprocess = context.load_dataset()  # type: ignore[misc]
    if context.embedder is not None:
        embedder = context.embedder()
    else:
        strategy, backbone = context.load_model()  # type: ignore[misc]
        embedder = Embedder(strategy, backbone, preprocess, device=context.device)
    names = tuple(dataset.channel_names)
    variants: dict[str, list[np.ndarray]] = {"": [], **{name: [] for name in names}}
    for start in range(0, len(rows), cfg.batch_size):
        images, _ = embedder.preprocessed(dataset, rows[start : start + cfg.batch_size])
        for position, name in enumerate(["", *names]):
            batch = images.clone()
            if name:
                batch[:, position - 1] = cfg.drop_fill
            variants[name].append(embedder.embed_images(batch, names, precision=cfg.precision).numpy())
    return {name: np.concatenate(parts) for name, parts in variants.items()}


class ChannelAttributionEvaluator(Evaluator):
    """Per-channel contribution to a classification: block importance and drop-one-channel."""

    name = "channel_attribution"

    def __init__(self, config: ChannelAttributionConfig) -> None:
        self.config = config

    def _blocks(self, table: EmbeddingTable, context: EvalContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg = self.config
        names = block_layout(table, cfg.block_names, self.name)
        labels = _labels(table.metadata, cfg, context, self.name)
        metadata = table.metadata.loc[labels.valid].reset_index(drop=True)
        features = table.embeddings[labels.valid]
        train, test = make_split(metadata, cfg.split, labels.values, key=f"{self.name}.split")
        score = _Scorer(cfg, labels.values, labels.names, train, test)
        width = table.dim // len(names)
        blocks = [features[:, i * width : (i + 1) * width] for i in range(len(names))]
        everything = score(features)
        rows = []
        for i, name in enumerate(names):
            alone = score(blocks[i])
            without = score(np.concatenate([b for j, b in enumerate(blocks) if j != i], axis=1)) \
                if len(names) > 1 else float("nan")
            rows.append({"channel": name, "alone": alone, "without": without, "block_drop": everything - without})
        summary = {"score_all_blocks": everything, "block_dim": width, "train_rows": len(train),
                   "test_rows": len(test)}
        return summary, rows

    def _drop(self, context: EvalContext) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        cfg = self.config
        if context.load_model is None or context.load_dataset is None:
            raise ConfigError(f"{self.name}.drop_channel", "needs the run's model and images (a config with `data:` "
                                                           "and `backbone:`); set drop_channel: false")
        dataset, _ = context.load_dataset()
        rows = np.arange(len(dataset))
        if len(rows) > cfg.max_images:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(len(rows), cfg.max_images, replace=False))
        metadata = dataset.metadata.iloc[rows].reset_index(drop=True)
        labels = _labels(metadata, cfg, context, self.name)
        rows, metadata = rows[labels.valid], metadata.loc[labels.valid].reset_index(drop=True)
        train, test = make_split(metadata, cfg.split, labels.values, key=f"{self.name}.split")
        score = _Scorer(cfg, labels.values, labels.names, train, test)
        variants = _embed_variants(cfg, context, rows)
        baseline = score(variants.pop(""))
        table = []
        for name, features in variants.items():
            value = score(features)
            table.append({"channel": name, "drop_channel_score": value, "drop_channel_delta": baseline - value})
        summary = {"baseline": baseline, "images": len(rows), "train_rows": len(train), "test_rows": len(test)}
        return summary, table

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Run the enabled measurements.

        :return: ``{"evaluator", "metrics" (flat: ``<score>_all_blocks``, ``block_drop_<channel>``,
            ``drop_channel_baseline``, ``drop_channel_delta_<channel>`` ...), "table" (one row per channel),
            "split" (train / test sizes), "blocks" / "drop_channel" (details), "config", "identity"}``.
        :raises ConfigError: see :func:`block_layout`; no label column; drop_channel without a model.
        :raises cellssl.errors.DataError: missing columns or an empty split side.
        """
        cfg = self.config
        metrics: dict[str, float] = {}
        merged: dict[str, dict[str, Any]] = {}
        result: dict[str, Any] = {"evaluator": self.name, "score": cfg.score, "classifier": cfg.classifier}
        if cfg.block_importance:
            summary, rows = self._blocks(table, context)
            metrics[f"{cfg.score}_all_blocks"] = summary["score_all_blocks"]
            for row in rows:
                merged.setdefault(row["channel"], {"channel": row["channel"]}).update(row)
                metrics[f"block_alone_{row['channel']}"] = row["alone"]
                metrics[f"block_drop_{row['channel']}"] = row["block_drop"]
            result["blocks"] = summary
        if cfg.drop_channel:
            summary, rows = self._drop(context)
            metrics["drop_channel_baseline"] = summary["baseline"]
            for row in rows:
                merged.setdefault(row["channel"], {"channel": row["channel"]}).update(row)
                metrics[f"drop_channel_delta_{row['channel']}"] = row["drop_channel_delta"]
            result["drop_channel"] = summary
        split: dict[str, Any] = {"mode": cfg.split.mode}
        for part in ("blocks", "drop_channel"):
            if part in result:
                prefix = "" if part == "blocks" else "drop_channel_"
                split[f"{prefix}train_rows"] = result[part]["train_rows"]
                split[f"{prefix}test_rows"] = result[part]["test_rows"]
        result.update({"metrics": metrics, "split": split, "table": list(merged.values()), "embedding_dim": table.dim,
                       "config": dataclasses.asdict(cfg), "identity": dict(context.identity)})
        return to_jsonable(result)


def build_channel_attribution(config: ChannelAttributionConfig) -> ChannelAttributionEvaluator:
    """Factory registered under the name ``channel_attribution``."""
    return ChannelAttributionEvaluator(config)
