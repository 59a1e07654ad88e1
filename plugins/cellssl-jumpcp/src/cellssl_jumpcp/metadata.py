"""Perturbation metadata of JUMP wells: plate maps or the JUMP metadata tables, joined onto the sites.

Two sources, as JUMP publishes them (both read with every column as text):

- **JUMP metadata tables** (jump-cellpainting/datasets ``metadata/``): ``well.csv.gz`` gives
  ``Metadata_JCP2022`` per (``Metadata_Plate``, ``Metadata_Well``); ``plate.csv.gz`` adds
  ``Metadata_PlateType``; ``compound.csv.gz`` / ``orf.csv.gz`` / ``crispr.csv.gz`` add the perturbation's
  fields (InChIKey, SMILES, gene symbol ...); ``perturbation_control.csv`` gives ``Metadata_pert_type``
  (``negcon`` / ``poscon`` / ``empty``) and ``Metadata_Name``.
- **plate maps** (``workspace/metadata/platemaps/<batch>/``): ``barcode_platemap.csv`` maps
  ``Assay_Plate_Barcode`` to ``Plate_Map_Name``; ``platemap/<Plate_Map_Name>.txt`` (tab-separated) has
  ``well_position`` and the perturbation columns, which get the ``Metadata_`` prefix (``jcp2022`` ->
  ``Metadata_JCP2022``, pycytominer's convention).

Wells whose perturbation is not a listed control get ``Metadata_pert_type = trt``; ids in
``metadata.negcon`` (DMSO, JCP2022_033924, by default) are ``negcon`` when no control table says otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cellssl.api import DataError
from cellssl_jumpcp.config import JumpMetadataConfig
from cellssl_jumpcp.loaddata import read_text_table
from cellssl_jumpcp.wells import canonical_well

logger = logging.getLogger(__name__)

KEYS = ["Metadata_Plate", "Metadata_Well"]
PERTURBATION = "Metadata_JCP2022"
PERT_TYPE = "Metadata_pert_type"
PERTURBATION_TABLES = ("compound", "orf", "crispr")
_TABLE_SUFFIXES = (".csv.gz", ".csv", ".parquet")


def canonical_wells(values: pd.Series, source: str) -> pd.Series:
    """``values`` spelled as :func:`~cellssl_jumpcp.wells.canonical_well`.

    :raises DataError: naming ``source`` and the first bad value.
    """
    try:
        return values.map(canonical_well)
    except ValueError as exc:
        raise DataError(f"{source}: {exc}") from None


def _optional_table(folder: Path, stem: str) -> Path | None:
    for suffix in _TABLE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


def _prefixed(frame: pd.DataFrame) -> pd.DataFrame:
    renames = {"jcp2022": PERTURBATION, "JCP2022": PERTURBATION}
    return frame.rename(columns={c: renames.get(c, c if c.startswith("Metadata_") else f"Metadata_{c}")
                                 for c in frame.columns})


def jump_tables_annotation(folder: Path, plates: list[str]) -> pd.DataFrame:
    """One row per (plate, well) of ``plates`` from the JUMP metadata tables in ``folder``.

    :raises DataError: when ``well.csv.gz`` is missing or lacks its columns.
    """
    well_path = _optional_table(folder, "well")
    if well_path is None:
        raise DataError(f"JUMP metadata table well.csv.gz not found in {folder} (config key 'data.metadata.tables'); "
                        "it comes from github.com/jump-cellpainting/datasets, folder metadata/")
    wells = read_text_table(well_path, "JUMP well table")
    missing = [c for c in [*KEYS, PERTURBATION] if c not in wells.columns]
    if missing:
        raise DataError(f"JUMP well table {well_path} lacks the columns {missing}")
    wells = wells[wells["Metadata_Plate"].isin(plates)].drop(columns=["Metadata_Source"], errors="ignore").copy()
    wells["Metadata_Well"] = canonical_wells(wells["Metadata_Well"], str(well_path))
    plate_path = _optional_table(folder, "plate")
    if plate_path is not None:
        plate = read_text_table(plate_path, "JUMP plate table")
        extra = [c for c in plate.columns if c not in ("Metadata_Source", "Metadata_Batch", "Metadata_Plate")]
        if "Metadata_Plate" in plate.columns and extra:
            wells = wells.merge(plate[["Metadata_Plate", *extra]].drop_duplicates("Metadata_Plate"),
                                on="Metadata_Plate", how="left")
    for stem in PERTURBATION_TABLES:
        path = _optional_table(folder, stem)
        if path is None:
            continue
        table = read_text_table(path, f"JUMP {stem} table")
        if PERTURBATION not in table.columns:
            raise DataError(f"JUMP {stem} table {path} lacks the column {PERTURBATION}")
        table = table[table[PERTURBATION].isin(set(wells[PERTURBATION].dropna()))].drop_duplicates(PERTURBATION)
        shared = [c for c in table.columns if c != PERTURBATION and c in wells.columns]
        wells = wells.merge(table, on=PERTURBATION, how="left", suffixes=("", "__new"))
        for column in shared:  # e.g. Metadata_Symbol of orf and crispr: fill, do not duplicate
            wells[column] = wells[column].combine_first(wells.pop(f"{column}__new"))
    control_path = _optional_table(folder, "perturbation_control")
    if control_path is not None:
        controls = read_text_table(control_path, "JUMP perturbation_control table")
        keep = [c for c in (PERTURBATION, PERT_TYPE, "Metadata_Name") if c in controls.columns]
        if PERTURBATION not in keep or PERT_TYPE not in keep:
            raise DataError(f"{control_path} lacks {PERTURBATION} or {PERT_TYPE}")
        wells = wells.drop(columns=[c for c in keep[1:] if c in wells.columns]).merge(
            controls[keep].drop_duplicates(PERTURBATION), on=PERTURBATION, how="left")
    return wells


def platemap_annotation(folder: Path, batches: dict[str, str]) -> pd.DataFrame:
    """One row per (plate, well) from the plate maps of each plate's batch (``batches``: plate -> batch).

    :raises DataError: naming the file when a barcode_platemap / platemap file or a plate's row is missing.
    """
    frames = []
    barcodes: dict[str, pd.DataFrame] = {}
    for plate, batch in sorted(batches.items()):
        if batch not in barcodes:
            path = folder / batch / "barcode_platemap.csv"
            table = read_text_table(path, "barcode_platemap.csv (config key 'data.metadata.platemaps')")
            if not {"Assay_Plate_Barcode", "Plate_Map_Name"} <= set(table.columns):
                raise DataError(f"{path} needs the columns Assay_Plate_Barcode and Plate_Map_Name")
            barcodes[batch] = table
        rows = barcodes[batch][barcodes[batch]["Assay_Plate_Barcode"] == plate]
        if rows.empty:
            raise DataError(f"plate '{plate}' (batch '{batch}') is not listed in "
                            f"{folder / batch / 'barcode_platemap.csv'}")
        name = rows["Plate_Map_Name"].iloc[0]
        path = folder / batch / "platemap" / f"{name}.txt"
        platemap = read_text_table(path, f"plate map of plate '{plate}'")
        if "well_position" not in platemap.columns:
            raise DataError(f"plate map {path} has no 'well_position' column; columns: {list(platemap.columns)}")
        platemap = _prefixed(platemap.drop(columns=["plate_map_name"], errors="ignore"))
        platemap = platemap.rename(columns={"Metadata_well_position": "Metadata_Well"})
        platemap["Metadata_Well"] = canonical_wells(platemap["Metadata_Well"], str(path))
        platemap.insert(0, "Metadata_Plate", plate)
        platemap["Metadata_Plate_Map_Name"] = name
        frames.append(platemap)
    return pd.concat(frames, ignore_index=True)


def annotate(sites: pd.DataFrame, config: JumpMetadataConfig, root: Path) -> pd.DataFrame:
    """``sites`` with the perturbation columns of its (plate, well) added (left join; row order kept).

    :raises DataError: when a source table is missing or, with ``config.require``, a well has no perturbation.
    """
    if not config.tables and not config.platemaps:
        return sites
    plates = sorted(set(sites["Metadata_Plate"]))
    annotation = None
    if config.platemaps:
        batch = sites["Metadata_Batch"] if "Metadata_Batch" in sites.columns else pd.Series("", index=sites.index)
        batches = dict(zip(sites["Metadata_Plate"], batch.fillna("")))
        annotation = platemap_annotation(_under(root, config.platemaps), batches)
    if config.tables:
        tables = jump_tables_annotation(_under(root, config.tables), plates)
        if annotation is None:
            annotation = tables
        else:
            extra = [c for c in tables.columns if c not in annotation.columns or c in KEYS]
            annotation = annotation.merge(tables[extra], on=KEYS, how="left")
    assert annotation is not None
    duplicated = annotation.duplicated(KEYS)
    if duplicated.any():
        first = annotation.loc[duplicated, KEYS].iloc[0].tolist()
        raise DataError(f"the perturbation metadata lists plate/well {first} more than once")
    drop = [c for c in annotation.columns if c in sites.columns and c not in KEYS]
    merged = sites.merge(annotation.drop(columns=drop), on=KEYS, how="left")
    if PERTURBATION in merged.columns:
        pert = merged[PERTURBATION]
        if PERT_TYPE not in merged.columns:
            merged[PERT_TYPE] = pd.Series(np.nan, index=merged.index, dtype=object)
        negcon = pert.isin(config.negcon) & merged[PERT_TYPE].isna()
        merged.loc[negcon, PERT_TYPE] = "negcon"
        merged.loc[merged[PERT_TYPE].isna() & pert.notna(), PERT_TYPE] = "trt"
        unknown = pert.isna()
        if unknown.any():
            first = merged.loc[unknown, KEYS].iloc[0].tolist()
            message = (f"{int(unknown.sum())} site(s) have no perturbation in the metadata (first: plate/well "
                       f"{first}); check data.metadata")
            if config.require:
                raise DataError(message)
            logger.warning("%s", message)
    return merged


def _under(root: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else root / candidate
