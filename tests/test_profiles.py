"""Profiles: aggregation per group and per-plate normalisation against controls, checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

from cellssl.errors import DataError
from cellssl.eval.engines.profiles import (
    COUNT_COLUMN,
    MAD_TO_STD,
    ProfileConfig,
    aggregate_profiles,
    build_profiles,
    constant_column,
    normalize_profiles,
)


def _cells() -> tuple[np.ndarray, pd.DataFrame]:
    embeddings = np.array([[1, 10], [3, 20], [8, 60], [0, 5], [2, 7]], dtype=np.float32)
    metadata = pd.DataFrame({
        "well": ["B02", "B02", "B02", "A01", "A01"],
        "moa": ["DMSO", "DMSO", "DMSO", "X", "X"],
        "cell": [0, 1, 2, 3, 4],
        "site": [1, 1, 1, 1, 2],
    })
    return embeddings, metadata


def test_mean_aggregation_by_hand_keeps_constant_columns() -> None:
    embeddings, metadata = _cells()
    profiles, meta = aggregate_profiles(embeddings, metadata, ["well"], "mean")
    # groups are sorted by key: A01 first
    np.testing.assert_allclose(profiles, [[1.0, 6.0], [4.0, 30.0]])
    assert list(meta["well"]) == ["A01", "B02"]
    assert list(meta["moa"]) == ["X", "DMSO"]
    assert list(meta[COUNT_COLUMN]) == [2, 3]
    assert "cell" not in meta.columns  # varies within every group
    assert "site" not in meta.columns  # varies within A01


def test_median_aggregation_by_hand() -> None:
    embeddings, metadata = _cells()
    profiles, _ = aggregate_profiles(embeddings, metadata, ["well"], "median")
    np.testing.assert_allclose(profiles, [[1.0, 6.0], [3.0, 20.0]])


def test_two_grouping_columns_and_no_grouping() -> None:
    embeddings, metadata = _cells()
    profiles, meta = aggregate_profiles(embeddings, metadata, ["well", "site"], "mean")
    np.testing.assert_allclose(profiles, [[0, 5], [2, 7], [4, 30]])
    assert meta[["well", "site"]].values.tolist() == [["A01", 1], ["A01", 2], ["B02", 1]]
    same, meta_all = aggregate_profiles(embeddings, metadata, [], "mean")
    np.testing.assert_array_equal(same, embeddings)
    assert len(meta_all) == 5 and (meta_all[COUNT_COLUMN] == 1).all()


def test_aggregation_errors_name_the_problem() -> None:
    embeddings, metadata = _cells()
    with pytest.raises(DataError, match=r"columns \['plate'\] \(config key 'profiles.group_by'\)"):
        aggregate_profiles(embeddings, metadata, ["plate"])
    metadata.loc[2, "well"] = None
    with pytest.raises(DataError, match="1 rows have a missing value in the grouping columns"):
        aggregate_profiles(embeddings, metadata, ["well"])
    with pytest.raises(ValueError, match="method must be one of"):
        aggregate_profiles(embeddings, metadata, [], "max")


def test_constant_column_explains_a_varying_column() -> None:
    embeddings, metadata = _cells()
    _, meta = aggregate_profiles(embeddings, metadata, ["well"])
    assert list(constant_column(meta, "moa", ["well"], "k")) == ["X", "DMSO"]
    with pytest.raises(DataError, match=r"'site' .* varies within the groups of \['well'\]"):
        constant_column(meta, "site", ["well"], "eval.batch_column")


def test_standardize_per_plate_against_controls_by_hand() -> None:
    profiles = np.array([[1.0], [3.0], [10.0], [100.0], [104.0], [50.0]])
    meta = pd.DataFrame({"plate": ["p1", "p1", "p1", "p2", "p2", "p2"]})
    controls = np.array([True, True, False, True, True, False])
    out = normalize_profiles(profiles, meta, "standardize", controls, "plate", epsilon=0.0)
    # p1 controls 1, 3: mean 2, std 1; p2 controls 100, 104: mean 102, std 2
    np.testing.assert_allclose(out[:, 0], [-1, 1, 8, -1, 1, -26])
    everything = normalize_profiles(profiles, meta, "standardize", None, "", epsilon=0.0)
    np.testing.assert_allclose(everything[:, 0], (profiles[:, 0] - profiles.mean()) / profiles.std(), rtol=1e-6)


def test_robust_mad_by_hand() -> None:
    profiles = np.array([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [5.0, 3.0]])
    meta = pd.DataFrame({"plate": ["p"] * 4})
    controls = np.array([True, True, True, False])
    out = normalize_profiles(profiles, meta, "mad", controls, "plate", epsilon=1e-6)
    # column 0: median 2, MAD median(|-1, 0, 2|) = 1; column 1: constant controls, MAD 0 -> eps
    np.testing.assert_allclose(out[:, 0], np.array([-1, 0, 2, 3]) / (MAD_TO_STD + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(out[3, 1], 3.0 / 1e-6, rtol=1e-5)


def test_sphering_whitens_the_controls_with_the_symmetric_inverse_square_root() -> None:
    rng = np.random.default_rng(0)
    mixing = np.array([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [0.3, -0.2, 1.0]])
    controls = rng.normal(size=(300, 3)) @ mixing.T + np.array([5.0, -1.0, 2.0])
    treated = rng.normal(size=(20, 3)) + 4.0
    profiles = np.vstack([controls, treated])
    meta = pd.DataFrame({"plate": ["p"] * len(profiles)})
    is_control = np.arange(len(profiles)) < 300
    out = normalize_profiles(profiles, meta, "sphering", is_control, "", epsilon=0.0)
    whitened = out[is_control].astype(np.float64)
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.cov(whitened.T, ddof=0), np.eye(3), atol=1e-4)
    # ZCA: the unique symmetric whitening matrix, C^(-1/2), computed independently with scipy
    centre = controls.mean(axis=0)
    inv_sqrt = np.real(scipy.linalg.sqrtm(np.linalg.inv(np.cov(controls.T, ddof=0))))
    np.testing.assert_allclose(out[~is_control], (treated - centre) @ inv_sqrt, rtol=1e-4, atol=1e-4)


def test_normalisation_needs_two_controls_per_plate() -> None:
    profiles = np.ones((4, 2))
    meta = pd.DataFrame({"plate": ["p1", "p1", "p2", "p2"]})
    controls = np.array([True, True, True, False])
    with pytest.raises(DataError, match=r"plate 'p2' \(column 'plate'\) has 1 reference"):
        normalize_profiles(profiles, meta, "mad", controls, "plate")
    assert normalize_profiles(profiles, meta, "none", controls, "plate").dtype == np.float32


def test_build_profiles_aggregates_then_normalises_against_controls() -> None:
    embeddings = np.array([[0.0], [2.0], [4.0], [6.0], [20.0], [22.0]], dtype=np.float32)
    metadata = pd.DataFrame({"well": ["a", "a", "b", "b", "c", "c"], "moa": ["DMSO"] * 4 + ["X"] * 2})
    config = ProfileConfig(group_by=["well"], normalize="standardize", epsilon=0.0)
    profiles, meta = build_profiles(embeddings, metadata, config,
                                    lambda m: (m["moa"] == "DMSO").to_numpy())
    # well means 1, 5, 21; controls a, b: mean 3, std 2
    np.testing.assert_allclose(profiles[:, 0], [-1.0, 1.0, 9.0])
    assert list(meta["well"]) == ["a", "b", "c"]


def test_profile_config_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="normalize must be one of"):
        ProfileConfig(normalize="zscore")
    with pytest.raises(ValueError, match="aggregate must be one of"):
        ProfileConfig(aggregate="max")
    with pytest.raises(ValueError, match="duplicate"):
        ProfileConfig(group_by=["well", "well"])
