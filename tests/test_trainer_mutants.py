"""The trainer's own bookkeeping, pinned down where mutation testing found it loose: schedules built from the
``train:`` section in steps, the optimizer's settings, the checkpoint payload, the per-step record, resume
warnings and a callback's stop request. Each test drives a tiny ViT through :class:`Trainer` on real Jurkat cells
from ``../shared/data`` for at most a few steps."""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import tifffile
import torch
from torch.utils.data import Dataset

from cellssl.data.multicrop import MultiCropConfig
from cellssl.data.normalize import PerImageNormalizer
from cellssl.data.sample import CellSample
from cellssl.errors import CheckpointError, TrainingDivergedError
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.objectives.dino import DINOConfig, DINOObjective, HeadConfig
from cellssl.train.checkpointing import load_checkpoint, save_checkpoint
from cellssl.train.config import TrainSection
from cellssl.train.param_groups import param_groups
from cellssl.train.schedules import ScheduleSet
from cellssl.train.trainer import Trainer, _to_device, autocast, build_optimizer

CHANNELS = ("brightfield", "dna", "darkfield")


class _Cells(Dataset):
    """The first ``count`` Jurkat cells of the metadata table, 16-bit OME-TIFFs scaled to [0, 1]."""

    def __init__(self, root: Path, count: int) -> None:
        self.root = root
        self.paths = list(pd.read_csv(root / "metadata.csv")["path"][:count])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> CellSample:
        image = tifffile.imread(self.root / self.paths[index]).astype("float32") / 65535.0
        return CellSample(torch.from_numpy(image), CHANNELS, index)


@pytest.fixture(scope="module")
def cells(shared_data: Path) -> _Cells:
    return _Cells(shared_data / "jurkat-cellcycle", 16)


def _objective(out_dim: int = 16) -> DINOObjective:
    config = DINOConfig(multicrop=MultiCropConfig(global_size=16, local_size=8, n_local=1),
                        head=HeadConfig(out_dim=out_dim, hidden_dim=16, bottleneck_dim=8, nlayers=2),
                        centering="sinkhorn_knopp")
    vit = ViTConfig(arch="vit_tiny", patch_size=8, img_size=16, embed_dim=16, depth=2, num_heads=2,
                    layerscale_init=None)
    return DINOObjective(config, lambda: build_vit(vit, len(CHANNELS)))


def _section(**train: Any) -> TrainSection:
    return TrainSection(**{"max_steps": 2, "batch_size": 4, "precision": "fp32", "lr": 1e-3, "lr_scaling": "none",
                           "warmup_epochs": 0, "teacher_temp_warmup_epochs": 0, "freeze_last_layer_epochs": 0,
                           "progress": False, **train})


def _trainer(run_dir: Path, cells: Dataset, **train: Any) -> Trainer:
    return Trainer(_objective(), [cells], PerImageNormalizer(), _section(**train), run_dir, torch.device("cpu"),
                   seed=0)


def test_schedules_are_the_train_section_in_steps(tmp_path: Path, cells: _Cells) -> None:
    # 16 cells, batch 4: 4 steps per epoch, 3 epochs = 12 steps; epochs become round(epochs * 4) steps, at most 12
    trainer = _trainer(tmp_path, cells, max_steps=None, epochs=3, lr=2e-3, min_lr=1e-5, warmup_epochs=1.5,
                       start_warmup_lr=1e-4, weight_decay=0.01, weight_decay_end=0.3, teacher_momentum=0.9,
                       teacher_momentum_end=0.95, teacher_temp=0.05, warmup_teacher_temp=0.02,
                       teacher_temp_warmup_epochs=0.875, freeze_last_layer_epochs=5.0)
    assert trainer.steps_per_epoch == 4 and trainer.total_steps == 12
    assert trainer.schedules.hparams == {
        "total_steps": 12, "lr": 2e-3, "min_lr": 1e-5, "warmup_steps": 6, "start_warmup_lr": 1e-4,
        "weight_decay": 0.01, "weight_decay_end": 0.3, "teacher_momentum": 0.9, "teacher_momentum_end": 0.95,
        "teacher_temp": 0.05, "warmup_teacher_temp": 0.02, "teacher_temp_warmup_steps": 4,
        "freeze_last_layer_steps": 12,
    }
    assert _trainer(tmp_path, cells, max_steps=5, epochs=3).total_steps == 5  # max_steps wins over epochs


