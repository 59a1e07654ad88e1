"""The ``bloodcells`` dataset: ``root/<class>/<image>`` folders read through cellssl's table dataset.

The folders are listed into a metadata table (columns ``path`` relative to ``root``, ``label`` = class
folder name, ``split`` = ``train`` / ``holdout``) which :class:`cellssl.data.table.TableDataset` validates
and reads: RGB images, channels ``red, green, blue``, bit depth ``uint8``.

Hold-out: within each class, ``round(holdout_fraction * n)`` images (at least 1 and at most ``n - 1``
when the fraction is positive and the class has two or more images) are drawn with a generator seeded by
``(seed, crc32(class name))``. The draw of a class therefore depends only on the seed and on that class's
sorted file list: it does not change when other classes are added, removed or reordered, nor when
corrupt images are skipped later.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from cellssl.api import SUPPORTED_SUFFIXES, DataError, TableDataset, TableDatasetConfig
from cellssl_bloodcells.config import BloodCellsConfig

logger = logging.getLogger(__name__)

CHANNELS = ("red", "green", "blue")


class BloodCellsDataset(TableDataset):
    """A :class:`~cellssl.data.table.TableDataset` over class folders.

    :ivar classes: the class names (folder names) in use, in listing order.
    :ivar bloodcells_config: the plugin's parameters.
    """

    classes: tuple[str, ...]
    bloodcells_config: BloodCellsConfig


def _class_folders(root: Path, classes: list[str]) -> list[str]:
    available = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        if not available:
            raise DataError(f"{root} has no class sub-folders; the layout is root/<class>/<image>.jpg")
        return available
    missing = [name for name in classes if name not in available]
    if missing:
        raise DataError(
            f"class folder(s) {missing} not found in {root} (data.classes); available: {', '.join(available)}"
        )
    return list(classes)


def _images_of(folder: Path, extensions: set[str]) -> list[Path]:
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in extensions
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def holdout_mask(num_images: int, fraction: float, seed: int, class_name: str) -> np.ndarray:
    """Which of a class's ``num_images`` (sorted) images are held out; see the module docstring.

    :return: boolean array ``(num_images,)``.
    """
    mask = np.zeros(num_images, dtype=bool)
    if fraction <= 0.0 or num_images < 2:
        return mask
    count = min(max(round(fraction * num_images), 1), num_images - 1)
    rng = np.random.default_rng([seed, zlib.crc32(class_name.encode("utf-8"))])
    mask[rng.permutation(num_images)[:count]] = True
    return mask


def list_class_folders(config: BloodCellsConfig) -> pd.DataFrame:
    """The metadata table of every image under ``config.root``, with its class and hold-out split.

    :return: columns ``path`` (POSIX, relative to root), ``label``, ``split``; rows ordered by class (in
        ``config.classes`` order, else sorted) then path.
    :raises DataError: if the root or a requested class folder is missing, a requested class has no
        images, or no image is found at all.
    """
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DataError(f"bloodcells root folder not found: {root} (data.root)")
    unsupported = [ext for ext in config.extensions if ext not in SUPPORTED_SUFFIXES]
    if unsupported:
        raise DataError(
            f"data.extensions {unsupported} cannot be read; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    extensions = set(config.extensions)
    rows: list[tuple[str, str, str]] = []
    for name in _class_folders(root, config.classes):
        images = _images_of(root / name, extensions)
        if not images:
            if config.classes:
                raise DataError(f"class folder {root / name} holds no {'/'.join(config.extensions)} images")
            logger.warning("bloodcells: folder %s holds no images and is ignored", root / name)
            continue
        held = holdout_mask(len(images), config.holdout_fraction, config.seed, name)
        rows += [
            (path.relative_to(root).as_posix(), name, "holdout" if is_held else "train")
            for path, is_held in zip(images, held)
        ]
    if not rows:
        raise DataError(f"no {'/'.join(config.extensions)} image found in the class folders of {root}")
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def build_bloodcells_dataset(config: BloodCellsConfig) -> BloodCellsDataset:
    """Build dataset ``bloodcells`` (the factory registered by :mod:`cellssl_bloodcells.plugin`).

    :raises DataError: from :func:`list_class_folders`, or from the table dataset (undecodable image
        without ``check_images``, an image that is not RGB, ...).
    """
    frame = list_class_folders(config)
    root = Path(config.root).expanduser()
    table_config = TableDatasetConfig(
        table="",
        root=str(root),
        path_column="path",
        channels=list(CHANNELS),
        bit_depth="uint8",
        label_columns=["label"],
        split_column=None if config.split == "all" else "split",
        split=None if config.split == "all" else config.split,
        on_corrupt="skip" if config.check_images else "error",
        check_files="decode" if config.check_images else "exists",
        limit=config.limit,
    )
    dataset = BloodCellsDataset(table_config, frame, root=root, source=f"the class folders of {root}")
    dataset.classes = tuple(pd.unique(frame["label"]))
    dataset.bloodcells_config = config
    return dataset
