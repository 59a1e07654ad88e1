"""The ``regression`` evaluator: cross-validated regression of continuous targets from embeddings.

YAML block::

    eval:
      - name: regression
        target_columns: [cell_area, viability]        # numeric metadata columns, and/or
        target_from_image: [{channel: dna, statistic: background_subtracted_sum, name: dna_content}]
        aggregate_by: []                              # e.g. [plate, well]: profiles (mean per group) first
        folds: 5
        group_column: null                            # e.g. plate: a group's rows share one test fold
        regressors: [ridge, knn, random_forest]

Protocol. The rows (cells, or profiles with ``aggregate_by``) are assigned once to ``folds`` shuffled folds
(``KFold``, or ``GroupKFold`` with ``group_column``; seeded by ``seed``), shared by every target and regressor.
Each target is fitted on its own (one model per target); rows where it is missing are left out of that
target's training and test rows. In fold ``i`` a scikit-learn ``Pipeline`` (``StandardScaler`` when
``standardize``, then ``RidgeCV`` / ``KNeighborsRegressor`` / ``RandomForestRegressor``) is fitted on the
other folds and predicts fold ``i``: the scaler, ridge's alpha and every other fitted quantity come from
training rows only. Per fold: R² (``sklearn.metrics.r2_score``), Pearson and Spearman correlation
(``scipy.stats``) of predicted against measured; reported as mean and std over the folds
(``<regressor>_<target>_<score>_mean`` / ``_std``), with ``_r2_pooled`` the R² of all out-of-fold predictions at
once (what ``cross_val_predict`` + ``r2_score`` give). ``<regressor>_mean_r2`` / ``_median_r2``: over targets.

Figures in ``eval/``: ``<prefix>_r2_cdf.png`` (cumulative distribution of the fold-mean R² over targets, one
curve per regressor) and ``<prefix>_scatter.png`` (out-of-fold predicted vs measured for the
``scatter_targets`` best targets of the best regressor).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext, Evaluator, to_jsonable
from cellssl.eval.classifier import format_mean_std, mean_std, row_key
from cellssl.eval.regression_config import RegressionConfig
from cellssl.eval.regression_targets import aggregate_profiles, image_targets, numeric_target

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)

SCORES = ("r2", "pearson", "spearman")


def make_regressor(name: str, config: RegressionConfig, train_rows: int) -> Any:
    """An unfitted scikit-learn ``Pipeline`` for regressor ``name`` (``StandardScaler`` first when configured).

    :param train_rows: rows it will be fitted on (kNN's neighbour count is capped by it).
    :raises ValueError: for an unknown name.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "ridge":
        model: Any = RidgeCV(alphas=list(config.ridge_alphas))
    elif name == "knn":
        model = KNeighborsRegressor(n_neighbors=min(config.knn_neighbors, train_rows), weights=config.knn_weights,
                                    n_jobs=config.n_jobs)
    elif name == "random_forest":
        model = RandomForestRegressor(n_estimators=config.forest_trees, max_depth=config.forest_max_depth,
                                      min_samples_leaf=config.forest_min_samples_leaf, random_state=config.seed,
                                      n_jobs=config.n_jobs)
    else:
        raise ValueError(f"unknown regressor {name!r}")
    steps = [StandardScaler(), model] if config.standardize else [model]
    return make_pipeline(*steps)


def regression_scores(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """``r2`` (scikit-learn), ``pearson`` and ``spearman`` (scipy) of ``predicted`` against ``measured``.

    A correlation with a constant side is NaN (reported as ``null``); R² needs at least two rows (else NaN).
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import r2_score

    measured = np.asarray(measured, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if measured.size < 2:
        return {"r2": float("nan"), "pearson": float("nan"), "spearman": float("nan")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        pearson = float(pearsonr(measured, predicted)[0])
        spearman = float(spearmanr(measured, predicted)[0])
    return {"r2": float(r2_score(measured, predicted)), "pearson": pearson, "spearman": spearman}


def cross_validated_predictions(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
                                regressor: str, config: RegressionConfig) -> tuple[
                                    np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold predictions of one target and the scores of each fold.

    :param y: ``(n,)`` target; NaN rows are neither fitted nor predicted (their prediction stays NaN).
    :param folds: ``(train positions, test positions)`` pairs over all ``n`` rows.
    :return: ``(predictions (n,), per-fold records {fold, train_rows, test_rows, r2, pearson, spearman})``.
    :raises DataError: when a fold has fewer than two training rows with the target.
    """
    valid = np.isfinite(y)
    predictions = np.full(y.shape, np.nan)
    records = []
    for index, (train, test) in enumerate(folds):
        train, test = train[valid[train]], test[valid[test]]
        if train.size < 2:
            raise DataError(f"fold {index} has {train.size} training rows with this target; lower `folds`")
        if test.size == 0:
            continue
        model = make_regressor(regressor, config, int(train.size))
        model.fit(x[train], y[train])
        predictions[test] = model.predict(x[test])
        records.append({"fold": index, "train_rows": int(train.size), "test_rows": int(test.size),
                        **regression_scores(y[test], predictions[test])})
    return predictions, records


def _summary(records: list[dict[str, Any]], ddof: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for score in SCORES:
        values = [r[score] for r in records if np.isfinite(r[score])]
        mean, std = mean_std(values, ddof=ddof) if values else (float("nan"), float("nan"))
        out[f"{score}_mean"], out[f"{score}_std"] = mean, std
    return out


class RegressionEvaluator(Evaluator):
    """Cross-validated ridge / kNN / random-forest regression of continuous targets (see the module docstring)."""

    name = "regression"

    def __init__(self, config: RegressionConfig) -> None:
        self.config = config

    def targets(self, table: EmbeddingTable, context: EvalContext) -> dict[str, np.ndarray]:
        """Every target for every table row: metadata columns, then the image measurements.

        :raises ConfigError: for image targets when the run has no dataset (``context.load_dataset``).
        """
        cfg = self.config
        out = {c: numeric_target(table.metadata, c, self.name) for c in cfg.target_columns}
        if cfg.target_from_image:
            if context.load_dataset is None:
                raise ConfigError(f"{self.name}.target_from_image",
                                  "needs the run's images (a config with `data:`); use target_columns instead")
            dataset, _ = context.load_dataset()
            out.update(image_targets(table.metadata, dataset, cfg.target_from_image, self.name))
        return out

    def _folds(self, metadata: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
        from cellssl.eval.cross_validation import fold_assignment, group_values

        cfg = self.config
        groups = group_values(metadata, cfg.group_column, self.name) if cfg.group_column else None
        return fold_assignment(len(metadata), cfg.folds, groups=groups, seed=cfg.seed)

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Cross-validate every regressor on every target and draw the figures.

        :return: ``{"evaluator", "task": "regression", "metrics" (flat), "table" (one row per regressor and
            target), "targets" (per target: rows, mean, std, per regressor the per-fold scores), "figures"
            (paths relative to the run directory), "aggregation", "split", "embedding_dim", "config",
            "identity"}``.
        :raises ConfigError: image targets without the run's images, a channel the dataset lacks.
        :raises DataError: missing or non-numeric target columns, too few rows or groups for the folds.
        """
        cfg = self.config
        metadata, embeddings = table.metadata, np.asarray(table.embeddings, dtype=np.float32)
        targets = self.targets(table, context)
        aggregation: dict[str, Any] = {"by": list(cfg.aggregate_by), "rows_in": len(table)}
        if cfg.aggregate_by:
            metadata, embeddings, targets = aggregate_profiles(metadata, embeddings, targets, cfg.aggregate_by,
                                                               cfg.group_column, self.name)
        aggregation["rows_out"] = len(metadata)
        folds = self._folds(metadata)
        metrics: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        per_target: dict[str, Any] = {}
        oof: dict[tuple[str, str], np.ndarray] = {}
        for target, y in targets.items():
            valid = np.isfinite(y)
            if valid.sum() < cfg.folds:
                raise DataError(f"target '{target}' has {int(valid.sum())} rows with a value, fewer than "
                                f"{cfg.folds} folds; lower `{self.name}.folds`")
            entry: dict[str, Any] = {"rows": int(valid.sum()), "missing": int((~valid).sum()),
                                     "mean": float(y[valid].mean()), "std": float(y[valid].std()), "regressors": {}}
            for regressor in cfg.regressors:
                predicted, records = cross_validated_predictions(embeddings, y, folds, regressor, cfg)
                summary = _summary(records, cfg.std_ddof)
                pooled = regression_scores(y[valid], predicted[valid])
                oof[(regressor, target)] = predicted
                prefix = f"{regressor}_{row_key(target)}"
                for score, value in summary.items():
                    metrics[f"{prefix}_{score}"] = value
                metrics[f"{prefix}_r2_pooled"] = pooled["r2"]
                entry["regressors"][regressor] = {**summary, "pooled": pooled, "folds": records}
                rows.append({"regressor": regressor, "target": target, "rows": int(valid.sum()),
                             **{f"{s}": format_mean_std(summary[f"{s}_mean"], summary[f"{s}_std"]) for s in SCORES},
                             "r2_pooled": pooled["r2"]})
                logger.info("regression %s -> %s: R² %.4f ± %.4f", regressor, target, summary["r2_mean"],
                            summary["r2_std"])
            per_target[target] = entry
        r2_by_regressor = {r: [per_target[t]["regressors"][r]["r2_mean"] for t in targets] for r in cfg.regressors}
        for regressor, values in r2_by_regressor.items():
            finite = [v for v in values if np.isfinite(v)]
            metrics[f"{regressor}_mean_r2"] = float(np.mean(finite)) if finite else float("nan")
            metrics[f"{regressor}_median_r2"] = float(np.median(finite)) if finite else float("nan")
        figures = self._figures(context, r2_by_regressor, targets, oof, per_target, metrics)
        result = {
            "evaluator": self.name,
            "task": "regression",
            "metrics": metrics,
            "table": rows,
            "targets": per_target,
            "figures": figures,
            "aggregation": aggregation,
            "split": {"mode": "group_kfold" if cfg.group_column else "kfold", "folds": len(folds),
                      "group_column": cfg.group_column, "rows": len(metadata),
                      "test_rows": [int(test.size) for _, test in folds]},
            "embedding_dim": int(embeddings.shape[1]),
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)

    def _figures(self, context: EvalContext, r2_by_regressor: dict[str, list[float]], targets: dict[str, np.ndarray],
                 oof: dict[tuple[str, str], np.ndarray], per_target: dict[str, Any],
                 metrics: dict[str, float]) -> dict[str, str]:
        from cellssl.eval.engines.figures import relative_to
        from cellssl.eval.regression_figures import plot_predicted_vs_measured, plot_r2_cdf

        cfg = self.config
        folder = context.run_dir / "eval"
        out = {"r2_cdf": relative_to(plot_r2_cdf(r2_by_regressor, folder / f"{cfg.figure_prefix}_r2_cdf.png"),
                                     context.run_dir)}
        if cfg.scatter_targets:
            def score(regressor: str) -> float:
                value = metrics[f"{regressor}_mean_r2"]
                return value if np.isfinite(value) else -np.inf

            best = max(cfg.regressors, key=score)
            ranked = sorted(targets, key=lambda t: -np.nan_to_num(per_target[t]["regressors"][best]["pooled"]["r2"],
                                                                  nan=-np.inf))
            panels = []
            for target in ranked[: cfg.scatter_targets]:
                y, predicted = targets[target], oof[(best, target)]
                keep = np.isfinite(y) & np.isfinite(predicted)
                pooled_r2 = per_target[target]["regressors"][best]["pooled"]["r2"]
                panels.append((target, y[keep], predicted[keep], pooled_r2))
            path = plot_predicted_vs_measured(panels, best, folder / f"{cfg.figure_prefix}_scatter.png", seed=cfg.seed)
            out["scatter"] = relative_to(path, context.run_dir)
            out["scatter_regressor"] = best
        return out


def build_regression(config: RegressionConfig) -> RegressionEvaluator:
    """Factory registered under the name ``regression``."""
    return RegressionEvaluator(config)
