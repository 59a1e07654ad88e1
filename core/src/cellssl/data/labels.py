"""Labels from metadata columns: multi-class codes or multi-label indicator matrices.

Three layouts are understood (the same ones :class:`~cellssl.data.table.TableDataset` accepts):

- one column, no separator: multi-class; each distinct value is a class;
- one column with a separator (``"nucleoplasm|cytosol"``): multi-label; an empty cell means no label;
- several columns of booleans or 0/1 (one per class, as in HPA tables): multi-label; the column names
  are the class names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cellssl.errors import ConfigError, DataError

_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no", ""}


def _missing_columns_message(columns: Sequence[str], metadata: pd.DataFrame) -> str:
    return (
        f"label column(s) {', '.join(repr(c) for c in columns)} not in the metadata; available columns: "
        f"{', '.join(map(str, metadata.columns))}"
    )


def _sorted_classes(values: Sequence[object]) -> list[object]:
    try:
        return sorted(values)  # type: ignore[type-var]
    except TypeError:  # mixed types: order by their text
        return sorted(values, key=str)


def _multiclass(column: pd.Series, name: str) -> tuple[np.ndarray, list[str]]:
    missing = column.isna().to_numpy()
    if missing.any():
        rows = np.flatnonzero(missing)[:5].tolist()
        raise DataError(
            f"label column {name!r} has {int(missing.sum())} empty value(s) (sample indices {rows}...); "
            "every sample needs a class: fill them or filter those rows out of the table"
        )
    classes = _sorted_classes(list(pd.unique(column)))
    lookup = {value: code for code, value in enumerate(classes)}
    codes = np.fromiter((lookup[value] for value in column), dtype=np.int64, count=len(column))
    return codes, [str(value) for value in classes]


def _separated(column: pd.Series, name: str, separator: str) -> tuple[np.ndarray, list[str]]:
    per_row: list[list[str]] = []
    for value in column:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            per_row.append([])
            continue
        parts = [part.strip() for part in str(value).split(separator)]
        per_row.append([part for part in parts if part])
    classes = sorted({label for labels in per_row for label in labels})
    lookup = {label: code for code, label in enumerate(classes)}
    matrix = np.zeros((len(per_row), len(classes)), dtype=np.int64)
    for row, labels in enumerate(per_row):
        matrix[row, [lookup[label] for label in labels]] = 1
    return matrix, classes


def _indicator(column: pd.Series, name: str) -> np.ndarray:
    if column.dtype == bool:
        return column.to_numpy().astype(np.int64)
    out = np.zeros(len(column), dtype=np.int64)
    for row, value in enumerate(column):
        if isinstance(value, (bool, np.bool_)):
            out[row] = int(value)
            continue
        missing = value is None or (isinstance(value, float) and np.isnan(value))
        text = "" if missing else str(value).strip().lower()
        if text in _TRUE:
            out[row] = 1
        elif text not in _FALSE:
            raise DataError(
                f"multi-label column {name!r} holds {value!r} at sample index {row}; one-column-per-class "
                "labels must be True/False or 1/0"
            )
    return out


def labels_of(
    metadata: pd.DataFrame, label_columns: Sequence[str], separator: str | None = None
) -> tuple[np.ndarray, list[str], bool]:
    """Turn label columns of ``metadata`` into arrays for evaluators.

    :param metadata: one row per sample.
    :param label_columns: one column (multi-class, or multi-label with ``separator``) or several
        boolean / 0-1 columns (multi-label, one per class).
    :param separator: splits one column into several labels (``"|"``); empty parts are ignored.
    :return: ``(y, class_names, multilabel)``: for multi-class, ``y`` is int64 codes ``(N,)`` indexing the
        sorted ``class_names``; for multi-label, ``y`` is an int64 0/1 matrix ``(N, K)`` whose columns
        are ``class_names``.
    :raises ConfigError: if no label column is given, or a separator is combined with several columns.
    :raises DataError: if a column is missing (the message lists the available ones), a multi-class
        column has empty values, or an indicator column holds something other than booleans / 0-1.
    """
    columns = list(label_columns)
    if not columns:
        raise ConfigError("label_columns", "no label column is set; name the metadata column(s) with labels")
    absent = [column for column in columns if column not in metadata.columns]
    if absent:
        raise DataError(_missing_columns_message(absent, metadata))
    if separator is not None:
        if len(columns) != 1:
            raise ConfigError(
                "multilabel_separator",
                f"a separator splits one label column, but {len(columns)} columns are set ({columns}); "
                "use one column with separated labels, or several boolean columns without a separator",
            )
        matrix, classes = _separated(metadata[columns[0]], columns[0], separator)
        return matrix, classes, True
    if len(columns) == 1:
        codes, classes = _multiclass(metadata[columns[0]], columns[0])
        return codes, classes, False
    matrix = np.stack([_indicator(metadata[column], column) for column in columns], axis=1)
    return matrix.reshape(len(metadata), len(columns)), [str(column) for column in columns], True
