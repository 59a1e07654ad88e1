"""The generic ``table`` dataset: a CSV or Parquet metadata table pointing at image files.

One row per sample. Images are read lazily, in any layout of :mod:`cellssl.data.readers` (multi-channel
file, one file per channel, channel tape), and scaled by the declared bit depth. The table is validated
when the dataset is built: required columns, files, channel count and bit depth of the first image (or of
every image with ``check_files: decode``); errors name the table row and the file.

Row numbers in messages are 1-based data rows of the table as given, header excluded (row 1 is the first
line under the CSV header), counted before any filtering.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cellssl.data.bitdepth import parse_bit_depth, scale_to_unit
from cellssl.data.dataset import CellDataset
from cellssl.data.labels import EvalLabels, dataset_labels
from cellssl.data.readers import ImageData, read_sample_image
from cellssl.data.table_config import CHECK_FILES, ON_CORRUPT, TableDatasetConfig
from cellssl.data.vocabulary import canonical_channel_name
from cellssl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

__all__ = ["CHECK_FILES", "ON_CORRUPT", "TableDataset", "TableDatasetConfig", "build_table_dataset", "read_table"]

CHANNELS_COLUMN = "channels"
def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV / TSV / Parquet metadata table.

    CSV cells are kept as text except empty cells (missing) and numbers / booleans pandas recognises;
    strings such as ``NA`` or ``None`` stay strings (they can be class names).

    :raises DataError: if the file is missing, unreadable, or has no rows.
    """
    if not path.is_file():
        raise DataError(f"metadata table not found: {path} (data.table); check the path and data.root")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            separator = "\t" if ".tsv" in name else ","
            frame = pd.read_csv(path, sep=separator, keep_default_na=False, na_values=[""])
    except Exception as exc:  # pandas / pyarrow raise many types for malformed files
        raise DataError(f"could not read metadata table {path}: {type(exc).__name__}: {exc}") from exc
    if frame.empty:
        raise DataError(f"metadata table {path} has no rows")
    return frame


def _equals(column: pd.Series, value: str) -> pd.Series:
    """Rows of ``column`` equal to the text ``value`` (numbers and booleans compared as such)."""
    mask = column.astype(str) == value
    if pd.api.types.is_bool_dtype(column):
        if value.strip().lower() in ("true", "false"):
            mask |= column == (value.strip().lower() == "true")
    elif pd.api.types.is_numeric_dtype(column):
        with contextlib.suppress(ValueError):
            mask |= column == float(value)
    return mask