def test_optimizer_is_adamw_over_the_param_groups_with_the_configured_betas(tmp_path: Path, cells: _Cells) -> None:
    trainer = _trainer(tmp_path, cells, adamw_betas=[0.8, 0.95], weight_decay=0.25, layerwise_decay=0.5,
                       patch_embed_lr_mult=0.1)
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    expected = param_groups(trainer.objective.student, weight_decay=0.25, layerwise_decay=0.5,
                            patch_embed_lr_mult=0.1)
    assert len(optimizer.param_groups) == len(expected) > 1
    for group, want in zip(optimizer.param_groups, expected, strict=True):
        assert group["betas"] == (0.8, 0.95) and group["lr"] == 0.0
        assert [id(p) for p in group["params"]] == [id(p) for p in want["params"]]
        for key in ("lr_multiplier", "wd_multiplier", "weight_decay", "is_last_layer"):
            assert group[key] == want[key], key
    assert {g["lr_multiplier"] for g in optimizer.param_groups} >= {0.5**3 * 0.1, 0.5**3, 1.0}
    section = _section(adamw_betas=[0.5, 0.6])
    assert build_optimizer(trainer.objective.student, section).defaults["betas"] == (0.5, 0.6)
    assert trainer.parameters == [p for p in trainer.objective.student.parameters() if p.requires_grad]


def test_checkpoint_payload_and_final_is_a_link_to_last(tmp_path: Path, cells: _Cells) -> None:
    # 3 steps at 4 per epoch: epoch 0, batch 3; samples seen 3 x 4
    trainer = _trainer(tmp_path, cells, max_steps=3, checkpoint_every_steps=2)
    saved: list[int] = []
    trainer.callbacks.append(lambda t, record: saved.append(load_checkpoint(t.checkpoint_path)["step"])
                             if t.checkpoint_path is not None else None)

    def mark_monitor(t: Trainer, record: dict[str, Any]) -> None:
        if t.step == 3:  # after the last step, before the final checkpoint
            t.monitor.count, t.monitor.warned = 7, True

    trainer.callbacks.append(mark_monitor)
    result = trainer.fit()
    assert saved == [2, 2]  # step 1: none yet; step 2: written; step 3 (the last): left to the end of the run
    last = tmp_path / "checkpoints" / "last.pt"
    final = tmp_path / "checkpoints" / "final.pt"
    assert result.checkpoint == last and result.completed and not result.stopped_by_time
    payload = load_checkpoint(final)
    assert {k: payload[k] for k in ("step", "epoch", "batch_in_epoch", "total_steps", "samples_seen",
                                    "world_size")} == {"step": 3, "epoch": 0, "batch_in_epoch": 3, "total_steps": 3,
                                                       "samples_seen": 12, "world_size": 1}
    assert payload["train"] == asdict(trainer.section) and payload["plan"] == trainer.plan.state_dict()
    assert payload["schedules"] == trainer.schedules.state_dict()
    assert payload["monitor"] == trainer.monitor.state_dict() and payload["monitor"]["count"] == 7
    resumed = _trainer(tmp_path, cells, max_steps=3, checkpoint_every_steps=2)
    assert resumed.resume() and resumed.monitor.count == 7 and resumed.monitor.warned
    assert resumed.checkpoint_path == last and resumed.fit().checkpoint == last  # a completed run names it too
    assert os.stat(final).st_ino == os.stat(last).st_ino  # final.pt shares last.pt's bytes
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary link left behind


