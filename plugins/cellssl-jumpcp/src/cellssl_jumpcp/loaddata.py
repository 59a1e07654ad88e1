"""CellProfiler ``load_data.csv`` tables of JUMP plates: reading, channel columns and path remapping.

A load_data table has one row per site with, for every channel ``<Ch>``, ``FileName_Orig<Ch>`` and
``PathName_Orig<Ch>`` (``load_data_with_illum.csv`` adds ``FileName_Illum<Ch>`` / ``PathName_Illum<Ch>``), and
the ``Metadata_Source``, ``Metadata_Batch``, ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site`` columns.
``PathName`` values are folders of the machine that produced the table (an absolute cluster path or an
``s3://`` URL); :func:`remap_path` rewrites them with a prefix map. Every column is read as text, so plate
names such as ``1086292853`` or ``0042`` stay strings.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellssl.api import DataError
from cellssl_jumpcp.config import BRIGHTFIELD_CHANNELS, JUMP_CHANNELS

logger = logging.getLogger(__name__)

REQUIRED_METADATA = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")
VOCABULARY = {"DNA": "dna", "ER": "er", "RNA": "rna", "AGP": "agp", "Mito": "mito", "Brightfield": "brightfield",
              "HighZBF": "brightfield_high_z", "LowZBF": "brightfield_low_z"}
DEFAULT_LAYOUT = "workspace/load_data_csv/*/*/{stem}.*"
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")


def channel_name(jump_channel: str) -> str:
    """The vocabulary name of a JUMP channel (``DNA`` -> ``dna``; unknown names lowercased)."""
    return VOCABULARY.get(jump_channel, jump_channel.lower())


def as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column as text (``object`` of ``str``, missing values kept as ``NaN``).

    Integer columns of a Parquet file become their decimal digits (``1`` not ``1.0``); floats holding whole
    numbers likewise.
    """
    out = {}
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_object_dtype(series) \
                or pd.api.types.is_string_dtype(series):
            out[column] = series.map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        elif pd.api.types.is_integer_dtype(series):
            out[column] = series.astype("Int64").astype(str).where(series.notna(), np.nan)
        elif pd.api.types.is_float_dtype(series):
            whole = series.dropna()
            if len(whole) and bool((whole == np.round(whole)).all()):
                out[column] = series.map(lambda v: np.nan if np.isnan(v) else str(int(v)))
            else:
                out[column] = series.map(lambda v: np.nan if np.isnan(v) else repr(float(v)))
        else:
            out[column] = series.astype(str).where(series.notna(), np.nan)
    return pd.DataFrame(out, index=frame.index).astype(object)


def read_text_table(path: Path, what: str = "table") -> pd.DataFrame:
    """Read a CSV (optionally gzipped; ``.txt`` / ``.tsv`` tab-separated) or Parquet file with every column as text.

    :raises DataError: naming the file when it is missing or unreadable.
    """
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return as_text(pd.read_parquet(path))
        separator = "\t" if name.endswith((".txt", ".tsv", ".txt.gz", ".tsv.gz")) else ","
        return pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # pandas / pyarrow raise many types for malformed files
        raise DataError(f"could not read {what} {path}: {type(exc).__name__}: {exc}") from exc


def find_tables(root: Path, patterns: Sequence[str], stem: str, what: str) -> list[Path]:
    """Files matching ``patterns`` (globs relative to ``root``), or the default JUMP layout for ``stem``.

    When a plate has both ``<stem>.csv`` and ``<stem>.parquet``, the Parquet file is used.

    :raises DataError: when nothing matches, naming the patterns and the config key.
    """
    given = list(patterns) or [DEFAULT_LAYOUT.format(stem=stem)]
    found: list[Path] = []
    for pattern in given:
        full = pattern if Path(pattern).is_absolute() else str(root / pattern)
        matches = sorted(Path(p) for p in glob.glob(full))
        found.extend(p for p in matches if p.name.lower().endswith(TABLE_SUFFIXES) or patterns)
    by_folder: dict[tuple[Path, str], Path] = {}
    for path in found:
        base = path.name.split(".")[0]
        key = (path.parent, base)
        if key not in by_folder or path.name.lower().endswith((".parquet", ".pq")):
            by_folder[key] = path
    tables = sorted(set(by_folder.values()))
    if not tables:
        raise DataError(
            f"no {what} found under {root} matching {given} (config key 'data.load_data'); point data.root at the "
            "source folder (it holds workspace/load_data_csv/<batch>/<plate>/) or list the tables in data.load_data"
        )
    return tables


