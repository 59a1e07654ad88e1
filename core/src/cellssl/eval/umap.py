"""The ``umap`` evaluator: a seeded 2-D UMAP of the embeddings, one PNG per metadata column it is coloured by.

Writes ``<run_dir>/eval/umap/<column>.png``. Tables larger than ``max_points`` rows are subsampled
(uniformly, seeded). Columns with at most ``max_categories`` distinct values (or non-numeric ones) are
drawn as categories with a legend (the most frequent ``max_categories - 1`` by name, the rest as
``other``; missing values as ``missing``, in grey); numeric columns with more values use a colour bar.

YAML block::

    eval:
      - name: umap
        color_by: [moa, well]
        max_points: 20000
        n_neighbors: 15
        min_dist: 0.1
        metric: cosine
        seed: 0
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext, Evaluator, to_jsonable
from cellssl.eval.engines.figures import file_stem, new_figure, relative_to, save_png
from cellssl.eval.engines.profiles import require_columns

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean", "correlation", "manhattan")
MISSING = "missing"
OTHER = "other"


@dataclass
class UMAPConfig:
    """Parameters of the ``umap`` evaluator.

    :ivar color_by: metadata columns, one PNG each (default: the dataset's label columns).
    :ivar max_points: subsample larger tables to this many rows (seeded).
    :ivar n_neighbors: UMAP neighbourhood size (capped at the number of points - 1).
    :ivar min_dist: UMAP minimum distance between embedded points.
    :ivar metric: distance of the input space: cosine, euclidean, correlation, manhattan.
    :ivar seed: seed of the subsample and of UMAP (UMAP then runs single-threaded, reproducibly).
    :ivar max_categories: categorical columns show at most this many categories (the rest: ``other``).
    :ivar point_size: marker area; ``None``: chosen from the number of points.
    :ivar dpi: resolution of the PNGs.
    """

    color_by: list[str] = field(default_factory=list)
    max_points: int = 20000
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    seed: int = 0
    max_categories: int = 20
    point_size: float | None = None
    dpi: int = 120

    def __post_init__(self) -> None:
        if self.max_points < 5:
            raise ValueError(f"max_points must be >= 5, got {self.max_points}")
        if self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be >= 2, got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise ValueError(f"min_dist must be in [0, 1], got {self.min_dist}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.max_categories < 2:
            raise ValueError(f"max_categories must be >= 2, got {self.max_categories}")
        if self.point_size is not None and not self.point_size > 0:
            raise ValueError(f"point_size must be > 0 or null, got {self.point_size}")
        if self.dpi < 20:
            raise ValueError(f"dpi must be >= 20, got {self.dpi}")


def umap_2d(embeddings: np.ndarray, n_neighbors: int = 15, min_dist: float = 0.1, metric: str = "cosine",
            seed: int = 0) -> np.ndarray:
    """``(n, 2)`` float32 UMAP coordinates of ``embeddings`` (seeded, so reproducible).

    :raises DataError: for fewer than 5 rows.
    """
    import umap

    x = np.asarray(embeddings, dtype=np.float32)
    if x.shape[0] < 5:
        raise DataError(f"UMAP needs at least 5 embeddings, got {x.shape[0]}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*gradient function is not yet implemented.*")
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, x.shape[0] - 1), min_dist=min_dist,
                            metric=metric, random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(x), dtype=np.float32)


def _categories(values: pd.Series, max_categories: int) -> tuple[np.ndarray, list[str]]:
    """Per-row category names and the legend order (by frequency, ``other`` and ``missing`` last)."""
    text = values.astype(str).where(values.notna(), MISSING).to_numpy().astype(object)
    names, counts = np.unique(text[text != MISSING].astype(str), return_counts=True)
    ranked = [str(n) for n, _ in sorted(zip(names, counts, strict=True), key=lambda p: (-p[1], p[0]))]
    if len(ranked) > max_categories:
        keep = set(ranked[: max_categories - 1])
        text = np.array([t if t in keep or t == MISSING else OTHER for t in text], dtype=object)
        ranked = [*ranked[: max_categories - 1], OTHER]
    if (text == MISSING).any():
        ranked.append(MISSING)
    return text, ranked


def _palette(count: int) -> list[Any]:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["hsv"](i / count) for i in range(count)]


def plot_umap(coords: np.ndarray, values: pd.Series, column: str, path: Any, max_categories: int = 20,
              point_size: float | None = None, dpi: int = 120, title: str = "") -> dict[str, Any]:
    """Scatter ``coords`` coloured by ``values`` and save the PNG at ``path``.

    :return: ``{"column", "kind" ("categorical" | "continuous"), "categories" (legend entries, or the
        value range for continuous columns)}``.
    """
    import pandas as pd

    size = point_size if point_size is not None else float(np.clip(3000.0 / max(len(coords), 1), 1.0, 30.0))
    figure = new_figure(7.0, 6.0)
    axes = figure.add_subplot(1, 1, 1)
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and values.nunique(dropna=True) > max_categories:
        missing = values.isna().to_numpy()
        if missing.any():
            axes.scatter(coords[missing, 0], coords[missing, 1], s=size, c="lightgrey", linewidths=0, label=MISSING)
        shown = axes.scatter(coords[~missing, 0], coords[~missing, 1], s=size, c=values.to_numpy()[~missing],
                             cmap="viridis", linewidths=0)
        figure.colorbar(shown, ax=axes, label=column)
        info: dict[str, Any] = {"kind": "continuous", "categories": [float(values.min()), float(values.max())]}
    else:
        text, order = _categories(values, max_categories)
        colours = _palette(len(order))
        for name, colour in zip(order, colours, strict=True):
            rows = text == name
            axes.scatter(coords[rows, 0], coords[rows, 1], s=size, color="lightgrey" if name == MISSING else colour,
                         linewidths=0, label=f"{name} ({int(rows.sum())})")
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", markerscale=max(1.0, 8 / size),
                    frameon=False, title=column)
        info = {"kind": "categorical", "categories": order}
    axes.set_xlabel("UMAP 1")
    axes.set_ylabel("UMAP 2")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title or f"UMAP coloured by {column}")
    save_png(figure, path, dpi=dpi)
    return {"column": column, **info}


class UMAPEvaluator(Evaluator):
    """2-D UMAP pictures of an embedding table."""

    name = "umap"

    def __init__(self, config: UMAPConfig) -> None:
        self.config = config

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Embed (a subsample of) ``table`` in 2-D and write one PNG per ``color_by`` column.

        :return: ``{"evaluator", "metrics" (points, rows_total), "split" (sizes), "images" ([{"column", "file" (relative
            to the run directory), "kind", "categories"}]), "config", "identity", "embedding_dim"}``.
        :raises ConfigError: when no column to colour by is configured or declared by the dataset.
        :raises DataError: for a missing column or fewer than 5 rows.
        """
        cfg = self.config
        columns = list(cfg.color_by) or list(context.label_columns)
        if not columns:
            raise ConfigError(f"{self.name}.color_by", "names no metadata column (and the dataset declares no "
                                                       "label column); e.g. `color_by: [label]`.")
        require_columns(table.metadata, columns, f"{self.name}.color_by")
        total = len(table)
        rows = np.arange(total)
        if total > cfg.max_points:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(total, size=cfg.max_points, replace=False))
            logger.info("umap: subsampled %d of %d rows", cfg.max_points, total)
        coords = umap_2d(table.embeddings[rows], cfg.n_neighbors, cfg.min_dist, cfg.metric, cfg.seed)
        folder = context.run_dir / "eval" / self.name
        images = []
        used: set[str] = set()
        for column in columns:
            stem = file_stem(column)
            while stem in used:
                stem += "_"
            used.add(stem)
            path = folder / f"{stem}.png"
            info = plot_umap(coords, table.metadata[column].iloc[rows].reset_index(drop=True), column, path,
                             cfg.max_categories, cfg.point_size, cfg.dpi,
                             title=f"UMAP of {len(rows)} embeddings, coloured by {column}")
            images.append({**info, "file": relative_to(path, context.run_dir)})
        result = {
            "evaluator": self.name,
            "metrics": {"points": len(rows), "rows_total": total},
            "split": {"mode": "seeded subsample" if len(rows) < total else "all rows",
                      "input_rows": total, "plotted_rows": len(rows)},
            "images": images,
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_umap(config: UMAPConfig) -> UMAPEvaluator:
    """Factory registered under the name ``umap``."""
    return UMAPEvaluator(config)
