"""The chammi evaluator embeds the subsets with the run's shared Embedder (``EvalContext.embedder``).

A bag-of-channels run on WTC (3 channels) in ``normalize: {mode: dataset}``: its statistics cover dna, membrane
and protein only, so HPA and CP are normalised with statistics of their own, computed once on the subset, stored
beside its embeddings and recomputed when its rows change. The cached subset embeddings equal
``Embedder.for_dataset(...).embed_rows`` on the subset, are reused while nothing changed, and embedded again when
the weights change. A ``fixed`` model fails on a subset with other channels with the strategy's error, and an
evaluation without a model says that it needs one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cellssl.cli import main
from cellssl.config.compose import load_run_config
from cellssl.data.normalize import ChannelStats
from cellssl.embed.store import read_embeddings
from cellssl.errors import ConfigError
from cellssl.eval.base import EvalContext
from cellssl.models.vit import ViTConfig, build_vit
from cellssl.pipeline import execute, run_embedder
from cellssl_chammi.config import ChammiEvaluatorConfig, ChammiSubsetConfig
from cellssl_chammi.dataset import build_chammi_dataset
from cellssl_chammi.evaluator import ChammiEvaluator

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "eval" / "chammi_knn.yaml"
DIM = 32
TINY = ["backbone.name=vit_tiny", f"backbone.embed_dim={DIM}", "backbone.depth=2", "backbone.num_heads=2",
        "backbone.patch_size=8", "backbone.img_size=40", "backbone.layerscale_init=null", "embed.img_size=40",
        "embed.precision=fp32", "run.num_threads=1", "normalize.mode=dataset"]
CHANNELS = {"hpa": ("microtubules", "protein", "dna", "er"), "cp": ("dna", "er", "rna", "golgi", "mito")}


def _save_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_vit(ViTConfig(arch="vit_tiny", embed_dim=DIM, depth=2, num_heads=2, patch_size=8, img_size=40,
                                layerscale_init=None), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def _overrides(root: Path, weights: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.root={root}", f"weights={weights}", f"run.output_dir={out}", *TINY, *extra]


@pytest.fixture(scope="module")
def setup(chammi, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A WTC-trained-style bag-of-channels run (embed + chammi eval) on a copy of the fixture tree."""
    base = tmp_path_factory.mktemp("chammi_embedder")
    root = base / "CHAMMI"
    shutil.copytree(chammi.root, root)
    weights = _save_weights(base / "weights" / "boc.pt", 0)
    out = base / "run"
    run, _ = execute(load_run_config(CONFIG, _overrides(root, weights, out)))
    return {"root": root, "weights": weights, "out": out, "run": run}


def _subset(root: Path, key: str) -> Any:
    return build_chammi_dataset(ChammiSubsetConfig(root=str(root)), key)


@pytest.mark.parametrize("key", ["hpa", "cp"])
def test_subset_embeddings_are_the_run_embedder_on_the_subset(setup: dict[str, Any], key: str,
                                                              tmp_path: Path) -> None:
    cached = read_embeddings(setup["out"] / "chammi_embeddings" / key)
    dataset = _subset(setup["root"], key)
    embedder = run_embedder(setup["run"]).for_dataset(dataset, tmp_path / "stats")  # statistics computed again
    expected = embedder.embed_rows(dataset, list(range(len(dataset))))
    assert cached.embeddings.shape == expected.shape == (len(dataset), len(CHANNELS[key]) * DIM)
    assert list(cached.metadata["ID"]) == list(dataset.metadata["ID"])
    np.testing.assert_allclose(cached.embeddings, expected, rtol=1e-5, atol=1e-5)
    parts = cached.manifest["info"]["fingerprint_parts"]
    assert parts["data"]["rows"] == len(dataset) and parts["data"]["channels"] == list(CHANNELS[key])
    assert parts["strategy"]["name"] == "bag_of_channels" and parts["precision"] == "fp32"
    assert cached.manifest["info"]["chammi_subset"] == key


