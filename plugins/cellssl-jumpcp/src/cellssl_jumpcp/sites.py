"""The ``jump_sites`` dataset: one sample per site (field of view) of JUMP plates, or per tile of a site.

Samples are ``(C, H, W)`` float32 images in :attr:`JumpSource.jump_channels` order (vocabulary names
``dna, er, rna, agp, mito`` + brightfield planes), illumination-corrected when ``illum`` is on. With
``tile_size`` each site yields the square tiles at offsets ``0, stride, 2 * stride, ...`` that fit inside
it (row-major); ``Metadata_TileY`` / ``Metadata_TileX`` hold a tile's top-left pixel. The last decoded
site is kept, so consecutive tiles of one site decode it once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cellssl.api import CellDataset, DataError
from cellssl_jumpcp.config import JumpSitesConfig
from cellssl_jumpcp.source import JumpSource


def tile_offsets(size: int, tile: int, stride: int) -> list[int]:
    """Offsets of the tiles of length ``tile`` every ``stride`` pixels that fit in ``size`` (``[]`` if none fits)."""
    return list(range(0, size - tile + 1, stride)) if tile <= size else []


class SiteCache:
    """The last site read from a :class:`JumpSource` (datasets reading several samples of one site)."""

    def __init__(self, source: JumpSource) -> None:
        self.source = source
        self._index: int | None = None
        self._image: np.ndarray | None = None

    def get(self, index: int) -> np.ndarray:
        """The corrected site ``index`` (decoded once for consecutive calls)."""
        if self._index != index or self._image is None:
            self._image = self.source.read_site(index)
            self._index = index
        return self._image


class JumpSitesDataset(CellDataset):
    """Sites (or tiles) of JUMP plates; see the module docstring.

    :ivar source: the :class:`JumpSource`. :ivar site_index: for each sample, its site's row in ``source.sites``.
    :raises DataError: see :class:`JumpSource`; also when the tile size exceeds the site.
    """

    def __init__(self, config: JumpSitesConfig) -> None:
        self.config = config
        self.source = JumpSource(config)
        self.channel_names = self.source.channel_names
        self._cache = SiteCache(self.source)
        sites = self.source.sites
        if config.tile_size is None:
            self.site_index = np.arange(len(sites))
            self._tiles = np.zeros((len(sites), 2), dtype=np.int64)
            self.metadata = sites.reset_index(drop=True)
            return
        height, width = self.source.site_shape(0)
        stride = config.tile_stride or config.tile_size
        ys, xs = tile_offsets(height, config.tile_size, stride), tile_offsets(width, config.tile_size, stride)
        if not ys or not xs:
            raise DataError(f"data.tile_size {config.tile_size} is larger than the sites ({height} x {width} pixels)")
        grid = np.array([(y, x) for y in ys for x in xs], dtype=np.int64)
        self.site_index = np.repeat(np.arange(len(sites)), len(grid))
        self._tiles = np.tile(grid, (len(sites), 1))
        self._site_shape = (height, width)
        meta = sites.iloc[self.site_index].reset_index(drop=True)
        self.metadata = meta.assign(Metadata_TileY=self._tiles[:, 0].astype(str),
                                    Metadata_TileX=self._tiles[:, 1].astype(str))

    def load_image(self, index: int) -> torch.Tensor:
        """Sample ``index``: the corrected site, or its tile, as float32 ``(C, H, W)``.

        :raises DataError: naming the load_data row and file (see :meth:`JumpSource.read_site`), or when a
            site is smaller than the first site's size the tiles were laid out for.
        """
        site = self._cache.get(int(self.site_index[index]))
        if self.config.tile_size is None:
            return torch.from_numpy(site.copy())
        if site.shape[1:] != self._site_shape:
            raise DataError(f"site {int(self.site_index[index])} ({self.source.files(int(self.site_index[index]))[0]}) "
                            f"is {site.shape[1:]}, but tiles were laid out for {self._site_shape} sites")
        y, x = self._tiles[index]
        size = self.config.tile_size
        return torch.from_numpy(np.ascontiguousarray(site[:, y : y + size, x : x + size]))

    def site_table(self) -> pd.DataFrame:
        """One row per site (its metadata)."""
        return self.source.sites


def build_jump_sites(config: JumpSitesConfig) -> JumpSitesDataset:
    """Factory registered as dataset ``jump_sites``.

    :raises DataError: see :class:`JumpSitesDataset`.
    """
    return JumpSitesDataset(config)
