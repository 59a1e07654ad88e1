"""One Embedder: the embed stage and evaluators that re-embed get the same numbers for the same rows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from cellssl.config.compose import load_run_config
from cellssl.embed.store import read_embeddings
from cellssl.pipeline import execute, run_embedder
from cellssl.plan.checks import plan_dataset
from cellssl.plan.fingerprint import file_sha256

TINY = {"patch_size": 8, "img_size": 40, "embed_dim": 32, "depth": 2, "num_heads": 2, "layerscale_init": None}


def test_the_run_embedder_reproduces_the_stored_table(runs: SimpleNamespace) -> None:
    config = runs.config(embed={"batch_size": 5, "precision": "fp32", "features": {"n_last_blocks": 2,
                                                                                     "avgpool": True}})
    run, _ = execute(load_run_config(runs.write(config), []), ["embed"])
    table = read_embeddings(runs.tmp / "run" / "embeddings")
    assert table.dim == 3 * 32 * 3  # 3 channels x (2 CLS + 1 mean patch token) x 32
    embedder = run_embedder(run)
    rows = [0, 7, 13, 23]
    again = embedder.embed_rows(plan_dataset(run.plan), rows)
    np.testing.assert_allclose(again, table.embeddings[rows], rtol=1e-5, atol=1e-6)
    images, names = embedder.preprocessed(plan_dataset(run.plan), rows[:2])
    assert images.shape == (2, 3, 40, 40) and names == ("brightfield", "dna", "darkfield")
    np.testing.assert_allclose(embedder.embed_images(images, names).numpy(), table.embeddings[rows[:2]],
                               rtol=1e-5, atol=1e-6)


def test_the_eval_stage_hands_evaluators_a_table_read_only_when_used(runs: SimpleNamespace) -> None:
    from dataclasses import dataclass

    from cellssl.eval.base import Evaluator
    from cellssl.plugins import hookimpl
    from cellssl.plugins.manager import build_plugin_state, use_plugin_state

    seen: list[Any] = []

    @dataclass
    class CountConfig:
        """``{name: row_count}``."""

    class RowCount(Evaluator):
        name = "row_count"

        def __init__(self, config: CountConfig) -> None:
            self.config = config

        def evaluate(self, table: Any, context: Any) -> dict[str, Any]:
            seen.append(table)
            return {"metrics": {"rows": len(table), "dim": table.dim}, "config": {}}

    class Plugin:
        @hookimpl
        def cellssl_register_evaluators(self, registry: Any) -> None:
            registry.add("row_count", RowCount, CountConfig, "counts rows (test)")

    state = build_plugin_state(extra_plugins=[("rows", "rows-dist", Plugin())], load_entry_points=False)
    with use_plugin_state(state):
        _, outputs = execute(load_run_config(runs.write(runs.config(eval=[{"name": "row_count"}])), []))
    assert outputs["eval"][0]["metrics"] == {"rows": 24, "dim": 96}
    assert not seen[0].loaded  # streaming evaluators never hold the whole table


# ------------------------------------------------------------------ another dataset with the run's model


def _start(runs: SimpleNamespace, name: str = "run.yaml", **sections: Any) -> Any:
    from cellssl.pipeline import start_run

    config = runs.config(**sections)
    if "run" not in sections:
        config["run"] = {"output_dir": str(runs.tmp / name.replace(".yaml", "")), "num_threads": 1}
    return start_run(load_run_config(runs.write(config, name), []))


def _dataset(block: dict[str, Any], **changes: Any) -> Any:
    from omegaconf import OmegaConf

    from cellssl.pipeline import build_dataset

    return build_dataset(OmegaConf.create({"data": {**block, **changes}}))


def test_the_run_embedder_fingerprint_is_the_embed_stage_fingerprint(runs: SimpleNamespace) -> None:
    from cellssl.pipeline import expected_embedding

    config = runs.config(embed={"batch_size": 8, "precision": "fp32"})
    run, _ = execute(load_run_config(runs.write(config), []), ["embed"])
    embedder = run_embedder(run)
    fingerprint, parts = expected_embedding(run)
    dataset = plan_dataset(run.plan)
    mine = embedder.fingerprint_parts(dataset, run.plan.data.as_dict())
    assert mine == {k: v for k, v in parts.items() if k != "rows_embedded"}
    assert mine["weights"] == {"random_init_seed": run.plan.run.seed}
    assert {"strategy", "backbone", "features", "img_size", "precision", "normalize"} <= set(mine)
    assert read_embeddings(runs.tmp / "run" / "embeddings").manifest["fingerprint"] == fingerprint


def test_for_dataset_embeds_other_channels_with_the_run_model_and_statistics(runs: SimpleNamespace) -> None:
    """bag_of_channels concat embeds each channel alone: the run's (brightfield, dna, darkfield) table holds, block
    by block, what the embedder for a (dna, brightfield) view of the same cells must give, when both normalise with
    the run's dataset statistics (which cover dna and brightfield, so none are computed for the view)."""
    import json

    run, _ = execute(load_run_config(runs.write(runs.config(embed={"batch_size": 8, "precision": "fp32"})), []),
                     ["embed"])
    table = read_embeddings(runs.tmp / "run" / "embeddings")
    view = _dataset(run.plan.data.as_dict(), use_channels=["dna", "brightfield"])
    stats_dir = runs.tmp / "view_stats"
    embedder = run_embedder(run).for_dataset(view, stats_dir)
    assert embedder.backbone is run_embedder(run).backbone and not stats_dir.exists()
    rows = [0, 5, 11, 23]
    got = embedder.embed_rows(view, rows)
    assert got.shape == (4, 2 * 32)
    np.testing.assert_allclose(got[:, :32], table.embeddings[rows, 32:64], rtol=1e-5, atol=1e-6)  # dna
    np.testing.assert_allclose(got[:, 32:], table.embeddings[rows, :32], rtol=1e-5, atol=1e-6)  # brightfield
    stored = json.loads((runs.tmp / "run" / "channel_stats.json").read_text())
    assert embedder.identity["normalize"]["stats"] == {
        "mean": {c: stored["mean"][c] for c in ("dna", "brightfield")},
        "std": {c: stored["std"][c] for c in ("dna", "brightfield")}}
    assert embedder.identity["img_size"] is None is embedder.identity["normalize"]["img_size"]  # 40 px kept