class TableDataset(CellDataset):
    """A dataset described by a metadata table (see :class:`TableDatasetConfig`).

    :param config: the dataset's parameters.
    :param frame: the table itself; default: read ``config.table``. Plugins that list files themselves
        (a folder of class folders, a vendor's CSV) build the frame and pass it here.
    :param root: folder the paths are resolved against; default: ``config.root``, else the table's folder.
    :param source: how messages name the table; default: its path.
    :raises DataError: for a missing / unreadable table, missing columns, missing or undecodable files,
        channel counts or values that do not match the declared channels / bit depth. Messages name the
        row and the file.

    :ivar skipped: rows dropped because their image could not be decoded (``on_corrupt: skip``), with
        the extra columns ``table_row``, ``file`` and ``error``.
    :ivar row_numbers: for each sample, its 1-based data row in the table.
    :ivar label_separator: ``config.multilabel_separator`` (pass it to :func:`~cellssl.data.labels.dataset_labels`).
    """

    def __init__(
        self,
        config: TableDatasetConfig,
        frame: pd.DataFrame | None = None,
        *,
        root: str | Path | None = None,
        source: str | None = None,
    ) -> None:
        self.config = config
        self.bit_depth = parse_bit_depth(config.bit_depth)
        if frame is None:
            table_path = Path(config.table).expanduser()
            if config.root and not table_path.is_absolute():
                table_path = Path(config.root).expanduser() / table_path
            frame = read_table(table_path)
            default_root = table_path.parent
            source = source or str(table_path)
        else:
            default_root = Path(".")
            source = source or (config.table or "the given table")
        self.root = Path(root if root is not None else (config.root or default_root)).expanduser()
        self._root_is_set = root is not None or bool(config.root)
        self.source = source
        self.label_columns = tuple(config.label_columns)
        self.label_separator = config.multilabel_separator
        self._names_from_file = False

        frame = frame.reset_index(drop=True)
        self._check_columns(frame)
        rows = np.arange(1, len(frame) + 1)
        frame, rows = self._filter(frame, rows)
        self.row_numbers = rows
        self._paths = self._resolve_paths(frame, rows)
        self.channel_names = self._declared_channels(frame)
        self.skipped = pd.DataFrame(columns=[*frame.columns, "table_row", "file", "error"])
        self.metadata = frame
        self._check_inside_root()
        if config.check_files != "none":
            self._check_exist()
        if config.check_files == "decode" or config.on_corrupt == "skip":
            self._decode_all()
        elif config.check_files == "exists" or not self.channel_names:
            self._validate(0, self._read(0))
        if self.label_columns:
            try:
                dataset_labels(self.metadata, self.label_columns, self.label_separator)
            except DataError as exc:
                raise DataError(f"table {self.source}: {exc}") from exc

    # ----------------------------------------------------------------------------------------- building
    def _row(self, index: int) -> str:
        return f"row {self.row_numbers[index]} of {self.source} (1-based data row, header excluded)"

    def _check_columns(self, frame: pd.DataFrame) -> None:
        cfg = self.config
        needed: list[tuple[str, str]] = []
        if cfg.channel_path_columns:
            needed += [(column, "data.channel_path_columns") for column in cfg.channel_path_columns]
        else:
            needed.append((cfg.path_column, "data.path_column"))
        needed += [(column, "data.label_columns") for column in cfg.label_columns]
        needed += [(column, "data.where") for column in cfg.where]
        if cfg.split_column is not None:
            needed.append((cfg.split_column, "data.split_column"))
        missing = [f"'{column}' ({key})" for column, key in needed if column not in frame.columns]
        if missing:
            raise DataError(
                f"required column {', '.join(missing)} missing from table {self.source}; available columns: "
                f"{', '.join(map(str, frame.columns))}"
            )

    def _filter(self, frame: pd.DataFrame, rows: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
        cfg = self.config
        mask = np.ones(len(frame), dtype=bool)
        for column, value in cfg.where.items():
            mask &= _equals(frame[column], str(value)).to_numpy()
        if not mask.any():
            raise DataError(f"no row of table {self.source} matches data.where {dict(cfg.where)}")
        if cfg.split is not None:
            assert cfg.split_column is not None  # checked by TableDatasetConfig
            in_split = _equals(frame[cfg.split_column], cfg.split).to_numpy()
            if not (mask & in_split).any():
                present = sorted({str(v) for v in frame.loc[mask, cfg.split_column]})
                raise DataError(
                    f"no row of table {self.source} has {cfg.split_column} == {cfg.split!r} (data.split); "
                    f"values present: {', '.join(present)}"
                )
            mask &= in_split
        keep = np.flatnonzero(mask)
        if cfg.limit is not None:
            keep = keep[: cfg.limit]
        return frame.iloc[keep].reset_index(drop=True), rows[keep]

    def _resolve_paths(self, frame: pd.DataFrame, rows: np.ndarray) -> list[tuple[Path, ...]]:
        columns = list(self.config.channel_path_columns) or [self.config.path_column]
        resolved: list[tuple[Path, ...]] = []
        values = frame[columns].to_numpy(dtype=object)
        for index, row_values in enumerate(values):
            paths = []
            for column, value in zip(columns, row_values):
                if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
                    raise DataError(
                        f"row {rows[index]} of {self.source} (1-based data row, header excluded): column "
                        f"'{column}' is empty; every row needs an image path"
                    )
                paths.append(self.root / Path(str(value).strip()).expanduser())
            resolved.append(tuple(paths))
        return resolved

    def _declared_channels(self, frame: pd.DataFrame) -> tuple[str, ...]:
        """Channel names from the config, a ``channels`` column or the channel path columns; else ``()``."""
        cfg = self.config
        if cfg.channels:
            return tuple(canonical_channel_name(name) for name in cfg.channels)
        if CHANNELS_COLUMN in frame.columns:
            values = frame[CHANNELS_COLUMN].astype(str)
            distinct = list(pd.unique(values))
            if len(distinct) > 1:
                other = int(np.flatnonzero((values != distinct[0]).to_numpy())[0])
                raise DataError(
                    f"table {self.source}: the '{CHANNELS_COLUMN}' column differs between rows ({self._row(0)}: "
                    f"{distinct[0]!r}; {self._row(other)}: {values.iloc[other]!r}); all samples of a dataset "
                    "need the same channels (split the table, or set data.channels)"
                )
            return self._canonical(distinct[0].split("|"), f"the '{CHANNELS_COLUMN}' column of {self.source}")
        if cfg.channel_path_columns:
            return self._canonical(cfg.channel_path_columns, "data.channel_path_columns")
        return ()

    def _canonical(self, names: list[str], origin: str) -> tuple[str, ...]:
        try:
            canonical = tuple(canonical_channel_name(name) for name in names)
        except ValueError as exc:
            raise DataError(f"channel names from {origin}: {exc}; set data.channels instead") from exc
        if len(set(canonical)) != len(canonical):
            raise DataError(f"channel names from {origin} name a channel twice: {list(names)} -> {canonical}")
        return canonical

    def missing_files(self) -> list[tuple[int, Path]]:
        """``(sample index, path)`` of every image file the table lists that does not exist, in row order."""
        return [(i, path) for i, paths in enumerate(self._paths) for path in paths if not path.is_file()]

    def _check_inside_root(self) -> None:
        """With ``data.root`` set, every path must resolve (``..``, symlinks followed) inside it."""
        from cellssl.data.policy import current_policy

        if not self._root_is_set or self.config.allow_outside_root or current_policy().allow_outside_root:
            return
        root = self.root.resolve()
        outside = [(i, path) for i, paths in enumerate(self._paths) for path in paths
                   if not path.resolve().is_relative_to(root)]
        if not outside:
            return
        self._skip_or_raise(
            outside, lambda path: f"{path} resolves outside data.root {root}", "outside data.root",
            f"{len(outside)} image path(s) resolve outside data.root {root} (through '..' or a symlink)",
            "Fix the table, or set data.allow_outside_root: true if those files are meant to be read.")

    def _check_exist(self) -> None:
        missing = self.missing_files()
        if not missing:
            return
        self._skip_or_raise(missing, lambda path: f"file not found: {path}", "missing files",
                            f"{len(missing)} image file(s) not found",
                            f"Relative paths are resolved against {self.root} (data.root).")

    def _skip_or_raise(self, bad: list[tuple[int, Path]], reason: Callable[[Path], str], what: str, summary: str,
                       remedy: str) -> None:
        """Drop the samples of ``bad`` (index, path) with ``on_corrupt: skip``, else one error naming their rows.

        :raises DataError: ``"<summary>: <row>: <path>; ... (and N more). <remedy>"``.
        """
        if self.config.on_corrupt == "skip":
            self._drop([(i, reason(path)) for i, path in bad], what)
            return
        shown = "; ".join(f"{self._row(i)}: {path}" for i, path in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise DataError(f"{summary}: {shown}{more}. {remedy}")

    def _drop(self, bad: list[tuple[int, str]], what: str) -> None:
        """Remove the samples ``bad`` (index, reason) and record them in :attr:`skipped` (``on_corrupt: skip``).

        :raises DataError: if no sample is left.
        """
        reasons: dict[int, str] = {}
        for index, reason in bad:
            reasons.setdefault(index, reason)
        dropped = sorted(reasons)
        records = self.metadata.iloc[dropped].copy()
        records["table_row"] = [int(self.row_numbers[i]) for i in dropped]
        records["file"] = [", ".join(str(p) for p in self._paths[i]) for i in dropped]
        records["error"] = [reasons[i] for i in dropped]
        self.skipped = records if not len(self.skipped) else pd.concat([self.skipped, records], ignore_index=True)
        self.skipped = self.skipped.reset_index(drop=True)
        shown = "; ".join(f"row {r}: {e}" for r, e in zip(records["table_row"][:5], records["error"][:5]))
        logger.warning("skipped %d of %d rows of %s (%s; on_corrupt=skip): %s%s", len(dropped), len(self._paths),
                       self.source, what, shown, " ..." if len(dropped) > 5 else "")
        keep = [i for i in range(len(self._paths)) if i not in reasons]
        if not keep:
            raise DataError(f"every row of {self.source} was skipped ({what}); first: {bad[0][1]}")
        self.metadata = self.metadata.iloc[keep].reset_index(drop=True)
        self.row_numbers = self.row_numbers[keep]
        self._paths = [self._paths[i] for i in keep]

    def _decode_all(self) -> None:
        """Decode and check every image; with ``on_corrupt: skip`` drop the rows that fail, else raise."""
        bad: list[tuple[int, str]] = []
        for index in range(len(self._paths)):
            try:
                self._validate(index, self._read(index))
            except DataError as exc:
                if self.config.on_corrupt != "skip":
                    raise
                bad.append((index, str(exc)))
        if bad:
            self._drop(bad, "unreadable or invalid images")

    # ------------------------------------------------------------------------------------------ reading
    def _read(self, index: int) -> ImageData:
        try:
            return read_sample_image(self._paths[index], self.config.channel_width, self.config.keep_alpha)
        except DataError as exc:
            raise DataError(f"{self._row(index)}: {exc}") from exc

    def _validate(self, index: int, image: ImageData) -> np.ndarray:
        """Check ``image`` against the channels and bit depth; return it scaled to float32."""
        if not self.channel_names:
            if image.channel_names is None:
                raise DataError(
                    f"the channels of {self.source} are not named: its first image {image.source} carries no "
                    "channel names. Set data.channels (for example [dna, rna, er, agp, mito]) or add a "
                    f"'{CHANNELS_COLUMN}' column with names separated by '|'."
                )
            self.channel_names = self._canonical(list(image.channel_names), f"the image file {image.source}")
            self._names_from_file = True
        if image.num_channels != len(self.channel_names):
            raise DataError(
                f"{self._row(index)}: {image.source} has {image.num_channels} channels (shape "
                f"{tuple(image.array.shape)}) but the dataset declares {len(self.channel_names)}: "
                f"{list(self.channel_names)}. Fix data.channels (or the '{CHANNELS_COLUMN}' column), "
                "data.channel_width or the file."
            )
        if self._names_from_file and image.channel_names is not None:
            names = self._canonical(list(image.channel_names), f"the image file {image.source}")
            if names != self.channel_names:
                raise DataError(
                    f"{self._row(index)}: {image.source} names its channels {list(names)} but the dataset's "
                    f"first image names them {list(self.channel_names)}; set data.channels to override"
                )
        scaled = scale_to_unit(image.array, self.bit_depth, source=f"{self._row(index)}: {image.source}")
        if scaled.size and not np.isfinite(scaled).all():
            raise DataError(
                f"{self._row(index)}: {image.source} holds non-finite pixel values (NaN or inf); fix the file, or "
                "set data.on_corrupt: skip to leave such rows out"
            )
        return scaled

    def load_image(self, index: int) -> torch.Tensor:
        """Read sample ``index`` as float32 ``(C, H, W)`` scaled by ``bit_depth`` (nothing is cached).

        :raises DataError: naming the row and the file if the image is missing, undecodable, has the wrong
            number of channels or values outside the declared bit depth.
        """
        return torch.from_numpy(self._validate(index, self._read(index)))

    def files(self, index: int) -> tuple[Path, ...]:
        """The resolved image file(s) of sample ``index`` (one per channel in that layout)."""
        return self._paths[index]

    def labels(self) -> EvalLabels:
        """:func:`~cellssl.data.labels.dataset_labels` of this dataset's label columns.

        :raises ConfigError: if the dataset has no label columns.
        """
        if not self.label_columns:
            raise ConfigError("data.label_columns", f"dataset {self.source} has no label columns")
        return dataset_labels(self.metadata, self.label_columns, self.label_separator)


def build_table_dataset(config: TableDatasetConfig) -> TableDataset:
    """The factory registered as dataset ``table``: read ``config.table`` and validate it.

    :raises DataError: see :class:`TableDataset`.
    """
    return TableDataset(config)
