"""HPA datasets on fixtures in the published layouts: channel order, label parsing, splits, errors,
augmentations, the download message and the Cell-DINO evaluation configs."""

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

from cellssl.cli import main
from cellssl.config.validate import validate_block
from cellssl.data.augment import AugmentationPipeline, AugmentConfig
from cellssl.errors import DataError
from cellssl.plugins.manager import build_plugin_state
from cellssl_hpa import plugin
from cellssl_hpa.augment import HPA_AUGMENT, hpa_augment_config, hpa_multicrop_config
from cellssl_hpa.classes import FOV_CELL_LINES, FOV_CLASSES, SINGLE_CELL_CLASSES, SINGLE_CELL_LINES
from cellssl_hpa.config import HPAFovConfig, HPASingleCellConfig
from cellssl_hpa.dataset import build_hpa_fov, build_hpa_single_cell

REPO = Path(__file__).resolve().parents[3]
CHANNELS = ("microtubules", "protein", "dna", "er")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def single(hpa, **kwargs: object):
    return build_hpa_single_cell(HPASingleCellConfig(root=str(hpa.root / "hpaone"), **kwargs))  # type: ignore[arg-type]


def fov(hpa, **kwargs: object):
    return build_hpa_fov(HPAFovConfig(root=str(hpa.root / "hpafov"), **kwargs))  # type: ignore[arg-type]


def kaggle(hpa, **kwargs: object):
    return build_hpa_fov(HPAFovConfig(root=str(hpa.root / "kaggle"), layout="kaggle", **kwargs))  # type: ignore[arg-type]


def _name(path: str) -> str:
    return Path(path).name.split(".")[0].removeprefix("v_")


def test_single_cell_channels_labels_and_splits(hpa) -> None:
    train = single(hpa)  # protein localisation, published train CSV
    expected_rows = [n for i, n in enumerate(hpa.crops["name"]) if hpa.crops["role"][i] == "train"]
    assert [_name(p) for p in train.metadata["path"]] == expected_rows  # row 1 (no class) kept, as published
    assert train.metadata["protein_localization"][0] == ""
    assert not train.metadata.loc[0, list(SINGLE_CELL_CLASSES)].any()
    assert train.channel_names == CHANNELS
    assert train.label_columns == SINGLE_CELL_CLASSES
    for index in range(len(train)):
        name = _name(train.metadata["path"][index])
        expected = set() if name == "cell_001" else hpa.labels(name, SINGLE_CELL_CLASSES)  # row 1 was blanked
        assert {c for c in SINGLE_CELL_CLASSES if train.metadata[c][index]} == expected
        joined = "|".join(c for c in SINGLE_CELL_CLASSES if c in expected)
        assert train.metadata["protein_localization"][index] == joined
        assert train.metadata["cell_type"][index] == (None if name == "cell_002" else hpa.line(name))
        expected_index = -1 if name == "cell_002" else SINGLE_CELL_LINES.index(hpa.line(name))
        assert train.metadata["cell_type_index"][index] == expected_index  # position in the published list
    for name in ("cell_003", "cell_005"):  # RGBA planes, and the one stored as a grey tape
        index = [_name(p) for p in train.metadata["path"]].index(name)
        torch.testing.assert_close(train[index].image, torch.from_numpy(hpa.planes(name) / np.float32(255.0)))
    labelled = single(hpa, split="labelled")
    assert labelled.metadata["split"].value_counts().to_dict() == {"train": 36, "test": 12}
    assert len(single(hpa, split="test")) == 12
    dropped = single(hpa, split="labelled", unlabelled="drop")
    assert len(dropped) == 47 and "cell_001" not in {_name(p) for p in dropped.metadata["path"]}
    with pytest.raises(ValueError, match=r"unlabelled must be one of \('published', 'keep', 'drop'\), got 'skip'"):
        HPASingleCellConfig(root="x", unlabelled="skip")


def test_single_cell_type_mode_and_ssl(hpa) -> None:
    cells = single(hpa, mode="cell_type", split="labelled")
    assert cells.label_columns == ("cell_type",)
    assert len(cells) == 48 and cells.classes == SINGLE_CELL_LINES  # published: every row kept
    no_line = [_name(p) for p in cells.metadata["path"]].index("cell_002")
    assert pd.isna(cells.metadata["cell_type"][no_line]) and cells.metadata["cell_type_index"][no_line] == -1
    assert set(cells.metadata["cell_type"].dropna()) == {"A-431", "HeLa", "U-2 OS"}
    strict = single(hpa, mode="cell_type", split="labelled", unlabelled="drop")
    assert len(strict) == 47 and "cell_002" not in {_name(p) for p in strict.metadata["path"]}
    ssl = single(hpa, split="ssl")
    assert len(ssl) == 10 and ssl.label_columns == ()
    assert [tuple(ssl[i].image.shape) for i in (0, 9)] == [(4, 40, 40), (4, 68, 68)]  # varied sizes
    torch.testing.assert_close(ssl[2].image, torch.from_numpy(hpa.planes("cell_002")[:, :48, :48] / np.float32(255)))


