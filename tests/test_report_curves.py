"""Reports of training runs show the training curves from ``metrics.jsonl`` (loss terms, collapse statistics,
schedules) as PNG plots referenced from report.md and report.html, with a summary table of the logged values."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cellssl.cli import main
from cellssl.errors import DataError
from cellssl.report.curves import loss_keys, read_training_log, training_summary


@pytest.fixture
def trained(runs: SimpleNamespace) -> Path:
    config = runs.config(per_class=3, objective=runs.dino(),
                         train={"epochs": 2, "batch_size": 12, "precision": "fp32", "progress": False})
    assert main(["run", str(runs.write(config))]) == 0
    return runs.tmp / "run"


def test_report_of_a_training_run_shows_its_curves(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # 36 (cell, channel) samples, batch 12, 2 epochs
    out = trained / "report_out"
    assert main(["report", str(trained), "--out", str(out)]) == 0
    for name in ("training_loss.png", "training_collapse.png", "training_schedules.png"):
        png = out / "training" / name
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.shape[0] > 100 and pixels.std() > 5  # a drawn figure, not an empty canvas
    markdown = (out / "report.md").read_text()
    assert "![training_loss.png](training/training_loss.png)" in markdown
    assert "![training_collapse.png](training/training_collapse.png)" in markdown
    assert markdown.index("## Training") < markdown.index("## knn")  # then the evaluation results
    assert '<img src="training/training_loss.png"' in (out / "report.html").read_text()
    assert "6 logged steps (1 to 6) in metrics.jsonl." in markdown
    losses = [r["loss"] for r in records]
    row = next(line for line in markdown.splitlines() if line.startswith("| loss |"))
    assert row == f"| loss | {losses[0]:.4f} | {losses[-1]:.4f} | {min(losses):.4f} |"
    entropy = [r["teacher_entropy"] for r in records]
    assert f"| teacher_entropy | {entropy[0]:.4f} | {entropy[-1]:.4f} | {min(entropy):.4f} |" in markdown
    assert "| dino_loss |" in markdown


def test_a_run_that_only_trained_is_reported(runs: SimpleNamespace) -> None:
    config = runs.config(per_class=2, objective=runs.dino(), run={"output_dir": str(runs.tmp / "only"),
                                                                  "num_threads": 1, "stages": ["train"]},
                         train={"epochs": 1, "batch_size": 12, "precision": "fp32", "progress": False})
    assert main(["run", str(runs.write(config))]) == 0
    assert not (runs.tmp / "only" / "eval").exists()
    assert main(["report", str(runs.tmp / "only")]) == 0
    markdown = (runs.tmp / "only" / "report.md").read_text()
    assert "## Training" in markdown and (runs.tmp / "only" / "training" / "training_loss.png").is_file()
    assert "| result | evaluator | split |" not in markdown


def test_training_log_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [{"step": 1, "loss": 3.0, "dino_loss": 3.0, "koleo_loss": 0.5, "ibot_loss": 1.0, "embed_std": 0.1},
             {"step": 2, "loss": 2.0, "dino_loss": 2.0, "koleo_loss": float("nan"), "ibot_loss": 0.5}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "loss": 1.'  # cut by a crash
    (tmp_path / "metrics.jsonl").write_text(text)
    records = read_training_log(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert loss_keys(records) == ["loss", "dino_loss", "koleo_loss", "ibot_loss"]
    assert training_summary(records) == [["loss", 3.0, 2.0, 2.0], ["dino_loss", 3.0, 2.0, 2.0],
                                         ["koleo_loss", 0.5, 0.5, 0.5], ["ibot_loss", 1.0, 0.5, 0.5],
                                         ["embed_std", 0.1, 0.1, 0.1]]  # NaN is not a value
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"metrics.jsonl line 2: expected a JSON object per line, got list"):
        read_training_log(tmp_path)
    assert read_training_log(tmp_path / "nowhere") == []
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "does not exist" in capsys.readouterr().err
