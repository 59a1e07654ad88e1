"""NSC / NSCB against uniDINO's definitions (Bayer-Group/uniDINO, ``source/eval.py`` and
``figures/bbbc021/bbbc021_figures.py``), written again here with scikit-learn's ``pairwise_distances``.

uniDINO on BBBC021: DMSO left out; NSC on *treatment* profiles (the mean embedding per compound,
concentration and batch) with every profile of the query's compound excluded; NSCB on well profiles with the
query's compound and every same-batch profile of the query's MoA excluded, after dropping the MoAs present in
a single batch; accuracy = share of queries whose nearest allowed profile (cosine distance) has their MoA.
On real BBBC021 crops (two MoAs, 50 fields of view standing in for compounds, site parity for batches) every
query has an allowed candidate of its MoA, so cellssl's scored-queries accuracy is uniDINO's accuracy; NSC
here is checked on treatment profiles, as uniDINO reports it. NSCB is checked both ways: the default
``nscb_batch_exclusion: same_label`` against uniDINO's own rule, ``all`` against the classic rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import pairwise_distances

from cellssl.embed.store import EmbeddingTable
from cellssl.eval.base import EvalContext
from cellssl.eval.nsc_nscb import NSCConfig, NSCEvaluator, not_same_nn_accuracy


def unidino_nn(x: np.ndarray, y: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """uniDINO's nearest_neighbor_classifier_NSBW: excluded pairs (and the diagonal) get the largest distance."""
    distance = pairwise_distances(x, metric="cosine")
    largest = distance.max()
    np.fill_diagonal(distance, largest)
    distance[excluded] = largest
    return y[np.argmin(distance, axis=1)]


@pytest.fixture(scope="module")
def bbbc021(shared_data) -> tuple[np.ndarray, pd.DataFrame]:
    """Intensity statistics of the 1,200 real BBBC021 crops.

    "compound" = the field of view, "batch" = the parity of its site.
    """
    import tifffile

    meta = pd.read_csv(shared_data / "bbbc021-crops" / "metadata.csv").sort_values("path")
    meta = meta.reset_index(drop=True)
    rows = []
    for path in meta["path"]:
        image = tifffile.imread(shared_data / "bbbc021-crops" / path).astype(np.float64)
        rows.append(np.concatenate([image.mean(axis=(1, 2)), image.std(axis=(1, 2))]))
    x = np.log1p(np.asarray(rows))
    meta = meta.assign(compound="fov" + meta["fov_id"].astype(str), batch="s" + (meta["site"] % 2).astype(str),
                       concentration="1")
    return x.astype(np.float32), meta


def test_nsc_on_treatment_profiles_equals_unidino(bbbc021, tmp_path) -> None:
    x, meta = bbbc021
    config = NSCConfig(label_column="moa", compound_column="compound", batch_column="batch",
                       profiles={"group_by": ["compound", "concentration", "batch"], "aggregate": "mean"})
    result = NSCEvaluator(config).evaluate(EmbeddingTable(metadata=meta, embeddings=x), EvalContext(run_dir=tmp_path))
    treatments = meta.assign(row=range(len(meta))).groupby(["compound", "concentration", "batch"], sort=True)
    profiles = np.stack([x[group["row"]].mean(axis=0) for _, group in treatments])
    moa = np.array([group["moa"].iloc[0] for _, group in treatments])
    compound = np.array([name[0] for name, _ in treatments])
    predicted = unidino_nn(profiles, moa, compound[:, None] == compound[None, :])
    assert result["metrics"]["nsc_unscored"] == 0
    assert result["split"]["profile_rows"] == len(profiles)
    assert result["metrics"]["nsc_accuracy"] == pytest.approx(float(np.mean(predicted == moa)), abs=1e-12)


def unidino_nscb_excluded(moa: np.ndarray, compound: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """uniDINO's NSCB mask (mode NSBW, wells = compounds): same compound, or same batch AND same MoA."""
    def same(values: np.ndarray) -> np.ndarray:
        return values[:, None] == values[None, :]

    return same(compound) | (same(batch) & same(moa))


def test_nscb_default_equals_unidino_on_well_profiles(bbbc021, tmp_path) -> None:
    """The evaluator's default NSCB (no aggregation: every crop a profile) is uniDINO's rule, query by query."""
    x, meta = bbbc021
    moa, compound, batch = (meta[c].to_numpy() for c in ("moa", "compound", "batch"))
    config = NSCConfig(label_column="moa", compound_column="compound", batch_column="batch")
    result = NSCEvaluator(config).evaluate(EmbeddingTable(metadata=meta, embeddings=x), EvalContext(run_dir=tmp_path))
    predicted = unidino_nn(x, moa, unidino_nscb_excluded(moa, compound, batch))
    assert result["split"]["nscb_batch_exclusion"] == "same_label"
    assert result["metrics"]["nscb_unscored"] == 0 and result["metrics"]["nscb_scored"] == len(meta)
    assert result["metrics"]["nscb_accuracy"] == pytest.approx(float(np.mean(predicted == moa)), abs=1e-12)
    ours = not_same_nn_accuracy(x, moa, [compound], same_label_keys=[batch])
    assert np.array_equal(moa[ours["neighbour"]], predicted)  # the same predicted MoA for every query
    # the two rules really differ here: with "all", same-batch crops of the other MoA are not candidates
    classic = not_same_nn_accuracy(x, moa, [compound, batch])
    assert classic["accuracy"] != pytest.approx(result["metrics"]["nscb_accuracy"], abs=1e-6)


def test_nscb_all_rule_equals_the_classic_rule_on_well_profiles(bbbc021, tmp_path) -> None:
    """``nscb_batch_exclusion: all`` (compound and batch both differ) against that rule through uniDINO's routine."""
    x, meta = bbbc021
    moa, compound, batch = (meta[c].to_numpy() for c in ("moa", "compound", "batch"))
    config = NSCConfig(label_column="moa", compound_column="compound", batch_column="batch",
                       nscb_batch_exclusion="all")
    result = NSCEvaluator(config).evaluate(EmbeddingTable(metadata=meta, embeddings=x), EvalContext(run_dir=tmp_path))
    classic = unidino_nn(x, moa, (compound[:, None] == compound[None, :]) | (batch[:, None] == batch[None, :]))
    assert result["split"]["nscb_batch_exclusion"] == "all"
    assert result["metrics"]["nscb_unscored"] == 0
    assert result["metrics"]["nscb_accuracy"] == pytest.approx(float(np.mean(classic == moa)), abs=1e-12)