def test_fov_layout_fallback_and_unknown_cell_lines(hpa) -> None:
    data = fov(hpa, split="labelled")
    assert data.label_columns == FOV_CLASSES and len(data) == 48
    index = [_name(p) for p in data.metadata["path"]].index("cell_003")
    assert data.metadata["path"][index] == "512_whole_images/cell_003.tiff"  # the published loader's fallback
    torch.testing.assert_close(data[index].image, torch.from_numpy(hpa.planes("cell_003") / np.float32(255.0)))
    lines = fov(hpa, split="labelled", mode="cell_type")  # published: cell_type mode keeps every row
    unknown = [_name(p) for p in lines.metadata["path"]].index("cell_004")
    assert len(lines) == 48 and pd.isna(lines.metadata["cell_type"][unknown])
    assert lines.metadata["cell_type_index"].tolist().count(-1) == 1
    known = lines.metadata["cell_type"].notna()
    named = [FOV_CELL_LINES[i] for i in lines.metadata["cell_type_index"][known]]
    assert named == list(lines.metadata["cell_type"][known])
    assert len(fov(hpa, split="labelled", mode="cell_type", unlabelled="drop")) == 47
    ssl = fov(hpa, split="ssl")
    assert len(ssl) == 48 and ssl.label_columns == ()


def test_kaggle_one_png_per_channel(hpa) -> None:
    data = kaggle(hpa)
    assert data.config.channel_path_columns == ["path_red", "path_green", "path_blue", "path_yellow"]
    assert len(data) == 40 and data.channel_names == CHANNELS
    for index in (0, 17, 39):
        name = str(data.metadata["Id"][index]).split("-", 1)[1]
        torch.testing.assert_close(data[index].image, torch.from_numpy(hpa.planes(name) / np.float32(255.0)))
        expected = hpa.labels(name, FOV_CLASSES)
        assert {c for c in FOV_CLASSES if data.metadata[c][index]} == expected
    table = pd.read_csv(hpa.root / "kaggle" / "train.csv")
    first = [FOV_CLASSES[int(t)] for t in str(table["Target"][0]).split()]
    assert data.metadata["protein_localization"][0] == "|".join(c for c in FOV_CLASSES if c in first)
    assert len(kaggle(hpa, split="ssl")) == 48  # the 40 train + 8 test images
    with pytest.raises(ValueError, match="Kaggle never published the test labels"):
        HPAFovConfig(root="x", layout="kaggle", split="test")


def test_missing_data_and_malformed_tables(hpa, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"HPA single cell data root not found: .*/nowhere .*S-BIAD2443"):
        single_cell_root = tmp_path / "nowhere"
        build_hpa_single_cell(HPASingleCellConfig(root=str(single_cell_root)))
    root = tmp_path / "hpaone"
    shutil.copytree(hpa.root / "hpaone", root)
    (root / "fixed_size_masked_single_cells_evaluation_20240507.csv").unlink()
    with pytest.raises(DataError, match=r"is incomplete: missing fixed_size_masked_single_cells_evaluation_20240507"
                                        r"\.csv\. HPAone and HPA-FoV are published"):
        build_hpa_single_cell(HPASingleCellConfig(root=str(root), split="labelled"))
    table = root / "fixed_size_masked_single_cells_pretrain_20240507.csv"
    frame = pd.read_csv(table)
    blank = frame.copy()
    blank["cytosol"] = blank["cytosol"].astype(object)
    blank.loc[0, "cytosol"] = None  # an empty cell reads as False
    blank.to_csv(table, index=False)
    parsed = build_hpa_single_cell(HPASingleCellConfig(root=str(root), mode="cell_type"))
    assert not parsed.metadata["cytosol"][0] and parsed.metadata["cytosol"].dtype == bool
    written = frame.set_index("file")["cytosol"]
    assert parsed.metadata["cytosol"][1:].tolist() == written[parsed.metadata["file"][1:]].tolist()
    frame.loc[0, "HeLa"], frame.loc[0, "A549"] = True, True
    frame.to_csv(table, index=False)
    with pytest.raises(DataError, match=r"data row 1 marks several cell lines \['A549', 'HeLa'\]; .*one cell comes "
                                        r"from one line.*would silently keep the last marked line"):
        build_hpa_single_cell(HPASingleCellConfig(root=str(root)))
    frame.drop(columns=["cytosol"]).to_csv(table, index=False)
    with pytest.raises(DataError, match=r"lacks 1 protein-localisation class column\(s\): \['cytosol'\]"):
        build_hpa_single_cell(HPASingleCellConfig(root=str(root)))
    kaggle_root = tmp_path / "kaggle"
    shutil.copytree(hpa.root / "kaggle", kaggle_root)
    pd.DataFrame({"Id": ["x"], "Target": ["3 31"]}).to_csv(kaggle_root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"data row 1 has Target '3 31'; expected class indices 0-27"):
        build_hpa_fov(HPAFovConfig(root=str(kaggle_root), layout="kaggle"))
    next((kaggle_root / "train").glob("*_yellow.png")).unlink()
    pd.read_csv(hpa.root / "kaggle" / "train.csv").to_csv(kaggle_root / "train.csv", index=False)
    with pytest.raises(DataError, match=r"1 image file\(s\) of .*train\.csv are missing: row \d+: .*_yellow\.png.*"
                                        r"human-protein-atlas-image-classification"):
        build_hpa_fov(HPAFovConfig(root=str(kaggle_root), layout="kaggle"))


