"""configs/eval/jump_profiles.yaml on the miniature JUMP source: cells -> embeddings -> well profiles -> mAP."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from cellssl.pipeline import execute

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "eval" / "jump_profiles.yaml"


def test_jump_profiles_config_end_to_end(jump, tmp_path) -> None:
    config = OmegaConf.merge(OmegaConf.load(CONFIG), OmegaConf.from_dotlist([
        f"data.root={jump.root}", f"run.output_dir={tmp_path / 'run'}", "run.num_threads=1",
        "data.max_cells_per_site=3", "backbone.patch_size=16", "backbone.img_size=32", "embed.img_size=32",
        "embed.precision=fp32",
    ]))
    config.eval[0].null_size = 2000
    run, _ = execute(config)
    result = json.loads((run.run_dir / "eval" / "jump_map.json").read_text())
    assert (run.run_dir / "embeddings" / "manifest.json").is_file()
    wells = pd.read_parquet(run.run_dir / "profiles" / "well_profiles.parquet")
    assert len(wells) == len(jump.sites.drop_duplicates(["Metadata_Plate", "Metadata_Well"]))
    assert set(wells["Metadata_Plate"]) == {"0042", "1086292853"}
    assert wells["Metadata_Count_Cells"].sum() == result["counts"]["cells"]
    activity = pd.read_csv(run.run_dir / "eval" / "jump_map_activity.csv", dtype=str).set_index("Metadata_JCP2022")
    # the three protein-synthesis compounds have replicates; the single U2OS well has none
    assert sorted(activity.index) == ["JCP2022_900001", "JCP2022_900002", "JCP2022_900003"]
    metrics = result["metrics"]
    for prefix in ("", "baseline_"):
        assert 0.0 <= metrics[f"{prefix}activity_mean_average_precision"] <= 1.0
        assert metrics[f"{prefix}activity_groups"] == 3
    baseline = pd.read_csv(run.run_dir / "eval" / "jump_map_baseline_activity.csv")
    assert len(baseline) == 3 and result["baseline"]["counts"]["features"] == 4 * 5
