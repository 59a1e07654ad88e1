"""faiss indexes for kNN: exact (flat) or inverted-file (IVF), on the CPU or on faiss GPUs.

``index: {kind: exact}`` (the default) is a brute-force search: exact, and the right choice up to a few
hundred thousand training rows. ``kind: ivf`` clusters the training rows into ``nlist`` cells with k-means
(trained on at most ``train_size`` rows) and searches only the ``nprobe`` cells nearest to each query: much
faster on millions of rows, at the price of missing some true neighbours. Its recall@k against the exact
search is measured on ``recall_sample`` test rows (:func:`measure_recall`) and reported with the results.

``device: auto`` puts the index on faiss GPUs when the installed faiss has GPU support and sees a GPU
(``faiss-gpu``), else on the CPU; ``cuda`` requires a GPU, ``cpu`` never uses one. GPU searches are limited to
``k <= 2048`` by faiss; larger ``k`` run on the CPU.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellssl.errors import ConfigError

logger = logging.getLogger(__name__)

INDEX_KINDS = ("exact", "ivf")
INDEX_DEVICES = ("auto", "cpu", "cuda")
GPU_MAX_K = 2048


@dataclass
class KNNIndexConfig:
    """``index:`` of the kNN evaluator (see the module docstring).

    :ivar kind: ``exact`` or ``ivf``. :ivar nlist: IVF cells (default ``4 * sqrt(n_train)``, at most
        ``n_train / 39`` so that k-means has 39 rows per centroid, as faiss asks).
    :ivar nprobe: cells searched per query. :ivar train_size: rows used to train the IVF centroids (default
        ``min(n_train, 256 * nlist)``). :ivar device: ``auto``, ``cpu`` or ``cuda`` (faiss GPU).
    :ivar recall_sample: test rows on which IVF recall@k is measured against the exact search (0: skip).
    :ivar seed: seed of the training-row and recall-row draws.
    """

    kind: str = "exact"
    nlist: int | None = None
    nprobe: int = 16
    train_size: int | None = None
    device: str = "auto"
    recall_sample: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index.kind must be one of {INDEX_KINDS}, got {self.kind!r}")
        if self.device not in INDEX_DEVICES:
            raise ValueError(f"index.device must be one of {INDEX_DEVICES}, got {self.device!r}")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"index.nlist must be >= 1 or null, got {self.nlist}")
        if self.nprobe < 1 or self.recall_sample < 0:
            raise ValueError(f"index.nprobe must be >= 1 and recall_sample >= 0, got {self.nprobe}, "
                             f"{self.recall_sample}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"index.train_size must be >= 1 or null, got {self.train_size}")


def faiss_gpus() -> int:
    """Number of GPUs the installed faiss can use (0 for faiss-cpu)."""
    import faiss

    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # a GPU build without a usable driver
        return 0


def use_gpu(config: KNNIndexConfig, k: int) -> bool:
    """Whether the search runs on a faiss GPU.

    :raises ConfigError: for ``device: cuda`` without a faiss GPU.
    """
    gpus = faiss_gpus()
    if config.device == "cuda" and gpus == 0:
        raise ConfigError("index.device", "is 'cuda' but the installed faiss has no GPU support or sees no GPU; "
                                          "install faiss-gpu or use 'auto' / 'cpu'.")
    if config.device == "cpu" or gpus == 0:
        return False
    if k > GPU_MAX_K:
        logger.warning("k=%d exceeds faiss's GPU limit of %d: searching on the CPU", k, GPU_MAX_K)
        return False
    return True


def default_nlist(n_train: int) -> int:
    """``4 * sqrt(n)`` cells, with at least 39 training rows per cell, at least 1."""
    return max(1, min(int(4 * math.sqrt(n_train)), n_train // 39))


@dataclass
class BuiltIndex:
    """A filled faiss index and how it was built (``info``: kind, device, nlist, nprobe, seconds)."""

    index: Any
    info: dict[str, Any]
    keep: tuple[Any, ...] = ()  # objects the index uses (IVF quantizer, GPU resources), kept alive with it


def build_index(train: np.ndarray, metric: str, config: KNNIndexConfig, k: int = 1) -> BuiltIndex:
    """A faiss index over ``train`` (float32, already L2-normalised for ``metric="cosine"``).

    :param metric: ``cosine`` (inner product) or ``l2``. :param k: the largest k to be searched (GPU limit).
    :raises ConfigError: naming ``index.nlist`` when it exceeds the number of training rows.
    """
    import faiss

    start = time.perf_counter()
    keep: list[Any] = []
    n, dim = train.shape
    inner = metric == "cosine"
    info: dict[str, Any] = {"kind": config.kind, "metric": metric, "train_rows": int(n)}
    if config.kind == "exact":
        index = faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
    else:
        nlist = config.nlist or default_nlist(n)
        if nlist > n:
            raise ConfigError("index.nlist", f"is {nlist} but there are only {n} training rows; lower it or use "
                                             "index.kind: exact")
        quantizer = faiss.IndexFlatIP(dim) if inner else faiss.IndexFlatL2(dim)
        faiss_metric = faiss.METRIC_INNER_PRODUCT if inner else faiss.METRIC_L2
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric)
        keep.append(quantizer)
        sample = min(n, config.train_size or 256 * nlist)
        rows = np.random.default_rng(config.seed).choice(n, size=sample, replace=False) if sample < n else None
        index.train(train if rows is None else train[np.sort(rows)])
        nprobe = min(config.nprobe, nlist)
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)
        info.update(nlist=int(nlist), nprobe=int(nprobe), trained_on=int(sample))
    gpu = use_gpu(config, k)
    if gpu:
        resources = faiss.StandardGpuResources()
        keep.extend([resources, index])
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        if config.kind == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", info["nprobe"])
    index.add(train)
    info.update(device="cuda" if gpu else "cpu", build_seconds=round(time.perf_counter() - start, 3))
    return BuiltIndex(index, info, tuple(keep))


def search(built: BuiltIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the ``k`` best training rows per query; ``ids`` is -1 where an IVF search found
    fewer than ``k`` rows in its ``nprobe`` cells."""
    scores, ids = built.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over rows of ``|approx top-k ∩ exact top-k| / k``."""
    if approx_ids.shape[0] == 0:
        return float("nan")
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist()) - {-1}) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)


def measure_recall(train: np.ndarray, test: np.ndarray, ks: list[int], metric: str,
                   built: BuiltIndex, config: KNNIndexConfig) -> dict[str, Any]:
    """recall@k of ``built`` against an exact search, on ``config.recall_sample`` random test rows.

    :param train: / :param test: float32 rows, normalised like the index's (cosine: L2-normalised).
    :return: ``{"rows": n, "recall@<k>": value, ...}`` (empty when ``recall_sample`` is 0).
    """
    if config.recall_sample == 0 or test.shape[0] == 0:
        return {}
    rows = min(config.recall_sample, test.shape[0])
    picked = np.sort(np.random.default_rng(config.seed + 1).choice(test.shape[0], size=rows, replace=False))
    sample = test[picked]
    k = max(ks)
    exact = build_index(train, metric, KNNIndexConfig(kind="exact", device="cpu"), k)
    _, exact_ids = search(exact, sample, k)
    _, approx_ids = search(built, sample, k)
    report: dict[str, Any] = {"rows": int(rows)}
    for kk in sorted(set(ks)):
        report[f"recall@{kk}"] = recall_at_k(approx_ids, exact_ids, kk)
    return report


def index_report(train_x: Any, test_x: Any, ks: list[int], metric: str, config: KNNIndexConfig) -> dict[str, Any]:
    """What the kNN evaluator reports about its index: kind and device, and for IVF its parameters and the
    recall@k of every ``k`` against the exact search on ``recall_sample`` test rows (the IVF index is built
    again for this measurement)."""
    train = np.ascontiguousarray(np.asarray(train_x, dtype=np.float32))
    test = np.ascontiguousarray(np.asarray(test_x, dtype=np.float32))
    k = min(max(ks), train.shape[0])
    if config.kind == "exact":
        return {"kind": "exact", "device": "cuda" if use_gpu(config, k) else "cpu"}
    if metric == "cosine":
        train = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), np.finfo(np.float32).tiny)
        test = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    built = build_index(train, metric, config, k)
    report = dict(built.info)
    recall = measure_recall(train, test, [kk for kk in ks if kk <= k], metric, built, config)
    if recall:
        report["recall"] = recall
        logger.info("knn IVF index (nlist %d, nprobe %d): %s", report["nlist"], report["nprobe"],
                    ", ".join(f"{key} {value:.3f}" for key, value in recall.items() if key.startswith("recall@")))
    return report
