"""Edges of cellssl.train.schedules that mutation testing found unpinned: defaults, bounds, messages, state."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from cellssl.errors import CheckpointError
from cellssl.train.schedules import ScheduleSet, cosine_schedule, scaled_lr, warmup_constant_schedule


def _cos(base: float, final: float, i: int, n: int) -> float:
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / (n - 1)))


def test_step_bounds_and_messages() -> None:
    assert cosine_schedule(3.0, 1.0, total_steps=1, warmup_steps=1, start_warmup_value=0.5).tolist() == [0.5]
    assert cosine_schedule(3.0, 1.0, total_steps=1).tolist() == [3.0]
    with pytest.raises(ValueError, match=r"^total_steps must be >= 1, got 0$"):
        warmup_constant_schedule(1.0, 0)
    for warmup in (-1, 4):
        with pytest.raises(ValueError, match=rf"^warmup_steps must be in \[0, total_steps=3\], got {warmup}$"):
            cosine_schedule(1.0, 0.0, 3, warmup_steps=warmup)


def test_cosine_defaults_and_exact_values() -> None:
    s = cosine_schedule(2.0, 0.5, total_steps=5)  # no warmup by default: step 0 is base
    np.testing.assert_allclose(s, [_cos(2.0, 0.5, i, 5) for i in range(5)], rtol=1e-15)
    assert s.dtype == np.float64
    warm = cosine_schedule(2.0, 0.5, total_steps=6, warmup_steps=2)  # warmup from 0 by default
    np.testing.assert_allclose(warm, [0.0, 1.0, *[_cos(2.0, 0.5, i, 4) for i in range(4)]], rtol=1e-15)
    two = cosine_schedule(2.0, 0.5, total_steps=3, warmup_steps=1)  # two decay steps: base then final
    np.testing.assert_allclose(two, [0.0, 2.0, 0.5], rtol=1e-15)


def test_warmup_constant_defaults() -> None:
    np.testing.assert_allclose(warmup_constant_schedule(0.5, 3), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(warmup_constant_schedule(0.5, 4, warmup_steps=2), [0.0, 0.25, 0.5, 0.5])
    assert warmup_constant_schedule(0.5, 3).dtype == np.float64


def test_scaled_lr_defaults_bounds_and_messages() -> None:
    assert scaled_lr(1.0, 256) == 0.5  # default reference 1024, default rule sqrt
    assert scaled_lr(2.0, 1, reference=1) == 2.0 and scaled_lr(2.0, 1, reference=1, rule="linear") == 2.0
    assert scaled_lr(1.0, 512, rule="linear") == 0.5
    with pytest.raises(ValueError, match=r"^batch_size and reference must be >= 1, got 0 and 1024$"):
        scaled_lr(1.0, 0)
    with pytest.raises(ValueError, match=r"^batch_size and reference must be >= 1, got 8 and 0$"):
        scaled_lr(1.0, 8, reference=0)


def test_schedule_set_defaults() -> None:
    n = 5
    sched = ScheduleSet(n, lr=1.0)
    for i in range(n):
        v = sched.values(i)
        assert v.lr == pytest.approx(_cos(1.0, 0.0, i, n), rel=1e-12, abs=1e-15)
        assert v.weight_decay == pytest.approx(_cos(0.04, 0.4, i, n), rel=1e-12)
        assert v.teacher_momentum == pytest.approx(_cos(0.996, 1.0, i, n), rel=1e-12)
        assert v.teacher_temp == 0.07
        assert v.last_layer_lr == v.lr
    assert sched.step == 0 and sched.values().lr == 1.0
    warm_temp = ScheduleSet(4, lr=1.0, teacher_temp_warmup_steps=2)
    assert [warm_temp.values(i).teacher_temp for i in range(4)] == pytest.approx([0.04, 0.055, 0.07, 0.07])
    warm_lr = ScheduleSet(4, lr=1.0, warmup_steps=2)
    assert warm_lr.values(0).lr == 0.0 and warm_lr.values(1).lr == 0.5


def test_schedule_set_argument_bounds_and_messages() -> None:
    ScheduleSet(3, lr=1.0, freeze_last_layer_steps=3)
    ScheduleSet(3, lr=1.0, teacher_momentum=0.0, teacher_momentum_end=0.0)
    ScheduleSet(3, lr=1.0, teacher_momentum=1.0, teacher_momentum_end=1.0)
    with pytest.raises(ValueError, match=r"^freeze_last_layer_steps must be in \[0, total_steps=3\], got -1$"):
        ScheduleSet(3, lr=1.0, freeze_last_layer_steps=-1)
    for start, end in ((-0.1, 1.0), (0.9, 1.1), (0.9, -0.1)):
        with pytest.raises(ValueError, match=rf"^teacher momentum must be in \[0, 1\], got {start} -> {end}$"):
            ScheduleSet(3, lr=1.0, teacher_momentum=start, teacher_momentum_end=end)
    for temp, warm in ((0.0, 0.04), (0.07, 0.0), (-1.0, 0.04)):
        with pytest.raises(ValueError, match=rf"^teacher temperatures must be > 0, got {warm} -> {temp}$"):
            ScheduleSet(3, lr=1.0, teacher_temp=temp, warmup_teacher_temp=warm)


def test_hparams_record_every_argument() -> None:
    kwargs = dict(lr=1.0, min_lr=0.1, warmup_steps=2, start_warmup_lr=0.2, weight_decay=0.05,
                  weight_decay_end=0.3, teacher_momentum=0.99, teacher_momentum_end=0.999, teacher_temp=0.06,
                  warmup_teacher_temp=0.03, teacher_temp_warmup_steps=3, freeze_last_layer_steps=1)
    sched = ScheduleSet(8, **kwargs)
    assert sched.hparams == {"total_steps": 8, **kwargs}
    assert sched.values(0).lr == 0.2 and sched.values(7).lr == pytest.approx(0.1)
    assert sched.values(0).weight_decay == pytest.approx(0.05) and sched.values(7).weight_decay == pytest.approx(0.3)
    assert sched.values(0).teacher_momentum == pytest.approx(0.99)
    assert sched.values(7).teacher_momentum == pytest.approx(0.999)
    assert sched.values(0).teacher_temp == 0.03 and sched.values(3).teacher_temp == 0.06
    assert sched.values(0).last_layer_lr == 0.0 and sched.values(1).last_layer_lr == sched.values(1).lr > 0


def test_from_epochs_defaults_rounding_and_errors() -> None:
    plain = ScheduleSet.from_epochs(2, 3, lr=1.0)
    assert plain.total_steps == 6
    assert (plain.hparams["warmup_steps"], plain.hparams["teacher_temp_warmup_steps"],
            plain.hparams["freeze_last_layer_steps"]) == (0, 0, 0)
    halves = ScheduleSet.from_epochs(2, 3, warmup_epochs=0.5, teacher_temp_warmup_epochs=1.5,
                                     freeze_last_layer_epochs=0.34, lr=1.0)
    assert (halves.hparams["warmup_steps"], halves.hparams["teacher_temp_warmup_steps"],
            halves.hparams["freeze_last_layer_steps"]) == (2, 4, 1)  # round(1.5) = 2, round(4.5) = 4, round(1.02)
    assert ScheduleSet.from_epochs(1, 1, lr=1.0).total_steps == 1
    for epochs, per_epoch in ((0, 3), (2, 0)):
        with pytest.raises(ValueError, match=rf"^epochs and steps_per_epoch must be >= 1, got {epochs} and "
                                             rf"{per_epoch}$"):
            ScheduleSet.from_epochs(epochs, per_epoch, lr=1.0)


def test_values_clamp_and_advance() -> None:
    sched = ScheduleSet(4, lr=1.0, min_lr=0.25)
    assert sched.values(-5) == sched.values(0) and sched.values(3) == sched.values(99)
    assert sched.values(3).lr == 0.25
    sched.advance()
    assert sched.step == 1 and sched.values() == sched.values(1)
    sched.advance(2)
    assert sched.step == 3


def test_apply_defaults_for_groups_without_multipliers() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([{"params": [weight]}], lr=0.0)
    sched = ScheduleSet(4, lr=1.0, freeze_last_layer_steps=2, weight_decay=0.1, weight_decay_end=0.1)
    sched.advance(1)
    values = sched.apply(optimizer)  # the current step's values
    assert values == sched.values(1)
    assert optimizer.param_groups[0]["lr"] == values.lr > 0 and optimizer.param_groups[0]["weight_decay"] == 0.1


def test_state_dict_is_a_copy_and_describe() -> None:
    sched = ScheduleSet(3, lr=1.0)
    sched.advance(2)
    state = sched.state_dict()
    assert state == {"step": 2, "hparams": sched.hparams}
    state["hparams"]["lr"] = 5.0
    assert sched.hparams["lr"] == 1.0
    v = sched.values()
    assert sched.describe() == (f"ScheduleSet(step=2/3, now {{'lr': {v.lr}, 'weight_decay': {v.weight_decay}, "
                                f"'teacher_momentum': {v.teacher_momentum}, 'teacher_temp': {v.teacher_temp}, "
                                f"'last_layer_lr': {v.last_layer_lr}}})")


def test_load_state_dict_checks_and_warnings(caplog: pytest.LogCaptureFixture) -> None:
    sched = ScheduleSet(6, lr=1.0)
    for bad in ({"step": -1}, {"step": "3"}, [("step", 3)], {"step": 2.0}):
        with pytest.raises(CheckpointError, match=r"^schedule state must hold a non-negative integer 'step', got "
                                                  r".*; the checkpoint is incomplete or not a cellssl checkpoint$"):
            sched.load_state_dict(bad)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="cellssl.train.schedules"):
        sched.load_state_dict({"step": 0})  # no hparams saved: nothing to compare
        sched.load_state_dict({"step": 4, "hparams": {"lr": 1.0, "other": 3}})
    assert sched.step == 4 and not caplog.records
    with caplog.at_level(logging.WARNING, logger="cellssl.train.schedules"):
        sched.load_state_dict({"step": 5, "hparams": {"lr": 2.0, "min_lr": 0.0, "total_steps": 6}})
    assert sched.step == 5
    assert [r.getMessage() for r in caplog.records] == [
        "resuming with schedule hyper-parameters that differ from the checkpoint (old, new): {'lr': (2.0, 1.0)}"]
