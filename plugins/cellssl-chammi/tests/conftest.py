"""A small CHAMMI tree in the published layout, built from real Jurkat cells (``../shared/data``).

Layout (as published): ``CHAMMI/{Allen,HPA,CP}/enriched_meta.csv`` and 8-bit grey channel tapes
``(40, 40 * C)`` (``.ome.tiff`` for WTC, ``.png`` for HPA and CP); ``file_path`` relative to ``CHAMMI/``.

Channels of each tape, from the 16-bit Jurkat crops (brightfield, dna, darkfield = source channels 0, 1, 2)
scaled to 8 bits by ``round(x * 255 / max_c)`` with ``max_c`` the maximum of source channel ``c`` over
every cell used:

- WTC (3): cell channels 0, 1, 2;
- HPA (4): cell channels 0, 1, 2, then channel 1 of a partner cell;
- CP (5): cell channels 0, 1, 2, then channels 0 and 2 of a partner cell.

The extra columns ``source`` / ``partner`` (paths under ``jurkat-cellcycle``) let tests re-derive every
plane independently. Labels are Jurkat phases; novel classes (absent from Train) make up HPA ``Task_three``
(groups ``cell_type``) and CP ``Task_four`` (groups ``Plate``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

MAIN = ["G1", "S_phase", "G2", "Prophase"]
TASK_NAMES = ["Task_one", "Task_two", "Task_three", "Task_four"]
CELL_TYPES = ["A-431", "HeLa", "U-2 OS"]
PLATES = ["BR00116991", "BR00116993", "BR00117000"]

# subset -> (folder, suffix, list of (split, classes, rows per class))
PLAN: dict[str, tuple[str, str, list[tuple[str, list[str], int]]]] = {
    "wtc": ("Allen", ".ome.tiff", [("Train", MAIN, 10), ("Task_one", MAIN, 3), ("Task_two", MAIN, 3)]),
    "hpa": ("HPA", ".png", [("Train", MAIN[:3], 8), ("Task_one", MAIN[:3], 3), ("Task_two", MAIN[:3], 3),
                            ("Task_three", ["Prophase", "Metaphase", "Telophase"], 4)]),
    "cp": ("CP", ".png", [("Train", MAIN, 8), ("Task_one", MAIN, 3), ("Task_two", MAIN, 3), ("Task_three", MAIN, 3),
                          ("Task_four", ["Metaphase", "Telophase", "Anaphase"], 4)]),
}
TASKS_OF = {"wtc": TASK_NAMES[:2], "hpa": TASK_NAMES[:3], "cp": TASK_NAMES[:4]}


@dataclass
class ChammiFixture:
    """The built tree: ``root`` (the CHAMMI folder), the metadata frames, the 8-bit scales."""

    root: Path
    jurkat: Path
    frames: dict[str, pd.DataFrame]
    scales: np.ndarray

    def planes(self, subset: str, row: pd.Series) -> np.ndarray:
        """The expected uint8 ``(C, 40, 40)`` planes of a row, re-derived from the source TIFFs."""
        cell = to_uint8(tifffile.imread(self.jurkat / row["source"]), self.scales)
        partner = to_uint8(tifffile.imread(self.jurkat / row["partner"]), self.scales)
        extra = {"wtc": [], "hpa": [partner[1]], "cp": [partner[0], partner[2]]}[subset]
        return np.stack([cell[0], cell[1], cell[2], *extra])


def to_uint8(array: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return np.clip(np.round(array.astype(np.float64) * 255.0 / scales[:, None, None]), 0, 255).astype(np.uint8)


def _cells(jurkat: Path) -> dict[str, list[str]]:
    meta = pd.read_csv(jurkat / "metadata.csv")
    return {phase: sorted(group["path"]) for phase, group in meta.groupby("phase")}


def build_chammi(jurkat: Path, out: Path) -> ChammiFixture:
    """Write the tree under ``out/CHAMMI`` and return its description."""
    pools = _cells(jurkat)
    taken = {phase: 0 for phase in pools}
    plan_rows: dict[str, list[dict[str, object]]] = {}
    for subset, (_, _, splits) in PLAN.items():
        rows = []
        for split, classes, count in splits:
            for phase in classes:
                for _ in range(count):
                    pool = pools[phase]
                    source = pool[taken[phase] % len(pool)]
                    partner = pool[(taken[phase] + 7) % len(pool)]
                    taken[phase] += 1
                    rows.append({"split": split, "Label": phase, "source": source, "partner": partner})
        plan_rows[subset] = rows
    used = sorted({r[k] for rows in plan_rows.values() for r in rows for k in ("source", "partner")})
    scales = np.max([tifffile.imread(jurkat / p).reshape(3, -1).max(axis=1) for p in used], axis=0).astype(np.float64)
    fixture = ChammiFixture(out / "CHAMMI", jurkat, {}, scales)
    for subset, (folder, suffix, _) in PLAN.items():
        records = []
        for i, row in enumerate(plan_rows[subset]):
            ident = f"{subset}_{i:04d}"
            split = str(row["split"])
            if subset == "cp":
                plate = PLATES[i % 3]
                rel = f"{folder}/{plate}/{ident}{suffix}"
            else:
                plate = None
                rel = f"{folder}/images/{ident}{suffix}"
            record: dict[str, object] = {"file_path": rel, "ID": ident, "channel_width": 40, "Label": row["Label"],
                                         "train_test_split": split}
            for task in TASKS_OF[subset]:
                record[task] = split == task
            if subset == "hpa":
                record["cell_type"] = CELL_TYPES[i % 3]
            if subset == "cp":
                record["Plate"] = plate
            record["source"], record["partner"] = row["source"], row["partner"]
            records.append(record)
        frame = pd.DataFrame(records)
        fixture.frames[subset] = frame
        for _, record in frame.iterrows():
            tape = np.concatenate(list(fixture.planes(subset, record)), axis=1)  # (40, 40 * C)
            path = fixture.root / record["file_path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".png":
                Image.fromarray(tape, mode="L").save(path)
            else:
                tifffile.imwrite(path, tape, ome=True, photometric="minisblack")
        frame.to_csv(fixture.root / folder / "enriched_meta.csv", index=False)
    return fixture


@pytest.fixture(scope="session")
def chammi(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ChammiFixture:
    return build_chammi(shared_data / "jurkat-cellcycle", tmp_path_factory.mktemp("chammi"))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
