"""The CHAMMI protocol on hand-made embeddings whose scores are worked out by hand, and the table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellssl.errors import DataError
from cellssl_chammi.config import ChammiLinearConfig
from cellssl_chammi.protocol import evaluate_subset, linear_probe, one_nn, task_mask
from cellssl_chammi.subsets import TABLE_COLUMNS, Subset
from cellssl_chammi.table import table_row, to_csv, to_markdown, to_text

TOY = Subset(key="toy", title="TOY", folders=("TOY",), published_channels=("a",), channels=("a",),
             tasks=("Task_one", "Task_two", "Task_three"), leave_out_task="Task_three", group_column="Plate")

# (split, label, position on a line, plate)
ROWS = [
    ("Train", "A", 0.0, "p0"), ("Train", "B", 10.0, "p0"),
    ("Task_one", "A", 1.0, "p0"), ("Task_one", "B", 9.0, "p0"),
    ("Task_two", "A", 6.0, "p0"), ("Task_two", "B", 11.0, "p0"),
    ("Task_three", "C", 20.0, "g1"), ("Task_three", "D", 40.0, "g1"),
    ("Task_three", "C", 21.0, "g2"), ("Task_three", "E", 41.0, "g2"),
]


def toy() -> tuple[np.ndarray, pd.DataFrame]:
    meta = pd.DataFrame([{"train_test_split": s, "Label": label, "Plate": plate} for s, label, _, plate in ROWS])
    for task in TOY.tasks:
        meta[task] = meta["train_test_split"] == task
    x = np.array([[pos] for *_, pos, _ in ROWS], dtype=np.float32)
    return x, meta


def test_one_nn_scores_match_the_hand_computation() -> None:
    x, meta = toy()
    scores = evaluate_subset(x, meta, TOY, one_nn("l2"), leave_out_task="Task_three", group_column="Plate")
    assert list(scores) == ["Task_one", "Task_two", "Task_three"]
    assert scores["Task_one"].macro_f1 == pytest.approx(1.0)
    # Task_two: A@6 is nearer B@10 than A@0 -> predicted B; B@11 -> B. F1(A) = 0, F1(B) = 2/3.
    assert scores["Task_two"].macro_f1 == pytest.approx(1 / 3)
    assert scores["Task_two"].per_class == pytest.approx({"A": 0.0, "B": 2 / 3})
    # Task_three, leave one plate out: holding g1 the memory is Train + g2 (C@21, E@41): C@20 -> C, D@40 -> E;
    # holding g2 the memory is Train + g1 (C@20, D@40): C@21 -> C, E@41 -> D. F1: C 1, D 0, E 0.
    loo = scores["Task_three"]
    assert loo.leave_one_group_out and loo.groups == ["g1", "g2"]
    assert loo.macro_f1 == pytest.approx(1 / 3) and loo.accuracy == pytest.approx(0.5)
    assert loo.train_rows == pytest.approx(4.0) and loo.test_rows == 4


def test_groups_come_from_the_metadata_column() -> None:
    x, meta = toy()
    renamed = meta.assign(Plate=meta["Plate"].map({"p0": "P-0", "g1": "X", "g2": "Y"}))
    scores = evaluate_subset(x, renamed, TOY, one_nn(), leave_out_task="Task_three", group_column="Plate")
    assert scores["Task_three"].groups == ["X", "Y"] and scores["Task_three"].macro_f1 == pytest.approx(1 / 3)
    # another column with one group for all novel rows: the memory is Train only, every novel row -> B
    meta["site"] = "s1"
    single = evaluate_subset(x, meta, TOY, one_nn(), leave_out_task="Task_three", group_column="site")
    assert single["Task_three"].groups == ["s1"]
    assert single["Task_three"].macro_f1 == pytest.approx(0.0) and single["Task_three"].accuracy == 0.0
    with pytest.raises(DataError, match=r"no group column 'cell_type' for the leave-one-group-out task Task_three"):
        evaluate_subset(x, meta, TOY, one_nn(), leave_out_task="Task_three", group_column="cell_type")
    # without the leave-out setting Task_three is scored with the Train memory only (no leave-one-out)
    plain = evaluate_subset(x, meta, TOY, one_nn(), leave_out_task=None, group_column=None)
    assert not plain["Task_three"].leave_one_group_out and plain["Task_three"].macro_f1 == pytest.approx(0.0)


def test_task_rows_from_boolean_columns_or_the_split_column() -> None:
    _, meta = toy()
    meta.loc[2, "Task_two"] = True  # a row can belong to two tasks
    assert np.flatnonzero(task_mask(meta, "Task_two")).tolist() == [2, 4, 5]
    text = meta.assign(Task_two=meta["Task_two"].map({True: "True", False: "False"}))
    assert np.flatnonzero(task_mask(text, "Task_two")).tolist() == [2, 4, 5]
    sparse = meta.assign(Task_two=[True if v else None for v in meta["Task_two"]])  # empty cells mean False
    assert np.flatnonzero(task_mask(sparse, "Task_two")).tolist() == [2, 4, 5]
    assert np.flatnonzero(task_mask(meta.drop(columns=["Task_one"]), "Task_one")).tolist() == [2, 3]
    with pytest.raises(DataError, match="task column 'Task_one' of the metadata holds 'maybe'"):
        task_mask(meta.assign(Task_one="maybe"), "Task_one")
    with pytest.raises(DataError, match="has no column 'Task_four' and no row with train_test_split == 'Task_four'"):
        task_mask(meta, "Task_four")


def test_missing_train_rows_or_task_rows_are_errors() -> None:
    x, meta = toy()
    no_train = meta.assign(train_test_split=meta["train_test_split"].replace("Train", "Task_one"))
    with pytest.raises(DataError, match="no row with train_test_split == 'Train'"):
        evaluate_subset(x, no_train, TOY, one_nn(), leave_out_task=None, group_column=None)
    with pytest.raises(DataError, match="task Task_two of CHAMMI TOY has no rows"):
        evaluate_subset(x, meta.assign(Task_two=False), TOY, one_nn(), leave_out_task=None, group_column=None)


def test_linear_protocol_separates_clusters() -> None:
    rng = np.random.default_rng(0)
    labels = ["A"] * 30 + ["B"] * 30 + ["A"] * 5 + ["B"] * 5 + ["A"] * 5 + ["B"] * 5
    split = ["Train"] * 60 + ["Task_one"] * 10 + ["Task_two"] * 10
    centres = {"A": np.array([3.0, 0.0, 0.0, 0.0]), "B": np.array([-3.0, 0.0, 0.0, 0.0])}
    x = np.stack([centres[label] + 0.3 * rng.standard_normal(4) for label in labels]).astype(np.float32)
    meta = pd.DataFrame({"train_test_split": split, "Label": labels})
    meta["Task_one"], meta["Task_two"] = meta["train_test_split"] == "Task_one", meta["train_test_split"] == "Task_two"
    two_tasks = Subset("toy", "TOY", ("TOY",), ("a",), ("a",), ("Task_one", "Task_two"))
    settings = ChammiLinearConfig(learning_rates=[0.1, 1.0], weight_decays=[0.0], epochs=2, batch_size=32)
    scores = evaluate_subset(x, meta, two_tasks, linear_probe(settings), leave_out_task=None, group_column=None)
    assert scores["Task_one"].macro_f1 == 1.0 and scores["Task_two"].macro_f1 == 1.0


def test_table_rows_and_rendering() -> None:
    assert TABLE_COLUMNS == ("WTC T1", "WTC T2", "HPA T1", "HPA T2", "HPA T3", "CP T1", "CP T2", "CP T3", "CP T4")
    row = table_row("classifier", "knn", {"WTC T1": 0.5, "HPA T3": 0.25, "CP T4": 0.0})
    assert row["mean"] == pytest.approx(0.25) and row["tasks_in_mean"] == 3
    assert row["WTC T2"] is None
    markdown = to_markdown([row])
    assert markdown.splitlines()[0] == ("| classifier | WTC T1 | WTC T2 | HPA T1 | HPA T2 | HPA T3 | CP T1 | CP T2 | "
                                        "CP T3 | CP T4 | mean | CHAMMI |")
    assert markdown.splitlines()[2] == "| knn | 0.5000 | - | - | - | 0.2500 | - | - | - | 0.0000 | 0.2500 | - |"
    assert to_markdown([row], percent=True).splitlines()[2].startswith("| knn | 50.00 | - |")
    assert to_csv([row]).splitlines()[1] == "knn,0.5,,,,0.25,,,,0.0,0.25,"
    assert to_text([row]).splitlines()[1].split() == ["knn", "0.5000", "-", "-", "-", "0.2500", "-", "-", "-",
                                                      "0.0000", "0.2500", "-"]
