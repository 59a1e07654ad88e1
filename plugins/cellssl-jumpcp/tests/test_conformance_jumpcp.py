"""The JUMP components pass cellssl.testing's contracts on the miniature JUMP source (real pixels, see conftest).

``jump_sites`` (whole sites, and tiles), ``jump_cells`` (CellProfiler locations, and DNA segmentation) pass the
dataset contract; ``jump_map`` passes the evaluator contract on per-channel intensity features of the fixture's
real cells, with the JUMP metadata tables joined.
"""

from __future__ import annotations

import pytest
from jump_fixture import PLATES

from cellssl.api import EmbeddingTable
from cellssl.testing.conformance import DatasetContract, EvaluatorContract
from cellssl_jumpcp.cells import build_jump_cells
from cellssl_jumpcp.config import JumpCellsConfig, JumpMapConfig, JumpMetadataConfig, JumpSitesConfig
from cellssl_jumpcp.evaluator import build_jump_map, intensity_features
from cellssl_jumpcp.sites import build_jump_sites

CHANNELS = ("dna", "er", "rna", "agp", "mito")
TABLES = JumpMetadataConfig(tables="metadata")


def _cells(jump, **kw) -> object:
    return build_jump_cells(JumpCellsConfig(root=str(jump.root), path_map=jump.path_map, **kw))


class TestJumpSitesContract(DatasetContract):
    expected_channels = CHANNELS
    expected_num_samples = 53  # the fixture's sites over both plates

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, jump):
        return build_jump_sites(JumpSitesConfig(root=str(jump.root), path_map=jump.path_map, metadata=TABLES))


class TestJumpSiteTilesContract(DatasetContract):
    expected_channels = CHANNELS
    expected_num_samples = 2 * 9  # two sites, tiles at offsets 0, 70, 140 in both axes

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, jump):
        return build_jump_sites(JumpSitesConfig(root=str(jump.root), path_map=jump.path_map, tile_size=100,
                                                tile_stride=70, limit=2))


class TestJumpCellsFromLocationsContract(DatasetContract):
    expected_channels = CHANNELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, jump):
        data = _cells(jump, crop_size=64, locations=["locations/*_nuclei.csv"], plates=["0042"], metadata=TABLES)
        assert len(data) == 9 * int((jump.sites["Metadata_Plate"] == "0042").sum())  # 9 placed nuclei per site
        return data


class TestJumpCellsSegmentedContract(DatasetContract):
    expected_channels = CHANNELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, jump):
        return _cells(jump, crop_size=48, min_area=60, plates=["1086292853"], max_cells_per_site=2, limit=6)


class TestJumpMapContract(EvaluatorContract):
    expected_metrics = ("activity_mean_average_precision", "activity_fraction_retrieved", "activity_groups")

    def make_evaluator(self):
        return build_jump_map(JumpMapConfig(null_size=200))

    @pytest.fixture(scope="class")
    @classmethod
    def table(cls, jump) -> EmbeddingTable:
        cells = _cells(jump, crop_size=64, locations=["locations/*_nuclei.csv"], metadata=TABLES)
        assert set(cells.metadata["Metadata_Plate"]) == set(PLATES)
        return EmbeddingTable(metadata=cells.metadata, embeddings=intensity_features(cells))

    def test_scores_the_fixture_perturbations(self, result) -> None:
        # the three protein-synthesis compounds have replicate wells; the single U2OS well has none
        assert result["metrics"]["activity_groups"] == 3
        assert sorted(row["Metadata_JCP2022"] for row in result["tables"]["activity"]) == [
            "JCP2022_900001", "JCP2022_900002", "JCP2022_900003"]
        assert result["counts"]["plates"] == 2 and result["counts"]["features"] == 4 * len(CHANNELS)
