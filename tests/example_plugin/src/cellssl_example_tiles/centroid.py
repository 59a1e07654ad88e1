"""``nearest_centroid``: accuracy of assigning each test embedding to the closest class centroid."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from cellssl.api import DataError, EmbeddingTable, EvalContext, Evaluator
from cellssl_example_tiles.configs import NearestCentroidConfig


class NearestCentroid(Evaluator):
    """Cosine nearest-centroid classifier fitted on a stratified train split, scored once on test."""

    name = "nearest_centroid"

    def __init__(self, config: NearestCentroidConfig) -> None:
        self.config = config

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        column = self.config.label_column
        if column not in table.metadata.columns:
            raise DataError(f"nearest_centroid: label column '{column}' is not in the embeddings' metadata "
                            f"(columns: {list(table.metadata.columns)})")
        labels = table.metadata[column].astype(str).to_numpy()
        features = table.embeddings / np.linalg.norm(table.embeddings, axis=1, keepdims=True).clip(1e-12)
        train, test = train_test_split(np.arange(len(labels)), test_size=self.config.test_fraction,
                                       random_state=self.config.seed, stratify=labels)
        classes = np.unique(labels[train])
        centroids = np.stack([features[train][labels[train] == c].mean(0) for c in classes])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True).clip(1e-12)
        predicted = classes[np.argmax(features[test] @ centroids.T, axis=1)]
        accuracy = float(np.mean(predicted == labels[test]))
        return {"metrics": {"accuracy": accuracy}, "n_train": len(train), "n_test": len(test),
                "classes": classes.tolist(), "config": vars(self.config)}
