"""Parameters of the generic ``table`` dataset (:mod:`cellssl.data.table`), validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from cellssl.data.bitdepth import parse_bit_depth
from cellssl.data.vocabulary import canonical_channel_name

ON_CORRUPT = ("error", "skip")
CHECK_FILES = ("exists", "decode", "none")


@dataclass
class TableDatasetConfig:
    """Parameters of the ``table`` dataset (the YAML block ``data: {name: table, ...}``).

    :ivar table: CSV (``.csv``, ``.tsv``, optionally compressed) or Parquet (``.parquet``, ``.pq``) path;
        relative to ``root`` when ``root`` is set, else to the working directory. Required.
    :ivar root: folder the image paths of the table are resolved against; default: the table's folder.
    :ivar path_column: column with one image path per row (multi-channel file or tape).
    :ivar channel_path_columns: one column per channel (one-file-per-channel layout), in channel order;
        replaces ``path_column`` when set.
    :ivar channels: channel names (canonicalised); if empty, taken from a ``channels`` column
        (``"DAPI|Tubulin|Actin"``), else from ``channel_path_columns``' names, else from the first image
        (OME-XML names, or red/green/blue for RGB PNG/JPEG).
    :ivar channel_width: width of one channel in a channel tape ``(H, W * C)``; ``None`` for other layouts.
    :ivar bit_depth: ``"dtype"``, ``"uint8"``, ``"uint16"``, ``"float"`` or a number of bits (``"12"``).
    :ivar label_columns: label columns: one (multi-class, or multi-label with ``multilabel_separator``) or
        several boolean / 0-1 columns (multi-label).
    :ivar multilabel_separator: separator of several labels in one column (``"|"``).
    :ivar where: keep only rows whose column equals the value (all conditions must hold).
    :ivar split_column: column holding the split of each row.
    :ivar split: keep only rows whose ``split_column`` equals this; ``None`` keeps all.
    :ivar on_corrupt: ``"error"`` (stop on the first bad row, before any output is written) or ``"skip"``: drop
        every row with a defect — missing file, undecodable image, wrong channel count, values outside the bit
        depth, non-finite pixels, a path outside ``root`` — and report it (``skipped``; the run writes
        ``skipped.csv``). Skipping decodes every image when the dataset is built.
    :ivar check_files: ``"exists"`` (every file exists; the first image is decoded), ``"decode"`` (every
        image is decoded and checked), ``"none"``.
    :ivar limit: keep only the first ``limit`` rows after filtering.
    :ivar keep_alpha: keep the alpha channel of RGBA PNGs (layouts storing a fourth stain there).
    :ivar allow_outside_root: accept paths that resolve outside ``root`` (by default, with ``root`` set, such
        a path is an error naming the row). Any ``data:`` block may also set it for the datasets a plugin builds.
    """

    table: str
    root: str = ""
    path_column: str = "path"
    channel_path_columns: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    channel_width: int | None = None
    bit_depth: str = "dtype"
    label_columns: list[str] = field(default_factory=list)
    multilabel_separator: str | None = None
    where: dict[str, str] = field(default_factory=dict)
    split_column: str | None = None
    split: str | None = None
    on_corrupt: str = "error"
    check_files: str = "exists"
    limit: int | None = None
    keep_alpha: bool = False
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        parse_bit_depth(self.bit_depth)
        if self.on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {self.on_corrupt!r}")
        if self.check_files not in CHECK_FILES:
            raise ValueError(f"check_files must be one of {CHECK_FILES}, got {self.check_files!r}")
        if self.on_corrupt == "skip" and self.check_files == "none":
            raise ValueError(
                "on_corrupt='skip' needs the files checked (check_files 'exists' or 'decode'): bad rows are found "
                "by decoding every image when the dataset is built"
            )
        if self.channel_width is not None and self.channel_width < 1:
            raise ValueError(f"channel_width must be a positive integer, got {self.channel_width}")
        if self.channel_width is not None and self.channel_path_columns:
            raise ValueError("channel_width (tapes) and channel_path_columns (one file per channel) exclude "
                             "each other")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive integer or null, got {self.limit}")
        if self.split is not None and self.split_column is None:
            raise ValueError(f"split={self.split!r} needs split_column (the column that holds the split)")
        if self.multilabel_separator is not None:
            if not self.multilabel_separator:
                raise ValueError("multilabel_separator must be a non-empty string or null")
            if len(self.label_columns) != 1:
                raise ValueError(
                    f"multilabel_separator splits one label column, but label_columns is {self.label_columns}"
                )
        canonical = [canonical_channel_name(name) for name in self.channels]
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"channels {self.channels} name the same channel twice ({canonical})")
        if self.channels and self.channel_path_columns and len(self.channels) != len(self.channel_path_columns):
            raise ValueError(
                f"channels has {len(self.channels)} names but channel_path_columns has "
                f"{len(self.channel_path_columns)} columns; give one name per column"
            )
