"""The ``chammi`` evaluator: the full CHAMMI protocol over the three subsets, as one table.

For each subset of ``subsets`` it

1. builds the subset's dataset from the CHAMMI root (``root``, else the run's ``data.root``);
2. gets the subset's embeddings: the run's embedding table when it holds exactly that subset (same ``ID``
   rows in the same order, e.g. ``data: {name: chammi, subset: wtc}``), else embeddings made by the run's
   embedder (``EvalContext.embedder``: its channel strategy, weights and feature recipe) with the run's
   preprocessing rebuilt for the subset (``Embedder.for_dataset``: resize to ``embed.img_size``; ``normalize:``,
   in ``dataset`` mode with ``normalize.stats_path``, else the run's statistics when they cover the subset's
   channels, else statistics of the subset stored beside its embeddings). They are kept in
   ``<run_dir>/chammi_embeddings/<subset>/`` and reused while their fingerprint (the subset's rows, strategy,
   backbone, weights digest, features, precision, input size, normalisation) is unchanged. A channel-adaptive
   strategy (``bag_of_channels``) embeds any channel count; a ``fixed`` model fails with the strategy's error;
3. scores every task with every classifier (:mod:`cellssl_chammi.protocol`).

The result JSON (``eval/chammi.json``, written by the runner) holds the table rows (one per classifier:
``WTC T1`` ... ``CP T4``, ``mean`` and the ``CHAMMI`` score of CHAMMI-75, see :mod:`cellssl_chammi.table`; for
``sgd`` the mean over its seeds), flat metrics (``knn_HPA_T3``, ``knn_CHAMMI`` ...,
``sgd_HPA_T3_std``), per-task details (per seed for ``sgd``) and the subsets' sizes; ``eval/chammi_table.md``
and ``eval/chammi_table.csv`` hold the same table.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.api import ConfigError, EvalContext, Evaluator, to_jsonable
from cellssl_chammi.config import ChammiEvaluatorConfig, ChammiSubsetConfig
from cellssl_chammi.subsets import SUBSETS, task_label

if TYPE_CHECKING:
    from cellssl.api import Embedder, EmbeddingTable
    from cellssl_chammi.dataset import ChammiDataset

logger = logging.getLogger(__name__)

CACHE_DIR = "chammi_embeddings"
MARKDOWN_FILE = "chammi_table.md"
CSV_FILE = "chammi_table.csv"


def _same_rows(table: EmbeddingTable, dataset: ChammiDataset) -> bool:
    """Whether ``table`` holds exactly ``dataset``'s rows, in order (by ``ID`` / ``Key`` and ``file_path``)."""
    from cellssl_chammi.dataset import same_rows

    return same_rows(table.metadata, dataset.metadata)


