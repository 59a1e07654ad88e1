"""Checkpoint edge cases: empty, truncated and refused files, key_prefix into a DINO v1 student, stale
temporary files of killed writes, and a resumed run without a checkpoint."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from torch.utils.data import Dataset

from cellssl.atomic import PROCESS_START, is_temp_name, remove_stale_temp_files
from cellssl.cli import main
from cellssl.data.multicrop import MultiCropConfig
from cellssl.data.normalize import PerImageNormalizer
from cellssl.data.sample import CellSample
from cellssl.errors import CheckpointError
from cellssl.models.checkpoint import describe_load_error, extract_state_dict, load_backbone_weights
from cellssl.models.vit import VisionTransformer, ViTConfig, build_vit
from cellssl.objectives.dino import DINOConfig, DINOObjective, HeadConfig
from cellssl.train.checkpointing import load_checkpoint, save_checkpoint
from cellssl.train.config import TrainSection
from cellssl.train.trainer import Trainer

CHANNELS = ("brightfield", "dna", "darkfield")
HOUR = 3600.0


def tiny(in_chans: int = 3) -> VisionTransformer:
    config = ViTConfig(arch="vit_small", patch_size=4, img_size=16, embed_dim=16, depth=2, num_heads=2,
                       layerscale_init=1.0)
    return build_vit(config, in_chans).eval()


def saved_weights(path: Path) -> Path:
    torch.save({"teacher": {f"backbone.{k}": v for k, v in tiny().state_dict().items()}}, path)
    return path


# ----------------------------------------------------------------------------- empty and damaged files


def test_zero_byte_file_is_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "teacher_backbone.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"teacher_backbone\.pt: the checkpoint is empty \(0 bytes\): the "
                                              r"write or copy .* did not finish\. Download or export the weights "
                                              r"again") as err:
        load_backbone_weights(tiny(), empty)
    assert "\n" not in str(err.value)
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    last.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last\.pt: the training checkpoint is empty \(0 bytes\).*Delete it to "
                                              r"restart training from step 0, or restore it from a copy\."):
        load_checkpoint(last)


@pytest.mark.parametrize("keep", [100, 0.5, -10], ids=["first-100-bytes", "half", "all-but-10-bytes"])
def test_truncated_file_names_its_size_and_torchs_reason(tmp_path: Path, keep: float) -> None:
    data = saved_weights(tmp_path / "full.pt").read_bytes()
    cut = data[: int(len(data) * keep)] if isinstance(keep, float) else data[:keep]
    path = tmp_path / "cut.pt"
    path.write_bytes(cut)
    pattern = (r"cut\.pt: cannot be read with torch\.load\(weights_only=True\) \((RuntimeError|OSError): [^)]+"
               rf"\): the checkpoint \({len(cut)} bytes\) is truncated or damaged")
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_backbone_weights(tiny(), path)
    assert "\n" not in str(err.value)


def test_not_a_torch_file_and_a_damaged_training_checkpoint(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.pt"
    garbage.write_bytes(b"these are my notes, not weights")
    with pytest.raises(CheckpointError, match=r"notes\.pt: cannot be read .*\(\w+Error: [^)]+\): the checkpoint "
                                              r"\(31 bytes\) is truncated or damaged .*not a file written by torch"):
        load_backbone_weights(tiny(), garbage)
    last = save_checkpoint(tmp_path / "checkpoints" / "last.pt", {"step": 3})
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot be read .*the training checkpoint \(100 bytes\) is "
                                              r"truncated or damaged.*Delete it to restart training from step 0"):
        load_checkpoint(last)


def test_describe_load_error_never_returns_an_empty_reason() -> None:
    assert describe_load_error(EOFError()) == "EOFError"
    assert describe_load_error(RuntimeError("\x1b[1mbold\x1b[0m first. More.\nsecond")) == "RuntimeError: bold first"
    assert describe_load_error(OSError(22, "Invalid argument")) == "OSError: [Errno 22] Invalid argument"


# ----------------------------------------------------------------------------- refused pickles


class Settings:
    """A user's config object pickled into a checkpoint by a training script run as ``__main__``."""

    def __init__(self) -> None:
        self.lr = 0.1


def test_refused_numpy_global_is_named_without_escape_codes(tmp_path: Path) -> None:
    path = tmp_path / "with_numpy.pth"
    torch.save({"model": tiny().state_dict(), "best_score": np.array([0.5, 0.7])}, path)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(tiny(), path)
    message = str(err.value)
    assert re.search(r"with_numpy\.pth: cannot be read with torch\.load\(weights_only=True\): the checkpoint stores "
                     r"the Python object\(s\) numpy\.(_core|core)\.multiarray\._reconstruct, ", message), message
    assert "numpy.ndarray" in message and "numpy.dtype" in message  # the other refused globals, listed once each
    assert message.count("_reconstruct") == 1
    assert "\x1b" not in message and "\n" not in message
    assert "torch.save(checkpoint['model'], 'weights.pt')" in message