def test_each_step_records_the_schedule_values_it_used(tmp_path: Path, cells: _Cells) -> None:
    # freeze_last_layer 0.5 epoch = 2 steps: last_layer_lr 0 at steps 1-2, the lr afterwards
    trainer = _trainer(tmp_path, cells, max_steps=4, warmup_epochs=0.5, start_warmup_lr=1e-4, min_lr=2e-4,
                       freeze_last_layer_epochs=0.5, clip_grad=None, weight_decay=0.05, weight_decay_end=0.1,
                       teacher_momentum=0.9, teacher_momentum_end=0.99)
    records: list[dict[str, Any]] = []
    trainer.callbacks.append(lambda _, record: records.append(record))
    trainer.fit()
    schedules = ScheduleSet(4, lr=1e-3, min_lr=2e-4, warmup_steps=2, start_warmup_lr=1e-4, weight_decay=0.05,
                            weight_decay_end=0.1, teacher_momentum=0.9, teacher_momentum_end=0.99,
                            freeze_last_layer_steps=2)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and [r["epoch"] for r in records] == [0, 0, 0, 0]
    for record in records:
        values = schedules.values(record["step"] - 1)
        assert record["lr"] == pytest.approx(values.lr) and record["wd"] == pytest.approx(values.weight_decay)
        assert record["last_layer_lr"] == pytest.approx(values.last_layer_lr)
        assert record["momentum"] == pytest.approx(values.teacher_momentum)
        assert record["teacher_temp"] == pytest.approx(values.teacher_temp)
        assert "grad_norm" not in record  # clip_grad None: no norm computed
    assert [r["last_layer_lr"] for r in records[:2]] == [0.0, 0.0] and records[2]["last_layer_lr"] > 0
    assert records[0]["lr"] == pytest.approx(1e-4) and records[1]["lr"] < records[2]["lr"]


def test_resume_warns_when_batch_size_or_plan_changed(tmp_path: Path, cells: _Cells,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    _trainer(tmp_path, cells, max_steps=2).fit()
    caplog.set_level(logging.WARNING)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "cellssl.train.trainer"]

    resumed = _trainer(tmp_path, cells, max_steps=2)
    assert resumed.resume() and resumed.step == 2 and resumed.schedules.step == 2
    assert warnings() == []  # same batch size, same plan: nothing to warn about
    other = _trainer(tmp_path, cells, max_steps=2, batch_size=2)
    assert other.resume() and other.step == 2
    found = warnings()
    assert len(found) == 2 and found[0].startswith("the data plan changed since the checkpoint")
    assert found[1] == ("the checkpoint was written after 8 samples in 2 steps; train.batch_size is now 2, so the "
                        "data order differs from an uninterrupted run")


def test_a_callback_stop_request_ends_the_run_checkpointed(tmp_path: Path, cells: _Cells) -> None:
    trainer = _trainer(tmp_path, cells, max_steps=5, log_every=10)

    def stop_at_two(t: Trainer, record: dict[str, Any]) -> None:
        t.stop_requested = t.step == 2

    trainer.callbacks.append(stop_at_two)
    result = trainer.fit()
    assert result.step == 2 and result.stopped_by_time and not result.completed
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"step": 2' in lines[0]  # the last step of a stopped run is logged
    assert (tmp_path / "teacher_backbone.pt").is_file()


def test_divergence_before_any_checkpoint_says_so_and_what_to_do(tmp_path: Path, cells: _Cells) -> None:
    advice = (r"Lower train\.lr, keep train\.clip_grad set, try train\.precision: fp32, or check the data for NaN/inf "
              r"pixels; running the same command again resumes from the checkpoint\.$")
    trainer = _trainer(tmp_path / "loss", cells, max_steps=3)
    with torch.no_grad():
        trainer.objective.student.backbone.patch_embed.proj.weight.fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match=r"^training diverged at step 1 \(epoch 0\): the loss is nan; no "
                                                    r"checkpoint had been written yet\. " + advice):
        trainer.fit()
    trainer = _trainer(tmp_path / "grad", cells, max_steps=3, clip_grad=1.0)
    weight = trainer.objective.student.backbone.patch_embed.proj.weight
    weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(TrainingDivergedError, match=r"^training diverged at step 1 \(epoch 0\): the gradient norm is "
                                                    r"inf; no checkpoint had been written yet\. " + advice):
        trainer.fit()
    assert not (tmp_path / "grad" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "grad" / "teacher_backbone.pt").exists()


