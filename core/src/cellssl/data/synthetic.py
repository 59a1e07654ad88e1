"""``synthetic_cells``: procedural multi-channel cell images with known classes (the embedded default).

Each sample is drawn from its own seeded generator (dataset seed, sample index), so a sample is the
same whatever order it is read in and nothing is stored. Four phenotypes differ in the shape and
texture of their channels:

- ``round``: a small round nucleus, diffuse protein;
- ``large_nucleus``: a large, bright nucleus;
- ``elongated``: an elongated cell body and membrane;
- ``punctate``: protein concentrated in a few puncta.

Channels are ``dna``, ``protein`` and ``membrane`` (a prefix of them when ``num_channels < 3``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cellssl.data.dataset import CellDataset
from cellssl.data.synthetic_config import CHANNELS, CLASSES, SyntheticCellsConfig


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * cos + dy * sin) / rx
    v = (-dx * sin + dy * cos) / ry
    return u * u + v * v


def render_cell(label: int, size: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Render one cell of class ``label`` as float32 ``(3, size, size)`` in ``[0, 1]``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, size * 0.05, 2)
    angle = rng.uniform(0, np.pi)
    scale = size / 48
    body_r = rng.uniform(13, 16) * scale
    aspect = rng.uniform(1.8, 2.3) if CLASSES[label] == "elongated" else rng.uniform(0.9, 1.15)
    body = _ellipse(yy, xx, centre[0], centre[1], body_r / np.sqrt(aspect), body_r * np.sqrt(aspect), angle)
    nucleus_r = (rng.uniform(8, 10) if CLASSES[label] == "large_nucleus" else rng.uniform(4.5, 6)) * scale
    nucleus = _ellipse(yy, xx, centre[0], centre[1], nucleus_r, nucleus_r * rng.uniform(0.9, 1.2), angle)

    dna = np.clip(1.2 - nucleus, 0, 1) ** 0.5 * rng.uniform(0.6, 0.9)
    if CLASSES[label] == "large_nucleus":
        dna = dna * 1.1
    cytoplasm = (body < 1).astype(np.float32)
    protein = cytoplasm * rng.uniform(0.25, 0.4)
    if CLASSES[label] == "punctate":
        protein *= 0.3
        for _ in range(rng.integers(4, 8)):
            r, a = rng.uniform(0.3, 0.85) * body_r, rng.uniform(0, 2 * np.pi)
            py, px = centre[0] + r * np.sin(a), centre[1] + r * np.cos(a)
            protein += 0.8 * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * (1.3 * scale) ** 2))
    membrane = np.exp(-((np.sqrt(body) - 1.0) ** 2) / 0.01) * rng.uniform(0.5, 0.8)
    image = np.stack([dna, protein, membrane]).astype(np.float32)
    image += rng.normal(0, noise, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


class SyntheticCells(CellDataset):
    """Procedural cells; labels in the ``label`` column (class names) and ``label_id``."""

    def __init__(self, config: SyntheticCellsConfig) -> None:
        self.config = config
        labels = np.arange(config.num_samples) % config.num_classes
        self.metadata = pd.DataFrame(
            {
                "cell_id": np.arange(config.num_samples),
                "label": [CLASSES[i] for i in labels],
                "label_id": labels,
                "plate": [f"P{i % 2}" for i in range(config.num_samples)],
            }
        )
        self.channel_names = CHANNELS[: config.num_channels]
        self.label_columns = ("label",)

    def load_image(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.config.seed, index])
        label = int(self.metadata.at[index, "label_id"])
        image = render_cell(label, self.config.image_size, rng, self.config.noise)
        return torch.from_numpy(image[: self.config.num_channels].copy())


def build_synthetic_cells(config: SyntheticCellsConfig) -> SyntheticCells:
    """Factory of the ``synthetic_cells`` dataset."""
    return SyntheticCells(config)