@pytest.mark.parametrize("key", ["hpa", "cp"])
def test_dataset_statistics_of_a_subset_are_its_own_pixels(setup: dict[str, Any], chammi, key: str) -> None:
    """The run's statistics (WTC: dna, membrane, protein) do not cover the subset: they are computed on its tapes
    (8-bit, scaled by 255 in float32), here checked against numpy over the planes re-derived from the source TIFFs."""
    run_stats = ChannelStats.load(setup["out"] / "channel_stats.json")
    assert set(run_stats.mean) == {"dna", "membrane", "protein"}
    stats = ChannelStats.load(setup["out"] / "chammi_embeddings" / key / "channel_stats.json")
    frame = chammi.frames[key]
    planes = np.stack([chammi.planes(key, row) for _, row in frame.iterrows()]).astype(np.float32) / np.float32(255)
    planes = planes.astype(np.float64)
    assert stats.num_images == len(frame) and stats.fingerprint
    for c, name in enumerate(CHANNELS[key]):
        assert stats.mean[name] == pytest.approx(planes[:, c].mean(), rel=1e-9)
        assert stats.std[name] == pytest.approx(planes[:, c].std(), rel=1e-9)


def test_cache_is_reused_unchanged_and_embedded_again_for_new_weights_or_rows(
        setup: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "CHAMMI"
    shutil.copytree(setup["root"], root)
    weights = _save_weights(tmp_path / "weights.pt", 0)
    out = tmp_path / "run"
    assert main(["run", str(CONFIG), *_overrides(root, weights, out)]) == 0
    hpa = out / "chammi_embeddings" / "hpa"
    first = read_embeddings(hpa)
    np.testing.assert_allclose(first.embeddings, read_embeddings(setup["out"] / "chammi_embeddings" / "hpa").embeddings,
                               rtol=1e-6, atol=1e-6)  # same weights, rows and settings as the module's run
    times = {p.name: p.stat().st_mtime_ns for p in hpa.iterdir()}

    assert main(["eval", str(CONFIG), *_overrides(root, weights, out)]) == 0  # nothing changed
    assert {p.name: p.stat().st_mtime_ns for p in hpa.iterdir()} == times

    _save_weights(weights, 1)  # same path and config, other weights: the embed stage and the cache embed again
    assert main(["run", str(CONFIG), *_overrides(root, weights, out)]) == 0
    second = read_embeddings(hpa)
    assert (hpa / "manifest.json").stat().st_mtime_ns != times["manifest.json"]
    assert second.manifest["fingerprint"] != first.manifest["fingerprint"]
    assert not np.allclose(second.embeddings, first.embeddings, atol=1e-3)
    assert (hpa / "channel_stats.json").stat().st_mtime_ns == times["channel_stats.json"]  # same pixels: kept

    meta = pd.read_csv(root / "HPA" / "enriched_meta.csv")
    meta.drop(index=[0, 1, 2]).to_csv(root / "HPA" / "enriched_meta.csv", index=False)  # the rows change
    assert main(["eval", str(CONFIG), *_overrides(root, weights, out)]) == 0
    third = read_embeddings(hpa)
    assert len(third) == len(meta) - 3 and list(third.metadata["ID"]) == list(meta["ID"][3:])
    assert ChannelStats.load(hpa / "channel_stats.json").num_images == len(meta) - 3
    result = json.loads((out / "eval" / "chammi.json").read_text())
    assert result["subsets"]["hpa"]["rows"] == len(meta) - 3


def test_a_fixed_model_fails_on_a_subset_with_other_channels(chammi, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    config["channels"] = {"name": "fixed", "channels": ["dna", "membrane", "protein"]}
    config["eval"][0]["subsets"] = ["wtc", "hpa"]
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path), f"data.root={chammi.root}", f"run.output_dir={tmp_path / 'run'}", *TINY]) == 2
    err = capsys.readouterr().err
    assert "the 'fixed' channel strategy was set up for channels ['dna', 'membrane', 'protein'] but the data has " \
           "['microtubules', 'protein', 'dna', 'er']" in err
    assert (tmp_path / "run" / "embeddings" / "manifest.json").is_file()  # WTC, its own channels, was embedded
    assert not (tmp_path / "run" / "chammi_embeddings" / "hpa" / "manifest.json").exists()


def test_without_a_model_the_evaluator_says_it_needs_one(chammi, tmp_path: Path) -> None:
    evaluator = ChammiEvaluator(ChammiEvaluatorConfig(root=str(chammi.root), subsets=["hpa"]))
    with pytest.raises(ConfigError, match=r"backbone.*embeds CHAMMI HPA with the run's model, but this evaluation "
                                          r"has none"):
        evaluator.evaluate(None, EvalContext(run_dir=tmp_path))
