"""nsc_nscb: not-same-compound / -batch 1-NN accuracy on hand-made profiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext
from cellssl.eval.nsc_nscb import NSCConfig, NSCEvaluator, not_same_nn_accuracy
from cellssl.report.results import schema_problems

# Profiles on the unit circle; cosine similarity ranks by angular distance (degrees).
#        angle  moa  compound  batch
ROWS = [(0, "X", "c1", "b1"),
        (10, "X", "c2", "b1"),
        (22, "Y", "c3", "b2"),
        (40, "X", "c4", "b2"),
        (90, "Y", "c5", "b1"),
        (100, "Y", "c6", "b2")]


def _table(compounds: list[str] | None = None) -> EmbeddingTable:
    angles = np.radians([r[0] for r in ROWS])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0
    meta = pd.DataFrame({"moa": [r[1] for r in ROWS], "compound": compounds or [r[2] for r in ROWS],
                         "batch": [r[3] for r in ROWS]})
    return EmbeddingTable(metadata=meta, embeddings=emb.astype(np.float32), manifest={})


def _evaluate(table: EmbeddingTable, tmp_path: Path, **kwargs: object) -> dict:
    config = NSCConfig(label_column="moa", compound_column="compound", **kwargs)
    return NSCEvaluator(config).evaluate(table, EvalContext(run_dir=tmp_path))


def test_nsc_and_nscb_differ_on_a_case_computed_by_hand(tmp_path: Path) -> None:
    # NSC (every compound distinct: only the query itself is excluded):
    #   0 -> 10 (X) ok; 10 -> 0 (X) ok; 22 -> 10 (X) wrong; 40 -> 22 (Y) wrong; 90 -> 100 ok; 100 -> 90 ok: 4/6
    # NSCB, every same-batch candidate excluded (neighbour from the other batch):
    #   0 (b1) -> 22 (Y) wrong; 10 (b1) -> 22 (Y) wrong; 22 (b2) -> 10 (X) wrong; 40 (b2) -> 10 (X) ok;
    #   90 (b1) -> 100 ok; 100 (b2) -> 90 ok: 3/6
    result = _evaluate(_table(), tmp_path, batch_column="batch", nscb_batch_exclusion="all")
    assert result["split"]["nscb_batch_exclusion"] == "all"
    metrics = result["metrics"]
    assert metrics["nsc_accuracy"] == pytest.approx(4 / 6)
    assert metrics["nscb_accuracy"] == pytest.approx(3 / 6)
    assert metrics["nsc_scored"] == 6 and metrics["nscb_scored"] == 6
    assert schema_problems(result) == []
    per_label = {row["moa"]: row for row in result["table"]}
    assert per_label["X"]["nsc_accuracy"] == pytest.approx(2 / 3)
    assert per_label["X"]["nscb_accuracy"] == pytest.approx(1 / 3)
    assert per_label["Y"]["nscb_accuracy"] == pytest.approx(2 / 3)


def test_nscb_unidino_rule_by_hand(tmp_path: Path) -> None:
    # The default rule (uniDINO's): a same-batch candidate is excluded only when it has the query's label.
    #   0 (X, b1): 10 excluded -> 22 (Y, b2) wrong; 10 (X, b1): 0 excluded -> 22 (Y) wrong;
    #   22 (Y, b2): 100 excluded -> 10 (X) wrong; 40 (X, b2): no X in b2 -> 22 (Y, same batch, allowed) wrong
    #   (the "all" rule sends it to 10, right); 90 (Y, b1) -> 100 ok; 100 (Y, b2): 22 excluded -> 90 ok: 2/6
    result = _evaluate(_table(), tmp_path, batch_column="batch")
    assert result["config"]["nscb_batch_exclusion"] == "same_label"
    assert result["split"]["nscb_batch_exclusion"] == "same_label"
    assert result["metrics"]["nscb_accuracy"] == pytest.approx(2 / 6)
    assert result["metrics"]["nscb_scored"] == 6
    assert result["metrics"]["nsc_accuracy"] == pytest.approx(4 / 6)  # NSC does not depend on the rule
    per_label = {row["moa"]: row for row in result["table"]}
    assert per_label["X"]["nscb_accuracy"] == 0.0
    assert per_label["Y"]["nscb_accuracy"] == pytest.approx(2 / 3)


def test_nscb_batch_exclusion_must_be_known() -> None:
    with pytest.raises(ValueError, match=r"nscb_batch_exclusion must be one of same_label, all, got 'batch'"):
        NSCConfig(label_column="moa", compound_column="compound", nscb_batch_exclusion="batch")


def test_same_compound_neighbours_are_excluded(tmp_path: Path) -> None:
    # rows 0 and 1 share compound c1: 0 -> 22 (Y) wrong, 10 -> 22 (Y) wrong; the rest as above: 2/6
    compounds = ["c1", "c1", "c3", "c4", "c5", "c6"]
    result = _evaluate(_table(compounds), tmp_path)
    assert result["metrics"]["nsc_accuracy"] == pytest.approx(2 / 6)
    assert "nscb_accuracy" not in result["metrics"]
    assert result["split"]["compounds"] == 5


def test_queries_without_a_possible_match_are_not_scored(tmp_path: Path) -> None:
    # label Y only in compound c3 -> Y queries cannot be right: unscored, not wrong
    compounds = ["c1", "c2", "c3", "c4", "c3", "c3"]
    result = _evaluate(_table(compounds), tmp_path)
    assert result["metrics"]["nsc_scored"] == 3 and result["metrics"]["nsc_unscored"] == 3
    # X queries: 0 -> 10 ok, 10 -> 0 ok, 40 -> 22 (Y) wrong
    assert result["metrics"]["nsc_accuracy"] == pytest.approx(2 / 3)


def test_reference_only_and_excluded_labels(tmp_path: Path) -> None:
    # Y as reference only: 3 X queries (0 -> 10 ok, 10 -> 0 ok, 40 -> 22 Y wrong)
    result = _evaluate(_table(), tmp_path, reference_only_labels=["Y"])
    assert result["split"]["query_rows"] == 3
    assert result["metrics"]["nsc_accuracy"] == pytest.approx(2 / 3)
    # Y excluded entirely: 40 -> 10 (X) now ok
    result = _evaluate(_table(), tmp_path, exclude_labels=["Y"])
    assert result["metrics"]["nsc_accuracy"] == pytest.approx(1.0)
    assert result["split"]["left_out_rows"] == 3


def test_treatment_level_profiles_are_aggregated(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = _table()
    cells = base.embeddings.repeat(4, axis=0) + rng.normal(scale=0.01, size=(24, 2)).astype(np.float32)
    meta = base.metadata.loc[base.metadata.index.repeat(4)].reset_index(drop=True)
    meta["cell"] = np.arange(24)
    table = EmbeddingTable(metadata=meta, embeddings=cells, manifest={})
    result = _evaluate(table, tmp_path, batch_column="batch", profiles={"group_by": ["compound"]})
    assert result["split"]["profile_rows"] == 6
    assert result["metrics"]["nsc_accuracy"] == pytest.approx(4 / 6)
    assert result["metrics"]["nscb_accuracy"] == pytest.approx(2 / 6)  # the hand case, uniDINO's rule
    meta["batch"] = ["b1", "b2"] * 12  # now the batch varies within a compound
    with pytest.raises(DataError, match=r"'batch' \(config key 'nsc_nscb.batch_column'\)"):
        _evaluate(EmbeddingTable(metadata=meta, embeddings=cells, manifest={}), tmp_path,
                  batch_column="batch", profiles={"group_by": ["compound"]})


def test_ties_go_to_the_first_candidate() -> None:
    profiles = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0]])
    out = not_same_nn_accuracy(profiles, np.array(["A", "B", "A"]), [np.array(["c0", "c1", "c2"])])
    assert out["neighbour"][0] == 1  # rows 1 and 2 tie for row 0: the first one wins
    # 0 -> 1 (B) wrong; 1 has no other B: unscored; 2 -> 0 (A) right
    assert (out["correct"], out["scored"], out["unscored"]) == (1, 2, 1)


def test_errors_name_the_config_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nsc_nscb\.compound_column"):
        NSCEvaluator(NSCConfig(label_column="moa")).evaluate(_table(), EvalContext(run_dir=tmp_path))
    with pytest.raises(DataError, match=r"columns \['plate'\]"):
        _evaluate(_table(), tmp_path, batch_column="plate")
    one_compound = ["c1"] * 6
    with pytest.raises(DataError, match="none of the 6 query profiles has a candidate"):
        _evaluate(_table(one_compound), tmp_path)
