"""Cell-DINO's HPA protocol on the fixtures: the shipped kNN configs, scored against an independent computation.

The independent side reads the published CSVs with the ``csv`` module the way Cell-DINO's loaders do (a class
is on when its cell is the text ``True``; HPAone keeps every row, HPA-FoV's localisation mode drops rows without
a class), finds each test row's cosine nearest neighbour with numpy, and scores torchmetrics'
``MultilabelF1Score(num_labels, average="macro")`` by hand: per label ``2 tp / (2 tp + fp + fn)``, 0 when the
denominator is 0, averaged over all 19 / 28 labels.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from cellssl.cli import main
from cellssl.embed.store import read_embeddings
from cellssl_hpa.classes import FOV_CELL_LINES, FOV_CLASSES, SINGLE_CELL_CLASSES, SINGLE_CELL_LINES

REPO = Path(__file__).resolve().parents[3]
TINY = ["backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=1", "backbone.num_heads=2",
        "backbone.patch_size=8", "backbone.img_size=32", "backbone.layerscale_init=null", "embed.img_size=32",
        "run.num_threads=1"]

# dataset folder, config, train CSV, test CSV, classes, cell lines, rows without a class kept (localisation)
CASES = {
    "single_cell": ("hpaone", "hpa_single_cell_knn", "fixed_size_masked_single_cells_pretrain_20240507.csv",
                    "fixed_size_masked_single_cells_evaluation_20240507.csv", SINGLE_CELL_CLASSES, SINGLE_CELL_LINES,
                    True),
    "fov": ("hpafov", "hpa_fov_knn", "2022_07_04_whole_image_train_data/whole_images_512_train.csv",
            "2022_07_04_whole_image_train_data/whole_images_512_test.csv", FOV_CLASSES, FOV_CELL_LINES, False),
}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def published_rows(path: Path, classes: tuple[str, ...], lines: tuple[str, ...]) -> list[tuple[str, np.ndarray, int]]:
    """``(file name, 0/1 label vector in list order, cell-line index or -1)`` per CSV row, read as published."""
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            vector = np.array([row[c] == "True" for c in classes], dtype=np.int64)
            if "cell_type" in row:
                line = lines.index(row["cell_type"]) if row["cell_type"] in lines else -1
            else:
                marked = [k for k, name in enumerate(lines) if row.get(name) == "True"]
                line = marked[-1] if marked else -1
            rows.append((row["file"].rsplit("/", 1)[1], vector, line))
    return rows


def torchmetrics_macro_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """MultilabelF1Score(num_labels=L, average="macro") of torchmetrics 0.10.3, by hand, on 0/1 matrices."""
    tp = ((truth == 1) & (pred == 1)).sum(axis=0)
    fp = ((truth == 0) & (pred == 1)).sum(axis=0)
    fn = ((truth == 1) & (pred == 0)).sum(axis=0)
    denominator = 2 * tp + fp + fn
    per_label = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return float(per_label.mean())


def nearest(train_x: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    return np.argmax(b.astype(np.float64) @ a.T.astype(np.float64), axis=1)


@pytest.mark.parametrize("case", list(CASES))
def test_localisation_metric_equals_an_independent_computation(hpa, tmp_path: Path, case: str) -> None:
    folder, config, train_csv, test_csv, classes, lines, keep_empty = CASES[case]
    root, out = hpa.root / folder, tmp_path / "run"
    assert main(["run", str(REPO / "configs/eval" / f"{config}.yaml"), f"data.root={root}", f"run.output_dir={out}",
                 *TINY]) == 0
    table = read_embeddings(out / "embeddings")
    keys = zip(table.metadata["file"], table.metadata["split"], strict=True)
    position = {(Path(str(f)).name, s): i for i, (f, s) in enumerate(keys)}
    train = published_rows(root / train_csv, classes, lines)
    test = published_rows(root / test_csv, classes, lines)
    if not keep_empty:  # HPA-FoV in localisation mode: rows without a class are left out
        train, test = [r for r in train if r[1].any()], [r for r in test if r[1].any()]
    train_x = table.embeddings[[position[(name, "train")] for name, _, _ in train]]
    test_x = table.embeddings[[position[(name, "test")] for name, _, _ in test]]
    truth = np.stack([vector for _, vector, _ in test])
    pred = np.stack([vector for _, vector, _ in train])[nearest(train_x, test_x)]
    expected = torchmetrics_macro_f1(truth, pred)
    assert expected == pytest.approx(f1_score(truth, pred, average="macro", labels=range(len(classes)),
                                              zero_division=0))

    proteins = json.loads((out / "eval" / "knn_2.json").read_text())
    assert proteins["labels"]["names"] == list(classes)  # the fixed published list, in its order
    assert proteins["split"] == {"mode": "column", "train_rows": len(train), "test_rows": len(test)}
    assert proteins["labels"]["unlabelled_rows"] == ("kept" if keep_empty else "skipped")
    assert proteins["metrics"]["k1_mean_per_class_multilabel_f1"] == pytest.approx(expected, abs=1e-12)
    present = np.flatnonzero(truth.any(axis=0) | pred.any(axis=0))
    assert present.size < len(classes)  # the fixture holds few classes: the two means differ
    present_mean = float(np.mean(f1_score(truth, pred, average=None, labels=present, zero_division=0)))
    assert proteins["metrics"]["k1_macro_f1_present_labels"] == pytest.approx(present_mean)
    assert proteins["metrics"]["k1_mean_per_class_multilabel_f1"] == pytest.approx(present_mean * present.size
                                                                                   / len(classes))

    cells = json.loads((out / "eval" / "knn.json").read_text())
    assert cells["labels"]["names"] == list(lines)  # cell-line index = position in the published list
    all_train = published_rows(root / train_csv, classes, lines)
    all_test = published_rows(root / test_csv, classes, lines)
    lined_train = [r for r in all_train if r[2] >= 0]
    lined_test = [r for r in all_test if r[2] >= 0]
    assert cells["labels"]["rows_missing_label"] == len(all_train) + len(all_test) - len(lined_train) - len(lined_test)
    cx = table.embeddings[[position[(name, "train")] for name, _, _ in lined_train]]
    qx = table.embeddings[[position[(name, "test")] for name, _, _ in lined_test]]
    line_truth = np.array([line for *_, line in lined_test])
    line_pred = np.array([line for *_, line in lined_train])[nearest(cx, qx)]
    everyone = f1_score(line_truth, line_pred, average=None, labels=range(len(lines)), zero_division=0)
    assert cells["metrics"]["k1_mean_per_class_multiclass_f1"] == pytest.approx(float(everyone.mean()))
    assert cells["metrics"]["k1_macro_f1"] == pytest.approx(f1_score(line_truth, line_pred, average="macro"))
