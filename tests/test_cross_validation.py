"""k-fold cross-validation of classifier evaluators (cellssl.eval.cross_validation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, precision_score, recall_score

from cellssl.config.validate import validate_block
from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext
from cellssl.eval.classifier import FoldOutput, classification_scores, format_mean_std, mean_std
from cellssl.eval.cross_validation import (
    CrossValidationConfig,
    CrossValidationEvaluator,
    build_cross_validation,
    fold_assignment,
)
from cellssl.report.results import schema_problems


def _table(n: int = 150, seed: int = 0) -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (np.eye(3, 8)[y] * 3 + rng.normal(size=(n, 8))).astype(np.float32)
    meta = pd.DataFrame({"label": np.array(["RBC", "WBC", "Platelets"])[y], "fov_id": (np.arange(n) * 7) % 25})
    return EmbeddingTable(meta, x)


def test_stratified_fold_sizes_cover_every_row_once() -> None:
    labels = np.array([0] * 50 + [1] * 33 + [2] * 20)  # 103 rows
    folds = fold_assignment(103, 5, labels=labels, seed=0)
    assert sorted(len(test) for _, test in folds) == [20, 20, 21, 21, 21]
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested.tolist()) == list(range(103))
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == 103
        counts = np.bincount(labels[test], minlength=3)
        assert all(abs(c - e) <= 1 for c, e in zip(counts, [10, 6.6, 4], strict=True))


def test_grouped_folds_never_share_a_group() -> None:
    groups = np.repeat(np.arange(17), 6).astype(str)
    labels = np.arange(len(groups)) % 2
    for stratify in (labels, None):
        folds = fold_assignment(len(groups), 4, labels=stratify, groups=groups, seed=3)
        assert len(folds) == 4
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
        test_groups = [g for _, test in folds for g in set(groups[test])]
        assert sorted(test_groups) == sorted(set(groups))  # every group is tested exactly once
    with pytest.raises(DataError, match="cannot make 5 grouped folds from 3 groups"):
        fold_assignment(9, 5, groups=np.repeat(["a", "b", "c"], 3))
    with pytest.raises(DataError, match="cannot make 5 folds from 4 labelled rows"):
        fold_assignment(4, 5)


class _ConstantClassifier:
    """Predicts class 0 for every row (a classifier whose fold scores are easy to compute by hand)."""

    def fit_predict(self, train_x, train_y, test_x, *, labels, train_metadata) -> FoldOutput:
        return FoldOutput({"always-0": np.zeros(len(test_x), dtype=np.int64)})


def test_mean_and_std_over_folds_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table(n=60)
    config = CrossValidationConfig(label_column="label", folds=3, seed=1)
    monkeypatch.setattr(CrossValidationEvaluator, "_classifiers", lambda self: [_ConstantClassifier()])
    result = build_cross_validation(config).evaluate(table, EvalContext(tmp_path))
    names = sorted(set(table.metadata["label"]))
    y = np.array([names.index(v) for v in table.metadata["label"]])
    folds = fold_assignment(60, 3, labels=y, seed=1)
    f1s, recalls, precisions, balanced = [], [], [], []
    for _, test in folds:
        truth = y[test]
        # Constant class 0: its precision is its share of the fold, its recall 1; other classes score 0.
        share = float(np.mean(truth == 0))
        f1s.append((2 * share / (share + 1)) / 3)
        recalls.append(recall_score(truth, np.zeros_like(truth), average="macro", zero_division=0))
        precisions.append(precision_score(truth, np.zeros_like(truth), average="macro", zero_division=0))
        balanced.append(balanced_accuracy_score(truth, np.zeros_like(truth)))
    metrics = result["metrics"]
    assert metrics["always_0_f1_mean"] == pytest.approx(np.mean(f1s))
    assert metrics["always_0_f1_std"] == pytest.approx(np.sqrt(np.mean((np.array(f1s) - np.mean(f1s)) ** 2)))
    assert metrics["always_0_recall_mean"] == pytest.approx(1 / 3)
    assert metrics["always_0_precision_mean"] == pytest.approx(np.mean(precisions))
    assert metrics["always_0_balanced_accuracy_mean"] == pytest.approx(np.mean(balanced))
    assert result["table"] == [{
        "classifier": "always-0",
        "F1 (%)": format_mean_std(np.mean(f1s), np.std(f1s), percent=True),
        "recall (%)": "33.3 ± 0.0",
        "precision (%)": format_mean_std(np.mean(precisions), np.std(precisions), percent=True),
        "balanced accuracy (%)": "33.3 ± 0.0",
    }]
    assert [f["test_rows"] for f in result["folds"]] == [20, 20, 20] == result["split"]["test_rows"]


def test_helpers_against_hand_values() -> None:
    assert mean_std([0.8, 0.9, 1.0]) == pytest.approx((0.9, np.sqrt(0.02 / 3)))
    assert mean_std([0.5]) == (0.5, 0.0)
    assert format_mean_std(0.866, 0.007, percent=True) == "86.6 ± 0.7"
    assert format_mean_std(0.5, 0.25) == "0.5000 ± 0.2500"
    scores = classification_scores([0, 0, 1, 2], [0, 1, 1, 1], multilabel=False)
    # class 0: P 1, R 0.5, F1 2/3; class 1: P 1/3, R 1, F1 0.5; class 2: P 0, R 0, F1 0.
    assert scores["f1"] == pytest.approx((2 / 3 + 0.5) / 3)
    assert scores["precision"] == pytest.approx((1 + 1 / 3) / 3)
    assert scores["recall"] == pytest.approx(0.5) and scores["balanced_accuracy"] == pytest.approx(0.5)
    assert scores["accuracy"] == pytest.approx(0.5)


def test_knn_and_linear_rows_in_the_blood_cell_table_format(tmp_path: Path) -> None:
    table = _table()
    config = CrossValidationConfig(label_column="label", folds=5, group_column="fov_id", classifiers=[
        {"name": "knn", "ks": [1, 20]}, {"name": "linear", "min_steps": 40}])
    result = build_cross_validation(config).evaluate(table, EvalContext(tmp_path, identity={"model": "toy"}))
    assert schema_problems(result) == []
    assert [row["classifier"] for row in result["table"]] == ["1-NN", "20-NN", "linear probe"]
    assert list(result["table"][0]) == ["classifier", "F1 (%)", "recall (%)", "precision (%)",
                                        "balanced accuracy (%)"]
    assert result["split"]["mode"] == "stratified_group_kfold" and sum(result["split"]["test_rows"]) == 150
    for fold in result["folds"]:
        assert fold["test_groups"] == 5  # 25 fields of view over 5 folds
        linear = fold["classifiers"][1]
        assert linear["sizes"]["fit_rows"] == fold["train_rows"]  # head chosen and refitted inside the fold
    for row in ("1_nn", "20_nn", "linear_probe"):
        f1s = [fold["scores"][{"1_nn": "1-NN", "20_nn": "20-NN"}.get(row, "linear probe")]["f1"]
               for fold in result["folds"]]
        assert result["metrics"][f"{row}_f1_mean"] == pytest.approx(np.mean(f1s))
        assert result["metrics"][f"{row}_f1_std"] == pytest.approx(np.std(f1s))
        assert result["metrics"][f"{row}_f1_mean"] > 0.85


def test_multilabel_cross_validation_and_config_errors(tmp_path: Path) -> None:
    table = _table(90)
    table.metadata["tags"] = np.where(table.metadata["label"] == "RBC", "a|b", "b")
    config = CrossValidationConfig(label_column="tags", label_separator="|", folds=3,
                                   classifiers=[{"name": "knn", "ks": [3]}])
    result = build_cross_validation(config).evaluate(table, EvalContext(tmp_path))
    assert result["task"] == "multilabel" and result["split"]["mode"] == "kfold"
    assert list(result["table"][0])[-1] == "micro F1 (%)" and result["metrics"]["3_nn_f1_mean"] > 0.9
    with pytest.raises(ConfigError, match=r"classifiers\[0\].name': unknown evaluator 'knm'. Did you mean 'knn'"):
        validate_block({"classifiers": [{"name": "knm"}]}, CrossValidationConfig, "eval[0]")
    with pytest.raises(ConfigError, match=r"folds must be >= 2, got 1"):
        validate_block({"folds": 1}, CrossValidationConfig, "eval[0]")
    with pytest.raises(DataError, match=r"group column 'plate' \(config key 'cross_validation.group_column'\)"):
        build_cross_validation(CrossValidationConfig(label_column="label", group_column="plate")).evaluate(
            table, EvalContext(tmp_path))