def test_bf16_precision_autocasts_to_bfloat16_whatever_the_default_autocast_dtype() -> None:
    x = torch.rand(3, 3)
    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)  # a changed default (CUDA's is float16) must not leak in
    try:
        with autocast(torch.device("cpu"), "bf16"):
            assert torch.is_autocast_enabled("cpu") and (x @ x).dtype == torch.bfloat16
        with autocast(torch.device("cpu"), "fp32"):
            assert not torch.is_autocast_enabled("cpu") and (x @ x).dtype == torch.float32
    finally:
        torch.set_autocast_dtype("cpu", default)


def test_final_checkpoint_is_a_copy_where_hard_links_fail(tmp_path: Path, cells: _Cells,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    _trainer(tmp_path, cells, max_steps=1).fit()
    last, final = tmp_path / "checkpoints" / "last.pt", tmp_path / "checkpoints" / "final.pt"
    assert final.read_bytes() == last.read_bytes() and os.stat(final).st_ino != os.stat(last).st_ino
    assert load_checkpoint(final)["step"] == 1


def test_batches_move_their_tensors_to_the_device_and_keep_the_rest() -> None:
    batch = {"global": torch.rand(2, 3, 4, 4), "seed": torch.tensor([1, 2]), "n_global": 2, "names": ["dna"]}
    moved = _to_device(batch, torch.device("meta"))  # the meta device stands in for an accelerator
    assert moved["global"].device.type == "meta" and moved["seed"].device.type == "meta"
    assert moved["global"].shape == (2, 3, 4, 4) and moved["seed"].dtype == torch.int64
    assert moved["n_global"] == 2 and moved["names"] == ["dna"] and set(moved) == set(batch)
    assert batch["global"].device.type == "cpu"  # the input batch is not changed


def test_time_in_callbacks_counts_neither_towards_max_minutes_nor_the_throughput(tmp_path: Path,
                                                                                 cells: _Cells) -> None:
    # a 2 s budget and a callback that sleeps 2.5 s after step 1: the three steps themselves take well under 2 s
    trainer = _trainer(tmp_path, cells, max_steps=3, max_minutes=2 / 60)
    records: list[dict[str, Any]] = []

    def slow_evaluation(t: Trainer, record: dict[str, Any]) -> None:
        records.append(record)
        if t.step == 1:
            time.sleep(2.5)

    trainer.callbacks.append(slow_evaluation)
    result = trainer.fit()
    assert result.completed and not result.stopped_by_time and result.step == 3
    assert records[1]["images_per_s"] > 4 / 2.5  # step 2's 4 images are not timed across the 2.5 s pause


def test_checkpoints_capture_the_rng_of_the_training_device(tmp_path: Path, cells: _Cells,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import cellssl.train.trainer as trainer_module

    devices: list[object] = []
    real = trainer_module.capture_rng_state

    def spy(device: torch.device | None = None) -> dict[str, Any]:
        devices.append(device)
        return real(device)

    monkeypatch.setattr(trainer_module, "capture_rng_state", spy)
    _trainer(tmp_path, cells, max_steps=1).fit()
    assert devices == [torch.device("cpu")]  # a CUDA device adds the CUDA generators' states


def test_checkpoints_hold_every_ranks_rng_state_when_the_parallel_layer_gathers_them(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    alone = _trainer(tmp_path / "alone", cells, max_steps=1)
    alone.fit()
    assert "rng_ranks" not in load_checkpoint(tmp_path / "alone" / "checkpoints" / "last.pt")  # one process
    trainer = _trainer(tmp_path / "ranks", cells, max_steps=1)
    given: list[dict[str, Any]] = []

    def gather(own: dict[str, Any]) -> list[dict[str, Any]]:  # what two ranks would return
        given.append(own)
        return [own, {"rank": 1}]

    monkeypatch.setattr(trainer.parallel, "rng_states", gather)
    trainer.fit()
    payload = load_checkpoint(tmp_path / "ranks" / "checkpoints" / "last.pt")
    assert len(given) == 1 and set(given[0]) == {"python", "numpy", "torch"}
    assert payload["rng_ranks"][1] == {"rank": 1}
    assert torch.equal(payload["rng_ranks"][0]["torch"], payload["rng"]["torch"])


def test_resume_without_a_checkpoint_and_with_one_that_does_not_fit(tmp_path: Path, cells: _Cells,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fresh = _trainer(tmp_path, cells, max_steps=1, resume=True)
    assert fresh.resume() is False and fresh.step == 0 and fresh.checkpoint_path is None
    where = tmp_path / "checkpoints" / "last.pt"
    assert (f"train.resume is true but there is no checkpoint to resume from ({where} does not exist): starting "
            "from step 0") in caplog.text
    fresh.fit()
    other = Trainer(_objective(out_dim=8), [cells], PerImageNormalizer(), _section(max_steps=2), tmp_path,
                    torch.device("cpu"), seed=0)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(where))}: the checkpoint does not match the "
                                              r"configured model"):
        other.resume()


def test_resume_names_an_optimizer_state_that_does_not_fit_and_accepts_checkpoints_without_a_monitor(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    _trainer(tmp_path, cells, max_steps=1).fit()
    where = tmp_path / "checkpoints" / "last.pt"
    regrouped = _trainer(tmp_path, cells, max_steps=2, layerwise_decay=0.5)  # same model, more AdamW groups
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(where))}: optimizer state does not fit the model "
                                              r"\(.+\); the config changed since the checkpoint: use another "
                                              r"run\.output_dir to start a new run\.$"):
        regrouped.resume()
    payload = load_checkpoint(where)
    del payload["monitor"]  # written before the collapse monitor kept state
    save_checkpoint(where, payload)
    older = _trainer(tmp_path, cells, max_steps=2)
    devices: list[torch.device] = []
    real = older.parallel.restore_rng
    monkeypatch.setattr(older.parallel, "restore_rng", lambda data, device: (devices.append(device),
                                                                            real(data, device)))
    assert older.resume() and older.monitor.state_dict() == {"state": None, "count": 0, "warned": False}
    assert devices == [torch.device("cpu")]  # the training device's generators are restored


