"""Sharded Parquet embedding tables: :class:`EmbeddingWriter` and :func:`read_embeddings`.

On-disk format of one embedding folder::

    <dir>/<prefix>part-00000.parquet   metadata columns + column ``embedding`` (fixed-size list<float32>)
    <dir>/<prefix>part-00001.parquet   ...
    <dir>/<prefix>manifest.json        written last: dim, rows, every shard (file, first row, rows, SHA-256),
                                       columns, the set's fingerprint and the writer's extra ``info``

``<prefix>`` is empty for a single writer; several processes (one per rank) writing into one folder
each use their own prefix (``rank00-``, ``rank01-``), so their shards and manifests never collide.
Every file is written to a hidden temporary file in the same folder and moved into place with
:func:`os.replace`, so a reader never sees a half-written shard. A writer that exits with an exception
writes no manifest: shards without a manifest mark an interrupted export, which
:func:`~cellssl.embed.manifest.verify_manifests` refuses to read. Each shard's Parquet footer records the
set's fingerprint and its position, so an interrupted export resumes (``resume=True``): the complete
shards of the same fingerprint are kept and the writer continues after them.

Metadata values (str, int, float, bool, None) are stored with pyarrow's pandas conversion and read
back per shard, so each shard restores the dtypes it was written with; the reader concatenates shards
with :func:`pandas.concat` (a column that is ``int64`` in one shard and has ``None`` in another comes
back as ``float64``, exactly as ``pandas.concat`` of the written frames would).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.atomic import atomic_open, atomic_write_json
from cellssl.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

EMBEDDING_COLUMN = "embedding"
MANIFEST_SUFFIX = "manifest.json"
FORMAT_VERSION = 2
FOOTER_KEY = b"cellssl"


@dataclass
class EmbeddingTable:
    """Embeddings with their metadata, row-aligned.

    :ivar metadata: one row per embedding, index ``0..N-1``.
    :ivar embeddings: float32 array of shape ``(N, D)``.
    :ivar manifest: the merged manifests found beside the shards (``{}`` when none), with key
        ``info`` holding the writers' extra information (model identity, channels, config).
    """

    metadata: pd.DataFrame
    embeddings: np.ndarray
    manifest: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got shape {self.embeddings.shape}")
        if len(self.metadata) != self.embeddings.shape[0]:
            raise ValueError(
                f"metadata has {len(self.metadata)} rows but embeddings has {self.embeddings.shape[0]}"
            )

    @property
    def dim(self) -> int:
        """Embedding dimension ``D``."""
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


class LazyEmbeddingTable(EmbeddingTable):
    """An :class:`EmbeddingTable` of a verified folder, read from disk on first use of ``metadata`` or
    ``embeddings`` (then kept); ``len`` and ``dim`` come from the manifest without reading.

    :param manifest: the folder's verified, merged manifest. :param load: reads the folder into a table.
    """

    def __init__(self, manifest: dict[str, Any], load: Any) -> None:  # no dataclass __init__: nothing read yet
        self.manifest = manifest
        self._load = load
        self._table: EmbeddingTable | None = None

    @property
    def loaded(self) -> bool:
        """Whether the shards have been read."""
        return self._table is not None

    def _get(self) -> EmbeddingTable:
        if self._table is None:
            self._table = self._load()
        return self._table

    @property  # type: ignore[override]
    def metadata(self) -> pd.DataFrame:
        return self._get().metadata

    @property  # type: ignore[override]
    def embeddings(self) -> np.ndarray:
        return self._get().embeddings

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"]) if self.manifest.get("dim") is not None else self._get().dim

    def __len__(self) -> int:
        return int(self.manifest["rows"]) if self.manifest.get("rows") is not None else len(self._get())


class EmbeddingWriter:
    """Write embeddings and their metadata as Parquet shards of at most ``shard_rows`` rows.

    Use as a context manager::

        with EmbeddingWriter(run_dir / "embeddings", info={"model": ..., "channels": [...]}) as writer:
            for meta, emb in batches:
                writer.write(meta, emb)

    :param out_dir: folder of the shards (created if missing).
    :param shard_rows: rows per shard; the writer never buffers more rows than this.
    :param shard_prefix: prefix of this writer's files (e.g. ``"rank00-"``) so that several writers can
        share ``out_dir``; letters, digits, ``-``, ``_`` and ``.`` only.
    :param info: JSON-serialisable extra information stored under ``info`` in the manifest.
    :param overwrite: delete this prefix's existing shards and manifest first; without it, existing
        shards of the same prefix raise :class:`DataError`.
    :param fingerprint: digest of what the embeddings depend on (stored in every shard and the manifest).
    :param resume: keep the leading complete shards of this prefix written with the same ``fingerprint`` and
        ``shard_rows`` (see :attr:`resumed_rows`); delete the rest.
    :param expected_rows: rows this writer will write in all; :meth:`close` refuses a different count.
    :param extra: JSON-serialisable top-level manifest entries (rank, world size, skipped rows).
    :raises ValueError: for a non-positive ``shard_rows`` or an invalid prefix.
    :raises TypeError: if ``info`` is not JSON-serialisable.
    :raises DataError: if ``out_dir`` already holds shards of this prefix and ``overwrite`` is false.
    """

    def __init__(
        self,
        out_dir: str | Path,
        *,
        shard_rows: int = 50_000,
        shard_prefix: str = "",
        info: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        fingerprint: str = "",
        resume: bool = False,
        expected_rows: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        if shard_prefix and not all(ch.isalnum() or ch in "-_." for ch in shard_prefix):
            raise ValueError(f"shard_prefix {shard_prefix!r} may hold only letters, digits, '-', '_', '.'")
        self.info = dict(info or {})
        json.dumps(self.info)  # raises TypeError early, not at close()
        self.out_dir = Path(out_dir)
        self.shard_rows = int(shard_rows)
        self.shard_prefix = shard_prefix
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.expected_rows = expected_rows  # read by _resumable
        self.extra = dict(extra or {})
        json.dumps(self.extra)
        self._shards: list[dict[str, Any]] = []
        self._rows = 0
        existing = sorted(self.out_dir.glob(f"{shard_prefix}part-*.parquet"))
        manifest = self.manifest_path
        if resume:
            self._shards = self._resumable(existing)
            self._rows = sum(s["rows"] for s in self._shards)
            kept = {s["file"] for s in self._shards}
            for path in existing:
                if path.name not in kept:
                    path.unlink()
            manifest.unlink(missing_ok=True)
        elif existing or manifest.exists():
            if not overwrite:
                raise DataError(
                    f"{self.out_dir} already holds embedding shards with prefix '{shard_prefix}' "
                    f"({len(existing)} shards, e.g. {existing[0].name if existing else manifest.name}); "
                    "choose another folder or pass overwrite=True to replace them."
                )
            for path in existing:
                path.unlink()
            manifest.unlink(missing_ok=True)
        self.resumed_rows = self._rows
        self._buffer_meta: list[pd.DataFrame] = []
        self._buffer_emb: list[np.ndarray] = []
        self._buffered = 0
        self.max_buffered_rows = 0
        self._columns: list[str] | None = None
        self._dim: int | None = None
        if self._shards:
            self._columns, self._dim = self._shards[0].pop("columns"), self._shards[0].pop("dim")
            for shard in self._shards[1:]:
                shard.pop("columns"), shard.pop("dim")
        self._closed = False

    def _resumable(self, existing: list[Path]) -> list[dict[str, Any]]:
        """The leading shards of ``existing`` that a resumed export keeps (same fingerprint, full size)."""
        import pyarrow.parquet as pq

        kept: list[dict[str, Any]] = []
        for position, path in enumerate(existing):
            if path.name != f"{self.shard_prefix}part-{position:05d}.parquet":
                break
            try:
                parquet = pq.ParquetFile(path)
                footer = json.loads((parquet.schema_arrow.metadata or {}).get(FOOTER_KEY, b"{}"))
                rows = parquet.metadata.num_rows
            except Exception:
                break
            start = position * self.shard_rows
            last = self.expected_rows is not None and start + rows == self.expected_rows  # the final, short shard
            if (not self.fingerprint or footer.get("fingerprint") != self.fingerprint
                    or footer.get("start") != start or not (rows == self.shard_rows or last)):
                break
            kept.append({"file": path.name, "start": position * self.shard_rows, "rows": rows,
                         "sha256": footer_digest(path), "columns": footer.get("columns"), "dim": footer.get("dim")})
        if kept:
            logger.info("resuming the embedding export in %s: keeping %d complete shard(s), %d rows",
                        self.out_dir, len(kept), sum(s["rows"] for s in kept))
        return kept

    @property
    def manifest_path(self) -> Path:
        """Where :meth:`close` writes this writer's manifest (``<prefix>manifest.json``)."""
        return self.out_dir / f"{self.shard_prefix}{MANIFEST_SUFFIX}"

    @property
    def rows_written(self) -> int:
        """Rows already flushed to shards (not counting the buffer)."""
        return self._rows

    @property
    def buffered_rows(self) -> int:
        """Rows held in memory, waiting for the next shard; never more than ``shard_rows``."""
        return self._buffered

    def write(self, meta: pd.DataFrame, emb: Any) -> None:
        """Append rows: ``meta`` (one row per embedding) and ``emb`` of shape ``(n, D)``.

        ``emb`` is converted to float32 and copied. The metadata's index is dropped.

        :raises DataError: when the row counts differ, ``emb`` is not 2-D, ``D`` or the metadata columns
            differ from the first call, a column is named ``embedding``, or ``emb`` holds NaN/inf.
        :raises RuntimeError: after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("EmbeddingWriter.write() called after close()")
        emb = np.asarray(emb)
        if emb.ndim != 2:
            raise DataError(f"embeddings must be a 2-D array (n, D), got shape {emb.shape}")
        if len(meta) != emb.shape[0]:
            raise DataError(f"metadata has {len(meta)} rows but embeddings has {emb.shape[0]} rows")
        columns = [str(c) for c in meta.columns]
        if EMBEDDING_COLUMN in columns:
            raise DataError(
                f"metadata column '{EMBEDDING_COLUMN}' clashes with the reserved embedding column; "
                "rename it before writing embeddings."
            )
        if len(set(columns)) != len(columns):
            raise DataError(f"metadata has duplicate column names: {columns}")
        if self._columns is None:
            self._columns = columns
            self._dim = int(emb.shape[1])
        if emb.shape[1] != self._dim:
            raise DataError(f"embedding dimension {emb.shape[1]} differs from the first batch's {self._dim}")
        if set(columns) != set(self._columns):
            raise DataError(
                f"metadata columns {sorted(columns)} differ from the first batch's {sorted(self._columns)}"
            )
        if emb.shape[0] and not np.all(np.isfinite(emb)):
            bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
            raise DataError(
                f"embeddings contain NaN or inf (first in row {bad} of this batch, "
                f"{self._rows + self._buffered + bad} overall); check the model's output"
            )
        meta = meta.reset_index(drop=True)
        meta.columns = columns
        meta = meta[self._columns]
        start = 0
        while start < len(meta):
            take = min(self.shard_rows - self._buffered, len(meta) - start)
            self._buffer_meta.append(meta.iloc[start : start + take].copy())
            self._buffer_emb.append(np.array(emb[start : start + take], dtype=np.float32, copy=True))
            self._buffered += take
            self.max_buffered_rows = max(self.max_buffered_rows, self._buffered)
            start += take
            if self._buffered >= self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        meta = pd.concat(self._buffer_meta, ignore_index=True)
        emb = np.concatenate(self._buffer_emb, axis=0)
        try:
            table = pa.Table.from_pandas(meta, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(
                f"cannot store the metadata as Parquet ({exc}); give each column a single type "
                "(e.g. convert mixed columns with .astype(str))"
            ) from exc
        flat = pa.array(emb.reshape(-1), type=pa.float32())
        table = table.append_column(EMBEDDING_COLUMN, pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]))
        footer = {"fingerprint": self.fingerprint, "start": self._rows, "columns": self._columns, "dim": self._dim}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), FOOTER_KEY: json.dumps(footer)})
        name = f"{self.shard_prefix}part-{len(self._shards):05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        payload = sink.getvalue().to_pybytes()
        with atomic_open(self.out_dir / name, "wb") as handle:
            handle.write(payload)
        self._shards.append({"file": name, "start": self._rows, "rows": len(meta),
                             "sha256": hashlib.sha256(payload).hexdigest()})
        self._rows += len(meta)
        self._buffer_meta, self._buffer_emb, self._buffered = [], [], 0
        logger.debug("wrote %s (%d rows)", name, len(meta))

    def close(self) -> Path:
        """Flush the buffer and write the manifest; idempotent.

        :return: the manifest's path.
        """
        if self._closed:
            return self.manifest_path
        self._flush()
        self._closed = True
        if self.expected_rows is not None and self._rows != self.expected_rows:
            raise DataError(f"embedding export to {self.out_dir} wrote {self._rows} rows, expected "
                            f"{self.expected_rows}; no manifest written")
        manifest = {
            "format_version": FORMAT_VERSION,
            "complete": True,
            "fingerprint": self.fingerprint,
            **self.extra,
            "dim": self._dim,
            "rows": self._rows,
            "embedding_column": EMBEDDING_COLUMN,
            "columns": list(self._columns or []),
            "shard_prefix": self.shard_prefix,
            "shards": self._shards,
            "info": self.info,
        }
        atomic_write_json(self.manifest_path, manifest)
        logger.info("wrote %d embeddings (dim %s) in %d shards to %s", self._rows, self._dim,
                    len(self._shards), self.out_dir)
        return self.manifest_path

    def abort(self) -> None:
        """Stop without writing the buffer or a manifest (the shards already written stay)."""
        self._closed = True
        self._buffer_meta, self._buffer_emb, self._buffered = [], [], 0

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            logger.warning("embedding export to %s interrupted; no manifest written", self.out_dir)
            self.abort()


def footer_digest(path: Path) -> str:
    """SHA-256 (hex) of a shard file's bytes."""
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _shard_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"embedding path {path} does not exist")
    shards = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    if not shards:
        raise DataError(f"no embedding shards (*.parquet) in {path}; export embeddings there first")
    return shards


