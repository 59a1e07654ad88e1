"""HPA datasets read exactly as published: HPAone single cells, HPA-FoV and the Kaggle 2018 layout.

Every dataset is a :class:`cellssl.data.table.TableDataset` over a table built from the published CSVs:
the original columns, plus ``path`` (the image, relative to ``root``; for the Kaggle layout
``path_red`` ... ``path_yellow``), ``split`` and two derived label columns:

- ``protein_localization``: the row's classes joined by ``|`` (empty when none), for evaluators'
  ``label_column: protein_localization, label_separator: "|"``;
- ``cell_type``: the cell line (HPAone: the one-hot column that is true; HPA-FoV: its ``cell_type`` when it
  is one of the 35 published lines), empty when none;
- ``cell_type_index``: the line's position in the published fixed list (``SINGLE_CELL_LINES`` /
  ``FOV_CELL_LINES``), -1 when none; the dataset's ``classes`` keep the names in that order.

The class columns are always the whole published list (19 HPAone classes, 28 Kaggle classes, in the
published order), whatever classes a split holds. Which rows without a label are kept is the config's
``unlabelled`` option (default ``published``: what Cell-DINO's loaders keep; see :mod:`cellssl_hpa.config`).

Images have four channels, ``microtubules, protein, dna, er`` (the published ``nucleus`` is the shared
vocabulary's ``dna``): the R, G, B, A planes of a 4-channel PNG, a grey tape of four square channels, or
Kaggle's ``_red``, ``_green``, ``_blue``, ``_yellow`` files. A row's image is ``<images>/<file name of its
'file' value>`` (the CSVs hold paths of the authors' machines); an HPA-FoV image missing under that name is
looked up as ``<that name up to its first '.'>.tiff``, the published loader's fallback.

Where cellssl differs from the published loaders (on purpose): a label cell other than True/False
(1/0, yes/no and empty cells are read too) is an error naming the file, row and column, where the published
loaders read anything but the text ``True`` as false; an HPAone row marking two cell lines is an error, where
the published loader silently keeps the last one in list order.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from cellssl.api import (
    DataError,
    TableDataset,
    TableDatasetConfig,
    check_data_root,
    parse_flags,
    read_image,
    read_table,
    scale_to_unit,
    split_tape,
)
from cellssl_hpa.classes import (
    CELL_TYPE_COLUMN,
    CELL_TYPE_INDEX_COLUMN,
    CHANNELS,
    FOV_CELL_LINES,
    FOV_CLASSES,
    KAGGLE_SUFFIXES,
    LOCALIZATION_COLUMN,
    SINGLE_CELL_CLASSES,
    SINGLE_CELL_LINES,
    SPLIT_COLUMN,
)
from cellssl_hpa.config import HPAFovConfig, HPASingleCellConfig

logger = logging.getLogger(__name__)

CELL_DINO_SOURCE = (
    "HPAone and HPA-FoV are published with Cell-DINO on the BioImage Archive, study S-BIAD2443 "
    "(https://www.ebi.ac.uk/biostudies/bioimages/studies/S-BIAD2443): download them there and set data.root to the "
    "folder holding the CSV files."
)
KAGGLE_SOURCE = (
    "The Kaggle layout is the data of the 'Human Protein Atlas Image Classification' competition "
    "(kaggle competitions download -c human-protein-atlas-image-classification, after accepting its rules): "
    "set data.root to the folder holding train.csv, train/ and test/."
)


class HPADataset(TableDataset):
    """An HPA dataset (see the module docstring).

    :ivar classes: the label names of ``mode`` (class columns, or cell lines), in index order.
    :ivar mode: ``protein_localization`` or ``cell_type``.
    """

    classes: tuple[str, ...]
    mode: str

    def load_image(self, index: int) -> torch.Tensor:
        """Read sample ``index`` as float32 ``(4, H, W)`` scaled by the bit depth.

        :raises DataError: naming the row and file when the image is missing, undecodable, or not four channels.
        """
        if self.config.channel_path_columns:
            return super().load_image(index)
        path = self.files(index)[0]
        where = f"row {self.row_numbers[index]} of {self.source} ({path})"
        try:
            image = read_image(path, keep_alpha=True)
        except DataError as exc:
            raise DataError(f"row {self.row_numbers[index]} of {self.source}: {exc}") from exc
        array = image.array
        if array.shape[0] == 1 and array.shape[2] == 4 * array.shape[1]:
            array = split_tape(array, array.shape[1], where)
        if array.shape[0] != len(CHANNELS):
            raise DataError(f"{where}: an HPA image has 4 channels (RGBA planes, or a grey tape of 4 square "
                            f"channels: microtubules, protein, nucleus, ER); this one has shape {image.array.shape}")
        return torch.from_numpy(scale_to_unit(array, self.bit_depth, source=where))


def _as_bool(series: pd.Series, column: str, source: str) -> np.ndarray:
    return parse_flags(series, f"{source}: column '{column}'")


def _require(frame: pd.DataFrame, columns: list[str] | tuple[str, ...], source: str, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        more = " ..." if len(missing) > 5 else ""
        raise DataError(f"{source} lacks {len(missing)} {what} column(s): {missing[:5]}{more}; its columns are "
                        f"{list(map(str, frame.columns))[:12]}...")


def _localizations(frame: pd.DataFrame, classes: tuple[str, ...], source: str) -> pd.DataFrame:
    """Class columns as booleans + the derived ``protein_localization`` column."""
    _require(frame, classes, source, "protein-localisation class")
    matrix = np.stack([_as_bool(frame[c], c, source) for c in classes], axis=1)
    frame = frame.copy()
    for position, name in enumerate(classes):
        frame[name] = matrix[:, position]
    frame[LOCALIZATION_COLUMN] = ["|".join(c for c, on in zip(classes, row) if on) for row in matrix]
    return frame


def _one_hot_cell_type(frame: pd.DataFrame, lines: tuple[str, ...], source: str) -> pd.Series:
    present = [line for line in lines if line in frame.columns]
    if not present:
        raise DataError(f"{source} has none of the {len(lines)} one-hot cell-line columns ({lines[0]!r}, ...)")
    matrix = np.stack([_as_bool(frame[c], c, source) for c in present], axis=1)
    several = np.flatnonzero(matrix.sum(axis=1) > 1)
    if several.size:
        row = int(several[0])
        raise DataError(f"{source}: data row {row + 1} marks several cell lines "
                        f"{[c for c, on in zip(present, matrix[row]) if on]}; the cell-line columns are one-hot "
                        "(one cell comes from one line). cellssl refuses the row rather than guess: the published "
                        "loader would silently keep the last marked line. Fix the row in the CSV.")
    names = np.array(present, dtype=object)[matrix.argmax(axis=1)]
    return pd.Series(np.where(matrix.any(axis=1), names, None), index=frame.index, dtype=object)


def unlabelled_policy(dataset: str, mode: str, unlabelled: str) -> str:
    """``keep`` or ``drop``: what happens to rows without a label of ``mode`` (``published``: Cell-DINO's
    loaders, see :mod:`cellssl_hpa.config`). ``dataset`` is ``single_cell``, ``fov`` or ``kaggle``."""
    if unlabelled != "published":
        return unlabelled
    if dataset == "single_cell":
        return "keep"
    return "keep" if mode == "cell_type" else "drop"


def _keep_labelled(frame: pd.DataFrame, mode: str, source: str, policy: str) -> pd.DataFrame:
    if mode == "protein_localization":
        labelled = frame[LOCALIZATION_COLUMN] != ""
        what = "no protein-localisation class"
    else:
        labelled = frame[CELL_TYPE_COLUMN].notna()
        what = "no known cell line"
    if not labelled.any():
        raise DataError(f"{source}: no row has a label for mode '{mode}'")
    if labelled.all():
        return frame
    if policy == "keep":
        logger.info("%s: kept %d of %d rows with %s (mode %s, unlabelled: keep)", source, int((~labelled).sum()),
                    len(frame), what, mode)
        return frame
    logger.info("%s: dropped %d of %d rows with %s (mode %s)", source, int((~labelled).sum()), len(frame), what, mode)
    return frame[labelled].reset_index(drop=True)


def _cell_type_index(lines: pd.Series, published: tuple[str, ...]) -> list[int]:
    position = {name: i for i, name in enumerate(published)}
    return [position.get(value, -1) if isinstance(value, str) else -1 for value in lines]


def _file_names(frame: pd.DataFrame, source: str) -> pd.Series:
    _require(frame, ["file"], source, "image")
    return frame["file"].astype(str).map(lambda value: PurePosixPath(value.replace("\\", "/")).name)


def _labelled_tables(root: Path, config: HPASingleCellConfig | HPAFovConfig) -> list[tuple[str, Path]]:
    if config.split == "labelled":
        return [("train", root / config.train_csv), ("test", root / config.test_csv)]
    return [(config.split, root / (config.train_csv if config.split == "train" else config.test_csv))]


def single_cell_table(config: HPASingleCellConfig) -> tuple[pd.DataFrame, str]:
    """The HPAone table of ``config`` (see the module docstring) and a description of its source."""
    root = Path(config.root).expanduser()
    if config.split == "ssl":
        check_data_root(root, [config.ssl_csv, config.ssl_images], dataset="HPA single cell",
                        how_to_get=CELL_DINO_SOURCE)
        frame = read_table(root / config.ssl_csv)
        frame["path"] = [f"{config.ssl_images}/{name}" for name in _file_names(frame, str(root / config.ssl_csv))]
        frame[SPLIT_COLUMN] = "ssl"
        return frame, str(root / config.ssl_csv)
    tables = _labelled_tables(root, config)
    check_data_root(root, [str(p.relative_to(root)) for _, p in tables] + [config.images],
                    dataset="HPA single cell", how_to_get=CELL_DINO_SOURCE)
    frames = []
    for split, path in tables:
        frame = _localizations(read_table(path), SINGLE_CELL_CLASSES, str(path))
        frame[CELL_TYPE_COLUMN] = _one_hot_cell_type(frame, SINGLE_CELL_LINES, str(path))
        frame[CELL_TYPE_INDEX_COLUMN] = _cell_type_index(frame[CELL_TYPE_COLUMN], SINGLE_CELL_LINES)
        frame["path"] = [f"{config.images}/{name}" for name in _file_names(frame, str(path))]
        frame[SPLIT_COLUMN] = split
        policy = unlabelled_policy("single_cell", config.mode, config.unlabelled)
        frames.append(_keep_labelled(frame, config.mode, str(path), policy))
    return pd.concat(frames, ignore_index=True), " + ".join(str(p) for _, p in tables)


def _fov_path(root: Path, images: str, name: str) -> str:
    """``<images>/<name>``, else the published loader's fallback ``<images>/<name up to its first '.'>.tiff``."""
    if not (root / images / name).is_file():
        alternative = f"{name.split('.')[0]}.tiff"
        if (root / images / alternative).is_file():
            return f"{images}/{alternative}"
    return f"{images}/{name}"


