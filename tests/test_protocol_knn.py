"""DINOv2's weighted kNN (dinov2/eval/knn.py) against an independent torch computation of its definition.

DINOv2: features L2-normalised, similarity = cosine, the ``max(ks)`` most similar training rows, weights
``softmax(sim / T)`` over the top ``k`` (T = 0.07), class score = sum of the weights of the neighbours of that
class (``one_hot(labels) * weights`` summed over neighbours), prediction = argmax.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cellssl.eval.engines.knn import knn_classify


def dinov2_knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int, num_classes: int,
               temperature: float = 0.07) -> torch.Tensor:
    """Class probabilities as DINOv2's KnnModule computes them, written again with torch."""
    train = torch.nn.functional.normalize(torch.from_numpy(train_x).double(), dim=1)
    test = torch.nn.functional.normalize(torch.from_numpy(test_x).double(), dim=1)
    similarity = test @ train.T
    top_sims, indices = similarity.topk(k, largest=True, sorted=True)
    labels = torch.from_numpy(train_y)[indices]
    weights = torch.softmax(top_sims / temperature, dim=1)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).double()
    return (one_hot * weights[:, :, None]).sum(dim=1)


@pytest.fixture(scope="module")
def jurkat(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel intensity statistics of 600 real Jurkat cells (4 phases) and their phase."""
    import tifffile

    meta = pd.read_csv(shared_data / "jurkat-cellcycle" / "metadata.csv")
    meta = meta[meta["phase"].isin(["G1", "S_phase", "G2", "Prophase"])].groupby("phase").head(150)
    rows = []
    for path in meta["path"]:
        image = tifffile.imread(shared_data / "jurkat-cellcycle" / path).astype(np.float64)
        rows.append(np.concatenate([image.mean(axis=(1, 2)), image.std(axis=(1, 2)),
                                    np.percentile(image, [10, 50, 90], axis=(1, 2)).ravel()]))
    x = np.asarray(rows, dtype=np.float32)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x, pd.factorize(meta["phase"], sort=True)[0].astype(np.int64)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_weighted_knn_equals_dinov2_definition(jurkat, k: int) -> None:
    x, y = jurkat
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:450], order[450:]
    ours = knn_classify(x[train], y[train], x[test], ks=[k], metric="cosine", temperature=0.07,
                        voting="weighted", num_classes=4)[k]
    reference = dinov2_knn(x[train], y[train], x[test], k, 4)
    np.testing.assert_allclose(ours.scores, reference.numpy(), atol=1e-5)
    assert (ours.labels == reference.argmax(dim=1).numpy()).mean() == 1.0
    np.testing.assert_allclose(ours.scores.sum(axis=1), 1.0, atol=1e-5)


def test_temperature_changes_the_votes_as_the_softmax_does() -> None:
    # one test row; neighbours: two of class 1 at cosine 0.9, one of class 0 at cosine 1.0
    train = np.array([[1.0, 0.0], [0.9, np.sqrt(1 - 0.81)], [0.9, -np.sqrt(1 - 0.81)]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    for temperature in (0.07, 1.0):
        weight_0 = 1.0 / (1.0 + 2.0 * np.exp((0.9 - 1.0) / temperature))  # softmax weight of the class-0 row
        scores = knn_classify(train, labels, query, ks=[3], temperature=temperature, num_classes=2)[3].scores
        np.testing.assert_allclose(scores[0], [weight_0, 1 - weight_0], atol=1e-6)
    # T = 0.07 lets the single nearest row win (weight 0.61), T = 1 lets the two class-1 rows win
    assert knn_classify(train, labels, query, ks=[3], temperature=0.07, num_classes=2)[3].labels[0] == 0
    assert knn_classify(train, labels, query, ks=[3], temperature=1.0, num_classes=2)[3].labels[0] == 1
