"""Sharded Parquet embedding tables: cellssl.embed.store."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellssl.embed.store import EmbeddingWriter, read_embeddings
from cellssl.errors import DataError


def _batch(start: int, n: int, dim: int = 4) -> tuple[pd.DataFrame, np.ndarray]:
    rows = np.arange(start, start + n)
    meta = pd.DataFrame({
        "cell_id": rows,                                            # int64
        "well": [f"B{r:02d}" if r % 7 else None for r in rows],    # str with missing values
        "area": [float(r) / 3 if r % 5 else np.nan for r in rows], # float with NaN
        "is_control": rows % 2 == 0,                                # bool
        "reviewed": [bool(r % 3) if r % 4 else None for r in rows], # bool with None (object)
    })
    emb = np.random.default_rng(start).normal(size=(n, dim)).astype(np.float32)
    return meta, emb


def test_round_trip_several_shards_with_bounded_buffer(tmp_path: Path) -> None:
    batches = [_batch(0, 7), _batch(7, 13), _batch(20, 5), _batch(25, 0)]
    info = {"model": {"name": "vit_small", "checkpoint": "ckpt.pt"}, "channels": ["dna", "rna"]}
    with EmbeddingWriter(tmp_path, shard_rows=10, info=info) as writer:
        for meta, emb in batches:
            writer.write(meta, emb)
            assert writer.buffered_rows <= 10
    assert writer.max_buffered_rows == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]

    table = read_embeddings(tmp_path)
    expected_meta = pd.concat([m for m, _ in batches[:3]], ignore_index=True)
    expected_emb = np.concatenate([e for _, e in batches])
    assert table.embeddings.dtype == np.float32 and table.embeddings.shape == (25, 4)
    np.testing.assert_array_equal(table.embeddings, expected_emb)
    pd.testing.assert_frame_equal(table.metadata, expected_meta)
    assert table.metadata["reviewed"].tolist()[:5] == [None, True, True, False, None]
    assert table.metadata["well"].isna().tolist()[:8] == [True] + [False] * 6 + [True]

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["dim"] == 4 and manifest["rows"] == 25
    assert [{k: s[k] for k in ("file", "start", "rows")} for s in manifest["shards"]] == [
        {"file": "part-00000.parquet", "start": 0, "rows": 10},
        {"file": "part-00001.parquet", "start": 10, "rows": 10},
        {"file": "part-00002.parquet", "start": 20, "rows": 5}]
    for shard in manifest["shards"]:
        assert shard["sha256"] == hashlib.sha256((tmp_path / shard["file"]).read_bytes()).hexdigest()
    assert manifest["complete"] is True
    assert manifest["columns"] == ["cell_id", "well", "area", "is_control", "reviewed"]
    assert manifest["info"] == info and table.manifest["info"] == info


def test_embedding_column_is_fixed_size_float32_list(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta, emb = _batch(0, 3, dim=5)
    with EmbeddingWriter(tmp_path) as writer:
        writer.write(meta, emb.astype(np.float64))
    emb_type = pq.read_schema(tmp_path / "part-00000.parquet").field("embedding").type
    assert pa.types.is_fixed_size_list(emb_type) and emb_type.list_size == 5
    assert emb_type.value_type == pa.float32()
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_prefixed_writers_share_a_folder(tmp_path: Path) -> None:
    for rank in range(2):
        meta, emb = _batch(rank * 100, 15)
        with EmbeddingWriter(tmp_path, shard_rows=10, shard_prefix=f"rank{rank:02d}-",
                             info={"rank": rank}) as writer:
            writer.write(meta, emb)
    assert (tmp_path / "rank00-manifest.json").exists() and (tmp_path / "rank01-manifest.json").exists()
    table = read_embeddings(tmp_path, columns=["cell_id"])
    assert list(table.metadata.columns) == ["cell_id"]
    assert table.metadata["cell_id"].tolist() == list(range(15)) + list(range(100, 115))
    assert table.manifest["rows"] == 30 and len(table.manifest["shards"]) == 4


def test_corrupt_shard_is_a_data_error(tmp_path: Path) -> None:
    meta, emb = _batch(0, 20)
    with EmbeddingWriter(tmp_path, shard_rows=10) as writer:
        writer.write(meta, emb)
    (tmp_path / "part-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"part-00001.parquet changed after it was written"):
        read_embeddings(tmp_path)
    with pytest.raises(DataError, match=r"part-00001.parquet is unreadable or corrupt"):
        read_embeddings(tmp_path / "part-00001.parquet")  # one file is read as is


def test_missing_folder_contents_and_dimension_mismatch(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no embedding shards"):
        read_embeddings(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_embeddings(tmp_path / "nope")
    for prefix, dim in (("a-", 4), ("b-", 6)):
        meta, emb = _batch(0, 3, dim=dim)
        with EmbeddingWriter(tmp_path, shard_prefix=prefix) as writer:
            writer.write(meta, emb)
    with pytest.raises(DataError, match=r"embedding dimensions disagree: a-part-00000\.parquet has 4, "
                                        r"b-part-00000\.parquet has 6"):
        read_embeddings(tmp_path)


def test_manifest_listing_a_missing_shard_is_a_data_error(tmp_path: Path) -> None:
    meta, emb = _batch(0, 20)
    with EmbeddingWriter(tmp_path, shard_rows=10) as writer:
        writer.write(meta, emb)
    (tmp_path / "part-00000.parquet").unlink()
    with pytest.raises(DataError, match=r"shard\(s\) \['part-00000.parquet'\] listed in the manifest are missing"):
        read_embeddings(tmp_path)


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    meta, emb = _batch(0, 4)
    with EmbeddingWriter(tmp_path / "a") as writer:
        with pytest.raises(DataError, match="metadata column 'embedding' clashes with the reserved"):
            writer.write(meta.assign(embedding=1), emb)
        with pytest.raises(DataError, match="metadata has 4 rows but embeddings has 3 rows"):
            writer.write(meta, emb[:3])
        bad = emb.copy()
        bad[2, 1] = np.nan
        with pytest.raises(DataError, match=r"NaN or inf \(first in row 2 of this batch"):
            writer.write(meta, bad)
        writer.write(meta, emb)
        with pytest.raises(DataError, match="embedding dimension 5 differs from the first batch's 4"):
            writer.write(meta, np.zeros((4, 5)))
        with pytest.raises(DataError, match="metadata columns"):
            writer.write(meta.drop(columns=["area"]), emb)
    with pytest.raises(DataError, match="already holds embedding shards"):
        EmbeddingWriter(tmp_path / "a")
    with EmbeddingWriter(tmp_path / "a", overwrite=True) as writer:
        writer.write(meta.iloc[:2], emb[:2])
    assert len(read_embeddings(tmp_path / "a")) == 2
    with pytest.raises(TypeError):
        EmbeddingWriter(tmp_path / "b", info={"bad": object()})


def test_interrupted_export_writes_no_manifest_and_is_not_read(tmp_path: Path) -> None:
    meta, emb = _batch(0, 25)
    with pytest.raises(RuntimeError, match="boom"), EmbeddingWriter(tmp_path, shard_rows=10) as writer:
        writer.write(meta, emb)
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(DataError, match=r"2 embedding shard\(s\) but no manifest: the export did not finish"):
        read_embeddings(tmp_path)


def test_resumed_writer_keeps_complete_shards_of_the_same_fingerprint(tmp_path: Path) -> None:
    meta, emb = _batch(0, 25)
    with pytest.raises(RuntimeError), EmbeddingWriter(tmp_path, shard_rows=10, fingerprint="abc") as writer:
        writer.write(meta.iloc[:15], emb[:15])  # one full shard flushed, 5 rows lost
        raise RuntimeError("killed")
    first = (tmp_path / "part-00000.parquet").read_bytes()
    with EmbeddingWriter(tmp_path, shard_rows=10, fingerprint="other", resume=True) as writer:
        assert writer.resumed_rows == 0  # another fingerprint: nothing is kept
        writer.write(meta.iloc[:10], emb[:10])
    assert not (tmp_path / "manifest.json").read_text().count("abc")
    with pytest.raises(RuntimeError), EmbeddingWriter(tmp_path, shard_rows=10, fingerprint="abc",
                                                      overwrite=True) as writer:
        writer.write(meta.iloc[:15], emb[:15])
        raise RuntimeError("killed")
    first = (tmp_path / "part-00000.parquet").read_bytes()
    with EmbeddingWriter(tmp_path, shard_rows=10, fingerprint="abc", resume=True, expected_rows=25) as writer:
        assert writer.resumed_rows == 10
        writer.write(meta.iloc[10:], emb[10:])
    assert (tmp_path / "part-00000.parquet").read_bytes() == first  # kept, not rewritten
    table = read_embeddings(tmp_path, expected_fingerprint="abc")
    np.testing.assert_array_equal(table.embeddings, emb)
    assert table.metadata["cell_id"].tolist() == list(range(25))
    with pytest.raises(DataError, match="computed from another data"):
        read_embeddings(tmp_path, expected_fingerprint="xyz")


def test_extra_or_unlisted_shards_and_row_count_are_refused(tmp_path: Path) -> None:
    meta, emb = _batch(0, 20)
    with EmbeddingWriter(tmp_path, shard_rows=10) as writer:
        writer.write(meta, emb)
    (tmp_path / "part-00002.parquet").write_bytes((tmp_path / "part-00001.parquet").read_bytes())
    with pytest.raises(DataError, match=r"\['part-00002.parquet'\] are listed in no manifest"):
        read_embeddings(tmp_path)
    (tmp_path / "part-00002.parquet").unlink()
    with pytest.raises(DataError, match="wrote 20 rows, expected 30; no manifest written"), \
            EmbeddingWriter(tmp_path / "b", expected_rows=30) as writer:
        writer.write(meta, emb)
    assert not (tmp_path / "b" / "manifest.json").exists()


def test_missing_rank_manifest_is_refused(tmp_path: Path) -> None:
    for rank in range(2):
        meta, emb = _batch(rank * 100, 5)
        with EmbeddingWriter(tmp_path, shard_prefix=f"rank{rank:03d}-", extra={"rank": rank, "world_size": 2}) as w:
            w.write(meta, emb)
    assert len(read_embeddings(tmp_path)) == 10
    (tmp_path / "rank001-manifest.json").unlink()
    (tmp_path / "rank001-part-00000.parquet").unlink()
    with pytest.raises(DataError, match=r"manifests of rank\(s\) \[1\] of 2 are missing"):
        read_embeddings(tmp_path)


def test_lazy_table_is_verified_at_once_and_read_on_first_use(tmp_path: Path) -> None:
    meta, emb = _batch(0, 25)
    with EmbeddingWriter(tmp_path, shard_rows=10) as writer:
        writer.write(meta, emb)
    table = read_embeddings(tmp_path, lazy=True)
    assert not table.loaded and len(table) == 25 and table.dim == 4 and not table.loaded
    np.testing.assert_array_equal(table.embeddings, emb)
    assert table.loaded and table.metadata["cell_id"].tolist() == list(range(25))
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match="no manifest"):
        read_embeddings(tmp_path, lazy=True)  # verification is not deferred
