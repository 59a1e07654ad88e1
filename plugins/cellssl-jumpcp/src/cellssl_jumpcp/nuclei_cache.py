"""Nucleus centres found by segmentation, cached per plate so that a rebuilt dataset does not segment again.

``data.nuclei_cache: <folder>`` (relative to the working directory; a plate array sets
``<run>/nuclei`` when it is empty) holds one Parquet file per plate and segmentation recipe::

    <folder>/<recipe digest>/<plate>.parquet    Metadata_Well, Metadata_Site, file, y, x   (one row per nucleus)

The recipe digest covers what the centres depend on: the segmented channel, ``min_area``, ``smoothing``,
``min_distance``, ``illum``, ``bit_depth``. ``file`` identifies the DNA image a site's centres were found on
and its illumination function (path, size and modification time of each): a site whose file changed is
segmented again. A site without any nucleus is stored as one row with ``y`` and ``x`` missing (NaN), so it is
not segmented again either.
Writes are atomic (a killed build leaves the previous file).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cellssl.api import DataError

logger = logging.getLogger(__name__)

SiteKey = tuple[str, str]  # (well, site)


def recipe_digest(recipe: dict[str, object]) -> str:
    """First 16 hex digits of the SHA-256 of the recipe's canonical JSON."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def file_identity(paths: Sequence[Path]) -> str:
    """``<path>|<size>|<mtime ns>`` of each file (``<path>|missing`` when it does not exist), joined by ``;``."""
    parts = []
    for path in paths:
        try:
            stat = Path(path).stat()
        except OSError:
            parts.append(f"{path}|missing")
            continue
        parts.append(f"{path}|{stat.st_size}|{stat.st_mtime_ns}")
    return ";".join(parts)


class NucleiCache:
    """The cached centres of one folder and recipe.

    :param folder: ``data.nuclei_cache``. :param recipe: what the centres depend on (see the module docstring).
    """

    def __init__(self, folder: str | Path, recipe: dict[str, object]) -> None:
        self.folder = Path(folder).expanduser() / recipe_digest(recipe)
        self.recipe = recipe
        self._plates: dict[str, dict[SiteKey, tuple[str, np.ndarray]]] = {}
        self._dirty: set[str] = set()
        self.hits = 0
        self.misses = 0

    def _path(self, plate: str) -> Path:
        return self.folder / f"{plate}.parquet"

    def _load(self, plate: str) -> dict[SiteKey, tuple[str, np.ndarray]]:
        if plate in self._plates:
            return self._plates[plate]
        entries: dict[SiteKey, tuple[str, np.ndarray]] = {}
        path = self._path(plate)
        if path.is_file():
            try:
                frame = pd.read_parquet(path)
            except Exception as exc:  # a damaged cache is recomputed, never trusted
                logger.warning("ignoring the unreadable nucleus cache %s (%s); segmenting again", path, exc)
                frame = None
            if frame is not None:
                for (well, site, file), rows in frame.groupby(["Metadata_Well", "Metadata_Site", "file"], sort=False):
                    centres = rows[["y", "x"]].to_numpy(np.float64)
                    entries[(str(well), str(site))] = (str(file), centres[~np.isnan(centres).any(axis=1)])
        self._plates[plate] = entries
        return entries

    def get(self, plate: str, well: str, site: str, files: Sequence[Path]) -> np.ndarray | None:
        """The cached centres ``(N, 2)`` (y, x) of a site whose ``files`` (the segmented image and its illumination
        function) are unchanged, else ``None``."""
        entry = self._load(str(plate)).get((str(well), str(site)))
        if entry is None or entry[0] != file_identity(files):
            self.misses += 1
            return None
        self.hits += 1
        return entry[1].copy()

    def put(self, plate: str, well: str, site: str, files: Sequence[Path], centres: np.ndarray) -> None:
        """Record the centres of a site found on ``files`` (written by :meth:`flush`)."""
        self._load(str(plate))[(str(well), str(site))] = (file_identity(files), np.asarray(centres, np.float64))
        self._dirty.add(str(plate))

    def flush(self) -> None:
        """Write the plates that changed (atomically).

        :raises DataError: naming the folder when it cannot be written.
        """
        from cellssl.api import atomic_open

        for plate in sorted(self._dirty):
            rows = []
            for (well, site), (file, centres) in self._plates[plate].items():
                points = centres if len(centres) else np.full((1, 2), np.nan)
                rows += [(well, site, file, float(y), float(x)) for y, x in points]
            frame = pd.DataFrame(rows, columns=["Metadata_Well", "Metadata_Site", "file", "y", "x"])
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with atomic_open(self._path(plate), "wb") as handle:
                    frame.to_parquet(handle, index=False)
            except OSError as exc:
                raise DataError(f"cannot write the nucleus cache {self._path(plate)} (data.nuclei_cache): {exc}") \
                    from exc
        if self._dirty:
            (self.folder / "recipe.json").write_text(json.dumps(self.recipe, sort_keys=True), encoding="utf-8")
        self._dirty.clear()
