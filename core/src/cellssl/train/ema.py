"""The EMA teacher update lives with the objectives: :mod:`cellssl.objectives.ema` (re-exported here)."""

from cellssl.objectives.ema import momentum_update, momentum_update_modules

__all__ = ["momentum_update", "momentum_update_modules"]
