"""The CHAMMI score (CHAMMI-75's single number): WTC T2 / 3 + (HPA T2 + HPA T3) / 6 + (CP T2 + CP T3 + CP T4) / 9,
computed by hand from the nine columns, checked on the published Channel-Adaptive DINO table, and ``None`` naming
the missing tasks when a subset was not evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellssl.cli import main
from cellssl_chammi.table import chammi_score, load_run_rows, table_row, to_csv, to_markdown

NINE = {"WTC T1": 0.91, "WTC T2": 0.62, "HPA T1": 0.88, "HPA T2": 0.47, "HPA T3": 0.21, "CP T1": 0.95,
        "CP T2": 0.40, "CP T3": 0.18, "CP T4": 0.09}


def test_score_is_the_mean_over_subsets_of_their_out_of_distribution_tasks() -> None:
    by_hand = 0.62 / 3 + (0.47 + 0.21) / 6 + (0.40 + 0.18 + 0.09) / 9  # = 0.206667 + 0.113333 + 0.074444
    assert by_hand == pytest.approx(0.394444, abs=1e-6)
    assert chammi_score(NINE) == (pytest.approx(by_hand, abs=1e-12), [])
    row = table_row("classifier", "knn", NINE)
    assert row["CHAMMI"] == pytest.approx(by_hand, abs=1e-12) and "CHAMMI_missing" not in row
    assert row["mean"] == pytest.approx(sum(NINE.values()) / 9)  # the in-distribution tasks count in the mean only
    changed = {**NINE, "WTC T1": 0.0, "HPA T1": 0.0, "CP T1": 0.0}
    assert chammi_score(changed)[0] == pytest.approx(by_hand, abs=1e-12)
    assert to_markdown([row]).splitlines()[2].endswith(f" | {row['mean']:.4f} | 0.3944 |")
    assert to_csv([row]).splitlines()[0].endswith(",mean,CHAMMI")


def test_published_channel_adaptive_dino_table_gives_its_published_scores() -> None:
    """Channel-Adaptive DINO's kNN and linear CHAMMI tables (percent) give about 52.1 and 67.9."""
    knn = dict(zip(NINE, [79.4, 79.0, 86.6, 59.3, 29.6, 92.6, 57.6, 22.1, 18.5]))
    linear = dict(zip(NINE, [90.5, 89.2, 88.3, 84.7, 65.0, 90.5, 60.5, 25.8, 32.7]))
    assert round(chammi_score(knn)[0], 1) == 52.1
    assert round(chammi_score(linear)[0], 1) == 67.9


def test_a_missing_subset_gives_none_and_names_what_is_missing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    without_cp = {k: v for k, v in NINE.items() if not k.startswith("CP")}
    assert chammi_score(without_cp) == (None, ["CP T2", "CP T3", "CP T4"])
    assert chammi_score({**NINE, "HPA T3": None}) == (None, ["HPA T3"])
    row = table_row("classifier", "knn", without_cp)
    assert row["CHAMMI"] is None and row["CHAMMI_missing"] == ["CP T2", "CP T3", "CP T4"]
    assert row["tasks_in_mean"] == 5
    assert to_markdown([row]).splitlines()[2].endswith(" | - |")
    assert "CHAMMI_missing" not in to_markdown([row])  # the list is not a label column
    # a result written before the score existed gets it when tables are printed side by side
    old = {k: v for k, v in table_row("classifier", "knn", NINE).items() if k != "CHAMMI"}
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "chammi.json").write_text(json.dumps({"evaluator": "chammi", "table": [old]}))
    (rows,) = load_run_rows([tmp_path / "run"])
    assert rows["CHAMMI"] == pytest.approx(chammi_score(NINE)[0])
    assert main(["chammi-table", str(tmp_path / "run"), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(",mean,CHAMMI")
