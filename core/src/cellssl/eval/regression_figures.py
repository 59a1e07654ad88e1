"""Figures of the ``regression`` evaluator (PNG, matplotlib Agg): R² distribution and predicted vs measured."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cellssl.eval.engines.figures import new_figure, save_png


def plot_r2_cdf(r2_by_regressor: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """The empirical cumulative distribution of R² over targets, one step curve per regressor.

    A point ``(r, f)`` means a fraction ``f`` of the targets has a cross-validated R² of at most ``r``
    (uniDINO's way of showing many cell-health readouts at once). NaN values are left out.
    """
    figure = new_figure(5.0, 3.6, layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    for name, values in r2_by_regressor.items():
        finite = np.sort(np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64))
        if finite.size == 0:
            continue
        fraction = np.arange(1, finite.size + 1) / finite.size
        axes.step(np.concatenate([[finite[0]], finite]), np.concatenate([[0.0], fraction]), where="post",
                  label=f"{name} (median {np.median(finite):.3f})")
    axes.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("cross-validated R² (mean over folds)")
    axes.set_ylabel("fraction of targets")
    axes.set_ylim(0.0, 1.02)
    axes.legend(fontsize=8, loc="upper left")
    return save_png(figure, path)


def plot_predicted_vs_measured(panels: Sequence[tuple[str, np.ndarray, np.ndarray, float]], regressor: str,
                               path: str | Path, max_points: int = 5000, seed: int = 0) -> Path:
    """One panel per ``(target, measured, out-of-fold predicted, R²)``: a scatter with the identity line.

    At most ``max_points`` points per panel are drawn (a seeded random subset).
    """
    n = max(1, len(panels))
    columns = min(n, 4)
    rows = (n + columns - 1) // columns
    figure = new_figure(3.2 * columns, 3.1 * rows, layout="constrained")
    rng = np.random.default_rng(seed)
    for position, (target, measured, predicted, r2) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, position + 1)
        keep = np.arange(measured.size)
        if keep.size > max_points:
            keep = np.sort(rng.choice(keep, max_points, replace=False))
        axes.scatter(measured[keep], predicted[keep], s=4, alpha=0.4, linewidths=0)
        low = float(min(measured.min(), predicted.min()))
        high = float(max(measured.max(), predicted.max()))
        axes.plot([low, high], [low, high], color="black", linewidth=0.8)
        axes.set_title(f"{target}\n{regressor}, R² = {r2:.3f}", fontsize=9)
        axes.set_xlabel("measured")
        axes.set_ylabel("predicted (out of fold)")
    return save_png(figure, path)
