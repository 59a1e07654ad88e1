"""The plate array: one submitit task per plate (local executor), a failed plate re-run alone, merge == one run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from cellssl.api import CellsslError, ConfigError
from cellssl.cli import main
from cellssl.pipeline import execute
from cellssl_jumpcp.array import chunks, plate_config, plate_dir, plate_status, prepare_array, submit_array, wait_array
from cellssl_jumpcp.merge import merge_array

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "eval" / "jump_profiles.yaml"
SMALL = ["run.num_threads=1", "data.max_cells_per_site=3", "backbone.patch_size=16", "backbone.img_size=32",
         "embed.img_size=32", "embed.precision=fp32", "embed.shard_rows=16"]


def small_config(root: Path, run_dir: Path) -> OmegaConf:
    config = OmegaConf.merge(OmegaConf.load(CONFIG),
                             OmegaConf.from_dotlist([f"data.root={root}", f"run.output_dir={run_dir}", *SMALL]))
    config.eval[0].null_size = 500
    return config


def test_chunks_and_plate_config(tmp_path: Path) -> None:
    assert chunks(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert chunks(["a"], 3) == [["a"]]
    with pytest.raises(ValueError, match="chunk size must be >= 1"):
        chunks(["a"], 0)
    config = OmegaConf.create({"run": {"output_dir": "x"}, "data": {"name": "jump_cells", "root": "r"},
                               "launcher": {"name": "slurm"}, "eval": [{"name": "jump_map"}]})
    one = plate_config(config, "0042", tmp_path)
    assert list(one.data.plates) == ["0042"] and one.run.output_dir == str(tmp_path / "plates" / "0042")
    assert one.launcher is None and list(one.eval) == [] and config.launcher.name == "slurm"


def test_dataset_normalisation_needs_shared_statistics(jump, tmp_path: Path, capsys) -> None:
    config = small_config(jump.root, tmp_path / "array")
    with pytest.raises(ConfigError, match=r"normalize.stats_path.*--stats-plates"):
        prepare_array(config, local=True)
    with pytest.raises(CellsslError, match=r"plates \['9999'\] \(--stats-plates\)"):
        prepare_array(config, local=True, stats_plates=["9999"])
    path = tmp_path / "config.yaml"
    OmegaConf.save(config, path)
    assert main(["jump", "array", str(path), "--local", "--plates", "0042", "7"]) == 2
    assert "plates ['7'] (--plates) are not among the source's plates ['0042', '1086292853']" in capsys.readouterr().err
    assert not (tmp_path / "array").exists()


def test_plate_array_resumes_per_plate_and_equals_one_run(jump, tmp_path: Path) -> None:
    plates = ["0042", "1086292853"]
    single, _ = execute(small_config(jump.root, tmp_path / "single"))

    run_dir = tmp_path / "array"
    config = small_config(jump.root, run_dir)
    hidden = jump.root / "images" / "2021_05_31_Batch1" / "images" / "0042" / "0042_A01_s1_DNA.tiff"
    array = prepare_array(config, chunk=1, local=True, stats_plates=plates)
    assert array.plates == plates and array.todo == [["0042"], ["1086292853"]] and array.done == []
    assert (run_dir / "channel_stats.json").is_file()
    hidden.rename(hidden.with_suffix(".away"))  # plate 0042 cannot be read on the first attempt
    try:
        jobs = submit_array(array)
        assert len(jobs) == 2
        with pytest.raises(CellsslError, match=r"1 of 2 array task\(s\) failed.*0042_A01_s1_DNA.tiff"):
            wait_array(jobs)
    finally:
        hidden.with_suffix(".away").rename(hidden)
    assert plate_status(run_dir, "0042") == "not finished"
    assert plate_status(run_dir, "1086292853") is None
    with pytest.raises(CellsslError, match=r"1 of 2 plate\(s\) .* are not done \(0042: not finished\)"):
        merge_array(array.config)
    finished = plate_dir(run_dir, "1086292853")
    files = sorted((finished / "embeddings").glob("*")) + sorted((finished / "intensity").glob("*"))
    files.append(finished / "plate_done.json")
    assert len(list((finished / "embeddings").glob("part-*.parquet"))) >= 2  # shard_rows=16: several shards
    mtimes = {p: p.stat().st_mtime_ns for p in files}

    again = prepare_array(config, chunk=1, local=True, stats_plates=plates)
    assert again.done == ["1086292853"] and again.todo == [["0042"]]
    outcome = wait_array(submit_array(again))
    assert outcome == {"0042": "done"}
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes  # the finished plate was not redone
    result = merge_array(again.config)

    expected = json.loads((single.run_dir / "eval" / "jump_map.json").read_text())
    merged = json.loads((run_dir / "eval" / "jump_map.json").read_text())
    assert merged == result
    assert merged["counts"] == expected["counts"] and merged["counts"]["plates"] == 2
    for key, value in expected["metrics"].items():
        assert merged["metrics"][key] == pytest.approx(value, abs=1e-6), key
    for name in ("jump_map_activity.csv", "jump_map_baseline_activity.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(run_dir / "eval" / name), pd.read_csv(single.run_dir / "eval" / name),
                                      atol=1e-6)
    for name in ("well_profiles.parquet", "well_profiles_normalized.parquet", "well_profiles_baseline.parquet"):
        ours, theirs = pd.read_parquet(run_dir / "profiles" / name), pd.read_parquet(single.run_dir / "profiles" / name)
        assert list(ours.columns) == list(theirs.columns) and len(ours) == len(theirs)
        features = [c for c in ours.columns if not c.startswith("Metadata_")]
        pd.testing.assert_frame_equal(ours.drop(columns=features), theirs.drop(columns=features))
        np.testing.assert_allclose(ours[features].to_numpy(), theirs[features].to_numpy(), rtol=1e-5, atol=1e-6)
    # the same submission once more: nothing to do
    assert submit_array(prepare_array(config, chunk=1, local=True, stats_plates=plates)) == []


def test_config_digest_is_the_canonical_json_digest_plate_markers_already_hold() -> None:
    import hashlib

    from cellssl.plan.fingerprint import digest
    from cellssl_jumpcp.array import config_digest

    config = OmegaConf.create({"run": {"output_dir": "x", "seed": 3},
                               "data": {"name": "jump_cells", "plates": ["0042"]},
                               "eval": [{"name": "jump_map", "null_size": 500}], "weights": None})
    expected = hashlib.sha256(b'{"data":{"name":"jump_cells","plates":["0042"]},"eval":[{"name":"jump_map",'
                              b'"null_size":500}],"run":{"output_dir":"x","seed":3},"weights":null}').hexdigest()
    assert config_digest(config) == expected
    assert config_digest(config) == digest(OmegaConf.to_container(config, resolve=True))  # markers written before
    reordered = OmegaConf.create({"weights": None, "eval": [{"null_size": 500, "name": "jump_map"}],
                                  "data": {"plates": ["0042"], "name": "jump_cells"},
                                  "run": {"seed": 3, "output_dir": "x"}})
    assert config_digest(reordered) == expected
    OmegaConf.update(config, "data.plates", ["42"], merge=False)
    assert config_digest(config) != expected


def test_cli_refuses_a_parallelism_below_one(tmp_path: Path, capsys) -> None:
    path = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.load(CONFIG), path)
    assert main(["jump", "array", str(path), "--parallel", "0"]) == 2
    assert "config key '--parallel': must be >= 1, got 0" in capsys.readouterr().err