def test_augmentations_protect_the_protein_channel() -> None:
    config = hpa_augment_config()
    assert config.channel_drop.protected == ["protein"] and config.channel_drop.p == 0.2
    assert config.rescale.channels == ["protein"] and not config.blur.enabled and not config.noise.enabled
    pipeline = AugmentationPipeline(hpa_augment_config(crop={"enabled": False}, brightness_contrast={"enabled": False},
                                                       rescale={"enabled": False}, hflip={"enabled": False},
                                                       vflip={"enabled": False}), size=8)
    image = torch.rand(4, 8, 8) + 0.5
    dropped = np.zeros(4, dtype=int)
    for seed in range(400):
        out = pipeline(image, CHANNELS, seed)
        dropped += (out.abs().sum(dim=(1, 2)) == 0).numpy().astype(int)
    assert dropped[1] == 0  # protein is never dropped
    assert dropped.sum() == pytest.approx(0.2 * 400, abs=30) and all(dropped[[0, 2, 3]] > 10)
    gains = AugmentationPipeline(hpa_augment_config(crop={"enabled": False}, brightness_contrast={"enabled": False},
                                                    channel_drop={"enabled": False}, rescale={"p": 1.0},
                                                    hflip={"enabled": False}, vflip={"enabled": False}), size=8)
    out = gains(image, CHANNELS, 3)
    torch.testing.assert_close(out[[0, 2, 3]], image[[0, 2, 3]])
    assert not torch.allclose(out[1], image[1])
    multicrop = hpa_multicrop_config(global_size=64, local_size=32)
    assert multicrop.normalize.mode == "per_image" and multicrop.local_aug.channel_drop.protected == ["protein"]
    with pytest.raises(ValueError, match=r"unknown augmentation block\(s\) \['jitter'\]"):
        hpa_augment_config(jitter={})
    # the plain mapping is a valid YAML block and means the same as the factory's dataclass
    assert validate_block(HPA_AUGMENT, AugmentConfig, "objective.multicrop.global_aug") == hpa_augment_config()


def test_download_explains_where_the_data_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "download", "hpa", "--to", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "S-BIAD2443" in err and "kaggle competitions download -c human-protein-atlas-image-classification" in err


TINY = ["backbone.name=vit_tiny", "backbone.embed_dim=32", "backbone.depth=1", "backbone.num_heads=2",
        "backbone.patch_size=8", "backbone.img_size=32", "backbone.layerscale_init=null", "embed.img_size=32",
        "run.num_threads=1"]


@pytest.mark.parametrize("name", ["hpa_single_cell_linear", "hpa_single_cell_knn", "hpa_fov_linear", "hpa_fov_knn"])
def test_configs_validate(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", str(REPO / "configs" / "eval" / f"{name}.yaml")]) == 0
    shown = capsys.readouterr().out
    assert "name: fixed" in shown and "mode: per_image" in shown and "column: split" in shown


def test_registration_and_light_entry_point(hpa) -> None:
    state = build_plugin_state(extra_plugins=[("hpa", "cellssl-hpa", plugin)], load_entry_points=False)
    info = next(p for p in state.plugins if p.name == "hpa")
    assert info.error is None
    assert info.registered == {"dataset": ["hpa_single_cell", "hpa_fov"], "download": ["hpa"]}
    entry = state.registries["dataset"].get("hpa_fov")
    assert len(entry.factory(HPAFovConfig(root=str(hpa.root / "hpafov"), split="test"))) == 12
    code = ("import sys; import cellssl_hpa.plugin; "
            "assert not {'torch', 'pandas', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert importlib.util.find_spec("cellssl_hpa.dataset") is not None
