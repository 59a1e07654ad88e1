"""finetune stage on real Jurkat cells: selection without the test rows, end-to-end training, resume, exports."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cellssl.config.compose import load_run_config
from cellssl.errors import ConfigError
from cellssl.pipeline import execute, start_run
from cellssl.plan.build import build_plan
from cellssl.plan.checks import check_plan


def _config(runs: SimpleNamespace, per_class: int, name: str, **finetune: Any) -> dict[str, Any]:
    config = runs.config(per_class=per_class, channels={"name": "fixed", "channels": ["brightfield", "dna",
                                                                                   "darkfield"]})
    config["run"]["output_dir"] = str(runs.tmp / name)
    config["run"]["stages"] = ["finetune"]
    config["embed"]["img_size"] = 32
    config["finetune"] = {"label_column": "phase", "batch_size": 32, "lr": 1e-2, "backbone_lr": 1e-3,
                          "patience": 0, "split": {"mode": "fraction", "test_fraction": 0.25, "seed": 0}, **finetune}
    return config


def _run(runs: SimpleNamespace, config: dict[str, Any], name: str) -> dict[str, Any]:
    run, _ = execute(load_run_config(runs.write(config, f"{name}.yaml"), []))
    return json.loads((run.run_dir / "eval" / "finetune.json").read_text())


def _tensors(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_head_only_selects_on_rows_carved_from_train_and_reads_test_labels_once(runs: SimpleNamespace) -> None:
    from cellssl.eval.engines.linear_probe import carve_validation
    from cellssl.finetune.config import FinetuneSection
    from cellssl.finetune.data import finetune_rows

    base = _config(runs, 10, "a", freeze_backbone=True, epochs=8, linear_probe_baseline=True)
    table = Path(base["data"]["table"])
    meta = pd.read_csv(table)
    meta["part"] = np.where(np.arange(len(meta)) % 4 == 0, "test", "train")  # a split that reads no label
    meta.to_csv(table, index=False)
    split = {"mode": "column", "column": "part", "train_values": ["train"], "test_values": ["test"]}
    base["finetune"]["split"] = split
    first = _run(runs, base, "a")
    # the validation rows are the linear probe's carve of the training rows (same fraction and seed)
    section = FinetuneSection(label_column="phase", split=split)
    rows = finetune_rows(section, meta, ["phase"], None)
    train = np.flatnonzero(meta.part == "train")
    fit, val = carve_validation(rows.labels.values[train], 0.2, 0, False)
    assert np.array_equal(rows.val, train[val]) and np.array_equal(rows.fit, train[fit])
    assert set(rows.test) == set(np.flatnonzero(meta.part == "test")) and not set(rows.test) & set(rows.val)
    assert first["split"] == {"mode": "column", "train_rows": 30, "fit_rows": 24, "val_rows": 6, "test_rows": 10}
    # shuffled test labels: same history, same chosen epoch, same head; only the test score reads them
    test = meta.part == "test"
    meta.loc[test, "phase"] = np.roll(meta.loc[test, "phase"].to_numpy(), 3)
    meta.to_csv(table, index=False)
    other = _run(runs, {**base, "run": {**base["run"], "output_dir": str(runs.tmp / "b")}}, "b")
    assert other["history"] == first["history"] and other["chosen"] == first["chosen"]
    head_a = _tensors(runs.tmp / "a" / "finetune" / "head.pt")
    head_b = _tensors(runs.tmp / "b" / "finetune" / "head.pt")
    for key, value in head_a["state_dict"].items():
        assert torch.equal(value, head_b["state_dict"][key]), key
    assert other["metrics"] != first["metrics"]
    # the linear-probe baseline: the same fit and validation rows, its head chosen without the test labels
    baseline_a, baseline_b = first["baseline_linear_probe"], other["baseline_linear_probe"]
    assert baseline_a["sizes"] == {"train_rows": 24, "val_rows": 6, "fit_rows": 30} and baseline_a["refit"]
    assert baseline_a["chosen"] == baseline_b["chosen"] and baseline_a["chosen"]["metric"] == "macro_f1"
    assert baseline_a["metrics"] != baseline_b["metrics"]
    assert head_a["classes"] == ["G1", "G2", "Prophase", "S_phase"] and head_a["in_dim"] == 32


def test_end_to_end_changes_the_backbone_and_beats_the_frozen_head(runs: SimpleNamespace) -> None:
    frozen = _run(runs, _config(runs, 40, "frozen", freeze_backbone=True, epochs=30), "frozen")
    tuned = _run(runs, _config(runs, 40, "tuned", epochs=12, lr=3e-3), "tuned")
    assert tuned["mode"] == "end_to_end" and frozen["mode"] == "head_only"
    start = _tensors(runs.tmp / "frozen" / "finetune" / "backbone.pt")  # frozen: the starting weights
    end = _tensors(runs.tmp / "tuned" / "finetune" / "backbone.pt")
    changed = [k for k in start if not torch.equal(start[k], end[k])]
    assert len(changed) > len(start) // 2, changed
    assert tuned["chosen"]["val_score"] > frozen["chosen"]["val_score"]
    assert tuned["split"]["val_rows"] == frozen["split"]["val_rows"] == 24
    assert set(tuned["metrics"]) == {"accuracy", "balanced_accuracy", "macro_f1", "mean_per_class_multiclass_f1"}
    assert set(tuned["per_class"]) == {"G1", "G2", "Prophase", "S_phase"}
    # the fine-tuned backbone is usable by `weights:`
    config = _config(runs, 40, "reuse", epochs=1)
    config["weights"] = str(runs.tmp / "tuned" / "finetune" / "backbone.pt")
    check_plan(build_plan(load_run_config(runs.write(config, "reuse.yaml"), [])))


def test_resume_after_an_interruption_gives_the_uninterrupted_result(runs: SimpleNamespace) -> None:
    from cellssl.finetune.stage import finetune_run

    whole = _run(runs, _config(runs, 8, "whole", epochs=4, dropout=0.1), "whole")
    config = _config(runs, 8, "cut", epochs=4, dropout=0.1)
    path = runs.write(config, "cut.yaml")
    run = start_run(load_run_config(path, []))
    assert finetune_run(run, stop_after=2) == {"stopped_after": 2}
    assert not (run.run_dir / "eval" / "finetune.json").exists()
    checkpoint = _tensors(run.run_dir / "finetune" / "checkpoints" / "last.pt")
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    resumed = _run(runs, config, "cut")
    assert resumed["history"] == whole["history"] and resumed["metrics"] == whole["metrics"]
    a, b = _tensors(runs.tmp / "whole" / "finetune" / "backbone.pt"), _tensors(run.run_dir / "finetune" / "backbone.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finetune_config_errors_name_the_key(runs: SimpleNamespace) -> None:
    config = _config(runs, 2, "bad", head="transformer")
    with pytest.raises(ConfigError, match=r"config key 'finetune': head must be one of linear, mlp"):
        build_plan(load_run_config(runs.write(config, "bad.yaml"), []))
    del config["finetune"]
    with pytest.raises(ConfigError, match=r"config key 'finetune': is required by the finetune stage"):
        build_plan(load_run_config(runs.write(config, "bad.yaml"), []))
    config["finetune"] = {"label_column": "phase", "keep_classes": ["G1", "Interphase"]}
    plan = build_plan(load_run_config(runs.write(config, "bad.yaml"), []))
    with pytest.raises(ConfigError, match=r"finetune.keep_classes.*\['Interphase'\] do not occur in column 'phase'"):
        from cellssl.finetune.data import finetune_rows

        finetune_rows(plan.finetune, pd.read_csv(config["data"]["table"]), ["phase"], None)


def test_a_missing_label_column_is_refused_by_the_plan_before_anything_runs(runs: SimpleNamespace) -> None:
    config = _config(runs, 2, "nolabel", label_column="cell_phase")
    with pytest.raises(ConfigError, match=r"config key 'finetune.label_column': names column 'cell_phase', which the "
                                          r"dataset table does not have\. Columns: .*phase"):
        execute(load_run_config(runs.write(config, "nolabel.yaml"), []))
    assert not (runs.tmp / "nolabel").exists()
    config = _config(runs, 2, "nolabels", label_columns=["phase", "G9"])
    with pytest.raises(ConfigError, match=r"config key 'finetune.label_columns\[1\]': names column 'G9'"):
        execute(load_run_config(runs.write(config, "nolabels.yaml"), []))
    assert not (runs.tmp / "nolabels").exists()
    # the section is checked only when its stage runs
    config = _config(runs, 2, "embedonly", label_column="cell_phase")
    config["run"]["stages"] = ["embed"]
    check_plan(build_plan(load_run_config(runs.write(config, "embedonly.yaml"), [])))
