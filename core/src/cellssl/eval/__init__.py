"""Evaluators of frozen embeddings, one module per registered evaluator name.

``cellssl.eval.<name>`` holds the evaluator registered as ``<name>`` (``knn``, ``linear``, ``logistic_regression``,
``cross_validation``, ``retrieval_map``, ``nsc_nscb``, ``regression``, ``umap``, ``attention_maps``,
``channel_attribution``), with its ``*_config`` / ``*_figures`` / ``*_targets`` companions; the contract is
:class:`cellssl.eval.base.Evaluator` and :class:`cellssl.eval.base.EvalContext`. The engines the evaluators share
(faiss kNN and its indexes, the linear probe and its heads, metrics, splits, profiles, average precision, figures)
live in :mod:`cellssl.eval.engines`; embedding tables (read, write, export) in :mod:`cellssl.embed`.
Importing this package (or the config dataclasses) is cheap: pandas, pyarrow, faiss and scikit-learn are
imported by the functions that use them, and the names below are resolved lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EmbeddingTable": "cellssl.embed.store",
    "EmbeddingWriter": "cellssl.embed.store",
    "read_embeddings": "cellssl.embed.store",
    "EvalContext": "cellssl.eval.base",
    "EvalLabels": "cellssl.eval.base",
    "Evaluator": "cellssl.eval.base",
    "labels_from_metadata": "cellssl.eval.base",
    "write_result_json": "cellssl.eval.base",
    "SplitConfig": "cellssl.eval.engines.splits",
    "make_split": "cellssl.eval.engines.splits",
    "knn_classify": "cellssl.eval.engines.knn",
    "knn_evaluate": "cellssl.eval.engines.knn",
    "KNNEvaluator": "cellssl.eval.knn",
    "KNNEvaluatorConfig": "cellssl.eval.knn",
    "build_knn_evaluator": "cellssl.eval.knn",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cellssl.eval' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
