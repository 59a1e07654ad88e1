"""A miniature JUMP source built from real pixels of ``../shared/data`` (written at test time, never committed).

Layout (as cpg0016 publishes a source; batch ``2021_05_31_Batch1``, source ``source_9``)::

    <root>/images/<batch>/images/<plate>/<plate>_<well>_s<site>_<Ch>.tiff     16-bit, one file per channel
    <root>/images/<batch>/illum/<plate>/<plate>_Illum<Ch>.npy                  illumination functions
    <root>/workspace/load_data_csv/<batch>/<plate>/load_data.csv, load_data_with_illum.csv (Parquet for plate 2)
    <root>/workspace/metadata/platemaps/<batch>/barcode_platemap.csv, platemap/<name>.txt
    <root>/metadata/plate.csv.gz, well.csv.gz, compound.csv.gz, perturbation_control.csv   (JUMP tables)
    <root>/locations/<plate>_nuclei.csv                                        placed nucleus centres

Plates: ``1086292853`` (384 wells) and ``0042`` (1536 wells: wells such as ``AF48``), numeric-looking names.
``PathName_Orig*`` values are absolute paths of another machine (:data:`CLUSTER`); ``PathName_Illum*`` are
``s3://`` URLs (:data:`S3`): :func:`path_map` rewrites both.

Sites (240 x 240): each is a mosaic of 9 real BBBC021 MCF-7 crops (68 px) of one field of view, placed on a
3 x 3 grid with centres at 40, 120, 200 px (:data:`CENTRES`); the background is the median of the crops'
edge pixels. The BBBC021 subset has one DMSO well (24 fields) and three protein-synthesis wells (B03: 12,
B04: 12, B05: 2 fields); each becomes several replicate wells over the two plates (:data:`DESIGN`): DMSO
(``JCP2022_033924``, negcon) in 4 wells x 3 sites per plate, B03 -> ``JCP2022_900001`` and B04 ->
``JCP2022_900002`` in 2 wells x 3 sites per plate, B05 -> ``JCP2022_900003`` in 1 well x 1 site per plate.
Plate 1 also has well ``O23`` (``JCP2022_900004``, no replicate): three 240 x 240 windows of the real
BBBC022 U2OS Cell Painting field.

Channels: BBBC021 has DAPI, Tubulin, Actin: DNA = DAPI, ER = Tubulin, AGP = Actin (phalloidin is the AGP
stain), RNA = (DAPI + Actin) // 2, Mito = (Tubulin + Actin) // 2. BBBC022 has DNA, ER, RNA: AGP =
(ER + RNA) // 2, Mito = (DNA + RNA) // 2. The stored pixels are ``round(true * illum)`` (clipped to 16 bits),
so dividing by the illumination function recovers the real pixels up to rounding.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

BATCH = "2021_05_31_Batch1"
SOURCE = "source_9"
PLATES = ("1086292853", "0042")
CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
SITE = 240
CROP = 68
CENTRES = (40, 120, 200)
CLUSTER = "/home/ubuntu/bucket/projects/2021_jump/source_9/"
S3 = "s3://cellpainting-gallery/cpg0016-jump/source_9/"
NEGCON = "JCP2022_033924"
# source well of BBBC021 -> (JCP2022 id, moa, wells per plate, sites per well), with the wells of each plate
DESIGN = {
    "B02": (NEGCON, "DMSO", (["A01", "C05", "H12", "P24"], ["A01", "Z48", "AA10", "AF48"]), 3),
    "B03": ("JCP2022_900001", "protein synthesis", (["B03", "D07"], ["AB03", "AC07"]), 3),
    "B04": ("JCP2022_900002", "protein synthesis", (["E10", "K20"], ["AD10", "AE20"]), 3),
    "B05": ("JCP2022_900003", "protein synthesis", (["M01"], ["F33"]), 1),
}
BBBC022_WELL = ("O23", "JCP2022_900004", "U2OS field")


def path_map(root: Path) -> dict[str, str]:
    """The ``data.path_map`` that points the fixture's cluster paths and S3 URLs at ``root``."""
    return {CLUSTER: f"{root}/", S3: f"{root}/"}


def illumination(plate_index: int, channel_index: int) -> np.ndarray:
    """A smooth positive illumination function (240 x 240 float32, values about 0.55 .. 1.25)."""
    y, x = np.mgrid[0:SITE, 0:SITE].astype(np.float64)
    cy, cx = 100 + 15 * plate_index, 130 - 10 * channel_index
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / (2 * 110.0**2)
    return (0.55 + 0.7 * np.exp(-r2) * (1 + 0.05 * channel_index)).astype(np.float32)


