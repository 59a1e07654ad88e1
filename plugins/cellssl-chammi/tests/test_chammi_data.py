"""CHAMMI datasets on a fixture in the published layout: tapes, channel order, labels, splits, errors."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellssl.errors import DataError
from cellssl.plugins.manager import build_plugin_state
from cellssl_chammi import plugin
from cellssl_chammi.config import ChammiDatasetConfig, ChammiEvaluatorConfig, ChammiSubsetConfig
from cellssl_chammi.dataset import build_chammi_dataset, same_rows

CHANNELS = {"wtc": ("dna", "membrane", "protein"), "hpa": ("microtubules", "protein", "dna", "er"),
            "cp": ("dna", "er", "rna", "golgi", "mito")}


def build(root: Path, subset: str, **kwargs: object):
    return build_chammi_dataset(ChammiSubsetConfig(root=str(root), **kwargs), subset)  # type: ignore[arg-type]


@pytest.mark.parametrize("subset", ["wtc", "hpa", "cp"])
def test_tapes_are_cut_into_channels_in_published_order(chammi, subset: str) -> None:
    dataset = build(chammi.root, subset)
    frame = chammi.frames[subset]
    assert len(dataset) == len(frame)
    assert dataset.channel_names == CHANNELS[subset]
    for index in (0, len(frame) // 2, len(frame) - 1):
        sample = dataset[index]
        row = frame.iloc[index]
        assert sample.meta["ID"] == row["ID"] and sample.meta["Label"] == row["Label"]
        expected = chammi.planes(subset, row).astype(np.float32) / 255.0
        assert tuple(sample.image.shape) == (len(CHANNELS[subset]), 40, 40)
        torch.testing.assert_close(sample.image, torch.from_numpy(expected))
    # the 4th HPA channel is the partner cell's 2nd channel: not a copy of any of the cell's own channels
    if subset == "hpa":
        image = dataset[0].image
        assert not any(torch.equal(image[3], image[c]) for c in range(3))


def test_labels_splits_and_task_columns(chammi) -> None:
    hpa = build(chammi.root, "hpa")
    assert hpa.label_columns == ("Label",)
    counts = hpa.metadata["Label"].value_counts().sort_index()
    assert counts.to_dict() == {"G1": 14, "G2": 14, "Metaphase": 4, "Prophase": 4, "S_phase": 14, "Telophase": 4}
    assert hpa.metadata["train_test_split"].value_counts().to_dict() == {
        "Train": 24, "Task_three": 12, "Task_one": 9, "Task_two": 9}
    assert hpa.metadata["Task_three"].dtype == bool
    train = build(chammi.root, "hpa", split="Train")
    assert len(train) == 24 and set(train.metadata["Label"]) == {"G1", "S_phase", "G2"}
    novel = build(chammi.root, "hpa", task="Task_three")
    assert len(novel) == 12 and set(novel.metadata["Label"]) == {"Prophase", "Metaphase", "Telophase"}
    assert sorted(novel.metadata["cell_type"].unique()) == ["A-431", "HeLa", "U-2 OS"]
    cp = build(chammi.root, "cp", task="Task_four", limit=5)
    assert len(cp) == 5 and set(cp.metadata["Plate"]) <= {"BR00116991", "BR00116993", "BR00117000"}
    # the named dataset `chammi` picks a subset; the root may be the folder holding CHAMMI/
    chosen = plugin.build_chammi(ChammiDatasetConfig(root=str(chammi.root.parent), subset="cp"))
    assert len(chosen) == 80 and chosen.channel_names == CHANNELS["cp"]


def test_channel_width_is_read_per_row(chammi, tmp_path: Path) -> None:
    root = tmp_path / "CHAMMI"
    shutil.copytree(chammi.root, root)
    meta = pd.read_csv(root / "HPA" / "enriched_meta.csv")
    meta.loc[3, "channel_width"] = 32  # 160 px wide: 5 channels of 32, not the 4 HPA has
    meta.to_csv(root / "HPA" / "enriched_meta.csv", index=False)
    dataset = build(root, "hpa")
    dataset.load_image(2)
    with pytest.raises(DataError, match=r"row 4 of .*HPA/enriched_meta\.csv .*the tape holds 5 channels of width 32 "
                                        r"\(shape \(1, 40, 160\)\) but CHAMMI HPA has 4"):
        dataset.load_image(3)
    meta.loc[3, "channel_width"] = 30
    meta.to_csv(root / "HPA" / "enriched_meta.csv", index=False)
    with pytest.raises(DataError, match=r"image width 160 is not a multiple of channel_width 30"):
        build(root, "hpa").load_image(3)


def test_missing_root_folder_columns_and_files(chammi, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CHAMMI WTC data root not found: .*/nowhere \(data\.root\) does not exist.*"
                                        r"cellssl data download chammi --to DIR"):
        build(tmp_path / "nowhere", "wtc")
    root = tmp_path / "CHAMMI"
    shutil.copytree(chammi.root, root)
    shutil.rmtree(root / "CP")
    with pytest.raises(DataError, match=r"CHAMMI CP metadata not found: looked for .*/CHAMMI/CP/enriched_meta\.csv.*"
                                        r"cellssl data download chammi"):
        build(root, "cp")
    meta = pd.read_csv(root / "HPA" / "enriched_meta.csv")
    meta.drop(columns=["Task_two"]).to_csv(root / "HPA" / "enriched_meta.csv", index=False)
    with pytest.raises(DataError, match=r"HPA/enriched_meta\.csv lacks the column\(s\) \['Task_two'\]"):
        build(root, "hpa")
    meta.to_csv(root / "HPA" / "enriched_meta.csv", index=False)
    for name in ("hpa_0001.png", "hpa_0002.png"):
        (root / "HPA" / "images" / name).unlink()
    with pytest.raises(DataError, match=r"CHAMMI HPA: 2 of 54 image files listed in .* are missing: row 2: .*"
                                        r"hpa_0001\.png; row 3: .*hpa_0002\.png\. .* download may be incomplete"):
        build(root, "hpa")
    assert len(build(root, "hpa", check_files="none")) == 54


def test_rows_are_matched_by_id_key_and_file_path() -> None:
    a = pd.DataFrame({"ID": ["x", "y"], "file_path": ["CP/x.png", "CP/y.png"]})
    assert same_rows(a, a.copy())
    assert same_rows(a, a.drop(columns=["ID"]))  # file_path alone
    assert not same_rows(a, a.iloc[::-1].reset_index(drop=True))  # order matters
    assert not same_rows(a, a.assign(ID=["x", "z"]))  # every shared key column must agree
    assert same_rows(a.rename(columns={"ID": "Key"}), a.rename(columns={"ID": "Key"}))
    assert not same_rows(a.iloc[:1], a)
    assert not same_rows(a[["ID"]].rename(columns={"ID": "Key"}), a[["ID"]])  # no shared key column


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        ChammiSubsetConfig(root="x", split="Test")
    with pytest.raises(ValueError, match="subset must be one of"):
        ChammiDatasetConfig(root="x", subset="jump")
    with pytest.raises(ValueError, match="classifiers must name some of"):
        ChammiEvaluatorConfig(classifiers=["svm"])
    with pytest.raises(ValueError, match=r"group_columns must name the group column of the leave-out subsets \['cp'\]"):
        ChammiEvaluatorConfig(group_columns={"hpa": "cell_type"})
    with pytest.raises(ValueError, match="channels must name 3 channels"):
        build_chammi_dataset(ChammiSubsetConfig(root="x", channels=["a", "b"]), "wtc")


def test_registration_in_an_isolated_plugin_state(chammi) -> None:
    state = build_plugin_state(extra_plugins=[("chammi", "cellssl-chammi", plugin)], load_entry_points=False)
    info = next(p for p in state.plugins if p.name == "chammi")
    assert info.error is None
    assert info.registered == {"dataset": ["chammi_wtc", "chammi_hpa", "chammi_cp", "chammi"],
                               "evaluator": ["chammi"], "download": ["chammi"], "command": ["chammi-table"]}
    entry = state.registries["dataset"].get("chammi_cp")
    assert entry.distribution == "cellssl-chammi"
    assert len(entry.factory(ChammiSubsetConfig(root=str(chammi.root), split="Train"))) == 32


def test_plugin_module_does_not_import_heavy_libraries() -> None:
    code = ("import sys; import cellssl_chammi.plugin; "
            "assert not {'torch', 'pandas', 'faiss', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert importlib.util.find_spec("cellssl_chammi.evaluator") is not None
