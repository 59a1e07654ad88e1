"""Classification metrics (cellssl.eval.engines.metrics) against scikit-learn and hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, classification_report, f1_score

from cellssl.eval.engines.metrics import multiclass_metrics, multilabel_metrics


def test_multiclass_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 4, size=200))
    names = ["G1", "S", "G2", "M"]
    result = multiclass_metrics(y_true, y_pred, class_names=names)
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert result["n"] == 200 and result["num_classes_scored"] == 4
    report = classification_report(y_true, y_pred, target_names=names, output_dict=True)
    for name in names:
        ours = result["per_class"][name]
        assert ours["precision"] == pytest.approx(report[name]["precision"])
        assert ours["recall"] == pytest.approx(report[name]["recall"])
        assert ours["f1"] == pytest.approx(report[name]["f1-score"])
        assert ours["support"] == report[name]["support"]
    assert json.loads(json.dumps(result)) == result


def test_multiclass_hand_example_and_unscored_classes() -> None:
    # class 0: tp 1, fp 1, fn 1 -> f1 0.5; class 1: tp 1, fp 1, fn 0 -> f1 2/3; class 2: tp 0, fn 1 -> 0.
    y_true = [0, 0, 1, 2]
    y_pred = [0, 1, 1, 0]
    result = multiclass_metrics(y_true, y_pred, class_names=["a", "b", "c", "never"], per_class=True)
    assert result["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0) / 3)  # "never" is not averaged
    assert set(result["per_class"]) == {"a", "b", "c"}
    assert result["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["accuracy"] == 0.5
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert "per_class" not in multiclass_metrics(y_true, y_pred, per_class=False)
    assert set(multiclass_metrics(["x", "y"], ["x", "x"])["per_class"]) == {"x", "y"}


def test_multiclass_errors() -> None:
    with pytest.raises(ValueError, match="equal length"):
        multiclass_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="zero samples"):
        multiclass_metrics([], [])
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 1\]"):
        multiclass_metrics([0, 2], [0, 1], class_names=["a", "b"])


def test_multilabel_matches_sklearn_at_threshold() -> None:
    rng = np.random.default_rng(1)
    y_true = (rng.random((150, 5)) < 0.3).astype(int)
    scores = np.clip(y_true * 0.6 + rng.random((150, 5)) * 0.6, 0, 1)
    pred = (scores > 0.5).astype(int)
    result = multilabel_metrics(y_true, scores, label_names=list("abcde"))
    assert result["mean_per_class_multilabel_f1"] == pytest.approx(f1_score(y_true, pred, average="macro"))
    assert result["macro_f1"] == result["mean_per_class_multilabel_f1"]
    assert result["micro_f1"] == pytest.approx(f1_score(y_true, pred, average="micro"))
    assert result["subset_accuracy"] == pytest.approx(accuracy_score(y_true, pred))
    report = classification_report(y_true, pred, target_names=list("abcde"), output_dict=True, zero_division=0)
    assert result["per_label"]["c"]["f1"] == pytest.approx(report["c"]["f1-score"])
    assert result["per_label"]["c"]["support"] == int(y_true[:, 2].sum())
    json.dumps(result)


def test_multilabel_hand_example() -> None:
    y_true = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    scores = np.array([[0.9, 0.5, 0.0], [0.2, 0.7, 0.1], [0.0, 0.4, 0.2]])
    # predictions at > 0.5 (0.5 itself is not predicted): [[1,0,0],[0,1,0],[0,0,0]]; label 0: tp 1 fn 1 -> 2/3;
    # label 1: tp 1 fn 1 -> 2/3; label 2 is never true nor predicted: F1 0, and it counts in the mean.
    result = multilabel_metrics(y_true, scores)
    assert result["mean_per_class_multilabel_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert result["macro_f1_present_labels"] == pytest.approx(2 / 3)
    assert result["num_labels_scored"] == 2 and result["num_labels"] == 3
    assert result["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))  # tp 2, fp 0, fn 2
    assert result["subset_accuracy"] == pytest.approx(1 / 3)
    assert multilabel_metrics(y_true, scores, threshold=0.3)["subset_accuracy"] == pytest.approx(1 / 3)


def test_multilabel_errors() -> None:
    with pytest.raises(ValueError, match="must be"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="only 0/1"):
        multilabel_metrics(np.full((2, 2), 2), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="got 1 label names for 2 labels"):
        multilabel_metrics(np.zeros((2, 2)), np.zeros((2, 2)), label_names=["a"])
