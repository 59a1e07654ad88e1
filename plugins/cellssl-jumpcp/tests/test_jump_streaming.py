"""Well profiles stream the embedding shards plate by plate: peak memory stays flat in the number of plates."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellssl.api import DataError, EmbeddingWriter, read_embeddings
from cellssl_jumpcp.profiles import iter_plates, well_profiles

ROWS, DIM, WELLS = 2000, 128, 20
PLATE_BYTES = ROWS * DIM * 4


def write_plates(root: Path, plates: int, seed: int = 0) -> list[Path]:
    """One embedding folder per plate (3 shards each), ``ROWS`` cells in ``WELLS`` wells, ``DIM`` features."""
    rng = np.random.default_rng(seed)
    folders = []
    for p in range(plates):
        folder = root / f"plate{p}"
        meta = pd.DataFrame({"Metadata_Plate": f"{p:04d}", "Metadata_Well": [f"A{i % WELLS:02d}" for i in range(ROWS)],
                             "cell": np.arange(ROWS)})
        with EmbeddingWriter(folder, shard_rows=800) as writer:
            writer.write(meta, rng.normal(size=(ROWS, DIM)).astype(np.float32))
        folders.append(folder)
    return folders


def peak_bytes(run) -> tuple[int, object]:
    tracemalloc.start()
    try:
        out = run()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", ["median", "mean"])
def test_profile_memory_is_flat_in_plate_count(tmp_path: Path, method: str) -> None:
    peaks, stats = {}, {}
    for plates in (2, 10):
        folders = write_plates(tmp_path / str(plates), plates)
        stats[plates] = {}
        seen = stats[plates]
        peaks[plates], (profiles, meta) = peak_bytes(lambda: well_profiles(
            iter_plates(folders, "Metadata_Plate", seen), "Metadata_Plate", "Metadata_Well", method))  # noqa: B023
        assert profiles.shape == (plates * WELLS, DIM) and (meta["Metadata_Count_Cells"] == ROWS // WELLS).all()
        assert stats[plates] == {"max_rows": ROWS, "plates": plates}  # never more than one plate's rows at once
    # five times the plates, about the same peak (the profiles themselves grow by 8 x 20 x 128 floats)
    assert peaks[10] < 1.25 * peaks[2], peaks
    assert peaks[10] < 5 * PLATE_BYTES, peaks
    whole, _ = peak_bytes(lambda: [read_embeddings(f) for f in write_plates(tmp_path / "all", 10)])
    assert whole > 9 * PLATE_BYTES  # reading every shard at once holds all ten plates: the measure can tell


def test_iter_plates_values_match_reading_everything(tmp_path: Path) -> None:
    folders = write_plates(tmp_path, 3)
    # a fourth folder holding rows of two plates, one of them also in plate0's folder
    extra = pd.DataFrame({"Metadata_Plate": ["0000", "0007", "0007"], "Metadata_Well": ["B01", "B01", "B02"],
                          "cell": [0, 1, 2]})
    with EmbeddingWriter(tmp_path / "mixed") as writer:
        writer.write(extra, np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM))
    folders.append(tmp_path / "mixed")
    seen = {plate: (x, meta) for plate, x, meta in iter_plates(folders, "Metadata_Plate")}
    assert list(seen) == ["0000", "0001", "0002", "0007"]
    tables = [read_embeddings(f) for f in folders]
    everything = np.concatenate([t.embeddings for t in tables])
    plates = pd.concat([t.metadata for t in tables], ignore_index=True)["Metadata_Plate"].to_numpy()
    for plate, (x, meta) in seen.items():
        np.testing.assert_array_equal(x, everything[plates == plate])
        assert (meta["Metadata_Plate"] == plate).all() and list(meta.columns) == ["Metadata_Plate", "Metadata_Well",
                                                                                   "cell"]
    assert len(seen["0000"][1]) == ROWS + 1 and len(seen["0007"][1]) == 2


def test_iter_plates_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no embedding shards"):
        list(iter_plates([tmp_path], "Metadata_Plate"))
    folders = write_plates(tmp_path, 1)
    with pytest.raises(DataError, match=r"column 'Plate' \(config key 'jump_map.plate_column'\) is not in the "
                                        r"embedding shard .*part-00000.parquet"):
        list(iter_plates(folders, "Plate"))


def test_jump_map_scores_a_run_without_reading_its_table(tmp_path: Path) -> None:
    from test_jump_map import cells_table

    from cellssl.api import EvalContext
    from cellssl_jumpcp.config import JumpMapConfig
    from cellssl_jumpcp.evaluator import JumpMapEvaluator

    x, meta = cells_table()
    with EmbeddingWriter(tmp_path / "embeddings", shard_rows=20, expected_rows=len(x)) as writer:
        writer.write(meta, x)
    table = read_embeddings(tmp_path / "embeddings", lazy=True)  # what the eval stage hands evaluators
    evaluator = JumpMapEvaluator(JumpMapConfig(null_size=200))
    streamed = evaluator.evaluate(table, EvalContext(run_dir=tmp_path))
    assert not table.loaded  # the shards were streamed plate by plate; the table itself was never read
    assert streamed["split"]["input_rows"] == len(x) == 90 and streamed["embedding_dim"] == 6
    in_memory = evaluator.evaluate(read_embeddings(tmp_path / "embeddings"), EvalContext(run_dir=tmp_path / "b"))
    assert streamed["metrics"] == in_memory["metrics"] and streamed["counts"] == in_memory["counts"]
