"""``cellssl benchmark``: two models (a tiny DINO run trained on real Jurkat cells, and the same architecture
randomly initialised) on a tiny suite of two real-data benchmarks (Jurkat phases, BBBC021 MoA) plus an optional
benchmark whose data is absent and one whose plugin is absent; one leaderboard in Markdown, HTML and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cellssl.cli import main
from cellssl.embed.store import read_embeddings
from cellssl.errors import ConfigError, UnknownNameError
from cellssl.zoo.benchmark import load_suite, resolve_model

TINY_VIT = {"name": "vit_tiny", "patch_size": 8, "img_size": 32, "embed_dim": 32, "depth": 2, "num_heads": 2,
            "layerscale_init": None}
PHASES = ("G1", "S_phase", "G2", "Prophase")


def _subset(source: Path, out: Path, column: str, values: tuple[str, ...], per_value: int) -> Path:
    meta = pd.read_csv(source / "metadata.csv")
    rows = pd.concat([meta[meta[column] == v].iloc[::40].head(per_value) for v in values], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False)
    return out


def _eval_config(root: Path, table: Path, label: str, out: Path) -> dict:
    return {
        "run": {"output_dir": str(out), "num_threads": 1, "seed": 0},
        "data": {"name": "table", "root": str(root), "table": str(table), "bit_depth": "uint16",
                 "label_columns": [label]},
        "channels": {"name": "fixed"},                       # the models replace the strategy and backbone
        "backbone": {"name": "vit_small", "patch_size": 16, "img_size": 64},
        "embed": {"img_size": 48, "batch_size": 16, "precision": "fp32"},
        "normalize": {"mode": "dataset"},
        "eval": [{"name": "knn", "label_column": label, "ks": [1, 3], "metric": "cosine",
                  "split": {"mode": "fraction", "test_fraction": 0.5, "seed": 0}}],
    }


def _write(config: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def setup(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("benchmark")
    jurkat, bbbc = shared_data / "jurkat-cellcycle", shared_data / "bbbc021-crops"
    jurkat_table = _subset(jurkat, tmp / "tables" / "jurkat.csv", "phase", PHASES, 6)
    bbbc_table = _subset(bbbc, tmp / "tables" / "bbbc.csv", "moa", ("DMSO", "Protein synthesis"), 10)
    train = _eval_config(jurkat, jurkat_table, "phase", tmp / "trained")
    train.update(channels={"name": "bag_of_channels", "aggregate": "concat"}, backbone=dict(TINY_VIT),
                 embed={"img_size": 32, "batch_size": 16, "precision": "fp32"},
                 objective={"name": "dino", "multicrop": {"global_size": 32, "local_size": 16, "n_local": 2,
                                                          "global_scale": [0.5, 1.0], "local_scale": [0.2, 0.5]},
                            "head": {"out_dim": 32, "hidden_dim": 64, "bottleneck_dim": 16, "use_bn": True}},
                 train={"epochs": 1, "batch_size": 12, "precision": "fp32", "progress": False})
    assert main(["run", str(_write(train, tmp / "train.yaml"))]) == 0
    configs = {"jurkat": _write(_eval_config(jurkat, jurkat_table, "phase", tmp / "unused"), tmp / "jurkat.yaml"),
               "bbbc021": _write(_eval_config(bbbc, bbbc_table, "moa", tmp / "unused"), tmp / "bbbc021.yaml")}
    suite = {"name": "tiny", "benchmarks": [
        {"name": "jurkat", "config": str(configs["jurkat"]), "metrics": ["k?_macro_f1", "k?_accuracy"]},
        {"name": "bbbc021", "config": "bbbc021.yaml", "overrides": ["eval[0].ks=[1]"], "metrics": ["k1_macro_f1"]},
        {"name": "chammi", "config": str(Path("configs/eval/chammi_knn.yaml").resolve()),
         "overrides": [f"data.root={tmp / 'no_chammi_here'}"], "optional": True},
        {"name": "absent_plugin", "config": str(configs["jurkat"]), "overrides": ["data.name=not_a_dataset"],
         "optional": True},
    ]}
    suite_path = _write(suite, tmp / "suite.yaml")  # bbbc021.yaml is found beside the suite file
    out = tmp / "board"
    status = main(["benchmark", str(tmp / "trained"), f"random:{tmp / 'trained'}", "--suite", str(suite_path),
                   "--out", str(out), "--set", "embed.batch_size=7"])
    assert status == 0
    return {"tmp": tmp, "out": out, "suite": suite_path, "trained": tmp / "trained"}


def test_leaderboard_has_one_column_per_model_and_one_row_per_metric(setup: dict) -> None:
    board = json.loads((setup["out"] / "leaderboard.json").read_text())
    assert [m["label"] for m in board["models"]] == ["trained", "random_trained"]
    assert [m["kind"] for m in board["models"]] == ["run", "random run"]
    assert list(board["benchmarks"]) == ["jurkat", "bbbc021"]
    jurkat = board["benchmarks"]["jurkat"]["results"]["knn"]
    assert sorted(jurkat) == ["k1_accuracy", "k1_macro_f1", "k3_accuracy", "k3_macro_f1"]
    for benchmark, results in (("jurkat", jurkat), ("bbbc021", board["benchmarks"]["bbbc021"]["results"]["knn"])):
        for metric, values in results.items():
            assert list(values) == ["trained", "random_trained"]
            for model, value in values.items():  # each cell is the run's own eval/knn.json value
                run = setup["out"] / benchmark / model
                assert value == json.loads((run / "eval" / "knn.json").read_text())["metrics"][metric]
                assert 0.0 <= value <= 1.0
    assert list(board["benchmarks"]["bbbc021"]["results"]["knn"]) == ["k1_macro_f1"]

    lines = (setup["out"] / "leaderboard.md").read_text().splitlines()
    header = lines.index("| benchmark | result | metric | trained | random_trained |")
    rows = [line for line in lines[header + 2:] if line.startswith("| ")]
    rows = rows[: next(i for i, r in enumerate(rows) if r.startswith("| benchmark | config"))]
    assert [r.split(" | ")[:3] for r in rows] == [["| jurkat", "knn", m] for m in jurkat] + [
        ["| bbbc021", "knn", "k1_macro_f1"]]
    k1 = jurkat["k1_macro_f1"]
    assert f"| jurkat | knn | k1_macro_f1 | {k1['trained']:.4f} | {k1['random_trained']:.4f} |" in lines
    html = (setup["out"] / "leaderboard.html").read_text()
    assert html.count("<tr>") >= 1 + len(rows) and "random_trained" in html


def test_skipped_benchmarks_are_listed_with_their_reason(setup: dict, capsys: pytest.CaptureFixture[str]) -> None:
    board = json.loads((setup["out"] / "leaderboard.json").read_text())
    skipped = {s["benchmark"]: s["reason"] for s in board["skipped"]}
    assert skipped == {
        "chammi": f"data.root '{setup['tmp'] / 'no_chammi_here'}' does not exist",
        "absent_plugin": "dataset 'not_a_dataset' is not registered by any installed plugin",
    }
    markdown = (setup["out"] / "leaderboard.md").read_text()
    assert "## Skipped" in markdown
    assert f"| chammi | {Path('configs/eval/chammi_knn.yaml').resolve()} | data.root '" in markdown
    assert not (setup["out"] / "chammi").exists()


def test_each_model_runs_with_its_own_architecture_and_weights(setup: dict) -> None:
    out, trained = setup["out"], setup["trained"]
    for model in ("trained", "random_trained"):
        run = out / "bbbc021" / model
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["backbone"] == {**TINY_VIT}  # the model's block replaced the benchmark's vit_small
        assert config["channels"] == {"name": "bag_of_channels", "aggregate": "concat"}
        assert config["embed"]["img_size"] == 32 and config["run"]["stages"] == ["embed", "eval"]
        assert config["embed"]["batch_size"] == 7  # --set applies to every benchmark
        table = read_embeddings(run / "embeddings")
        assert table.embeddings.shape == (20, 3 * 32)  # 20 crops, 3 channels folded, per-channel CLS concatenated
    assert yaml.safe_load((out / "bbbc021" / "trained" / "config.yaml").read_text())["weights"] == str(
        trained / "teacher_backbone.pt")
    assert yaml.safe_load((out / "bbbc021" / "random_trained" / "config.yaml").read_text())["weights"] is None
    a = read_embeddings(out / "jurkat" / "trained" / "embeddings").embeddings
    b = read_embeddings(out / "jurkat" / "random_trained" / "embeddings").embeddings
    assert a.shape == b.shape == (24, 96) and not (a == b).all()


def test_a_rerun_into_the_same_folder_gives_the_same_leaderboard(setup: dict,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    manifest = setup["out"] / "jurkat" / "trained" / "embeddings" / "manifest.json"
    before = json.loads((setup["out"] / "leaderboard.json").read_text())
    assert main(["benchmark", str(setup["trained"]), f"random:{setup['trained']}", "--suite", str(setup["suite"]),
                 "--out", str(setup["out"]), "--set", "embed.batch_size=7"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {setup['out'] / 'leaderboard.md'}" in printed
    assert "skipped chammi (" in printed and "does not exist" in printed
    assert json.loads((setup["out"] / "leaderboard.json").read_text())["benchmarks"] == before["benchmarks"]
    assert manifest.is_file()


def test_bad_models_and_suites_are_refused_with_what_to_do(setup: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownNameError, match=r"model 'cell_dino_cp_vit8' is neither a run directory, a weights "
                                               r"file nor a model card: .*Did you mean 'cell_dino_cp_vits8'"):
        resolve_model("cell_dino_cp_vit8")
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "config.yaml").write_text(yaml.safe_dump({"backbone": TINY_VIT}))
    assert main(["benchmark", str(untrained), "--suite", str(setup["suite"]), "--out", str(tmp_path / "o")]) == 2
    assert f"'{untrained}' holds no teacher_backbone.pt: train the run first" in capsys.readouterr().err
    assert resolve_model(f"base=random:{untrained}").label == "base"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"benchmarks": [{"config": "nowhere.yaml"}]}))
    with pytest.raises(ConfigError, match=r"config key 'benchmarks\[0\]\.config': suite file .*config 'nowhere.yaml' "
                                          r"does not exist"):
        load_suite(bad)
    bad.write_text(yaml.safe_dump({"benchmarks": [{"config": str(setup["suite"].parent / "jurkat.yaml"),
                                                   "optinal": True}]}))
    with pytest.raises(ConfigError, match=r"'benchmarks\[0\]\.optinal': unknown key"):
        load_suite(bad)
    assert main(["benchmark", str(setup["trained"]), str(setup["trained"]), "--suite", str(setup["suite"])]) == 2
    assert "two models get the column label ['trained']: name them with LABEL=MODEL" in capsys.readouterr().err


def test_a_required_benchmark_that_does_not_validate_fails_before_any_run(setup: dict, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    suite = {"name": "broken", "benchmarks": [
        {"name": "fine", "config": str(setup["suite"].parent / "jurkat.yaml")},
        {"name": "typo", "config": str(setup["suite"].parent / "jurkat.yaml"),
         "overrides": ["eval[0].label_column=stage"]},
    ]}
    path = _write(suite, tmp_path / "suite.yaml")
    assert main(["benchmark", str(setup["trained"]), "--suite", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "benchmark 'typo'" in err and "model 'trained'" in err and "'eval[0].label_column'" in err
    assert not (tmp_path / "out").exists()  # the valid first benchmark did not run either


def test_the_cpu_suite_lists_the_three_configs_and_says_why_the_large_benchmarks_are_skipped() -> None:
    from cellssl.zoo.benchmark import absence_reason

    suite = load_suite(Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "cpu_suite.yaml")
    assert [(e.name, e.config.name, e.optional) for e in suite.entries] == [
        ("jurkat", "jurkat_bag_of_channels.yaml", False), ("bccd", "bccd_cv.yaml", False),
        ("bbbc021", "bbbc021_moa.yaml", False), ("chammi", "chammi_knn.yaml", True),
        ("hpa_fov", "hpa_fov_knn.yaml", True), ("jump", "jump_profiles.yaml", True)]
    reasons = {e.name: absence_reason(e) for e in suite.entries if e.optional}
    if not Path("data/CHAMMI").exists():
        assert reasons["chammi"] == "data.root 'data/CHAMMI' does not exist"
    assert reasons["jump"] == "data.root is not set (add `data.root=PATH` to the benchmark's overrides)"
