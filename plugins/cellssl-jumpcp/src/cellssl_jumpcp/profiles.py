"""Well profiles of JUMP plates: cell embeddings aggregated per (plate, well), plate by plate, and normalised.

- :func:`well_profiles` aggregates one plate at a time (pycytominer ``aggregate``: ``median`` or ``mean``
  of a well's cells, by :func:`cellssl.eval.engines.profiles.aggregate_profiles`), reading the embedding shards
  with a filter on the plate column (:func:`iter_plates`), so memory holds one plate's cells, not the source's.
- :func:`normalize_wells` fits the pycytominer ``normalize`` methods per plate on the negative-control
  wells (``samples=``): ``standardize``, ``mad_robustize`` (median and 1.4826 x MAD) and ``spherize`` (ZCA),
  computed by :func:`cellssl.eval.engines.profiles.normalize_profiles`.
- :func:`write_profiles` writes them as Parquet: the ``Metadata_`` columns, ``Metadata_Count_Cells`` and one
  float32 column per feature (``emb_0000``...), the layout pandas, pycytominer and copairs read as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellssl.api import DataError, aggregate_profiles, normalize_profiles, require_columns

logger = logging.getLogger(__name__)

COUNT_COLUMN = "Metadata_Count_Cells"
CORE_METHOD = {"standardize": "standardize", "mad_robustize": "mad", "spherize": "sphering", "none": "none"}


def feature_names(dim: int) -> list[str]:
    """``emb_0000`` ... ``emb_<dim-1>``."""
    return [f"emb_{i:04d}" for i in range(dim)]


def shard_files(folders: Path | Sequence[Path]) -> list[Path]:
    """The embedding shards (``*.parquet``, hidden temporary files excluded) of one folder or several, sorted.

    :raises DataError: naming the folders when none holds a shard.
    """
    folders = [Path(folders)] if isinstance(folders, str | Path) else [Path(f) for f in folders]
    shards = [p for folder in folders for p in sorted(folder.glob("*.parquet")) if not p.name.startswith(".")]
    if not shards:
        raise DataError(f"no embedding shards (*.parquet) in {', '.join(map(str, folders[:5]))}")
    return shards


def iter_plates(folders: Path | Sequence[Path], plate_column: str, stats: dict[str, int] | None = None
                ) -> Iterator[tuple[str, np.ndarray, pd.DataFrame]]:
    """``(plate, embeddings (n, D) float32, metadata)`` for each plate of one or several embedding folders, in
    plate order, with one plate in memory at a time.

    A first pass reads only ``plate_column`` of each shard (which plates a shard holds); then each plate is
    read from the shards holding it, with a filter on the plate column, so the rows materialised at once are
    one plate's (not the source's), whatever the number of plates or folders.

    :param stats: when given, ``stats["max_rows"]`` is set to the most rows materialised at once and
        ``stats["plates"]`` to the number of plates yielded.
    :raises DataError: when there is no shard, or a shard is unreadable or lacks ``plate_column``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cellssl.api import EMBEDDING_COLUMN

    shards = shard_files(folders)
    holders: dict[str, list[Path]] = {}
    for shard in shards:
        try:
            if plate_column not in pq.ParquetFile(shard).schema_arrow.names:
                raise DataError(f"column '{plate_column}' (config key 'jump_map.plate_column') is not in the "
                                f"embedding shard {shard}")
            values = pq.read_table(shard, columns=[plate_column]).column(0)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"embedding shard {shard} is unreadable or corrupt: {exc}") from exc
        for plate in pc.unique(values.cast(pa.string())).to_pylist():
            holders.setdefault(str(plate), []).append(shard)
    if stats is not None:
        stats.update(max_rows=0, plates=0)
    for plate in sorted(holders):
        tables = [pq.read_table(s, filters=pc.field(plate_column).cast(pa.string()) == plate) for s in holders[plate]]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        del tables
        column = table.column(EMBEDDING_COLUMN)
        dim = column.type.list_size
        values = np.concatenate([chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks])
        metadata = table.drop_columns([EMBEDDING_COLUMN]).to_pandas()
        if stats is not None:
            stats["max_rows"] = max(stats["max_rows"], table.num_rows)
            stats["plates"] += 1
        del table, column
        yield plate, values.reshape(-1, dim).astype(np.float32, copy=False), metadata


