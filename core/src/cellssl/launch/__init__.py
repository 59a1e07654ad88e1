"""Launchers: where a run executes — in this process (``local``) or as a SLURM job through submitit (``slurm``).

Launchers are a component kind (``cellssl plugins`` lists them; plugins add their own). A run config
selects one with ``launcher: {name: local}`` (the default) or ``launcher: {name: slurm, ...}``;
see :mod:`cellssl.launch.slurm`. Both execute the same entry function, :class:`cellssl.launch.job.RunJob`.
"""

from cellssl.launch.launcher import Launcher, LaunchResult, launch

__all__ = ["LaunchResult", "Launcher", "launch"]
