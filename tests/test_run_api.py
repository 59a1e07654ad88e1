"""The run entry points cellssl.api offers workflow plugins: launch a built plan, a run's channel statistics,
and a job array of plain callables (submitit's local executor), on the real Jurkat images."""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from cellssl.api import (
    ConfigError,
    SlurmLauncherConfig,
    build_run_plan,
    launch,
    load_run_config,
    plan_dataset,
    read_embeddings,
    run_channel_stats,
    submit_job_array,
)


def _embed_config(runs: SimpleNamespace, **sections: object) -> object:
    config = runs.config(per_class=2, **sections)
    config.pop("eval")
    return load_run_config(runs.write(config), [])


def test_launch_runs_a_built_plan_and_keeps_its_datasets(runs: SimpleNamespace) -> None:
    plan = build_run_plan(_embed_config(runs), ["embed"])
    assert not plan.checked
    result = launch(plan, ["embed"])
    assert plan.checked  # the local launcher ran this very plan: what its checks built is readable
    dataset = plan_dataset(plan)
    assert dataset is plan.cache["datasets"]["data"] and len(dataset) == 8
    table = read_embeddings(result.outputs["embed"])
    assert result.run_dir == plan.run_dir and Path(result.outputs["embed"]) == plan.run_dir / "embeddings"
    assert len(table) == 8 and list(table.metadata["phase"]) == list(dataset.metadata["phase"])
    other = build_run_plan(plan.config, ["embed"])
    with pytest.raises(ConfigError, match=r"config key 'eval': lists no evaluator"):
        launch(other, ["embed", "eval"])  # other stages than the plan's: the plan is built again for them
    assert not other.checked


def test_run_channel_stats_are_those_of_the_data_and_reused_by_the_embed_stage(runs: SimpleNamespace) -> None:
    config = _embed_config(runs)
    plan = build_run_plan(config, ["embed"])
    path = run_channel_stats(plan)
    assert path == plan.run_dir / "channel_stats.json"
    stored = json.loads(path.read_text())
    dataset = plan_dataset(plan)
    pixels = np.stack([dataset[i].image.numpy().astype(np.float64) for i in range(len(dataset))])  # (N, C, H, W)
    for c, name in enumerate(dataset.channel_names):
        assert stored["mean"][name] == pytest.approx(pixels[:, c].mean(), rel=1e-6)
        assert stored["std"][name] == pytest.approx(pixels[:, c].std(), rel=1e-6)
    assert stored["num_images"] == len(dataset) and stored["fingerprint"]
    written = path.stat().st_mtime_ns
    assert run_channel_stats(build_run_plan(config, ["embed"])) == path and path.stat().st_mtime_ns == written
    launch(build_run_plan(config, ["embed"]), ["embed"])  # the embed stage reads the same file, unchanged
    assert path.stat().st_mtime_ns == written and json.loads(path.read_text()) == stored

    fewer = OmegaConf.merge(config, {"data": {"limit": 4}})  # other data: recomputed in place
    assert run_channel_stats(build_run_plan(fewer, ["embed"])) == path
    assert json.loads(path.read_text())["num_images"] == 4 and json.loads(path.read_text())["fingerprint"] != \
        stored["fingerprint"]

    given = OmegaConf.merge(config, {"normalize": {"stats_path": str(path)}})
    assert run_channel_stats(build_run_plan(given, ["embed"])) == path
    per_image = OmegaConf.merge(config, {"normalize": {"mode": "per_image"}})
    with pytest.raises(ConfigError, match=r"config key 'normalize.mode': is 'per_image'"):
        run_channel_stats(build_run_plan(per_image, ["embed"]))


def test_submit_job_array_runs_each_callable_once(tmp_path: Path) -> None:
    settings = SlurmLauncherConfig(cluster="local", cpus_per_task=1, gpus_per_node=0, timeout_min=5)
    tasks = [functools.partial(operator.mul, 6, 7), functools.partial(operator.add, "a", "b")]
    jobs = submit_job_array(settings, tmp_path, tasks, parallel=2)
    assert [job.result() for job in jobs] == [42, "ab"]
    assert all(Path(job.paths.folder) == tmp_path / "slurm" / str(job.job_id) for job in jobs)
    assert submit_job_array(settings, tmp_path / "none", []) == [] and not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="parallel must be >= 1, got 0"):
        submit_job_array(settings, tmp_path, tasks, parallel=0)
