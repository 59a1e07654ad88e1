"""The blood-cell table (``cross_validation``) against scikit-learn, fold by fold.

The blood-cell DINOv2 fork reports, over 5 stratified folds, KNeighborsClassifier with 1 and 20 neighbours
and a logistic regression, each scored with macro F1, recall, precision and balanced accuracy, as
``mean ± std`` in percent. cellssl's ``knn`` classifier with ``metric: l2, voting: majority`` is
scikit-learn's ``KNeighborsClassifier(n_neighbors=k)`` (Euclidean, uniform weights, ties to the smallest
class); this test checks every cell of the table against scikit-learn on the same folds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier

from cellssl.eval.base import EvalContext
from cellssl.eval.cross_validation import CrossValidationConfig, CrossValidationEvaluator
from cellssl.eval.embeddings import EmbeddingTable


@pytest.fixture(scope="module")
def blood(shared_data) -> tuple[np.ndarray, pd.DataFrame]:
    """Colour statistics of 300 real BCCD blood-cell crops (3 classes) and their metadata."""
    from PIL import Image

    root = shared_data / "bccd-bloodcells"
    paths = sorted(root.glob("*/*.jpg"))
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": [p.parent.name for p in paths]})
    frame = frame.groupby("label").head(100).reset_index(drop=True)
    rows = []
    for path in frame["path"]:
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
        rows.append(np.concatenate([image.mean(axis=(0, 1)), image.std(axis=(0, 1)), [image.shape[0] / 100]]))
    return np.asarray(rows, dtype=np.float32), frame


def test_five_fold_table_equals_scikit_learn(blood, tmp_path) -> None:
    x, frame = blood
    config = CrossValidationConfig(label_column="label", folds=5, stratify=True, seed=0,
                                   classifiers=[{"name": "knn", "ks": [1, 20], "metric": "l2", "voting": "majority"}])
    result = CrossValidationEvaluator(config).evaluate(EmbeddingTable(metadata=frame, embeddings=x),
                                                       EvalContext(run_dir=tmp_path))
    y = pd.factorize(frame["label"], sort=True)[0]
    folds = StratifiedKFold(5, shuffle=True, random_state=0).split(np.arange(len(y)), y)
    per_fold: dict[int, list[list[float]]] = {1: [], 20: []}
    for train, test in folds:
        for k in (1, 20):
            pred = KNeighborsClassifier(n_neighbors=k).fit(x[train], y[train]).predict(x[test])
            per_fold[k].append([f1_score(y[test], pred, average="macro"), recall_score(y[test], pred, average="macro"),
                                precision_score(y[test], pred, average="macro", zero_division=0),
                                balanced_accuracy_score(y[test], pred)])
    for k in (1, 20):
        values = np.asarray(per_fold[k])
        for column, name in enumerate(["f1", "recall", "precision", "balanced_accuracy"]):
            assert result["metrics"][f"{k}_nn_{name}_mean"] == pytest.approx(values[:, column].mean(), abs=1e-12)
            assert result["metrics"][f"{k}_nn_{name}_std"] == pytest.approx(values[:, column].std(), abs=1e-12)
        row = next(r for r in result["table"] if r["classifier"] == f"{k}-NN")
        expected = f"{100 * values[:, 0].mean():.1f} ± {100 * values[:, 0].std():.1f}"
        assert row["F1 (%)"] == expected  # the fork's printed format: percent, one decimal, population std
