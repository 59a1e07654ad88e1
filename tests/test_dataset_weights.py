"""Mixed-dataset training draws each dataset in proportion to its weight, in the samples the trainer really loads.

Two sources of real Jurkat cells (``../shared/data``): 24 G1 cells and 8 Prophase cells. Sampled in proportion
to their sizes the Prophase cells would be 1/4 of what training sees; with weights 1 : 3 they must be 3/4.
Every ``(index, seed)`` key the training DataLoader fetches from the trainer's
:class:`~cellssl.train.data.ViewDataset` is recorded, first through ``cellssl run`` with
``train.extra_datasets`` (config -> plan -> trainer), then with the :class:`~cellssl.train.trainer.Trainer`
built directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset

from cellssl.cli import main
from cellssl.data.multicrop import MultiCropConfig
from cellssl.data.normalize import PerImageNormalizer
from cellssl.data.sample import CellSample
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.objectives.dino import DINOConfig, DINOObjective, HeadConfig
from cellssl.train.config import TrainSection
from cellssl.train.data import ViewDataset
from cellssl.train.trainer import Trainer

N_MAIN, N_EXTRA, WEIGHT = 24, 8, 3.0
STEPS, BATCH = 4, 32  # 128 draws: the weighted share is 0.75 +- 0.04 (one standard deviation)
CHANNELS = ("brightfield", "dna", "darkfield")


def _record_fetches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], int]]:
    """Record ``(dataset sizes, global index)`` of every item a ViewDataset hands to the DataLoader."""
    fetched: list[tuple[list[int], int]] = []
    original = ViewDataset.__getitem__

    def getitem(self: ViewDataset, key: tuple[int, int]) -> dict[str, Any]:
        fetched.append((list(self.sizes), int(key[0])))
        return original(self, key)

    monkeypatch.setattr(ViewDataset, "__getitem__", getitem)
    return fetched


def _check_mix(fetched: list[tuple[list[int], int]]) -> None:
    assert len(fetched) == STEPS * BATCH
    assert {tuple(sizes) for sizes, _ in fetched} == {(N_MAIN, N_EXTRA)}
    indices = np.array([i for _, i in fetched])
    extra = indices[indices >= N_MAIN] - N_MAIN
    share = len(extra) / len(indices)
    # weight 3 of 4 -> 0.75; sampling by size would give 8 / 32 = 0.25 (12 standard deviations away)
    assert abs(share - WEIGHT / (WEIGHT + 1)) < 0.12, share
    counts = np.bincount(extra, minlength=N_EXTRA)
    assert counts.max() - counts.min() <= 1  # the small dataset is cycled through, every cell in turn
    assert len(set(indices[indices < N_MAIN].tolist())) == N_MAIN  # the main dataset: every cell at least once


def _table(root: Path, phase: str, limit: int) -> dict[str, Any]:
    return {"name": "table", "root": str(root), "table": "metadata.csv", "bit_depth": "uint16",
            "where": {"phase": phase}, "limit": limit}


def test_cellssl_run_samples_extra_datasets_by_their_weights(shared_data: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = shared_data / "jurkat-cellcycle"
    config = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0, "device": "cpu", "stages": ["train"],
                "num_threads": 1},
        "data": _table(root, "G1", N_MAIN),
        "channels": {"name": "fixed"},
        "backbone": {"name": "vit_tiny", "patch_size": 8, "img_size": 16, "embed_dim": 16, "depth": 1,
                     "num_heads": 2, "layerscale_init": None},
        "normalize": {"mode": "per_image"},
        "objective": {"name": "dino", "multicrop": {"global_size": 16, "local_size": 8, "n_local": 1},
                      "head": {"out_dim": 16, "hidden_dim": 16, "bottleneck_dim": 8, "nlayers": 2}},
        "train": {"max_steps": STEPS, "batch_size": BATCH, "epoch_length": STEPS * BATCH, "precision": "fp32",
                  "lr_scaling": "none", "warmup_epochs": 0, "progress": False, "checkpoint_every_steps": 1000,
                  "data_weight": 1.0, "extra_datasets": [{"data": _table(root, "Prophase", N_EXTRA),
                                                          "weight": WEIGHT}]},
    }
    path = tmp_path / "mixed.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    fetched = _record_fetches(monkeypatch)
    assert main(["run", str(path)]) == 0
    _check_mix(fetched)


class JurkatCells(Dataset):
    """The first ``count`` Jurkat cells of one phase, straight from their 16-bit OME-TIFFs."""

    def __init__(self, root: Path, phase: str, count: int) -> None:
        meta = pd.read_csv(root / "metadata.csv")
        self.root, self.paths = root, list(meta.loc[meta["phase"] == phase, "path"][:count])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> CellSample:
        image = tifffile.imread(self.root / self.paths[index]).astype(np.float32) / 65535.0
        return CellSample(torch.from_numpy(image), CHANNELS, index)


def test_the_trainer_draws_each_dataset_in_proportion_to_its_weight(shared_data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = shared_data / "jurkat-cellcycle"
    datasets = [JurkatCells(root, "G1", N_MAIN), JurkatCells(root, "Prophase", N_EXTRA)]
    vit = ViTConfig(arch="vit_tiny", patch_size=8, img_size=16, embed_dim=16, depth=1, num_heads=2,
                    layerscale_init=None)
    objective = DINOObjective(DINOConfig(multicrop=MultiCropConfig(global_size=16, local_size=8, n_local=1),
                                         head=HeadConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, nlayers=2)),
                              lambda: build_vit(vit, 3))
    section = TrainSection(max_steps=STEPS, batch_size=BATCH, epoch_length=STEPS * BATCH, precision="fp32",
                           lr_scaling="none", warmup_epochs=0, progress=False, checkpoint_every_steps=1000)
    trainer = Trainer(objective, datasets, PerImageNormalizer(), section, tmp_path, torch.device("cpu"), seed=0,
                      weights=[1.0, WEIGHT])
    fetched = _record_fetches(monkeypatch)
    assert trainer.fit().step == STEPS
    _check_mix(fetched)
