"""What one optimisation step of the :class:`~cellssl.train.trainer.Trainer` must do, checked on real cells.

Each test drives the trainer itself (``Trainer.fit``) on Jurkat cells from ``../shared/data`` with a tiny ViT
and asserts the behaviour, not a proxy for it:

- the teacher is the EMA of the student: after one step with a constant momentum ``m``,
  ``teacher = m * initial + (1 - m) * student_after_step`` for every parameter;
- gradient clipping is applied: the total gradient norm the optimizer steps with never exceeds
  ``train.clip_grad`` (measured in an optimizer step pre-hook), while the unclipped norm does;
- the student really trains: a step moves every trainable parameter group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tifffile
import torch
from torch.utils.data import Dataset

from cellssl.data.multicrop import MultiCropConfig
from cellssl.data.normalize import PerImageNormalizer
from cellssl.data.sample import CellSample
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.objectives.dino import DINOConfig, DINOObjective, HeadConfig
from cellssl.train.config import TrainSection
from cellssl.train.trainer import Trainer

CHANNELS = ("brightfield", "dna", "darkfield")


class JurkatCells(Dataset):
    """Jurkat cells of one phase, read straight from their 16-bit OME-TIFFs and scaled to [0, 1]."""

    def __init__(self, root: Path, phase: str, count: int) -> None:
        meta = pd.read_csv(root / "metadata.csv")
        self.root = root
        self.paths = list(meta.loc[meta["phase"] == phase, "path"][:count])
        assert len(self.paths) == count, f"only {len(self.paths)} {phase} cells in {root}"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> CellSample:
        image = tifffile.imread(self.root / self.paths[index]).astype("float32") / 65535.0
        return CellSample(torch.from_numpy(image), CHANNELS, index)


def _objective() -> DINOObjective:
    config = DINOConfig(multicrop=MultiCropConfig(global_size=32, local_size=16, n_local=2),
                        head=HeadConfig(out_dim=32, hidden_dim=32, bottleneck_dim=16, nlayers=2),
                        centering="sinkhorn_knopp")
    vit = ViTConfig(arch="vit_tiny", patch_size=8, img_size=32, embed_dim=32, depth=2, num_heads=2,
                    layerscale_init=None)
    return DINOObjective(config, lambda: build_vit(vit, len(CHANNELS)))


def _trainer(tmp_path: Path, cells: Dataset, **train: Any) -> Trainer:
    section = TrainSection(**{"max_steps": 1, "batch_size": 8, "precision": "fp32", "lr": 1e-3, "lr_scaling": "none",
                              "warmup_epochs": 0, "teacher_temp_warmup_epochs": 0, "freeze_last_layer_epochs": 0,
                              "weight_decay": 0.0, "weight_decay_end": 0.0, "progress": False, **train})
    return Trainer(_objective(), [cells], PerImageNormalizer(), section, tmp_path, torch.device("cpu"), seed=0)


@pytest.fixture(scope="module")
def g1_cells(shared_data: Path) -> JurkatCells:
    return JurkatCells(shared_data / "jurkat-cellcycle", "G1", 16)


def test_teacher_is_the_momentum_average_of_its_start_and_the_stepped_student(tmp_path: Path,
                                                                              g1_cells: JurkatCells) -> None:
    m = 0.75
    trainer = _trainer(tmp_path, g1_cells, teacher_momentum=m, teacher_momentum_end=m)
    teacher = dict(trainer.objective.teacher.named_parameters())
    student = dict(trainer.objective.student.named_parameters())
    initial = {name: p.detach().clone() for name, p in teacher.items()}
    assert all(torch.equal(initial[name], student[name]) for name in initial)  # the teacher starts as a copy
    result = trainer.fit()
    assert result.step == 1 and result.last_record["momentum"] == m
    moved = 0.0
    for name, p in teacher.items():
        stepped = student[name].detach()
        expected = m * initial[name] + (1 - m) * stepped
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6, msg=name)
        moved += float((1 - m) * (stepped - initial[name]).abs().sum())
    # a teacher left at its initial weights would be off by (1 - m) x the student's step, far beyond 1e-6
    assert moved > 0.05
    exported = torch.load(tmp_path / "teacher_backbone.pt", weights_only=True)
    torch.testing.assert_close(exported["patch_embed.proj.weight"], teacher["backbone.patch_embed.proj.weight"])


def test_one_step_moves_every_trainable_tensor_of_the_student(tmp_path: Path, g1_cells: JurkatCells) -> None:
    trainer = _trainer(tmp_path, g1_cells, clip_grad=None)
    named = [(n, p) for n, p in trainer.objective.student.named_parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in named}
    trainer.fit()
    # the mask token only takes part in iBOT (not used by ``dino``): it keeps its value
    unchanged = [n for n, p in named if torch.equal(p.detach(), before[n])]
    assert unchanged == ["backbone.mask_token"]


def test_the_optimizer_never_steps_with_a_gradient_norm_above_clip_grad(tmp_path: Path,
                                                                       g1_cells: JurkatCells) -> None:
    clip = 0.05
    trainer = _trainer(tmp_path, g1_cells, max_steps=3, clip_grad=clip)
    seen: list[float] = []

    def total_norm(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.register_step_pre_hook(total_norm)
    records: list[dict[str, Any]] = []
    trainer.callbacks.append(lambda _, record: records.append(record))
    trainer.fit()
    assert len(seen) == 3
    unclipped = [r["grad_norm"] for r in records]
    assert min(unclipped) > 4 * clip  # clipping had work to do at every step
    assert max(seen) <= clip * (1 + 1e-5)
    assert seen == pytest.approx([clip] * 3, rel=1e-4)  # rescaled to the limit, direction kept


def test_clip_grad_leaves_small_gradients_alone(tmp_path: Path, g1_cells: JurkatCells) -> None:
    seen: list[float] = []
    records: list[dict[str, Any]] = []
    trainer = _trainer(tmp_path, g1_cells, max_steps=2, clip_grad=1e6)

    def total_norm(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.register_step_pre_hook(total_norm)
    trainer.callbacks.append(lambda _, record: records.append(record))
    trainer.fit()
    assert seen == pytest.approx([r["grad_norm"] for r in records], rel=1e-5)
