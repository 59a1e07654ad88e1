"""jump_sites / jump_cells on the miniature JUMP source: tables, joins, illumination maths, tiles, crops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from jump_fixture import CHANNELS, CLUSTER, NEGCON, PLATES, illumination

from cellssl.api import DataError
from cellssl_jumpcp.cells import JumpCellsDataset, crop_window
from cellssl_jumpcp.config import JumpCellsConfig, JumpMetadataConfig, JumpSitesConfig
from cellssl_jumpcp.loaddata import remap_path
from cellssl_jumpcp.sites import JumpSitesDataset
from cellssl_jumpcp.wells import canonical_well, plate_format, well_position

TABLES = JumpMetadataConfig(tables="metadata")
PLATEMAPS = JumpMetadataConfig(platemaps="workspace/metadata/platemaps")


def sites(jump, **kw) -> JumpSitesDataset:
    return JumpSitesDataset(JumpSitesConfig(root=str(jump.root), path_map=jump.path_map, **kw))


def test_wells_384_and_1536() -> None:
    assert well_position("AF48") == (32, 48) and well_position("p24") == (16, 24)
    assert canonical_well("a1") == "A01" and canonical_well("AB3") == "AB03"
    assert plate_format(["A01", "P24"]) == 384 and plate_format(["A01", "AF48"]) == 1536
    with pytest.raises(ValueError, match="outside a 1536-well plate"):
        well_position("AG01")


def test_remap_longest_prefix() -> None:
    mapping = {"/home/": "/x/", "/home/ubuntu/bucket/": "/data/"}
    assert remap_path("/home/ubuntu/bucket/a/b", mapping) == "/data/a/b"
    assert remap_path("/other/a", mapping) == "/other/a"


def test_sites_counts_order_and_string_plates(jump) -> None:
    data = sites(jump)
    assert len(data) == len(jump.sites) == 53
    assert data.channel_names == ("dna", "er", "rna", "agp", "mito")
    meta = data.metadata
    assert set(meta["Metadata_Plate"]) == set(PLATES)  # "0042" keeps its leading zero
    assert all(isinstance(v, str) for c in ("Metadata_Plate", "Metadata_Site", "Metadata_Well") for v in meta[c])
    # plate 2 comes from Parquet with an integer site column: still text, still sorted numerically
    assert meta.loc[meta["Metadata_Plate"] == "0042", "Metadata_Site"].tolist()[:3] == ["1", "2", "3"]
    assert meta["Metadata_Plate"].tolist() == sorted(meta["Metadata_Plate"])
    assert "AF48" in set(meta.loc[meta["Metadata_Plate"] == "0042", "Metadata_Well"])


def test_illumination_correction_is_orig_over_illum(jump) -> None:
    data = sites(jump)
    row = data.metadata.index[(data.metadata["Metadata_Plate"] == "1086292853")
                              & (data.metadata["Metadata_Well"] == "B03")][0]
    image = data[int(row)].image.numpy()
    plate, well, site = (data.metadata.loc[row, c] for c in ("Metadata_Plate", "Metadata_Well", "Metadata_Site"))
    for c, channel in enumerate(CHANNELS):
        orig = tifffile.imread(jump.root / "images" / "2021_05_31_Batch1" / "images" / plate /
                               f"{plate}_{well}_s{site}_{channel}.tiff")
        illum = illumination(0, c)
        for y, x in ((0, 0), (120, 37), (239, 200)):
            assert image[c, y, x] == pytest.approx(orig[y, x] / 65535.0 / illum[y, x], rel=1e-6)
        true = jump.true[(plate, well, site)][c] / 65535.0  # the real pixels, before the simulated vignette
        assert np.abs(image[c] - true).max() < 1.0 / 65535.0 / 0.5
    raw = sites(jump, illum=False)[int(row)].image.numpy()
    assert raw[0, 5, 5] == pytest.approx(image[0, 5, 5] * illumination(0, 0)[5, 5], rel=1e-5)


def test_missing_prefix_map_names_row_and_key(jump) -> None:
    with pytest.raises(DataError, match=r"row 1 of .*load_data.*data.path_map"):
        JumpSitesDataset(JumpSitesConfig(root=str(jump.root), illum=False))
    assert CLUSTER.startswith("/home/")
    rebased = JumpSitesDataset(JumpSitesConfig(root=str(jump.root), rebase=True))  # no path_map needed
    assert rebased.source.files(0)[0] == sites(jump).source.files(0)[0]
    assert str(rebased.source.illum_files(0)[0]).startswith(str(jump.root / "images"))


def test_plate_filter_and_unknown_plate(jump) -> None:
    assert len(sites(jump, plates=["0042"])) == sum(jump.sites["Metadata_Plate"] == "0042")
    with pytest.raises(DataError, match=r"plates \['42'\] \(data.plates\)"):
        sites(jump, plates=["42"])


def test_tiles(jump) -> None:
    data = sites(jump, tile_size=100, tile_stride=70, limit=2)
    assert len(data) == 2 * 9  # offsets 0, 70, 140 in both axes of a 240 px site
    whole = sites(jump, limit=1)[0].image
    tile = data[4]  # offset (70, 70)
    assert tile.image.shape == (5, 100, 100)
    assert (tile.meta["Metadata_TileY"], tile.meta["Metadata_TileX"]) == ("70", "70")
    assert np.array_equal(tile.image.numpy(), whole[:, 70:170, 70:170].numpy())


def test_join_jump_tables(jump) -> None:
    meta = sites(jump, metadata=TABLES).metadata
    expected = jump.sites.set_index(["Metadata_Plate", "Metadata_Well", "Metadata_Site"])["JCP2022"]
    got = meta.set_index(["Metadata_Plate", "Metadata_Well", "Metadata_Site"])["Metadata_JCP2022"]
    assert got.sort_index().equals(expected.sort_index())
    assert set(meta.loc[meta["Metadata_JCP2022"] == NEGCON, "Metadata_pert_type"]) == {"negcon"}
    assert set(meta.loc[meta["Metadata_JCP2022"] != NEGCON, "Metadata_pert_type"]) == {"trt"}
    assert set(meta["Metadata_PlateType"]) == {"COMPOUND"}
    assert meta.loc[meta["Metadata_JCP2022"] == NEGCON, "Metadata_Name"].iloc[0] == "DMSO"


def test_join_platemaps_with_unpadded_wells(jump) -> None:
    meta = sites(jump, metadata=PLATEMAPS).metadata
    assert meta["Metadata_JCP2022"].notna().all()  # "A1" in the plate map joined to "A01"
    row = meta[(meta["Metadata_Plate"] == "0042") & (meta["Metadata_Well"] == "AB03")].iloc[0]
    assert (row["Metadata_JCP2022"], row["Metadata_moa"]) == ("JCP2022_900001", "protein synthesis")
    assert set(meta.loc[meta["Metadata_JCP2022"] == NEGCON, "Metadata_pert_type"]) == {"negcon"}


def test_cells_from_locations_centres_and_border(jump) -> None:
    cfg = dict(root=str(jump.root), path_map=jump.path_map, locations=["locations/*_nuclei.csv"], plates=["0042"])
    cells = JumpCellsDataset(JumpCellsConfig(crop_size=64, **cfg))
    placed = jump.cells[jump.cells["Metadata_Plate"] == "0042"]
    assert len(cells) == len(placed) == 9 * sum(jump.sites["Metadata_Plate"] == "0042")
    sample = cells[0]
    assert sample.image.shape == (5, 64, 64)
    site = JumpSitesDataset(JumpSitesConfig(**{k: v for k, v in cfg.items() if k != "locations"}, limit=1))[0].image
    y, x = (crop_window(c, 64) for c in cells.centres[0])
    assert (y, x) == (40 - 32, 40 - 32)
    assert np.array_equal(sample.image.numpy(), site[:, y : y + 64, x : x + 64].numpy())
    big = JumpCellsDataset(JumpCellsConfig(crop_size=96, **cfg))  # only the centre cell (120, 120) fits
    assert len(big) == big.site_counts["kept"].sum() == len(big.site_counts)
    assert (big.site_counts["border_dropped"] == 8).all()
    assert np.allclose(big.centres, 120)


def test_cells_by_segmentation_find_placed_nuclei(jump) -> None:
    cells = JumpCellsDataset(JumpCellsConfig(root=str(jump.root), path_map=jump.path_map, crop_size=48,
                                             plates=["1086292853"], min_area=60))
    counts = cells.site_counts
    assert len(counts) == sum(jump.sites["Metadata_Plate"] == "1086292853")
    assert (counts["found"] == counts["border_dropped"] + counts["kept"]).all()
    placed = jump.cells[jump.cells["Metadata_Plate"] == "1086292853"]
    meta = cells.metadata
    distances = []
    for row in placed.itertuples(index=False):
        here = meta[(meta["Metadata_Well"] == row.Metadata_Well) & (meta["Metadata_Site"] == row.Metadata_Site)]
        d = np.hypot(here["Location_Center_X"] - row.x, here["Location_Center_Y"] - row.y)
        distances.append(d.min() if len(d) else np.inf)
    distances = np.asarray(distances)
    assert np.median(distances) < 3.0 and (distances < 8).mean() > 0.9, np.sort(distances)[-10:]
    u2os = counts[counts["Metadata_Well"] == "O23"]
    assert (u2os["found"] > 0).all()  # real BBBC022 nuclei
    crop = cells[0].image
    assert crop.shape == (5, 48, 48) and float(crop.max()) > 0


def test_bad_well_name_is_reported(jump, tmp_path) -> None:
    table = pd.read_csv(jump.root / "workspace/load_data_csv/2021_05_31_Batch1/1086292853/load_data.csv", dtype=str)
    table.loc[0, "Metadata_Well"] = "Z99"
    table.to_csv(tmp_path / "load_data.csv", index=False)
    with pytest.raises(DataError, match="Z99"):
        JumpSitesDataset(JumpSitesConfig(root=str(jump.root), load_data=[str(tmp_path / "load_data.csv")],
                                         illum=False, path_map=jump.path_map))


def test_unknown_name_hint_names_this_distribution() -> None:
    from cellssl.plugins.registry import Registry

    for kind, name in (("dataset", "jump_sites"), ("dataset", "jump_cells"), ("evaluator", "jump_map")):
        assert "'cellssl-jumpcp'" in Registry(kind).unknown_name_message(name)