def fov_table(config: HPAFovConfig) -> tuple[pd.DataFrame, str]:
    """The HPA field-of-view table of ``config`` (either layout) and a description of its source."""
    if config.layout == "kaggle":
        return _kaggle_table(config)
    root = Path(config.root).expanduser()
    if config.split == "ssl":
        check_data_root(root, [config.images], dataset="HPA-FoV", how_to_get=CELL_DINO_SOURCE)
        suffixes = {s.lower() for s in config.extensions}
        names = sorted(p.name for p in (root / config.images).iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not names:
            raise DataError(f"no {'/'.join(sorted(suffixes))} image in {root / config.images}. {CELL_DINO_SOURCE}")
        frame = pd.DataFrame({"path": [f"{config.images}/{n}" for n in names], SPLIT_COLUMN: "ssl"})
        return frame, str(root / config.images)
    tables = _labelled_tables(root, config)
    check_data_root(root, [str(p.relative_to(root)) for _, p in tables] + [config.images], dataset="HPA-FoV",
                    how_to_get=CELL_DINO_SOURCE)
    frames = []
    for split, path in tables:
        frame = _localizations(read_table(path), FOV_CLASSES, str(path))
        _require(frame, [CELL_TYPE_COLUMN], str(path), "cell-line")
        frame[CELL_TYPE_COLUMN] = frame[CELL_TYPE_COLUMN].where(frame[CELL_TYPE_COLUMN].isin(FOV_CELL_LINES), None)
        frame[CELL_TYPE_INDEX_COLUMN] = _cell_type_index(frame[CELL_TYPE_COLUMN], FOV_CELL_LINES)
        frame["path"] = [_fov_path(root, config.images, name) for name in _file_names(frame, str(path))]
        frame[SPLIT_COLUMN] = split
        policy = unlabelled_policy("fov", config.mode, config.unlabelled)
        frames.append(_keep_labelled(frame, config.mode, str(path), policy))
    return pd.concat(frames, ignore_index=True), " + ".join(str(p) for _, p in tables)


def _kaggle_paths(folder: str, ids: list[str]) -> dict[str, list[str]]:
    return {f"path_{s}": [f"{folder}/{i}_{s}.png" for i in ids] for s in KAGGLE_SUFFIXES}


def _kaggle_table(config: HPAFovConfig) -> tuple[pd.DataFrame, str]:
    root = Path(config.root).expanduser()
    if config.split == "ssl":
        check_data_root(root, [config.kaggle_train], dataset="HPA Kaggle", how_to_get=KAGGLE_SOURCE)
        parts = []
        for folder in (config.kaggle_train, config.kaggle_test):
            if (root / folder).is_dir():
                ids = sorted(p.name[: -len("_green.png")] for p in (root / folder).glob("*_green.png"))
                parts.append(pd.DataFrame({"Id": ids, **_kaggle_paths(folder, ids)}))
        frame = pd.concat(parts, ignore_index=True)
        frame[SPLIT_COLUMN] = "ssl"
        return frame, f"the images of {root / config.kaggle_train} and {root / config.kaggle_test}"
    check_data_root(root, [config.kaggle_csv, config.kaggle_train], dataset="HPA Kaggle", how_to_get=KAGGLE_SOURCE)
    source = str(root / config.kaggle_csv)
    frame = read_table(root / config.kaggle_csv)
    _require(frame, ["Id", "Target"], source, "Kaggle")
    matrix = np.zeros((len(frame), len(FOV_CLASSES)), dtype=bool)
    for row, target in enumerate(frame["Target"].astype(str)):
        for token in target.split():
            if not token.isdigit() or int(token) >= len(FOV_CLASSES):
                raise DataError(f"{source}: data row {row + 1} has Target {target!r}; expected class indices 0-27 "
                                "separated by spaces")
            matrix[row, int(token)] = True
    for position, name in enumerate(FOV_CLASSES):
        frame[name] = matrix[:, position]
    frame[LOCALIZATION_COLUMN] = ["|".join(c for c, on in zip(FOV_CLASSES, r) if on) for r in matrix]
    ids = [str(i) for i in frame["Id"]]
    for column, paths in _kaggle_paths(config.kaggle_train, ids).items():
        frame[column] = paths
    frame[SPLIT_COLUMN] = "train"
    policy = unlabelled_policy("kaggle", "protein_localization", config.unlabelled)
    return _keep_labelled(frame, "protein_localization", source, policy), source


def _check_files(dataset: HPADataset, how_to_get: str) -> None:
    missing = [(i, p) for i in range(len(dataset)) for p in dataset.files(i) if not p.is_file()]
    if missing:
        shown = "; ".join(f"row {dataset.row_numbers[i]}: {p}" for i, p in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} image file(s) of {dataset.source} are missing: {shown}{more}. Paths are "
                        f"resolved against {dataset.root} (data.root). {how_to_get}")


