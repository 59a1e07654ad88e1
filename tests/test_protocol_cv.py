"""The blood-cell table (``cross_validation``) against scikit-learn, fold by fold.

The blood-cell DINOv2 fork (``notebooks/embedding_testing.ipynb``) reports, over
``KFold(5, shuffle=True, random_state=24)``, KNeighborsClassifier with 1 and 20 neighbours and
``LogisticRegression(multi_class="ovr")``, each scored with support-weighted F1, recall and precision and
balanced accuracy, as mean and pandas (sample) std in percent. cellssl's ``knn`` classifier with
``metric: l2, voting: majority`` is scikit-learn's ``KNeighborsClassifier(n_neighbors=k)`` (Euclidean,
uniform weights, ties to the smallest class), its ``logistic_regression`` classifier is scikit-learn's; these
tests check every cell of the table against scikit-learn on the same folds, with cellssl's defaults (macro,
stratified, population std) and with the fork's settings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier

from cellssl.embed.store import EmbeddingTable
from cellssl.eval.base import EvalContext
from cellssl.eval.cross_validation import CrossValidationConfig, CrossValidationEvaluator


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


FORK_CLASSIFIERS = [{"name": "knn", "ks": [1, 20], "metric": "l2", "voting": "majority"},
                    {"name": "logistic_regression", "multi_class": "ovr"}]


def test_blood_cell_fork_table_with_logistic_regression(blood, tmp_path) -> None:
    """The fork's notebook exactly: ``KFold(5, shuffle=True, random_state=24)`` (not stratified),
    ``KNeighborsClassifier(1)`` / ``(20)`` and ``LogisticRegression(multi_class="ovr")`` with scikit-learn's
    defaults (``OneVsRestClassifier(LogisticRegression())`` since scikit-learn 1.7 dropped ``multi_class``),
    support-weighted F1 / recall / precision, balanced accuracy, mean and pandas' sample std over the folds."""
    x, frame = blood
    config = CrossValidationConfig(label_column="label", folds=5, stratify=False, seed=24, average="weighted",
                                   std_ddof=1, classifiers=FORK_CLASSIFIERS)
    result = CrossValidationEvaluator(config).evaluate(EmbeddingTable(metadata=frame, embeddings=x),
                                                       EvalContext(run_dir=tmp_path))
    y = pd.factorize(frame["label"], sort=True)[0]
    models = {"1-NN": lambda: KNeighborsClassifier(n_neighbors=1),
              "20-NN": lambda: KNeighborsClassifier(n_neighbors=20),
              "logistic regression": lambda: OneVsRestClassifier(LogisticRegression())}
    per_fold: dict[str, list[list[float]]] = {name: [] for name in models}
    for train, test in KFold(n_splits=5, shuffle=True, random_state=24).split(x):
        for name, make in models.items():
            pred = make().fit(x[train].astype(np.float64), y[train]).predict(x[test].astype(np.float64))
            per_fold[name].append([f1_score(y[test], pred, average="weighted"),
                                   recall_score(y[test], pred, average="weighted"),
                                   precision_score(y[test], pred, average="weighted", zero_division=0),
                                   balanced_accuracy_score(y[test], pred)])
    assert result["scoring"]["average"] == "weighted" and result["scoring"]["std"] == "sample (ddof=1)"
    assert [r["classifier"] for r in result["table"]] == ["1-NN", "20-NN", "logistic regression"]
    for name in models:
        values = np.asarray(per_fold[name])
        key = name.replace("-", "_").replace(" ", "_").lower()
        for fold, record in enumerate(result["folds"]):
            got = record["scores"][name]
            assert [got["f1"], got["recall"], got["precision"], got["balanced_accuracy"]] == pytest.approx(
                values[fold].tolist(), abs=1e-12)
            assert got["recall"] == pytest.approx(got["accuracy"], abs=1e-12)  # weighted recall is accuracy
        for column, score in enumerate(["f1", "recall", "precision", "balanced_accuracy"]):
            assert result["metrics"][f"{key}_{score}_mean"] == pytest.approx(values[:, column].mean(), abs=1e-12)
            assert result["metrics"][f"{key}_{score}_std"] == pytest.approx(values[:, column].std(ddof=1), abs=1e-12)
        row = next(r for r in result["table"] if r["classifier"] == name)
        assert row["balanced accuracy (%)"] == f"{100 * values[:, 3].mean():.1f} ± {100 * values[:, 3].std(ddof=1):.1f}"
    logistic = [c for record in result["folds"] for c in record["classifiers"] if c.get("classifier")]
    assert len(logistic) == 5 and all(c["multi_class"] == "ovr" and c["converged"] for c in logistic)
    # the regression is a real classifier here, not a constant: well above the 1/3 of chance
    assert result["metrics"]["logistic_regression_balanced_accuracy_mean"] > 0.6


