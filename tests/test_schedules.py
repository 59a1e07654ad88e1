"""Per-step schedules: values at warmup start / end / final step, lr scaling, resume state."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cellssl.errors import CheckpointError
from cellssl.train.schedules import ScheduleSet, cosine_schedule, scaled_lr, warmup_constant_schedule


def test_cosine_schedule_with_warmup_by_hand() -> None:
    s = cosine_schedule(1.0, 0.1, total_steps=10, warmup_steps=3, start_warmup_value=0.0)
    assert s.shape == (10,)
    np.testing.assert_allclose(s[:4], [0.0, 1 / 3, 2 / 3, 1.0])  # warmup start .. end (= base)
    assert s[6] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 6)))  # halfway: 0.55
    assert s[-1] == pytest.approx(0.1)  # final value at the last step
    assert np.all(np.diff(s[3:]) < 0)


def test_cosine_schedule_without_warmup_and_degenerate_lengths() -> None:
    s = cosine_schedule(0.996, 1.0, total_steps=5)
    assert s[0] == pytest.approx(0.996) and s[-1] == pytest.approx(1.0)
    assert cosine_schedule(2.0, 0.0, total_steps=1).tolist() == [2.0]
    np.testing.assert_allclose(
        cosine_schedule(1.0, 0.0, 4, warmup_steps=4, start_warmup_value=0.2), [0.2, 0.4, 0.6, 0.8]
    )
    with pytest.raises(ValueError, match=r"warmup_steps must be in \[0, total_steps=5\], got 6"):
        cosine_schedule(1.0, 0.0, 5, warmup_steps=6)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        cosine_schedule(1.0, 0.0, 0)


def test_warmup_constant_schedule() -> None:
    s = warmup_constant_schedule(0.07, total_steps=6, warmup_steps=3, start_warmup_value=0.04)
    np.testing.assert_allclose(s, [0.04, 0.05, 0.06, 0.07, 0.07, 0.07])


def test_scaled_lr() -> None:
    assert scaled_lr(4e-3, 256) == pytest.approx(2e-3)  # sqrt(256 / 1024) = 0.5
    assert scaled_lr(4e-3, 4096) == pytest.approx(8e-3)
    assert scaled_lr(5e-4, 512, reference=256, rule="linear") == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="unknown lr scaling rule 'cube'; choose one of sqrt, linear"):
        scaled_lr(1e-3, 64, rule="cube")
    with pytest.raises(ValueError, match="must be >= 1"):
        scaled_lr(1e-3, 0)


def _schedules() -> ScheduleSet:
    return ScheduleSet(
        20,
        lr=1e-3,
        min_lr=1e-6,
        warmup_steps=5,
        weight_decay=0.04,
        weight_decay_end=0.4,
        teacher_momentum=0.992,
        teacher_momentum_end=1.0,
        teacher_temp=0.07,
        warmup_teacher_temp=0.04,
        teacher_temp_warmup_steps=10,
        freeze_last_layer_steps=4,
    )


def test_schedule_set_values() -> None:
    sched = _schedules()
    first, warm_end, last = sched.values(0), sched.values(5), sched.values(19)
    assert first.lr == 0.0 and warm_end.lr == pytest.approx(1e-3) and last.lr == pytest.approx(1e-6)
    assert first.weight_decay == pytest.approx(0.04) and last.weight_decay == pytest.approx(0.4)
    assert first.teacher_momentum == pytest.approx(0.992) and last.teacher_momentum == pytest.approx(1.0)
    assert first.teacher_temp == pytest.approx(0.04)
    assert sched.values(5).teacher_temp == pytest.approx(0.055)
    assert sched.values(10).teacher_temp == pytest.approx(0.07) == last.teacher_temp
    assert [sched.values(i).last_layer_lr for i in range(4)] == [0.0] * 4
    assert sched.values(4).last_layer_lr == pytest.approx(sched.values(4).lr) and sched.values(4).lr > 0
    assert sched.values(100) == last  # past the end: last values
    sched.advance(3)
    assert sched.values() == sched.values(3)


def test_schedule_set_from_epochs() -> None:
    sched = ScheduleSet.from_epochs(
        4, 5, warmup_epochs=1, teacher_temp_warmup_epochs=2, freeze_last_layer_epochs=1, lr=1e-3
    )
    assert sched.total_steps == 20
    assert sched.hparams["warmup_steps"] == 5 and sched.hparams["teacher_temp_warmup_steps"] == 10
    assert sched.values(4).last_layer_lr == 0.0 and sched.values(5).last_layer_lr == pytest.approx(1e-3)


def test_schedule_state_roundtrip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sched = _schedules()
    sched.advance(7)
    torch.save(sched.state_dict(), tmp_path / "sched.pt")
    state = torch.load(tmp_path / "sched.pt", weights_only=True)
    resumed = _schedules()
    with caplog.at_level(logging.WARNING):
        resumed.load_state_dict(state)
    assert resumed.step == 7 and resumed.values() == sched.values()
    assert not caplog.records

    changed = ScheduleSet(20, lr=2e-3)
    with caplog.at_level(logging.WARNING):
        changed.load_state_dict(state)
    assert "'lr': (0.001, 0.002)" in caplog.text
    with pytest.raises(CheckpointError, match="non-negative integer 'step'"):
        resumed.load_state_dict({"hparams": {}})


def test_apply_writes_group_lr_and_weight_decay() -> None:
    w1, w2, w3 = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    optimizer = torch.optim.AdamW(
        [
            {"params": [w1], "lr_multiplier": 0.5, "wd_multiplier": 1.0},
            {"params": [w2], "lr_multiplier": 1.0, "wd_multiplier": 0.0},
            {"params": [w3], "lr_multiplier": 2.0, "wd_multiplier": 1.0, "is_last_layer": True},
        ],
        lr=0.0,
    )
    sched = _schedules()
    values = sched.apply(optimizer, sched.values(2))
    lrs = [g["lr"] for g in optimizer.param_groups]
    wds = [g["weight_decay"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([0.5 * values.lr, values.lr, 0.0])
    assert wds == pytest.approx([values.weight_decay, 0.0, values.weight_decay])
    sched.apply(optimizer, sched.values(6))
    assert optimizer.param_groups[2]["lr"] == pytest.approx(2.0 * sched.values(6).lr)


def test_schedule_set_argument_errors() -> None:
    with pytest.raises(ValueError, match="freeze_last_layer_steps must be in"):
        ScheduleSet(10, lr=1e-3, freeze_last_layer_steps=11)
    with pytest.raises(ValueError, match="teacher momentum must be in"):
        ScheduleSet(10, lr=1e-3, teacher_momentum=1.5)
