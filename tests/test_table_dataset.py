"""The generic ``table`` dataset on real files: happy paths, every bad input, labels."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

from cellssl.data.labels import dataset_labels
from cellssl.data.table import TableDataset, TableDatasetConfig, build_table_dataset
from cellssl.errors import ConfigError, DataError

EXAMPLEHUMAN = "fields-of-view/examplehuman"


def bbbc021_rows(shared_data: Path, n: int = 6) -> pd.DataFrame:
    """The first ``n`` rows of each class of bbbc021-crops' metadata (paths relative to that folder)."""
    meta = pd.read_csv(shared_data / "bbbc021-crops" / "metadata.csv")
    return meta.groupby("moa", sort=True).head(n).reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False)
    return path


def config(tmp_table: Path, shared_data: Path, **kwargs: object) -> TableDatasetConfig:
    return TableDatasetConfig(table=str(tmp_table), root=str(shared_data / "bbbc021-crops"), **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- happy paths
def test_csv_pointing_at_real_crops(shared_data: Path, tmp_path: Path) -> None:
    rows = bbbc021_rows(shared_data)
    table = write_csv(rows, tmp_path / "crops.csv")
    dataset = build_table_dataset(config(table, shared_data, label_columns=["moa"]))
    assert len(dataset) == 12
    assert dataset.channel_names == ("dna", "microtubules", "actin")  # from DAPI|Tubulin|Actin
    assert dataset.label_columns == ("moa",)
    sample = dataset[3]
    assert sample.image.dtype == torch.float32
    assert tuple(sample.image.shape) == (3, 68, 68)
    raw = tifffile.imread(shared_data / "bbbc021-crops" / rows.loc[3, "path"])
    torch.testing.assert_close(sample.image, torch.from_numpy(raw.astype(np.float32) / 65535))
    assert sample.meta["moa"] == rows.loc[3, "moa"]
    assert dataset.files(3) == (shared_data / "bbbc021-crops" / rows.loc[3, "path"],)
    labels = dataset.labels()
    assert labels.names == ["DMSO", "Protein synthesis"] and not labels.multilabel
    np.testing.assert_array_equal(labels.values, [0] * 6 + [1] * 6)


def test_real_metadata_with_default_root_where_split_limit(shared_data: Path) -> None:
    table = shared_data / "bbbc021-crops" / "metadata.csv"
    dataset = build_table_dataset(TableDatasetConfig(table=str(table), where={"moa": "DMSO"}))
    assert len(dataset) == 600
    assert set(dataset.metadata["moa"]) == {"DMSO"}
    # a numeric column filtered with a string value (as YAML gives it); then a split column and a limit
    by_site = build_table_dataset(TableDatasetConfig(
        table=str(table), where={"site": "2"}, split_column="moa", split="Protein synthesis", limit=5))
    assert len(by_site) == 5
    assert set(by_site.metadata["site"]) == {2} and set(by_site.metadata["moa"]) == {"Protein synthesis"}
    meta = pd.read_csv(table)
    expected_rows = np.flatnonzero(((meta["site"] == 2) & (meta["moa"] == "Protein synthesis")).to_numpy())[:5] + 1
    np.testing.assert_array_equal(by_site.row_numbers, expected_rows)


def test_ome_channel_names_and_parquet(shared_data: Path, tmp_path: Path) -> None:
    meta = pd.read_csv(shared_data / "jurkat-cellcycle" / "metadata.csv")
    rows = meta.groupby("phase").head(2).reset_index(drop=True)
    table = tmp_path / "jurkat.parquet"
    rows.to_parquet(table)
    dataset = build_table_dataset(TableDatasetConfig(
        table=str(table), root=str(shared_data / "jurkat-cellcycle"), label_columns=["phase"],
        check_files="decode"))
    assert dataset.channel_names == ("brightfield", "dna", "darkfield")
    assert len(dataset) == 14
    assert tuple(dataset[0].image.shape) == (3, 40, 40)
    classes = dataset.labels().names
    assert classes == sorted(meta["phase"].unique())


def test_one_file_per_channel_columns(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / EXAMPLEHUMAN
    names = sorted(p.name for p in folder.glob("*.tif"))
    table = write_csv(pd.DataFrame({"DNA": [names[0]], "pH3": [names[1]], "actin": [names[2]],
                                    "well": ["D03"]}), tmp_path / "site.csv")
    dataset = build_table_dataset(TableDatasetConfig(
        table=str(table), root=str(folder), channel_path_columns=["DNA", "pH3", "actin"]))
    assert dataset.channel_names == ("dna", "ph3", "actin")
    image = dataset.load_image(0)
    assert tuple(image.shape) == (3, 512, 512)
    torch.testing.assert_close(image[1], torch.from_numpy(tifffile.imread(folder / names[1]) / 255.0).float())


def test_tape_layout_and_rgb_names(shared_data: Path, tmp_path: Path) -> None:
    crop = tifffile.imread(shared_data / "bbbc021-crops" / bbbc021_rows(shared_data, 1).loc[0, "path"])
    Image.fromarray(np.concatenate(list(crop), axis=1)).save(tmp_path / "tape.png")
    table = write_csv(pd.DataFrame({"path": ["tape.png"]}), tmp_path / "tapes.csv")
    dataset = build_table_dataset(TableDatasetConfig(
        table=str(table), channel_width=68, channels=["Hoechst", "tubulin", "Phalloidin"], bit_depth="uint16"))
    assert dataset.channel_names == ("dna", "microtubules", "actin")
    torch.testing.assert_close(dataset.load_image(0), torch.from_numpy(crop / 65535.0).float())

    jpeg = sorted((shared_data / "bccd-bloodcells" / "RBC").glob("*.jpg"))[0]
    rgb_table = write_csv(pd.DataFrame({"path": [str(jpeg)]}), tmp_path / "rgb.csv")
    rgb = build_table_dataset(TableDatasetConfig(table=str(rgb_table), bit_depth="uint8"))
    assert rgb.channel_names == ("red", "green", "blue")


# ------------------------------------------------------------------------------------------- bad inputs
def test_missing_table(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"metadata table not found: .*absent\.csv"):
        build_table_dataset(TableDatasetConfig(table=str(tmp_path / "absent.csv")))


def test_missing_column(shared_data: Path, tmp_path: Path) -> None:
    table = write_csv(bbbc021_rows(shared_data), tmp_path / "crops.csv")
    with pytest.raises(DataError, match=r"required column 'phase' \(data\.label_columns\) missing from table "
                                        r".*crops\.csv; available columns: path, moa, well, site, fov_id, channels"):
        build_table_dataset(config(table, shared_data, label_columns=["phase"]))
    with pytest.raises(DataError, match=r"'file' \(data\.path_column\)"):
        build_table_dataset(config(table, shared_data, path_column="file"))


def test_missing_file_names_row_and_path(shared_data: Path, tmp_path: Path) -> None:
    rows = bbbc021_rows(shared_data)
    rows.loc[2, "path"] = "images/B02/no_such_cell.tif"
    table = write_csv(rows, tmp_path / "crops.csv")
    expected = str(shared_data / "bbbc021-crops" / "images/B02/no_such_cell.tif")
    with pytest.raises(DataError, match=r"1 image file\(s\) not found: row 3 of .*crops\.csv \(1-based data row, "
                                        r"header excluded\): " + re.escape(expected)):
        build_table_dataset(config(table, shared_data))


def test_corrupt_image_error_and_skip(shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = bbbc021_rows(shared_data)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 truncated tiff")
    rows.loc[4, "path"] = str(broken)
    table = write_csv(rows, tmp_path / "crops.csv")
    with pytest.raises(DataError, match=r"resolve outside data\.root .*row 5 of .*crops\.csv"):
        build_table_dataset(config(table, shared_data, check_files="decode"))
    with pytest.raises(DataError, match=r"row 5 of .*crops\.csv .*could not decode TIFF file .*broken\.tif"):
        build_table_dataset(config(table, shared_data, check_files="decode", allow_outside_root=True))
    # with the default check the corrupt file is only found when it is read
    lazy = build_table_dataset(config(table, shared_data, allow_outside_root=True))
    with pytest.raises(DataError, match=r"row 5 of .*could not decode TIFF file .*broken\.tif"):
        lazy[4]

    with caplog.at_level(logging.WARNING, logger="cellssl.data.table"):
        dataset = build_table_dataset(config(table, shared_data, check_files="decode", on_corrupt="skip",
                                             label_columns=["moa"], allow_outside_root=True))
    assert len(dataset) == 11
    assert str(broken) not in {str(p) for i in range(len(dataset)) for p in dataset.files(i)}
    assert list(dataset.skipped["table_row"]) == [5]
    assert list(dataset.skipped["file"]) == [str(broken)]
    assert "could not decode TIFF" in dataset.skipped.loc[0, "error"]
    assert "skipped 1 of 12 rows" in caplog.text and "broken.tif" in caplog.text
    np.testing.assert_array_equal(dataset.row_numbers, [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12])
    assert dataset[4].meta["path"] == rows.loc[5, "path"]


def test_wrong_channel_count(shared_data: Path, tmp_path: Path) -> None:
    table = write_csv(bbbc021_rows(shared_data), tmp_path / "crops.csv")
    with pytest.raises(DataError, match=r"row 1 of .*crops\.csv .*fov00_s1_cell0000\.tif has 3 channels .* but "
                                        r"the dataset declares 2: \['dna', 'actin'\]"):
        build_table_dataset(config(table, shared_data, channels=["dna", "actin"]))


def test_channels_column_must_agree(shared_data: Path, tmp_path: Path) -> None:
    rows = bbbc021_rows(shared_data)
    rows.loc[7, "channels"] = "DAPI|Actin"
    table = write_csv(rows, tmp_path / "crops.csv")
    with pytest.raises(DataError, match=r"'channels' column differs between rows .*row 8 of .*'DAPI\|Actin'"):
        build_table_dataset(config(table, shared_data))


def test_unnamed_channels_need_a_declaration(shared_data: Path, tmp_path: Path) -> None:
    table = write_csv(bbbc021_rows(shared_data).drop(columns="channels"), tmp_path / "crops.csv")
    with pytest.raises(DataError, match=r"carries no channel names\. Set data\.channels"):
        build_table_dataset(config(table, shared_data))


def test_bad_bit_depth(shared_data: Path, tmp_path: Path) -> None:
    table = write_csv(bbbc021_rows(shared_data), tmp_path / "crops.csv")
    with pytest.raises(DataError, match=r"row 1 of .*: pixel values go up to \d+, above the declared bit depth "
                                        r"uint8 \(max 255\)\. Set data\.bit_depth to"):
        build_table_dataset(config(table, shared_data, bit_depth="uint8"))
    with pytest.raises(ValueError, match="bit_depth 'int16' is not valid"):
        config(table, shared_data, bit_depth="int16")


def test_filters_that_match_nothing(shared_data: Path, tmp_path: Path) -> None:
    table = write_csv(bbbc021_rows(shared_data), tmp_path / "crops.csv")
    with pytest.raises(DataError, match=r"no row of table .* matches data\.where \{'moa': 'Kinase'\}"):
        build_table_dataset(config(table, shared_data, where={"moa": "Kinase"}))
    with pytest.raises(DataError, match=r"has moa == 'test' \(data\.split\); values present: DMSO, Protein"):
        build_table_dataset(config(table, shared_data, split_column="moa", split="test"))
    with pytest.raises(DataError, match=r"'plate' \(data\.where\) missing"):
        build_table_dataset(config(table, shared_data, where={"plate": "P1"}))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"on_corrupt": "ignore"}, "on_corrupt must be one of"),
    ({"on_corrupt": "skip", "check_files": "none"}, "on_corrupt='skip' needs the files checked"),
    ({"check_files": "all"}, "check_files must be one of"),
    ({"split": "train"}, "needs split_column"),
    ({"limit": 0}, "limit must be a positive integer"),
    ({"channel_width": 0}, "channel_width must be a positive integer"),
    ({"channels": ["DAPI", "Hoechst"]}, "name the same channel twice"),
    ({"label_columns": ["a", "b"], "multilabel_separator": "|"}, "splits one label column"),
])
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TableDatasetConfig(table="t.csv", **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ labels
def test_multilabel_with_separator(shared_data: Path, tmp_path: Path) -> None:
    rows = bbbc021_rows(shared_data, 2)
    rows["tags"] = ["nucleus|actin", "actin", "", "mito | nucleus"]
    table = write_csv(rows, tmp_path / "crops.csv")
    dataset = build_table_dataset(config(table, shared_data, label_columns=["tags"], multilabel_separator="|"))
    labels = dataset.labels()
    assert labels.multilabel and labels.names == ["actin", "mito", "nucleus"]
    # the row with no tag is missing: it is skipped, not a row of zeros
    np.testing.assert_array_equal(labels.valid, [True, True, False, True])
    np.testing.assert_array_equal(labels.values, [[1, 0, 1], [1, 0, 0], [0, 1, 1]])


def test_multilabel_with_boolean_columns(shared_data: Path, tmp_path: Path) -> None:
    rows = bbbc021_rows(shared_data, 2)
    rows["Nucleoplasm"] = [True, False, True, False]
    rows["Cytosol"] = [1, 1, 0, 0]
    table = write_csv(rows, tmp_path / "crops.csv")
    dataset = build_table_dataset(config(table, shared_data, label_columns=["Nucleoplasm", "Cytosol"]))
    labels = dataset.labels()
    assert labels.multilabel and labels.names == ["Nucleoplasm", "Cytosol"]
    np.testing.assert_array_equal(labels.valid, [True, True, True, False])  # no label set: skipped
    np.testing.assert_array_equal(labels.values, [[1, 1], [0, 1], [1, 0]])

    rows["Cytosol"] = [1, 1, 2, 0]
    write_csv(rows, table)
    with pytest.raises(DataError, match=r"label column 'Cytosol' holds '2' at sample index 2"):
        build_table_dataset(config(table, shared_data, label_columns=["Nucleoplasm", "Cytosol"]))


def test_dataset_labels_multiclass_and_errors() -> None:
    meta = pd.DataFrame({"phase": ["S", "G1", "G2", "G1"], "n": [3, 1, 2, 1]})
    labels = dataset_labels(meta, ["phase"])
    assert labels.names == ["G1", "G2", "S"] and not labels.multilabel
    np.testing.assert_array_equal(labels.values, [2, 0, 1, 0])
    labels = dataset_labels(meta, ["n"])
    assert labels.names == ["1", "2", "3"]
    np.testing.assert_array_equal(labels.values, [2, 0, 1, 0])
    labels = dataset_labels(pd.DataFrame({"phase": ["S", None, "G1"]}), ["phase"])
    assert labels.missing == 1
    np.testing.assert_array_equal(labels.valid, [True, False, True])
    with pytest.raises(DataError, match=r"label columns \['moa'\] \(config key 'data.label_column'\) are not in"):
        dataset_labels(meta, ["moa"])
    with pytest.raises(ConfigError, match="no label column is set"):
        dataset_labels(meta, [])
    with pytest.raises(ConfigError, match="a separator splits one label column"):
        dataset_labels(meta, ["phase", "n"], separator="|")


def test_loading_stays_lazy(shared_data: Path, tmp_path: Path) -> None:
    """Nothing is cached: replacing a file on disk changes what the dataset returns."""
    rows = bbbc021_rows(shared_data, 1)
    local = tmp_path / "cell.tif"
    shutil.copy(shared_data / "bbbc021-crops" / rows.loc[0, "path"], local)
    rows.loc[0, "path"] = str(local)
    dataset = build_table_dataset(config(write_csv(rows, tmp_path / "c.csv"), shared_data, allow_outside_root=True))
    before = dataset.load_image(0)
    tifffile.imwrite(local, np.zeros((3, 68, 68), np.uint16), photometric="minisblack")
    assert float(before.sum()) > 0 and float(dataset.load_image(0).sum()) == 0.0
    assert isinstance(dataset, TableDataset)


def test_parse_flags_reads_boolean_columns_and_names_bad_values() -> None:
    from cellssl.data.labels import parse_flags

    series = pd.Series(["True", "0", None, "yes", " 1.0 ", "f"])
    np.testing.assert_array_equal(parse_flags(series, "column 'x'"), [True, False, False, True, True, False])
    np.testing.assert_array_equal(parse_flags(pd.Series([True, False]), "b"), [True, False])
    with pytest.raises(DataError, match=r"task column 'Task_one' of meta.csv holds 'maybe'; it must be True/False"):
        parse_flags(pd.Series(["true", "maybe"]), "task column 'Task_one' of meta.csv")