def test_logistic_regression_standalone_equals_scikit_learn(blood, tmp_path) -> None:
    """The standalone evaluator (multinomial, standardised) against scikit-learn on the same split rows."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cellssl.eval.engines.splits import SplitConfig, make_split
    from cellssl.eval.logistic_regression import LogisticRegressionConfig, LogisticRegressionEvaluator

    x, frame = blood
    split = {"mode": "fraction", "test_fraction": 0.3, "seed": 3}
    config = LogisticRegressionConfig(label_column="label", multi_class="multinomial", standardize=True, C=0.5,
                                      split=split)
    result = LogisticRegressionEvaluator(config).evaluate(EmbeddingTable(metadata=frame, embeddings=x),
                                                          EvalContext(run_dir=tmp_path))
    y = pd.factorize(frame["label"], sort=True)[0]
    train, test = make_split(frame, SplitConfig(**split), y)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5)).fit(x[train].astype(np.float64), y[train])
    pred = model.predict(x[test].astype(np.float64))
    assert result["split"]["test_rows"] == len(test) == 90
    assert result["metrics"]["accuracy"] == pytest.approx(float(np.mean(pred == y[test])), abs=1e-12)
    assert result["metrics"]["macro_f1"] == pytest.approx(f1_score(y[test], pred, average="macro"), abs=1e-12)
    assert result["metrics"]["mean_per_class_multiclass_f1"] == pytest.approx(result["metrics"]["macro_f1"])
    assert result["fit"] == {"multi_class": "multinomial", "iterations": result["fit"]["iterations"],
                             "converged": True}


def test_logistic_regression_multilabel_and_errors(blood, tmp_path) -> None:
    """Multi-label labels: one binary regression per label, as ``OneVsRestClassifier`` on the indicator matrix."""
    from cellssl.errors import DataError
    from cellssl.eval.logistic_regression import LogisticRegressionConfig, LogisticRegressionEvaluator

    x, frame = blood
    flags = frame.assign(white=frame["label"] == "WBC", not_red=frame["label"] != "RBC")
    config = LogisticRegressionConfig(label_columns=["white", "not_red"], skip_unlabelled=False,
                                      split={"mode": "fraction", "test_fraction": 0.25, "seed": 1})
    evaluator = LogisticRegressionEvaluator(config)
    result = evaluator.evaluate(EmbeddingTable(metadata=flags, embeddings=x), EvalContext(run_dir=tmp_path))
    truth = flags[["white", "not_red"]].to_numpy().astype(int)
    from cellssl.eval.engines.splits import make_split

    train, test = make_split(flags, config.split, None)
    expected = OneVsRestClassifier(LogisticRegression()).fit(x[train].astype(np.float64), truth[train])
    pred = expected.predict(x[test].astype(np.float64))
    f1 = f1_score(truth[test], pred, average=None, zero_division=0)
    assert result["task"] == "multilabel"
    assert result["metrics"]["mean_per_class_multilabel_f1"] == pytest.approx(float(f1.mean()), abs=1e-12)
    with pytest.raises(ValueError, match=r"multi_class must be one of ovr, multinomial, got 'softmax'"):
        LogisticRegressionConfig(multi_class="softmax")
    one_class = frame.assign(label="WBC")
    with pytest.raises(DataError, match="the training rows hold a single class"):
        LogisticRegressionEvaluator(LogisticRegressionConfig(label_column="label")).evaluate(
            EmbeddingTable(metadata=one_class, embeddings=x), EvalContext(run_dir=tmp_path))
