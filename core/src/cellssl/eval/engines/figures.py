"""Small plotting helpers shared by the evaluators that draw PNGs (matplotlib, Agg, no pyplot state).

Figures are built with :class:`matplotlib.figure.Figure` directly (no global pyplot state, safe in
threads and without a display) and written atomically with :func:`save_png`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from cellssl.atomic import atomic_open


def new_figure(width: float, height: float, layout: str | None = None) -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches with an Agg canvas attached.

    :param layout: matplotlib layout engine (``"constrained"``, ``"tight"``) or ``None``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG to ``path`` atomically (folders are created) and return the path."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    return path


def file_stem(text: str) -> str:
    """``text`` made a safe file stem: runs of characters other than letters, digits, ``-``, ``_``
    become ``_`` (``"cell line"`` -> ``"cell_line"``); empty input gives ``"column"``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_")
    return stem or "column"


def display_range(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """``(vmin, vmax)``: the ``low`` / ``high`` percentiles of ``image`` (a flat image gives a unit range)."""
    values = np.asarray(image, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    vmin, vmax = np.percentile(values, [low, high])
    if not vmax > vmin:
        vmin, vmax = float(values.min()), float(values.max())
    if not vmax > vmin:
        vmax = vmin + 1.0
    return float(vmin), float(vmax)


def relative_to(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string (``path`` itself when it is not inside ``root``)."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).as_posix()
