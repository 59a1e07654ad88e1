"""benchmarks/gpu_check.py: refuses cleanly without CUDA; ``--cpu`` runs every check's code path on the CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CHECK_NAMES = ["attention", "packed multi-crop", "dinov2 bf16 step", "folded vs one-by-one", "ddp step", "faiss knn"]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


def test_refuses_without_cuda_with_one_line_and_status_2() -> None:
    result = _run()
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpu_check: no CUDA device") and "--cpu" in lines[0]


def test_cpu_mode_runs_every_check_and_prints_one_table() -> None:
    result = _run("--cpu", "--threads", "1")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("check "))
    rows = lines[header + 1 : header + 1 + len(CHECK_NAMES)]
    assert [row[:21].strip() for row in rows] == CHECK_NAMES
    assert all(row.split()[-1] for row in rows)
    for row in rows:
        cells = row[22:].split()
        assert cells[0] == "cpu" and cells[1] == "ok", row
    assert "top-1 agreement with numpy 1.0000" in rows[-1]
    assert "1 process, gloo" in rows[4]
    assert lines[-1].startswith("6/6 checks ok")


def test_a_failing_check_is_a_fail_row_and_exit_status_1(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    module = _load()

    def check_broken(sizes, device):
        raise RuntimeError("kernel missing\nsecond line")

    monkeypatch.setattr(module, "CHECKS", [check_broken, module.check_knn])
    assert module.main(["--cpu", "--threads", "1"]) == 1
    out = capsys.readouterr().out
    assert "broken" in out and "FAIL" in out and "RuntimeError: kernel missing" in out
    assert "second line" not in out
    assert out.strip().splitlines()[-1] == f"1/2 checks ok in {out.split(' checks ok in ')[1].split()[0]} s; " \
                                           "failed: broken"


def test_the_attention_check_compares_against_the_math_reference() -> None:
    module = _load()
    row = module.check_attention(module.CPU_SIZES, torch.device("cpu"))
    assert row.status == "ok" and row.detail.startswith("sdpa vs math")
    assert float(row.figure.split()[-1]) < 1e-5


def test_table_is_aligned() -> None:
    module = _load()
    rows = [module.Row("a", "cpu", "ok", "1 s", "x"), module.Row("longer name", "cuda", "FAIL", "-", "y")]
    lines = module.format_table(rows).splitlines()
    assert lines[0].split() == ["check", "device", "status", "figure", "detail"]
    assert lines[1].index("cpu") == lines[2].index("cuda") == lines[0].index("device")
