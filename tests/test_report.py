"""``cellssl report`` / ``cellssl compare`` (cellssl.report) and the common results schema."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellssl.cli import main
from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext, write_result_json
from cellssl.eval.knn import KNNEvaluatorConfig, build_knn_evaluator
from cellssl.eval.linear import LinearEvaluatorConfig, build_linear_evaluator
from cellssl.report import compare_runs, comparison_text, load_results, schema_problems, write_comparison, write_report

REPO = Path(__file__).resolve().parents[1]


def _table(seed: int, n: int = 90) -> EmbeddingTable:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (np.eye(3, 6)[y] * 2 + rng.normal(size=(n, 6))).astype(np.float32)
    return EmbeddingTable(pd.DataFrame({"label": np.array(["G1", "G2", "S"])[y]}), x)


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _make_run(root: Path, seed: int) -> Path:
    run = root / f"run{seed}"
    context = EvalContext(run, identity={"dataset": {"name": "toy", "root": "/data/toy"}, "backbone": {"name": "vit"}})
    table = _table(seed)
    knn = build_knn_evaluator(KNNEvaluatorConfig(label_column="label", ks=[1, 5], few_shot={"shots": [2], "draws": 2}))
    write_result_json(knn.evaluate(table, context), run, "knn")
    linear = build_linear_evaluator(LinearEvaluatorConfig(label_column="label", min_steps=30))
    write_result_json(linear.evaluate(table, context), run, "linear")
    umap = {"evaluator": "umap", "metrics": {}, "split": {"all_rows": 90}, "config": {}, "identity": {},
            "files": ["eval/umap_label.png"]}
    write_result_json(umap, run, "umap")
    _png(run / "eval" / "umap_label.png", 10)
    _png(run / "eval" / "attention" / "head0.png", 20)  # no result named 'attention': an "other" picture
    (run / "config.yaml").write_text("data: {name: toy, root: /data/toy}\nbackbone: {name: vit_tiny, patch_size: 8}\n")
    return run


class _TagCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.opened: dict[str, int] = {}
        self.closed: dict[str, int] = {}
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.opened[tag] = self.opened.get(tag, 0) + 1
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        self.closed[tag] = self.closed.get(tag, 0) + 1


def test_every_classifier_result_follows_the_common_schema(tmp_path: Path) -> None:
    run = _make_run(tmp_path, 0)
    results = {r.name: r.data for r in load_results(run)}
    assert [schema_problems(results[n]) for n in ("knn", "linear", "umap")] == [[], [], []]
    knn = results["knn"]
    assert knn["table"][:2] == [
        {"train": "all", "k": k, **{m: knn["per_k"][str(k)][m] for m in
                                    ("accuracy", "balanced_accuracy", "macro_f1", "mean_per_class_multiclass_f1")}}
        for k in (1, 5)
    ]
    assert schema_problems({"evaluator": 3, "metrics": {"a": "x"}, "split": {"mode": "x"}}) == [
        "missing key 'config'", "missing key 'identity'", "'evaluator' must be a string",
        "'metrics' must be flat name -> number; not numbers: ['a']",
        "'split' must be an object with at least one '<side>_rows' size",
    ]


def test_report_markdown_and_html_hold_tables_and_pictures(tmp_path: Path) -> None:
    run = _make_run(tmp_path, 0)
    markdown_path, html_path = write_report(run)
    assert (markdown_path, html_path) == (run / "report.md", run / "report.html")
    markdown = markdown_path.read_text()
    assert "# cellssl report: run0" in markdown
    assert "| data | toy (root=/data/toy) |" in markdown and "| backbone | vit_tiny (patch_size=8) |" in markdown
    assert "## knn" in markdown and "## linear" in markdown and "## umap" in markdown
    assert "| train | k | accuracy | balanced_accuracy | macro_f1 |" in markdown
    assert "| 2-shot x2 | 1 |" in markdown  # few-shot rows, mean ± std
    linear = json.loads((run / "eval" / "linear.json").read_text())
    assert f"| macro_f1 | {linear['metrics']['macro_f1']:.4f} |" in markdown
    assert "<summary>grid (24 rows)</summary>" in markdown
    assert "Split: fraction: train 72, test 18, val 14, fit 72" in markdown
    # Pictures: the one the umap result names sits in its section; the other one at the end.
    umap_section = markdown.split("## umap")[1]
    assert "![umap_label.png](eval/umap_label.png)" in umap_section.split("## Other pictures")[0]
    assert "![head0.png](eval/attention/head0.png)" in markdown.split("## Other pictures")[1]

    page = html_path.read_text()
    parser = _TagCounter()
    parser.feed(page)
    assert parser.images == ["eval/umap_label.png", "eval/attention/head0.png"]
    for tag in ("table", "tr", "details", "figure", "h2"):
        assert parser.opened[tag] == parser.closed[tag] > 0
    assert "<th>macro_f1</th>" in page and "±" in page


def test_report_written_elsewhere_links_pictures_relative_to_itself(tmp_path: Path) -> None:
    run = _make_run(tmp_path, 0)
    out = tmp_path / "reports" / "latest"
    markdown_path, _ = write_report(run, out)
    markdown = markdown_path.read_text()
    assert "](../../run0/eval/umap_label.png)" in markdown
    assert (out / "../../run0/eval/umap_label.png").resolve().is_file()
    with pytest.raises(DataError, match=r"holds no results \(\*\.json\); run `cellssl eval CONFIG`"):
        write_report(tmp_path / "reports")


def test_compare_puts_runs_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = [_make_run(tmp_path, 0), _make_run(tmp_path, 1)]
    (runs[1] / "eval" / "umap.json").unlink()
    comparison = compare_runs(runs, metrics=["k*_macro_f1", "macro_f1"])
    assert comparison.runs == ["run0", "run1"]
    assert [name for name, _ in comparison.tables] == ["knn", "linear"]
    knn_table = dict(comparison.tables)["knn"]
    assert knn_table.columns == ["metric", "run0", "run1"]
    values = [json.loads((r / "eval" / "knn.json").read_text())["metrics"]["k5_macro_f1"] for r in runs]
    assert ["k5_macro_f1", *values] in knn_table.rows
    assert [row[0] for row in knn_table.rows] == ["k1_macro_f1", "k5_macro_f1"]
    text = comparison_text(comparison)
    assert text.splitlines()[0] == "knn:" and f"{values[0]:.4f}" in text and f"{values[1]:.4f}" in text

    everything = compare_runs(runs)
    umap_rows = dict(everything.tables).get("umap")
    assert umap_rows is None  # a result without metrics makes no table
    knn_metrics = json.loads((runs[0] / "eval" / "knn.json").read_text())["metrics"]
    assert [r[0] for r in dict(everything.tables)["knn"].rows] == list(knn_metrics)  # k sweep, then few-shot
    assert write_comparison(comparison, tmp_path / "cmp.md").read_text().count("| metric | run0 | run1 |") == 2
    assert json.loads(write_comparison(comparison, tmp_path / "cmp.json").read_text())["results"]["knn"][
        "k5_macro_f1"] == {"run0": values[0], "run1": values[1]}
    assert "<td>k5_macro_f1</td>" in write_comparison(comparison, tmp_path / "cmp.html").read_text()
    with pytest.raises(DataError, match=r"unknown format '\.txt'"):
        write_comparison(comparison, tmp_path / "cmp.txt")
    with pytest.raises(ConfigError, match=r"no metric matches \['nothing\*'\]"):
        compare_runs(runs, metrics=["nothing*"])

    assert main(["compare", str(runs[0]), str(runs[1]), "--evaluator", "linear", "--out",
                 str(tmp_path / "c.md")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("linear:\nmetric") and "run0" in out and f"wrote {tmp_path / 'c.md'}" in out
    assert main(["compare", str(runs[0]), "--metrics", "k1_*"]) == 0
    out = capsys.readouterr().out
    assert "k1_accuracy" in out and "k5_accuracy" not in out and "linear" not in out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "run directory" in capsys.readouterr().err


def test_bccd_five_fold_table_from_one_command_and_rendered(shared_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Acceptance: the blood-cell 5-fold table (1-NN, 20-NN, linear) on real BCCD crops, then the report.

    A small random ViT keeps the test fast; ``configs/eval/bccd_cv.yaml`` is run unchanged otherwise.
    """
    out = tmp_path / "bccd"
    status = main([
        "run", str(REPO / "configs" / "eval" / "bccd_cv.yaml"), f"run.output_dir={out}", "run.num_threads=1",
        f"data.root={shared_data / 'bccd-bloodcells'}", "backbone.name=vit_tiny", "backbone.depth=2",
        "backbone.img_size=32", "embed.img_size=32",
        "eval.0.classifiers=[{name: knn, ks: [1, 20]}, {name: linear, epochs: 3, min_steps: 60}]",
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "classifier    F1 (%)" in printed
    result = json.loads((out / "eval" / "cross_validation.json").read_text())
    assert result["split"]["rows"] == 1232 and result["split"]["test_rows"] == [247, 247, 246, 246, 246]
    assert [row["classifier"] for row in result["table"]] == ["1-NN", "20-NN", "linear probe"]
    assert result["labels"]["names"] == ["Platelets", "RBC", "WBC"]
    # Random features of real crops: well above chance (1/3) for every row.
    assert min(result["metrics"][f"{row}_f1_mean"] for row in ("1_nn", "20_nn", "linear_probe")) > 0.6
    assert main(["report", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert "| classifier | F1 (%) | recall (%) | precision (%) | balanced accuracy (%) |" in markdown
    linear_row = result["table"][2]
    assert f"| linear probe | {linear_row['F1 (%)']} | {linear_row['recall (%)']} |" in markdown
    assert "<td>20-NN</td>" in (out / "report.html").read_text()
