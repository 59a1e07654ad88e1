"""Parameters of the ``bloodcells`` dataset (import-light: standard library only)."""

from __future__ import annotations

from dataclasses import dataclass, field

SPLITS = ("train", "holdout", "all")
DEFAULT_EXTENSIONS = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"]


@dataclass
class BloodCellsConfig:
    """The YAML block ``data: {name: bloodcells, root: ..., ...}``.

    :ivar root: folder holding one sub-folder per class (``root/<class>/<image>.jpg``). Required.
    :ivar extensions: image suffixes to collect (case-insensitive); other files are ignored.
    :ivar classes: class folders to use, in this order; empty: every non-hidden sub-folder, sorted.
    :ivar holdout_fraction: fraction of each class held out (stratified, seeded); ``0`` holds out nothing.
    :ivar split: ``"train"`` (images not held out), ``"holdout"`` or ``"all"``.
    :ivar seed: seed of the hold-out draw; each class is drawn independently of the others.
    :ivar check_images: decode every image when the dataset is built; corrupt ones are skipped and
        reported (``dataset.skipped``). Without it, a corrupt image raises when it is read.
    :ivar limit: keep only the first ``limit`` images of the split (by class, then path).
    """

    root: str
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    classes: list[str] = field(default_factory=list)
    holdout_fraction: float = 0.0
    split: str = "train"
    seed: int = 0
    check_images: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if not str(self.root).strip():
            raise ValueError("root is required: the folder that holds one sub-folder per class")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.split == "holdout" and self.holdout_fraction == 0.0:
            raise ValueError("split='holdout' needs holdout_fraction > 0 (nothing is held out at 0)")
        if not self.extensions:
            raise ValueError("extensions must name at least one image suffix, such as .jpg")
        self.extensions = [("." + ext.lstrip(".")).lower() for ext in self.extensions]
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes lists a class twice: {self.classes}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive integer or null, got {self.limit}")