def read_embeddings(
    path_or_dir: str | Path,
    columns: Sequence[str] | None = None,
    *,
    expected_fingerprint: str | None = None,
    expected_parts: dict[str, Any] | None = None,
    lazy: bool = False,
) -> EmbeddingTable:
    """Read every shard of a complete embedding folder (sorted by name, any prefix), or one Parquet file.

    A folder is read only when :func:`~cellssl.embed.manifest.verify_manifests` accepts it: manifests
    complete, every shard listed and unchanged, no extra shard, and (when given) the expected fingerprint.

    :param path_or_dir: a folder written by :class:`EmbeddingWriter`, or one shard (read as is).
    :param columns: metadata columns to read (default: all).
    :param expected_fingerprint: refuse a folder whose fingerprint differs (the run's config changed).
    :param expected_parts: what ``expected_fingerprint`` was computed from (names the differences).
    :param lazy: verify the folder now but read its shards only when ``metadata`` or ``embeddings`` is first
        used (a :class:`LazyEmbeddingTable`; ``len`` and ``dim`` come from the manifest), so an evaluator that
        streams the shards itself never holds the whole table.
    :return: the table; ``manifest`` holds the merged manifests of the folder (``{}`` for one file).
    :raises DataError: naming the folder or file when there are no shards, a shard is unreadable or
        lacks the ``embedding`` column, shards disagree on the dimension or columns, a manifest lists a
        missing shard, or a requested column does not exist.
    """

    path = Path(path_or_dir)
    shards = _shard_files(path)
    manifest: dict[str, Any] = {}
    if path.is_dir():
        from cellssl.embed.manifest import verify_manifests

        manifest = verify_manifests(path, shards, expected_fingerprint=expected_fingerprint,
                                    expected_parts=expected_parts)
        if lazy:
            return LazyEmbeddingTable(manifest, lambda: _read_shards(path, shards, columns, manifest))
    return _read_shards(path, shards, columns, manifest)


