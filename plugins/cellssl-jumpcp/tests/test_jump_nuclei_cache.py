"""Nucleus centres are segmented once per site and reused from data.nuclei_cache when the dataset is rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

import cellssl_jumpcp.nuclei as nuclei
from cellssl_jumpcp.cells import JumpCellsDataset
from cellssl_jumpcp.config import JumpCellsConfig


def cells(jump, cache: Path | None, **extra) -> JumpCellsDataset:
    return JumpCellsDataset(JumpCellsConfig(root=str(jump.root), path_map=jump.path_map, plates=["0042"], limit=4,
                                            crop_size=48, nuclei_cache=str(cache) if cache else "", **extra))


def test_nuclei_cache_reuses_centres_and_redoes_changed_sites(jump, tmp_path: Path, monkeypatch) -> None:
    plain = cells(jump, None)
    first = cells(jump, tmp_path / "nuclei")
    files = list((tmp_path / "nuclei").glob("*/0042.parquet"))
    assert len(files) == 1
    stored = pd.read_parquet(files[0])
    assert set(stored.columns) == {"Metadata_Well", "Metadata_Site", "file", "y", "x"}
    assert stored.groupby(["Metadata_Well", "Metadata_Site"]).ngroups == 4
    np.testing.assert_array_equal(first.centres, plain.centres)

    calls = []
    real = nuclei.find_nuclei
    monkeypatch.setattr(nuclei, "find_nuclei", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = cells(jump, tmp_path / "nuclei")
    assert calls == []  # every site came from the cache
    np.testing.assert_array_equal(again.centres, plain.centres)
    pd.testing.assert_frame_equal(again.metadata, plain.metadata)

    dna = first.source.files(0)[first.source.jump_channels.index("DNA")]
    stat = dna.stat()
    os.utime(dna, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the site's image changed
    try:
        changed = cells(jump, tmp_path / "nuclei")
    finally:
        os.utime(dna, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(calls) == 1  # only that site was segmented again
    np.testing.assert_array_equal(changed.centres, plain.centres)

    other = cells(jump, tmp_path / "nuclei", min_area=plain.config.min_area + 40)  # another recipe: its own folder
    assert len(calls) == 5 and len(list((tmp_path / "nuclei").glob("*/0042.parquet"))) == 2
    assert len(other.centres) <= len(plain.centres)


def test_nuclei_cache_ignores_a_damaged_file(jump, tmp_path: Path) -> None:
    plain = cells(jump, tmp_path / "nuclei")
    (path,) = (tmp_path / "nuclei").glob("*/0042.parquet")
    path.write_bytes(b"not parquet")
    rebuilt = cells(jump, tmp_path / "nuclei")
    np.testing.assert_array_equal(rebuilt.centres, plain.centres)
    assert pd.read_parquet(path)["Metadata_Well"].nunique() >= 1

