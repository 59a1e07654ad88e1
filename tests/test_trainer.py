"""The trainer on tiny models: resume equivalence, NaN stop, metrics, precisions, strategies, collapse warning."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cellssl.errors import ConfigError, TrainingDivergedError
from cellssl.models.checkpoint import load_backbone_weights
from cellssl.pipeline import TEACHER_BACKBONE_FILE, start_run
from cellssl.train.checkpointing import capture_rng_state, load_checkpoint, restore_rng_state
from cellssl.train.data import BatchPlan
from cellssl.train.monitor import CollapseMonitor, CollapseWarning, collapse_stats
from cellssl.train.schedules import ScheduleSet
from cellssl.train.stage import train_run

VIT = {"name": "vit_tiny", "patch_size": 4, "img_size": 16, "embed_dim": 16, "depth": 2, "num_heads": 2,
       "layerscale_init": None}
HEAD = {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "nlayers": 2}


def _config(run_dir: Path, **sections: Any) -> Any:
    """A tiny run: 24 synthetic 16 px cells, a 2-block ViT, 2 global + 2 local crops, 3 steps per epoch."""
    config = {
        "run": {"output_dir": str(run_dir), "seed": 0, "device": "cpu", "stages": ["train"]},
        "data": {"name": "synthetic_cells", "num_samples": 24, "image_size": 16},
        "channels": {"name": "fixed"},
        "backbone": dict(VIT),
        "objective": {"name": "dino", "multicrop": {"global_size": 16, "local_size": 8, "n_local": 2},
                      "head": dict(HEAD), "centering": "sinkhorn_knopp"},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "lr_scaling": "none", "warmup_epochs": 1,
                  "teacher_temp_warmup_epochs": 1, "freeze_last_layer_epochs": 0, "progress": False,
                  "checkpoint_every_steps": 2},
    }
    for key, value in sections.items():
        replace = key == "backbone" and value.get("name", VIT["name"]) != VIT["name"]
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) and not replace else value
    return OmegaConf.create(config)


def _train(config: Any, callbacks: list | None = None) -> Any:
    return train_run(start_run(config), callbacks=callbacks)


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)["objective"]


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class InterruptError(Exception):
    """Raised by a callback to simulate a crash after k steps."""


def test_interrupted_run_resumes_to_the_same_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sections = {"backbone": {"drop_path_rate": 0.2}, "objective": {"name": "dinov2", "centering": "ema"},
                "train": {"epochs": 3}}
    straight = _train(_config(tmp_path / "straight", **sections))
    assert straight.completed and straight.step == 9

    def interrupt(trainer: Any, record: dict) -> None:
        if trainer.step == 5:  # checkpoint at step 4, step 5 is lost and redone
            raise InterruptError

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(InterruptError):
        _train(_config(resumed_dir, **sections), callbacks=[interrupt])
    assert load_checkpoint(resumed_dir / "checkpoints" / "last.pt")["step"] == 4
    caplog.set_level("INFO")
    # the resumed part uses a DataLoader worker: batches do not depend on the worker count
    result = _train(_config(resumed_dir, **{**sections, "train": {"epochs": 3, "num_workers": 1}}))
    assert "resumed from" in caplog.text and "at step 4/9 (epoch 1, batch 1)" in caplog.text
    assert result.step == 9
    assert _same(_final_state(tmp_path / "straight"), _final_state(resumed_dir))
    a, b = _metrics(tmp_path / "straight"), _metrics(resumed_dir)
    assert [r["step"] for r in b] == list(range(1, 10))  # the line of the lost step 5 was dropped
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_killed_process_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """SIGKILL a training process after 3 steps (checkpoint at 2), resume here, compare with a straight run."""
    straight = tmp_path / "straight"
    _train(_config(straight))
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from omegaconf import OmegaConf
        from cellssl.pipeline import start_run
        from cellssl.train.stage import train_run
        torch.manual_seed(0)
        torch.set_num_threads(1)
        config = OmegaConf.create({json.dumps(OmegaConf.to_container(_config(killed)))!r})
        def kill(trainer, record):
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        train_run(start_run(config), callbacks=[kill])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CELLSSL_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (killed / "checkpoints" / "final.pt").exists()
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["step"] == 2
    _train(_config(killed))
    assert _same(_final_state(straight), _final_state(killed))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    def poison(trainer: Any, record: dict) -> None:
        if trainer.step == 3:
            with torch.no_grad():
                trainer.objective.student.backbone.patch_embed.proj.weight.fill_(float("nan"))

    with pytest.raises(TrainingDivergedError, match=r"training diverged at step 4 \(epoch 1\): the loss is nan; the "
                                                    r"last good checkpoint .*last\.pt is kept\. Lower train\.lr"):
        _train(_config(tmp_path), callbacks=[poison])
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert checkpoint["step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["objective"].values() if v.is_floating_point())
    assert not (tmp_path / TEACHER_BACKBONE_FILE).exists()


def test_metrics_jsonl_checkpoints_and_exported_teacher(tmp_path: Path) -> None:
    result = _train(_config(tmp_path, train={"log_every": 2, "weight_decay": 0.04, "weight_decay_end": 0.2}))
    assert result.completed and result.total_steps == 6
    records = _metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6]
    schedules = ScheduleSet(6, lr=1e-3, min_lr=1e-6, warmup_steps=3, weight_decay=0.04, weight_decay_end=0.2,
                            teacher_temp=0.07, warmup_teacher_temp=0.04, teacher_temp_warmup_steps=3)
    for record in records:
        values = schedules.values(record["step"] - 1)
        assert record["lr"] == pytest.approx(values.lr) and record["wd"] == pytest.approx(values.weight_decay)
        assert record["teacher_temp"] == pytest.approx(values.teacher_temp)
        assert record["momentum"] == pytest.approx(values.teacher_momentum)
        assert record["epoch"] == (record["step"] - 1) // 3
        assert record["teacher_entropy_max"] == pytest.approx(math.log(32))
        assert 0 < record["teacher_entropy"] <= record["teacher_entropy_max"] + 1e-6
        assert record["images_per_s"] > 0 and record["grad_norm"] > 0 and record["collapse"] in (0.0, 1.0, 2.0)
        assert math.isfinite(record["loss"]) and record["loss"] == record["dino_loss"]
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "final.pt")
    assert checkpoint["step"] == 6 and checkpoint["epoch"] == 2 and checkpoint["batch_in_epoch"] == 0
    assert set(checkpoint["rng"]) >= {"python", "numpy", "torch"}
    from cellssl.models.vit import ViTConfig, build_vit

    backbone = build_vit(ViTConfig(**{k: v for k, v in VIT.items() if k != "name"}, arch="vit_tiny"), 3)
    load_backbone_weights(backbone, tmp_path / TEACHER_BACKBONE_FILE)
    teacher = {k[len("teacher.backbone."):]: v for k, v in checkpoint["objective"].items()
               if k.startswith("teacher.backbone.")}
    assert _same(backbone.state_dict(), teacher)
    from_checkpoint = build_vit(ViTConfig(**{k: v for k, v in VIT.items() if k != "name"}, arch="vit_tiny"), 3)
    load_backbone_weights(from_checkpoint, tmp_path / "checkpoints" / "final.pt")  # `weights:` may name it too
    assert _same(from_checkpoint.state_dict(), teacher)


def test_bf16_and_fp32_paths(tmp_path: Path) -> None:
    runs = {p: _train(_config(tmp_path / p, train={"precision": p, "max_steps": 2})) for p in ("fp32", "bf16")}
    losses = {p: _metrics(tmp_path / p)[0]["loss"] for p in runs}
    assert all(r.step == 2 for r in runs.values())
    assert losses["fp32"] != losses["bf16"]  # bf16 matmuls really ran
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def _training_channels(run_dir: Path, strategy: str) -> tuple[list[int], list[tuple[str, ...]]]:
    """Train 2 steps with ``strategy``; return the trainer's dataset sizes and every training sample's channels."""
    found: dict[str, Any] = {}

    def inspect(trainer: Any, record: dict) -> None:
        dataset = trainer.views.datasets[0]
        found["sizes"] = list(trainer.views.sizes)
        found["channels"] = [dataset[i].channels for i in range(len(dataset))]

    _train(_config(run_dir, channels={"name": strategy}, train={"max_steps": 2}), callbacks=[inspect])
    return found["sizes"], found["channels"]


def test_fixed_trains_a_c_channel_backbone_and_bag_of_channels_a_single_channel_one(tmp_path: Path) -> None:
    sizes, channels = _training_channels(tmp_path / "fixed", "fixed")
    assert sizes == [24] and set(channels) == {("dna", "protein", "membrane")}
    sizes, channels = _training_channels(tmp_path / "bag", "bag_of_channels")
    assert sizes == [72]  # N x C single-channel samples, every channel of every image
    assert channels[:3] == [("dna",), ("protein",), ("membrane",)] and channels.count(("membrane",)) == 24
    fixed = torch.load(tmp_path / "fixed" / TEACHER_BACKBONE_FILE, weights_only=True)
    bag = torch.load(tmp_path / "bag" / TEACHER_BACKBONE_FILE, weights_only=True)
    assert fixed["patch_embed.proj.weight"].shape == (16, 3, 4, 4)
    assert bag["patch_embed.proj.weight"].shape == (16, 1, 4, 4)


def test_dino_on_resnet_and_dinov2_with_ibot_on_vit(tmp_path: Path) -> None:
    _train(_config(tmp_path / "resnet", backbone={"name": "resnet18", "stem": "small"},
                   train={"max_steps": 2, "batch_size": 4}))
    assert torch.load(tmp_path / "resnet" / TEACHER_BACKBONE_FILE, weights_only=True)["conv1.weight"].shape[1] == 3
    _train(_config(tmp_path / "dinov2", objective={"name": "dinov2", "ibot": {"mask_sample_probability": 1.0}},
                   train={"max_steps": 2}))
    records = _metrics(tmp_path / "dinov2")
    assert all(r["ibot_loss"] > 0 and r["koleo_loss"] != 0 for r in records)


class _JurkatCells(torch.utils.data.Dataset):
    """Every 200th Jurkat cell of ``../shared/data`` (3 channels, 40 px), read straight from its OME-TIFF."""

    def __init__(self, root: Path, count: int) -> None:
        import pandas as pd

        self.root, self.paths = root, list(pd.read_csv(root / "metadata.csv")["path"][::200][:count])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        import tifffile

        from cellssl.data.sample import CellSample

        image = tifffile.imread(self.root / self.paths[index]).astype(np.float32) / 65535.0
        return CellSample(torch.from_numpy(image), ("brightfield", "dna", "darkfield"), index)


def test_dino_training_of_a_resnet_changes_every_weight_and_lowers_the_loss(tmp_path: Path,
                                                                            shared_data: Path) -> None:
    """Four DINO steps on real cells: the loss of a fixed batch of views falls by more than 10 % (6.45 -> 5.15
    measured), every student tensor moves, and the teacher follows by EMA (its BatchNorm weights leave 1)."""
    from cellssl.data.multicrop import MultiCropConfig
    from cellssl.data.normalize import PerImageNormalizer
    from cellssl.models.resnet import ResNetConfig, build_resnet
    from cellssl.objectives.dino import DINOConfig, DINOObjective, HeadConfig
    from cellssl.train.config import TrainSection
    from cellssl.train.trainer import Trainer

    cells = _JurkatCells(shared_data / "jurkat-cellcycle", 16)
    objective = DINOObjective(DINOConfig(multicrop=MultiCropConfig(global_size=16, local_size=8, n_local=2),
                                         head=HeadConfig(out_dim=32, hidden_dim=32, bottleneck_dim=16, nlayers=2),
                                         centering="sinkhorn_knopp"),
                              lambda: build_resnet(ResNetConfig(arch="resnet18", stem="small"), 3))
    section = TrainSection(max_steps=4, batch_size=4, precision="fp32", lr=1e-3, lr_scaling="none", warmup_epochs=0,
                           teacher_temp=0.04, warmup_teacher_temp=0.04, teacher_temp_warmup_epochs=0,
                           teacher_momentum=0.9, teacher_momentum_end=0.9, freeze_last_layer_epochs=0,
                           progress=False, checkpoint_every_steps=1000)
    trainer = Trainer(objective, [cells], PerImageNormalizer(), section, tmp_path, torch.device("cpu"), seed=0)
    views = objective.make_views(PerImageNormalizer())
    batch = objective.make_collate()([{**views(cells[i], torch.Generator().manual_seed(i)), "seed": i}
                                      for i in range(8)])

    def fixed_batch_loss() -> float:
        with torch.no_grad():
            return float(objective(batch, teacher_temp=0.04).loss)

    before = {k: v.clone() for k, v in objective.student.state_dict().items() if v.is_floating_point()}
    start = fixed_batch_loss()
    losses: list[float] = []
    trainer.callbacks.append(lambda _, record: losses.append(record["loss"]))
    assert trainer.fit().completed
    end = fixed_batch_loss()
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert end < 0.9 * start, (start, end)
    params = dict(objective.student.named_parameters())
    trainable = [k for k, p in params.items() if p.requires_grad]
    assert len(trainable) == len(params) - 1  # the prototypes' norm (weight_g) is fixed by norm_last_layer
    assert [k for k in trainable if torch.equal(params[k].detach(), before[k])] == []  # every tensor trained
    teacher_bn = objective.teacher.backbone.bn1.weight
    assert 1e-4 < float((teacher_bn - 1).abs().max()) < float((params["backbone.bn1.weight"].detach() - 1).abs().max())
    exported = torch.load(tmp_path / TEACHER_BACKBONE_FILE, weights_only=True)
    assert exported["conv1.weight"].shape == (64, 3, 3, 3)
    torch.testing.assert_close(exported["bn1.weight"], teacher_bn.detach())


def test_mixed_datasets_are_sampled_by_weight(tmp_path: Path) -> None:
    extra = {"data": {"name": "synthetic_cells", "num_samples": 12, "image_size": 16, "num_channels": 2, "seed": 1},
             "weight": 3.0}
    result = _train(_config(tmp_path, channels={"name": "per_channel_concat"},
                            train={"extra_datasets": [extra], "data_weight": 1.0, "max_steps": 2}))
    assert result.step == 2
    plan = BatchPlan([72, 24], batch_size=8, seed=0, weights=[1.0, 3.0], epoch_length=4000)
    indices, seeds = plan.epoch(0)
    share_extra = float((indices >= 72).mean())
    assert 0.72 < share_extra < 0.78  # weight 3 of 4
    assert np.bincount(indices[indices >= 72] - 72, minlength=24).min() >= 40  # cycles through every sample
    assert len(set(seeds.tolist())) == 4000


def test_batch_plan_is_a_pure_function_of_seed_and_epoch() -> None:
    plan = BatchPlan([20], batch_size=6, seed=3)
    assert plan.steps_per_epoch == 3
    full = plan.batches(1)
    assert full == BatchPlan([20], batch_size=6, seed=3).batches(1)
    assert plan.batches(1, start=2) == full[2:]
    assert len({i for batch in full for i, _ in batch}) == 18
    assert full != plan.batches(0) and full != BatchPlan([20], batch_size=6, seed=4).batches(1)
    with pytest.raises(ConfigError, match=r"train\.batch_size.*is 30 but an epoch has only 20 training samples"):
        BatchPlan([20], batch_size=30, seed=0)


def test_collapse_warning_fires_on_a_uniform_teacher(tmp_path: Path) -> None:
    def force_uniform(trainer: Any) -> None:
        with torch.no_grad():  # identical prototypes: every score is the same, the teacher output is uniform
            trainer.objective.teacher.dino_head.last_layer.weight_v.copy_(
                trainer.objective.teacher.dino_head.last_layer.weight_v[:1].expand(32, -1))

    def at_start(trainer: Any, record: dict) -> None:
        force_uniform(trainer)

    config = _config(tmp_path, train={"teacher_momentum": 1.0, "teacher_momentum_end": 1.0, "max_steps": 5,
                                      "collapse": {"patience": 2}})
    with pytest.warns(CollapseWarning, match=r"collapse at step 3: the teacher output has been nearly uniform"):
        _train(config, callbacks=[at_start])
    records = _metrics(tmp_path)
    assert records[-1]["collapse"] == 1.0
    assert records[-1]["teacher_entropy"] == pytest.approx(math.log(32), rel=1e-4)


def test_collapse_stats_and_one_hot_detection() -> None:
    probs = torch.full((4, 8), 1 / 8)
    stats = collapse_stats(probs, torch.ones(4, 5))
    assert stats["teacher_entropy"] == pytest.approx(math.log(8)) and stats["embed_std"] == 0.0
    one_hot = torch.zeros(4, 8)
    one_hot[:, 3] = 1.0
    monitor = CollapseMonitor()
    monitor.config.patience = 3
    assert monitor.classify(collapse_stats(one_hot)) == "one_hot"
    with pytest.warns(CollapseWarning, match="sent every image to the same prototype for 3 steps"):
        for step in range(3):
            assert monitor.update(step, one_hot)["collapse"] == 2.0
    spread = torch.eye(8)[:4]  # sharp but different prototypes: healthy
    assert monitor.update(4, spread)["collapse"] == 0.0 and monitor.count == 0
    stats = collapse_stats(spread, torch.eye(4, 5))
    assert stats["teacher_mean_entropy"] == pytest.approx(math.log(4)) and stats["teacher_entropy"] == 0.0
    assert stats["embed_std"] == pytest.approx(float(torch.eye(4, 5).std(0).mean()))


def test_resume_rules_and_completed_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    assert _train(_config(tmp_path / "none", train={"resume": True, "max_steps": 1})).step == 1
    assert "there is no checkpoint to resume from" in caplog.text and "starting from step 0" in caplog.text
    _train(_config(tmp_path / "done", train={"max_steps": 2}))
    before = (tmp_path / "done" / "metrics.jsonl").read_text()
    caplog.set_level("INFO")
    result = _train(_config(tmp_path / "done", train={"max_steps": 2, "resume": True}))
    assert result.completed and "training already complete (2/2 steps)" in caplog.text
    assert (tmp_path / "done" / "metrics.jsonl").read_text() == before
    with pytest.raises(ConfigError, match=r"holds the outputs of the train stage\(s\) of another config: changed keys "
                                          r"objective\.head\.out_dim.*--restart"):
        _train(_config(tmp_path / "done", objective={"head": {**HEAD, "out_dim": 16}}, train={"max_steps": 3}))
    assert "out_dim: 16" not in (tmp_path / "done" / "config.yaml").read_text()  # the valid config is kept


def test_time_limit_tensorboard_and_missing_objective(tmp_path: Path) -> None:
    result = _train(_config(tmp_path / "timed", train={"max_minutes": 1e-6, "log_every": 5}))
    assert result.stopped_by_time and result.step == 1 and not result.completed
    assert [r["step"] for r in _metrics(tmp_path / "timed")] == [1]  # the last step is logged on a stop
    assert load_checkpoint(tmp_path / "timed" / "checkpoints" / "last.pt")["step"] == 1
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"train\.tensorboard.*pip install tensorboard"):
            _train(_config(tmp_path / "tb", train={"tensorboard": True}))
    config = _config(tmp_path / "noobj")
    del config["objective"]
    with pytest.raises(ConfigError, match=r"config key 'objective': is required to train"):
        _train(config)
    views = {"global_size": 16, "local_size": 8, "n_local": 2, "normalize": {"mode": "per_image"}}
    with pytest.raises(ConfigError, match=r"objective\.multicrop\.normalize.*mode 'per_image' but the top-level "
                                          r"`normalize:` section has mode 'dataset'"):
        _train(_config(tmp_path / "norm", objective={"multicrop": views}))
    _train(_config(tmp_path / "norm_ok", objective={"multicrop": views}, normalize={"mode": "per_image"},
                   train={"max_steps": 1}))
    assert not (tmp_path / "norm_ok" / "channel_stats.json").exists()
    with pytest.raises(ConfigError, match=r"config key 'train': precision must be one of"):
        _train(_config(tmp_path / "bad", train={"precision": "fp16"}))


def test_rng_state_roundtrip() -> None:
    state = capture_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.random(), np.random.rand(), torch.rand(())
    restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
