"""Launchers are a component kind: registered through a hook, listed, validated in the plan, pluggable."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from cellssl.cli import main
from cellssl.config.compose import load_run_config
from cellssl.errors import ConfigError, UnknownNameError
from cellssl.launch import launch
from cellssl.launch.launcher import Launcher, LaunchResult
from cellssl.plan import build_plan
from cellssl.plugins import hookimpl
from cellssl.plugins.manager import build_plugin_state, use_plugin_state


@dataclass
class RecordingConfig:
    """``launcher: {name: recording, queue: ...}``."""

    queue: str = "default"


class RecordingLauncher(Launcher):
    """Records the plan it was given instead of running it."""

    name = "recording"
    seen: ClassVar[list[Any]] = []

    def __init__(self, config: RecordingConfig) -> None:
        self.config = config

    def launch(self, plan: Any, stages: list[str] | None, *, restart: bool = False) -> LaunchResult:
        RecordingLauncher.seen.append((plan, stages, restart, self.config.queue))
        return LaunchResult(plan.run_dir)


class _Plugin:
    @hookimpl
    def cellssl_register_launchers(self, registry: Any) -> None:
        registry.add("recording", RecordingLauncher, RecordingConfig, "records the plan (test)")


def test_builtin_launchers_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plugins"])
    out = capsys.readouterr().out
    section = out.split("launchers:")[1]
    assert "local" in section and "slurm" in section and "submitit" in section


def test_launcher_blocks_are_validated_in_the_plan(runs: SimpleNamespace) -> None:
    plan = build_plan(load_run_config(runs.write(runs.config()), []))
    assert plan.launcher.name == "local" and plan.sections()["launcher"] == {"name": "local"}
    slurm = build_plan(load_run_config(runs.write(runs.config(launcher={"name": "slurm", "nodes": 2})), []))
    assert slurm.launcher.settings.nodes == 2 and slurm.sections()["launcher"]["timeout_min"] == 60
    with pytest.raises(ConfigError, match=r"config key 'launcher': nodes must be >= 1"):
        build_plan(load_run_config(runs.write(runs.config(launcher={"name": "slurm", "nodes": 0})), []))
    with pytest.raises(UnknownNameError, match=r"config key 'launcher\.name': unknown launcher 'slrum'.*'slurm'"):
        build_plan(load_run_config(runs.write(runs.config(launcher={"name": "slrum"})), []))


def test_a_plugin_launcher_receives_the_validated_plan(runs: SimpleNamespace) -> None:
    state = build_plugin_state(extra_plugins=[("recording", "recording-dist", _Plugin())], load_entry_points=False)
    RecordingLauncher.seen.clear()
    with use_plugin_state(state):
        config = load_run_config(runs.write(runs.config(launcher={"name": "recording", "queue": "gpu"})), [])
        result = launch(config, ["embed"], restart=True)
        with pytest.raises(ConfigError, match=r"config key 'launcher\.queues': unknown key"):
            launch(load_run_config(runs.write(runs.config(launcher={"name": "recording", "queues": "x"})), []))
    (plan, stages, restart, queue), = RecordingLauncher.seen
    assert stages == ["embed"] and restart is True and queue == "gpu"
    assert plan.stages == ["embed"] and plan.evaluators[0].name == "knn"  # the whole plan, validated
    assert result.run_dir == runs.tmp / "run" and not (runs.tmp / "run").exists()  # nothing ran here