def iter_table_plates(embeddings: np.ndarray, metadata: pd.DataFrame, plate_column: str
                      ) -> Iterator[tuple[str, np.ndarray, pd.DataFrame]]:
    """The plates of an in-memory table, in the order of :func:`iter_plates`."""
    require_columns(metadata, [plate_column], "jump_map.plate_column")
    plates = metadata[plate_column].astype(str).to_numpy()
    for plate in sorted(set(plates)):
        rows = np.flatnonzero(plates == plate)
        yield plate, embeddings[rows], metadata.iloc[rows].reset_index(drop=True)


def well_profiles(plates: Iterator[tuple[str, np.ndarray, pd.DataFrame]], plate_column: str, well_column: str,
                  method: str = "median", site_column: str = "") -> tuple[np.ndarray, pd.DataFrame]:
    """One profile per (plate, well): the ``method`` of its rows, plate by plate.

    With ``site_column`` the aggregation has two levels: cells -> one profile per (plate, well, site), then
    sites -> well, each with ``method`` (every site weighs the same, however many cells it has);
    ``Metadata_Count_Cells`` still counts the cells of the well.

    :return: ``(profiles (W, D) float32, metadata)``: the ``Metadata_`` columns constant within each well and
        ``Metadata_Count_Cells``; wells sorted by plate then well.
    :raises DataError: when a column is missing or no row is given.
    """
    blocks, metas = [], []
    for _, embeddings, metadata in plates:
        require_columns(metadata, [plate_column, well_column, *([site_column] if site_column else [])], "jump_map")
        if site_column:
            embeddings, metadata = aggregate_profiles(embeddings, metadata, [plate_column, well_column, site_column],
                                                      method, key="jump_map.site_column")
            cells = metadata["n_rows"].to_numpy()
            metadata = metadata.drop(columns=["n_rows", site_column])
        profiles, meta = aggregate_profiles(embeddings, metadata, [plate_column, well_column], method,
                                            key="jump_map.well_column")
        if site_column:
            keys = metadata[[plate_column, well_column]].astype(str).agg("\x1f".join, axis=1)
            totals = pd.Series(cells).groupby(keys.to_numpy()).sum()
            meta["n_rows"] = totals.loc[meta[[plate_column, well_column]].astype(str).agg("\x1f".join, axis=1)
                                        ].to_numpy()
        keep = [c for c in meta.columns if c.startswith("Metadata_") or c in (plate_column, well_column)]
        meta = meta[keep].assign(**{COUNT_COLUMN: meta["n_rows"].to_numpy()})
        blocks.append(profiles)
        metas.append(meta)
    if not blocks:
        raise DataError("no cell embeddings to aggregate into well profiles")
    return np.concatenate(blocks), pd.concat(metas, ignore_index=True)


def normalize_wells(profiles: np.ndarray, metadata: pd.DataFrame, method: str, controls: np.ndarray,
                    plate_column: str, epsilon: float = 1e-6) -> np.ndarray:
    """Per-plate ``method`` (pycytominer names) fitted on the rows ``controls``.

    :raises DataError: when a plate has fewer than 2 control wells (naming the plate).
    :raises ValueError: for an unknown method.
    """
    if method not in CORE_METHOD:
        raise ValueError(f"normalize must be one of {tuple(CORE_METHOD)}, got {method!r}")
    return normalize_profiles(profiles, metadata, CORE_METHOD[method], controls, plate_column, epsilon,
                              key="jump_map")


def write_profiles(path: Path, profiles: np.ndarray, metadata: pd.DataFrame) -> Path:
    """Write ``metadata`` + one float32 column per feature to the Parquet file ``path`` (atomically)."""
    from cellssl.api import atomic_open

    frame = pd.concat([metadata.reset_index(drop=True),
                       pd.DataFrame(profiles.astype(np.float32), columns=feature_names(profiles.shape[1]))], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        frame.to_parquet(handle, index=False)
    return path


def read_profiles(path: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """``(features, Metadata_ columns)`` of a profile file written by :func:`write_profiles`."""
    frame = pd.read_parquet(path)
    features = [c for c in frame.columns if not c.startswith("Metadata_")]
    return frame[features].to_numpy(np.float32), frame[[c for c in frame.columns if c.startswith("Metadata_")]]
