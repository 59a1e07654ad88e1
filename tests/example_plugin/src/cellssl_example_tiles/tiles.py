"""``fov_tiles``: a dataset of square tiles cut from whole fields of view."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from cellssl.api import CellDataset, DataError, canonical_channel_name, read_image, scale_to_unit
from cellssl_example_tiles.configs import FovTilesConfig


class FovTiles(CellDataset):
    """Tiles of ``tile_size`` pixels on a regular grid over each field of view.

    Metadata columns: ``file``, ``fov`` (position of the file in ``files``), ``y``, ``x`` and ``half``
    (``top`` / ``bottom``: which half of the field the tile comes from, a toy label for demonstrations).

    :raises DataError: if a file is missing or its channel count differs from ``channels``.
    """

    def __init__(self, config: FovTilesConfig) -> None:
        self.config = config
        self.channel_names = tuple(canonical_channel_name(c) for c in config.channels)
        stride = config.stride or config.tile_size
        rows = []
        for fov, file in enumerate(config.files):
            image = read_image(Path(file))
            if self.channel_names and image.num_channels != len(self.channel_names):
                raise DataError(
                    f"{file}: has {image.num_channels} channels but `data.channels` names "
                    f"{len(self.channel_names)} ({list(self.channel_names)}); fix the list of channel names"
                )
            _, height, width = image.array.shape
            for y in range(0, height - config.tile_size + 1, stride):
                for x in range(0, width - config.tile_size + 1, stride):
                    half = "top" if y + config.tile_size / 2 <= height / 2 else "bottom"
                    rows.append({"file": str(file), "fov": fov, "y": y, "x": x, "half": half})
        self.metadata = pd.DataFrame(rows)
        self._cache: dict[str, torch.Tensor] = {}

    def load_image(self, index: int) -> torch.Tensor:
        row = self.metadata.iloc[index]
        if row["file"] not in self._cache:  # one field of view per worker stays in memory
            image = read_image(Path(row["file"]))
            self._cache = {row["file"]: torch.from_numpy(scale_to_unit(image.array, self.config.bit_depth,
                                                                       source=row["file"]))}
        size = self.config.tile_size
        return self._cache[row["file"]][:, row["y"] : row["y"] + size, row["x"] : row["x"] + size].clone()
