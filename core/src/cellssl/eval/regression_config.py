"""The ``regression`` evaluator's parameters (:class:`RegressionConfig`), importable without torch or scikit-learn.

The evaluator is :class:`cellssl.eval.regression.RegressionEvaluator`; targets measured from the images are
computed by :mod:`cellssl.eval.regression_targets`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Regressors the evaluator can cross-validate (scikit-learn estimators, standardised inside each fold).
REGRESSORS = ("ridge", "knn", "random_forest")
#: Per-image statistics of one channel usable as a target (see :mod:`cellssl.eval.regression_targets`).
IMAGE_STATISTICS = ("sum", "mean", "background_subtracted_sum")
KNN_WEIGHTS = ("uniform", "distance")


@dataclass
class ImageTargetConfig:
    """A continuous target measured from each row's raw image (YAML: an entry of ``target_from_image``).

    :ivar channel: channel name (or vocabulary alias, ``DAPI`` -> ``dna``) to measure; it may be a channel the
        run's ``use_channels`` leaves out: the target is read from the unselected dataset.
    :ivar statistic: ``sum`` (of the bit-depth-scaled pixel values over the image), ``mean``, or
        ``background_subtracted_sum`` (``sum(x - b)`` with ``b`` the median of the image's one-pixel border:
        the integrated intensity of a centred single-cell crop above its background).
    :ivar name: the target's name in the result (default ``<channel>_<statistic>``).
    """

    channel: str = ""
    statistic: str = "background_subtracted_sum"
    name: str = ""

    def __post_init__(self) -> None:
        if not self.channel:
            raise ValueError("target_from_image: `channel` is required, e.g. {channel: dna, statistic: sum}")
        if self.statistic not in IMAGE_STATISTICS:
            raise ValueError(f"target_from_image.statistic must be one of {', '.join(IMAGE_STATISTICS)}, "
                             f"got {self.statistic!r}")

    @property
    def target_name(self) -> str:
        """The name the target is reported under."""
        return self.name or f"{self.channel}_{self.statistic}"


@dataclass
class RegressionConfig:
    """Parameters of the ``regression`` evaluator.

    :ivar target_columns: numeric metadata columns to predict (one model per target).
    :ivar target_from_image: targets measured from the images (:class:`ImageTargetConfig`); at least one
        target (column or image) is required.
    :ivar aggregate_by: metadata columns whose groups are averaged (embeddings and targets) before
        cross-validation (profiles, e.g. ``[plate, well]``); empty: one row per cell.
    :ivar folds: number of cross-validation folds (>= 2).
    :ivar group_column: rows sharing a value of this column are in the same fold (``GroupKFold``); with
        ``aggregate_by`` it must be one of those columns or constant within each group.
    :ivar seed: seed of the fold assignment and of the random forest.
    :ivar regressors: any of ``ridge``, ``knn``, ``random_forest``.
    :ivar standardize: standardise the features inside each fold (``StandardScaler`` in the ``Pipeline``,
        fitted on the fold's training rows only).
    :ivar ridge_alphas: the alphas ``RidgeCV`` chooses from (by efficient leave-one-out on the training rows).
    :ivar knn_neighbors: neighbours of kNN regression (capped by the training rows).
    :ivar knn_weights: ``uniform`` or ``distance`` weighting of the neighbours.
    :ivar forest_trees: trees of the random forest.
    :ivar forest_max_depth: maximum tree depth (``None``: unlimited).
    :ivar forest_min_samples_leaf: minimum rows per leaf.
    :ivar n_jobs: parallel jobs of the random forest and kNN (``None``: one).
    :ivar std_ddof: 0 (population) or 1 (sample) standard deviation over the folds.
    :ivar scatter_targets: predicted-vs-measured panels drawn (the targets with the highest R²).
    :ivar figure_prefix: file stem of the PNGs written to ``eval/`` (``<prefix>_r2_cdf.png``,
        ``<prefix>_scatter.png``).
    """

    target_columns: list[str] = field(default_factory=list)
    target_from_image: list[ImageTargetConfig] = field(default_factory=list)
    aggregate_by: list[str] = field(default_factory=list)
    folds: int = 5
    group_column: str | None = None
    seed: int = 0
    regressors: list[str] = field(default_factory=lambda: list(REGRESSORS))
    standardize: bool = True
    ridge_alphas: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0])
    knn_neighbors: int = 10
    knn_weights: str = "distance"
    forest_trees: int = 100
    forest_max_depth: int | None = None
    forest_min_samples_leaf: int = 1
    n_jobs: int | None = None
    std_ddof: int = 0
    scatter_targets: int = 4
    figure_prefix: str = "regression"

    def __post_init__(self) -> None:
        self.target_from_image = [ImageTargetConfig(**t) if isinstance(t, dict) else t
                                  for t in self.target_from_image]
        if not self.target_columns and not self.target_from_image:
            raise ValueError("name at least one target: `target_columns: [column, ...]` or "
                             "`target_from_image: [{channel: dna, statistic: sum}]`")
        names = list(self.target_columns) + [t.target_name for t in self.target_from_image]
        if len(set(names)) != len(names):
            raise ValueError(f"target names must be distinct, got {names}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if not self.regressors:
            raise ValueError(f"regressors must list at least one of {', '.join(REGRESSORS)}")
        unknown = [r for r in self.regressors if r not in REGRESSORS]
        if unknown:
            raise ValueError(f"regressors: unknown {unknown}; choose from {', '.join(REGRESSORS)}")
        if len(set(self.regressors)) != len(self.regressors):
            raise ValueError(f"regressors lists a regressor twice: {self.regressors}")
        if not self.ridge_alphas or min(self.ridge_alphas) <= 0:
            raise ValueError(f"ridge_alphas must be a non-empty list of values > 0, got {self.ridge_alphas}")
        if self.knn_neighbors < 1:
            raise ValueError(f"knn_neighbors must be >= 1, got {self.knn_neighbors}")
        if self.knn_weights not in KNN_WEIGHTS:
            raise ValueError(f"knn_weights must be one of {', '.join(KNN_WEIGHTS)}, got {self.knn_weights!r}")
        if self.forest_trees < 1 or self.forest_min_samples_leaf < 1:
            raise ValueError("forest_trees and forest_min_samples_leaf must be >= 1")
        if self.forest_max_depth is not None and self.forest_max_depth < 1:
            raise ValueError(f"forest_max_depth must be >= 1 or null, got {self.forest_max_depth}")
        if self.n_jobs is not None and self.n_jobs == 0:
            raise ValueError("n_jobs must be a non-zero integer or null")
        if self.std_ddof not in (0, 1):
            raise ValueError(f"std_ddof must be 0 (population) or 1 (sample), got {self.std_ddof}")
        if self.scatter_targets < 0:
            raise ValueError(f"scatter_targets must be >= 0, got {self.scatter_targets}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.figure_prefix):
            raise ValueError(f"figure_prefix must be letters, digits, '-' or '_', got {self.figure_prefix!r}")

    def required_columns(self) -> list[tuple[str, str]]:
        """``(field, column)`` pairs of the metadata columns this config names (checked by the run plan)."""
        pairs = [(f"target_columns[{i}]", c) for i, c in enumerate(self.target_columns)]
        pairs += [(f"aggregate_by[{i}]", c) for i, c in enumerate(self.aggregate_by)]
        if self.group_column:
            pairs.append(("group_column", self.group_column))
        return pairs

    @property
    def target_names(self) -> list[str]:
        """Every target, columns first, then image targets."""
        return list(self.target_columns) + [t.target_name for t in self.target_from_image]