def test_refused_main_class_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Settings, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Settings", Settings, raising=False)
    path = tmp_path / "dino4cells.pth"
    torch.save({"teacher": tiny().state_dict(), "config": Settings(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"dino4cells\.pth: .*stores the Python object\(s\) __main__\.Settings, "
                                              r"which cellssl does not unpickle") as err:
        load_backbone_weights(tiny(), path)
    assert "\x1b" not in str(err.value) and "Namespace" not in str(err.value)  # allowed for DINO v1 checkpoints
    last = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(last, {"step": 1, "config": Settings()})
    with pytest.raises(CheckpointError, match=r"last\.pt: .*the training checkpoint stores the Python object\(s\) "
                                              r"__main__\.Settings"):
        load_checkpoint(last)


# ----------------------------------------------------------------------------- key_prefix


def dino_v1_checkpoint(path: Path) -> tuple[VisionTransformer, VisionTransformer]:
    """A DINO v1 ``checkpoint.pth``: DDP-wrapped student (``module.backbone.``), plain teacher, argparse args."""
    teacher, student = tiny(), tiny()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.25)
    obj = {
        "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()}
        | {"module.head.last_layer.weight": torch.ones(8, 16)},
        "teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()}
        | {"head.last_layer.weight": torch.ones(8, 16)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        "epoch": 10,
        "args": argparse.Namespace(arch="vit_small", patch_size=4),
    }
    torch.save(obj, path)
    return teacher, student


def _equal(model: VisionTransformer, reference: VisionTransformer) -> bool:
    ref = reference.state_dict()
    return all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("prefix", ["student.backbone.", "student.module.backbone."])
def test_key_prefix_selects_the_student_of_a_dino_v1_checkpoint(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "checkpoint.pth"
    teacher, student = dino_v1_checkpoint(path)
    model = tiny()
    load_backbone_weights(model, path, key_prefix=prefix)
    assert _equal(model, student) and not _equal(model, teacher)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), student(x))


def test_default_and_teacher_prefix_still_take_the_teacher(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    teacher, _ = dino_v1_checkpoint(path)
    for prefix in (None, "teacher.backbone.", "backbone."):  # "backbone." applies inside the chosen teacher entry
        model = tiny()
        load_backbone_weights(model, path, key_prefix=prefix)
        assert _equal(model, teacher), prefix


def test_key_prefix_without_match_lists_the_nested_paths(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pth"
    dino_v1_checkpoint(path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, weights_only=True, map_location="cpu")
    with pytest.raises(CheckpointError, match=r"no key starts with key_prefix 'students\.backbone\.'; keys look "
                                              r"like student\.module\.backbone\.blocks\.0\..*Set key_prefix"):
        extract_state_dict(obj, key_prefix="students.backbone.", source=str(path))


def test_key_prefix_inside_a_dinov2_model_entry_still_works() -> None:
    state = tiny().state_dict()
    obj = {"model": {f"teacher.backbone.{k}": v for k, v in state.items()}
           | {f"student.backbone.{k}": v + 1 for k, v in state.items()}, "iteration": 3}
    selected = extract_state_dict(obj, key_prefix="student.backbone.")
    assert torch.equal(selected["cls_token"], state["cls_token"] + 1) and len(selected) == len(state)


# ----------------------------------------------------------------------------- stale temporary files


def test_killed_write_leaves_a_temp_file_that_is_removed_once_stale(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    code = (
        "import os, signal, sys\n"
        "from cellssl.atomic import atomic_open\n"
        "with atomic_open(sys.argv[1], 'wb') as handle:\n"
        "    handle.write(b'x' * 4096)\n"
        "    handle.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(folder / "last.pt")], timeout=60)
    assert result.returncode == -9
    leftovers = list(folder.iterdir())
    assert len(leftovers) == 1 and is_temp_name(leftovers[0].name) and leftovers[0].name.startswith(".last.pt.")
    assert not (folder / "last.pt").exists()

    # written after this process started: it may be a live write, so it stays
    assert remove_stale_temp_files(folder) == [] and leftovers[0].exists()
    other = {name: folder / name for name in ("last.pt", ".notes.tmp", ".last.pt.short.tmp", "keep.tmp")}
    for path in other.values():
        path.write_bytes(b"1")
    for path in [leftovers[0], *other.values()]:
        os.utime(path, (PROCESS_START - HOUR, PROCESS_START - HOUR))
    assert remove_stale_temp_files(folder) == [leftovers[0]]
    assert sorted(p.name for p in folder.iterdir()) == sorted(other)  # only the writer's pattern is touched
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_explicit_cutoff(tmp_path: Path) -> None:
    stale = tmp_path / ".final.pt.ab_cd123.tmp"
    stale.write_bytes(b"")
    now = time.time()
    assert remove_stale_temp_files(tmp_path, before=now - HOUR) == []
    assert remove_stale_temp_files(tmp_path, before=now + HOUR) == [stale] and not stale.exists()


# ----------------------------------------------------------------------------- trainer: resume without a checkpoint


class JurkatCells(Dataset):
    """The first ``count`` Jurkat cells, 16-bit OME-TIFFs scaled to [0, 1]."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        self.paths = list(pd.read_csv(root / "metadata.csv")["path"][:count])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> CellSample:
        image = tifffile.imread(self.root / self.paths[index]).astype("float32") / 65535.0
        return CellSample(torch.from_numpy(image), CHANNELS, index)


def _trainer(run_dir: Path, cells: Dataset, **train: Any) -> Trainer:
    objective = DINOObjective(
        DINOConfig(multicrop=MultiCropConfig(global_size=32, local_size=16, n_local=2),
                   head=HeadConfig(out_dim=16, hidden_dim=16, bottleneck_dim=8, nlayers=2), centering="sinkhorn_knopp"),
        lambda: build_vit(ViTConfig(arch="vit_tiny", patch_size=8, img_size=32, embed_dim=16, depth=1, num_heads=2,
                                    layerscale_init=None), len(CHANNELS)),
    )
    section = TrainSection(**{"max_steps": 2, "batch_size": 4, "precision": "fp32", "lr": 1e-3, "lr_scaling": "none",
                              "warmup_epochs": 0, "teacher_temp_warmup_epochs": 0, "freeze_last_layer_epochs": 0,
                              "progress": False, **train})
    return Trainer(objective, [cells], PerImageNormalizer(), section, run_dir, torch.device("cpu"), seed=0)


def test_resume_without_checkpoint_starts_from_step_0_and_cleans_stale_temps(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cells = JurkatCells(shared_data / "jurkat-cellcycle", 8)
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True)
    stale, live = folder / ".last.pt.k3j9x_2a.tmp", folder / ".last.pt.zz9q8w7e.tmp"
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    os.utime(stale, (PROCESS_START - HOUR, PROCESS_START - HOUR))
    caplog.set_level(logging.INFO)
    result = _trainer(run_dir, cells, resume=True).fit()
    assert result.step == 2 and result.completed
    assert re.search(r"train\.resume is true but there is no checkpoint to resume from \(.*checkpoints/last\.pt does "
                     r"not exist\): starting from step 0", caplog.text)
    assert "removed 1 temporary file(s) left by interrupted writes" in caplog.text
    assert ".last.pt.k3j9x_2a.tmp" in caplog.text
    assert not stale.exists() and live.exists()
    assert load_checkpoint(folder / "last.pt")["step"] == 2

    caplog.clear()
    fresh = _trainer(tmp_path / "fresh", cells).fit()
    assert fresh.step == 2 and re.search(r"no checkpoint at .*fresh/checkpoints/last\.pt: starting from step 0",
                                         caplog.text)

    (folder / "last.pt").write_bytes(b"")  # e.g. copied in from a full disk
    with pytest.raises(CheckpointError, match=r"last\.pt: the training checkpoint is empty \(0 bytes\)"):
        _trainer(run_dir, cells, max_steps=3).fit()


# ----------------------------------------------------------------------------- CLI


def test_cli_embed_with_a_zero_byte_weights_file_exits_2(shared_data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "teacher_backbone.pt"
    weights.write_bytes(b"")
    config = tmp_path / "embed.yaml"
    config.write_text(
        f"run: {{output_dir: {tmp_path / 'run'}, stages: [embed]}}\n"
        f"data: {{name: table, root: {shared_data / 'jurkat-cellcycle'}, table: metadata.csv, bit_depth: uint16, "
        "limit: 8}\n"
        "channels: {name: fixed}\n"
        "backbone: {name: vit_tiny, patch_size: 8, img_size: 40, embed_dim: 16, depth: 1, num_heads: 2}\n"
        "embed: {img_size: 40, batch_size: 8}\n"
    )
    assert main(["embed", str(config), f"weights={weights}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cellssl: error: ") and "Traceback" not in err
    assert f"{weights}: the checkpoint is empty (0 bytes)" in err
    assert "Download or export the weights again, or point `weights:` at another checkpoint." in err
    assert len(err.strip().splitlines()) == 1