def test_the_divergence_check_reads_the_global_loss_and_falls_back_to_the_local_one(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(tmp_path, cells, max_steps=2)
    batch = trainer.collate([trainer.views[key] for key in trainer.plan.batches(0)[0]])
    real = trainer.parallel.reduce_terms
    # another rank's loss is inf: the averaged (global) loss is inf, and every rank must stop at this step
    monkeypatch.setattr(trainer.parallel, "reduce_terms", lambda terms: {**real(terms), "loss": float("inf")})
    with pytest.raises(TrainingDivergedError, match=r"^training diverged at step 1 \(epoch 0\): the loss is inf"):
        trainer.train_step(batch)
    # an objective that logs no "loss" term: the step checks (and trains on) its own loss
    monkeypatch.setattr(trainer.parallel, "reduce_terms", lambda terms: {})
    record = trainer.train_step(batch)
    assert record["step"] == 1 and "loss" not in record and record["grad_norm"] > 0


def test_a_parameter_without_a_gradient_in_a_step_is_not_moved_by_the_optimizer(tmp_path: Path,
                                                                                cells: _Cells) -> None:
    # a parameter that trained in step 1 and gets no gradient in step 2 (frozen between steps, or a head
    # the step's loss does not reach) must stay put: a zeroed (not cleared) gradient would let AdamW's
    # momentum and weight decay move it anyway
    trainer = _trainer(tmp_path, cells, max_steps=3, clip_grad=None, weight_decay=0.04, weight_decay_end=0.04)
    batch = trainer.collate([trainer.views[key] for key in trainer.plan.batches(0)[0]])
    trainer.train_step(batch)
    frozen = trainer.objective.student.backbone.patch_embed.proj.weight
    assert trainer.optimizer.state[frozen]["exp_avg"].abs().max() > 0  # it has momentum from step 1
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    trainer.train_step(batch)
    assert frozen.grad is None
    torch.testing.assert_close(frozen.detach(), before, rtol=0, atol=0)


class _BarSpy:
    """Stands in for tqdm in the trainer: records the keyword arguments of each bar and its updates."""

    bars: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = {**kwargs, "updates": 0}
        _BarSpy.bars.append(self.kwargs)

    def update(self, n: int = 1) -> None:
        self.kwargs["updates"] += n

    def set_postfix(self, **kwargs: Any) -> None:
        self.kwargs["postfix"] = kwargs

    def close(self) -> None:
        self.kwargs["closed"] = True


def _spy_on_fit(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path | None]]:
    """Replace the trainer's tqdm by :class:`_BarSpy` and record the (path, tensorboard_dir) of each MetricsLog."""
    import cellssl.train.trainer as trainer_module

    logs: list[tuple[Path, Path | None]] = []
    real = trainer_module.MetricsLog

    def metrics_log(path: Path, tensorboard_dir: Path | None = None) -> Any:
        logs.append((path, tensorboard_dir))
        log = real(path, None)  # the tensorboard package is not needed to check where its logs would go
        close = log.close

        def recorded_close() -> None:
            logs.append((path, "closed"))  # type: ignore[arg-type]
            close()

        log.close = recorded_close  # type: ignore[method-assign]
        return log

    _BarSpy.bars = []
    monkeypatch.setattr(trainer_module, "tqdm", _BarSpy)
    monkeypatch.setattr(trainer_module, "MetricsLog", metrics_log)
    return logs


