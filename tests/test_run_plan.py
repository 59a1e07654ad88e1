"""The run plan: the whole config is validated before any stage runs or anything is written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from cellssl.cli import main
from cellssl.config.compose import load_run_config
from cellssl.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from cellssl.pipeline import execute
from cellssl.plan import build_plan
from cellssl.plan.checks import check_plan


def _plan(runs: SimpleNamespace, **sections: object):
    return build_plan(load_run_config(runs.write(runs.config(**sections)), []))


def test_a_typo_in_the_fourth_evaluator_of_a_training_config_fails_at_once(runs: SimpleNamespace) -> None:
    evaluators = runs.config()["eval"] * 3 + [{"name": "knnn"}]
    path = runs.write(runs.config(objective=runs.dino(), train={"epochs": 50}, eval=evaluators))
    start = time.perf_counter()
    with pytest.raises(Exception, match=r"config key 'eval\[3\]\.name': unknown evaluator 'knnn'\. Did you mean 'knn'"):
        execute(load_run_config(path, []))
    assert time.perf_counter() - start < 20  # long before 50 epochs of training
    assert not (runs.tmp / "run").exists()  # nothing was written, not even the run directory


def test_a_wrong_label_column_fails_before_training_and_leaves_no_run_dir(runs: SimpleNamespace) -> None:
    evaluators = [{"name": "knn", "label_column": "phase", "ks": [1]},
                  {"name": "linear", "label_column": "stage"}]
    config = load_run_config(runs.write(runs.config(objective=runs.dino(), eval=evaluators)), [])
    with pytest.raises(ConfigError, match=r"config key 'eval\[1\]\.label_column': names column 'stage', which the "
                                          r"dataset table does not have\. Columns: path, phase, cell_id"):
        execute(config)
    assert not (runs.tmp / "run").exists()


def test_every_section_is_validated_with_its_key_path(runs: SimpleNamespace) -> None:
    cases = {
        "train": ({"train": {"lr": "fast"}}, r"config key 'train\.lr': wrong type"),
        "embed": ({"embed": {"precision": "fp16"}}, r"config key 'embed': precision must be one of"),
        "normalize": ({"normalize": {"mode": "zscore"}}, r"config key 'normalize': normalize\.mode must be one of"),
        "launcher_key": ({"launcher": {"name": "local", "nodes": 2}}, r"config key 'launcher\.nodes': unknown key"),
        "extra": ({"train": {"extra_datasets": [{"data": {"name": "table", "tabel": "x.csv"}}]}},
                  r"config key 'train\.extra_datasets\[0\]\.data\.tabel': unknown key"),
        "use_channels": ({"data": {**runs.config()["data"], "use_channels": "dna"}}, None),
        "weights": ({"weights": str(runs.tmp / "missing.pt")}, r"config key 'weights': checkpoint file .* does not "
                                                              r"exist"),
        "weights_key": ({"weights": {"file": "x.pt"}}, r"config key 'weights\.file': unknown key"),
    }
    with pytest.raises(UnknownNameError, match=r"config key 'launcher\.name': unknown launcher 'kubernetes'"):
        _plan(runs, launcher={"name": "kubernetes"})
    for name, (sections, message) in cases.items():
        if message is None:
            assert _plan(runs, **sections).data.use_channels == ("dna",), name
            continue
        with pytest.raises(ConfigError, match=message):
            _plan(runs, **sections)


def test_the_strategy_must_take_the_data_channels_before_anything_runs(runs: SimpleNamespace) -> None:
    plan = _plan(runs, channels={"name": "fixed", "channels": ["dna", "brightfield", "darkfield", "mito"]})
    with pytest.raises(DataError, match=r"config key 'channels' with data: the 'fixed' channel strategy was set up for "
                                        r"channels \['dna', 'brightfield', 'darkfield', 'mito'\].*give it data with "
                                        r"those channels \(`use_channels"):
        check_plan(plan)
    plan = _plan(runs, channels={"name": "fixed", "channels": ["dna", "darkfield"]})
    with pytest.raises(DataError,
                       match=r"select them with `use_channels: \['dna', 'darkfield'\]` in the `data:` block"):
        check_plan(plan)
    data = {**runs.config()["data"], "use_channels": ["DAPI", "darkfield"]}  # an alias of dna
    check_plan(_plan(runs, data=data, channels={"name": "fixed", "channels": ["dna", "darkfield"]}))


def test_weights_must_load_and_fit_the_backbone(runs: SimpleNamespace) -> None:
    from cellssl.models.vit import ViTConfig, build_vit

    wrong = build_vit(ViTConfig(arch="vit_tiny", patch_size=8, img_size=40, embed_dim=48, depth=2, num_heads=2), 1)
    torch.save(wrong.state_dict(), runs.tmp / "wide.pt")
    with pytest.raises(CheckpointError, match=r"config key 'weights': .*wide\.pt"):
        check_plan(_plan(runs, weights=str(runs.tmp / "wide.pt")))
    (runs.tmp / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
        check_plan(_plan(runs, weights=str(runs.tmp / "empty.pt")))
    right = build_vit(ViTConfig(arch="vit_tiny", patch_size=8, img_size=40, embed_dim=32, depth=2, num_heads=2,
                                layerscale_init=None), 1)
    torch.save({"student": {"backbone." + k: v for k, v in right.state_dict().items()}}, runs.tmp / "ckpt.pt")
    plan = check_plan(_plan(runs, weights={"path": str(runs.tmp / "ckpt.pt"), "key_prefix": "student.backbone."}))
    loaded = plan.cache["weighted_backbone"].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in right.state_dict().items())


def test_config_show_prints_every_section_and_names_a_bad_override(
    runs: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    path = runs.write(runs.config(objective=runs.dino()))
    assert main(["config", "show", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert set(shown) == {"run", "data", "channels", "backbone", "weights", "normalize", "objective", "train",
                          "embed", "eval", "launcher"}
    assert shown["train"]["lr_scaling"] == "sqrt" and shown["embed"]["shard_rows"] == 50_000
    assert shown["eval"][0]["temperature"] == 0.07 and shown["launcher"] == {"name": "local"}
    assert shown["data"]["use_channels"] is None and shown["data"]["check_files"] == "exists"
    assert main(["config", "show", str(path), "train.epochs=many"]) == 2
    assert "(set by the command-line override 'train.epochs=many')" in capsys.readouterr().err
    assert main(["config", "show", "--check", str(path), "eval[0].label_column=stage"]) == 2
    assert "names column 'stage'" in capsys.readouterr().err


def test_a_rejected_override_never_replaces_a_valid_config(runs: SimpleNamespace) -> None:
    path = runs.write(runs.config(run={"output_dir": str(runs.tmp / "run"), "stages": ["embed"]}))
    assert main(["embed", str(path)]) == 0
    saved = (runs.tmp / "run" / "config.yaml").read_text()
    assert main(["embed", str(path), "embed.batch_size=0"]) == 2
    assert main(["embed", str(path), "eval[0].label_column=stage"]) == 2
    assert (runs.tmp / "run" / "config.yaml").read_text() == saved


def test_run_directory_refuses_changed_outputs_allows_extensions_and_restarts(runs: SimpleNamespace) -> None:
    path = runs.write(runs.config())
    assert main(["run", str(path)]) == 0
    run_dir = runs.tmp / "run"
    manifest = json.loads((run_dir / "embeddings" / "manifest.json").read_text())
    # another normalisation changes what the finished embed stage produced: refused, with the keys
    with pytest.raises(ConfigError, match=r"holds the outputs of the embed stage\(s\) of another config: changed keys "
                                          r"normalize\.mode.*--restart"):
        execute(load_run_config(path, ["normalize.mode=per_image"]))
    assert "mode: dataset" in (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"changed keys embed\.bf16.*--restart"):  # cast weights: other numbers
        execute(load_run_config(path, ["embed.bf16=cast"]))
    # other evaluators only extend the run: allowed and recorded
    assert main(["eval", str(path), "eval[0].ks=[1,3]"]) == 0
    history = [json.loads(line) for line in (run_dir / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changed"] == ["eval.0.ks"] or "eval" in history[-1]["changed"][0]
    assert json.loads((run_dir / "embeddings" / "manifest.json").read_text()) == manifest
    # starting over deletes the outputs and embeds anew
    assert main(["run", "--restart", str(path), "normalize.mode=per_image"]) == 0
    assert json.loads((run_dir / "embeddings" / "manifest.json").read_text())["fingerprint"] != manifest["fingerprint"]
    assert "mode: per_image" in (run_dir / "config.yaml").read_text()


def test_channel_statistics_know_what_they_were_computed_from(runs: SimpleNamespace, tmp_path: Path) -> None:
    from cellssl.data.normalize import ChannelStats
    from cellssl.data.preprocess import resolve_channel_stats
    from cellssl.pipeline import build_dataset

    config = load_run_config(runs.write(runs.config()), [])
    dataset = build_dataset(config)
    first = resolve_channel_stats(tmp_path, None, dataset, 100, fingerprint="a" * 64)
    stored = json.loads((tmp_path / "channel_stats.json").read_text())
    assert stored["fingerprint"] == "a" * 64 and stored["num_images"] == len(dataset) == 24
    few = build_dataset(load_run_config(runs.write(runs.config(per_class=2)), []))
    again = resolve_channel_stats(tmp_path, None, few, 100, fingerprint="a" * 64)
    assert again.mean == first.mean  # same fingerprint: reused
    changed = resolve_channel_stats(tmp_path, None, few, 100, fingerprint="b" * 64)
    assert changed.num_images == 8 and changed.mean != first.mean  # another fingerprint: recomputed
    assert ChannelStats.load(tmp_path / "channel_stats.json").fingerprint == "b" * 64
    corrupted = {**stored, "mean": {**stored["mean"], "dna": float("nan")}}
    (tmp_path / "channel_stats.json").write_text(json.dumps(corrupted))
    with pytest.raises(DataError, match="non-numeric or non-finite values"):
        ChannelStats.load(tmp_path / "channel_stats.json")


def test_non_finite_pixels_are_an_error_naming_the_sample() -> None:
    from cellssl.data.dataset import CellDataset
    from cellssl.data.normalize import compute_channel_stats

    class Broken(CellDataset):
        channel_names = ("dna", "rna")

        def __init__(self) -> None:
            import pandas as pd

            self.metadata = pd.DataFrame({"well": ["A01", "A02", "A03"]})

        def load_image(self, index: int) -> torch.Tensor:
            image = torch.ones(2, 4, 4)
            if index == 2:
                image[1, 0, 0] = float("inf")
            return image

    with pytest.raises(DataError, match=r"sample 2 has non-finite pixel values \(NaN or inf\) in channel 'rna' "
                                        r"\(metadata well=A03\)"):
        compute_channel_stats(Broken(), progress=False)


def test_evaluators_default_to_the_dataset_label_column(runs: SimpleNamespace) -> None:
    path = runs.write(runs.config(eval=[{"name": "knn", "ks": [1], "split": {"mode": "fraction", "seed": 0}}]))
    assert main(["run", str(path)]) == 0
    result = json.loads((runs.tmp / "run" / "eval" / "knn.json").read_text())
    assert result["labels"]["source"] == "phase" or "phase" in str(result["labels"]["source"])
    assert result["labels"]["names"] == ["G1", "G2", "Prophase", "S_phase"]
