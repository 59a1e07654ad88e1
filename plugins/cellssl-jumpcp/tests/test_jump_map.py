"""jump_map: well aggregation, normalisation, activity / consistency mAP against pandas, NumPy and copairs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellssl.api import DataError, EmbeddingTable, EvalContext
from cellssl_jumpcp.config import JumpMapConfig
from cellssl_jumpcp.evaluator import JumpMapEvaluator
from cellssl_jumpcp.mapping import phenotypic_activity, phenotypic_consistency
from cellssl_jumpcp.profiles import iter_table_plates, normalize_wells, read_profiles, well_profiles


def cells_table(seed: int = 0, effect: float = 2.0) -> tuple[np.ndarray, pd.DataFrame]:
    """Two plates (text names "0042" and "1086292853"); per plate 4 DMSO wells, 2 wells of A, 2 of B, 1 of C;
    5 cells per well, 6 features; A is shifted by ``effect`` in feature 0, B and C are like DMSO."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    design = [("JCP2022_033924", "negcon", 4, ""), ("A", "trt", 2, "t1"), ("B", "trt", 2, "t2"),
              ("C", "trt", 1, "t2")]
    for plate in ("0042", "1086292853"):
        well = 0
        for jcp, kind, n_wells, target in design:
            for _ in range(n_wells):
                well += 1
                for _ in range(5):
                    x = rng.normal(size=6) + (effect if jcp == "A" else 0.0) * np.eye(6)[0]
                    feats.append(x)
                    rows.append({"Metadata_Plate": plate, "Metadata_Well": f"B{well:02d}", "Metadata_JCP2022": jcp,
                                 "Metadata_pert_type": kind, "Metadata_target": target or None, "cell_x": rng.random()})
    return np.asarray(feats, dtype=np.float32), pd.DataFrame(rows)


def test_well_profiles_equal_pandas_groupby_median() -> None:
    x, meta = cells_table()
    profiles, wells = well_profiles(iter_table_plates(x, meta, "Metadata_Plate"), "Metadata_Plate", "Metadata_Well")
    frame = pd.concat([meta, pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])], axis=1)
    expected = frame.groupby(["Metadata_Plate", "Metadata_Well"], sort=True)[[f"f{i}" for i in range(6)]].median()
    assert np.allclose(profiles, expected.to_numpy(), atol=1e-6)
    assert wells[["Metadata_Plate", "Metadata_Well"]].apply(tuple, axis=1).tolist() == expected.index.tolist()
    assert (wells["Metadata_Count_Cells"] == 5).all()
    assert "cell_x" not in wells.columns and wells["Metadata_Plate"].iloc[0] == "0042"
    means, _ = well_profiles(iter_table_plates(x, meta, "Metadata_Plate"), "Metadata_Plate", "Metadata_Well", "mean")
    assert np.allclose(means, frame.groupby(["Metadata_Plate", "Metadata_Well"])[[f"f{i}" for i in range(6)]]
                       .mean().to_numpy(), atol=1e-6)


@pytest.mark.parametrize("method", ["median", "mean"])
def test_site_level_aggregation_weighs_every_site_the_same(method: str) -> None:
    x, meta = cells_table()
    meta = meta.assign(Metadata_Site=[str(i % 2 + 1) if i % 5 else "1" for i in range(len(meta))])  # 3 + 2 cells
    profiles, wells = well_profiles(iter_table_plates(x, meta, "Metadata_Plate"), "Metadata_Plate", "Metadata_Well",
                                    method, site_column="Metadata_Site")
    frame = pd.concat([meta, pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])], axis=1)
    features = [f"f{i}" for i in range(6)]
    sites = frame.groupby(["Metadata_Plate", "Metadata_Well", "Metadata_Site"])[features].agg(method)
    expected = sites.groupby(level=["Metadata_Plate", "Metadata_Well"]).agg(method)
    assert np.allclose(profiles, expected.to_numpy(), atol=1e-6)
    direct = frame.groupby(["Metadata_Plate", "Metadata_Well"])[features].agg(method).to_numpy()
    assert not np.allclose(profiles, direct, atol=1e-3)  # 3 + 2 cells per well: the two levels differ
    assert (wells["Metadata_Count_Cells"] == 5).all() and "Metadata_Site" not in wells.columns


@pytest.mark.parametrize("method", ["standardize", "mad_robustize", "spherize"])
def test_normalisation_fitted_on_negcon_per_plate(method: str) -> None:
    x, meta = cells_table()
    profiles, wells = well_profiles(iter_table_plates(x, meta, "Metadata_Plate"), "Metadata_Plate", "Metadata_Well")
    negcon = (wells["Metadata_pert_type"] == "negcon").to_numpy()
    out = normalize_wells(profiles, wells, method, negcon, "Metadata_Plate", epsilon=1e-3)
    for plate in ("0042", "1086292853"):
        rows = (wells["Metadata_Plate"] == plate).to_numpy()
        ref = profiles[rows & negcon].astype(np.float64)
        if method == "standardize":
            expected = (profiles[rows] - ref.mean(0)) / (ref.std(0) + 1e-3)
        elif method == "mad_robustize":
            med = np.median(ref, 0)
            expected = (profiles[rows] - med) / (1.4826 * np.median(np.abs(ref - med), 0) + 1e-3)
        else:
            cov = np.cov(ref, rowvar=False, ddof=0)
            s, u = np.linalg.eigh(cov)
            expected = (profiles[rows] - ref.mean(0)) @ (u @ np.diag(1 / np.sqrt(np.clip(s, 0, None) + 1e-3)) @ u.T)
        assert np.allclose(out[rows], expected, atol=1e-4)
    with pytest.raises(DataError, match="plate '0042'"):
        normalize_wells(profiles, wells, "standardize", negcon & (wells["Metadata_Well"] == "B01").to_numpy(),
                        "Metadata_Plate")


