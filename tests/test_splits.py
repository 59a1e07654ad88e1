"""Train/test splits of embedding metadata: cellssl.eval.engines.splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellssl.errors import ConfigError, DataError
from cellssl.eval.engines.splits import SplitConfig, make_split


def _metadata(n: int = 200) -> pd.DataFrame:
    rows = np.arange(n)
    return pd.DataFrame({
        "fov_id": rows // 8,                                     # 25 fields of view
        "plate": np.array(["P1", "P2", "P3", "P4"])[rows % 4],
        "split": np.where(rows < 150, "Train", np.where(rows < 180, "Task_one", "Task_two")),
    })


def _check_partition(train: np.ndarray, test: np.ndarray) -> None:
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # sorted, no duplicates
    assert not set(train) & set(test)
    assert train.size > 0 and test.size > 0


def test_group_split_keeps_every_group_on_one_side() -> None:
    meta = _metadata()
    config = SplitConfig(mode="group", column="fov_id", test_fraction=0.2, seed=3)
    train, test = make_split(meta, config)
    _check_partition(train, test)
    assert train.size + test.size == len(meta)
    train_groups, test_groups = set(meta.fov_id[train]), set(meta.fov_id[test])
    assert not train_groups & test_groups
    assert len(test_groups) == 5 and len(train_groups) == 20
    again = make_split(meta, config)
    np.testing.assert_array_equal(again[1], test)
    other = make_split(meta, SplitConfig(mode="group", column="fov_id", test_fraction=0.2, seed=4))
    assert set(meta.fov_id[other[1]]) != test_groups


def test_group_split_errors() -> None:
    meta = _metadata()
    meta.loc[[3, 9], "fov_id"] = np.nan
    with pytest.raises(DataError, match=r"group column 'fov_id' has 2 missing values \(first at row 3\)"):
        make_split(meta, SplitConfig(mode="group", column="fov_id"))
    with pytest.raises(DataError, match="has 1 distinct value"):
        make_split(meta.assign(one="x"), SplitConfig(mode="group", column="one"))
    with pytest.raises(DataError, match=r"split column 'well' \(config key 'split.column'\) is not in the metadata"):
        make_split(meta, SplitConfig(mode="group", column="well"))


def test_fraction_split_is_stratified_and_seeded() -> None:
    meta = _metadata(300)
    labels = np.repeat([0, 1, 2], [150, 100, 50])
    train, test = make_split(meta, SplitConfig(mode="fraction", test_fraction=0.2, seed=0), labels)
    _check_partition(train, test)
    assert test.size == 60 and train.size == 240
    assert np.bincount(labels[test]).tolist() == [30, 20, 10]
    same = make_split(meta, SplitConfig(mode="fraction", test_fraction=0.2, seed=0), labels)
    np.testing.assert_array_equal(same[1], test)
    other = make_split(meta, SplitConfig(mode="fraction", test_fraction=0.2, seed=1), labels)
    assert not np.array_equal(other[1], test)


def test_fraction_split_falls_back_when_a_class_is_a_singleton() -> None:
    meta = _metadata(50)
    labels = np.array([0] * 49 + [1])
    train, test = make_split(meta, SplitConfig(test_fraction=0.3), labels)
    _check_partition(train, test)
    assert test.size == 15 and train.size == 35
    with pytest.raises(DataError, match=r"cannot split 3 rows with test_fraction 0\.1"):
        make_split(meta.iloc[:3], SplitConfig(test_fraction=0.1))


def test_column_split_with_values_and_complement() -> None:
    meta = _metadata()
    train, test = make_split(meta, SplitConfig(mode="column", column="split", train_values=["Train"],
                                               test_values=["Task_one"]))
    _check_partition(train, test)
    assert train.tolist() == list(range(150)) and test.tolist() == list(range(150, 180))
    rest = make_split(meta, SplitConfig(mode="column", column="split", train_values=["Train"]))[1]
    assert rest.tolist() == list(range(150, 200))
    # YAML may give numbers for an integer column; values are compared as text.
    by_fov = make_split(meta, SplitConfig(mode="column", column="fov_id", train_values=["0", "1"],
                                          test_values=["2"]))
    assert by_fov[0].tolist() == list(range(16)) and by_fov[1].tolist() == list(range(16, 24))


def test_column_split_errors() -> None:
    meta = _metadata()
    with pytest.raises(DataError, match=r"split.test_values: values \['Task_nine'\] do not occur in column 'split'"):
        make_split(meta, SplitConfig(mode="column", column="split", train_values=["Train"],
                                     test_values=["Task_nine"]))
    with pytest.raises(DataError, match="leaves the test side empty"):
        make_split(meta, SplitConfig(mode="column", column="split",
                                     train_values=["Train", "Task_one", "Task_two"]))
    missing = meta.assign(split=meta["split"].where(meta.index != 0, None))
    train, _ = make_split(missing, SplitConfig(mode="column", column="split", train_values=["Train"]))
    assert 0 not in train and train.size == 149


def test_invalid_configs() -> None:
    with pytest.raises(ValueError, match=r"split\.mode: must be one of column, fraction, group, got 'random'"):
        SplitConfig(mode="random")
    with pytest.raises(ValueError, match=r"split\.column: is required when mode is 'group'"):
        SplitConfig(mode="group")
    with pytest.raises(ValueError, match=r"split.test_fraction: must be in \(0, 1\), got 1.5"):
        SplitConfig(test_fraction=1.5)
    with pytest.raises(ValueError, match=r"values \['A'\] are in both"):
        SplitConfig(mode="column", column="c", train_values=["A"], test_values=["A"])
    config = SplitConfig()
    config.mode = "column"  # mutated after validation: make_split checks again, naming the key
    with pytest.raises(ConfigError, match=r"config key 'eval\.split\.column': is required when mode is 'column'"):
        make_split(_metadata(), config, key="eval.split")
