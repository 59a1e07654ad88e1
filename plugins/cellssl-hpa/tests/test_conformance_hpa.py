"""The HPA datasets pass cellssl.testing's dataset contract on the real-image HPA fixtures (conftest)."""

from __future__ import annotations

import pytest

from cellssl.testing.conformance import DatasetContract
from cellssl_hpa.config import HPAFovConfig, HPASingleCellConfig
from cellssl_hpa.dataset import build_hpa_fov, build_hpa_single_cell

CHANNELS = ("microtubules", "protein", "dna", "er")


class TestHPASingleCellContract(DatasetContract):
    expected_channels = CHANNELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, hpa):
        return build_hpa_single_cell(HPASingleCellConfig(root=str(hpa.root / "hpaone")))


class TestHPAFovContract(DatasetContract):
    expected_channels = CHANNELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, hpa):
        return build_hpa_fov(HPAFovConfig(root=str(hpa.root / "hpafov")))
