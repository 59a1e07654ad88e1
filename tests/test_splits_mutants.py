"""Edges of cellssl.eval.engines.splits that mutation testing found unpinned: boundaries, messages, sort order.

Expected splits are computed independently (scikit-learn's ``train_test_split`` for ``fraction``, NumPy's
seeded permutation over the sorted group values for ``group``) and compared row for row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from cellssl.errors import ConfigError, DataError
from cellssl.eval.engines.splits import SplitConfig, _check_sides, make_split


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame({"row": np.arange(n)})


def _sklearn(n: int, n_test: int, seed: int, stratify: np.ndarray | None) -> tuple[list[int], list[int]]:
    train, test = train_test_split(np.arange(n), test_size=n_test, random_state=seed, stratify=stratify)
    return sorted(train.tolist()), sorted(test.tolist())


def _as_lists(split: tuple[np.ndarray, np.ndarray]) -> tuple[list[int], list[int]]:
    return split[0].tolist(), split[1].tolist()


# ------------------------------------------------------------------------------------------------ config checks


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_test_fraction_bounds_are_exclusive(fraction: float) -> None:
    with pytest.raises(ValueError, match=rf"^split\.test_fraction: must be in \(0, 1\), got {fraction}$"):
        SplitConfig(test_fraction=fraction)


def test_column_mode_messages_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^split\.train_values: is required when mode is 'column' "
                                         r"\(values of the train rows\)$"):
        SplitConfig(mode="column", column="plate")
    with pytest.raises(ValueError, match=r"^split\.test_values: values \['1', 'A'\] are in both train_values "
                                         r"and test_values$"):
        SplitConfig(mode="column", column="plate", train_values=["A", 1, "B"], test_values=["A", "1"])


# ------------------------------------------------------------------------------------------------ _check_sides


def test_check_sides_names_the_empty_side() -> None:
    empty = np.array([], dtype=np.int64)
    with pytest.raises(DataError, match=r"^the demo split leaves the train side empty \(0 train, 2 test\)$"):
        _check_sides(empty, np.array([4, 1]), "demo")
    with pytest.raises(DataError, match=r"^the demo split leaves the test side empty \(1 train, 0 test\)$"):
        _check_sides(np.array([3]), empty, "demo")
    train, test = _check_sides(np.array([5]), np.array([2, 0]), "demo")  # one row on a side is enough
    assert train.tolist() == [5] and test.tolist() == [0, 2] and train.dtype == test.dtype == np.int64


# ------------------------------------------------------------------------------------------------ column mode


def test_column_split_errors_name_key_side_and_values() -> None:
    meta = pd.DataFrame({"well": [f"W{i:02d}" for i in range(30)]})
    with pytest.raises(DataError) as info:
        make_split(meta, SplitConfig(mode="column", column="well", train_values=["W00", "nope"]), key="eval.split")
    shown = sorted(meta["well"])[:20]
    assert str(info.value) == (f"eval.split.train_values: values ['nope'] do not occur in column 'well'; "
                               f"values there include {shown}")
    with pytest.raises(DataError, match=r"split column 'plate' \(config key 'eval\.split\.column'\)"):
        make_split(meta, SplitConfig(mode="column", column="plate", train_values=["x"]), key="eval.split")
    with pytest.raises(DataError, match=r"^the column 'well' split leaves the test side empty \(30 train, 0 test\)$"):
        make_split(meta, SplitConfig(mode="column", column="well", train_values=list(meta["well"])))


def test_column_split_with_a_single_train_row() -> None:
    meta = pd.DataFrame({"part": ["train"] + ["test"] * 4})
    assert _as_lists(make_split(meta, SplitConfig(mode="column", column="part", train_values=["train"]))) == (
        [0], [1, 2, 3, 4])


# ------------------------------------------------------------------------------------------------ fraction mode


def test_fraction_split_of_two_rows_puts_one_on_each_side() -> None:
    train, test = make_split(_rows(2), SplitConfig(test_fraction=0.5, seed=0))
    assert sorted(train.tolist() + test.tolist()) == [0, 1] and train.size == test.size == 1


@pytest.mark.parametrize(("n", "fraction"), [(3, 0.9), (4, 0.1), (1, 0.5)])
def test_fraction_split_refuses_an_empty_side(n: int, fraction: float) -> None:
    with pytest.raises(DataError, match=rf"^cannot split {n} rows with test_fraction {fraction}: a side would be "
                                        "empty$"):
        make_split(_rows(n), SplitConfig(test_fraction=fraction))


def test_fraction_split_stratifies_when_the_smallest_class_has_two_rows() -> None:
    labels = np.array([0] * 18 + [1] * 2)
    split = make_split(_rows(20), SplitConfig(test_fraction=0.5, seed=7), labels)
    assert _as_lists(split) == _sklearn(20, 10, 7, labels)
    assert np.bincount(labels[split[1]]).tolist() == [9, 1]


def test_fraction_split_stratifies_at_one_test_or_train_row_per_class() -> None:
    labels = np.repeat([0, 1, 2], 10)
    # 3 test rows for 3 classes: still stratified, one of each class in test
    split = make_split(_rows(30), SplitConfig(test_fraction=0.1, seed=2), labels)
    assert _as_lists(split) == _sklearn(30, 3, 2, labels)
    assert np.bincount(labels[split[1]]).tolist() == [1, 1, 1]
    # 3 train rows for 3 classes: still stratified, one of each class in train
    split = make_split(_rows(30), SplitConfig(test_fraction=0.9, seed=2), labels)
    assert _as_lists(split) == _sklearn(30, 27, 2, labels)
    assert np.bincount(labels[split[0]]).tolist() == [1, 1, 1]


def test_fraction_split_falls_back_when_train_is_smaller_than_the_classes() -> None:
    labels = np.repeat([0, 1, 2], 10)
    fraction = 28 / 30  # 2 train rows for 3 classes: cannot be stratified
    split = make_split(_rows(30), SplitConfig(test_fraction=fraction, seed=5), labels)
    assert _as_lists(split) == _sklearn(30, 28, 5, None)


def test_fraction_split_without_stratify_ignores_the_labels() -> None:
    labels = np.repeat([0, 1], [30, 10])
    config = SplitConfig(test_fraction=0.25, seed=3, stratify=False)
    split = make_split(_rows(40), config, labels)
    assert _as_lists(split) == _sklearn(40, 10, 3, None)
    assert _as_lists(split) != _sklearn(40, 10, 3, labels)  # the stratified split differs for this seed


def test_fraction_split_does_not_stratify_multilabel_labels() -> None:
    labels = np.zeros((40, 2), dtype=int)
    labels[:10, 0] = 1
    labels[10:14, 1] = 1
    split = make_split(_rows(40), SplitConfig(test_fraction=0.25, seed=3), labels)
    assert _as_lists(split) == _sklearn(40, 10, 3, None)
    assert _as_lists(split) != _sklearn(40, 10, 3, labels)  # stratifying the label rows would differ


def test_fraction_split_label_count_must_match_rows() -> None:
    with pytest.raises(DataError, match=r"^got 3 labels for 20 metadata rows$"):
        make_split(_rows(20), SplitConfig(), np.array([0, 1, 0]))


# ------------------------------------------------------------------------------------------------ group mode


def _expected_group_split(values: list[str], n_test: int, seed: int) -> tuple[list[int], list[int]]:
    groups = sorted(set(values))  # groups are numbered in sorted order, then permuted by the seed
    test_groups = {groups[g] for g in np.random.default_rng(seed).permutation(len(groups))[:n_test]}
    test = [i for i, v in enumerate(values) if v in test_groups]
    return [i for i in range(len(values)) if i not in test], test


def test_group_split_numbers_groups_in_sorted_order() -> None:
    values = [v for v in ["plate_j", "plate_c", "plate_h", "plate_a", "plate_f", "plate_b"] for _ in range(3)]
    meta = pd.DataFrame({"plate": values})
    for seed in (0, 1, 2):
        split = make_split(meta, SplitConfig(mode="group", column="plate", test_fraction=0.34, seed=seed))
        assert _as_lists(split) == _expected_group_split(values, 2, seed)


def test_group_split_with_two_groups() -> None:
    meta = pd.DataFrame({"plate": ["B", "A", "B", "A", "A"]})
    train, test = make_split(meta, SplitConfig(mode="group", column="plate", test_fraction=0.5, seed=0))
    assert {tuple(train.tolist()), tuple(test.tolist())} == {(1, 3, 4), (0, 2)}


def test_group_split_test_group_count_is_clamped() -> None:
    values = [f"g{i}" for i in range(10) for _ in range(2)]
    meta = pd.DataFrame({"g": values})
    # round(0.05 * 10) = 0 test groups: raised to 1
    small = make_split(meta, SplitConfig(mode="group", column="g", test_fraction=0.05, seed=4))
    assert _as_lists(small) == _expected_group_split(values, 1, 4)
    # round(0.9 * 4) = 4 test groups of 4: lowered to 3, one group trains
    four = pd.DataFrame({"g": values[:8]})
    large = make_split(four, SplitConfig(mode="group", column="g", test_fraction=0.9, seed=4))
    assert _as_lists(large) == _expected_group_split(values[:8], 3, 4)
    assert large[0].size == 2


def test_group_split_missing_values_message() -> None:
    meta = pd.DataFrame({"fov": [1.0, None, 2.0]})
    with pytest.raises(DataError, match=r"^group column 'fov' has 1 missing values \(first at row 1\); fill them or "
                                        r"drop those rows before a group split$"):
        make_split(meta, SplitConfig(mode="group", column="fov"))


def test_make_split_rechecks_a_config_changed_after_construction() -> None:
    config = SplitConfig()
    config.test_fraction = 1.0
    with pytest.raises(ConfigError, match=r"eval\.split\.test_fraction"):
        make_split(_rows(5), config, key="eval.split")
