"""Acceptance: `cellssl run configs/eval/chammi_knn.yaml data.root=FIXTURE weights=...` makes the nine-column
table; a 1-channel bag-of-channels model embeds the 4- and 5-channel subsets; the numbers match an
independent computation; `cellssl chammi-table`; `cellssl data download chammi` from a local server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from cellssl.cli import main
from cellssl.embed.store import read_embeddings
from cellssl.models.vit import ViTConfig, build_vit
from cellssl_chammi.config import ChammiSubsetConfig
from cellssl_chammi.dataset import build_chammi_dataset

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "eval" / "chammi_knn.yaml"
DIM = 32
# The config names the published ViT-L/16; the fixture run shrinks it (the weights must match the backbone).
TINY = ["backbone.name=vit_tiny", f"backbone.embed_dim={DIM}", "backbone.depth=2", "backbone.num_heads=2",
        "backbone.patch_size=8", "backbone.img_size=40", "backbone.layerscale_init=null", "embed.img_size=40",
        "embed.precision=fp32", "run.num_threads=1"]  # fp32: no bf16 distance ties in the sklearn cross-check
COLUMNS = ["WTC T1", "WTC T2", "HPA T1", "HPA T2", "HPA T3", "CP T1", "CP T2", "CP T3", "CP T4"]
TASKS = {"WTC": ("Allen", ["Task_one", "Task_two"], None, None),
         "HPA": ("HPA", ["Task_one", "Task_two", "Task_three"], "Task_three", "cell_type"),
         "CP": ("CP", ["Task_one", "Task_two", "Task_three", "Task_four"], "Task_four", "Plate")}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bag-of-channels backbone: in_chans=1, as trained on the (image, channel) pairs of 3-channel data."""
    torch.manual_seed(0)
    model = build_vit(ViTConfig(arch="vit_tiny", embed_dim=DIM, depth=2, num_heads=2, patch_size=8, img_size=40,
                                layerscale_init=None), 1)
    path = tmp_path_factory.mktemp("weights") / "boc_backbone.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def run_dir(chammi, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "chammi_knn"
    torch.set_num_threads(1)
    status = main(["run", str(CONFIG), f"data.root={chammi.root}", f"weights={weights}", f"run.output_dir={out}",
                   *TINY])
    assert status == 0
    return out


def test_run_writes_the_nine_column_table(run_dir: Path) -> None:
    result = json.loads((run_dir / "eval" / "chammi.json").read_text())
    assert result["evaluator"] == "chammi"
    (row,) = result["table"]
    assert row["classifier"] == "knn"
    values = [row[c] for c in COLUMNS]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values)
    assert row["mean"] == pytest.approx(np.mean(values)) and row["tasks_in_mean"] == 9
    wtc, hpa, cp = values[1], values[3:5], values[6:9]  # the out-of-distribution tasks of each subset
    assert row["CHAMMI"] == pytest.approx((wtc + np.mean(hpa) + np.mean(cp)) / 3, abs=1e-12)
    assert "CHAMMI_missing" not in row
    assert result["metrics"]["knn_HPA_T3"] == row["HPA T3"] and result["metrics"]["knn_CHAMMI"] == row["CHAMMI"]
    csv = pd.read_csv(run_dir / "eval" / "chammi_table.csv")
    assert list(csv.columns) == ["classifier", *COLUMNS, "mean", "CHAMMI"]
    assert csv.loc[0, "CHAMMI"] == pytest.approx(row["CHAMMI"], abs=1e-12)
    assert csv.loc[0, COLUMNS].tolist() == pytest.approx(values, abs=1e-12)
    markdown = (run_dir / "eval" / "chammi_table.md").read_text().splitlines()
    assert markdown[0] == "| classifier | " + " | ".join(COLUMNS) + " | mean | CHAMMI |"
    assert markdown[2].endswith(f" | {row['mean']:.4f} | {row['CHAMMI']:.4f} |")
    assert markdown[2].startswith(f"| knn | {values[0]:.4f} | {values[1]:.4f} |")


