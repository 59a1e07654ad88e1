"""Labels of samples, read from metadata columns, in the three layouts the field uses.

- one column, single-label (multi-class);
- one column holding several labels joined by a separator (``"Nucleoplasm|Cytosol"``), multi-label;
- several boolean columns, one per label (``True``/``False``, ``1``/``0``, ``"yes"``/``"no"``), multi-label.

Datasets validate their label columns with :func:`dataset_labels`; evaluators read labels with
:func:`labels_from_metadata`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cellssl.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["EvalLabels", "dataset_labels", "labels_from_metadata", "parse_flags"]

_TRUE = {"true", "1", "yes", "y", "t", "1.0"}
_FALSE = {"false", "0", "no", "n", "f", "0.0"}


@dataclass
class EvalLabels:
    """Labels of the rows of a metadata table.

    :ivar values: for the labelled rows only: ``(n,)`` int64 class indices, or ``(n, L)`` int8 0/1.
    :ivar valid: ``(N,)`` bool, which metadata rows are labelled (and kept).
    :ivar names: class (or label) names; index ``i`` names class ``i``.
    :ivar multilabel: whether ``values`` is an indicator matrix.
    :ivar source: the metadata columns the labels come from.
    :ivar missing: rows skipped because their label is missing (NaN / None / empty).
    :ivar unlabelled: multi-label rows skipped because no label is set.
    """

    values: np.ndarray
    valid: np.ndarray
    names: list[str]
    multilabel: bool
    source: list[str]
    missing: int = 0
    unlabelled: int = 0


def _require_columns(metadata: pd.DataFrame, columns: Sequence[str], key: str) -> None:
    absent = [c for c in columns if c not in metadata.columns]
    if absent:
        raise DataError(
            f"label columns {absent} (config key '{key}') are not in the embedding metadata; "
            f"available columns: {list(metadata.columns)}"
        )


def _is_missing(series: pd.Series) -> np.ndarray:
    text = series.astype(str).str.strip()
    return (series.isna() | (text == "")).to_numpy()


def parse_flags(series: pd.Series, what: str) -> np.ndarray:
    """A True/False column (``True``/``False``, ``1``/``0``, ``yes``/``no``) as a bool array; empty cells are False.

    :param what: names the column and its file in the error message.
    :raises DataError: naming ``what`` and the first value that is not a boolean.
    """
    if series.dtype == bool:
        return series.to_numpy()
    text = series.astype(object).where(series.notna(), "").astype(str).str.strip().str.lower()
    known = text.isin(_TRUE | _FALSE | {""})
    if not known.all():
        raise DataError(f"{what} holds {series[~known].iloc[0]!r}; it must be True/False, 1/0 or yes/no")
    return text.isin(_TRUE).to_numpy()


def _boolean_column(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(values as int8, missing mask)`` of a True/False column; raises DataError on other values."""
    missing = series.isna().to_numpy()
    out = np.zeros(len(series), dtype=np.int8)
    for position, value in enumerate(series.to_numpy()):
        if missing[position]:
            continue
        if isinstance(value, bool | np.bool_):
            out[position] = int(value)
            continue
        text = str(value).strip().lower()
        if text in _TRUE:
            out[position] = 1
        elif text not in _FALSE:
            raise DataError(
                f"label column '{series.name}' holds {str(value)!r} at sample index {position} (0-based); "
                "boolean label columns must hold True/False, 1/0 or yes/no"
            )
    return out, missing


def labels_from_metadata(
    metadata: pd.DataFrame,
    label_column: str = "",
    label_separator: str | None = None,
    label_columns: Sequence[str] = (),
    skip_unlabelled: bool = True,
    key: str = "eval",
) -> EvalLabels:
    """Read labels from ``metadata`` (see the module docstring for the three layouts).

    :param label_column: one label column (multi-class, or multi-label with ``label_separator``).
    :param label_separator: splits ``label_column`` into several labels; tokens are stripped.
    :param label_columns: boolean columns, one per label (takes precedence over ``label_column``).
    :param skip_unlabelled: drop multi-label rows with no label set.
    :param key: config path used in error messages.
    :raises ConfigError: when no label column is given.
    :raises DataError: when a column is missing, a boolean column holds other values, or no row is
        labelled.
    """
    import pandas as pd

    if label_columns:
        columns = list(label_columns)
        _require_columns(metadata, columns, f"{key}.label_columns")
        parsed = [_boolean_column(metadata[c]) for c in columns]
        values = np.stack([p[0] for p in parsed], axis=1)
        missing = np.any(np.stack([p[1] for p in parsed], axis=1), axis=1)
        names, multilabel = [str(c) for c in columns], True
    elif label_column:
        columns = [label_column]
        _require_columns(metadata, columns, f"{key}.label_column")
        series = metadata[label_column]
        missing = _is_missing(series)
        if label_separator:
            tokens = [
                [] if miss else [t.strip() for t in str(v).split(label_separator) if t.strip()]
                for v, miss in zip(series.to_numpy(), missing, strict=True)
            ]
            names = sorted({t for row in tokens for t in row})
            position = {name: i for i, name in enumerate(names)}
            values = np.zeros((len(series), len(names)), dtype=np.int8)
            for row, row_tokens in enumerate(tokens):
                values[row, [position[t] for t in row_tokens]] = 1
            multilabel = True
        else:
            kept = series[~missing]
            try:
                codes, uniques = pd.factorize(kept, sort=True)
            except TypeError:  # mixed types cannot be sorted: sort their text
                codes, uniques = pd.factorize(kept.astype(str), sort=True)
            values = np.full(len(series), -1, dtype=np.int64)
            values[~missing] = codes
            names, multilabel = [str(u) for u in uniques], False
    else:
        raise ConfigError(
            f"{key}.label_column",
            "no label column: set label_column (or label_columns), or evaluate a dataset that declares "
            "its label columns",
        )
    unlabelled = np.zeros(len(metadata), dtype=bool)
    if multilabel and skip_unlabelled:
        unlabelled = ~missing & (values.sum(axis=1) == 0)
    valid = ~missing & ~unlabelled
    if not valid.any():
        raise DataError(
            f"no row of the embedding metadata has a usable label in {columns} "
            f"({int(missing.sum())} missing, {int(unlabelled.sum())} without any label)"
        )
    return EvalLabels(
        values=values[valid],
        valid=valid,
        names=names,
        multilabel=multilabel,
        source=columns,
        missing=int(missing.sum()),
        unlabelled=int(unlabelled.sum()),
    )


def dataset_labels(
    metadata: pd.DataFrame, label_columns: Sequence[str], separator: str | None = None, key: str = "data"
) -> EvalLabels:
    """Labels of a dataset declared as ``label_columns`` (+ ``separator``), the ``table`` convention.

    One column is multi-class, or multi-label when ``separator`` is set; several columns are boolean
    indicator columns (multi-label).

    :raises ConfigError: if no column is given, or a separator is combined with several columns.
    :raises DataError: as :func:`labels_from_metadata`.
    """
    columns = list(label_columns)
    if not columns:
        raise ConfigError(f"{key}.label_columns", "no label column is set; name the metadata column(s) with labels")
    if len(columns) == 1:
        return labels_from_metadata(metadata, label_column=columns[0], label_separator=separator, key=key)
    if separator is not None:
        raise ConfigError(
            f"{key}.multilabel_separator",
            f"a separator splits one label column, but {len(columns)} columns are set ({columns}); "
            "use one column with separated labels, or several boolean columns without a separator",
        )
    return labels_from_metadata(metadata, label_columns=columns, key=key)