def _build(frame: pd.DataFrame, source: str, config: HPASingleCellConfig | HPAFovConfig,
           classes_by_mode: dict[str, tuple[str, ...]], how_to_get: str) -> HPADataset:
    kaggle = "path_red" in frame.columns
    labelled = config.split != "ssl"
    if labelled:
        label_columns = list(classes_by_mode["protein_localization"]) if config.mode == "protein_localization" \
            else [CELL_TYPE_COLUMN]
    else:
        label_columns = []
    table_config = TableDatasetConfig(
        table="", root=str(Path(config.root).expanduser()), path_column="path",
        channel_path_columns=[f"path_{s}" for s in KAGGLE_SUFFIXES] if kaggle else [],
        channels=list(CHANNELS), bit_depth=config.bit_depth, label_columns=label_columns, check_files="none",
        limit=config.limit,
    )
    dataset = HPADataset(table_config, frame, root=Path(config.root).expanduser(), source=source)
    dataset.mode = config.mode
    dataset.classes = classes_by_mode[config.mode] if labelled else ()
    if config.check_files != "none":
        _check_files(dataset, how_to_get)
        for index in range(len(dataset)) if config.check_files == "decode" else range(min(1, len(dataset))):
            dataset.load_image(index)
    logger.info("%s", dataset.describe())
    return dataset


def build_hpa_single_cell(config: HPASingleCellConfig) -> HPADataset:
    """Dataset ``hpa_single_cell`` (HPAone).

    :raises DataError: for a missing root / CSV / image folder / image file (saying where to get the
        data), missing class columns, non-boolean label cells, or rows marking several cell lines.
    """
    frame, source = single_cell_table(config)
    return _build(frame, source, config, {"protein_localization": SINGLE_CELL_CLASSES,
                                          "cell_type": SINGLE_CELL_LINES}, CELL_DINO_SOURCE)


def build_hpa_fov(config: HPAFovConfig) -> HPADataset:
    """Dataset ``hpa_fov`` (HPA-FoV or the Kaggle 2018 layout).

    :raises DataError: as :func:`build_hpa_single_cell`, or for a malformed Kaggle ``Target``.
    """
    frame, source = fov_table(config)
    how_to_get = KAGGLE_SOURCE if config.layout == "kaggle" else CELL_DINO_SOURCE
    return _build(frame, source, config, {"protein_localization": FOV_CLASSES, "cell_type": FOV_CELL_LINES},
                  how_to_get)