def _read_shards(path: Path, shards: Sequence[Path], columns: Sequence[str] | None,
                 manifest: dict[str, Any]) -> EmbeddingTable:
    """Read ``shards`` (already checked against ``manifest``) into one table."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_counts: list[int] = []
    dim: int | None = None
    meta_columns: list[str] | None = None
    for shard in shards:
        try:
            parquet = pq.ParquetFile(shard)
            schema = parquet.schema_arrow
            rows = parquet.metadata.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"embedding shard {shard} is unreadable or corrupt: {exc}") from exc
        field_index = schema.get_field_index(EMBEDDING_COLUMN)
        if field_index < 0:
            raise DataError(f"embedding shard {shard} has no '{EMBEDDING_COLUMN}' column")
        emb_type = schema.field(field_index).type
        if not (pa.types.is_fixed_size_list(emb_type) and pa.types.is_floating(emb_type.value_type)):
            raise DataError(
                f"column '{EMBEDDING_COLUMN}' of {shard} is {emb_type}, expected a fixed-size list of floats"
            )
        names = [n for n in schema.names if n != EMBEDDING_COLUMN]
        if dim is None:
            dim, meta_columns = emb_type.list_size, names
        elif emb_type.list_size != dim:
            raise DataError(
                f"embedding dimensions disagree: {shards[0].name} has {dim}, {shard.name} has "
                f"{emb_type.list_size}; the folder mixes exports of different models"
            )
        elif set(names) != set(meta_columns or []):
            raise DataError(
                f"metadata columns disagree: {shards[0].name} has {meta_columns}, {shard.name} has {names}"
            )
        row_counts.append(rows)
    assert dim is not None and meta_columns is not None
    if manifest.get("dim") not in (None, dim):
        raise DataError(f"manifest in {path} says dim {manifest['dim']} but the shards hold dim {dim}")

    wanted = list(meta_columns) if columns is None else list(columns)
    unknown = [c for c in wanted if c not in meta_columns]
    if unknown:
        raise DataError(f"columns {unknown} are not in the embedding table {path}; available: {meta_columns}")

    embeddings = np.empty((sum(row_counts), dim), dtype=np.float32)
    frames: list[pd.DataFrame] = []
    offset = 0
    for shard, rows in zip(shards, row_counts, strict=True):
        try:
            table = pq.read_table(shard, columns=[*wanted, EMBEDDING_COLUMN])
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"embedding shard {shard} is unreadable or corrupt: {exc}") from exc
        if table.num_rows != rows:
            raise DataError(f"embedding shard {shard} holds {table.num_rows} rows, its footer says {rows}")
        column = table.column(EMBEDDING_COLUMN)
        if column.null_count:
            raise DataError(f"embedding shard {shard} has {column.null_count} null embeddings")
        for chunk in column.chunks:
            values = chunk.flatten().to_numpy(zero_copy_only=False)
            block = values.reshape(-1, dim)
            embeddings[offset : offset + len(block)] = block
            offset += len(block)
        frames.append(table.drop_columns([EMBEDDING_COLUMN]).to_pandas())
    if len(frames) == 1:
        metadata = frames[0]
    else:
        nonempty = [f for f in frames if len(f)] or frames[:1]
        metadata = pd.concat(nonempty, ignore_index=True)
    metadata = metadata[wanted].reset_index(drop=True)
    return EmbeddingTable(metadata=metadata, embeddings=embeddings, manifest=manifest)
