"""The ``cellssl`` command: plugins listing, config show, end-to-end runs on real images, error output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cellssl.cli import main
from cellssl.launch.launcher import LaunchResult

REPO = Path(__file__).resolve().parents[1]


def _cellssl(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cellssl.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_plugins_lists_builtins_and_their_entries(capsys: pytest.CaptureFixture[str]) -> None:
    main(["plugins"])
    out = capsys.readouterr().out
    assert "builtin  [cellssl" in out
    assert "dataset: synthetic_cells, table" in out
    assert "    bag_of_channels " in out and "(cellssl)" in out
    # first-party plugins installed by `make install` are discovered through their entry points
    assert "bloodcells  [cellssl-bloodcells " in out and "dataset: bloodcells" in out


def test_plugin_excluded_by_switch_is_named_with_its_distribution(tmp_path: Path) -> None:
    config = tmp_path / "bc.yaml"
    config.write_text("data: {name: bloodcells, root: /nowhere}\nbackbone: {name: vit_tiny}\n")
    result = _cellssl("embed", str(config), f"run.output_dir={tmp_path / 'run'}",
                      env={"CELLSSL_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.returncode == 2
    assert ("unknown dataset 'bloodcells'. It is provided by the distribution 'cellssl-bloodcells', which is "
            "installed but not loaded") in result.stderr


def test_config_show_prints_validated_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", str(REPO / "configs/quickstart.yaml"), "backbone.patch_size=16"]) == 0
    out = capsys.readouterr().out
    assert "patch_size: 16" in out
    assert "num_register_tokens: 0" in out  # a default filled in from the backbone's dataclass
    assert "aggregate: concat" in out


def test_user_error_is_one_paragraph_exit_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("data: {name: synthetic_cells, num_sampels: 3}\nbackbone: {name: vit_tiny}\n")
    result = _cellssl("run", str(config), f"run.output_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "config key 'data.num_sampels': unknown key. Allowed keys here: num_samples" in result.stderr


def test_missing_weights_file_is_a_user_error(tmp_path: Path) -> None:
    result = _cellssl("embed", str(REPO / "configs/quickstart.yaml"), f"run.output_dir={tmp_path}",
                      f"weights={tmp_path / 'nope.pt'}")
    assert result.returncode == 2
    assert "nope.pt' does not exist" in result.stderr


@pytest.mark.parametrize(
    ("strategy", "dim_per_channel"),
    [("bag_of_channels", 3), ("fixed", 1), ("per_channel_concat", 3)],
)
def test_run_on_jurkat_writes_embeddings_and_knn_json(
    shared_data: Path, tmp_path: Path, strategy: str, dim_per_channel: int
) -> None:
    config = REPO / "configs" / "eval" / f"jurkat_{strategy}.yaml"
    run_dir = tmp_path / "run"
    result = _cellssl(
        "run", str(config), f"run.output_dir={run_dir}", f"data.root={shared_data / 'jurkat-cellcycle'}",
        "backbone.depth=2", "embed.batch_size=256",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "macro_f1" in result.stdout and "knn:" in result.stdout
    shards = sorted((run_dir / "embeddings").glob("*.parquet"))
    assert shards
    frame = pd.concat(pd.read_parquet(s) for s in shards)
    assert len(frame) == 3422
    assert {"path", "phase", "cell_id", "embedding"} <= set(frame.columns)
    assert len(frame["embedding"].iloc[0]) == 192 * dim_per_channel
    knn = json.loads((run_dir / "eval" / "knn.json").read_text())
    assert knn["evaluator"] == "knn"
    f1 = knn["metrics"]["k20_macro_f1"]
    assert 0.0 < f1 <= 1.0
    saved = (run_dir / "config.yaml").read_text()
    assert "depth: 2" in saved and strategy in saved


@pytest.mark.parametrize(("rank", "printed"), [("0", True), ("1", False)])
def test_only_rank_zero_prints_the_run_summary(rank: str, printed: bool, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun every process runs the CLI; one summary is printed, by rank 0."""
    import cellssl.launch

    config = tmp_path / "run.yaml"
    config.write_text("data: {name: synthetic_cells, num_samples: 8, image_size: 16}\n")
    monkeypatch.setattr(cellssl.launch, "launch", lambda cfg, stages, **_: LaunchResult(run_dir=tmp_path / "r"))
    monkeypatch.setenv("RANK", rank)
    assert main(["embed", str(config)]) == 0
    assert (f"run directory: {tmp_path / 'r'}" in capsys.readouterr().out) is printed
