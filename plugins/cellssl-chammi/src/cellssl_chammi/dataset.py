"""CHAMMI subsets as cellssl datasets: ``enriched_meta.csv`` + channel tapes, read as published.

A subset is a :class:`cellssl.data.table.TableDataset` over its ``enriched_meta.csv`` (every column kept
as sample metadata: ``ID``, ``Label``, ``train_test_split``, the boolean ``Task_*`` columns,
``cell_type`` / ``Plate`` ...). Images are read lazily; the tape of row ``i`` is cut into channels with
that row's own ``channel_width`` (widths may differ between images), so ``(H, W * C)`` becomes
``(C, H, W)`` with channel ``c`` = columns ``[c * W, (c + 1) * W)``.

``file_path`` is relative to the CHAMMI folder (``HPA/...``); paths that only resolve relative to the
subset's folder are accepted too (decided once, on the first row). Missing roots, folders, columns and
files raise :class:`~cellssl.errors.DataError` saying what is missing, where it was looked for and how
to get the data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cellssl.api import (
    DataError,
    TableDataset,
    TableDatasetConfig,
    canonical_channel_name,
    check_data_root,
    read_image,
    read_table,
    scale_to_unit,
    split_tape,
)
from cellssl_chammi.config import ChammiSubsetConfig
from cellssl_chammi.subsets import (
    LABEL_COLUMN,
    META_FILE,
    PATH_COLUMN,
    ROW_KEY_COLUMNS,
    SPLIT_COLUMN,
    SUBSETS,
    WIDTH_COLUMN,
    Subset,
)

logger = logging.getLogger(__name__)

HOW_TO_GET = (
    "Download CHAMMI with `cellssl data download chammi --to DIR` (Zenodo record 7988357) and set data.root to "
    "the unpacked CHAMMI folder (the one holding Allen/, HPA/ and CP/)."
)


class ChammiDataset(TableDataset):
    """One CHAMMI subset (see the module docstring).

    :ivar subset: the subset's definition. :ivar chammi_root: the CHAMMI folder.
    :ivar meta_path: the ``enriched_meta.csv`` read.
    """

    subset: Subset
    chammi_root: Path
    meta_path: Path

    def load_image(self, index: int) -> torch.Tensor:
        """Read sample ``index``'s tape as float32 ``(C, H, W)`` scaled by the bit depth.

        :raises DataError: naming the row and file if the file is missing or undecodable, or its width
            does not hold ``C`` channels of the row's ``channel_width``.
        """
        path = self.files(index)[0]
        where = f"row {self.row_numbers[index]} of {self.source} ({path})"
        try:
            image = read_image(path)
        except DataError as exc:
            raise DataError(f"row {self.row_numbers[index]} of {self.source}: {exc}") from exc
        width = int(self.metadata[WIDTH_COLUMN].iat[index])
        array = image.array
        channels = len(self.channel_names)
        if not (array.shape[0] == channels and array.shape[-1] == width):  # planes already split
            array = split_tape(array, width, source=where)
        if array.shape[0] != channels:
            raise DataError(
                f"{where}: the tape holds {array.shape[0]} channels of width {width} (shape {image.array.shape}) "
                f"but CHAMMI {self.subset.title} has {channels}: {list(self.channel_names)}"
            )
        return torch.from_numpy(scale_to_unit(array, self.bit_depth, source=where))


def resolve_root(root: str | Path, subset: Subset, folder: str | None = None) -> tuple[Path, Path]:
    """``(CHAMMI folder, the subset's enriched_meta.csv)`` under ``root``.

    ``root`` may be the CHAMMI folder itself or the folder holding it (``<root>/CHAMMI``).

    :raises DataError: when the root is missing, or no candidate folder holds an ``enriched_meta.csv``.
    """
    base = check_data_root(root, [], dataset=f"CHAMMI {subset.title}", how_to_get=HOW_TO_GET)
    names = (folder,) if folder else subset.folders
    tried = []
    for candidate_root in (base, base / "CHAMMI"):
        for name in names:
            meta = candidate_root / name / META_FILE
            tried.append(str(meta))
            if meta.is_file():
                return candidate_root, meta
    raise DataError(
        f"CHAMMI {subset.title} metadata not found: looked for {', '.join(tried)} (data.root = {base.resolve()}). "
        f"{HOW_TO_GET}"
    )


def _check_columns(frame: pd.DataFrame, subset: Subset, meta: Path, extra: list[str]) -> None:
    needed = [PATH_COLUMN, WIDTH_COLUMN, LABEL_COLUMN, SPLIT_COLUMN, *extra]  # ID / Key: optional
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise DataError(
            f"{meta} lacks the column(s) {missing} of CHAMMI's enriched_meta.csv; its columns are "
            f"{list(map(str, frame.columns))}. The file may be from another release or edited: {HOW_TO_GET}"
        )
    widths = pd.to_numeric(frame[WIDTH_COLUMN], errors="coerce")
    bad = np.flatnonzero((widths.isna() | (widths < 1)).to_numpy())
    if bad.size:
        raise DataError(f"{meta}: row {int(bad[0]) + 1} (1-based data row) has channel_width "
                        f"{frame[WIDTH_COLUMN].iat[int(bad[0])]!r}; it must be a positive integer")


def same_rows(left: pd.DataFrame, right: pd.DataFrame) -> bool:
    """Whether two metadata frames list the same rows in the same order.

    Compared on every row-key column (``ROW_KEY_COLUMNS``: ``ID``, ``Key``, ``file_path``) present in both;
    ``False`` when the lengths differ or no key column is shared.
    """
    shared = [column for column in ROW_KEY_COLUMNS if column in left.columns and column in right.columns]
    if len(left) != len(right) or not shared:
        return False
    return all([str(v) for v in left[column]] == [str(v) for v in right[column]] for column in shared)


def _image_base(chammi_root: Path, meta: Path, first_path: str) -> Path:
    """The folder ``file_path`` values are relative to: the CHAMMI folder, else the subset's folder."""
    if (chammi_root / first_path).is_file():
        return chammi_root
    if (meta.parent / first_path).is_file():
        return meta.parent
    return chammi_root


def _check_files_exist(dataset: ChammiDataset) -> None:
    missing = dataset.missing_files()
    if not missing:
        return
    shown = "; ".join(f"row {dataset.row_numbers[i]}: {path}" for i, path in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    raise DataError(
        f"CHAMMI {dataset.subset.title}: {len(missing)} of {len(dataset)} image files listed in {dataset.meta_path} "
        f"are missing: {shown}{more}. file_path is resolved against {dataset.root}. The download may be "
        f"incomplete: {HOW_TO_GET}"
    )


def read_enriched_meta(config: ChammiSubsetConfig, subset: Subset, required: list[str] | None = None
                       ) -> tuple[Path, Path, pd.DataFrame]:
    """Locate and read a subset's ``enriched_meta.csv``; checks the published columns.

    :param required: extra columns that must be present (task and group columns).
    :return: ``(CHAMMI folder, csv path, frame)``.
    :raises DataError: see :func:`resolve_root`, or for missing columns / invalid channel widths.
    """
    chammi_root, meta = resolve_root(config.root, subset, config.folder)
    frame = read_table(meta)
    extra = list(required or [])
    if config.task is not None:
        extra.append(config.task)
    _check_columns(frame, subset, meta, extra)
    return chammi_root, meta, frame


def build_chammi_dataset(config: ChammiSubsetConfig, subset_key: str) -> ChammiDataset:
    """Build the dataset of CHAMMI subset ``subset_key`` (``wtc``, ``hpa`` or ``cp``).

    :raises DataError: for a missing / incomplete root, missing columns or image files, or (with
        ``check_files``) images that do not decode into the subset's channels.
    :raises ValueError: if ``config.channels`` does not name one channel per published channel.
    """
    subset = SUBSETS[subset_key]
    channels = tuple(config.channels) or subset.channels
    if len(channels) != len(subset.channels):
        raise ValueError(f"channels must name {len(subset.channels)} channels for CHAMMI {subset.title} "
                         f"(published: {list(subset.published_channels)}), got {list(config.channels)}")
    chammi_root, meta, frame = read_enriched_meta(config, subset, list(subset.tasks))
    base = _image_base(chammi_root, meta, str(frame[PATH_COLUMN].iat[0]))
    table_config = TableDatasetConfig(
        table=str(meta),
        root=str(base),
        path_column=PATH_COLUMN,
        channels=[canonical_channel_name(name) for name in channels],
        bit_depth=config.bit_depth,
        label_columns=[LABEL_COLUMN],
        split_column=SPLIT_COLUMN if config.split else None,
        split=config.split,
        where={config.task: "True"} if config.task else {},
        check_files="none",
        limit=config.limit,
    )
    dataset = ChammiDataset(table_config, frame, root=base, source=str(meta))
    dataset.subset, dataset.chammi_root, dataset.meta_path = subset, chammi_root, meta
    if config.check_files != "none":
        _check_files_exist(dataset)
        indices = range(len(dataset)) if config.check_files == "decode" else range(min(1, len(dataset)))
        for index in indices:
            dataset.load_image(index)
    logger.info("CHAMMI %s: %d images from %s", subset.title, len(dataset), meta)
    return dataset
