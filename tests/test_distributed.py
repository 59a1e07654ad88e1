"""Distributed training under ``torchrun --nproc_per_node=2`` on CPU (gloo), on the quickstart recipe.

Shrunk for CI: 48 synthetic cells x 3 channels (bag of channels: 144 samples), global batch 16, 6 steps, fp32.
One single-process reference run (in this process) gives the loss curve the 2-process runs must match.

Tolerance: fp32 losses of the 2-process run equal the single-process ones within 1e-5 absolute (observed:
< 1e-6; the difference is the summation order of the all-reduces), gradient norms within 1e-4 relative.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cellssl.config.compose import load_run_config
from cellssl.embed.store import read_embeddings
from cellssl.pipeline import embed_stage, start_run
from cellssl.train.checkpointing import load_checkpoint
from cellssl.train.stage import train_run

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TOTAL_STEPS = 6
STOP_AT = 4
LOSS_ATOL = 1e-5
GRAD_RTOL = 1e-4

DRIVER = textwrap.dedent('''
    """Runs under torchrun: train (stopping after --stop-at steps), dump this rank's teacher, embed, eval."""
    import sys
    from pathlib import Path

    import torch
    from omegaconf import OmegaConf

    from cellssl.pipeline import embed_stage, eval_stage, start_run
    from cellssl.train.distributed import get_rank, shutdown_distributed
    from cellssl.train.parallel import full_tensor
    from cellssl.train.stage import train_run

    config = OmegaConf.load(sys.argv[1])
    stop_at, out = int(sys.argv[2]), Path(sys.argv[3])
    seen = {}

    def callback(trainer, record):
        seen["trainer"] = trainer
        if trainer.step >= stop_at:
            trainer.stop_requested = True

    run = start_run(config)
    result = train_run(run, callbacks=[callback])
    teacher = {k: full_tensor(v).detach().cpu() for k, v in seen["trainer"].objective.teacher.state_dict().items()}
    torch.save({"teacher": teacher, "step": result.step}, out / f"rank{get_rank()}.pt")
    if "embed" in sys.argv[4:]:
        embed_stage(run)
        eval_stage(run)
    shutdown_distributed()
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(run_dir: Path, *overrides: str) -> Any:
    return load_run_config(QUICKSTART, [
        f"run.output_dir={run_dir}", "run.device=cpu", "data.num_samples=48", "train.batch_size=16",
        f"train.max_steps={TOTAL_STEPS}", "train.precision=fp32", "train.checkpoint_every_steps=2",
        "train.progress=false", "embed.batch_size=32", *overrides,
    ])


