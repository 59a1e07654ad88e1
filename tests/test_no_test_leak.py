"""No evaluator (knn, linear, cross_validation) looks at the test split before its final score.

Two kinds of evidence, for each evaluator:

- recording: the functions that fit (the linear probe, the kNN memory of faiss) are wrapped and every
  array they receive is matched, row by row, against the embedding table: no test row is ever among them;
- permutation: the test rows' labels are shuffled (and for the linear probe the test features replaced by
  noise); the model selection (chosen head, whole grid of validation scores, few-shot draws) and the test
  predictions stay exactly the same; only the final score, which reads the shuffled labels, changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cellssl.eval.cross_validation as cv_module
import cellssl.eval.engines.knn as knn_module
import cellssl.eval.knn as knn_evaluator_module
import cellssl.eval.linear as linear_module
from cellssl.embed.store import EmbeddingTable
from cellssl.eval.base import EvalContext
from cellssl.eval.cross_validation import CrossValidationConfig, build_cross_validation, fold_assignment
from cellssl.eval.engines.splits import SplitConfig
from cellssl.eval.knn import KNNEvaluatorConfig, build_knn_evaluator
from cellssl.eval.linear import LinearEvaluatorConfig, build_linear_evaluator

N = 240


def _table(seed: int = 0) -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 3
    x = (np.eye(3, 10)[y] * 1.5 + rng.normal(size=(N, 10))).astype(np.float32)
    meta = pd.DataFrame({
        "label": np.array(["a", "b", "c"])[y],
        "part": np.where(np.arange(N) % 4 == 0, "test", "train"),  # a split that does not read labels
        "fov_id": np.arange(N) // 8,
    })
    return EmbeddingTable(meta, x)


TEST = np.flatnonzero(np.arange(N) % 4 == 0)
COLUMN_SPLIT = SplitConfig(mode="column", column="part", train_values=["train"], test_values=["test"])


def _rows_of(array: Any, table: EmbeddingTable) -> set[int]:
    """Table row positions of the rows of ``array`` (exact match of every value)."""
    lookup = {row.tobytes(): i for i, row in enumerate(table.embeddings)}
    rows = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
    found = {lookup.get(row.tobytes(), -1) for row in rows}
    assert -1 not in found, "an array given to a fitting function holds rows that are not table rows"
    return found


def _shuffled_labels(table: EmbeddingTable, rows: np.ndarray, seed: int = 1) -> EmbeddingTable:
    meta = table.metadata.copy()
    values = meta["label"].to_numpy().copy()
    shuffled = values[rows][np.random.default_rng(seed).permutation(len(rows))]
    assert (shuffled != values[rows]).any()
    values[rows] = shuffled
    meta["label"] = values
    return EmbeddingTable(meta, table.embeddings.copy())


class _Recorder:
    """Wraps ``function`` and keeps its positional / keyword array arguments per call."""

    def __init__(self, function: Any) -> None:
        self.function, self.calls = function, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return self.function(*args, **kwargs)


def test_linear_probe_fits_and_selects_without_the_test_rows(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table()
    fit = _Recorder(linear_module.fit_linear_probe)
    scored = _Recorder(linear_module.multiclass_metrics)
    monkeypatch.setattr(linear_module, "fit_linear_probe", fit)
    monkeypatch.setattr(linear_module, "multiclass_metrics", scored)
    config = LinearEvaluatorConfig(label_column="label", split=COLUMN_SPLIT, min_steps=60)

    base = build_linear_evaluator(config).evaluate(table, EvalContext(tmp_path))
    (args, kwargs), = fit.calls
    assert not _rows_of(args[0], table) & set(TEST)
    assert kwargs["val_x"] is None  # validation is carved inside fit_linear_probe, from args[0] only

    noisy = EmbeddingTable(table.metadata, table.embeddings.copy())
    noisy.embeddings[TEST] = np.random.default_rng(5).normal(size=(len(TEST), 10)).astype(np.float32)
    shuffled = _shuffled_labels(table, TEST)
    runs = [build_linear_evaluator(config).evaluate(t, EvalContext(tmp_path)) for t in (noisy, shuffled)]
    for run in runs:
        assert run["chosen"] == base["chosen"] and run["grid"] == base["grid"]
    # Test predictions do not depend on the test labels; the score reads them (and changes).
    truth = [np.asarray(call[0][0]) for call in scored.calls]
    predictions = [np.asarray(call[0][1]) for call in scored.calls]
    np.testing.assert_array_equal(predictions[0], predictions[2])
    assert not np.array_equal(truth[0], truth[2])
    assert runs[1]["metrics"]["accuracy"] < base["metrics"]["accuracy"]


def test_linear_named_validation_split_stays_inside_the_train_rows(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table()
    fit = _Recorder(linear_module.fit_linear_probe)
    monkeypatch.setattr(linear_module, "fit_linear_probe", fit)
    config = LinearEvaluatorConfig(label_column="label", split=COLUMN_SPLIT, min_steps=30,
                                   val_split=SplitConfig(mode="group", column="fov_id", test_fraction=0.25))
    build_linear_evaluator(config).evaluate(table, EvalContext(tmp_path))
    (args, kwargs), = fit.calls
    fit_rows, val_rows = _rows_of(args[0], table), _rows_of(kwargs["val_x"], table)
    assert not (fit_rows | val_rows) & set(TEST)
    assert fit_rows | val_rows == set(range(N)) - set(TEST) and not fit_rows & val_rows
    fovs = table.metadata["fov_id"].to_numpy()
    assert not set(fovs[list(fit_rows)]) & set(fovs[list(val_rows)])


def test_knn_memory_and_few_shot_draws_exclude_the_test_rows(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table()
    search = _Recorder(knn_module.knn_search)
    scored = _Recorder(knn_module.multiclass_metrics)
    few_scored = _Recorder(knn_evaluator_module.multiclass_metrics)
    monkeypatch.setattr(knn_module, "knn_search", search)
    monkeypatch.setattr(knn_module, "multiclass_metrics", scored)
    monkeypatch.setattr(knn_evaluator_module, "multiclass_metrics", few_scored)
    config = KNNEvaluatorConfig(label_column="label", ks=[1, 5], split=COLUMN_SPLIT,
                                few_shot={"shots": [2, 5], "draws": 3})
    base = build_knn_evaluator(config).evaluate(table, EvalContext(tmp_path))
    assert len(search.calls) == 1 + 2 * 3
    for args, _ in search.calls:
        memory, queries = _rows_of(args[0], table), _rows_of(args[1], table)
        assert not memory & set(TEST) and queries == set(TEST)

    shuffled = build_knn_evaluator(config).evaluate(_shuffled_labels(table, TEST), EvalContext(tmp_path))
    assert shuffled["few_shot"]["shots"]["2"]["train_rows"] == base["few_shot"]["shots"]["2"]["train_rows"]
    half = len(scored.calls) // 2
    for first, second in zip(scored.calls[:half], scored.calls[half:], strict=True):
        np.testing.assert_array_equal(first[0][1], second[0][1])  # same predictions
        assert not np.array_equal(first[0][0], second[0][0])  # the score reads the shuffled labels
    half = len(few_scored.calls) // 2
    for first, second in zip(few_scored.calls[:half], few_scored.calls[half:], strict=True):
        np.testing.assert_array_equal(first[0][1], second[0][1])


def test_cross_validation_fits_each_fold_on_its_training_folds_only(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    table = _table()
    search = _Recorder(knn_module.knn_search)
    fit = _Recorder(linear_module.fit_linear_probe)
    scored = _Recorder(cv_module.classification_scores)
    monkeypatch.setattr(knn_module, "knn_search", search)
    monkeypatch.setattr(linear_module, "fit_linear_probe", fit)
    monkeypatch.setattr(cv_module, "classification_scores", scored)
    # Grouped folds without stratification do not read the labels, so shuffling them keeps the folds.
    config = CrossValidationConfig(label_column="label", folds=4, group_column="fov_id", stratify=False,
                                   classifiers=[{"name": "knn", "ks": [1, 20]}, {"name": "linear", "min_steps": 30}])
    base = build_cross_validation(config).evaluate(table, EvalContext(tmp_path))
    groups = table.metadata["fov_id"].astype(str).to_numpy()
    folds = fold_assignment(N, 4, groups=groups, seed=0)
    assert len(search.calls) == len(fit.calls) == 4
    for (train, test), (knn_args, _), (fit_args, _) in zip(folds, search.calls, fit.calls, strict=True):
        assert _rows_of(knn_args[0], table) == set(train) and _rows_of(knn_args[1], table) == set(test)
        assert _rows_of(fit_args[0], table) == set(train)  # the head is chosen inside the training folds

    first_test = folds[0][1]
    shuffled = build_cross_validation(config).evaluate(_shuffled_labels(table, first_test), EvalContext(tmp_path))
    assert shuffled["folds"][0]["classifiers"] == base["folds"][0]["classifiers"]  # same chosen head
    rows_per_fold = 3  # 1-NN, 20-NN, linear probe
    for first, second in zip(scored.calls[:rows_per_fold], scored.calls[4 * rows_per_fold: 5 * rows_per_fold],
                             strict=True):
        np.testing.assert_array_equal(first[0][1], second[0][1])  # fold 0's predictions are unchanged
        assert not np.array_equal(first[0][0], second[0][0])
