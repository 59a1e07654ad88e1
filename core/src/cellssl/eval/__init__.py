"""Evaluation of frozen embeddings: sharded Parquet embedding tables, faiss kNN, metrics, splits.

The evaluator contract is :class:`cellssl.eval.base.Evaluator`; the built-in ``knn`` evaluator lives in
:mod:`cellssl.eval.knn_evaluator`. Importing this package (or the config dataclasses) is cheap: pandas,
pyarrow, faiss and scikit-learn are imported by the functions that use them, and the names below are
resolved lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmbeddingTable": "cellssl.eval.embeddings",
    "EmbeddingWriter": "cellssl.eval.embeddings",
    "read_embeddings": "cellssl.eval.embeddings",
    "EvalContext": "cellssl.eval.base",
    "EvalLabels": "cellssl.eval.base",
    "Evaluator": "cellssl.eval.base",
    "labels_from_metadata": "cellssl.eval.base",
    "write_result_json": "cellssl.eval.base",
    "SplitConfig": "cellssl.eval.splits",
    "make_split": "cellssl.eval.splits",
    "knn_classify": "cellssl.eval.knn",
    "knn_evaluate": "cellssl.eval.knn",
    "KNNEvaluator": "cellssl.eval.knn_evaluator",
    "KNNEvaluatorConfig": "cellssl.eval.knn_evaluator",
    "build_knn_evaluator": "cellssl.eval.knn_evaluator",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cellssl.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
