"""Every field of the multi-class and multi-label metric reports, against hand-computed values, with the edge
cases (a class absent from truth and predictions, a label never true nor predicted, one row) and the exact
error messages. Run with warnings as errors: no metric may fall back to scikit-learn's warning zero-division.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cellssl.eval.engines.metrics import multiclass_metrics, multilabel_metrics


def _same(got: object, want: object, where: str = "report") -> None:
    """Equal structure and keys; floats equal to 1e-9, everything else exactly (types included)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (where, got)
        for key in want:
            _same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, float):
        assert isinstance(got, float) and got == pytest.approx(want, abs=1e-9), (where, got, want)
    else:
        assert type(got) is type(want) and got == want, (where, got, want)


@pytest.fixture(autouse=True)
def _warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_multiclass_report_by_hand() -> None:
    # classes a, b, c, d; d never occurs; c is predicted once but never true
    report = multiclass_metrics([0, 0, 1, 1], [0, 2, 1, 1], class_names=["a", "b", "c", "d"])
    _same(report, {
        "task": "multiclass", "n": 4, "accuracy": 0.75,
        "balanced_accuracy": 0.75,  # recall of a (1/2) and b (2/2), the classes of y_true
        "macro_f1": (2 / 3 + 1 + 0) / 3,  # a, b, c: the classes seen
        "mean_per_class_multiclass_f1": (2 / 3 + 1 + 0 + 0) / 4,  # every class of the list; d scores 0
        "num_classes_scored": 3, "num_classes": 4,
        "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2},
                      "b": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2},
                      "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}},
    })
    plain = multiclass_metrics(["x", "x", "y"], ["x", "y", "y"], per_class=False)
    assert plain["mean_per_class_multiclass_f1"] == plain["macro_f1"] == pytest.approx(2 / 3)
    assert plain["num_classes"] == 2 and "per_class" not in plain


def test_multiclass_errors() -> None:
    with pytest.raises(ValueError, match=r"^cannot compute metrics on zero samples$"):
        multiclass_metrics([], [])
    with pytest.raises(ValueError, match=r"^with 2 class names, labels must be integers in \[0, 1\]$"):
        multiclass_metrics([-1, 0], [0, 0], class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"^with 2 class names, labels must be integers in \[0, 1\]$"):
        multiclass_metrics([0, 2], [0, 0], class_names=["a", "b"])


def test_multilabel_report_by_hand() -> None:
    truth = [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]]
    score = [[0.9, 0.1, 0.2], [0.4, 0.5, 0.1], [0.6, 0.7, 0.0], [0.2, 0.2, 0.5]]  # 0.5 is not > 0.5
    report = multilabel_metrics(truth, score)
    # label 0: TP 2 -> F1 1; label 1: TP 0, FP 1, FN 1 -> 0; label 2: never true nor predicted -> 0
    _same(report, {
        "task": "multilabel", "n": 4, "threshold": 0.5,
        "mean_per_class_multilabel_f1": 1 / 3, "macro_f1": 1 / 3,
        "macro_f1_present_labels": 0.5,  # labels 0 and 1
        "micro_f1": 2 * 2 / (2 * 2 + 1 + 1),  # TP 2, FP 1, FN 1
        "subset_accuracy": 0.5, "num_labels": 3, "num_labels_scored": 2,
        "per_label": {"0": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2},
                      "1": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
                      "2": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}},
    })


def test_multilabel_edges_and_errors() -> None:
    one = multilabel_metrics([[1, 0]], [[0.7, 0.2]], label_names=["dna", "er"], threshold=0.6)
    assert one["n"] == 1 and one["threshold"] == 0.6 and one["macro_f1"] == 0.5 and set(one["per_label"]) == {"dna",
                                                                                                               "er"}
    # label "er" is predicted once but never true: it counts among the labels scored
    false_alarm = multilabel_metrics([[1, 0], [0, 0]], [[0.9, 0.1], [0.2, 0.8]], label_names=["dna", "er"])
    assert false_alarm["num_labels_scored"] == 2 and false_alarm["macro_f1_present_labels"] == 0.5
    nothing = multilabel_metrics([[0, 0], [0, 0]], [[0.1, 0.2], [0.3, 0.0]], per_label=False)
    assert nothing["macro_f1_present_labels"] == 0.0 and nothing["num_labels_scored"] == 0
    assert nothing["micro_f1"] == 0.0 and nothing["subset_accuracy"] == 1.0 and "per_label" not in nothing
    with pytest.raises(ValueError, match=r"^cannot compute metrics on zero samples$"):
        multilabel_metrics(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"^y_true of a multi-label task must hold only 0/1 \(or bool\) values$"):
        multilabel_metrics([[2, 0]], [[0.1, 0.2]])
