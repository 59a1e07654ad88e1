"""The CHAMMI datasets and the chammi evaluator pass cellssl.testing's contracts on the real-image fixture tree.

Datasets: each subset (``chammi_wtc``, ``chammi_hpa``, ``chammi_cp``) and the ``chammi`` dataset choosing one by
name. Evaluator: ``chammi`` over the WTC subset, scoring a table that holds exactly the subset's rows (so it
needs no model), with per-channel intensity features computed from the dataset's own images.
"""

from __future__ import annotations

import numpy as np
import pytest

from cellssl.embed.store import EmbeddingTable
from cellssl.testing.conformance import DatasetContract, EvaluatorContract
from cellssl_chammi.config import ChammiDatasetConfig, ChammiEvaluatorConfig, ChammiSubsetConfig
from cellssl_chammi.dataset import build_chammi_dataset
from cellssl_chammi.evaluator import ChammiEvaluator

LABELS = ("Label",)


class TestChammiWtcContract(DatasetContract):
    expected_num_samples = 64
    expected_channels = ("dna", "membrane", "protein")
    expected_label_columns = LABELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, chammi):
        return build_chammi_dataset(ChammiSubsetConfig(root=str(chammi.root)), "wtc")


class TestChammiHpaContract(DatasetContract):
    expected_num_samples = 54
    expected_channels = ("microtubules", "protein", "dna", "er")
    expected_label_columns = LABELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, chammi):
        return build_chammi_dataset(ChammiSubsetConfig(root=str(chammi.root)), "hpa")


class TestChammiCpContract(DatasetContract):
    expected_num_samples = 80
    expected_channels = ("dna", "er", "rna", "golgi", "mito")
    expected_label_columns = LABELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, chammi):
        return build_chammi_dataset(ChammiSubsetConfig(root=str(chammi.root)), "cp")


class TestChammiBySubsetNameContract(DatasetContract):
    """``data: {name: chammi, subset: cp, split: Train}``: the registered factory, one split."""

    expected_num_samples = 32  # 4 classes x 8 Train rows
    expected_channels = ("dna", "er", "rna", "golgi", "mito")
    expected_label_columns = LABELS

    @pytest.fixture(scope="class")
    @classmethod
    def dataset(cls, chammi):
        from cellssl_chammi.plugin import build_chammi

        return build_chammi(ChammiDatasetConfig(root=str(chammi.root), subset="cp", split="Train"))


def _intensity_features(dataset) -> np.ndarray:
    """Per channel: mean and standard deviation of the plane (``2 * C`` numbers per image)."""
    rows = []
    for index in range(len(dataset)):
        image = dataset[index].image.numpy().astype(np.float64)
        rows.append(np.concatenate([image.mean(axis=(1, 2)), image.std(axis=(1, 2))]))
    return np.asarray(rows, dtype=np.float32)


class TestChammiEvaluatorContract(EvaluatorContract):
    expected_metrics = ("knn_WTC_T1", "knn_WTC_T2", "knn_mean")

    @pytest.fixture(scope="class")
    @classmethod
    def evaluator(cls, chammi):
        return ChammiEvaluator(ChammiEvaluatorConfig(root=str(chammi.root), subsets=["wtc"]))

    @pytest.fixture(scope="class")
    @classmethod
    def table(cls, chammi):
        dataset = build_chammi_dataset(ChammiSubsetConfig(root=str(chammi.root)), "wtc")
        return EmbeddingTable(metadata=dataset.metadata.copy(), embeddings=_intensity_features(dataset))

    def test_scores_are_macro_f1_values(self, result) -> None:
        (row,) = result["table"]
        assert [result["metrics"][f"knn_WTC_{t}"] for t in ("T1", "T2")] == [row["WTC T1"], row["WTC T2"]]
        assert all(0.0 <= row[c] <= 1.0 for c in ("WTC T1", "WTC T2"))
        info = result["subsets"]["wtc"]
        assert (info["rows"], info["embedding_dim"], info["embeddings"]) == (64, 6, "embeddings")  # the table's
