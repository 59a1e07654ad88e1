"""The synthetic_cells dataset: seeded, balanced, channel names from the vocabulary."""

from __future__ import annotations

import pytest
import torch

from cellssl.data.synthetic import SyntheticCells, SyntheticCellsConfig


def test_samples_are_deterministic_and_order_independent() -> None:
    a = SyntheticCells(SyntheticCellsConfig(num_samples=10, seed=1))
    b = SyntheticCells(SyntheticCellsConfig(num_samples=10, seed=1))
    c = SyntheticCells(SyntheticCellsConfig(num_samples=10, seed=2))
    assert torch.equal(a[7].image, b[7].image)
    assert not torch.equal(a[7].image, c[7].image)
    sample = a[3]
    assert sample.image.shape == (3, 48, 48) and sample.image.dtype == torch.float32
    assert sample.channels == ("dna", "protein", "membrane")
    assert float(sample.image.min()) >= 0.0 and float(sample.image.max()) <= 1.0
    assert sample.meta["label"] == "punctate" and sample.index == 3


def test_classes_are_balanced_and_phenotypes_differ() -> None:
    dataset = SyntheticCells(SyntheticCellsConfig(num_samples=40, num_classes=4))
    assert dataset.metadata["label"].value_counts().to_dict() == {
        "round": 10, "large_nucleus": 10, "elongated": 10, "punctate": 10}
    dna_area = {}
    for label in ("round", "large_nucleus"):
        rows = dataset.metadata.index[dataset.metadata["label"] == label][:5]
        dna_area[label] = sum(float((dataset[int(i)].image[0] > 0.3).sum()) for i in rows)
    assert dna_area["large_nucleus"] > 1.8 * dna_area["round"]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_channels must be between 1 and 3"):
        SyntheticCellsConfig(num_channels=4)
    with pytest.raises(ValueError, match="num_classes must be between 2 and 4"):
        SyntheticCellsConfig(num_classes=1)
