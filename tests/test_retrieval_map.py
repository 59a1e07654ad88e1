"""retrieval_map: AP / mAP against hand computations, null p-values, copairs agreement, config errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellssl.config.validate import build_component
from cellssl.embed.store import EmbeddingTable
from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext
from cellssl.eval.engines.average_precision import average_precisions, group_map_pvalues, null_average_precision
from cellssl.eval.retrieval_map import RetrievalMAPConfig, RetrievalMAPEvaluator
from cellssl.report.results import schema_problems

# Profiles on the unit circle (angle in degrees): cosine similarity = cos(angle difference), so a
# query's ranking is by angular distance. A*, B* are two labels, C* negative controls (DMSO).
ANGLES = {"A1": 0, "A2": 30, "A3": 100, "C1": 20, "C2": 65, "C3": 175, "B1": -90, "B2": -80}


def _table(**extra: list[str]) -> EmbeddingTable:
    names = list(ANGLES)
    radians = np.radians(list(ANGLES.values()))
    # rows scaled by different norms: cosine ranking must not depend on them
    emb = np.stack([np.cos(radians), np.sin(radians)], axis=1) * np.arange(1, 9)[:, None]
    meta = pd.DataFrame({"name": names, "moa": ["DMSO" if n[0] == "C" else n[0] for n in names], **extra})
    return EmbeddingTable(metadata=meta, embeddings=emb.astype(np.float32), manifest={})


def _run(table: EmbeddingTable, tmp_path: Path, **kwargs: object) -> dict:
    config = RetrievalMAPConfig(label_column="moa", control_values=["DMSO"], null_size=2000, **kwargs)
    return RetrievalMAPEvaluator(config).evaluate(table, EvalContext(run_dir=tmp_path))


def test_map_on_a_case_computed_by_hand(tmp_path: Path) -> None:
    # A1 (0 deg): C1 20, A2 30, C2 65, A3 100, C3 175 -> relevance 0 1 0 1 0 -> AP = (1/2 + 2/4) / 2 = 0.5
    # A2 (30):    C1 10, A1 30, C2 35, A3 70, C3 145  -> 0 1 0 1 0 -> 0.5
    # A3 (100):   C2 35, A2 70, C3 75, C1 80, A1 100  -> 0 1 0 0 1 -> (1/2 + 2/5) / 2 = 0.45
    # B1, B2: each other first -> 1.0
    result = _run(_table(), tmp_path)
    rows = {row["moa"]: row for row in result["table"]}
    assert rows["A"]["mAP"] == pytest.approx((0.5 + 0.5 + 0.45) / 3)
    assert rows["B"]["mAP"] == pytest.approx(1.0)
    assert rows["A"]["queries"] == 3 and rows["B"]["queries"] == 2
    metrics = result["metrics"]
    assert metrics["mean_average_precision"] == pytest.approx(((0.5 + 0.5 + 0.45) / 3 + 1.0) / 2)
    assert metrics["mean_ap_queries"] == pytest.approx((0.5 + 0.5 + 0.45 + 1 + 1) / 5)
    assert metrics["num_queries"] == 5 and metrics["num_groups"] == 2
    assert result["split"]["control_rows"] == 3
    assert schema_problems(result) == []


def test_pos_diffby_and_neg_sameby_by_hand(tmp_path: Path) -> None:
    wells = ["w1", "w1", "w3", "c1", "c2", "c3", "w4", "w5"]
    plates = ["p1", "p1", "p2", "p1", "p1", "p2", "p1", "p1"]
    table = _table(well=wells, plate=plates)
    # positives from another well only: A1 and A2 share w1 -> A1's list: C1 20, C2 65, A3 100 -> AP 1/3
    result = _run(table, tmp_path, pos_diffby=["well"], report_by=["name"])
    ap = {row["name"]: row["mAP"] for row in result["table"]}
    assert ap["A1"] == pytest.approx(1 / 3) and ap["A2"] == pytest.approx(1 / 3)
    assert ap["A3"] == pytest.approx(0.45)
    # negatives from the same plate only: A3 (p2) sees only C3: A2 70, C3 75, A1 100 -> (1 + 2/3) / 2
    result = _run(table, tmp_path, neg_sameby=["plate"], report_by=["name"])
    ap = {row["name"]: row["mAP"] for row in result["table"]}
    assert ap["A3"] == pytest.approx((1 + 2 / 3) / 2)
    assert ap["A1"] == pytest.approx(0.5)  # C1 20, A2 30, C2 65, A3 100 -> (1/2 + 2/4) / 2


def test_ties_rank_negatives_first() -> None:
    profiles = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0]])
    result = average_precisions(profiles, np.array(["A", "A", "ctrl"]), np.array([False, False, True]))
    # for query 0, the positive (45 deg) and the negative (-45 deg) tie: negative first -> AP = 1/2
    assert result.ap[0] == pytest.approx(0.5)


def test_ap_agrees_with_copairs(tmp_path: Path) -> None:
    """Cross-check against the reference implementation (copairs, pinned in the dev extras)."""
    import copairs.map as copairs_map

    rng = np.random.default_rng(3)
    labels = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 4 + ["ctrl"] * 6)
    wells = np.array([f"w{i % 3}" for i in range(len(labels))])
    profiles = rng.normal(size=(len(labels), 8)) + (labels == "a")[:, None] * 0.7
    is_control = labels == "ctrl"
    ours = average_precisions(profiles, labels, is_control, pos_diffby=wells[:, None])
    meta = pd.DataFrame({"lbl": labels, "ref": np.where(is_control, np.arange(len(labels)), -1), "well": wells})
    theirs = copairs_map.average_precision(meta, profiles, pos_sameby=["lbl", "ref"], pos_diffby=["well"],
                                           neg_sameby=[], neg_diffby=["lbl", "ref"], progress_bar=False)
    expected = theirs["average_precision"].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(ours.ap, expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(ours.n_pos[~is_control], theirs["n_pos_pairs"].to_numpy()[~is_control])


def _exact_null(n_pos: int, n_total: int) -> np.ndarray:
    values = []
    for positions in itertools.combinations(range(1, n_total + 1), n_pos):
        values.append(np.mean(np.arange(1, n_pos + 1) / np.array(positions)))
    return np.array(values)


@pytest.mark.parametrize(("n_pos", "n_total"), [(2, 5), (2, 40), (1, 4)])
def test_null_distribution_matches_enumeration(n_pos: int, n_total: int) -> None:
    exact = _exact_null(n_pos, n_total)
    sample = null_average_precision(n_pos, n_total, 40000, seed=1)
    assert sample.mean() == pytest.approx(exact.mean(), abs=0.006)
    threshold = np.quantile(exact, 0.8)
    assert np.mean(sample >= threshold) == pytest.approx(np.mean(exact >= threshold), abs=0.01)
    np.testing.assert_array_equal(sample, null_average_precision(n_pos, n_total, 40000, seed=1))


def test_perfect_short_list_gets_its_chance_p_value() -> None:
    # two queries of label A, each the other's only positive among 4 profiles (3 controls): a perfect AP
    # happens by chance with probability 1/4; both share the null of (1 positive, 4 ranked), so the group's
    # null mAP is that null and p = P(null >= 1) = 1/4 (copairs would report 1 / (1 + null_size))
    profiles = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    labels = np.array(["A", "A", "c", "c", "c"])
    is_control = np.array([False, False, True, True, True])
    result = average_precisions(profiles, labels, is_control)
    scores = group_map_pvalues(result, labels[:, None], null_size=20000, seed=0)
    assert scores.map[0] == pytest.approx(1.0)
    assert scores.p_value[0] == pytest.approx(0.25, abs=0.015)
    assert scores.chance[0] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, abs=0.01)


def _clustered(structured: bool, seed: int = 0) -> EmbeddingTable:
    """8 labels x 6 profiles + 24 controls; with ``structured`` each label is a cluster, else pure noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 30)) * 3 * structured
    labels = np.repeat(np.arange(8), 6)
    emb = np.vstack([centres[labels] + rng.normal(size=(48, 30)), rng.normal(size=(24, 30))])
    names = [f"t{i}" for i in labels] + ["DMSO"] * 24
    return EmbeddingTable(metadata=pd.DataFrame({"moa": names}), embeddings=emb.astype(np.float32), manifest={})


