"""Launchers: where a run executes — in this process (``local``) or as a SLURM job through submitit (``slurm``).

A run config selects one with ``launcher: {name: local}`` (the default) or ``launcher: {name: slurm, ...}``;
see :mod:`cellssl.launch.slurm`. Both execute the same entry function, :class:`cellssl.launch.job.RunJob`.
"""

from cellssl.launch.launcher import LAUNCHERS, launch

__all__ = ["LAUNCHERS", "launch"]