def read_load_data(paths: Sequence[Path]) -> pd.DataFrame:
    """Concatenate load_data tables (text columns) and add ``table_file`` / ``table_row`` (1-based data row).

    :raises DataError: for an unreadable table or one without ``Metadata_Plate`` / ``Metadata_Well`` /
        ``Metadata_Site``.
    """
    frames = []
    for path in paths:
        frame = read_text_table(path, "load_data table")
        missing = [c for c in REQUIRED_METADATA if c not in frame.columns]
        if missing:
            raise DataError(f"load_data table {path} lacks the columns {missing}; columns present: "
                            f"{list(frame.columns)[:20]}")
        frame = frame.assign(table_file=str(path), table_row=np.arange(1, len(frame) + 1))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def table_channels(frame: pd.DataFrame, requested: Sequence[str]) -> list[str]:
    """The JUMP channels to read: ``requested``, else the five stains + every brightfield plane present.

    :raises DataError: when a channel's ``FileName_Orig<Ch>`` / ``PathName_Orig<Ch>`` column is missing.
    """
    channels = list(requested) or [*JUMP_CHANNELS, *(c for c in BRIGHTFIELD_CHANNELS
                                                     if f"FileName_Orig{c}" in frame.columns)]
    for channel in channels:
        for column in (f"FileName_Orig{channel}", f"PathName_Orig{channel}"):
            if column not in frame.columns:
                present = sorted(c[len("FileName_Orig"):] for c in frame.columns if c.startswith("FileName_Orig"))
                raise DataError(
                    f"load_data column '{column}' is missing (channel '{channel}' of data.channels); the table "
                    f"{frame['table_file'].iloc[0]} has the channels {present}"
                )
    return channels


def remap_path(value: str, path_map: Mapping[str, str]) -> str:
    """``value`` with its longest prefix found in ``path_map`` replaced (unchanged when none matches)."""
    best = ""
    for prefix in path_map:
        if value.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return path_map[best] + value[len(best):] if best else value


def rebase_path(text: str, batch: str, root: Path) -> str:
    """``text`` moved under ``root`` from its ``images/<batch>/`` segment on (the cpg0016 layout), if it has one."""
    marker = f"images/{batch}/"
    at = (text + "/").find("/" + marker) + 1 if batch else 0
    if at <= 0 and not (text + "/").startswith(marker):
        return text
    return str(root / (text + "/")[at:].rstrip("/"))


def join_path(folder: object, name: object, root: Path, path_map: Mapping[str, str], batch: str | None = None) -> Path:
    """``folder/name`` after remapping the folder (and rebasing it on ``root`` when ``batch`` is given);
    a relative result is relative to ``root``."""
    text = remap_path(str(folder).rstrip("/"), path_map)
    if batch is not None:
        text = rebase_path(text, batch, root)
    if text.startswith("s3://"):
        return Path(text + "/" + str(name))
    path = Path(text).expanduser() / str(name)
    return path if path.is_absolute() else root / path


def file_columns(frame: pd.DataFrame, kind: str, channels: Sequence[str], root: Path,
                 path_map: Mapping[str, str], rebase: bool = False) -> list[tuple[Path, ...]]:
    """Per row, the files of ``channels`` from ``FileName_<kind><Ch>`` / ``PathName_<kind><Ch>`` (kind: Orig, Illum).

    :raises DataError: naming the table, the row and the column when a value is empty.
    """
    columns = [(f"PathName_{kind}{ch}", f"FileName_{kind}{ch}") for ch in channels]
    values = {c: frame[c].to_numpy(dtype=object) for pair in columns for c in pair}
    batches = frame["Metadata_Batch"].astype(str).to_numpy() if rebase and "Metadata_Batch" in frame.columns else None
    out: list[tuple[Path, ...]] = []
    for i in range(len(frame)):
        row = []
        for path_col, name_col in columns:
            folder, name = values[path_col][i], values[name_col][i]
            for column, value in ((path_col, folder), (name_col, name)):
                if not isinstance(value, str) or not value.strip():
                    raise DataError(f"row {frame['table_row'].iloc[i]} of {frame['table_file'].iloc[i]}: column "
                                    f"'{column}' is empty")
            row.append(join_path(folder, name, root, path_map, None if batches is None else batches[i]))
        out.append(tuple(row))
    return out
