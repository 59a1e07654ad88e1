"""Phenotypic activity and consistency of JUMP well profiles: mAP with permutation p-values, fraction retrieved.

Both use :func:`cellssl.eval.engines.average_precision.average_precisions` (copairs' pair rules; AP values agree with
copairs 0.5.5 except on exact similarity ties) and its null distributions (:func:`group_map_pvalues`).

- **Activity** (:func:`phenotypic_activity`): every treated well is a query; its positives are the other
  wells of the same perturbation (any plate), its negatives the negative-control wells (sharing
  ``neg_sameby``, e.g. the plate, when given). One mAP per perturbation, p-value against random rankings,
  Benjamini-Hochberg q-value over perturbations; *retrieved* when ``q < threshold``.
- **Consistency** (:func:`phenotypic_consistency`): one consensus profile per perturbation (median of its
  wells); for each annotation value (target / MoA) shared by at least two perturbations, its perturbations
  are queries, positives are the other perturbations with that value, negatives the perturbations with
  another value. One mAP per annotation value, BH over values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cellssl.api import DataError, average_precisions, group_map_pvalues


@dataclass
class Scores:
    """One table row per scored group and the headline numbers."""

    table: pd.DataFrame
    metrics: dict[str, Any]


def _summary(table: pd.DataFrame, threshold: float, prefix: str) -> dict[str, Any]:
    if not len(table):
        return {f"{prefix}_groups": 0}
    return {
        f"{prefix}_mean_average_precision": float(table["mAP"].mean()),
        f"{prefix}_fraction_retrieved": float((table["q_value"] < threshold).mean()),
        f"{prefix}_fraction_retrieved_uncorrected": float((table["p_value"] < threshold).mean()),
        f"{prefix}_groups": len(table),
    }


def phenotypic_activity(profiles: np.ndarray, meta: pd.DataFrame, perturbation: str, is_negcon: np.ndarray,
                        neg_sameby: list[str], distance: str = "cosine", null_size: int = 10000,
                        threshold: float = 0.05, seed: int = 0) -> Scores:
    """Activity mAP per perturbation (see the module docstring).

    :param profiles: ``(W, D)`` normalised well profiles. :param meta: their metadata.
    :param is_negcon: ``(W,)`` the negative-control wells.
    :raises DataError: when no perturbation has two wells and a control to be scored.
    """
    labels = meta[perturbation].astype(str).to_numpy()
    sameby = meta[neg_sameby].astype(str).to_numpy() if neg_sameby else None
    ap = average_precisions(profiles, labels, is_negcon, None, sameby, distance)
    if not ap.scored.any():
        raise DataError(f"no treated well has another well of the same '{perturbation}' and a negative control to "
                        "rank against; check the metadata join, jump_map.negcon_values and jump_map.neg_sameby")
    groups = group_map_pvalues(ap, labels, null_size, seed)
    table = pd.DataFrame({perturbation: [k[0] for k in groups.keys], "mAP": groups.map, "chance_mAP": groups.chance,
                          "p_value": groups.p_value, "q_value": groups.q_value, "wells": groups.queries})
    table["retrieved"] = table["q_value"] < threshold
    metrics = _summary(table, threshold, "activity")
    metrics["activity_queries"] = int(ap.scored.sum())
    metrics["activity_unscored_wells"] = int((ap.is_query & ~ap.scored).sum())
    return Scores(table, metrics)


def consensus(profiles: np.ndarray, meta: pd.DataFrame, perturbation: str, columns: list[str]
              ) -> tuple[np.ndarray, pd.DataFrame]:
    """Median profile per perturbation; ``columns`` taken from its first well. Sorted by perturbation."""
    keys = meta[perturbation].astype(str).to_numpy()
    names = sorted(set(keys))
    out = np.stack([np.median(profiles[keys == name], axis=0) for name in names])
    first = meta.groupby(keys, sort=True)[columns].first().reset_index(names=perturbation)
    return out.astype(np.float32), first


def phenotypic_consistency(profiles: np.ndarray, meta: pd.DataFrame, perturbation: str, target: str,
                           distance: str = "cosine", null_size: int = 10000, threshold: float = 0.05,
                           seed: int = 0) -> Scores:
    """Consistency mAP per annotation value of ``target`` over treated wells (see the module docstring).

    :raises DataError: when no annotation value is shared by two perturbations.
    """
    from scipy.stats import false_discovery_control

    annotated = meta[target].notna().to_numpy()
    cons, cmeta = consensus(profiles[annotated], meta.loc[annotated].reset_index(drop=True), perturbation, [target])
    values = cmeta[target].astype(str).to_numpy()
    shared = sorted(v for v in set(values) if (values == v).sum() >= 2)
    if not shared:
        raise DataError(f"no value of '{target}' (jump_map.target_column) is shared by two perturbations")
    rows = []
    for value in shared:
        ap = average_precisions(cons, values, values != value, None, None, distance)
        if not ap.scored.any():
            continue
        group = group_map_pvalues(ap, values, null_size, seed)
        rows.append({target: value, "mAP": float(group.map[0]), "chance_mAP": float(group.chance[0]),
                     "p_value": float(group.p_value[0]), "perturbations": int(group.queries[0])})
    table = pd.DataFrame(rows)
    if table.empty:
        raise DataError(f"no value of '{target}' could be scored: every perturbation shares it (no negatives)")
    table.insert(4, "q_value", false_discovery_control(table["p_value"].to_numpy(), method="bh"))
    table["retrieved"] = table["q_value"] < threshold
    return Scores(table, _summary(table, threshold, "consistency"))
