"""The sites of a JUMP source: load_data tables -> one row per site, its files, and illumination-corrected pixels.

:class:`JumpSource` is what both JUMP datasets are built on. It reads the load_data tables of ``root``
(:mod:`cellssl_jumpcp.loaddata`), keeps the batches / plates asked for, joins the perturbation metadata
(:mod:`cellssl_jumpcp.metadata`), sorts the sites by plate, well and site, and reads a site as float32
``(C, H, W)``: each 16-bit channel file scaled to ``[0, 1]`` by the bit depth, then divided by its
illumination function (``corrected = orig / illum``, CellProfiler's ``CorrectIlluminationApply`` in
``Divide`` mode) when ``illum`` is on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from cellssl.api import DataError, parse_bit_depth, scale_to_unit
from cellssl_jumpcp.config import JumpSitesConfig
from cellssl_jumpcp.loaddata import (
    channel_name,
    file_columns,
    find_tables,
    join_path,
    read_load_data,
    table_channels,
)
from cellssl_jumpcp.metadata import annotate, canonical_wells

logger = logging.getLogger(__name__)

ILLUM_CACHE_PLATES = 4


def _site_order(value: str) -> tuple[int, str]:
    return (int(value), "") if str(value).isdigit() else (1 << 30, str(value))


class JumpSource:
    """The sites of ``config``'s load_data tables.

    :ivar sites: one row per site: every ``Metadata_*`` column (text) of the load_data table and of the
        perturbation metadata, ``table_file`` and ``table_row``; index ``0..N-1``.
    :ivar jump_channels: JUMP channel names read (``DNA``, ...); :ivar channel_names: their vocabulary names.
    :raises DataError: for missing tables, columns, files or plates (messages name the table row and file).
    """

    def __init__(self, config: JumpSitesConfig) -> None:
        self.config = config
        self.root = Path(config.root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"data.root {self.root} is not a folder; point it at the JUMP source folder")
        self.bit_depth = parse_bit_depth(config.bit_depth)
        stem = "load_data_with_illum" if config.illum else "load_data"
        tables = find_tables(self.root, config.load_data, stem, f"{stem} tables")
        frame = read_load_data(tables)
        frame = self._filter(frame)
        frame["Metadata_Well"] = canonical_wells(frame["Metadata_Well"], "load_data column Metadata_Well")
        self.jump_channels = table_channels(frame, config.channels)
        self.channel_names = tuple(channel_name(c) for c in self.jump_channels)
        order = sorted(range(len(frame)), key=lambda i: (str(frame["Metadata_Plate"].iat[i]),
                                                         str(frame["Metadata_Well"].iat[i]),
                                                         _site_order(frame["Metadata_Site"].iat[i])))
        frame = frame.iloc[order].reset_index(drop=True)
        if config.limit is not None:
            frame = frame.iloc[: config.limit].reset_index(drop=True)
        self._files = file_columns(frame, "Orig", self.jump_channels, self.root, config.path_map, config.rebase)
        self._illum = self._illum_files(frame) if config.illum else None
        metadata_columns = [c for c in frame.columns if c.startswith("Metadata_")]
        self.sites = annotate(frame[[*metadata_columns, "table_file", "table_row"]], config.metadata, self.root)
        if config.check_files == "exists":
            self._check_exist()
        self._illum_cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        logger.info("JUMP source %s: %d sites of %d plates, channels %s", self.root, len(self.sites),
                    self.sites["Metadata_Plate"].nunique(), list(self.jump_channels))

    # ----------------------------------------------------------------------------------------- building
    def _filter(self, frame: pd.DataFrame) -> pd.DataFrame:
        cfg = self.config
        mask = np.ones(len(frame), dtype=bool)
        if cfg.batches:
            if "Metadata_Batch" not in frame.columns:
                raise DataError("data.batches is set but the load_data tables have no Metadata_Batch column")
            mask &= frame["Metadata_Batch"].isin([str(b) for b in cfg.batches]).to_numpy()
        if cfg.plates:
            wanted = [str(p) for p in cfg.plates]
            present = set(frame["Metadata_Plate"])
            absent = [p for p in wanted if p not in present]
            if absent:
                raise DataError(f"plates {absent} (data.plates) are not in the load_data tables; plates there: "
                                f"{sorted(present)[:20]}")
            mask &= frame["Metadata_Plate"].isin(wanted).to_numpy()
        if not mask.any():
            raise DataError(f"no site of the load_data tables under {self.root} is in data.batches / data.plates")
        return frame.loc[mask].reset_index(drop=True)

    def _illum_files(self, frame: pd.DataFrame) -> list[tuple[Path, ...]]:
        cfg = self.config
        has_columns = all(f"FileName_Illum{c}" in frame.columns and f"PathName_Illum{c}" in frame.columns
                          for c in self.jump_channels)
        if has_columns and not cfg.illum_dir:
            return file_columns(frame, "Illum", self.jump_channels, self.root, cfg.path_map, cfg.rebase)
        pattern = cfg.illum_dir or "images/{batch}/illum/{plate}"
        out = []
        for plate, batch in zip(frame["Metadata_Plate"], frame.get("Metadata_Batch", pd.Series([""] * len(frame)))):
            folder = pattern.replace("{plate}", str(plate)).replace("{batch}", str(batch))
            out.append(tuple(join_path(folder, f"{plate}_Illum{c}.npy", self.root, cfg.path_map)
                             for c in self.jump_channels))
        return out

    def _row(self, index: int) -> str:
        site = self.sites.iloc[index]
        return f"row {site['table_row']} of {site['table_file']}"

    def _check_exist(self) -> None:
        missing = [(i, p) for i, paths in enumerate(self._files) for p in paths if not p.is_file()]
        what = "image"
        if not missing and self._illum is not None:
            missing = [(i, p) for i, paths in enumerate(self._illum) for p in paths if not p.is_file()]
            what = "illumination"
        if missing:
            shown = "; ".join(f"{self._row(i)}: {p}" for i, p in missing[:3])
            hint = ("rewrite the PathName prefix with data.path_map (e.g. {'/home/ubuntu/bucket/projects/': "
                    "'/data/'})" if any(str(p).startswith(("/", "s3:")) for _, p in missing[:3]) else "check data.root")
            extra = "; or set data.illum: false to read uncorrected sites" if what == "illumination" else ""
            raise DataError(f"{len(missing)} {what} file(s) not found: {shown}. {hint}{extra}")

    # ------------------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.sites)

    def files(self, index: int) -> tuple[Path, ...]:
        """The channel files of site ``index`` (in :attr:`jump_channels` order)."""
        return self._files[index]

    def illum_files(self, index: int) -> tuple[Path, ...] | None:
        """The illumination functions of site ``index``, or ``None`` when ``illum`` is off."""
        return None if self._illum is None else self._illum[index]

    def _illum_array(self, path: Path, shape: tuple[int, ...], row: str) -> np.ndarray:
        cached = self._illum_cache.get(path)
        if cached is None:
            try:
                cached = np.load(path, allow_pickle=False).astype(np.float32)
            except (OSError, ValueError) as exc:
                raise DataError(f"{row}: illumination function {path} is unreadable: {exc}") from exc
            if cached.ndim != 2 or not np.isfinite(cached).all() or cached.min() <= 0:
                raise DataError(f"{row}: illumination function {path} must be a 2-D array of positive finite values "
                                f"(shape {cached.shape}, min {np.nanmin(cached) if cached.size else 'n/a'})")
            self._illum_cache[path] = cached
            while len(self._illum_cache) > ILLUM_CACHE_PLATES * len(self.jump_channels):
                self._illum_cache.popitem(last=False)
        if cached.shape != shape:
            raise DataError(f"{row}: illumination function {path} has shape {cached.shape} but the image is {shape}")
        return cached

    def read_site(self, index: int) -> np.ndarray:
        """Site ``index`` as float32 ``(C, H, W)``: scaled by the bit depth, divided by the illumination functions.

        :raises DataError: naming the table row and file for a missing / unreadable / multi-page file, channels
            of different sizes, values outside the bit depth, or an illumination function that does not fit.
        """
        import tifffile

        row = self._row(index)
        planes = []
        for path in self._files[index]:
            try:
                array = tifffile.imread(path)
            except (OSError, ValueError, tifffile.TiffFileError) as exc:
                raise DataError(f"{row}: cannot read {path}: {exc}") from exc
            array = np.squeeze(array)
            if array.ndim != 2:
                raise DataError(f"{row}: {path} holds an array of shape {array.shape}; JUMP sites have one 2-D "
                                "plane per channel file")
            if planes and array.shape != planes[0].shape:
                raise DataError(f"{row}: {path} is {array.shape} but the site's first channel is {planes[0].shape}")
            planes.append(scale_to_unit(array, self.bit_depth, source=f"{row}: {path}"))
        image = np.stack(planes)
        illum = self.illum_files(index)
        if illum is not None:
            for c, path in enumerate(illum):
                image[c] /= self._illum_array(path, image.shape[1:], row)
        return image

    def site_shape(self, index: int = 0) -> tuple[int, int]:
        """``(H, W)`` of site ``index`` from its first file's header (no pixel decoding)."""
        import tifffile

        path = self._files[index][0]
        try:
            with tifffile.TiffFile(path) as tif:
                shape = tuple(s for s in tif.pages[0].shape if s > 1)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise DataError(f"{self._row(index)}: cannot read {path}: {exc}") from exc
        if len(shape) != 2:
            raise DataError(f"{self._row(index)}: {path} has shape {shape}; expected one 2-D plane")
        return int(shape[0]), int(shape[1])