def test_dataset_statistics_of_another_dataset_are_computed_once_and_follow_its_rows(
        runs: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on (brightfield, dna) has no darkfield statistics: for the 3-channel dataset they are computed on it
    (every image: 24 < stats_samples), stored with their fingerprint, reused, and recomputed when its rows change."""
    import cellssl.data.preprocess as preprocess
    from cellssl.data.normalize import ChannelStats

    run = _start(runs, data={**runs.config()["data"], "use_channels": ["brightfield", "dna"]})
    base = run_embedder(run)
    assert set(ChannelStats.load(run.run_dir / "channel_stats.json").mean) == {"brightfield", "dna"}
    calls = []
    original = preprocess.compute_channel_stats
    monkeypatch.setattr(preprocess, "compute_channel_stats", lambda *a, **k: calls.append(1) or original(*a, **k))
    block = {k: v for k, v in run.plan.data.as_dict().items() if k != "use_channels"}
    full = _dataset(block)
    stats_dir = runs.tmp / "full_stats"
    first = base.for_dataset(full, stats_dir, data_block=block)
    path = stats_dir / "channel_stats.json"
    stats = ChannelStats.load(path)
    pixels = [np.stack([full[i].image.numpy().astype(np.float64) for i in range(len(full))])[:, c]
              for c in range(3)]
    assert calls == [1] and stats.num_images == 24 and stats.fingerprint
    for c, name in enumerate(("brightfield", "dna", "darkfield")):
        assert stats.mean[name] == pytest.approx(pixels[c].mean(), rel=1e-9)
        assert stats.std[name] == pytest.approx(pixels[c].std(), rel=1e-9)
    assert first.identity["normalize"]["stats"]["mean"] == stats.mean
    mtime = path.stat().st_mtime_ns
    again = base.for_dataset(_dataset(block), stats_dir, data_block=block)
    assert calls == [1] and path.stat().st_mtime_ns == mtime
    assert again.fingerprint(full, block) == first.fingerprint(full, block)
    table = pd.read_csv(block["table"])
    table.iloc[:20].to_csv(block["table"], index=False)  # the same block, fewer rows
    fewer = _dataset(block)
    third = base.for_dataset(fewer, stats_dir, data_block=block)
    assert calls == [1, 1] and ChannelStats.load(path).num_images == 20
    assert ChannelStats.load(path).fingerprint != stats.fingerprint
    assert third.fingerprint(fewer, block) != first.fingerprint(full, block)


def test_cached_export_is_reused_until_the_weights_change(runs: SimpleNamespace, tmp_path: Path) -> None:
    """The set in the folder equals ``embed_rows``; an unchanged embedder reuses it untouched, new weights (same
    config, another file content) embed it again, ``reuse=False`` always embeds."""
    from cellssl.models.vit import ViTConfig, build_vit

    weights = tmp_path / "weights.pt"
    def save(seed: int) -> None:
        torch.manual_seed(seed)
        torch.save(build_vit(ViTConfig(arch="vit_tiny", **TINY), 1).state_dict(), weights)

    save(1)
    sections = {"embed": {"batch_size": 8, "precision": "fp32"}, "normalize": {"mode": "per_image"},
                "weights": str(weights)}
    run = _start(runs, "first.yaml", **sections)
    view = _dataset(run.plan.data.as_dict(), use_channels=["dna", "darkfield"])
    out = tmp_path / "cache" / "view"
    embedder = run_embedder(run).for_dataset(view, out)
    table = embedder.cached_export(view, out, manifest_info={"what": "view"})
    np.testing.assert_allclose(table.embeddings, embedder.embed_rows(view, range(len(view))), rtol=1e-5, atol=1e-6)
    assert table.manifest["info"]["what"] == "view" and table.manifest["fingerprint"] == embedder.fingerprint(view)
    assert table.manifest["info"]["fingerprint_parts"]["weights"]["sha256"] == file_sha256(weights)
    manifest = out / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    reused = run_embedder(_start(runs, "again.yaml", **sections)).for_dataset(view, out).cached_export(view, out)
    assert manifest.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(reused.embeddings, table.embeddings)
    save(2)  # same path and config, other weights
    changed = run_embedder(_start(runs, "changed.yaml", **sections)).for_dataset(view, out)
    assert changed.fingerprint(view) != embedder.fingerprint(view)
    fresh = changed.cached_export(view, out)
    assert manifest.stat().st_mtime_ns != mtime
    assert not np.allclose(fresh.embeddings, table.embeddings, atol=1e-3)
    np.testing.assert_allclose(fresh.embeddings, changed.embed_rows(view, range(len(view))), rtol=1e-5, atol=1e-6)
    mtime = manifest.stat().st_mtime_ns
    forced = changed.cached_export(view, out, reuse=False)
    assert manifest.stat().st_mtime_ns != mtime
    np.testing.assert_array_equal(forced.embeddings, fresh.embeddings)


def test_a_fixed_model_refuses_other_channels_with_the_strategy_error(runs: SimpleNamespace) -> None:
    from cellssl.errors import DataError

    named = run_embedder(_start(runs, "named.yaml", channels={"name": "fixed",
                                                               "channels": ["brightfield", "dna", "darkfield"]}))
    view = _dataset(runs.config()["data"], use_channels=["dna", "brightfield"])
    with pytest.raises(DataError, match=r"'fixed' channel strategy was set up for channels \['brightfield', 'dna', "
                                        r"'darkfield'\] but the data has \['dna', 'brightfield'\]"):
        named.for_dataset(view, runs.tmp / "stats")
    unnamed = run_embedder(_start(runs, "unnamed.yaml", channels={"name": "fixed"}))
    with pytest.raises(DataError, match=r"backbone takes 3 input channel\(s\) but its 'fixed' channel strategy "
                                        r"needs 2 for the 2 channels \['dna', 'brightfield'\]"):
        unnamed.for_dataset(view, runs.tmp / "stats")


def test_an_embedder_without_factory_or_identity_says_so() -> None:
    from cellssl.channels.bag import BagOfChannels
    from cellssl.channels.configs import BagOfChannelsConfig
    from cellssl.embed import Embedder

    bare = Embedder(BagOfChannels(BagOfChannelsConfig()), torch.nn.Identity(), lambda image, names: image)
    dataset = SimpleNamespace(channel_names=("dna",), describe=lambda: "d")
    with pytest.raises(ValueError, match="without a preprocessing factory"):
        bare.for_dataset(dataset, "unused")
    with pytest.raises(ValueError, match="without an identity"):
        bare.fingerprint(dataset)


def test_the_preprocessing_factory_follows_stats_path_and_per_image_modes(runs: SimpleNamespace,
                                                                          tmp_path: Path) -> None:
    """``stats_path`` wins over the run's statistics (none are computed); per-image modes need none; the image is
    resized to ``img_size`` and normalised as ``(x - mean_c) / (std_c + eps)``."""
    from cellssl.config.schema import NormalizeSection
    from cellssl.data.normalize import ChannelStats
    from cellssl.data.preprocess import DatasetPreprocessFactory

    dataset = _dataset(runs.config()["data"], use_channels=["dna", "darkfield"])
    stats_file = tmp_path / "given.json"
    ChannelStats(mean={"dna": 0.25, "darkfield": 0.5, "brightfield": 9.0},
                 std={"dna": 0.5, "darkfield": 2.0, "brightfield": 9.0}).save(stats_file)
    run_stats = tmp_path / "run_stats.json"
    ChannelStats(mean={"dna": 7.0, "darkfield": 7.0}, std={"dna": 7.0, "darkfield": 7.0}).save(run_stats)
    factory = DatasetPreprocessFactory(NormalizeSection(mode="dataset", stats_path=str(stats_file), eps=0.0), 24,
                                       run_stats)
    preprocess, identity = factory(dataset, tmp_path / "stats")
    assert identity["stats"] == {"mean": {"dna": 0.25, "darkfield": 0.5}, "std": {"dna": 0.5, "darkfield": 2.0}}
    assert not (tmp_path / "stats").exists()
    image = dataset[3].image
    resized = torch.nn.functional.interpolate(image[None], size=(24, 24), mode="bilinear", antialias=True,
                                              align_corners=False)[0]
    expected = (resized - torch.tensor([0.25, 0.5]).view(2, 1, 1)) / torch.tensor([0.5, 2.0]).view(2, 1, 1)
    torch.testing.assert_close(preprocess(image, ("dna", "darkfield")), expected, rtol=1e-5, atol=1e-6)
    per_image, identity = DatasetPreprocessFactory(NormalizeSection(mode="per_image"), None, run_stats)(
        dataset, tmp_path / "stats")
    assert "stats" not in identity and identity["settings"]["mode"] == "per_image"
    out = per_image(image, ("dna", "darkfield"))
    assert out.shape == image.shape
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.zeros(2), atol=1e-5, rtol=0)
