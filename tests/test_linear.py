"""Linear probe (cellssl.eval.engines.linear_probe) and the ``linear`` evaluator (cellssl.eval.linear)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.preprocessing import StandardScaler

from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext
from cellssl.eval.classifier import classification_scores
from cellssl.eval.engines.linear_heads import loss_weights
from cellssl.eval.engines.linear_probe import ChosenHead, LinearProbe, carve_validation, fit_linear_probe
from cellssl.eval.engines.metrics import multilabel_metrics
from cellssl.eval.engines.splits import SplitConfig
from cellssl.eval.linear import LinearEvaluatorConfig, build_linear_evaluator
from cellssl.report.results import schema_problems


def _blobs(n: int, dim: int, classes: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3.0
    y = np.arange(n) % classes
    x = centres[y] + spread * rng.normal(size=(n, dim)) + 5.0  # an offset, as raw features have
    return x.astype(np.float32), y.astype(np.int64)


def test_matches_scikit_learn_logistic_regression_on_separable_data() -> None:
    x, y = _blobs(600, 20, 3, spread=1.0, seed=0)
    probe = fit_linear_probe(x[:400], y[:400], multilabel=False, epochs=5, min_steps=100)
    scaler = StandardScaler().fit(x[:400])
    reference = LogisticRegression(max_iter=1000).fit(scaler.transform(x[:400]), y[:400])
    ours, theirs = probe.predict(x[400:]), reference.predict(scaler.transform(x[400:]))
    assert (theirs == y[400:]).mean() == 1.0
    assert (ours == y[400:]).mean() == 1.0
    scores = probe.predict_scores(x[400:])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    assert scores.dtype == np.float32 and scores.shape == (200, 3)


def test_close_to_scikit_learn_on_overlapping_classes() -> None:
    x, y = _blobs(1500, 30, 4, spread=8.0, seed=1)
    probe = fit_linear_probe(x[:1000], y[:1000], multilabel=False, epochs=10)
    scaler = StandardScaler().fit(x[:1000])
    reference = LogisticRegression(max_iter=2000).fit(scaler.transform(x[:1000]), y[:1000])
    ours = (probe.predict(x[1000:]) == y[1000:]).mean()
    theirs = (reference.predict(scaler.transform(x[1000:])) == y[1000:]).mean()
    assert 0.6 < theirs < 0.9  # the task is not trivial (0.768 measured)
    assert ours >= theirs - 0.03
    agreement = (probe.predict(x[1000:]) == reference.predict(scaler.transform(x[1000:]))).mean()
    assert agreement > 0.85


def test_multilabel_f1_at_threshold_half_by_hand() -> None:
    # A hand-made probe: standardisation off (mean 0, scale 1), weights = identity -> probability = sigmoid(x).
    probe = LinearProbe(weight=torch.eye(3), bias=torch.zeros(3), mean=torch.zeros(3), scale=torch.ones(3),
                        multilabel=True, chosen=ChosenHead(1.0, 0.0, 1.0), selection_metric="micro_f1")
    x = np.array([[2.0, -1.0, 0.0], [-3.0, 1.0, -0.1], [1.0, 1.0, -2.0], [-1.0, -1.0, 3.0]], dtype=np.float32)
    truth = np.array([[1, 0, 1], [0, 1, 0], [0, 1, 0], [0, 0, 0]])
    pred = probe.predict(x)
    # sigmoid(0) = 0.5 is not predicted (> 0.5, torchmetrics' rule); sigmoid(-0.1) < 0.5 is not either.
    assert pred.tolist() == [[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]]
    # Label 0: TP 1, FP 1, FN 0 -> F1 2/3. Label 1: TP 2 -> 1. Label 2: TP 0, FP 1, FN 1 -> 0.
    macro = (2 / 3 + 1 + 0) / 3
    micro = 2 * 3 / (2 * 3 + 2 + 1)  # TP 3, FP 2, FN 1
    report = multilabel_metrics(truth, probe.predict_scores(x))
    assert report["mean_per_class_multilabel_f1"] == pytest.approx(macro)
    assert report["micro_f1"] == pytest.approx(micro)
    scores = classification_scores(truth, pred, multilabel=True)
    assert scores["f1"] == pytest.approx(macro) and scores["micro_f1"] == pytest.approx(micro)
    assert scores["precision"] == pytest.approx((0.5 + 1 + 0) / 3) and scores["recall"] == pytest.approx(2 / 3)


def test_multilabel_evaluator_metric_equals_hand_f1_of_the_probe(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    labels = (x[:, :3] + 0.3 * rng.normal(size=(400, 3)) > 0.2).astype(int)
    tags = ["|".join(name for name, on in zip("abc", row, strict=True) if on) for row in labels]
    meta = pd.DataFrame({"tags": tags, "part": np.where(np.arange(400) < 300, "train", "test")})
    config = LinearEvaluatorConfig(label_column="tags", label_separator="|", min_steps=100,
                                   split=SplitConfig(mode="column", column="part", train_values=["train"]))
    evaluator = build_linear_evaluator(config)
    table = EmbeddingTable(meta, x)
    result = evaluator.evaluate(table, EvalContext(tmp_path))
    # Refit the same probe (same seed) and compute the F1 at 0.5 by hand on the test rows that have a label.
    valid = np.array([bool(t) for t in tags])
    test = valid & (meta["part"] == "test").to_numpy()
    train = valid & (meta["part"] == "train").to_numpy()
    probe = fit_linear_probe(x[train], labels[train], multilabel=True, min_steps=100)
    pred = (probe.predict_scores(x[test]) >= 0.5).astype(int)
    truth = labels[test]
    f1s = []
    for label in range(3):
        tp = int(((pred[:, label] == 1) & (truth[:, label] == 1)).sum())
        fp = int(((pred[:, label] == 1) & (truth[:, label] == 0)).sum())
        fn = int(((pred[:, label] == 0) & (truth[:, label] == 1)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert result["task"] == "multilabel"
    assert result["metrics"]["mean_per_class_multilabel_f1"] == pytest.approx(np.mean(f1s))
    assert result["metrics"]["mean_per_class_multilabel_f1"] > 0.7
    assert result["split"]["test_rows"] == int(test.sum())


def test_grid_selection_follows_the_validation_labels_only() -> None:
    x, y = _blobs(400, 10, 2, spread=1.0, seed=3)
    train = np.r_[np.flatnonzero(y[:300] == 0), np.flatnonzero(y[:300] == 1)[:50]]  # class 0 is the majority
    val_x, val_y = x[300:], y[300:]
    # Two heads: a free one, and one whose weights a huge decay keeps at ~0 (it predicts the prior: class 0).
    grid = {"learning_rates": [0.3], "weight_decays": [0.0, 5.0], "min_steps": 100, "refit": False,
            "select_metric": "accuracy"}
    honest = fit_linear_probe(x[train], y[train], multilabel=False, val_x=val_x, val_y=val_y, **grid)
    assert honest.chosen == (0.3, 0.0, 1.0)
    assert [g["val_score"] for g in honest.grid] == [1.0, 0.5]
    assert honest.sizes == {"train_rows": 200, "val_rows": 100, "fit_rows": 200}
    # Same training rows, other validation labels (all class 0): now the prior-only head scores best and
    # is chosen. Only (val_x, val_y) decide the choice.
    other = fit_linear_probe(x[train], y[train], multilabel=False, val_x=val_x, val_y=np.zeros_like(val_y), **grid)
    assert other.chosen == (0.3, 5.0, 1.0)
    assert [g["val_score"] for g in other.grid] == [0.5, 1.0]
    # Ties are broken by the lower validation loss.
    tied = fit_linear_probe(x[train], y[train], multilabel=False, val_x=val_x, val_y=val_y,
                            learning_rates=[1e-7, 3.0], weight_decays=[0.0], min_steps=50, refit=False)
    assert [g["val_score"] for g in tied.grid] == [1.0, 1.0] and tied.chosen.lr == 3.0
    assert tied.grid[1]["val_loss"] < tied.grid[0]["val_loss"]


def test_validation_is_carved_stratified_from_the_training_rows() -> None:
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    fit, val = carve_validation(y, 0.2, seed=0, multilabel=False)
    assert len(val) == 20 and len(fit) == 80 and not set(fit) & set(val)
    assert np.bincount(y[val]).tolist() == [12, 6, 2]
    x, labels = _blobs(100, 5, 2, 1.0, 4)
    probe = fit_linear_probe(x, labels, multilabel=False, val_fraction=0.25, min_steps=20)
    assert probe.sizes == {"train_rows": 75, "val_rows": 25, "fit_rows": 100} and probe.refit


def test_class_balancing_weights_and_effect() -> None:
    weights = loss_weights(np.array([0, 0, 0, 0, 0, 0, 1, 1]), 3, multilabel=False, device=torch.device("cpu"))
    np.testing.assert_allclose(weights.numpy(), [8 / (2 * 6), 8 / (2 * 2), 0.0], rtol=1e-6)
    pos = loss_weights(np.array([[1, 0], [1, 1], [0, 1], [0, 1]]), 2, multilabel=True, device=torch.device("cpu"))
    np.testing.assert_allclose(pos.numpy(), [2 / 2, 1 / 3], rtol=1e-6)

    rng = np.random.default_rng(5)
    y = np.array([0] * 1900 + [1] * 100)
    x = (rng.normal(size=(2000, 6)) + 1.2 * y[:, None]).astype(np.float32)
    test_y = np.array([0] * 500 + [1] * 500)
    test_x = (rng.normal(size=(1000, 6)) + 1.2 * test_y[:, None]).astype(np.float32)
    kwargs = {"multilabel": False, "epochs": 5, "select_metric": "accuracy"}
    plain = fit_linear_probe(x, y, **kwargs).predict(test_x)
    balanced = fit_linear_probe(x, y, class_balance=True, **kwargs).predict(test_x)
    minority_recall = [(p[test_y == 1] == 1).mean() for p in (plain, balanced)]
    assert minority_recall[1] > minority_recall[0] + 0.2  # 0.65 -> 0.95 measured
    assert balanced_accuracy_score(test_y, balanced) > balanced_accuracy_score(test_y, plain) + 0.1


def test_probe_errors_name_the_problem() -> None:
    x, y = _blobs(50, 4, 2, 1.0, 6)
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(DataError, match=r"training features contain NaN or inf \(first in row 7\)"):
        fit_linear_probe(bad, y, multilabel=False)
    with pytest.raises(ValueError, match=r"learning_rates must be a non-empty list of values > 0"):
        fit_linear_probe(x, y, multilabel=False, learning_rates=[])
    with pytest.raises(ValueError, match=r"select_metric must be one of .*'micro_f1'"):
        fit_linear_probe(x, y, multilabel=False, select_metric="micro_f1")
    with pytest.raises(DataError, match="cannot carve a validation split from 1 training row"):
        fit_linear_probe(x[:1], y[:1], multilabel=False)
    probe = fit_linear_probe(x, y, multilabel=False, min_steps=10)
    with pytest.raises(DataError, match="fitted on 4-d features but got 3-d"):
        probe.predict(x[:, :3])


def test_linear_evaluator_result_and_grouped_validation(tmp_path: Path) -> None:
    x, y = _blobs(480, 12, 3, spread=2.0, seed=7)
    meta = pd.DataFrame({"phase": np.array(["G1", "G2", "S"])[y], "fov_id": np.arange(480) // 8})
    config = LinearEvaluatorConfig(label_column="phase", min_steps=60,
                                   split=SplitConfig(mode="group", column="fov_id", test_fraction=0.25),
                                   val_split=SplitConfig(mode="group", column="fov_id", test_fraction=0.2))
    result = build_linear_evaluator(config).evaluate(EmbeddingTable(meta, x), EvalContext(tmp_path, identity={"m": 1}))
    assert schema_problems(result) == []
    assert set(result["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "mean_per_class_multiclass_f1"}
    assert result["metrics"]["macro_f1"] > 0.8
    split = result["split"]
    assert (split["train_rows"], split["test_rows"]) == (360, 120)
    assert split["val_rows"] == 72 and split["fit_rows"] == 360  # 9 of 45 train groups validate; refit on all
    assert result["chosen"]["metric"] == "macro_f1" and len(result["grid"]) == 24
    assert result["identity"] == {"m": 1} and set(result["per_class"]) == {"G1", "G2", "S"}
    json.dumps(result, allow_nan=False)
    with pytest.raises(ConfigError, match=r"linear.select_metric': 'micro_f1' does not fit this task"):
        build_linear_evaluator(LinearEvaluatorConfig(label_column="phase", select_metric="micro_f1")).evaluate(
            EmbeddingTable(meta, x), EvalContext(tmp_path))
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.5"):
        LinearEvaluatorConfig(val_fraction=1.5)


def test_f1_of_evaluator_matches_scikit_learn(tmp_path: Path) -> None:
    x, y = _blobs(300, 6, 3, spread=3.0, seed=8)
    meta = pd.DataFrame({"label": y, "part": np.where(np.arange(300) % 4 == 0, "test", "train")})
    config = LinearEvaluatorConfig(label_column="label", min_steps=50,
                                   split=SplitConfig(mode="column", column="part", train_values=["train"]))
    result = build_linear_evaluator(config).evaluate(EmbeddingTable(meta, x), EvalContext(tmp_path))
    train, test = meta["part"] == "train", meta["part"] == "test"
    probe = fit_linear_probe(x[train], y[train], multilabel=False, num_classes=3, min_steps=50)
    pred = probe.predict(x[test])
    assert result["metrics"]["macro_f1"] == pytest.approx(f1_score(y[test], pred, average="macro"))
    assert result["metrics"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[test], pred))


def test_bf16_training_matches_fp32_choices() -> None:
    x, y = _blobs(900, 64, 4, spread=6.0, seed=9)
    fp32 = fit_linear_probe(x[:600], y[:600], multilabel=False, min_steps=100)
    bf16 = fit_linear_probe(x[:600], y[:600], multilabel=False, min_steps=100, precision="bf16")
    agreement = (fp32.predict(x[600:]) == bf16.predict(x[600:])).mean()
    assert agreement > 0.95
    assert abs((fp32.predict(x[600:]) == y[600:]).mean() - (bf16.predict(x[600:]) == y[600:]).mean()) < 0.03
    assert bf16.weight.dtype == torch.float32
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        fit_linear_probe(x, y, multilabel=False, precision="fp16")
