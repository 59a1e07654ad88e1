"""k-nearest-neighbour classification with faiss, DINOv2 style.

Protocol (:func:`knn_classify`):

- Search: exact, on CPU, by default; ``index`` (:class:`~cellssl.eval.engines.knn_index.KNNIndexConfig`) selects a
  faiss GPU index and/or an approximate IVF index for training sets too large for an exact search.
  ``metric="cosine"``: rows are L2-normalised (all-zero rows stay zero, with similarity 0 to everything)
  and searched with ``faiss.IndexFlatIP``; the similarity is the cosine.
  ``metric="l2"``: ``faiss.IndexFlatL2``; the similarity is minus the Euclidean distance.
  The ``max(ks)`` nearest neighbours are searched once, in batches of ``batch_size`` test rows, and
  every ``k`` reuses the first ``k`` of them.
- ``voting="weighted"``: neighbour ``j`` of a test row gets weight ``softmax(sim / temperature)_j``
  over its ``k`` neighbours; a class's score is the sum of the weights of the neighbours with that
  label (scores sum to 1).
- ``voting="majority"``: every neighbour weighs ``1 / k`` (scores are vote fractions).
- Single-label prediction: the class with the highest score; ties go to the smallest class index
  (as in scikit-learn's ``KNeighborsClassifier``).
- Multi-label (``multilabel=True``, labels an ``(n, L)`` 0/1 matrix): label ``l``'s score is the
  weighted fraction of neighbours carrying it; it is predicted when the score is ``>= 0.5``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellssl.errors import ConfigError, DataError
from cellssl.eval.engines.knn_index import KNNIndexConfig, build_index, search
from cellssl.eval.engines.metrics import multiclass_metrics, multilabel_metrics

logger = logging.getLogger(__name__)

METRICS = ("cosine", "l2")
VOTINGS = ("weighted", "majority")
MULTILABEL_THRESHOLD = 0.5


@dataclass
class KNNPrediction:
    """Predictions for one ``k``.

    :ivar k: number of neighbours.
    :ivar labels: ``(n_test,)`` int64 class indices, or ``(n_test, L)`` bool for multi-label.
    :ivar scores: ``(n_test, C)`` (or ``(n_test, L)``) float32 class scores (see the module docstring).
    """

    k: int
    labels: np.ndarray
    scores: np.ndarray


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def faiss_threads(num_threads: int | None) -> Iterator[int]:
    """Run the block with faiss using ``num_threads`` OpenMP threads, then restore the previous setting.

    ``None`` uses faiss's current maximum capped at :func:`available_cpus` (so ``OMP_NUM_THREADS`` and
    container CPU limits are respected).
    """
    import faiss

    previous = faiss.omp_get_max_threads()
    threads = max(1, num_threads if num_threads is not None else min(previous, available_cpus()))
    faiss.omp_set_num_threads(threads)
    try:
        yield threads
    finally:
        faiss.omp_set_num_threads(previous)


def as_feature_matrix(x: Any, what: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, D)`` array; :class:`DataError` naming ``what`` if not 2-D or not finite."""
    array = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if array.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (n, D), got shape {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise DataError(f"{what} contain NaN or inf (first in row {int(np.flatnonzero(~finite)[0])})")
    return array


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


def check_ks(ks: Sequence[int], n_train: int, key: str = "ks") -> list[int]:
    """Validate ``ks`` against the number of training rows; returns them as a list of ints.

    :raises ConfigError: naming ``key`` when ``ks`` is empty, holds a value < 1, or a ``k`` exceeds
        ``n_train``.
    """
    values = [int(k) for k in ks]
    if not values:
        raise ConfigError(key, "needs at least one k")
    if min(values) < 1:
        raise ConfigError(key, f"every k must be >= 1, got {values}")
    if max(values) > n_train:
        raise ConfigError(
            key,
            f"k={max(values)} is larger than the number of training rows ({n_train}); "
            "lower k or give the evaluation more training rows",
        )
    return values


def knn_search(
    train_x: Any,
    test_x: Any,
    k: int,
    metric: str = "cosine",
    batch_size: int = 4096,
    num_threads: int | None = None,
    index: KNNIndexConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` search of every test row among the training rows: exact by default, or with the faiss index
    ``index`` describes (IVF, GPU; :mod:`cellssl.eval.engines.knn_index`). Test rows for which an IVF search found
    fewer than ``k`` rows in its cells are searched exactly.

    :return: ``(similarity, index)``, both ``(n_test, k)``, best first; similarity is the cosine, or
        minus the Euclidean distance for ``metric="l2"``.
    :raises DataError: when the inputs are not 2-D, hold NaN/inf, or their dimensions differ.
    :raises ConfigError: when ``k`` exceeds the number of training rows.
    :raises ValueError: for an unknown ``metric`` or a non-positive ``batch_size``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    train = as_feature_matrix(train_x, "training embeddings")
    test = as_feature_matrix(test_x, "test embeddings")
    if train.shape[1] != test.shape[1]:
        raise DataError(
            f"training embeddings have dimension {train.shape[1]}, test embeddings {test.shape[1]}"
        )
    check_ks([k], train.shape[0])
    if metric == "cosine":
        train = _normalise(train)
    config = index if index is not None else KNNIndexConfig(device="cpu")
    similarity = np.empty((test.shape[0], k), dtype=np.float32)
    neighbours = np.empty((test.shape[0], k), dtype=np.int64)
    with faiss_threads(num_threads) as threads:
        built = build_index(train, metric, config, k)
        logger.debug("faiss %s %s search on %s: %d x %d, k=%d, %d threads", config.kind, metric,
                     built.info["device"], test.shape[0], train.shape[0], k, threads)
        exact = None
        for start in range(0, test.shape[0], batch_size):
            block = test[start : start + batch_size]
            if metric == "cosine":
                block = _normalise(block)
            scores, ids = search(built, block, k)
            short = (ids < 0).any(axis=1)
            if short.any():  # an IVF probe held fewer than k rows: search those queries exactly
                exact = exact or build_index(train, metric, KNNIndexConfig(device="cpu"), k)
                scores[short], ids[short] = search(exact, block[short], k)
            if metric == "l2":
                scores = -np.sqrt(np.maximum(scores, 0.0))
            similarity[start : start + len(block)] = scores
            neighbours[start : start + len(block)] = ids
    return similarity, neighbours


def _weights(similarity: np.ndarray, temperature: float, voting: str) -> np.ndarray:
    if voting == "majority":
        return np.full(similarity.shape, 1.0 / similarity.shape[1], dtype=np.float64)
    logits = similarity.astype(np.float64) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def knn_classify(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    ks: Sequence[int],
    metric: str = "cosine",
    temperature: float = 0.07,
    voting: str = "weighted",
    multilabel: bool = False,
    num_classes: int | None = None,
    batch_size: int = 4096,
    num_threads: int | None = None,
    index: KNNIndexConfig | None = None,
) -> dict[int, KNNPrediction]:
    """Classify every test row by its nearest training rows, for each ``k`` in ``ks``.

    :param train_x: ``(n_train, D)`` training embeddings.
    :param train_y: ``(n_train,)`` class indices ``0..C-1``, or ``(n_train, L)`` 0/1 when ``multilabel``.
    :param test_x: ``(n_test, D)`` test embeddings.
    :param ks: neighbour counts; the search runs once for ``max(ks)``.
    :param metric: ``cosine`` or ``l2``. :param temperature: softmax temperature of weighted voting.
    :param voting: ``weighted`` or ``majority``. :param multilabel: labels are an indicator matrix.
    :param num_classes: ``C`` (default ``max(train_y) + 1``); ignored for multi-label.
    :param batch_size: test rows per faiss search. :param num_threads: faiss threads (see
        :func:`faiss_threads`). :param index: the faiss index (default: exact, CPU).
    :return: ``{k: KNNPrediction}`` in the order of ``ks``.
    :raises ConfigError: (key ``ks``) when ``ks`` is empty, holds k < 1 or k > n_train.
    :raises DataError: for malformed embeddings (see :func:`knn_search`).
    :raises ValueError: for unknown ``metric`` / ``voting``, ``temperature <= 0`` or malformed labels.
    """
    if voting not in VOTINGS:
        raise ValueError(f"voting must be one of {VOTINGS}, got {voting!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labels = np.asarray(train_y)
    n_train = np.shape(train_x)[0]
    if labels.shape[0] != n_train:
        raise ValueError(f"got {labels.shape[0]} training labels for {n_train} training rows")
    if multilabel:
        if labels.ndim != 2 or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"multi-label train_y must be an (n, L) 0/1 matrix, got shape {labels.shape}")
        labels = labels.astype(np.float64)
    else:
        if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
            raise ValueError(f"train_y must be (n,) integer class indices, got {labels.dtype} {labels.shape}")
        if labels.size and labels.min() < 0:
            raise ValueError("class indices must be >= 0")
        num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
        if labels.size and labels.max() >= num_classes:
            raise ValueError(f"class index {labels.max()} is out of range for num_classes={num_classes}")
    ks = check_ks(ks, n_train)
    similarity, neighbours = knn_search(train_x, test_x, max(ks), metric, batch_size, num_threads, index)
    n_test = similarity.shape[0]
    results: dict[int, KNNPrediction] = {}
    for k in ks:
        weights = _weights(similarity[:, :k], temperature, voting)
        if multilabel:
            scores = np.einsum("bk,bkl->bl", weights, labels[neighbours[:, :k]])
            results[k] = KNNPrediction(k, scores >= MULTILABEL_THRESHOLD - 1e-9, scores.astype(np.float32))
            continue
        assert num_classes is not None
        flat = (np.arange(n_test)[:, None] * num_classes + labels[neighbours[:, :k]]).ravel()
        scores = np.bincount(flat, weights=weights.ravel(), minlength=n_test * num_classes)
        scores = scores.reshape(n_test, num_classes)
        results[k] = KNNPrediction(k, scores.argmax(axis=1).astype(np.int64), scores.astype(np.float32))
    return results


def knn_evaluate(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    ks: Sequence[int],
    metric: str = "cosine",
    temperature: float = 0.07,
    voting: str = "weighted",
    multilabel: bool = False,
    class_names: Sequence[str] | None = None,
    per_class_report: bool = True,
    batch_size: int = 4096,
    num_threads: int | None = None,
    index: KNNIndexConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """Run :func:`knn_classify` and score each ``k`` with :mod:`cellssl.eval.engines.metrics`.

    :param test_y: ``(n_test,)`` class indices, or ``(n_test, L)`` 0/1 when ``multilabel``.
    :param class_names: names of the ``C`` classes (or ``L`` labels); also fixes ``C``.
    :return: ``{str(k): metrics}`` where metrics is :func:`multiclass_metrics` or
        :func:`multilabel_metrics` output.
    :raises: as :func:`knn_classify`.
    """
    num_classes = len(class_names) if class_names is not None and not multilabel else None
    if num_classes is None and not multilabel:
        both = np.concatenate([np.asarray(train_y).ravel(), np.asarray(test_y).ravel()])
        num_classes = int(both.max()) + 1 if both.size else 1
    predictions = knn_classify(train_x, train_y, test_x, ks, metric=metric, temperature=temperature,
                               voting=voting, multilabel=multilabel, num_classes=num_classes,
                               batch_size=batch_size, num_threads=num_threads, index=index)
    results: dict[str, dict[str, Any]] = {}
    for k, prediction in predictions.items():
        if multilabel:
            results[str(k)] = multilabel_metrics(test_y, prediction.labels, class_names,
                                                 per_label=per_class_report)
        else:
            results[str(k)] = multiclass_metrics(test_y, prediction.labels, class_names,
                                                 per_class=per_class_report)
    return results
