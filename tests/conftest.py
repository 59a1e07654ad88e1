"""Shared fixtures of the core test suite (``shared_data`` comes from cellssl's pytest plugin)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
import yaml


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


# ------------------------------------------------------------------ small run configs on the real Jurkat images

TINY_VIT = {"name": "vit_tiny", "patch_size": 8, "img_size": 40, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "layerscale_init": None}
PHASES = ("G1", "S_phase", "G2", "Prophase")


def jurkat_table(shared_data: Path, folder: Path, per_class: int = 6) -> Path:
    """A CSV of ``per_class`` cells of each large phase (paths relative to the Jurkat folder)."""
    meta = pd.read_csv(shared_data / "jurkat-cellcycle" / "metadata.csv")
    rows = pd.concat([meta[meta["phase"] == phase].head(per_class) for phase in PHASES], ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cells.csv"
    rows.to_csv(path, index=False)
    return path


def jurkat_config(shared_data: Path, tmp_path: Path, *, per_class: int = 6, **sections: Any) -> dict[str, Any]:
    """An embed + kNN config over a Jurkat subset; ``sections`` replace or add top-level sections."""
    table = jurkat_table(shared_data, tmp_path / "table", per_class)
    config: dict[str, Any] = {
        "run": {"output_dir": str(tmp_path / "run"), "num_threads": 1},
        "data": {"name": "table", "root": str(shared_data / "jurkat-cellcycle"), "table": str(table),
                 "bit_depth": "uint16", "label_columns": ["phase"]},
        "channels": {"name": "bag_of_channels", "aggregate": "concat"},
        "backbone": dict(TINY_VIT),
        "embed": {"batch_size": 8, "precision": "fp32"},
        "normalize": {"mode": "dataset"},
        "eval": [{"name": "knn", "label_column": "phase", "ks": [1], "metric": "cosine",
                  "split": {"mode": "fraction", "test_fraction": 0.5, "seed": 0}}],
    }
    config.update(sections)
    return config


def write_config(config: dict[str, Any], path: Path) -> Path:
    """Write ``config`` as YAML to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def dino_objective() -> dict[str, Any]:
    """A tiny DINO objective for 40 px crops (a few steps on CPU)."""
    return {"name": "dino",
            "multicrop": {"global_size": 32, "local_size": 16, "n_local": 2, "global_scale": [0.5, 1.0],
                          "local_scale": [0.2, 0.5]},
            "head": {"out_dim": 32, "hidden_dim": 64, "bottleneck_dim": 16, "use_bn": True}}


@pytest.fixture
def runs(shared_data: Path, tmp_path: Path) -> SimpleNamespace:
    """Helpers for run-level tests: ``runs.config(**sections)`` (a Jurkat embed + kNN config writing under
    ``tmp_path``), ``runs.write(config, name)`` (YAML file), ``runs.dino()`` (a tiny objective)."""
    return SimpleNamespace(
        config=lambda per_class=6, **sections: jurkat_config(shared_data, tmp_path, per_class=per_class, **sections),
        write=lambda config, name="run.yaml": write_config(config, tmp_path / name),
        dino=dino_objective,
        shared=shared_data,
        tmp=tmp_path,
    )


@pytest.fixture
def run_benchmark(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``run_benchmark(name, *args)``: run ``benchmarks/<name>.py``'s ``main()`` with command-line ``args`` and
    return what it printed."""
    import importlib.util
    import sys

    def run(name: str, *args: str) -> str:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [path.name, *args])
        capsys.readouterr()
        module.main()
        return capsys.readouterr().out

    return run
