"""Average precision of retrieving same-label profiles against negative controls, with null p-values.

The pair rules follow the ``copairs`` package (JUMP Cell Painting), so the AP values agree with it:

- Every non-control profile is a *query*. Its *positives* are the other non-control profiles with the
  same label that differ from it in **every** ``pos_diffby`` key (e.g. another well). Its *negatives*
  are the negative-control profiles equal to it in **every** ``neg_sameby`` key (e.g. the same plate).
  Other profiles are not in its list.
- The list is ranked by similarity to the query, best first. Ties are ranked negatives first
  (pessimistic). ``AP = mean over positives of (positives ranked at or above it) / (its rank)``.
  A query without positives or without negatives gets no AP (NaN).

Null distribution and p-values (:func:`group_map_pvalues`): for a query with ``M`` positives among
``L`` ranked profiles, a null AP is the AP of ``M`` positions drawn uniformly among ``L``
(:func:`null_average_precision`, seeded by ``(seed, M, L)``). A group's null mAP sample ``s`` is the
mean of its queries' null sample ``s``: queries with the same ``(M, L)`` share their null samples, as in
copairs, which keeps the null as wide as if their APs were perfectly correlated (conservative; the APs
of queries of one label are positively correlated, since similarity is symmetric). The p-value is
``(1 + #{null >= mAP}) / (1 + null_size)``: ties count against the group, so a perfect mAP of a short
list gets its real chance probability (copairs counts only ``null > mAP``, which gives such a group
``p = 1 / (1 + null_size)`` however likely it is by chance). p-values are corrected over groups with
Benjamini-Hochberg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DISTANCES = ("cosine", "correlation", "euclidean")
_SAMPLE_BUDGET = 4_000_000  # random numbers per chunk of null samples


def similarity(queries: np.ndarray, profiles: np.ndarray, distance: str = "cosine") -> np.ndarray:
    """``(Q, G)`` similarities (higher = closer): cosine, Pearson correlation, or minus Euclidean distance.

    All-zero rows have cosine / correlation 0 with everything.
    :raises ValueError: for an unknown ``distance``.
    """
    a = np.asarray(queries, dtype=np.float64)
    b = np.asarray(profiles, dtype=np.float64)
    if distance == "euclidean":
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return -np.sqrt(np.maximum(squared, 0.0))
    if distance == "correlation":
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
    elif distance != "cosine":
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    tiny = np.finfo(np.float64).tiny
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), tiny)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), tiny)
    return a @ b.T


@dataclass
class APResult:
    """Per-profile results of :func:`average_precisions` (arrays of length ``G``).

    :ivar ap: average precision (NaN for controls and for queries without positives or negatives).
    :ivar n_pos: positives in the query's list (0 for controls).
    :ivar n_total: positives + negatives in the list (0 for controls).
    :ivar is_query: non-control profiles.
    """

    ap: np.ndarray
    n_pos: np.ndarray
    n_total: np.ndarray
    is_query: np.ndarray

    @property
    def scored(self) -> np.ndarray:
        """Queries that got an AP."""
        return self.is_query & ~np.isnan(self.ap)


def _codes(keys: np.ndarray | None, n: int) -> np.ndarray:
    """``(n, k)`` int codes of the columns of ``keys`` (``(n, k)`` values); ``(n, 0)`` when None."""
    if keys is None:
        return np.zeros((n, 0), dtype=np.int64)
    keys = np.asarray(keys, dtype=object).reshape(n, -1)
    return np.stack([np.unique(keys[:, j].astype(str), return_inverse=True)[1] for j in range(keys.shape[1])],
                    axis=1) if keys.shape[1] else np.zeros((n, 0), dtype=np.int64)


def average_precisions(
    profiles: np.ndarray,
    labels: np.ndarray,
    is_control: np.ndarray,
    pos_diffby: np.ndarray | None = None,
    neg_sameby: np.ndarray | None = None,
    distance: str = "cosine",
    batch_size: int = 1024,
) -> APResult:
    """AP of every non-control profile (rules in the module docstring).

    :param profiles: ``(G, D)``. :param labels: ``(G,)`` labels (compared as text; ignored for controls).
    :param is_control: ``(G,)`` bool, the negative controls.
    :param pos_diffby: ``(G, a)`` keys a positive must differ in (all of them); None: no constraint.
    :param neg_sameby: ``(G, b)`` keys a negative must share (all of them); None: no constraint.
    :param batch_size: queries per similarity block.
    :raises ValueError: for mismatched lengths or an unknown distance.
    """
    profiles = np.asarray(profiles, dtype=np.float64)
    n = profiles.shape[0]
    is_control = np.asarray(is_control, dtype=bool)
    label_codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)[1]
    if label_codes.shape != (n,) or is_control.shape != (n,):
        raise ValueError(f"labels and is_control must have {n} entries (one per profile)")
    diff, same = _codes(pos_diffby, n), _codes(neg_sameby, n)
    ap = np.full(n, np.nan)
    n_pos = np.zeros(n, dtype=np.int64)
    n_total = np.zeros(n, dtype=np.int64)
    queries = np.flatnonzero(~is_control)
    for start in range(0, len(queries), batch_size):
        block = queries[start : start + batch_size]
        sims = similarity(profiles[block], profiles, distance)
        for row, q in enumerate(block):
            pos = ~is_control & (label_codes == label_codes[q]) & (diff != diff[q]).all(axis=1)
            pos[q] = False
            neg = is_control & (same == same[q]).all(axis=1)
            m, total = int(pos.sum()), int(pos.sum() + neg.sum())
            n_pos[q], n_total[q] = m, total
            if m == 0 or total == m:
                continue
            listed = pos | neg
            relevant = pos[listed]
            order = np.lexsort((relevant, -sims[row, listed]))  # similarity desc; ties: negatives first
            hits = relevant[order]
            ranks = np.flatnonzero(hits) + 1
            ap[q] = float(np.mean(np.arange(1, m + 1) / ranks))
    return APResult(ap=ap, n_pos=n_pos, n_total=n_total, is_query=~is_control)


def null_average_precision(n_pos: int, n_total: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` APs of ``n_pos`` positives placed uniformly at random among ``n_total`` ranks.

    Seeded by ``(seed, n_pos, n_total)``, so the samples do not depend on the order of calls.
    :raises ValueError: unless ``1 <= n_pos <= n_total`` and ``size >= 1``.
    """
    if not 1 <= n_pos <= n_total or size < 1:
        raise ValueError(f"need 1 <= n_pos <= n_total and size >= 1, got {n_pos}, {n_total}, {size}")
    if n_pos == n_total:
        return np.ones(size)
    rng = np.random.default_rng([seed, n_pos, n_total])
    k = np.arange(1, n_pos + 1, dtype=np.float64)
    out = np.empty(size)
    if n_pos * n_pos * 8 <= n_total:  # few positives: draw with replacement, redraw rows with repeats
        positions = np.sort(rng.integers(0, n_total, size=(size, n_pos)), axis=1)
        repeated = (np.diff(positions, axis=1) == 0).any(axis=1)
        while repeated.any():
            redraw = np.sort(rng.integers(0, n_total, size=(int(repeated.sum()), n_pos)), axis=1)
            positions[repeated] = redraw
            repeated[repeated] = (np.diff(redraw, axis=1) == 0).any(axis=1)
        return (k / (positions + 1)).mean(axis=1)
    chunk = max(1, _SAMPLE_BUDGET // n_total)
    for start in range(0, size, chunk):
        rows = min(chunk, size - start)
        keys = rng.random((rows, n_total))
        positions = np.sort(np.argpartition(keys, n_pos - 1, axis=1)[:, :n_pos], axis=1)
        out[start : start + rows] = (k / (positions + 1)).mean(axis=1)
    return out


@dataclass
class GroupScores:
    """Per-group results of :func:`group_map_pvalues` (arrays of length ``K``, groups in sorted order).

    :ivar keys: the group keys (tuples of text). :ivar map: mean AP. :ivar chance: mean of the null mAP.
    :ivar p_value: null p-value. :ivar q_value: Benjamini-Hochberg corrected p-value.
    :ivar queries: scored queries in the group.
    """

    keys: list[tuple[str, ...]]
    map: np.ndarray
    chance: np.ndarray
    p_value: np.ndarray
    q_value: np.ndarray
    queries: np.ndarray


def group_map_pvalues(result: APResult, groups: np.ndarray, null_size: int = 10000, seed: int = 0) -> GroupScores:
    """mAP, chance mAP, p-value and BH q-value of each group of scored queries.

    :param result: output of :func:`average_precisions`.
    :param groups: ``(G, k)`` (or ``(G,)``) group keys of every profile; controls are ignored.
    :raises ValueError: for a non-positive ``null_size`` or mismatched lengths.
    """
    from scipy.stats import false_discovery_control

    if null_size < 1:
        raise ValueError(f"null_size must be >= 1, got {null_size}")
    n = result.ap.shape[0]
    keys = np.asarray(groups, dtype=object).reshape(n, -1).astype(str)
    scored = np.flatnonzero(result.scored)
    by_group: dict[tuple[str, ...], list[int]] = {}
    for index in scored:
        by_group.setdefault(tuple(keys[index]), []).append(int(index))
    ordered = sorted(by_group)
    nulls: dict[tuple[int, int], np.ndarray] = {}
    maps, chances, pvals, counts = [], [], [], []
    for key in ordered:
        members = by_group[key]
        observed = float(np.mean(result.ap[members]))
        null = np.zeros(null_size)
        for index in members:
            conf = (int(result.n_pos[index]), int(result.n_total[index]))
            if conf not in nulls:
                nulls[conf] = null_average_precision(conf[0], conf[1], null_size, seed)
            null += nulls[conf]
        null /= len(members)
        maps.append(observed)
        chances.append(float(null.mean()))
        pvals.append((1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + null_size))
        counts.append(len(members))
    p_value = np.asarray(pvals, dtype=np.float64)
    q_value = false_discovery_control(p_value, method="bh") if len(p_value) else p_value
    return GroupScores(keys=ordered, map=np.asarray(maps), chance=np.asarray(chances), p_value=p_value,
                       q_value=np.asarray(q_value, dtype=np.float64), queries=np.asarray(counts, dtype=np.int64))
