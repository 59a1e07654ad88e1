"""The ``launcher: {name: local}`` parameters (:class:`LocalLauncherConfig`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LocalLauncherConfig:
    """``launcher: {name: local}``: run in this process (single process, or one rank under torchrun)."""
