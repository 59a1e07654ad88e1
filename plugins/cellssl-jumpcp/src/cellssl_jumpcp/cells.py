"""The ``jump_cells`` dataset: single-cell crops of JUMP sites, centred on nuclei.

Nucleus centres come from ``locations`` tables (CellProfiler's ``Location_Center_X/Y`` per site; matched
on ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``) or, when none are given, from a segmentation
of the illumination-corrected DNA channel (:func:`cellssl_jumpcp.nuclei.find_nuclei`; every site is
decoded once when the dataset is built, or not at all when ``nuclei_cache`` holds its centres:
:mod:`cellssl_jumpcp.nuclei_cache`).

A crop of side ``s`` around a centre ``(y, x)`` is the window ``[round(y) - s // 2, round(y) - s // 2 + s)``
(and the same in x) of the corrected site. Cells whose window leaves the site are dropped (cut by the
border). :attr:`JumpCellsDataset.site_counts` reports, per site, the nuclei found, dropped at the border
and kept; the totals are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from cellssl.api import CellDataset, DataError
from cellssl_jumpcp.config import JumpCellsConfig
from cellssl_jumpcp.loaddata import find_tables, read_text_table
from cellssl_jumpcp.metadata import canonical_wells
from cellssl_jumpcp.nuclei_cache import NucleiCache
from cellssl_jumpcp.sites import SiteCache
from cellssl_jumpcp.source import JumpSource

logger = logging.getLogger(__name__)

SITE_KEYS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]


def crop_window(centre: float, size: int) -> int:
    """First pixel of the ``size``-long window centred on ``centre`` (``round(centre) - size // 2``)."""
    return int(np.floor(centre + 0.5)) - size // 2


def inside(centres: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """``(N,)`` bool: the crops of ``centres`` (``(N, 2)`` y, x) lie entirely inside a site of ``shape``."""
    if len(centres) == 0:
        return np.zeros(0, dtype=bool)
    tops = np.floor(centres + 0.5).astype(np.int64) - size // 2
    return (tops >= 0).all(axis=1) & (tops[:, 0] + size <= shape[0]) & (tops[:, 1] + size <= shape[1])


def read_locations(tables: Iterable, x_column: str, y_column: str) -> dict[tuple[str, str, str], np.ndarray]:
    """Centres ``(N, 2)`` (y, x) per ``(plate, well, site)`` from CellProfiler-style location tables.

    :raises DataError: naming the table when a column is missing or a coordinate is not a number.
    """
    out: dict[tuple[str, str, str], list[np.ndarray]] = {}
    for path in tables:
        frame = read_text_table(path, "nucleus location table")
        missing = [c for c in [*SITE_KEYS, x_column, y_column] if c not in frame.columns]
        if missing:
            raise DataError(f"nucleus location table {path} lacks the columns {missing} (data.locations, "
                            f"data.x_column, data.y_column); columns: {list(frame.columns)[:20]}")
        try:
            xy = frame[[y_column, x_column]].astype(float).to_numpy()
        except ValueError as exc:
            raise DataError(f"nucleus location table {path}: {x_column} / {y_column} must be numbers ({exc})") from None
        wells = canonical_wells(frame["Metadata_Well"], str(path))
        keys = pd.MultiIndex.from_arrays([frame["Metadata_Plate"], wells, frame["Metadata_Site"]])
        for key, rows in pd.Series(np.arange(len(frame))).groupby(keys.to_flat_index()):
            out.setdefault(tuple(map(str, key)), []).append(xy[rows.to_numpy()])
    return {key: np.concatenate(parts) for key, parts in out.items()}


class JumpCellsDataset(CellDataset):
    """Crops centred on nuclei; see the module docstring.

    :ivar source: the :class:`~cellssl_jumpcp.source.JumpSource`.
    :ivar site_counts: per site: ``SITE_KEYS``, ``found``, ``border_dropped``, ``kept``.
    :ivar centres: ``(N, 2)`` float centres (y, x) of the samples; :ivar site_index: their site rows.
    :raises DataError: see :class:`JumpSource`; a segment channel that is not read; no cell at all.
    """

    def __init__(self, config: JumpCellsConfig) -> None:
        from tqdm import tqdm

        self.config = config
        self.source = JumpSource(config)
        self.channel_names = self.source.channel_names
        self._cache = SiteCache(self.source)
        sites = self.source.sites
        size = config.crop_size
        if config.locations:
            tables = find_tables(self.source.root, config.locations, "", "nucleus location tables")
            located = read_locations(tables, config.x_column, config.y_column)
            shape = self.source.site_shape(0)
        elif config.segment_channel not in self.source.jump_channels:
            raise DataError(f"data.segment_channel '{config.segment_channel}' is not among the channels read "
                            f"{list(self.source.jump_channels)}")
        centres, site_rows, counts = [], [], []
        keys = sites[SITE_KEYS].astype(str).to_numpy()
        cache = self._nuclei_cache() if not config.locations and config.nuclei_cache else None
        for i in tqdm(range(len(sites)), desc="finding nuclei", disable=len(sites) < 20, leave=False):
            if config.locations:
                found = located.get(tuple(keys[i]), np.zeros((0, 2)))
            else:
                found, shape = self._segment(i, keys[i], cache)
            keep = inside(found, shape, size)
            kept = found[keep]
            if config.max_cells_per_site is not None:
                kept = kept[: config.max_cells_per_site]
            counts.append((*keys[i], len(found), int((~keep).sum()), len(kept)))
            centres.append(kept)
            site_rows.append(np.full(len(kept), i, dtype=np.int64))
        if cache is not None:
            cache.flush()
            logger.info("nucleus cache %s: %d site(s) reused, %d segmented", cache.folder, cache.hits, cache.misses)
        self.site_counts = pd.DataFrame(counts, columns=[*SITE_KEYS, "found", "border_dropped", "kept"])
        self.centres = np.concatenate(centres) if centres else np.zeros((0, 2))
        self.site_index = np.concatenate(site_rows) if site_rows else np.zeros(0, dtype=np.int64)
        if len(self.centres) == 0:
            raise DataError(f"no cell found in the {len(sites)} sites (crop_size {size}, border cells dropped); "
                            "check data.locations, data.min_area or data.crop_size")
        meta = sites.iloc[self.site_index].reset_index(drop=True)
        self.metadata = meta.assign(Location_Center_X=self.centres[:, 1], Location_Center_Y=self.centres[:, 0])
        logger.info("jump_cells: %d cells from %d sites (%d found, %d cut by the border dropped, median %.0f per site)",
                    len(self.metadata), len(sites), int(self.site_counts["found"].sum()),
                    int(self.site_counts["border_dropped"].sum()), float(self.site_counts["kept"].median()))

    def _nuclei_cache(self) -> NucleiCache:
        cfg = self.config
        return NucleiCache(cfg.nuclei_cache, {"channel": cfg.segment_channel, "min_area": cfg.min_area,
                                              "smoothing": cfg.smoothing, "min_distance": cfg.min_distance,
                                              "illum": cfg.illum, "bit_depth": cfg.bit_depth})

    def _segment(self, index: int, key: np.ndarray, cache: NucleiCache | None) -> tuple[np.ndarray, tuple[int, int]]:
        """Centres of site ``index`` (from the cache when its files are unchanged) and the site's ``(H, W)``."""
        from cellssl_jumpcp.nuclei import find_nuclei

        channel = self.source.jump_channels.index(self.config.segment_channel)
        files = [self.source.files(index)[channel]]
        illum = self.source.illum_files(index)
        if illum is not None:
            files.append(illum[channel])
        if cache is not None:
            found = cache.get(*key, files)
            if found is not None:
                return found, self.source.site_shape(index)
        image = self._cache.get(index)
        found = find_nuclei(image[channel], self.config.min_area, self.config.smoothing, self.config.min_distance)
        if cache is not None:
            cache.put(*key, files, found)
        return found, image.shape[1:]

    def load_image(self, index: int) -> torch.Tensor:
        """Crop ``index`` as float32 ``(C, crop_size, crop_size)`` of the corrected site.

        :raises DataError: see :meth:`JumpSource.read_site`; a site smaller than the crop needs.
        """
        site = self._cache.get(int(self.site_index[index]))
        size = self.config.crop_size
        y, x = (crop_window(c, size) for c in self.centres[index])
        if y < 0 or x < 0 or y + size > site.shape[1] or x + size > site.shape[2]:
            raise DataError(f"cell {index} (centre {self.centres[index].tolist()}) does not fit in its site "
                            f"{self.source.files(int(self.site_index[index]))[0]} of shape {site.shape[1:]}")
        return torch.from_numpy(np.ascontiguousarray(site[:, y : y + size, x : x + size]))


def build_jump_cells(config: JumpCellsConfig) -> JumpCellsDataset:
    """Factory registered as dataset ``jump_cells``.

    :raises DataError: see :class:`JumpCellsDataset`.
    """
    return JumpCellsDataset(config)