class ChammiEvaluator(Evaluator):
    """The CHAMMI benchmark protocol (see the module docstring)."""

    name = "chammi"

    def __init__(self, config: ChammiEvaluatorConfig) -> None:
        self.config = config
        self._embedder: Embedder | None = None
        self._device = "cpu"

    def _root(self, context: EvalContext) -> str:
        if self.config.root:
            return self.config.root
        data = context.identity.get("dataset") or {}
        root = data.get("root") if isinstance(data, dict) else None
        if not root:
            raise ConfigError("chammi.root", "is not set and the run's data block has no root: set the evaluator's "
                                             "root (or data.root) to the CHAMMI folder")
        return str(root)

    def _run_embedder(self, key: str, context: EvalContext) -> Embedder:
        """The run's embedder (``context.embedder``), loaded once.

        :raises ConfigError: (key ``backbone``) when the context offers none: the table is evaluated alone.
        """
        if self._embedder is None:
            if context.embedder is None:
                raise ConfigError(
                    "backbone", f"the chammi evaluator embeds CHAMMI {SUBSETS[key].title} with the run's model, but "
                                "this evaluation has none (no `backbone:` and `data:` in the run config, or an "
                                "embedding table evaluated alone): run it from a config with the model "
                                "(`backbone:`, `channels:`, `weights:`), e.g. configs/eval/chammi_knn.yaml")
            self._embedder = context.embedder()
        return self._embedder

    def _embeddings(self, key: str, dataset: ChammiDataset, table: EmbeddingTable | None,
                    context: EvalContext, root: str) -> tuple[np.ndarray, str]:
        if self.config.reuse_embeddings and table is not None and _same_rows(table, dataset):
            logger.info("chammi %s: using the run's embedding table", key)
            return table.embeddings, "embeddings"
        out_dir = Path(context.run_dir) / CACHE_DIR / key
        block = {"name": "chammi", "subset": key, "root": root, "bit_depth": self.config.bit_depth}
        embedder = self._run_embedder(key, context).for_dataset(dataset, out_dir, data_block=block)
        embedded = embedder.cached_export(dataset, out_dir, data_block=block, reuse=self.config.reuse_embeddings,
                                          manifest_info={"chammi_subset": key})
        if not _same_rows(embedded, dataset):
            raise RuntimeError(f"embeddings in {out_dir} do not match the rows of CHAMMI {key}")
        return embedded.embeddings, str(out_dir.relative_to(context.run_dir))

    def _classifiers(self) -> dict[str, list[Any]]:
        """Classifier name -> one classifier per fit (``sgd``: one per seed, averaged; the others: one)."""
        from cellssl_chammi.protocol import linear_probe, one_nn, sgd_classifier

        device = self._device
        sgd = self.config.sgd
        makers = {"knn": lambda: [one_nn(self.config.knn_metric, self.config.num_threads)],
                  "linear": lambda: [linear_probe(self.config.linear, device)],
                  "sgd": lambda: [sgd_classifier(sgd.alpha, sgd.max_iter, seed) for seed in sgd.seeds]}
        return {name: makers[name]() for name in self.config.classifiers}

    def _score_all(self, fits: list[Any], prepared: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any],
                                                                            dict[str, float] | None]:
        """Columns (mean over fits), per-task details and, for several fits, the population std of each column."""
        from cellssl_chammi.protocol import evaluate_subset

        cfg = self.config
        per_fit: list[dict[str, float]] = []
        details: dict[str, Any] = {}
        for position, classifier in enumerate(fits):
            columns: dict[str, float] = {}
            for key, (dataset, embeddings, _) in prepared.items():
                subset = SUBSETS[key]
                result = evaluate_subset(embeddings, dataset.metadata, subset, classifier,
                                         leave_out_task=cfg.leave_out_tasks.get(key),
                                         group_column=cfg.group_columns.get(key), source=str(dataset.meta_path))
                for task, score in result.items():
                    columns[task_label(subset, task)] = score.macro_f1
                    if position == 0:
                        entry = dataclasses.asdict(score)
                        if not cfg.per_class_report:
                            entry.pop("per_class")
                        details.setdefault(key, {})[task] = entry
            per_fit.append(columns)
        means = {c: float(np.mean([f[c] for f in per_fit])) for c in per_fit[0]}
        if len(per_fit) == 1:
            return means, details, None
        stds = {c: float(np.std([f[c] for f in per_fit])) for c in per_fit[0]}
        for key, tasks in details.items():
            for task, entry in tasks.items():
                column = task_label(SUBSETS[key], task)
                entry.update(macro_f1=means[column], macro_f1_std=stds[column],
                             macro_f1_per_seed=[f[column] for f in per_fit])
        return means, details, stds

    def evaluate(self, table: EmbeddingTable | None, context: EvalContext) -> dict[str, Any]:
        """Run the protocol; write the Markdown and CSV tables to ``<run_dir>/eval/``.

        :param table: the run's embeddings (used for a subset whose rows it holds exactly); may be ``None``.
        :return: ``{"evaluator", "table", "metrics", "scores", "subsets", "files", "config", "identity"}``.
        :raises cellssl.errors.CellsslError: for a missing / incomplete CHAMMI root, missing columns, a subset
            to embed without a model in ``context`` (``ConfigError`` naming ``backbone``), or a strategy that
            does not take a subset's channels (its ``DataError``).
        """
        from cellssl.api import atomic_write_text
        from cellssl_chammi.dataset import build_chammi_dataset
        from cellssl_chammi.table import SCORE_MISSING, table_row, to_csv, to_markdown

        cfg = self.config
        root = self._root(context)
        self._device = str(context.device)
        self._embedder = None  # the context's, loaded on first need
        prepared = {}
        for key in cfg.subsets:
            dataset = build_chammi_dataset(ChammiSubsetConfig(root=root, bit_depth=cfg.bit_depth,
                                                              check_files=cfg.check_files), key)
            embeddings, source = self._embeddings(key, dataset, table, context, root)
            prepared[key] = (dataset, embeddings, source)
        scores: dict[str, dict[str, dict[str, Any]]] = {}
        rows = []
        spreads: dict[str, dict[str, float]] = {}
        for name, fits in self._classifiers().items():
            columns, scores[name], stds = self._score_all(fits, prepared)
            rows.append(table_row("classifier", name, columns))
            if stds is not None:
                spreads[name] = stds
        for row in rows:
            if row.get(SCORE_MISSING):
                logger.warning("chammi %s: no CHAMMI score: it needs the out-of-distribution tasks %s, which were "
                               "not evaluated (add the missing subsets to `subsets`)", row["classifier"],
                               ", ".join(row[SCORE_MISSING]))
        metrics = {f"{row['classifier']}_{column.replace(' ', '_')}": value
                   for row in rows for column, value in row.items()
                   if column not in ("classifier", "tasks_in_mean", SCORE_MISSING) and value is not None}
        for name, stds in spreads.items():
            metrics.update({f"{name}_{column.replace(' ', '_')}_std": value for column, value in stds.items()})
        eval_dir = Path(context.run_dir) / "eval"
        atomic_write_text(eval_dir / MARKDOWN_FILE, to_markdown(rows))
        atomic_write_text(eval_dir / CSV_FILE, to_csv(rows))
        subsets_info = {
            key: {"rows": len(dataset), "embedding_dim": int(embeddings.shape[1]), "embeddings": source,
                  "channels": list(dataset.channel_names), "metadata": str(dataset.meta_path),
                  "classes": sorted({str(v) for v in dataset.metadata["Label"]})}
            for key, (dataset, embeddings, source) in prepared.items()
        }
        result = {
            "evaluator": self.name,
            "table": rows,
            "metrics": metrics,
            "scores": scores,
            "subsets": subsets_info,
            "seeds": {name: {"seeds": list(cfg.sgd.seeds), "std": stds} for name, stds in spreads.items()},
            "files": {"markdown": f"eval/{MARKDOWN_FILE}", "csv": f"eval/{CSV_FILE}"},
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_chammi_evaluator(config: ChammiEvaluatorConfig) -> ChammiEvaluator:
    """Factory registered under the evaluator name ``chammi``."""
    return ChammiEvaluator(config)
