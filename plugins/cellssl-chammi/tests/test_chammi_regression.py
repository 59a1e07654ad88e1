"""Regression of the CHAMMI 1-NN table on the fixture, and MorphEm's ``sgd`` classifier.

Features are fixed by hand, so no model is involved: per channel of the 8-bit tape, the mean and the
standard deviation of the whole plane and the means of its four 20 x 20 quadrants (6 numbers per channel),
computed from the planes re-derived from the source TIFFs (``ChammiFixture.planes``).

``reference_table`` is an independent re-implementation of MorphEm's ``evaluation.evaluate`` (numpy
brute-force Euclidean 1-NN, Label codes in order of first appearance as MorphEm encodes them, the novel-class
task scored leave-one-group-out in the order the groups appear, scikit-learn's
``f1_score(labels=unique(truth), average="macro")``). Its output on the fixture was computed once and
frozen in ``FROZEN``; the evaluator must give the same nine numbers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import f1_score

from cellssl.embed.store import EmbeddingTable
from cellssl.eval.base import EvalContext
from cellssl_chammi.config import ChammiEvaluatorConfig
from cellssl_chammi.evaluator import ChammiEvaluator

SUBSETS = {"wtc": ("Allen", ["Task_one", "Task_two"], None, None),
           "hpa": ("HPA", ["Task_one", "Task_two", "Task_three"], "Task_three", "cell_type"),
           "cp": ("CP", ["Task_one", "Task_two", "Task_three", "Task_four"], "Task_four", "Plate")}
COLUMNS = {"wtc": ["WTC T1", "WTC T2"], "hpa": ["HPA T1", "HPA T2", "HPA T3"],
           "cp": ["CP T1", "CP T2", "CP T3", "CP T4"]}
# reference_table(...) on the fixture, computed once (1-NN, Euclidean)
FROZEN: dict[str, float] = {
    "WTC T1": 0.6458333333333333, "WTC T2": 0.6749999999999999,
    "HPA T1": 0.8857142857142858, "HPA T2": 0.8857142857142857, "HPA T3": 0.24338624338624337,
    "CP T1": 0.5553571428571429, "CP T2": 0.7595238095238095, "CP T3": 0.3375, "CP T4": 0.26666666666666666,
}


def features(chammi, subset: str) -> np.ndarray:
    rows = []
    for _, row in chammi.frames[subset].iterrows():
        planes = chammi.planes(subset, row).astype(np.float64)
        quadrants = [planes[:, :20, :20], planes[:, :20, 20:], planes[:, 20:, :20], planes[:, 20:, 20:]]
        parts = [planes.mean(axis=(1, 2)), planes.std(axis=(1, 2))] + [q.mean(axis=(1, 2)) for q in quadrants]
        rows.append(np.stack(parts, axis=1).ravel())
    return np.asarray(rows, dtype=np.float32)


def reference_table(meta: pd.DataFrame, x: np.ndarray, subset: str, fit_predict) -> dict[str, float]:
    """MorphEm's evaluate(), re-written: task -> macro F1 over the classes of the task's truth."""
    _, tasks, leave_out, group_column = SUBSETS[subset]
    codes = {name: i for i, name in enumerate(dict.fromkeys(meta["Label"]))}  # order of first appearance
    y = meta["Label"].map(codes).to_numpy()
    train = np.flatnonzero(meta["train_test_split"].to_numpy() == "Train")
    out = {}
    for task, column in zip(tasks, COLUMNS[subset]):
        rows = meta[task].astype(str).str.lower().eq("true").to_numpy()
        if task != leave_out:
            test = np.flatnonzero(rows)
            truth, pred = y[test], fit_predict(x[train], y[train], x[test])
        else:
            groups = meta.loc[rows, group_column]
            truth_parts, pred_parts = [], []
            for group in groups.unique():
                held = np.flatnonzero(rows & (meta[group_column] == group).to_numpy())
                other = np.flatnonzero(rows & (meta[group_column] != group).to_numpy())
                fit = np.concatenate([train, other])
                truth_parts.append(y[held])
                pred_parts.append(fit_predict(x[fit], y[fit], x[held]))
            truth, pred = np.concatenate(truth_parts), np.concatenate(pred_parts)
        out[column] = float(f1_score(truth, pred, labels=np.unique(truth), average="macro"))
    return out


def brute_force_1nn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    d = ((test_x.astype(np.float64)[:, None, :] - train_x.astype(np.float64)[None, :, :]) ** 2).sum(axis=2)
    return train_y[np.argmin(d, axis=1)]


def run_evaluator(chammi, tmp_path: Path, subset: str, **settings: object) -> dict:
    from cellssl_chammi.config import ChammiSubsetConfig
    from cellssl_chammi.dataset import build_chammi_dataset

    dataset = build_chammi_dataset(ChammiSubsetConfig(root=str(chammi.root)), subset)
    table = EmbeddingTable(metadata=dataset.metadata, embeddings=features(chammi, subset))
    config = ChammiEvaluatorConfig(root=str(chammi.root), subsets=[subset], **settings)  # type: ignore[arg-type]
    return ChammiEvaluator(config).evaluate(table, EvalContext(run_dir=tmp_path))


def test_one_nn_table_matches_the_frozen_reference(chammi, tmp_path: Path) -> None:
    for subset in SUBSETS:
        reference = reference_table(chammi.frames[subset], features(chammi, subset), subset, brute_force_1nn)
        for column, value in reference.items():
            assert value == pytest.approx(FROZEN[column], abs=1e-12), column  # the reference code is unchanged
        result = run_evaluator(chammi, tmp_path / subset, subset)
        row = result["table"][0]
        assert row["classifier"] == "knn"
        for column in COLUMNS[subset]:
            assert row[column] == pytest.approx(FROZEN[column], abs=1e-12), column


def test_sgd_is_morphems_classifier_seeded_mean_and_std(chammi, tmp_path: Path) -> None:
    seeds = [0, 1, 2]
    result = run_evaluator(chammi, tmp_path, "hpa", classifiers=["sgd"], sgd={"seeds": seeds})
    x, meta = features(chammi, "hpa"), chammi.frames["hpa"]
    per_seed = []
    for seed in seeds:
        def fit_predict(train_x, train_y, test_x, seed=seed):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # MorphEm's max_iter=100 is often reached
                model = SGDClassifier(alpha=0.001, max_iter=100, random_state=seed).fit(train_x, train_y)
            return model.predict(test_x)
        per_seed.append(reference_table(meta, x, "hpa", fit_predict))
    row = result["table"][0]
    assert row["classifier"] == "sgd" and result["seeds"]["sgd"]["seeds"] == seeds
    for column in COLUMNS["hpa"]:
        values = [s[column] for s in per_seed]
        assert row[column] == pytest.approx(np.mean(values), abs=1e-12)
        assert result["metrics"][f"sgd_{column.replace(' ', '_')}_std"] == pytest.approx(np.std(values), abs=1e-12)
    task = result["scores"]["sgd"]["hpa"]["Task_two"]
    assert task["macro_f1_per_seed"] == pytest.approx([s["HPA T2"] for s in per_seed])
    with pytest.raises(ValueError, match=r"sgd\.seeds must be a non-empty list of distinct integers"):
        ChammiEvaluatorConfig(classifiers=["sgd"], sgd={"seeds": [1, 1]})  # type: ignore[arg-type]
