"""Train/test splits of an embedding table's metadata: :class:`SplitConfig` and :func:`make_split`.

Modes:

- ``column``: rows whose ``column`` value is one of ``train_values`` train, rows matching
  ``test_values`` test (empty ``test_values``: every row not in ``train_values``). Values are compared as
  text (``str(value)``), so YAML ``[1, 2]`` matches an integer column. Rows with a missing value are in
  neither side.
- ``fraction``: a seeded random ``test_fraction`` of the rows, stratified by the labels when they are
  single-label and every class has at least two rows (otherwise a plain random split, logged).
- ``group``: leave-group-out: a seeded random ``test_fraction`` of the distinct values of ``column``
  (e.g. ``fov_id``, ``plate``) go to test, with all their rows; no group is on both sides.

Every split returns sorted, disjoint, non-empty ``int64`` row-position arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

SPLIT_MODES = ("column", "fraction", "group")


@dataclass
class SplitConfig:
    """How to split rows into train and test (YAML block ``split:``).

    :ivar mode: ``column``, ``fraction`` or ``group`` (see the module docstring).
    :ivar column: metadata column of ``column`` and ``group`` modes.
    :ivar train_values: values of ``column`` that make a train row (``column`` mode).
    :ivar test_values: values of ``column`` that make a test row; empty: all other rows (``column`` mode).
    :ivar test_fraction: fraction of rows (``fraction``) or of groups (``group``) put in test.
    :ivar seed: seed of the random ``fraction`` / ``group`` splits.
    :ivar stratify: stratify ``fraction`` splits by label when possible.
    """

    mode: str = "fraction"
    column: str | None = None
    train_values: list[str] = field(default_factory=list)
    test_values: list[str] = field(default_factory=list)
    test_fraction: float = 0.2
    seed: int = 0
    stratify: bool = True

    def __post_init__(self) -> None:
        problems = split_config_problems(self)
        if problems:
            key, message = problems[0]
            raise ValueError(f"split.{key}: {message}")


def split_config_problems(config: SplitConfig) -> list[tuple[str, str]]:
    """``(field, message)`` for every invalid setting of ``config`` (empty when valid)."""
    problems: list[tuple[str, str]] = []
    if config.mode not in SPLIT_MODES:
        problems.append(("mode", f"must be one of {', '.join(SPLIT_MODES)}, got {config.mode!r}"))
        return problems
    if not 0.0 < config.test_fraction < 1.0:
        problems.append(("test_fraction", f"must be in (0, 1), got {config.test_fraction}"))
    if config.mode in ("column", "group") and not config.column:
        problems.append(("column", f"is required when mode is '{config.mode}' (name a metadata column)"))
    if config.mode == "column":
        if not config.train_values:
            problems.append(("train_values", "is required when mode is 'column' (values of the train rows)"))
        both = {str(v) for v in config.train_values} & {str(v) for v in config.test_values}
        if both:
            problems.append(
                ("test_values", f"values {sorted(both)} are in both train_values and test_values")
            )
    return problems


def _labels_for_stratify(labels: Any, n: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if len(labels) != n:
        raise DataError(f"got {len(labels)} labels for {n} metadata rows")
    return labels if labels.ndim == 1 else None


def _column(metadata: pd.DataFrame, column: str, key: str) -> pd.Series:
    if column not in metadata.columns:
        raise DataError(
            f"split column '{column}' (config key '{key}.column') is not in the metadata; "
            f"available columns: {list(metadata.columns)}"
        )
    return metadata[column]


def _check_sides(train: np.ndarray, test: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    if train.size == 0 or test.size == 0:
        side = "train" if train.size == 0 else "test"
        raise DataError(
            f"the {what} split leaves the {side} side empty ({train.size} train, {test.size} test)"
        )
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def _column_split(metadata: pd.DataFrame, config: SplitConfig, key: str) -> tuple[np.ndarray, np.ndarray]:
    series = _column(metadata, config.column or "", key)
    missing = series.isna().to_numpy()
    text = series.astype(str).to_numpy()
    present = set(text[~missing])
    for name, values in (("train_values", config.train_values), ("test_values", config.test_values)):
        absent = [str(v) for v in values if str(v) not in present]
        if absent:
            shown = sorted(present)[:20]
            raise DataError(
                f"{key}.{name}: values {absent} do not occur in column '{config.column}'; "
                f"values there include {shown}"
            )
    is_train = np.isin(text, [str(v) for v in config.train_values]) & ~missing
    if config.test_values:
        is_test = np.isin(text, [str(v) for v in config.test_values]) & ~missing
    else:
        is_test = ~is_train & ~missing
    if missing.any():
        logger.info("split column '%s': %d rows with a missing value are in neither side",
                    config.column, int(missing.sum()))
    return _check_sides(np.flatnonzero(is_train), np.flatnonzero(is_test), f"column '{config.column}'")


def _fraction_split(
    metadata: pd.DataFrame, config: SplitConfig, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    n = len(metadata)
    n_test = round(config.test_fraction * n)
    if n < 2 or n_test < 1 or n_test > n - 1:
        raise DataError(
            f"cannot split {n} rows with test_fraction {config.test_fraction}: a side would be empty"
        )
    rows = np.arange(n)
    stratify = None
    if config.stratify and labels is not None:
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= 2 and n_test >= len(counts) and n - n_test >= len(counts):
            stratify = labels
        else:
            logger.warning(
                "fraction split not stratified: %d classes, smallest has %d rows, %d test rows",
                len(counts), int(counts.min()), n_test)
    train, test = train_test_split(rows, test_size=n_test, random_state=config.seed, stratify=stratify)
    return _check_sides(np.asarray(train), np.asarray(test), "fraction")


def _group_split(metadata: pd.DataFrame, config: SplitConfig, key: str) -> tuple[np.ndarray, np.ndarray]:
    series = _column(metadata, config.column or "", key)
    missing = series.isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataError(
            f"group column '{config.column}' has {int(missing.sum())} missing values (first at row {first}); "
            "fill them or drop those rows before a group split"
        )
    import pandas as pd

    codes, groups = pd.factorize(series.astype(str), sort=True)
    n_groups = len(groups)
    if n_groups < 2:
        raise DataError(
            f"group column '{config.column}' has {n_groups} distinct value(s); a group split needs >= 2"
        )
    n_test = min(max(1, round(config.test_fraction * n_groups)), n_groups - 1)
    rng = np.random.default_rng(config.seed)
    test_groups = rng.permutation(n_groups)[:n_test]
    is_test = np.isin(codes, test_groups)
    logger.info("group split on '%s': %d of %d groups in test", config.column, n_test, n_groups)
    return _check_sides(np.flatnonzero(~is_test), np.flatnonzero(is_test), f"group '{config.column}'")


def make_split(
    metadata: pd.DataFrame, config: SplitConfig, labels: Any = None, key: str = "split"
) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows of ``metadata`` into train and test positions.

    :param metadata: one row per sample (positions, not index labels, are returned).
    :param config: the split settings.
    :param labels: optional ``(n,)`` labels used to stratify ``fraction`` splits (2-D multi-label
        labels are not stratified).
    :param key: config path of ``config`` used in error messages.
    :return: ``(train_idx, test_idx)``: sorted, disjoint, non-empty int64 arrays of row positions.
    :raises ConfigError: naming ``<key>.<field>`` when the config is invalid.
    :raises DataError: naming the column when it is missing, a value does not occur, group values are
        missing, or a side would be empty.
    """
    problems = split_config_problems(config)
    if problems:
        field_name, message = problems[0]
        raise ConfigError(f"{key}.{field_name}", message)
    if config.mode == "column":
        return _column_split(metadata, config, key)
    if config.mode == "group":
        return _group_split(metadata, config, key)
    return _fraction_split(metadata, config, _labels_for_stratify(labels, len(metadata)))
