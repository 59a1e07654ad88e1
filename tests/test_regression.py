"""regression evaluator: scores against scikit-learn on the same folds, image targets, profiles, figures, errors.

Features and targets come from real Jurkat cells (imaging flow cytometry, brightfield / dna / darkfield): the
features are simple label-free measurements (brightfield and darkfield intensity statistics), the target
the cell's DNA content read from the raw dna channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy.stats import pearsonr, spearmanr
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, KFold, cross_val_predict, cross_val_score
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cellssl.config.validate import validate_block
from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext
from cellssl.eval.regression import build_regression
from cellssl.eval.regression_config import RegressionConfig
from cellssl.eval.regression_targets import image_statistic

PHASES = ("G1", "S_phase", "G2", "Prophase")


@pytest.fixture(scope="module")
def jurkat(shared_data: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """30 cells per large phase: metadata and raw images (bit-depth scaled, 3 x 40 x 40), read with tifffile."""
    root = shared_data / "jurkat-cellcycle"
    meta = pd.read_csv(root / "metadata.csv")
    meta = pd.concat([meta[meta.phase == p].head(30) for p in PHASES], ignore_index=True)
    images = np.stack([tifffile.imread(root / p).astype(np.float64) / 65535.0 for p in meta.path])
    return meta, images


def _features(images: np.ndarray) -> np.ndarray:
    """Label-free features: per-channel mean, std and 4 quantiles of brightfield and darkfield."""
    parts = []
    for c in (0, 2):
        flat = images[:, c].reshape(len(images), -1)
        parts += [flat.mean(1), flat.std(1), *np.quantile(flat, [0.1, 0.5, 0.9, 0.99], axis=1)]
    return np.stack(parts, 1).astype(np.float32)


def _dna_content(images: np.ndarray) -> np.ndarray:
    dna = images[:, 1]
    border = np.concatenate([dna[:, 0], dna[:, -1], dna[:, 1:-1, 0], dna[:, 1:-1, -1]], axis=1)
    return (dna - np.median(border, axis=1)[:, None, None]).sum(axis=(1, 2))


def _config(**params: object) -> RegressionConfig:
    return validate_block(params, RegressionConfig, "eval[0]")


def test_image_statistic_by_hand() -> None:
    channel = np.full((4, 5), 2.0)
    channel[1:3, 1:4] = [[5, 6, 7], [8, 9, 10]]  # inside the border; border median 2
    assert image_statistic(channel, "sum") == pytest.approx(2.0 * 14 + 45)
    assert image_statistic(channel, "mean") == pytest.approx((2.0 * 14 + 45) / 20)
    assert image_statistic(channel, "background_subtracted_sum") == pytest.approx(45 - 6 * 2.0)


def test_scores_equal_scikit_learn_on_the_same_folds(jurkat: tuple[pd.DataFrame, np.ndarray], tmp_path: Path) -> None:
    meta, images = jurkat
    x, dna = _features(images), _dna_content(images)
    meta = meta.assign(dna_content=dna, area=np.where(np.arange(len(meta)) % 7 == 0, np.nan, dna * 2 + 1))
    config = _config(target_columns=["dna_content", "area"], folds=4, seed=3, knn_neighbors=7,
                     forest_trees=20, forest_max_depth=5)
    result = build_regression(config).evaluate(EmbeddingTable(meta, x), EvalContext(run_dir=tmp_path))
    folds = list(KFold(4, shuffle=True, random_state=3).split(x))
    estimators = {
        "ridge": make_pipeline(StandardScaler(), RidgeCV(alphas=[0.1, 1.0, 10.0, 100.0, 1000.0])),
        "knn": make_pipeline(StandardScaler(), KNeighborsRegressor(7, weights="distance")),
        "random_forest": make_pipeline(StandardScaler(), RandomForestRegressor(20, max_depth=5, random_state=3)),
    }
    m = result["metrics"]
    y = dna.astype(np.float64)
    for name, estimator in estimators.items():
        per_fold = cross_val_score(estimator, x, y, cv=folds, scoring="r2")
        assert m[f"{name}_dna_content_r2_mean"] == pytest.approx(per_fold.mean(), abs=1e-9)
        assert m[f"{name}_dna_content_r2_std"] == pytest.approx(per_fold.std(), abs=1e-9)
        pooled = cross_val_predict(estimator, x, y, cv=folds)
        assert m[f"{name}_dna_content_r2_pooled"] == pytest.approx(r2_score(y, pooled), abs=1e-9)
        pearson = [pearsonr(y[te], pooled[te])[0] for _, te in folds]
        spearman = [spearmanr(y[te], pooled[te])[0] for _, te in folds]
        assert m[f"{name}_dna_content_pearson_mean"] == pytest.approx(np.mean(pearson), abs=1e-9)
        assert m[f"{name}_dna_content_spearman_std"] == pytest.approx(np.std(spearman), abs=1e-9)
    # `area` has missing values: those rows are neither fitted nor scored, on the same folds
    valid = np.isfinite(meta.area.to_numpy())
    ridge_folds = result["targets"]["area"]["regressors"]["ridge"]["folds"]
    assert [f["test_rows"] for f in ridge_folds] == [int(valid[te].sum()) for _, te in folds]
    assert result["targets"]["area"]["missing"] == int((~valid).sum())
    r2 = [r2_score(meta.area[te[valid[te]]], estimators["ridge"].fit(x[tr[valid[tr]]], meta.area[tr[valid[tr]]])
                   .predict(x[te[valid[te]]])) for tr, te in folds]
    assert m["ridge_area_r2_mean"] == pytest.approx(np.mean(r2), abs=1e-9)
    assert m["ridge_mean_r2"] == pytest.approx((m["ridge_dna_content_r2_mean"] + m["ridge_area_r2_mean"]) / 2)
    assert len(result["table"]) == 6 and result["task"] == "regression"
    assert result["split"]["test_rows"] == [len(te) for _, te in folds]
    for figure in ("regression_r2_cdf.png", "regression_scatter.png"):
        png = tmp_path / "eval" / figure
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert result["figures"]["r2_cdf"] == "eval/regression_r2_cdf.png"


def test_grouped_folds_and_profiles_against_pandas(jurkat: tuple[pd.DataFrame, np.ndarray], tmp_path: Path) -> None:
    meta, images = jurkat
    x, dna = _features(images), _dna_content(images)
    meta = meta.assign(dna_content=dna, well=np.arange(len(meta)) // 3, plate=np.arange(len(meta)) // 12)
    config = _config(target_columns=["dna_content"], aggregate_by=["well"], group_column="plate", folds=5,
                     regressors=["ridge"], scatter_targets=0)
    result = build_regression(config).evaluate(EmbeddingTable(meta, x), EvalContext(run_dir=tmp_path))
    profiles = pd.DataFrame(x.astype(np.float64)).groupby(meta.well).mean().to_numpy().astype(np.float32)
    y = meta.groupby("well").dna_content.mean().to_numpy()
    plates = meta.groupby("well").plate.first().to_numpy()
    folds = list(GroupKFold(5, shuffle=True, random_state=0).split(profiles, groups=plates.astype(str)))
    for _, test in folds:  # a plate never sits in two folds
        assert set(plates[test]).isdisjoint(set(np.delete(plates, test)))
    estimator = make_pipeline(StandardScaler(), RidgeCV(alphas=[0.1, 1.0, 10.0, 100.0, 1000.0]))
    expected = cross_val_score(estimator, profiles, y, cv=folds, scoring="r2")
    assert result["metrics"]["ridge_dna_content_r2_mean"] == pytest.approx(expected.mean(), abs=1e-6)
    assert result["aggregation"] == {"by": ["well"], "rows_in": 120, "rows_out": 40}
    assert result["split"]["mode"] == "group_kfold" and "scatter" not in result["figures"]


def _selection_context(shared_data: Path, tmp_path: Path, meta: pd.DataFrame) -> tuple[EvalContext, object]:
    from cellssl.plan.build import data_spec
    from cellssl.plan.checks import build_dataset

    table = tmp_path / "cells.csv"
    meta[["path", "phase", "cell_id"]].to_csv(table, index=False)
    spec = data_spec({"name": "table", "root": str(shared_data / "jurkat-cellcycle"), "table": str(table),
                      "bit_depth": "uint16", "use_channels": ["brightfield", "darkfield"]}, "data")
    dataset = build_dataset(spec)
    return EvalContext(run_dir=tmp_path, load_dataset=lambda: (dataset, None)), dataset


def test_target_from_a_channel_the_selection_left_out(jurkat: tuple[pd.DataFrame, np.ndarray], shared_data: Path,
                                                      tmp_path: Path) -> None:
    meta, images = jurkat
    context, dataset = _selection_context(shared_data, tmp_path, meta)
    assert tuple(dataset.channel_names) == ("brightfield", "darkfield")
    config = _config(target_from_image=[{"channel": "DAPI", "name": "dna_content"},
                                        {"channel": "darkfield", "statistic": "sum"}],
                     regressors=["ridge"], folds=3)
    evaluator = build_regression(config)
    table = EmbeddingTable(meta[["path", "phase", "cell_id"]], _features(images))
    targets = evaluator.targets(table, context)
    np.testing.assert_allclose(targets["dna_content"], _dna_content(images), rtol=1e-5)
    np.testing.assert_allclose(targets["darkfield_sum"], images[:, 2].sum(axis=(1, 2)), rtol=1e-5)
    result = evaluator.evaluate(table, context)
    # label-free intensity statistics predict the DNA content of these cells well above chance
    assert result["metrics"]["ridge_dna_content_r2_mean"] > 0.3
    assert result["targets"]["dna_content"]["rows"] == 120


def test_misaligned_or_missing_inputs_are_named(jurkat: tuple[pd.DataFrame, np.ndarray], shared_data: Path,
                                                tmp_path: Path) -> None:
    meta, images = jurkat
    context, _ = _selection_context(shared_data, tmp_path, meta)
    x = _features(images)
    shuffled = meta[["path", "phase", "cell_id"]].iloc[::-1].reset_index(drop=True)
    image_target = build_regression(_config(target_from_image=[{"channel": "dna"}], regressors=["ridge"]))
    with pytest.raises(DataError, match=r"regression: embedding row 0 .* is not dataset row 0"):
        image_target.evaluate(EmbeddingTable(shuffled, x), context)
    with pytest.raises(ConfigError, match=r"regression.target_from_image\[0\].channel.*'protein' is not in the "
                                          r"dataset \(its channels: \['brightfield', 'dna', 'darkfield'\]\)"):
        build_regression(_config(target_from_image=[{"channel": "protein"}])).evaluate(
            EmbeddingTable(meta[["path", "phase", "cell_id"]], x), context)
    with pytest.raises(ConfigError, match=r"regression.target_from_image.*needs the run's images"):
        image_target.evaluate(EmbeddingTable(meta, x), EvalContext(run_dir=tmp_path))
    with pytest.raises(DataError, match=r"target column 'volume' \(config key 'regression.target_columns'\)"):
        build_regression(_config(target_columns=["volume"])).evaluate(EmbeddingTable(meta, x),
                                                                       EvalContext(run_dir=tmp_path))
    with pytest.raises(DataError, match=r"target column 'phase' holds a value that is not a number at row 0: 'G1'"):
        build_regression(_config(target_columns=["phase"])).evaluate(EmbeddingTable(meta, x),
                                                                      EvalContext(run_dir=tmp_path))


@pytest.mark.parametrize(("params", "match"), [
    ({}, r"name at least one target"),
    ({"target_columns": ["a"], "regressors": ["lasso"]}, r"regressors: unknown \['lasso'\]"),
    ({"target_columns": ["a"], "folds": 1}, r"folds must be >= 2"),
    ({"target_from_image": [{"channel": "dna", "statistic": "max"}]}, r"statistic must be one of"),
    ({"target_columns": ["a"], "knn_weights": "gaussian"}, r"knn_weights must be one of"),
    ({"target_columns": ["a"], "ridge": 1}, r"eval\[0\]\.ridge.*unknown key"),
])
def test_config_errors_name_the_key(params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _config(**params)


def test_run_writes_regression_json_for_label_free_embeddings(runs: object) -> None:
    from cellssl.config.compose import load_run_config
    from cellssl.pipeline import execute

    config = runs.config(per_class=5)
    config["data"]["use_channels"] = ["brightfield", "darkfield"]
    config["eval"] = [{"name": "regression", "folds": 3, "regressors": ["ridge", "knn"], "knn_neighbors": 3,
                       "target_from_image": [{"channel": "dna", "name": "dna_content"}]}]
    run, outputs = execute(load_run_config(runs.write(config), []))
    result = outputs["eval"][0]
    assert result["embedding_dim"] == 64  # bag of channels, 2 channels x 32
    assert result["targets"]["dna_content"]["rows"] == 20
    assert (run.run_dir / "eval" / "regression.json").is_file()
    assert (run.run_dir / "eval" / "regression_r2_cdf.png").is_file()
    assert set(result["metrics"]) >= {"ridge_dna_content_r2_mean", "knn_dna_content_r2_pooled", "ridge_mean_r2"}
