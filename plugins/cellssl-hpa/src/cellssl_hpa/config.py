"""Parameters of the ``hpa_single_cell`` and ``hpa_fov`` datasets (standard library only).

Splits (both datasets):

- ``train`` / ``test``: the published labelled splits (one CSV each);
- ``labelled``: both, with a ``split`` column (``train`` / ``test``) for the evaluators' column split;
- ``ssl``: every image published for self-supervised training (no labels).

Modes: ``protein_localization`` (multi-label; the label columns are the class columns, always the
published fixed list of 19 / 28 in its published order) and ``cell_type`` (multi-class on the
``cell_type`` column; ``cell_type_index`` is the line's position in the published fixed list).

Rows without a label (``unlabelled``): ``published`` (default) does what Cell-DINO's loaders do:
HPAone keeps every row (a row without a class is an all-zero label vector); HPA-FoV drops the rows
without a class in mode ``protein_localization`` and keeps every row in mode ``cell_type``; the Kaggle
layout drops rows without a class. ``keep`` keeps every row, ``drop`` drops the rows without a label of
``mode``. A kept row without a known cell line has an empty ``cell_type`` (the published loaders give it
index 0, i.e. the first line of the list, for HPAone and NaN for HPA-FoV; cellssl's evaluators skip it as
a missing label and count it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "test", "labelled", "ssl")
MODES = ("protein_localization", "cell_type")
LAYOUTS = ("cell_dino", "kaggle")
CHECK_FILES = ("exists", "decode", "none")
UNLABELLED = ("published", "keep", "drop")


def _check_common(split: str, mode: str, check_files: str, limit: int | None, root: str,
                  unlabelled: str = "published") -> None:
    if not str(root).strip():
        raise ValueError("root is required: the folder of the HPA data as published")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if check_files not in CHECK_FILES:
        raise ValueError(f"check_files must be one of {CHECK_FILES}, got {check_files!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or null, got {limit}")
    if unlabelled not in UNLABELLED:
        raise ValueError(f"unlabelled must be one of {UNLABELLED}, got {unlabelled!r}")


@dataclass
class HPASingleCellConfig:
    """The YAML block ``data: {name: hpa_single_cell, root: ...}`` (HPAone, as published with Cell-DINO).

    :ivar root: the HPAone folder. Required.
    :ivar split: ``train``, ``test``, ``labelled`` or ``ssl`` (see the module docstring).
    :ivar mode: ``protein_localization`` (19 classes, multi-label) or ``cell_type`` (29 lines, multi-class).
    :ivar train_csv: the labelled training table (fixed-size masked crops), relative to ``root``.
    :ivar test_csv: the labelled evaluation table, relative to ``root``.
    :ivar ssl_csv: the table of the pretraining crops (varied sizes), relative to ``root``.
    :ivar images: folder of the fixed-size crops; a row's image is ``images/<file name of its 'file'>``.
    :ivar ssl_images: folder of the varied-size pretraining crops.
    :ivar bit_depth: of the PNGs (``dtype``: their own 8 or 16 bits).
    :ivar check_files: ``exists``, ``decode`` or ``none``.
    :ivar limit: keep only the first ``limit`` rows.
    :ivar unlabelled: ``published`` (keep every row, as Cell-DINO's HPAone loader), ``keep`` or ``drop``
        (see the module docstring).
    """

    root: str
    split: str = "train"
    mode: str = "protein_localization"
    train_csv: str = "fixed_size_masked_single_cells_pretrain_20240507.csv"
    test_csv: str = "fixed_size_masked_single_cells_evaluation_20240507.csv"
    ssl_csv: str = "varied_size_masked_single_cells_pretrain_20240507.csv"
    images: str = "train_data/fixed_size_masked_single_cells_HPA"
    ssl_images: str = "train_data/varied_size_masked_single_cells_HPA"
    bit_depth: str = "dtype"
    check_files: str = "exists"
    limit: int | None = None
    unlabelled: str = "published"

    def __post_init__(self) -> None:
        _check_common(self.split, self.mode, self.check_files, self.limit, self.root, self.unlabelled)


@dataclass
class HPAFovConfig:
    """The YAML block ``data: {name: hpa_fov, root: ...}``: HPA fields of view.

    Layout ``cell_dino`` (HPA-FoV as published with Cell-DINO): 4-channel 512 px PNGs in ``images`` and
    the CSVs ``train_csv`` / ``test_csv`` (``file``, ``cell_type``, one True/False column per class). A
    row's image is ``<images>/<file name of 'file'>``, else ``<images>/<that name up to its first '.'>.tiff``
    (the published loader's fallback).
    Layout ``kaggle`` (Human Protein Atlas Image Classification, 2018): ``kaggle_csv`` (``Id``, ``Target``
    = class indices separated by spaces) and one grey PNG per channel, ``<Id>_red|green|blue|yellow.png``,
    in ``kaggle_train``; the test images (``kaggle_test``) have no published labels and serve ``ssl`` only.

    :ivar root: the data folder. Required. :ivar layout: ``cell_dino`` or ``kaggle``.
    :ivar split: ``train``, ``test`` (``cell_dino`` only), ``labelled`` or ``ssl``.
    :ivar mode: ``protein_localization`` (28 classes) or ``cell_type`` (35 lines; ``cell_dino`` only).
    :ivar train_csv: :ivar test_csv: tables of the ``cell_dino`` layout, relative to ``root``.
    :ivar images: image folder of the ``cell_dino`` layout.
    :ivar kaggle_csv: label table of the ``kaggle`` layout. :ivar kaggle_train: its training images.
    :ivar kaggle_test: its test images (``ssl`` split only).
    :ivar bit_depth: :ivar check_files: :ivar limit: as for ``hpa_single_cell``.
    :ivar extensions: image suffixes listed for the ``ssl`` split of the ``cell_dino`` layout.
    :ivar unlabelled: ``published`` (HPA-FoV: drop rows without a class in mode ``protein_localization``,
        keep every row in mode ``cell_type``; Kaggle: drop rows without a class), ``keep`` or ``drop``.
    """

    root: str
    layout: str = "cell_dino"
    split: str = "train"
    mode: str = "protein_localization"
    train_csv: str = "2022_07_04_whole_image_train_data/whole_images_512_train.csv"
    test_csv: str = "2022_07_04_whole_image_train_data/whole_images_512_test.csv"
    images: str = "512_whole_images"
    kaggle_csv: str = "train.csv"
    kaggle_train: str = "train"
    kaggle_test: str = "test"
    bit_depth: str = "dtype"
    check_files: str = "exists"
    limit: int | None = None
    extensions: list[str] = field(default_factory=lambda: [".png", ".tif", ".tiff"])
    unlabelled: str = "published"

    def __post_init__(self) -> None:
        _check_common(self.split, self.mode, self.check_files, self.limit, self.root, self.unlabelled)
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.layout == "kaggle" and self.split == "test":
            raise ValueError("layout 'kaggle' has no labelled test split (Kaggle never published the test labels); "
                             "use split 'train' with a held-out fraction in the evaluator, or 'ssl'")
        if self.layout == "kaggle" and self.mode == "cell_type":
            raise ValueError("layout 'kaggle' has no cell-line labels; use mode 'protein_localization'")


@dataclass
class HPADownloadConfig:
    """``cellssl data download hpa``: no option; the command explains where to get the data."""
