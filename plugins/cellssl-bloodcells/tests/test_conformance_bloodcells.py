"""The ``bloodcells`` dataset passes cellssl.testing's dataset contract on real BCCD crops."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellssl.testing.conformance import DatasetContract
from cellssl_bloodcells.config import BloodCellsConfig
from cellssl_bloodcells.dataset import build_bloodcells_dataset


class TestBloodCellsDatasetContract(DatasetContract):
    expected_num_samples = 6
    expected_channels = ("red", "green", "blue")

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, shared_data: Path):
        config = BloodCellsConfig(root=str(shared_data / "bccd-bloodcells"), classes=["WBC", "RBC", "Platelets"],
                                  split="all", limit=6)
        return build_bloodcells_dataset(config)