def test_activity_ap_equals_copairs() -> None:
    copairs_map = pytest.importorskip("copairs.map")
    from copairs.matching import assign_reference_index

    x, meta = cells_table(seed=3, effect=1.0)
    profiles, wells = well_profiles(iter_table_plates(x, meta, "Metadata_Plate"), "Metadata_Plate", "Metadata_Well")
    negcon = (wells["Metadata_pert_type"] == "negcon").to_numpy()
    scores = phenotypic_activity(profiles, wells, "Metadata_JCP2022", negcon, [], null_size=2000)
    ref = assign_reference_index(wells.copy(), "Metadata_pert_type == 'negcon'",
                                 reference_col="Metadata_reference_index", default_value=-1)
    ap = copairs_map.average_precision(ref, profiles, pos_sameby=["Metadata_JCP2022", "Metadata_reference_index"],
                                       pos_diffby=[], neg_sameby=[],
                                       neg_diffby=["Metadata_pert_type", "Metadata_reference_index"],
                                       progress_bar=False)
    ap = ap[ap["Metadata_pert_type"] != "negcon"]
    theirs = ap.groupby("Metadata_JCP2022")["average_precision"].mean()
    ours = scores.table.set_index("Metadata_JCP2022")["mAP"]
    assert sorted(ours.index) == ["A", "B", "C"]
    assert np.allclose(ours.sort_index().to_numpy(), theirs.sort_index().to_numpy(), atol=1e-6)


def test_activity_hand_case_and_fraction_retrieved() -> None:
    # one dimension of a 2-D cosine problem: A wells point along +y, DMSO along +x; B is mixed in with DMSO
    profiles = np.array([[0, 1], [0.1, 1], [1, 0], [1, 0.1], [1, -0.1], [1, 0.05], [1, 0.2]], dtype=np.float32)
    meta = pd.DataFrame({"Metadata_Plate": "p", "Metadata_JCP2022": ["A", "A", "D", "D", "D", "B", "B"]})
    negcon = (meta["Metadata_JCP2022"] == "D").to_numpy()
    scores = phenotypic_activity(profiles, meta, "Metadata_JCP2022", negcon, [], null_size=5000)
    table = scores.table.set_index("Metadata_JCP2022")
    assert table.loc["A", "mAP"] == pytest.approx(1.0)  # its replicate ranked first
    # B query [1, 0.05]: order by cosine: D[1,0.1]? B[1,0.2]?  compute by hand
    def ap(q, pos, negs):
        sims = [(float(np.dot(q, v) / np.linalg.norm(q) / np.linalg.norm(v)), 1) for v in pos] + \
               [(float(np.dot(q, v) / np.linalg.norm(q) / np.linalg.norm(v)), 0) for v in negs]
        hits = [h for _, h in sorted(sims, key=lambda t: (-t[0], t[1]))]
        ranks = [i + 1 for i, h in enumerate(hits) if h]
        return np.mean([(k + 1) / r for k, r in enumerate(ranks)])
    d = profiles[negcon]
    expected_b = np.mean([ap(profiles[5], [profiles[6]], d), ap(profiles[6], [profiles[5]], d)])
    assert table.loc["B", "mAP"] == pytest.approx(expected_b)
    from scipy.stats import false_discovery_control

    q = false_discovery_control(table["p_value"].to_numpy(), method="bh")
    assert np.allclose(table["q_value"], q)
    assert scores.metrics["activity_fraction_retrieved"] == pytest.approx(float(np.mean(q < 0.05)))


def test_consistency_by_target() -> None:
    x, meta = cells_table(effect=3.0)
    profiles, wells = well_profiles(iter_table_plates(x, meta, "Metadata_Plate"), "Metadata_Plate", "Metadata_Well")
    treated = (wells["Metadata_pert_type"] != "negcon").to_numpy()
    scores = phenotypic_consistency(profiles[treated], wells.loc[treated].reset_index(drop=True),
                                    "Metadata_JCP2022", "Metadata_target", null_size=1000)
    # only t2 is shared by two perturbations (B and C); t1 has only A
    assert scores.table["Metadata_target"].tolist() == ["t2"]
    assert 0.0 < scores.table["mAP"].iloc[0] <= 1.0


def test_evaluator_writes_profiles_and_tables(tmp_path) -> None:
    x, meta = cells_table(effect=4.0)
    result = JumpMapEvaluator(JumpMapConfig(null_size=2000, target_column="Metadata_target")).evaluate(
        EmbeddingTable(meta, x), EvalContext(run_dir=tmp_path))
    assert result["counts"]["wells"] == 18 and result["counts"]["negcon_wells"] == 8
    table = pd.read_csv(tmp_path / "eval" / "jump_map_activity.csv", dtype={"Metadata_JCP2022": str})
    assert table.set_index("Metadata_JCP2022").loc["A", "retrieved"]
    features, wells = read_profiles(tmp_path / "profiles" / "well_profiles.parquet")
    assert features.shape == (18, 6) and set(wells["Metadata_Plate"]) == {"0042", "1086292853"}
    assert (tmp_path / "profiles" / "well_profiles_normalized.parquet").is_file()
    assert result["metrics"]["activity_groups"] == 3
    with pytest.raises(DataError, match=r"jump_map\.negcon_values"):
        JumpMapEvaluator(JumpMapConfig(negcon_values=["DMSO"])).evaluate(EmbeddingTable(meta, x),
                                                                         EvalContext(run_dir=tmp_path))
