"""Few-shot kNN and the results table of the ``knn`` evaluator (cellssl.eval.knn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from cellssl.config.validate import validate_block
from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError
from cellssl.eval.base import EvalContext
from cellssl.eval.engines.knn import knn_classify
from cellssl.eval.knn import KNNEvaluatorConfig, build_knn_evaluator, draw_few_shot
from cellssl.report.results import schema_problems


def _table(n: int = 300, seed: int = 0) -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (np.eye(3, 8)[y] * 1.2 + rng.normal(size=(n, 8))).astype(np.float32)
    meta = pd.DataFrame({
        "label": np.array(["a", "b", "c"])[y],
        "tags": np.array(["x|y", "y", "x"])[y],
        "part": np.where(np.arange(n) < 200, "train", "test"),
    })
    return EmbeddingTable(meta, x)


SPLIT = {"mode": "column", "column": "part", "train_values": ["train"], "test_values": ["test"]}


def test_draw_few_shot_takes_n_rows_per_class_without_replacement() -> None:
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    picked, short = draw_few_shot(y, 5, np.random.default_rng(0), multilabel=False)
    assert np.bincount(y[picked]).tolist() == [5, 3, 5] and short == [1]
    assert len(set(picked.tolist())) == len(picked) == 13
    again, _ = draw_few_shot(y, 5, np.random.default_rng(0), multilabel=False)
    other, _ = draw_few_shot(y, 5, np.random.default_rng(1), multilabel=False)
    assert again.tolist() == picked.tolist() and other.tolist() != picked.tolist()
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [1, 0]])
    pooled, short = draw_few_shot(labels, 2, np.random.default_rng(0), multilabel=True)
    assert labels[pooled, 0].sum() >= 2 and labels[pooled, 1].sum() >= 2 and short == []


def test_few_shot_mean_and_std_over_draws_by_hand(tmp_path: Path) -> None:
    table = _table()
    config = KNNEvaluatorConfig(label_column="label", ks=[1, 3], split=SPLIT,
                                few_shot={"shots": [2, 4], "draws": 4, "seed": 7})
    result = build_knn_evaluator(config).evaluate(table, EvalContext(tmp_path))
    assert schema_problems(result) == []
    y = np.arange(300) % 3
    train_x, test_x, train_y, test_y = table.embeddings[:200], table.embeddings[200:], y[:200], y[200:]
    for shots in (2, 4):
        f1s = {1: [], 3: []}
        for draw in range(4):
            picked, _ = draw_few_shot(train_y, shots, np.random.default_rng(7 + draw), multilabel=False)
            assert len(picked) == 3 * shots
            predictions = knn_classify(train_x[picked], train_y[picked], test_x, [1, 3], num_classes=3)
            for k in (1, 3):
                f1s[k].append(f1_score(test_y, predictions[k].labels, average="macro"))
        for k in (1, 3):
            assert result["metrics"][f"fewshot{shots}_k{k}_macro_f1_mean"] == pytest.approx(np.mean(f1s[k]))
            assert result["metrics"][f"fewshot{shots}_k{k}_macro_f1_std"] == pytest.approx(np.std(f1s[k]))
            assert result["few_shot"]["shots"][str(shots)]["per_k"][str(k)]["macro_f1"]["values"] == pytest.approx(
                f1s[k])
    rows = result["table"]
    assert [(r["train"], r["k"]) for r in rows] == [("all", 1), ("all", 3), ("2-shot x4", 1), ("2-shot x4", 3),
                                                    ("4-shot x4", 1), ("4-shot x4", 3)]
    mean, std = result["metrics"]["fewshot2_k1_macro_f1_mean"], result["metrics"]["fewshot2_k1_macro_f1_std"]
    assert rows[2]["macro_f1"] == f"{mean:.4f} ± {std:.4f}"
    assert rows[0]["macro_f1"] == result["metrics"]["k1_macro_f1"]
    assert result["few_shot"]["shots"]["2"]["train_rows"] == [6, 6, 6, 6]


def test_few_shot_skips_k_above_the_rows_drawn_and_handles_multilabel(tmp_path: Path) -> None:
    table = _table()
    config = KNNEvaluatorConfig(label_column="label", ks=[1, 5], split=SPLIT, few_shot={"shots": [1], "draws": 2})
    result = build_knn_evaluator(config).evaluate(table, EvalContext(tmp_path))
    assert result["few_shot"]["shots"]["1"]["ks_skipped"] == [5]
    assert "fewshot1_k5_macro_f1_mean" not in result["metrics"] and "fewshot1_k1_macro_f1_mean" in result["metrics"]

    config = KNNEvaluatorConfig(label_column="tags", label_separator="|", ks=[1], split=SPLIT,
                                few_shot={"shots": [3], "draws": 3})
    result = build_knn_evaluator(config).evaluate(table, EvalContext(tmp_path))
    assert result["task"] == "multilabel"
    assert 0.0 < result["metrics"]["fewshot3_k1_mean_per_class_multilabel_f1_mean"] <= 1.0
    assert all(3 <= n <= 6 for n in result["few_shot"]["shots"]["3"]["train_rows"])  # 3 rows per label, pooled
    assert list(result["table"][0]) == ["train", "k", "mean_per_class_multilabel_f1", "micro_f1", "subset_accuracy"]


def test_few_shot_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"few_shot.shots must hold integers >= 1, got \[0\]"):
        validate_block({"few_shot": {"shots": [0]}}, KNNEvaluatorConfig, "eval[0]")
    with pytest.raises(ConfigError, match=r"few_shot.draws must be >= 1, got 0"):
        validate_block({"few_shot": {"shots": [1], "draws": 0}}, KNNEvaluatorConfig, "eval[0]")
    with pytest.raises(ConfigError, match=r"eval\[0\].few_shot.shot'?: unknown key"):
        validate_block({"few_shot": {"shot": [1]}}, KNNEvaluatorConfig, "eval[0]")