def five_from_bbbc021(crop: np.ndarray) -> np.ndarray:
    dapi, tub, act = (crop[i].astype(np.uint32) for i in range(3))
    return np.stack([dapi, tub, (dapi + act) // 2, act, (tub + act) // 2]).astype(np.uint16)


def five_from_bbbc022(planes: np.ndarray) -> np.ndarray:
    dna, er, rna = (planes[i].astype(np.uint32) for i in range(3))
    return np.stack([dna, er, rna, (er + rna) // 2, (dna + rna) // 2]).astype(np.uint16)


@dataclass
class JumpFixture:
    """What the generator wrote.

    :ivar root: the source folder (``data.root``). :ivar sites: one row per site: ``Metadata_Plate``,
        ``Metadata_Well``, ``Metadata_Site``, ``kind`` (``mosaic`` / ``bbbc022``), ``JCP2022``, ``moa``, ``fov``.
    :ivar cells: one row per placed crop: plate, well, site, ``x``, ``y`` (centre), ``path`` (BBBC021 crop).
    :ivar true: ``{(plate, well, site): (5, 240, 240) uint16}`` the pixels before illumination.
    """

    root: Path
    sites: pd.DataFrame
    cells: pd.DataFrame
    true: dict[tuple[str, str, str], np.ndarray]

    @property
    def path_map(self) -> dict[str, str]:
        return path_map(self.root)


def _mosaic(crops: list[np.ndarray]) -> np.ndarray:
    planes = [five_from_bbbc021(c) for c in crops]
    edges = np.concatenate([np.concatenate([p[:, 0], p[:, -1], p[:, :, 0], p[:, :, -1]], axis=1) for p in planes],
                           axis=1)
    site = np.repeat(np.median(edges, axis=1).astype(np.uint16)[:, None, None], SITE, 1).repeat(SITE, 2)
    for k, crop in enumerate(planes):
        cy, cx = CENTRES[k // 3], CENTRES[k % 3]
        site[:, cy - CROP // 2 : cy + CROP // 2, cx - CROP // 2 : cx + CROP // 2] = crop
    return site


def build_jump_source(data: Path, out: Path) -> JumpFixture:
    """Write the miniature source into ``out`` from ``data`` (``../shared/data``) and describe it."""
    bbbc021 = data / "bbbc021-crops"
    crops = pd.read_csv(bbbc021 / "metadata.csv")
    root = out / SOURCE
    site_rows, cell_rows, true = [], [], {}
    for well, (jcp, moa, plate_wells, n_sites) in DESIGN.items():
        fovs = sorted(crops.loc[crops["well"] == well, "fov_id"].unique())
        slots = [(p, w, s) for p in range(2) for w in plate_wells[p] for s in range(1, n_sites + 1)]
        assert len(slots) == len(fovs), (well, len(slots), len(fovs))
        for (p, w, s), fov in zip(slots, fovs):
            chosen = crops[crops["fov_id"] == fov].sort_values("path").head(9)
            pixels = [tifffile.imread(bbbc021 / path) for path in chosen["path"]]
            key = (PLATES[p], w, str(s))
            true[key] = _mosaic(pixels)
            site_rows.append((*key, "mosaic", jcp, moa, int(fov)))
            for k, path in enumerate(chosen["path"]):
                cell_rows.append((*key, CENTRES[k % 3], CENTRES[k // 3], path))
    field = tifffile.imread(data / "fields-of-view" / "bbbc022" / "IXMtest_A02_s9.tif")
    for s, x0 in enumerate((0, 227, 455), start=1):
        key = (PLATES[0], BBBC022_WELL[0], str(s))
        true[key] = five_from_bbbc022(field[:, 77 : 77 + SITE, x0 : x0 + SITE])
        site_rows.append((*key, "bbbc022", BBBC022_WELL[1], BBBC022_WELL[2], -1))
    sites = pd.DataFrame(site_rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site", "kind", "JCP2022",
                                             "moa", "fov"])
    cells = pd.DataFrame(cell_rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site", "x", "y", "path"])
    _write_images(root, sites, true)
    _write_load_data(root, sites)
    _write_platemaps(root, sites)
    _write_jump_tables(root, sites)
    locations = root / "locations"
    locations.mkdir(parents=True)
    for plate, group in cells.groupby("Metadata_Plate"):
        group.rename(columns={"x": "Location_Center_X", "y": "Location_Center_Y"}).drop(columns="path").to_csv(
            locations / f"{plate}_nuclei.csv", index=False)
    return JumpFixture(root, sites, cells, true)


def _image_dir(root: Path, plate: str) -> Path:
    return root / "images" / BATCH / "images" / plate


def _write_images(root: Path, sites: pd.DataFrame, true: dict) -> None:
    for p, plate in enumerate(PLATES):
        illum_dir = root / "images" / BATCH / "illum" / plate
        illum_dir.mkdir(parents=True)
        for c, channel in enumerate(CHANNELS):
            np.save(illum_dir / f"{plate}_Illum{channel}.npy", illumination(p, c))
        _image_dir(root, plate).mkdir(parents=True)
    for row in sites.itertuples(index=False):
        p = PLATES.index(row.Metadata_Plate)
        pixels = true[(row.Metadata_Plate, row.Metadata_Well, row.Metadata_Site)]
        for c, channel in enumerate(CHANNELS):
            stored = np.clip(np.round(pixels[c] * illumination(p, c).astype(np.float64)), 0, 65535).astype(np.uint16)
            name = f"{row.Metadata_Plate}_{row.Metadata_Well}_s{row.Metadata_Site}_{channel}.tiff"
            tifffile.imwrite(_image_dir(root, row.Metadata_Plate) / name, stored)


def _write_load_data(root: Path, sites: pd.DataFrame) -> None:
    for p, plate in enumerate(PLATES):
        rows = []
        for row in sites[sites["Metadata_Plate"] == plate].itertuples(index=False):
            record: dict[str, str] = {}
            for channel in CHANNELS:
                record[f"FileName_Orig{channel}"] = f"{plate}_{row.Metadata_Well}_s{row.Metadata_Site}_{channel}.tiff"
                record[f"PathName_Orig{channel}"] = f"{CLUSTER}images/{BATCH}/images/{plate}"
            record.update(Metadata_Source=SOURCE, Metadata_Batch=BATCH, Metadata_Plate=plate,
                          Metadata_Well=row.Metadata_Well, Metadata_Site=row.Metadata_Site)
            rows.append(record)
        plain = pd.DataFrame(rows)
        with_illum = plain.copy()
        for channel in CHANNELS:
            with_illum[f"FileName_Illum{channel}"] = f"{plate}_Illum{channel}.npy"
            with_illum[f"PathName_Illum{channel}"] = f"{S3}images/{BATCH}/illum/{plate}"
        folder = root / "workspace" / "load_data_csv" / BATCH / plate
        folder.mkdir(parents=True)
        plain.to_csv(folder / "load_data.csv", index=False)
        if p == 0:
            with_illum.to_csv(folder / "load_data_with_illum.csv", index=False)
        else:  # Parquet, with the site as an integer column (as some releases store it)
            with_illum.assign(Metadata_Site=with_illum["Metadata_Site"].astype(int)).to_parquet(
                folder / "load_data_with_illum.parquet", index=False)


def _write_platemaps(root: Path, sites: pd.DataFrame) -> None:
    folder = root / "workspace" / "metadata" / "platemaps" / BATCH
    (folder / "platemap").mkdir(parents=True)
    names = {plate: f"FIXTURE_MAP_{i + 1}" for i, plate in enumerate(PLATES)}
    pd.DataFrame({"Assay_Plate_Barcode": list(names), "Plate_Map_Name": list(names.values())}).to_csv(
        folder / "barcode_platemap.csv", index=False)
    wells = sites.drop_duplicates(["Metadata_Plate", "Metadata_Well"])
    for plate, name in names.items():
        rows = wells[wells["Metadata_Plate"] == plate]
        # plate maps may drop the zero of the column (A1 for A01)
        positions = [w[:-2] + str(int(w[-2:])) for w in rows["Metadata_Well"]]
        pd.DataFrame({"plate_map_name": name, "well_position": positions, "jcp2022": rows["JCP2022"].to_numpy(),
                      "moa": rows["moa"].to_numpy()}).to_csv(folder / "platemap" / f"{name}.txt", sep="\t",
                                                             index=False)


def _write_csv_gz(frame: pd.DataFrame, path: Path) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        frame.to_csv(handle, index=False)


def _write_jump_tables(root: Path, sites: pd.DataFrame) -> None:
    folder = root / "metadata"
    folder.mkdir(parents=True)
    _write_csv_gz(pd.DataFrame({"Metadata_Source": SOURCE, "Metadata_Batch": BATCH, "Metadata_Plate": list(PLATES),
                                "Metadata_PlateType": "COMPOUND"}), folder / "plate.csv.gz")
    wells = sites.drop_duplicates(["Metadata_Plate", "Metadata_Well"])
    _write_csv_gz(pd.DataFrame({"Metadata_Source": SOURCE, "Metadata_Plate": wells["Metadata_Plate"],
                                "Metadata_Well": wells["Metadata_Well"], "Metadata_JCP2022": wells["JCP2022"]}),
                  folder / "well.csv.gz")
    ids = sorted(set(sites["JCP2022"]))
    _write_csv_gz(pd.DataFrame({"Metadata_JCP2022": ids, "Metadata_InChIKey": [f"FIXTURE-KEY-{i}" for i in ids],
                                "Metadata_InChI": "", "Metadata_SMILES": ""}), folder / "compound.csv.gz")
    pd.DataFrame({"Metadata_JCP2022": ["JCP2022_999999", NEGCON, "JCP2022_037716"],
                  "Metadata_pert_type": ["empty", "negcon", "poscon"], "Metadata_Name": ["Empty", "DMSO", "AMG900"],
                  "Metadata_modality": ["any", "compound", "compound"]}).to_csv(
        folder / "perturbation_control.csv", index=False)
