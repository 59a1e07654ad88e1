"""The ``bloodcells`` dataset on the real BCCD crops, its hold-out split, corrupt files, registration."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cellssl.errors import DataError
from cellssl.plugins.manager import build_plugin_state
from cellssl_bloodcells import plugin
from cellssl_bloodcells.config import BloodCellsConfig
from cellssl_bloodcells.dataset import build_bloodcells_dataset, holdout_mask

COUNTS = {"WBC": 372, "RBC": 499, "Platelets": 361}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def bccd(shared_data: Path) -> Path:
    return shared_data / "bccd-bloodcells"


def build(root: Path, **kwargs: object):
    return build_bloodcells_dataset(BloodCellsConfig(root=str(root), **kwargs))  # type: ignore[arg-type]


def test_all_images_with_class_labels(bccd: Path) -> None:
    dataset = build(bccd, split="all")
    assert len(dataset) == sum(COUNTS.values()) == 1232
    assert dataset.metadata["label"].value_counts().to_dict() == COUNTS
    assert dataset.channel_names == ("red", "green", "blue")
    assert dataset.label_columns == ("label",)
    assert dataset.classes == ("Platelets", "RBC", "WBC")
    index = int(np.flatnonzero(dataset.metadata["label"] == "WBC")[0])
    sample = dataset[index]
    path = bccd / sample.meta["path"]
    assert sample.meta["label"] == "WBC" and path.parent.name == "WBC"
    reference = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1) / 255.0
    torch.testing.assert_close(sample.image, torch.from_numpy(reference).float())
    labels = dataset.labels()
    assert labels.names == ["Platelets", "RBC", "WBC"] and not labels.multilabel
    assert np.bincount(labels.values).tolist() == [361, 499, 372]


def test_holdout_is_stratified_disjoint_and_complete(bccd: Path) -> None:
    train = build(bccd, holdout_fraction=0.2, split="train")
    holdout = build(bccd, holdout_fraction=0.2, split="holdout")
    assert holdout.metadata["label"].value_counts().to_dict() == {"WBC": 74, "RBC": 100, "Platelets": 72}
    assert train.metadata["label"].value_counts().to_dict() == {"WBC": 298, "RBC": 399, "Platelets": 289}
    train_paths, holdout_paths = set(train.metadata["path"]), set(holdout.metadata["path"])
    assert not train_paths & holdout_paths
    assert train_paths | holdout_paths == set(build(bccd, split="all").metadata["path"])
    # the default split is train, and with no hold-out fraction it holds everything
    assert len(build(bccd)) == 1232


def test_holdout_is_deterministic_and_seeded(bccd: Path) -> None:
    first = build(bccd, holdout_fraction=0.3, split="holdout", seed=7)
    again = build(bccd, holdout_fraction=0.3, split="holdout", seed=7)
    other = build(bccd, holdout_fraction=0.3, split="holdout", seed=8)
    assert list(first.metadata["path"]) == list(again.metadata["path"])
    assert set(first.metadata["path"]) != set(other.metadata["path"])
    # a class's draw does not depend on the other classes
    only_wbc = build(bccd, holdout_fraction=0.3, split="holdout", seed=7, classes=["WBC"])
    assert set(only_wbc.metadata["path"]) == set(first.metadata.loc[first.metadata["label"] == "WBC", "path"])


def test_holdout_mask_counts() -> None:
    assert holdout_mask(10, 0.25, 0, "A").sum() == 2  # round(2.5) -> 2 (banker's rounding)
    assert holdout_mask(3, 0.01, 0, "A").sum() == 1  # at least one when the fraction is positive
    assert holdout_mask(3, 0.9, 0, "A").sum() == 2  # at most n - 1
    assert holdout_mask(1, 0.5, 0, "A").sum() == 0
    assert holdout_mask(5, 0.0, 0, "A").sum() == 0


def test_classes_subset_and_order(bccd: Path) -> None:
    dataset = build(bccd, split="all", classes=["WBC", "Platelets"])
    assert dataset.classes == ("WBC", "Platelets")
    assert list(dataset.metadata["label"].unique()) == ["WBC", "Platelets"]
    assert len(dataset) == 372 + 361
    with pytest.raises(DataError, match=r"class folder\(s\) \['Monocyte'\] not found in .*available: "
                                        r"Platelets, RBC, WBC"):
        build(bccd, classes=["Monocyte"])


def make_small_root(bccd: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Three real images per class (copied: links out of the root would be refused), plus a truncated JPEG."""
    root = tmp_path / "blood"
    for name in COUNTS:
        (root / name).mkdir(parents=True)
        for source in sorted((bccd / name).glob("*.jpg"))[:3]:
            (root / name / source.name).write_bytes(source.read_bytes())
    data = sorted((bccd / "WBC").glob("*.jpg"))[3].read_bytes()
    corrupt = root / "WBC" / "zz_corrupt.jpg"
    corrupt.write_bytes(data[: len(data) // 3])
    (root / "WBC" / "notes.txt").write_text("not an image")
    return root, corrupt


def test_corrupt_jpeg_is_skipped_and_reported_with_check_images(
    bccd: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, corrupt = make_small_root(bccd, tmp_path)
    with caplog.at_level(logging.WARNING, logger="cellssl.data.table"):
        dataset = build(root, split="all", check_images=True)
    assert len(dataset) == 9
    assert list(dataset.skipped["file"]) == [str(corrupt)]
    assert list(dataset.skipped["label"]) == ["WBC"]
    assert "skipped 1 of 10 rows" in caplog.text and "zz_corrupt.jpg" in caplog.text
    assert all(dataset[i].image.shape[0] == 3 for i in range(len(dataset)))


def test_corrupt_jpeg_raises_without_check_images(bccd: Path, tmp_path: Path) -> None:
    root, corrupt = make_small_root(bccd, tmp_path)
    dataset = build(root, split="all")
    assert corrupt.is_file()
    assert len(dataset) == 10  # notes.txt is not an image
    index = int(np.flatnonzero(dataset.metadata["path"] == "WBC/zz_corrupt.jpg")[0])
    with pytest.raises(DataError, match=r"could not decode image file .*WBC/zz_corrupt\.jpg"):
        dataset.load_image(index)


def test_bad_configs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        BloodCellsConfig(root="x", split="test")
    with pytest.raises(ValueError, match=r"holdout_fraction must be in \[0, 1\)"):
        BloodCellsConfig(root="x", holdout_fraction=1.0)
    with pytest.raises(ValueError, match="split='holdout' needs holdout_fraction > 0"):
        BloodCellsConfig(root="x", split="holdout")
    assert BloodCellsConfig(root="x", extensions=["JPG", ".Png"]).extensions == [".jpg", ".png"]
    with pytest.raises(DataError, match=r"bloodcells root folder not found: .*nowhere"):
        build(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        build(tmp_path / "empty")


def test_registration_in_an_isolated_plugin_state(bccd: Path) -> None:
    state = build_plugin_state(
        extra_plugins=[("bloodcells", "cellssl-bloodcells", plugin)], load_entry_points=False
    )
    entry = state.registries["dataset"].get("bloodcells")
    assert entry.distribution == "cellssl-bloodcells"
    assert entry.config_cls is BloodCellsConfig
    info = next(p for p in state.plugins if p.name == "bloodcells")
    assert info.error is None and info.registered == {"dataset": ["bloodcells"]}
    dataset = entry.factory(BloodCellsConfig(root=str(bccd), classes=["Platelets"], split="all"))
    assert len(dataset) == 361


def test_plugin_module_does_not_import_torch() -> None:
    code = (
        "import sys; import cellssl_bloodcells.plugin; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'pandas' not in sys.modules, 'pandas imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert importlib.util.find_spec("cellssl_bloodcells.dataset") is not None
