"""The finetune stage under ``torchrun --nproc_per_node=2`` on CPU (gloo), on real Jurkat cells.

Each rank trains on its share of every batch; the averaged gradient is the whole batch's, so in fp32 the
2-process run follows the 1-process run: per-epoch losses within 1e-4 (summation order of the all-reduce),
the same validation scores, chosen epoch and test metrics. Only rank 0 writes files. A checkpoint written by
2 processes resumes in one and finishes as the uninterrupted single-process run does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from cellssl.config.compose import load_run_config
from cellssl.pipeline import execute

LOSS_ATOL = 1e-4

DRIVER = textwrap.dedent('''
    """Runs under torchrun: the finetune stage, stopping after argv[2] epochs (0: run to the end)."""
    import json
    import sys
    from pathlib import Path

    from cellssl.config.compose import load_run_config
    from cellssl.finetune.stage import finetune_run
    from cellssl.pipeline import start_run
    from cellssl.train.distributed import get_rank, get_world_size, shutdown_distributed

    run = start_run(load_run_config(sys.argv[1], []))
    stop = int(sys.argv[2]) or None
    result = finetune_run(run, stop_after=stop)
    out = Path(sys.argv[3]) / f"rank{get_rank()}.json"
    out.write_text(json.dumps({"world": get_world_size(), "result": result}))
    shutdown_distributed()
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(runs: SimpleNamespace, name: str, **finetune: Any) -> dict[str, Any]:
    config = runs.config(per_class=10, channels={"name": "fixed", "channels": ["brightfield", "dna", "darkfield"]})
    config["run"].update(output_dir=str(runs.tmp / name), stages=["finetune"], device="cpu")
    config["embed"]["img_size"] = 32
    # batch 9 over 24 fit rows: batches 9, 9, 6 shared 4 + 5, 4 + 5, 3 + 3 (unequal shares test the loss scale);
    # dropout off (its masks follow the share)
    config["finetune"] = {"label_column": "phase", "batch_size": 9, "lr": 1e-2, "backbone_lr": 1e-3,
                          "patience": 0, "epochs": 4, "split": {"mode": "fraction", "test_fraction": 0.25, "seed": 0},
                          **finetune}
    return config


def _torchrun(runs: SimpleNamespace, config: dict[str, Any], name: str, stop: int) -> list[dict[str, Any]]:
    script = runs.tmp / "driver.py"
    script.write_text(DRIVER)
    path = runs.write(config, f"{name}.yaml")
    out = runs.tmp / f"out_{name}"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(script), str(path), str(stop), str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=runs.tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _single(runs: SimpleNamespace, config: dict[str, Any], name: str) -> dict[str, Any]:
    run, _ = execute(load_run_config(runs.write(config, f"{name}.yaml"), []))
    return json.loads((run.run_dir / "eval" / "finetune.json").read_text())


def _assert_same_run(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert len(got["history"]) == len(want["history"])
    for a, b in zip(got["history"], want["history"], strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) <= LOSS_ATOL, (a, b)
        assert abs(a["val_loss"] - b["val_loss"]) <= LOSS_ATOL, (a, b)
        assert a["val_score"] == pytest.approx(b["val_score"], abs=1e-9), (a, b)
    assert got["chosen"]["epoch"] == want["chosen"]["epoch"]
    assert got["metrics"] == pytest.approx(want["metrics"], abs=1e-9)


@pytest.mark.parametrize("mode", [{}, {"freeze_backbone": True, "epochs": 6}], ids=["end_to_end", "head_only"])
def test_two_processes_match_one(runs: SimpleNamespace, mode: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    single = _single(runs, _config(runs, "single", **mode), "single")
    ranks = _torchrun(runs, _config(runs, "ddp", **mode), "ddp", 0)
    assert [r["world"] for r in ranks] == [2, 2]
    written = json.loads((runs.tmp / "ddp" / "eval" / "finetune.json").read_text())
    assert written["world_size"] == 2 and single["world_size"] == 1
    _assert_same_run(written, single)
    # rank 1 computed the same result but wrote nothing of its own: one result file, one export of each
    assert ranks[1]["result"]["metrics"] == written["metrics"]
    assert sorted(p.name for p in (runs.tmp / "ddp" / "finetune").iterdir()) == ["backbone.pt", "checkpoints",
                                                                                  "head.pt"]
    assert [p.name for p in (runs.tmp / "ddp" / "finetune" / "checkpoints").iterdir()] == ["last.pt"]


def test_a_two_process_checkpoint_resumes_in_one_process(runs: SimpleNamespace) -> None:
    torch.set_num_threads(1)
    single = _single(runs, _config(runs, "whole"), "whole")
    ranks = _torchrun(runs, _config(runs, "cut"), "cut", 2)
    assert [r["result"] for r in ranks] == [{"stopped_after": 2}] * 2
    assert not (runs.tmp / "cut" / "eval" / "finetune.json").exists()
    checkpoint = torch.load(runs.tmp / "cut" / "finetune" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    resumed = _single(runs, _config(runs, "cut"), "cut")
    assert resumed["world_size"] == 1
    _assert_same_run(resumed, single)
