"""Per-step hyper-parameter schedules of DINO / DINOv2 training (Caron et al. 2021; Oquab et al. 2023).

- learning rate: linear warmup, then cosine decay to ``min_lr``;
- weight decay: cosine from ``weight_decay`` to ``weight_decay_end`` (0.04 -> 0.4 in DINO);
- teacher EMA momentum: cosine from ``teacher_momentum`` to ``teacher_momentum_end`` (0.996 -> 1);
- teacher temperature: linear warmup from ``warmup_teacher_temp`` then constant ``teacher_temp``;
- last-layer learning rate: the learning rate, but zero while the head's last layer is frozen.

Every value is a pure function of the hyper-parameters and the step, so a :class:`ScheduleSet` is
rebuilt from the config on resume and only its step is checkpointed (``state_dict`` holds the step
and, for a consistency check, the hyper-parameters; plain Python values, safe for
``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cellssl.errors import CheckpointError

logger = logging.getLogger(__name__)

LR_RULES: tuple[str, ...] = ("sqrt", "linear")


def _check_steps(total_steps: int, warmup_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")


def _linear_warmup(start: float, end: float, warmup_steps: int) -> np.ndarray:
    """``start + (end - start) * s / warmup_steps`` for ``s = 0 .. warmup_steps - 1``."""
    return start + (end - start) * np.arange(warmup_steps, dtype=np.float64) / max(warmup_steps, 1)


def cosine_schedule(
    base: float, final: float, total_steps: int, warmup_steps: int = 0, start_warmup_value: float = 0.0
) -> np.ndarray:
    """Linear warmup then half-cosine decay, one value per step.

    Step ``0`` is ``start_warmup_value``; the warmup rises linearly and step ``warmup_steps`` is
    ``base``; the cosine then reaches ``final`` exactly at the last step ``total_steps - 1``.

    :return: float64 array of length ``total_steps``.
    :raises ValueError: if ``total_steps < 1`` or ``warmup_steps`` is outside ``[0, total_steps]``.
    """
    _check_steps(total_steps, warmup_steps)
    warmup = _linear_warmup(start_warmup_value, base, warmup_steps)
    n_decay = total_steps - warmup_steps
    progress = np.arange(n_decay, dtype=np.float64) / max(n_decay - 1, 1)
    decay = final + 0.5 * (base - final) * (1.0 + np.cos(math.pi * progress))
    return np.concatenate([warmup, decay])


def warmup_constant_schedule(
    value: float, total_steps: int, warmup_steps: int = 0, start_warmup_value: float = 0.0
) -> np.ndarray:
    """Linear warmup from ``start_warmup_value`` (step 0) to ``value`` (step ``warmup_steps``), then
    constant ``value``; length ``total_steps``."""
    _check_steps(total_steps, warmup_steps)
    warmup = _linear_warmup(start_warmup_value, value, warmup_steps)
    return np.concatenate([warmup, np.full(total_steps - warmup_steps, value, dtype=np.float64)])


def scaled_lr(base_lr: float, batch_size: int, reference: int = 1024, rule: str = "sqrt") -> float:
    """Learning rate for ``batch_size`` from one tuned at ``reference``.

    ``"sqrt"``: ``base_lr * sqrt(batch_size / reference)`` (DINOv2); ``"linear"``:
    ``base_lr * batch_size / reference`` (DINO, with reference 256).

    :raises ValueError: for an unknown rule or a non-positive batch size / reference.
    """
    if batch_size < 1 or reference < 1:
        raise ValueError(f"batch_size and reference must be >= 1, got {batch_size} and {reference}")
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / reference)
    if rule == "linear":
        return base_lr * batch_size / reference
    raise ValueError(f"unknown lr scaling rule {rule!r}; choose one of {', '.join(LR_RULES)}")


@dataclass(frozen=True)
class ScheduleValues:
    """The hyper-parameters of one training step."""

    lr: float
    weight_decay: float
    teacher_momentum: float
    teacher_temp: float
    last_layer_lr: float


class ScheduleSet:
    """All schedules of a run, indexed by the global optimisation step.

    :param total_steps: number of optimisation steps of the whole run.
    :param lr: peak learning rate (reached at the end of the warmup).
    :param min_lr: learning rate at the last step.
    :param warmup_steps: learning-rate warmup length.
    :param start_warmup_lr: learning rate at step 0.
    :param weight_decay: weight decay at step 0; cosine to ``weight_decay_end``.
    :param teacher_momentum: EMA momentum at step 0; cosine to ``teacher_momentum_end``.
    :param teacher_temp: teacher temperature after its warmup.
    :param warmup_teacher_temp: teacher temperature at step 0.
    :param teacher_temp_warmup_steps: length of the teacher temperature warmup.
    :param freeze_last_layer_steps: steps (from 0) during which ``last_layer_lr`` is 0.

    ``step`` is the current step; :meth:`values` reads it, :meth:`advance` increments it. Steps past
    the end keep the last values (a run extended on resume does not crash).
    """

    def __init__(
        self,
        total_steps: int,
        *,
        lr: float,
        min_lr: float = 0.0,
        warmup_steps: int = 0,
        start_warmup_lr: float = 0.0,
        weight_decay: float = 0.04,
        weight_decay_end: float = 0.4,
        teacher_momentum: float = 0.996,
        teacher_momentum_end: float = 1.0,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_steps: int = 0,
        freeze_last_layer_steps: int = 0,
    ) -> None:
        if not 0 <= freeze_last_layer_steps <= total_steps:
            raise ValueError(
                f"freeze_last_layer_steps must be in [0, total_steps={total_steps}], got {freeze_last_layer_steps}"
            )
        if not (0.0 <= teacher_momentum <= 1.0 and 0.0 <= teacher_momentum_end <= 1.0):
            raise ValueError(f"teacher momentum must be in [0, 1], got {teacher_momentum} -> {teacher_momentum_end}")
        if teacher_temp <= 0 or warmup_teacher_temp <= 0:
            raise ValueError(f"teacher temperatures must be > 0, got {warmup_teacher_temp} -> {teacher_temp}")
        self.hparams: dict[str, Any] = {
            "total_steps": total_steps,
            "lr": lr,
            "min_lr": min_lr,
            "warmup_steps": warmup_steps,
            "start_warmup_lr": start_warmup_lr,
            "weight_decay": weight_decay,
            "weight_decay_end": weight_decay_end,
            "teacher_momentum": teacher_momentum,
            "teacher_momentum_end": teacher_momentum_end,
            "teacher_temp": teacher_temp,
            "warmup_teacher_temp": warmup_teacher_temp,
            "teacher_temp_warmup_steps": teacher_temp_warmup_steps,
            "freeze_last_layer_steps": freeze_last_layer_steps,
        }
        self.total_steps = total_steps
        self.lr = cosine_schedule(lr, min_lr, total_steps, warmup_steps, start_warmup_lr)
        self.weight_decay = cosine_schedule(weight_decay, weight_decay_end, total_steps)
        self.teacher_momentum = cosine_schedule(teacher_momentum, teacher_momentum_end, total_steps)
        self.teacher_temp = warmup_constant_schedule(
            teacher_temp, total_steps, teacher_temp_warmup_steps, warmup_teacher_temp
        )
        self.last_layer_lr = self.lr.copy()
        self.last_layer_lr[:freeze_last_layer_steps] = 0.0
        self.step = 0

    @classmethod
    def from_epochs(
        cls,
        epochs: int,
        steps_per_epoch: int,
        *,
        warmup_epochs: float = 0,
        teacher_temp_warmup_epochs: float = 0,
        freeze_last_layer_epochs: float = 0,
        **kwargs: Any,
    ) -> ScheduleSet:
        """Build from epoch counts (converted to steps with ``round(epochs * steps_per_epoch)``);
        ``kwargs`` are the other constructor arguments (``lr``, ``weight_decay``, ...)."""
        if epochs < 1 or steps_per_epoch < 1:
            raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")

        def steps(n_epochs: float) -> int:
            return round(n_epochs * steps_per_epoch)

        return cls(
            epochs * steps_per_epoch,
            warmup_steps=steps(warmup_epochs),
            teacher_temp_warmup_steps=steps(teacher_temp_warmup_epochs),
            freeze_last_layer_steps=steps(freeze_last_layer_epochs),
            **kwargs,
        )

    def values(self, step: int | None = None) -> ScheduleValues:
        """The values at ``step`` (default: the current step), clamped to ``[0, total_steps - 1]``."""
        i = min(max(self.step if step is None else step, 0), self.total_steps - 1)
        return ScheduleValues(
            lr=float(self.lr[i]),
            weight_decay=float(self.weight_decay[i]),
            teacher_momentum=float(self.teacher_momentum[i]),
            teacher_temp=float(self.teacher_temp[i]),
            last_layer_lr=float(self.last_layer_lr[i]),
        )

    def advance(self, n: int = 1) -> None:
        """Move the current step forward by ``n``."""
        self.step += n

    def apply(self, optimizer: Any, values: ScheduleValues | None = None) -> ScheduleValues:
        """Write this step's lr and weight decay into ``optimizer.param_groups``.

        Each group gets ``lr = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]``
        and ``weight_decay = weight_decay * group["wd_multiplier"]`` (missing keys: False / 1.0), the
        keys written by :func:`cellssl.train.param_groups.param_groups`. Returns the values used.
        """
        values = self.values() if values is None else values
        for group in optimizer.param_groups:
            base = values.last_layer_lr if group.get("is_last_layer", False) else values.lr
            group["lr"] = base * group.get("lr_multiplier", 1.0)
            group["weight_decay"] = values.weight_decay * group.get("wd_multiplier", 1.0)
        return values

    def state_dict(self) -> dict[str, Any]:
        """``{"step": int, "hparams": dict}``, plain Python values."""
        return {"step": self.step, "hparams": dict(self.hparams)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the step. Hyper-parameters that differ from the checkpoint's are logged as a
        warning (the config wins: changing them on resume is allowed but usually a mistake).

        :raises CheckpointError: if ``state`` has no integer ``step``.
        """
        step = state.get("step") if isinstance(state, dict) else None
        if not isinstance(step, int) or step < 0:
            raise CheckpointError(
                f"schedule state must hold a non-negative integer 'step', got {state!r}; "
                "the checkpoint is incomplete or not a cellssl checkpoint"
            )
        saved = state.get("hparams", {})
        changed = {k: (saved[k], v) for k, v in self.hparams.items() if k in saved and saved[k] != v}
        if changed:
            logger.warning(
                "resuming with schedule hyper-parameters that differ from the checkpoint (old, new): %s",
                changed,
            )
        self.step = step

    def describe(self) -> str:
        """One line for logs."""
        return f"ScheduleSet(step={self.step}/{self.total_steps}, now {asdict(self.values())})"
