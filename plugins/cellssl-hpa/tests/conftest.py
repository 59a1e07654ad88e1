"""HPA fixtures in the published layouts, built from real BBBC021 crops (``../shared/data``).

Each 16-bit crop (DAPI, Tubulin, Actin) becomes an 8-bit 4-channel image: microtubules = Tubulin,
protein = Actin, nucleus = DAPI, ER = the Tubulin plane of the next crop (a real plane that differs from
the other three), each scaled by ``round(x * 255 / max)`` with the channel's maximum over the crops used.

- ``hpaone/``: HPAone: fixed-size RGBA PNGs + ``*_pretrain_*.csv`` (train) and ``*_evaluation_*.csv``
  (test) with ``file`` (an absolute path of another machine), 19 True/False class columns and 29 one-hot
  cell-line columns; varied-size crops + the pretraining CSV for the ``ssl`` split. One labelled image is
  stored as a grey tape of 4 square channels instead of RGBA.
- ``hpafov/``: HPA-FoV: RGBA PNGs in ``512_whole_images/`` + train / test CSVs (``file``, ``cell_type``,
  28 class columns); one image exists only as ``<stem>.tiff`` (4 pages).
- ``kaggle/``: ``train.csv`` (``Id``, ``Target``) and ``train|test/<Id>_{red,green,blue,yellow}.png``.

Labels are a fixed function of the crop's metadata (``labels_of``), so tests can recompute them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from cellssl_hpa.classes import FOV_CLASSES, SINGLE_CELL_CLASSES, SINGLE_CELL_LINES

LINES = ["A-431", "HeLa", "U-2 OS"]


@dataclass
class HPAFixture:
    root: Path
    crops: pd.DataFrame  # the BBBC021 rows used, in order, with the columns `name`, `role`
    scales: np.ndarray

    def labels(self, name: str, classes: tuple[str, ...]) -> set[str]:
        """The classes written for the image called ``name`` (before any row was blanked)."""
        return labels_of(self.crops.set_index("name").loc[name], classes)

    def line(self, name: str) -> str:
        return line_of(self.crops.set_index("name").loc[name])

    def planes(self, name: str) -> np.ndarray:
        """Expected uint8 (4, H, W): microtubules, protein, nucleus, ER of the image called ``name``."""
        row = self.crops.set_index("name").loc[name]
        return four_planes(self.root.parent / "src", row["path"], row["partner"], self.scales)


def to_uint8(plane: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.round(plane.astype(np.float64) * 255.0 / scale), 0, 255).astype(np.uint8)


def four_planes(data: Path, path: str, partner: str, scales: np.ndarray) -> np.ndarray:
    cell, other = tifffile.imread(data / path), tifffile.imread(data / partner)
    return np.stack([to_uint8(cell[1], scales[1]), to_uint8(cell[2], scales[2]), to_uint8(cell[0], scales[0]),
                     to_uint8(other[1], scales[1])])


def labels_of(row: pd.Series, classes: tuple[str, ...]) -> set[str]:
    """The protein-localisation classes of a crop (a fixed rule on its metadata)."""
    names = {"DMSO": {"cytosol"}, "Protein synthesis": {"nucleoli", "nucleoplasm"}}[row["moa"]]
    if int(row["fov_id"]) % 3 == 0:
        names = names | {"mitochondria"}
    return {n for n in names if n in classes}


def line_of(row: pd.Series) -> str:
    return LINES[int(row["site"]) % 3]


def _save_rgba(planes: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(planes.transpose(1, 2, 0)), mode="RGBA").save(path)


def build_hpa(bbbc021: Path, out: Path) -> HPAFixture:
    meta = pd.read_csv(bbbc021 / "metadata.csv").sort_values("path").reset_index(drop=True)
    chosen = pd.concat([meta[meta["moa"] == "DMSO"].iloc[::20].head(24),
                        meta[meta["moa"] == "Protein synthesis"].iloc[::20].head(24)]).reset_index(drop=True)
    chosen["partner"] = chosen["path"].shift(-1).fillna(chosen["path"].iloc[0])
    chosen["name"] = [f"cell_{i:03d}" for i in range(len(chosen))]
    chosen["role"] = ["train" if i % 4 else "test" for i in range(len(chosen))]
    (out / "src").symlink_to(bbbc021)
    used = sorted(set(chosen["path"]) | set(chosen["partner"]))
    scales = np.max([tifffile.imread(bbbc021 / p).reshape(3, -1).max(axis=1) for p in used], axis=0).astype(float)
    fixture = HPAFixture(out / "data", chosen, scales)
    _hpaone(fixture, bbbc021)
    _hpafov(fixture, bbbc021)
    _kaggle(fixture, bbbc021)
    return fixture


def _hpaone(fixture: HPAFixture, bbbc021: Path) -> None:
    root = fixture.root / "hpaone"
    images = root / "train_data" / "fixed_size_masked_single_cells_HPA"
    tables: dict[str, list[dict[str, object]]] = {"train": [], "test": []}
    for i, row in fixture.crops.iterrows():
        planes = four_planes(bbbc021, row["path"], row["partner"], fixture.scales)
        file = f"{row['name']}.png"
        if i == 5:  # a grey tape of four square channels
            images.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate(list(planes), axis=1), mode="L").save(images / file)
        else:
            _save_rgba(planes, images / file)
        record: dict[str, object] = {"file": f"/checkpoint/hpa/fixed_size_masked_single_cells_HPA/{file}"}
        classes = labels_of(row, SINGLE_CELL_CLASSES) if i != 1 else set()  # row 1 has no class
        record.update({c: str(c in classes) for c in SINGLE_CELL_CLASSES})
        line = line_of(row) if i != 2 else None  # row 2 has no cell line
        record.update({c: str(c == line) for c in SINGLE_CELL_LINES})
        tables[row["role"]].append(record)
    pd.DataFrame(tables["train"]).to_csv(root / "fixed_size_masked_single_cells_pretrain_20240507.csv", index=False)
    pd.DataFrame(tables["test"]).to_csv(root / "fixed_size_masked_single_cells_evaluation_20240507.csv", index=False)
    ssl = root / "train_data" / "varied_size_masked_single_cells_HPA"
    names = []
    for i, row in fixture.crops.head(10).iterrows():
        size = 40 + 4 * i  # varied sizes
        planes = four_planes(bbbc021, row["path"], row["partner"], fixture.scales)[:, :size, :size]
        _save_rgba(planes, ssl / f"v_{row['name']}.png")
        names.append(f"/checkpoint/hpa/varied/v_{row['name']}.png")
    pd.DataFrame({"file": names}).to_csv(root / "varied_size_masked_single_cells_pretrain_20240507.csv", index=False)


def _hpafov(fixture: HPAFixture, bbbc021: Path) -> None:
    root = fixture.root / "hpafov"
    tables: dict[str, list[dict[str, object]]] = {"train": [], "test": []}
    for i, row in fixture.crops.iterrows():
        planes = four_planes(bbbc021, row["path"], row["partner"], fixture.scales)
        if i == 3:  # stored only as <stem>.tiff: the published loader's fallback finds it
            (root / "512_whole_images").mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / "512_whole_images" / f"{row['name']}.tiff", planes, photometric="minisblack")
        else:
            _save_rgba(planes, root / "512_whole_images" / f"{row['name']}.png")
        classes = labels_of(row, FOV_CLASSES)
        record: dict[str, object] = {"file": f"/datasets/hpa/{row['name']}.png",
                                     "cell_type": "Unknown-1" if i == 4 else line_of(row)}
        record.update({c: str(c in classes) for c in FOV_CLASSES})
        tables[row["role"]].append(record)
    folder = root / "2022_07_04_whole_image_train_data"
    folder.mkdir()
    pd.DataFrame(tables["train"]).to_csv(folder / "whole_images_512_train.csv", index=False)
    pd.DataFrame(tables["test"]).to_csv(folder / "whole_images_512_test.csv", index=False)


def _kaggle(fixture: HPAFixture, bbbc021: Path) -> None:
    root = fixture.root / "kaggle"
    records = []
    for i, row in fixture.crops.iterrows():
        planes = four_planes(bbbc021, row["path"], row["partner"], fixture.scales)
        folder = root / ("test" if i >= 40 else "train")
        folder.mkdir(parents=True, exist_ok=True)
        ident = f"k{i:04d}-{row['name']}"
        for plane, colour in zip(planes, ("red", "green", "blue", "yellow")):
            Image.fromarray(plane, mode="L").save(folder / f"{ident}_{colour}.png")
        if i < 40:
            target = sorted(FOV_CLASSES.index(c) for c in labels_of(row, FOV_CLASSES))
            records.append({"Id": ident, "Target": " ".join(map(str, target))})
    pd.DataFrame(records).to_csv(root / "train.csv", index=False)


@pytest.fixture(scope="session")
def hpa(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> HPAFixture:
    return build_hpa(shared_data / "bbbc021-crops", tmp_path_factory.mktemp("hpa"))