def _torchrun(tmp: Path, config: Any, stop_at: int, *extra: str) -> subprocess.CompletedProcess[str]:
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    config_file = tmp / f"config_{stop_at}.yaml"
    OmegaConf.save(config, config_file)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(script), str(config_file), str(stop_at), str(tmp), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240, cwd=tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_curves_match(got: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    by_step = {r["step"]: r for r in reference}
    assert got, "no metrics written"
    for record in got:
        ref = by_step[record["step"]]
        assert abs(record["loss"] - ref["loss"]) <= LOSS_ATOL, (record["step"], record["loss"], ref["loss"])
        assert record["grad_norm"] == pytest.approx(ref["grad_norm"], rel=GRAD_RTOL)


def _assert_teacher_close(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Teacher entries within 1e-4 of the single-process run's. (Student weights are not compared: the key part
    of each qkv bias has an exactly-zero gradient in exact arithmetic, and AdamW turns float noise there into
    steps of size lr, whose sign differs between runs; the teacher gets only (1 - momentum) of them.)"""
    teacher = [k for k in reference if k.startswith("teacher.")]
    assert teacher
    for key in teacher:
        torch.testing.assert_close(state[key], reference[key], atol=1e-4, rtol=1e-4, msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A single-process run of all 6 steps, and a copy of its run directory as it was after step 4."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reference")
    run_dir = root / "single"
    snapshot = root / "single_at_4"

    def copy_at_stop(trainer: Any, record: dict[str, Any]) -> None:
        if trainer.step == STOP_AT:  # checkpointed at this step (checkpoint_every_steps=2)
            shutil.copytree(run_dir, snapshot)

    result = train_run(start_run(_config(run_dir, "run.stages=[train]")), callbacks=[copy_at_stop])
    assert result.step == TOTAL_STEPS
    return {"dir": run_dir, "at_4": snapshot, "metrics": _metrics(run_dir),
            "teacher": load_checkpoint(run_dir / "checkpoints" / "final.pt")["objective"]}


def test_ddp_two_processes_match_one_and_resume_in_one(tmp_path: Path, reference: dict[str, Any]) -> None:
    run_dir = tmp_path / "ddp"
    _torchrun(tmp_path, _config(run_dir, "run.stages=[train,embed,eval]"), STOP_AT, "embed")
    # both ranks finished and hold the same teacher (parameters and BatchNorm buffers), bit for bit
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [STOP_AT, STOP_AT]
    assert ranks[0]["teacher"].keys() == ranks[1]["teacher"].keys()
    for key, value in ranks[0]["teacher"].items():
        assert torch.equal(value, ranks[1]["teacher"][key]), key
    # the loss curve is the single-process one with the same global batch
    metrics = _metrics(run_dir)
    assert [r["step"] for r in metrics] == list(range(1, STOP_AT + 1))
    _assert_curves_match(metrics, reference["metrics"])
    # the checkpoint is plain and world-size independent: data position as a global sample count
    data = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (data["step"], data["samples_seen"], data["world_size"]) == (STOP_AT, STOP_AT * 16, 2)
    assert len(data["rng_ranks"]) == 2
    assert not any(k.startswith("module.") or "_fsdp" in k for k in data["objective"])

    # distributed embedding: one shard set per rank, read back in dataset order, as a single process writes it
    shards = sorted(p.name for p in (run_dir / "embeddings").glob("*.parquet"))
    assert shards == ["rank000-part-00000.parquet", "rank001-part-00000.parquet"]
    table = read_embeddings(run_dir / "embeddings")
    assert len(table) == 48 and json.loads((run_dir / "eval" / "knn.json").read_text())["evaluator"] == "knn"
    single = tmp_path / "embed_single"
    shutil.copytree(run_dir, single, ignore=shutil.ignore_patterns("embeddings", "eval"))
    embed_stage(start_run(_config(single, "run.stages=[embed]")))
    alone = read_embeddings(single / "embeddings")
    assert table.metadata.equals(alone.metadata)
    np.testing.assert_allclose(table.embeddings, alone.embeddings, atol=1e-5)

    # the 2-process checkpoint resumes in one process and ends where the uninterrupted run ends
    result = train_run(start_run(_config(run_dir, "run.stages=[train]")))
    assert result.step == TOTAL_STEPS
    metrics = _metrics(run_dir)
    assert [r["step"] for r in metrics] == list(range(1, TOTAL_STEPS + 1))
    _assert_curves_match(metrics, reference["metrics"])
    final = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    assert final["world_size"] == 1
    _assert_teacher_close(final["objective"], reference["teacher"])


def test_one_process_checkpoint_resumes_with_two_fsdp_processes(tmp_path: Path, reference: dict[str, Any]) -> None:
    run_dir = tmp_path / "fsdp"
    shutil.copytree(reference["at_4"], run_dir)  # written by one process after step 4
    _torchrun(tmp_path, _config(run_dir, "run.stages=[train]", "train.distributed.strategy=fsdp"), TOTAL_STEPS)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [TOTAL_STEPS, TOTAL_STEPS]
    for key, value in ranks[0]["teacher"].items():
        assert torch.equal(value, ranks[1]["teacher"][key]), key
    metrics = _metrics(run_dir)
    assert [r["step"] for r in metrics] == list(range(1, TOTAL_STEPS + 1))
    _assert_curves_match(metrics[STOP_AT:], reference["metrics"])
    final = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    assert final["world_size"] == 2
    # FSDP shards are gathered: full plain tensors with the single-process keys and shapes
    assert final["objective"].keys() == reference["teacher"].keys()
    assert all(type(value) is torch.Tensor for value in final["objective"].values())
    _assert_teacher_close(final["objective"], reference["teacher"])
