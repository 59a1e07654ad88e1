"""Training: schedules, teacher EMA, optimizer parameter groups (and the trainer, checkpoints and
launchers built on them).

- :mod:`.schedules`: per-step lr / weight decay / teacher momentum / teacher temperature /
  last-layer lr (``ScheduleSet``, ``cosine_schedule``, ``scaled_lr``).
- :mod:`.ema`: ``momentum_update`` of the teacher with ``torch._foreach_*``.
- :mod:`.param_groups`: AdamW groups with weight-decay exclusions and layer-wise lr decay.

Submodules are imported explicitly (``from cellssl.train.schedules import ScheduleSet``); importing
this package imports nothing heavy.
"""
