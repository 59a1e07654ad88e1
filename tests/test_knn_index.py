"""faiss kNN indexes: IVF against the exact search, recall@k, the short-probe fallback, GPU selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError
from cellssl.eval.base import EvalContext
from cellssl.eval.engines.knn import knn_classify, knn_search
from cellssl.eval.engines.knn_index import (
    KNNIndexConfig,
    build_index,
    default_nlist,
    faiss_gpus,
    index_report,
    recall_at_k,
    search,
    use_gpu,
)
from cellssl.eval.knn import KNNEvaluatorConfig, build_knn_evaluator


def _clustered(n: int, dim: int = 16, centres: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim)).astype(np.float32) * 3
    labels = rng.integers(0, centres, size=n)
    return (means[labels] + rng.normal(size=(n, dim)).astype(np.float32)), labels


def test_recall_at_k_by_hand() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[2, 1, 9], [-1, -1, -1]])
    assert recall_at_k(approx, exact, 3) == pytest.approx((2 / 3 + 0) / 2)
    assert recall_at_k(approx, exact, 1) == pytest.approx(0.0)  # 2 is not the exact 1st neighbour
    assert recall_at_k(approx, exact, 2) == pytest.approx(0.5)


def test_ivf_probing_every_cell_is_exact_and_fewer_cells_lose_recall() -> None:
    train, _ = _clustered(6000)
    test, _ = _clustered(300, seed=1)
    exact_sim, exact_ids = knn_search(train, test, 10)
    full = KNNIndexConfig(kind="ivf", nlist=64, nprobe=64, device="cpu")
    sim, ids = knn_search(train, test, 10, index=full)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(sim, exact_sim, atol=1e-5)
    report = index_report(train, test, [1, 10], "cosine", KNNIndexConfig(kind="ivf", nlist=64, nprobe=2,
                                                                         device="cpu", recall_sample=200))
    assert (report["kind"], report["nlist"], report["nprobe"], report["device"]) == ("ivf", 64, 2, "cpu")
    assert report["recall"]["rows"] == 200
    assert 0.3 < report["recall"]["recall@10"] < 1.0  # approximate, and says so
    assert index_report(train, test, [1], "cosine", KNNIndexConfig(device="cpu")) == {"kind": "exact",
                                                                                       "device": "cpu"}


def test_queries_whose_cells_hold_fewer_than_k_rows_fall_back_to_exact() -> None:
    train, _ = _clustered(2000, centres=50)
    test, _ = _clustered(50, centres=50, seed=2)
    config = KNNIndexConfig(kind="ivf", nlist=50, nprobe=1, device="cpu")
    built = build_index(train / np.linalg.norm(train, axis=1, keepdims=True), "cosine", config, 100)
    _, raw = search(built, test / np.linalg.norm(test, axis=1, keepdims=True), 100)
    assert (raw < 0).any()  # one cell of ~40 rows cannot give 100 neighbours
    _, ids = knn_search(train, test, 100, index=config)
    _, exact = knn_search(train, test, 100)
    short = (raw < 0).any(axis=1)
    assert (ids >= 0).all()
    np.testing.assert_array_equal(ids[short], exact[short])


def test_ivf_knn_classification_matches_exact_on_separable_data() -> None:
    train, train_y = _clustered(4000, centres=8)
    test, test_y = _clustered(200, centres=8, seed=3)
    ivf = KNNIndexConfig(kind="ivf", nlist=32, nprobe=8, device="cpu")
    a = knn_classify(train, train_y, test, [1, 20], index=ivf)
    b = knn_classify(train, train_y, test, [1, 20])
    for k in (1, 20):
        assert (a[k].labels == b[k].labels).mean() > 0.97
        assert (a[k].labels == test_y).mean() >= (b[k].labels == test_y).mean() - 0.02


def test_index_config_and_device_errors() -> None:
    assert default_nlist(1_000_000) == 4000 and default_nlist(100) == 2 and default_nlist(10) == 1
    with pytest.raises(ValueError, match=r"index\.kind must be one of"):
        KNNIndexConfig(kind="hnsw")
    with pytest.raises(ConfigError, match=r"index.nlist.*is 500 but there are only 100 training rows"):
        build_index(np.ones((100, 4), np.float32), "l2", KNNIndexConfig(kind="ivf", nlist=500))
    if faiss_gpus() == 0:
        assert not use_gpu(KNNIndexConfig(device="auto"), 10)
        with pytest.raises(ConfigError, match="is 'cuda' but the installed faiss has no GPU support"):
            use_gpu(KNNIndexConfig(device="cuda"), 10)
    else:  # pragma: no cover - faiss-gpu machines
        assert use_gpu(KNNIndexConfig(device="auto"), 10) and not use_gpu(KNNIndexConfig(device="auto"), 4096)


def test_knn_evaluator_reports_ivf_recall(tmp_path: Path) -> None:
    x, y = _clustered(3000, centres=6, seed=4)
    table = EmbeddingTable(pd.DataFrame({"label": y.astype(str)}), x)
    cfg = KNNEvaluatorConfig(label_column="label", ks=[1, 20], index={"kind": "ivf", "nlist": 16, "nprobe": 4,
                                                                      "device": "cpu", "recall_sample": 100})
    result = build_knn_evaluator(cfg).evaluate(table, EvalContext(run_dir=tmp_path))
    index = result["index"]
    assert (index["kind"], index["nlist"], index["nprobe"], index["recall"]["rows"]) == ("ivf", 16, 4, 100)
    assert 0.5 < index["recall"]["recall@20"] <= 1.0 and 0.5 < index["recall"]["recall@1"] <= 1.0
    assert result["metrics"]["k20_macro_f1"] > 0.9