def test_one_channel_model_embeds_the_4_and_5_channel_subsets(run_dir: Path) -> None:
    subsets = json.loads((run_dir / "eval" / "chammi.json").read_text())["subsets"]
    assert {k: (v["rows"], v["embedding_dim"], v["embeddings"]) for k, v in subsets.items()} == {
        "wtc": (64, 3 * DIM, "embeddings"),  # the embed stage's table (data.subset: wtc) is reused
        "hpa": (54, 4 * DIM, "chammi_embeddings/hpa"),
        "cp": (80, 5 * DIM, "chammi_embeddings/cp"),
    }
    assert subsets["hpa"]["channels"] == ["microtubules", "protein", "dna", "er"]
    assert read_embeddings(run_dir / "chammi_embeddings" / "cp").dim == 5 * DIM


def _load(run_dir: Path, chammi_root: Path, title: str) -> tuple[pd.DataFrame, np.ndarray]:
    folder = TASKS[title][0]
    table = read_embeddings(run_dir / ("embeddings" if title == "WTC" else f"chammi_embeddings/{title.lower()}"))
    meta = pd.read_csv(chammi_root / folder / "enriched_meta.csv")
    position = {ident: i for i, ident in enumerate(table.metadata["ID"])}
    return meta, table.embeddings[[position[i] for i in meta["ID"]]]


def _independent_scores(meta: pd.DataFrame, x: np.ndarray, tasks: list[str], leave_out: str | None,
                        group: str | None) -> list[float]:
    classes = sorted(meta["Label"].unique())
    y = meta["Label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    train = (meta["train_test_split"] == "Train").to_numpy()
    scores = []
    for task in tasks:
        rows = meta[task].to_numpy(dtype=bool)
        truth, predicted = [], []
        if task == leave_out:
            for value in sorted(meta.loc[rows, group].unique()):
                held = rows & (meta[group] == value).to_numpy()
                fit = train | (rows & ~held)
                knn = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x[fit], y[fit])
                truth.append(y[held])
                predicted.append(knn.predict(x[held]))
        else:
            knn = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x[train], y[train])
            truth.append(y[rows])
            predicted.append(knn.predict(x[rows]))
        t, p = np.concatenate(truth), np.concatenate(predicted)
        scores.append(f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0))
    return scores


def test_table_matches_an_independent_sklearn_computation(run_dir: Path, chammi) -> None:
    row = json.loads((run_dir / "eval" / "chammi.json").read_text())["table"][0]
    expected: list[float] = []
    for title, (_, tasks, leave_out, group) in TASKS.items():
        meta, x = _load(run_dir, chammi.root, title)
        expected += _independent_scores(meta, x, tasks, leave_out, group)
    assert [row[c] for c in COLUMNS] == pytest.approx(expected, abs=1e-9)


def test_eval_again_reuses_cached_embeddings_and_adds_linear(run_dir: Path, chammi, weights: Path,
                                                              tmp_path: Path) -> None:
    copy = tmp_path / "again"
    shutil.copytree(run_dir, copy)
    manifest = copy / "chammi_embeddings" / "hpa" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    knn_row = json.loads((run_dir / "eval" / "chammi.json").read_text())["table"][0]
    status = main(["eval", str(CONFIG), f"data.root={chammi.root}", f"weights={weights}", f"run.output_dir={copy}",
                   *TINY, "eval[0].classifiers=[knn,linear]", "eval[0].linear.learning_rates=[0.3]",
                   "eval[0].linear.weight_decays=[0.0]", "eval[0].linear.epochs=1"])
    assert status == 0
    assert manifest.stat().st_mtime_ns == before
    rows = json.loads((copy / "eval" / "chammi.json").read_text())["table"]
    assert [r["classifier"] for r in rows] == ["knn", "linear"]
    assert [rows[0][c] for c in COLUMNS] == pytest.approx([knn_row[c] for c in COLUMNS], abs=1e-12)
    assert all(0.0 <= rows[1][c] <= 1.0 for c in COLUMNS)


