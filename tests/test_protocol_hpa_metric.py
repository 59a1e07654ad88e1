"""cellssl's fixed-label-set F1 metrics against torchmetrics 0.10.3, the version the DINOv2 / Cell-DINO code pins.

``mean_per_class_multilabel_f1`` must equal ``MultilabelF1Score(num_labels=L, average="macro")`` (threshold 0.5,
prediction ``score > 0.5``, a label never true nor predicted scoring 0 and still counted), and
``mean_per_class_multiclass_f1`` must equal ``MulticlassF1Score(num_classes=C, average="macro")``, on random
inputs and on the edge cases where the definitions could part: labels never true and never predicted, all-zero
rows, labels only predicted or only true, scores exactly at the threshold.

torchmetrics is a ``dev`` extra of the core distribution (0.10.3 imports ``pkg_resources``, so it needs a
setuptools older than 81); without it these tests are skipped on a user's machine, never under CI.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cellssl.eval.engines.metrics import multiclass_metrics, multilabel_metrics

with warnings.catch_warnings():  # torchmetrics 0.10.3 is a dev extra (`make install` installs it)
    warnings.simplefilter("ignore")  # pkg_resources' deprecation notice on import
    import torch
    import torchmetrics
    from torchmetrics.classification import MulticlassF1Score, MultilabelF1Score


def torchmetrics_multilabel(truth: np.ndarray, scores: np.ndarray) -> float:
    metric = MultilabelF1Score(num_labels=truth.shape[1], average="macro", threshold=0.5)
    return float(metric(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(truth, dtype=torch.long)))


def torchmetrics_multiclass(truth: np.ndarray, pred: np.ndarray, classes: int) -> float:
    metric = MulticlassF1Score(num_classes=classes, average="macro")
    return float(metric(torch.as_tensor(pred, dtype=torch.long), torch.as_tensor(truth, dtype=torch.long)))


def test_the_pinned_version_is_tested() -> None:
    assert torchmetrics.__version__ == "0.10.3"


@pytest.mark.parametrize("seed", range(5))
def test_multilabel_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = (rng.random((64, 19)) < 0.2).astype(np.int64)
    scores = rng.random((64, 19)).astype(np.float32)
    scores[:, :3] = np.where(truth[:, :3] == 1, 0.9, 0.1)  # some labels predicted well, most at random
    ours = multilabel_metrics(truth, scores)["mean_per_class_multilabel_f1"]
    assert ours == pytest.approx(torchmetrics_multilabel(truth, scores), abs=1e-6)
    assert 0.0 < ours < 1.0


def test_multilabel_edge_cases() -> None:
    truth = np.zeros((6, 5), dtype=np.int64)
    scores = np.zeros((6, 5), dtype=np.float32)
    truth[0, 0] = truth[1, 0] = 1
    scores[0, 0] = 0.8                       # label 0: one hit, one miss -> F1 2/3
    scores[2, 1] = 0.7                       # label 1: predicted, never true -> 0
    truth[3, 2] = 1                          # label 2: true, never predicted -> 0
    scores[4, 3] = 0.5                       # label 3: exactly 0.5 is not a prediction; never true -> 0 (counted)
    # label 4: never true, never predicted -> 0 (counted); rows 4 and 5 are all-zero label rows
    expected = (2 / 3) / 5
    ours = multilabel_metrics(truth, scores)
    assert ours["mean_per_class_multilabel_f1"] == pytest.approx(expected)
    assert torchmetrics_multilabel(truth, scores) == pytest.approx(expected, abs=1e-6)
    assert ours["macro_f1_present_labels"] == pytest.approx((2 / 3) / 3)  # labels 0, 1, 2 are true or predicted
    nothing = np.zeros((4, 3), dtype=np.int64)
    assert multilabel_metrics(nothing, nothing.astype(np.float32))["mean_per_class_multilabel_f1"] == 0.0
    assert torchmetrics_multilabel(nothing, nothing.astype(np.float32)) == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_multiclass_with_absent_classes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = 8
    truth = rng.integers(0, 5, size=80)       # classes 5, 6, 7 never true
    pred = np.where(rng.random(80) < 0.6, truth, rng.integers(0, 6, size=80))  # class 6, 7 never predicted
    ours = multiclass_metrics(truth, pred, class_names=[f"c{i}" for i in range(classes)])
    assert ours["mean_per_class_multiclass_f1"] == pytest.approx(torchmetrics_multiclass(truth, pred, classes),
                                                                 abs=1e-6)
    assert ours["num_classes"] == classes and ours["num_classes_scored"] <= 6
    assert ours["mean_per_class_multiclass_f1"] < ours["macro_f1"]  # the absent classes pull the mean down
