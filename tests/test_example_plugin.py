"""The plugin example of CONTRIBUTING.md: installed as its own distribution, discovered, run by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "example_plugin"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Install the example distribution into a private folder; return the environment that sees it."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def _cellssl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cellssl.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_example_plugin_is_discovered_through_its_entry_point(installed_example: dict[str, str]) -> None:
    result = _cellssl(installed_example, "plugins")
    assert result.returncode == 0, result.stderr
    assert "example_tiles  [cellssl-example-tiles 0.1.0]  ok" in result.stdout
    assert "dataset: fov_tiles" in result.stdout
    assert "channel_strategy: channel_subset" in result.stdout
    assert "evaluator: nearest_centroid" in result.stdout


def test_example_components_run_by_name(installed_example: dict[str, str], shared_data: Path,
                                        tmp_path: Path) -> None:
    fov = shared_data / "fields-of-view" / "bbbc022" / "IXMtest_A02_s9.tif"
    result = _cellssl(installed_example, "run", str(EXAMPLE / "example_run.yaml"),
                      f"run.output_dir={tmp_path}", f"data.files=[{fov}]")
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pd.read_parquet(next((tmp_path / "embeddings").glob("*.parquet")))
    # (395 - 48) // 32 + 1 = 11 rows of tiles, (695 - 48) // 32 + 1 = 21 columns
    assert len(frame) == 11 * 21
    assert len(frame["embedding"].iloc[0]) == 512
    result_json = json.loads((tmp_path / "eval" / "nearest_centroid.json").read_text())
    assert result_json["n_test"] + result_json["n_train"] == 11 * 21
    assert 0.0 <= result_json["metrics"]["accuracy"] <= 1.0


def test_without_the_plugin_the_dataset_name_is_unknown(tmp_path: Path) -> None:
    result = _cellssl(dict(os.environ), "run", str(EXAMPLE / "example_run.yaml"), f"run.output_dir={tmp_path}")
    assert result.returncode == 2
    assert "unknown dataset 'fov_tiles'" in result.stderr
