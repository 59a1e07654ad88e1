"""Targets of the ``regression`` evaluator: metadata columns, quantities measured from the raw images, profiles.

- :func:`image_statistic`: one number per image from one channel (``sum``, ``mean``,
  ``background_subtracted_sum``), on the bit-depth-scaled pixels the dataset reads (no normalisation, no resize).
- :func:`full_channel_source`: the dataset that still has a channel a ``use_channels`` selection left out.
  A :class:`~cellssl.data.selection.ChannelSelection` keeps the unselected dataset as ``.base``; the target is
  read from there, so embeddings of label-free channels are scored against a stain the model never saw.
- :func:`image_targets`: those statistics for the rows of an embedding table, aligned to the dataset rows.
- :func:`aggregate_profiles`: mean embedding and mean targets per group of ``aggregate_by`` columns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError, DataError
from cellssl.eval.regression_config import IMAGE_STATISTICS, ImageTargetConfig

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


def image_statistic(channel: np.ndarray, statistic: str) -> float:
    """``statistic`` of one ``(H, W)`` channel image (see :class:`~cellssl.eval.regression_config.ImageTargetConfig`).

    :raises ValueError: for an unknown statistic or an image that is not 2-D.
    """
    values = np.asarray(channel, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected one (H, W) channel, got shape {values.shape}")
    if statistic == "sum":
        return float(values.sum())
    if statistic == "mean":
        return float(values.mean())
    if statistic == "background_subtracted_sum":
        border = np.concatenate([values[0], values[-1], values[1:-1, 0], values[1:-1, -1]])
        return float((values - np.median(border)).sum())
    raise ValueError(f"statistic must be one of {IMAGE_STATISTICS}, got {statistic!r}")


def full_channel_source(dataset: Any, channel: str, key: str) -> tuple[Any, int]:
    """``(dataset, index)``: ``dataset`` or the first of its ``.base`` datasets that has ``channel``.

    :raises ConfigError: naming ``key`` when no level of the dataset has the channel (listing those it has).
    """
    from cellssl.data.vocabulary import canonical_channel_name

    try:
        wanted = canonical_channel_name(channel)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    level, seen = dataset, []
    while level is not None:
        names = tuple(getattr(level, "channel_names", ()))
        seen.append(list(names))
        if wanted in names:
            return level, names.index(wanted)
        level = level.__dict__.get("base") if hasattr(level, "__dict__") else None
    raise ConfigError(key, f"channel '{channel}' is not in the dataset (its channels: {seen[-1]}); name one of "
                           "them.")


def _check_alignment(table_meta: pd.DataFrame, dataset_meta: pd.DataFrame, key: str) -> None:
    """The table's rows are the dataset's first rows, in order (what the embed stage writes)."""
    if len(table_meta) > len(dataset_meta):
        raise DataError(f"{key}: the embedding table has {len(table_meta)} rows but the dataset only "
                        f"{len(dataset_meta)}; embed the run's own data before measuring targets from its images")
    shared = [c for c in table_meta.columns if c in dataset_meta.columns]
    if not shared:
        raise DataError(f"{key}: the embedding table shares no metadata column with the dataset, so its rows "
                        "cannot be matched to images")
    ours = table_meta[shared].astype(str).reset_index(drop=True)
    theirs = dataset_meta[shared].iloc[: len(table_meta)].astype(str).reset_index(drop=True)
    differs = (ours != theirs).any(axis=1).to_numpy()
    if differs.any():
        row = int(np.flatnonzero(differs)[0])
        raise DataError(f"{key}: embedding row {row} ({ours.iloc[row].to_dict()}) is not dataset row {row} "
                        f"({theirs.iloc[row].to_dict()}); the embeddings come from another dataset or order. "
                        "Re-run the embed stage for this config.")


def image_targets(table_meta: pd.DataFrame, dataset: Any, targets: Sequence[ImageTargetConfig], key: str,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """Each target of ``targets`` measured on the image of every table row.

    :param table_meta: the embedding table's metadata; row ``i`` must be dataset row ``i`` (checked on the
        columns both share).
    :param dataset: the run's dataset (``EvalContext.load_dataset()[0]``), possibly a channel selection.
    :return: target name -> ``(len(table_meta),)`` float64 values.
    :raises ConfigError: naming ``<key>.target_from_image[i].channel`` for a channel the dataset lacks.
    :raises DataError: when the table's rows are not the dataset's.
    """
    from tqdm import tqdm

    _check_alignment(table_meta, dataset.metadata, key)
    sources = [full_channel_source(dataset, t.channel, f"{key}.target_from_image[{i}].channel")
               for i, t in enumerate(targets)]
    out = {t.target_name: np.empty(len(table_meta), dtype=np.float64) for t in targets}
    images: dict[int, Any] = {}
    for row in tqdm(range(len(table_meta)), desc="image targets", unit="img", disable=not progress):
        images.clear()
        for target, (source, index) in zip(targets, sources, strict=True):
            if id(source) not in images:
                images[id(source)] = np.asarray(source.load_image(row))
            out[target.target_name][row] = image_statistic(images[id(source)][index], target.statistic)
    for target, (source, _) in zip(targets, sources, strict=True):
        if source is not dataset:
            logger.info("regression target %s read from the dataset before channel selection (%s)",
                        target.target_name, list(source.channel_names))
    return out


def numeric_target(metadata: pd.DataFrame, column: str, key: str) -> np.ndarray:
    """Column ``column`` of ``metadata`` as float64 (missing values as NaN).

    :raises DataError: for a missing column or values that are not numbers (naming the first bad row).
    """
    import pandas as pd

    if column not in metadata.columns:
        raise DataError(f"target column '{column}' (config key '{key}.target_columns') is not in the embedding "
                        f"metadata; available columns: {list(metadata.columns)}")
    values = pd.to_numeric(metadata[column], errors="coerce")
    bad = values.isna() & metadata[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"target column '{column}' holds a value that is not a number at row {row}: "
                        f"{metadata[column].iloc[row]!r}")
    return values.to_numpy(dtype=np.float64)


def aggregate_profiles(metadata: pd.DataFrame, embeddings: np.ndarray, targets: dict[str, np.ndarray],
                       by: Sequence[str], group_column: str | None, key: str) -> tuple[
                           pd.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """Mean embedding and mean targets (NaN-skipping) per group of the ``by`` columns.

    :return: ``(metadata, embeddings, targets)`` with one row per group (sorted by the group keys); the
        metadata holds the ``by`` columns, ``group_column`` and ``cells`` (rows averaged).
    :raises DataError: for a missing column, a missing value in a ``by`` column, or a ``group_column``
        that varies inside a group.
    """
    import pandas as pd

    columns = list(by) + ([group_column] if group_column and group_column not in by else [])
    for column in columns:
        if column not in metadata.columns:
            raise DataError(f"column '{column}' (config key '{key}.aggregate_by' / 'group_column') is not in the "
                            f"embedding metadata; available columns: {list(metadata.columns)}")
    missing = metadata[list(by)].isna().any(axis=1)
    if missing.any():
        raise DataError(f"{key}.aggregate_by: {int(missing.sum())} rows have a missing value in {list(by)} "
                        f"(first at row {int(np.flatnonzero(missing.to_numpy())[0])}); fill or drop them")
    codes = metadata.groupby(list(by), sort=True).ngroup().to_numpy()
    n_groups = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=n_groups)
    summed = np.zeros((n_groups, embeddings.shape[1]), dtype=np.float64)
    np.add.at(summed, codes, embeddings.astype(np.float64))
    means = (summed / counts[:, None]).astype(np.float32)
    frame = pd.DataFrame({"_group": codes})
    for name, values in targets.items():
        frame[name] = values
    target_means = frame.groupby("_group").mean()  # pandas' mean skips NaN
    first = metadata.groupby(codes, sort=True)[columns].first().reset_index(drop=True)
    if group_column and group_column not in by:
        varying = metadata.groupby(codes)[group_column].nunique(dropna=False) > 1
        if varying.any():
            raise DataError(f"group column '{group_column}' (config key '{key}.group_column') varies inside an "
                            f"aggregate_by group; add it to aggregate_by or choose a coarser column")
    first["cells"] = counts
    out_targets = {name: target_means[name].to_numpy(dtype=np.float64) for name in targets}
    return first, means, out_targets