def test_without_the_cp_subset_the_chammi_score_is_none_and_says_why(run_dir: Path, chammi, weights: Path,
                                                                     tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    copy = tmp_path / "wtc_hpa"
    shutil.copytree(run_dir, copy)
    with caplog.at_level(logging.WARNING, logger="cellssl_chammi.evaluator"):
        assert main(["eval", str(CONFIG), f"data.root={chammi.root}", f"weights={weights}",
                     f"run.output_dir={copy}", *TINY, "eval[0].subsets=[wtc,hpa]"]) == 0
    result = json.loads((copy / "eval" / "chammi.json").read_text())
    (row,) = result["table"]
    assert row["CHAMMI"] is None and row["CHAMMI_missing"] == ["CP T2", "CP T3", "CP T4"]
    assert row["tasks_in_mean"] == 5 and "knn_CHAMMI" not in result["metrics"]
    assert "no CHAMMI score: it needs the out-of-distribution tasks CP T2, CP T3, CP T4" in caplog.text
    full = json.loads((run_dir / "eval" / "chammi.json").read_text())["table"][0]
    assert [row[c] for c in COLUMNS[:5]] == pytest.approx([full[c] for c in COLUMNS[:5]], abs=1e-12)


def test_metadata_without_an_id_column_gives_the_same_table(run_dir: Path, chammi, weights: Path,
                                                            tmp_path: Path) -> None:
    """Rows are keyed by ``ID``, else ``Key`` (as some CP metadata names it), else ``file_path`` alone."""
    root = tmp_path / "CHAMMI"
    shutil.copytree(chammi.root, root)
    cp = pd.read_csv(root / "CP" / "enriched_meta.csv")
    cp.rename(columns={"ID": "Key"}).to_csv(root / "CP" / "enriched_meta.csv", index=False)
    wtc = pd.read_csv(root / "Allen" / "enriched_meta.csv")
    wtc.drop(columns=["ID"]).to_csv(root / "Allen" / "enriched_meta.csv", index=False)
    out = tmp_path / "run"
    assert main(["run", str(CONFIG), f"data.root={root}", f"weights={weights}", f"run.output_dir={out}", *TINY]) == 0
    result = json.loads((out / "eval" / "chammi.json").read_text())
    assert result["subsets"]["wtc"]["embeddings"] == "embeddings"  # the embed stage's table matched by file_path
    assert "Key" in read_embeddings(out / "chammi_embeddings" / "cp").metadata.columns
    expected = json.loads((run_dir / "eval" / "chammi.json").read_text())["table"][0]
    assert [result["table"][0][c] for c in COLUMNS] == pytest.approx([expected[c] for c in COLUMNS], abs=1e-12)


def test_chammi_table_prints_runs_side_by_side(run_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other_run"
    shutil.copytree(run_dir / "eval", other / "eval")
    assert main(["chammi-table", str(run_dir), str(other), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "run,classifier," + ",".join(COLUMNS) + ",mean,CHAMMI"
    assert [line.split(",")[0] for line in lines[1:]] == ["chammi_knn", "other_run"]
    assert lines[1].split(",")[2:] == lines[2].split(",")[2:]
    assert main(["chammi-table", str(run_dir), "--percent"]) == 0
    text = capsys.readouterr().out.splitlines()
    value = json.loads((run_dir / "eval" / "chammi.json").read_text())["table"][0]["WTC T1"]
    assert text[1].split()[:3] == ["chammi_knn", "knn", f"{100 * value:.2f}"]
    assert main(["chammi-table", str(tmp_path)]) == 2
    assert "holds no CHAMMI result (eval/chammi*.json)" in capsys.readouterr().err


def test_download_chammi_from_a_local_server(chammi, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "CHAMMI.zip", "w") as archive:
        for path in sorted(chammi.root.rglob("*")):
            archive.write(path, Path("CHAMMI") / path.relative_to(chammi.root))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/CHAMMI.zip"
        digest = hashlib.sha256((served / "CHAMMI.zip").read_bytes()).hexdigest()
        target = tmp_path / "data"
        assert main(["data", "download", "chammi", f"url={url}", f"sha256={digest}", "--to", str(target),
                     "--no-progress"]) == 0
        assert "chammi: 1 downloaded, 0 already complete, 1 unpacked" in capsys.readouterr().out
        assert main(["data", "download", "chammi", f"url={url}", "sha256=" + "0" * 64, "--to", str(tmp_path / "bad"),
                     "--no-progress"]) == 2
        assert "checksum mismatch for CHAMMI.zip" in capsys.readouterr().err
        assert main(["data", "download", "chammi", "sha256=xyz", "--to", str(tmp_path / "bad")]) == 2
        assert "sha256 must be 64 hex digits, got 'xyz'" in capsys.readouterr().err
    finally:
        httpd.shutdown()
        httpd.server_close()
    dataset = build_chammi_dataset(ChammiSubsetConfig(root=str(target)), "cp")  # root holds CHAMMI/
    assert len(dataset) == 80 and dataset.chammi_root == target / "CHAMMI"