def test_p_values_are_small_for_structure_and_not_without_it(tmp_path: Path) -> None:
    real = _run(_clustered(structured=True), tmp_path)
    assert real["metrics"]["fraction_retrieved"] == 1.0
    assert all(row["p_value"] < 0.002 and row["mAP"] > 0.9 for row in real["table"])
    p_values = []
    for seed in range(5):
        null = _run(_clustered(structured=False, seed=seed), tmp_path)
        assert null["metrics"]["fraction_retrieved"] == 0.0
        chance = null["metrics"]["mean_chance_map"]
        assert abs(null["metrics"]["mean_average_precision"] - chance) < 0.1
        p_values += [row["p_value"] for row in null["table"]]
    p_values = np.array(p_values)
    # no structure: p-values spread over (0, 1] (the shared-null rule makes them, if anything, conservative)
    assert np.mean(p_values < 0.05) <= 0.1 and p_values.mean() > 0.3


def test_cells_are_aggregated_to_wells_before_retrieval(tmp_path: Path) -> None:
    table = _clustered(structured=True)
    table.metadata["well"] = [f"w{i // 2}" for i in range(len(table))]  # 2 cells per well
    result = _run(table, tmp_path, profiles={"group_by": ["well"], "normalize": "standardize"})
    assert result["split"]["profile_rows"] == 36 and result["split"]["control_rows"] == 12
    assert result["metrics"]["num_queries"] == 24
    assert result["metrics"]["fraction_retrieved"] == 1.0


def test_configuration_errors(tmp_path: Path) -> None:
    table = _table()
    with pytest.raises(ConfigError, match=r"retrieval_map\.control_values"):
        RetrievalMAPEvaluator(RetrievalMAPConfig(label_column="moa")).evaluate(table, EvalContext(run_dir=tmp_path))
    with pytest.raises(DataError, match=r"no profile has moa in \['PBS'\]"):
        RetrievalMAPEvaluator(RetrievalMAPConfig(label_column="moa", control_values=["PBS"])).evaluate(
            table, EvalContext(run_dir=tmp_path))
    single = EmbeddingTable(metadata=pd.DataFrame({"moa": ["A", "B", "DMSO", "DMSO"]}),
                            embeddings=np.eye(4, dtype=np.float32), manifest={})
    with pytest.raises(DataError, match="none of the 2 query profiles has both a positive"):
        _run(single, tmp_path)
    with pytest.raises(ConfigError, match=r"eval\[0\].*distance must be one of"):
        build_component({"name": "retrieval_map", "distance": "hamming"}, "evaluator", "eval[0]")
    with pytest.raises(ConfigError, match=r"eval\[0\].*normalize must be one of"):
        build_component({"name": "retrieval_map", "profiles": {"normalize": "zscore"}}, "evaluator", "eval[0]")
