"""faiss kNN classification (cellssl.eval.engines.knn) and the ``knn`` evaluator (cellssl.eval.knn)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from cellssl.embed.store import EmbeddingTable, EmbeddingWriter, read_embeddings
from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext, write_result_json
from cellssl.eval.engines.knn import knn_classify, knn_evaluate, knn_search
from cellssl.eval.engines.splits import SplitConfig
from cellssl.eval.knn import KNNEvaluatorConfig, build_knn_evaluator

# Four 2-D training points and one query, small enough to check by hand.
TRAIN_X = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
TRAIN_Y = np.array([0, 1, 1, 0])
QUERY = np.array([[2.0, 0.0]], dtype=np.float32)  # cosine to the train points: 1, 0.8, 0, -1


def _softmax(values: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_weighted_cosine_vote_matches_hand_computation() -> None:
    result = knn_classify(TRAIN_X, TRAIN_Y, QUERY, ks=[1, 3], temperature=0.07)
    w = _softmax([1.0, 0.8, 0.0], 0.07)
    np.testing.assert_allclose(result[3].scores[0], [w[0], w[1] + w[2]], rtol=1e-5)
    assert result[3].scores[0, 0] == pytest.approx(0.9457, abs=1e-4)
    assert result[3].labels.tolist() == [0]
    assert result[1].labels.tolist() == [0]
    np.testing.assert_allclose(result[1].scores[0], [1.0, 0.0])


def test_temperature_changes_the_weighted_winner() -> None:
    # At T = 1 the two class-1 neighbours (0.8, 0.0) outweigh the single class-0 one (1.0).
    result = knn_classify(TRAIN_X, TRAIN_Y, QUERY, ks=[3], temperature=1.0)
    w = _softmax([1.0, 0.8, 0.0], 1.0)
    np.testing.assert_allclose(result[3].scores[0], [w[0], w[1] + w[2]], rtol=1e-5)
    assert result[3].scores[0, 1] == pytest.approx(0.5427, abs=1e-4)
    assert result[3].labels.tolist() == [1]


def test_majority_vote_and_tie_break_to_smallest_class() -> None:
    result = knn_classify(TRAIN_X, TRAIN_Y, QUERY, ks=[3, 4], voting="majority")
    np.testing.assert_allclose(result[3].scores[0], [1 / 3, 2 / 3], rtol=1e-6)
    assert result[3].labels.tolist() == [1]
    np.testing.assert_allclose(result[4].scores[0], [0.5, 0.5])
    assert result[4].labels.tolist() == [0]  # 2 votes each: the smaller class index wins


def test_l2_uses_minus_euclidean_distance_as_similarity() -> None:
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    similarity, index = knn_search(TRAIN_X, query, k=3, metric="l2")
    assert index.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(similarity[0], [0.0, -math.sqrt(0.4), -math.sqrt(2.0)], atol=1e-6)
    result = knn_classify(TRAIN_X, TRAIN_Y, query, ks=[3], metric="l2", temperature=0.5)
    w = _softmax([0.0, -math.sqrt(0.4), -math.sqrt(2.0)], 0.5)
    np.testing.assert_allclose(result[3].scores[0], [w[0], w[1] + w[2]], rtol=1e-5)


def test_zero_vector_has_cosine_zero_and_does_not_crash() -> None:
    similarity, _ = knn_search(TRAIN_X, np.zeros((1, 2), dtype=np.float32), k=4)
    np.testing.assert_allclose(similarity, 0.0)


@pytest.mark.parametrize(("metric", "sk_metric"), [("cosine", "cosine"), ("l2", "euclidean")])
def test_majority_matches_sklearn(metric: str, sk_metric: str) -> None:
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(400, 16)).astype(np.float32)
    train_y = rng.integers(0, 5, size=400)
    test_x = rng.normal(size=(150, 16)).astype(np.float32)
    ks = [1, 4, 10]
    ours = knn_classify(train_x, train_y, test_x, ks, metric=metric, voting="majority", batch_size=32)
    for k in ks:
        reference = KNeighborsClassifier(n_neighbors=k, metric=sk_metric, algorithm="brute").fit(train_x, train_y)
        np.testing.assert_array_equal(ours[k].labels, reference.predict(test_x))
        np.testing.assert_allclose(ours[k].scores, reference.predict_proba(test_x), atol=1e-6)


def test_batch_size_and_threads_do_not_change_results() -> None:
    import faiss

    rng = np.random.default_rng(1)
    train_x, test_x = rng.normal(size=(200, 8)), rng.normal(size=(57, 8))
    train_y = rng.integers(0, 3, size=200)
    before = faiss.omp_get_max_threads()
    one = knn_classify(train_x, train_y, test_x, [5], batch_size=10, num_threads=1)
    many = knn_classify(train_x, train_y, test_x, [5], batch_size=4096)
    np.testing.assert_allclose(one[5].scores, many[5].scores, rtol=1e-5)
    assert faiss.omp_get_max_threads() == before


def test_multilabel_vote_fractions_and_threshold() -> None:
    train_x = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [-1, 0]], dtype=np.float32)
    train_y = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0], [1, 1, 1]])
    result = knn_classify(train_x, train_y, np.array([[1.0, 0.0]]), [4], voting="majority", multilabel=True)
    np.testing.assert_allclose(result[4].scores[0], [0.5, 0.25, 0.5])
    assert result[4].labels.tolist() == [[True, False, True]]  # 0.5 counts as predicted
    weighted = knn_classify(train_x, train_y, np.array([[1.0, 0.0]]), [2], temperature=0.1, multilabel=True)
    sims = (train_x[:2] @ np.array([1.0, 0.0])) / np.linalg.norm(train_x[:2], axis=1)
    w = _softmax(list(sims), 0.1)
    np.testing.assert_allclose(weighted[2].scores[0], [1.0, w[1], w[0]], rtol=1e-5)
    assert weighted[2].labels.tolist() == [[True, w[1] >= 0.5, w[0] >= 0.5]]


def test_k_larger_than_train_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"k=5 is larger than the number of training rows \(4\)"):
        knn_classify(TRAIN_X, TRAIN_Y, QUERY, ks=[1, 5])


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(DataError, match="dimension 2, test embeddings 3"):
        knn_classify(TRAIN_X, TRAIN_Y, np.ones((1, 3)), ks=[1])
    with pytest.raises(DataError, match=r"test embeddings contain NaN or inf \(first in row 1\)"):
        knn_classify(TRAIN_X, TRAIN_Y, np.array([[1.0, 0.0], [np.nan, 0.0]]), ks=[1])
    with pytest.raises(ValueError, match="voting must be one of"):
        knn_classify(TRAIN_X, TRAIN_Y, QUERY, ks=[1], voting="soft")
    with pytest.raises(ValueError, match="got 3 training labels for 4 training rows"):
        knn_classify(TRAIN_X, TRAIN_Y[:3], QUERY, ks=[1])


def test_knn_evaluate_scores_each_k_against_sklearn() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 10)) * 3
    y = rng.integers(0, 3, size=300)
    x = centres[y] + rng.normal(size=(300, 10))
    result = knn_evaluate(x[:200], y[:200], x[200:], y[200:], [1, 7], class_names=["a", "b", "c"])
    assert set(result) == {"1", "7"}
    pred = knn_classify(x[:200], y[:200], x[200:], [7])[7].labels
    assert result["7"]["macro_f1"] == pytest.approx(f1_score(y[200:], pred, average="macro"))
    assert set(result["7"]["per_class"]) == {"a", "b", "c"}
    json.dumps(result)


# ----------------------------------------------------------------------------- the knn evaluator


def _clustered_table(n: int = 120, seed: int = 0) -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (np.eye(3, 6)[y] * 4 + rng.normal(size=(n, 6))).astype(np.float32)
    meta = pd.DataFrame({
        "phase": np.array(["G1", "G2", "S"], dtype=object)[y],
        "fov_id": np.arange(n) // 6,
        "tags": np.array(["a|b", "b", "a"], dtype=object)[y],
    })
    meta.loc[[0, 5], "phase"] = None
    return EmbeddingTable(meta, x)


def test_evaluator_multiclass_group_split_and_result_file(tmp_path: Path) -> None:
    cfg = KNNEvaluatorConfig(label_column="phase", ks=[1, 5],
                             split=SplitConfig(mode="group", column="fov_id", test_fraction=0.25))
    context = EvalContext(run_dir=tmp_path, identity={"model": "toy"})
    result = build_knn_evaluator(cfg).evaluate(_clustered_table(), context)
    assert result["task"] == "multiclass"
    assert result["labels"]["names"] == ["G1", "G2", "S"]
    assert result["labels"]["rows_missing_label"] == 2 and result["labels"]["rows_used"] == 118
    assert result["split"]["train_rows"] + result["split"]["test_rows"] == 118
    assert result["split"]["test_groups"] == 5 and result["split"]["train_groups"] == 15
    assert result["metrics"]["k5_macro_f1"] > 0.9
    assert result["identity"] == {"model": "toy"} and result["config"]["split"]["column"] == "fov_id"
    path = write_result_json(result, tmp_path, "knn")
    assert path == tmp_path / "eval" / "knn.json"
    assert json.loads(path.read_text())["metrics"] == result["metrics"]


def test_evaluator_multilabel_from_separated_column_via_context(tmp_path: Path) -> None:
    cfg = KNNEvaluatorConfig(ks=[3])
    context = EvalContext(run_dir=tmp_path, label_columns=["tags"], label_separator="|")
    result = build_knn_evaluator(cfg).evaluate(_clustered_table(), context)
    assert result["task"] == "multilabel"
    assert result["labels"]["names"] == ["a", "b"]
    assert result["metrics"]["k3_mean_per_class_multilabel_f1"] > 0.9
    assert set(result["per_k"]["3"]["per_label"]) == {"a", "b"}


def test_evaluator_boolean_label_columns_and_errors(tmp_path: Path) -> None:
    table = _clustered_table()
    table.metadata["is_a"] = table.metadata["tags"].str.contains("a")
    table.metadata["is_b"] = np.where(table.metadata["tags"].str.contains("b"), "yes", "no")
    cfg = KNNEvaluatorConfig(label_columns=["is_a", "is_b"], ks=[3])
    result = build_knn_evaluator(cfg).evaluate(table, EvalContext(run_dir=tmp_path))
    assert result["labels"]["names"] == ["is_a", "is_b"] and result["metrics"]["k3_micro_f1"] > 0.9
    with pytest.raises(ConfigError, match=r"knn\.label_column"):
        build_knn_evaluator(KNNEvaluatorConfig()).evaluate(table, EvalContext(run_dir=tmp_path))
    with pytest.raises(DataError, match=r"label columns \['cell_line'\]"):
        build_knn_evaluator(KNNEvaluatorConfig(label_column="cell_line")).evaluate(table, EvalContext(tmp_path))
    too_many = KNNEvaluatorConfig(label_column="phase", ks=[100])
    with pytest.raises(ConfigError, match=r"'knn\.ks': k=100 is larger than the number of training rows \(94\)"):
        build_knn_evaluator(too_many).evaluate(table, EvalContext(tmp_path))
    with pytest.raises(ValueError, match="metric must be one of cosine, l2"):
        KNNEvaluatorConfig(metric="dot")


def test_evaluator_on_jurkat_intensity_statistics(shared_data: Path, tmp_path: Path) -> None:
    """Per-channel intensity statistics of real imaging-flow-cytometry cells separate cell-cycle phases."""
    import tifffile

    root = shared_data / "jurkat-cellcycle"
    meta = pd.read_csv(root / "metadata.csv")
    meta = meta[meta["phase"].isin(["G1", "S_phase", "G2", "Prophase"])]
    meta = meta.groupby("phase", sort=False).head(600).reset_index(drop=True)
    pixels = np.stack([tifffile.imread(root / p) for p in meta["path"]]).astype(np.float32)
    assert pixels.shape == (2400, 3, 40, 40)
    flat = pixels.reshape(len(pixels), 3, -1)
    quantiles = np.percentile(flat, [5, 25, 50, 75, 95], axis=2).transpose(1, 0, 2).reshape(len(flat), -1)
    features = np.log1p(np.concatenate([flat.mean(2), flat.std(2), quantiles], axis=1))
    features = (features - features.mean(0)) / features.std(0)

    with EmbeddingWriter(tmp_path / "embeddings", shard_rows=1000, info={"model": "intensity_stats"}) as w:
        w.write(meta, features)
    table = read_embeddings(tmp_path / "embeddings")
    cfg = KNNEvaluatorConfig(label_column="phase", ks=[1, 20], split=SplitConfig(test_fraction=0.25, seed=0))
    result = build_knn_evaluator(cfg).evaluate(table, EvalContext(run_dir=tmp_path))
    assert result["split"] == {"mode": "fraction", "train_rows": 1800, "test_rows": 600}
    # Chance is 0.25; about 0.83 is measured at k = 20.
    assert result["metrics"]["k20_macro_f1"] > 0.7
    assert result["metrics"]["k20_macro_f1"] >= result["metrics"]["k1_macro_f1"] - 0.05