def test_fit_logs_to_the_run_dir_and_its_progress_bar_counts_steps_from_the_resume_point(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    logs = _spy_on_fit(monkeypatch)
    first = _trainer(tmp_path, cells, max_steps=2, tensorboard=True, progress=True).fit()
    assert first.completed and first.step == 2
    assert logs == [(tmp_path / "metrics.jsonl", tmp_path / "tensorboard"), (tmp_path / "metrics.jsonl", "closed")]
    postfix = {"loss": f"{first.last_record['loss']:.4f}", "refresh": False}  # the bar redraws at its own pace
    assert _BarSpy.bars == [{"total": 2, "initial": 0, "desc": "train", "unit": "step", "disable": False,
                             "updates": 2, "postfix": postfix, "closed": True}]
    # a longer run in the same directory resumes at step 2: its bar starts there; no tensorboard, no bar
    resumed = _trainer(tmp_path, cells, max_steps=3, tensorboard=False, progress=False).fit()
    metrics = tmp_path / "metrics.jsonl"
    assert resumed.step == 3 and logs[2:] == [(metrics, None), (metrics, "closed")]
    assert _BarSpy.bars[1] == {"total": 3, "initial": 2, "desc": "train", "unit": "step", "disable": True,
                               "updates": 1, "postfix": {"loss": f"{resumed.last_record['loss']:.4f}",
                                                         "refresh": False}, "closed": True}


def test_only_the_main_rank_writes_metrics_and_shows_a_progress_bar(tmp_path: Path, cells: _Cells,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    logs = _spy_on_fit(monkeypatch)
    trainer = _trainer(tmp_path, cells, max_steps=1, progress=True)
    env = trainer.parallel.env
    fields = {f.name for f in dataclasses.fields(env)}
    assert "rank" in fields, fields
    monkeypatch.setattr(trainer.parallel, "env", dataclasses.replace(env, rank=1))
    assert not trainer.parallel.is_main
    result = trainer.fit()
    assert result.step == 1 and logs == [] and not (tmp_path / "metrics.jsonl").exists()
    assert _BarSpy.bars[0]["disable"] is True


def test_a_finished_run_returns_completed_not_stopped_and_an_empty_record(tmp_path: Path, cells: _Cells) -> None:
    first = _trainer(tmp_path, cells, max_steps=2).fit()
    assert (first.step, first.total_steps, first.completed) == (2, 2, True)
    assert first.stopped_by_time is False and first.last_record["step"] == 2
    again = _trainer(tmp_path, cells, max_steps=2).fit()
    assert (again.step, again.total_steps, again.completed) == (2, 2, True)
    assert again.stopped_by_time is False and again.last_record == {}
    assert again.checkpoint is not None and again.checkpoint.parent == tmp_path / "checkpoints"


def test_max_minutes_is_a_budget_in_minutes_of_the_monotonic_clock(tmp_path: Path, cells: _Cells,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import cellssl.train.trainer as trainer_module

    clock = {"now": 1000.0}
    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=lambda: clock["now"],
                                                                perf_counter=time.perf_counter))
    trainer = _trainer(tmp_path, cells, max_steps=6, max_minutes=1.0, log_every=10)
    real_step = trainer.train_step

    def step_of_30_5_seconds(batch: Any) -> dict[str, Any]:
        clock["now"] += 30.5
        return real_step(batch)

    monkeypatch.setattr(trainer, "train_step", step_of_30_5_seconds)
    result = trainer.fit()
    # 60 s budget: after step 1, 30.5 s have passed; after step 2, 61 s > 60 s: stop there (61 s would allow a third)
    assert result.step == 2 and result.stopped_by_time is True and not result.completed

    # steps of exactly 30 s: 60 s after step 2 is not past the budget yet; step 3 is
    clock["now"] = 5000.0
    trainer = _trainer(tmp_path / "exact", cells, max_steps=6, max_minutes=1.0, log_every=10)
    real_exact = trainer.train_step

    def step_of_30_seconds(batch: Any) -> dict[str, Any]:
        clock["now"] += 30.0
        return real_exact(batch)

    monkeypatch.setattr(trainer, "train_step", step_of_30_seconds)
    assert trainer.fit().step == 3


def test_batches_are_pinned_for_cuda_only(tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    import cellssl.train.trainer as trainer_module

    class _LoaderCalledError(Exception):
        """Raised by the stand-in loader once it has recorded its arguments."""

    seen: list[dict[str, Any]] = []

    def loader(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise _LoaderCalledError  # the loader's arguments are all this test needs

    monkeypatch.setattr(trainer_module, "make_loader", loader)
    with pytest.raises(_LoaderCalledError):
        _trainer(tmp_path / "cpu", cells, max_steps=1).fit()
    trainer = _trainer(tmp_path / "cuda", cells, max_steps=1)
    trainer.device = torch.device("cuda")  # nothing before the loader touches the device
    with pytest.raises(_LoaderCalledError):
        trainer.fit()
    assert [kwargs["pin_memory"] for kwargs in seen] == [False, True]


def test_the_last_step_is_checkpointed_once_when_it_falls_on_the_checkpoint_interval(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(tmp_path, cells, max_steps=4, checkpoint_every_steps=2)
    saves: list[tuple[int, str]] = []
    real_save = trainer.save

    def save(name: str) -> Path:
        saves.append((trainer.step, name))
        return real_save(name)

    monkeypatch.setattr(trainer, "save", save)
    assert trainer.fit().completed
    assert saves == [(2, "last.pt"), (4, "last.pt")]  # step 4 by the final save only, not by the interval too


def test_the_trainer_moves_the_objective_and_hands_its_settings_to_the_parallel_layer(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    objective = _objective()
    moved: list[object] = []
    real_to = objective.to

    def to(*args: Any, **kwargs: Any) -> Any:
        moved.append(args[0] if args else kwargs.get("device"))
        return real_to(*args, **kwargs)

    monkeypatch.setattr(objective, "to", to)
    section = _section()
    trainer = Trainer(objective, [cells], PerImageNormalizer(), section, tmp_path, torch.device("cpu"), seed=7)
    assert moved == [torch.device("cpu")]
    parallel = trainer.parallel
    assert parallel.config is section.distributed and parallel.seed == 7
    assert parallel.env.device == torch.device("cpu") and parallel.world_size == 1


def test_a_step_records_the_collapse_statistics_of_the_teacher_embeddings_and_the_global_throughput(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    from types import SimpleNamespace

    import cellssl.train.trainer as trainer_module

    clock = {"now": 50.0}

    def perf_counter() -> float:
        clock["now"] += 0.125  # each reading 1/8 s after the last
        return clock["now"]

    monkeypatch.setattr(trainer_module, "time", SimpleNamespace(monotonic=time.monotonic, perf_counter=perf_counter))
    trainer = _trainer(tmp_path, cells, max_steps=2)
    batch = trainer.collate([trainer.views[key] for key in trainer.plan.batches(0)[0]])
    trainer._last_tick = perf_counter()
    record = trainer.train_step(batch)
    assert record["step"] == 1 and trainer.step == 1
    assert "embed_std" in record and 0.0 < record["embed_std"] < 1.0  # the teacher embeddings reach the monitor
    assert record["images_per_s"] == pytest.approx(4 / 0.125)  # 4 images in the 1/8 s since the last tick
    # two ranks of 4 images each: 8 images in the same time
    monkeypatch.setattr(trainer.parallel, "env", dataclasses.replace(trainer.parallel.env, world_size=2))
    monkeypatch.setattr(trainer.parallel, "reduce_terms", lambda terms: terms)  # no process group here
    trainer._last_tick = perf_counter()
    assert trainer.train_step(batch)["images_per_s"] == pytest.approx(8 / 0.125)


def test_the_parallel_layer_prepares_the_objective_and_shards_the_weighted_batch_plan(
        tmp_path: Path, cells: _Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    import cellssl.train.trainer as trainer_module
    from cellssl.train.parallel import ParallelTraining

    prepared: list[tuple[object, object]] = []
    real_prepare = ParallelTraining.prepare

    def prepare(self: ParallelTraining, objective: Any, device: torch.device) -> Any:
        prepared.append((objective, device))
        return real_prepare(self, objective, device)

    sharded: list[tuple[object, object]] = []
    real_shard = trainer_module.shard_plan

    def shard_plan(plan: Any, env: Any) -> Any:
        sharded.append((plan, env))
        return real_shard(plan, env)

    envs: list[Any] = []
    real_env = trainer_module.current_env

    def current_env(device: torch.device) -> Any:
        envs.append(real_env(device))
        return envs[-1]

    monkeypatch.setattr(ParallelTraining, "prepare", prepare)
    monkeypatch.setattr(trainer_module, "shard_plan", shard_plan)
    monkeypatch.setattr(trainer_module, "current_env", current_env)
    small = _Cells(cells.root, 8)
    trainer = Trainer(_objective(), [cells, small], PerImageNormalizer(), _section(epoch_length=12), tmp_path,
                      torch.device("cpu"), seed=3, weights=[3.0, 1.0])
    assert prepared == [(trainer.objective, torch.device("cpu"))]
    assert len(envs) == 1 and trainer.parallel.env is envs[0]  # the env of the trainer's device
    assert len(sharded) == 1 and sharded[0][1] is trainer.parallel.env
    plan = sharded[0][0]
    assert (plan.sizes, plan.weights, plan.batch_size, plan.seed, plan.epoch_length) == ([16, 8], [3.0, 1.0], 4, 3, 12)
    assert trainer.steps_per_epoch == 3  # 12 samples per epoch (not the 24 of both datasets), batch 4
    assert trainer.stop_requested is False and trainer.step == 0
