"""Embeddings are complete or unreadable: a killed embed stage resumes; partial or stale sets are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from cellssl.cli import main
from cellssl.embed.store import read_embeddings


def _embed_config(runs: SimpleNamespace, out: str, **embed: object) -> Path:
    config = runs.config(per_class=40, run={"output_dir": str(runs.tmp / out), "seed": 3, "num_threads": 1},
                         embed={"batch_size": 8, "shard_rows": 16, "precision": "fp32", **embed})
    return runs.write(config, f"{out}.yaml")


def test_a_killed_embed_stage_resumes_to_the_uninterrupted_table(runs: SimpleNamespace) -> None:
    killed = _embed_config(runs, "killed")
    process = subprocess.Popen([sys.executable, "-m", "cellssl.cli", "embed", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    shards = runs.tmp / "killed" / "embeddings"
    deadline = time.monotonic() + 300
    while not (shards / "part-00002.parquet").exists():
        assert process.poll() is None, "the embed process ended before it could be killed"
        assert time.monotonic() < deadline, "no shard written in time"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (shards / "manifest.json").exists()
    kept = sorted(shards.glob("part-*.parquet"))
    assert 3 <= len(kept) < 10  # 160 rows in 16-row shards: killed part-way
    with pytest.raises(Exception, match="no manifest: the export did not finish"):
        read_embeddings(shards)
    assert main(["eval", str(killed)]) == 2  # the partial set is not scored
    before = {p.name: p.stat().st_mtime_ns for p in kept}

    assert main(["embed", str(killed)]) == 0  # resumes
    after = {p.name: p.stat().st_mtime_ns for p in shards.glob("part-*.parquet")}
    assert all(after[name] == mtime for name, mtime in before.items())  # completed shards kept, not rewritten
    assert len(after) == 10

    fresh = _embed_config(runs, "fresh")
    assert main(["embed", str(fresh)]) == 0
    resumed, uninterrupted = read_embeddings(shards), read_embeddings(runs.tmp / "fresh" / "embeddings")
    assert len(resumed) == len(uninterrupted) == 160
    pd.testing.assert_frame_equal(resumed.metadata, uninterrupted.metadata)
    assert resumed.metadata["cell_id"].is_unique
    np.testing.assert_array_equal(resumed.embeddings, uninterrupted.embeddings)


def test_eval_refuses_removed_manifest_removed_or_extra_shard_and_changed_weights(
    runs: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    from cellssl.models.vit import ViTConfig, build_vit

    model = build_vit(ViTConfig(arch="vit_tiny", patch_size=8, img_size=40, embed_dim=32, depth=2, num_heads=2,
                                layerscale_init=None), 1)
    weights = runs.tmp / "backbone.pt"
    torch.save(model.state_dict(), weights)
    config = runs.config(per_class=10, weights=str(weights), embed={"batch_size": 8, "shard_rows": 16})
    path = runs.write(config)
    assert main(["run", str(path)]) == 0
    folder = runs.tmp / "run" / "embeddings"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == manifest["total_rows"] == 40 and len(manifest["shards"]) == 3
    assert manifest["info"]["fingerprint_parts"]["weights"]["sha256"] and manifest["skipped_rows"] == 0
    capsys.readouterr()

    def refused(match: str) -> None:
        assert main(["eval", str(path)]) == 2
        assert match in capsys.readouterr().err

    saved = (folder / "manifest.json").read_bytes()
    (folder / "manifest.json").unlink()
    refused("no manifest: the export did not finish")
    (folder / "manifest.json").write_bytes(saved)
    extra = folder / "part-00003.parquet"
    extra.write_bytes((folder / "part-00001.parquet").read_bytes())
    refused("are listed in no manifest")
    extra.unlink()
    shard = (folder / "part-00001.parquet").read_bytes()
    (folder / "part-00001.parquet").unlink()
    refused("listed in the manifest are missing")
    (folder / "part-00001.parquet").write_bytes(shard)
    assert main(["eval", str(path)]) == 0

    with torch.no_grad():  # same file, other weights: the embeddings no longer match the run's config
        model.cls_token.add_(1.0)
    torch.save(model.state_dict(), weights)
    refused("were computed from another data / channels / backbone / weights")
