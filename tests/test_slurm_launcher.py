"""The ``slurm`` launcher through submitit's local executor: submit a short training, preempt it after its first
checkpoint, and check that the job requeues itself and resumes from that checkpoint to the right final step."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cellssl.config.compose import load_run_config
from cellssl.errors import ConfigError
from cellssl.launch import launch
from cellssl.launch.slurm import SlurmLauncherConfig, job_folder, preempt_local_job, resolve_run_dir
from cellssl.train.checkpointing import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16
EVERY = 4


def _config(output_dir: str) -> object:
    config = load_run_config(ROOT / "configs" / "quickstart.yaml", [
        f"run.output_dir={output_dir}", "run.device=cpu", "run.num_threads=1", "run.stages=[train]",
        "data.num_samples=48", "train.batch_size=16", f"train.max_steps={STEPS}",
        f"train.checkpoint_every_steps={EVERY}", "train.progress=false",
    ])
    config.launcher = {"name": "slurm", "cluster": "local", "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 1,
                       "timeout_min": 5}
    return config


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_slurm_local_job_requeues_and_resumes(tmp_path: Path) -> None:
    result = launch(_config(str(tmp_path / "run_%j")))  # type: ignore[arg-type]
    job = result.job
    run_dir = result.run_dir
    assert run_dir == tmp_path / f"run_{job.job_id}"  # %j is the job id
    last = run_dir / "checkpoints" / "last.pt"
    try:
        _wait_for(lambda: last.is_file() or job.done(), 240, "the first checkpoint")  # generous: a loaded CPU
        assert not job.done(), "the job ended before its first checkpoint"
        preempted = preempt_local_job(job)
        assert len(preempted) == 1
        _wait_for(lambda: job.done(), 300, "the job to end")
    finally:
        if not job.done():
            job.cancel()
    assert job.state == "FINISHED"
    assert job.results() == [str(run_dir)]

    log = (run_dir / "logs" / f"{job.job_id}_rank0.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log, log[-2000:]
    assert "preempted or timed out (attempt 1): requeueing" in log
    resumed = re.findall(r"resumed from \S+last\.pt at step (\d+)/16", log)
    assert len(resumed) == 1 and int(resumed[0]) % EVERY == 0 and 0 < int(resumed[0]) < STEPS, log[-2000:]
    final = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    assert final["step"] == STEPS and final["samples_seen"] == STEPS * 16
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # lines after the resumed checkpoint were rewritten, once
    # submitit's own logs are in the run directory too
    assert job.paths.stderr.is_file() and job.paths.stderr.parent == run_dir / "slurm"
    assert "Requeued job" in job.paths.stderr.read_text() + job.paths.stdout.read_text()


def test_job_folder_and_run_dir_resolution(tmp_path: Path) -> None:
    settings = SlurmLauncherConfig(cluster="local")
    assert job_folder(settings, tmp_path / "run") == str(tmp_path / "run" / "slurm" / "%j")
    assert job_folder(settings, tmp_path / "run_%j") == str(tmp_path / "run_%j" / "slurm")
    assert job_folder(SlurmLauncherConfig(folder="/scratch/%j"), tmp_path) == "/scratch/%j"
    assert resolve_run_dir(tmp_path / "run_%j", "4242") == tmp_path / "run_4242"
    with pytest.raises(ValueError, match="cluster must be one of"):
        SlurmLauncherConfig(cluster="pbs")
    config = _config(str(tmp_path / "x"))
    config.run.output_dir = None  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"run\.output_dir.*is required with the slurm launcher"):
        launch(config)  # type: ignore[arg-type]
    assert OmegaConf.select(config, "launcher.name") == "slurm"
