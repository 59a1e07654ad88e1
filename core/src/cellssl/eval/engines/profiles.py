"""Profiles: cell embeddings aggregated per group (e.g. per well) and normalised per plate against controls.

Image-based profiling compares treatments through *profiles*, not single cells:

1. :func:`aggregate_profiles`: the rows of an embedding table are grouped by metadata columns (e.g.
   ``[plate, well]``) and each group becomes one profile, the ``mean`` or ``median`` of its rows. The
   profile metadata keeps the grouping columns, every other column that is constant within each group
   (e.g. the compound and MoA of a well) and ``n_rows`` (rows aggregated).
2. :func:`normalize_profiles`: per plate (values of a plate column; the whole table when none), every
   feature is centred and scaled with statistics of the plate's *reference* rows (the negative controls,
   e.g. DMSO wells; all rows of the plate when no control is given):

   - ``standardize``: ``(x - mean_ref) / (std_ref + eps)`` (population std, ``ddof=0``);
   - ``mad``: robust, ``(x - median_ref) / (1.4826 * MAD_ref + eps)`` with
     ``MAD_ref = median(|x_ref - median_ref|)`` (1.4826 makes it the std of a normal distribution);
   - ``sphering``: ZCA whitening, ``(x - mean_ref) @ W`` with ``W = U diag(1 / sqrt(s + eps)) U^T`` from
     the eigendecomposition ``U diag(s) U^T`` of the reference covariance (``ddof=0``): the controls end up
     with identity covariance, so directions in which controls vary (nuisance) are down-weighted. With
     fewer reference rows than features the covariance is singular: raise ``eps`` (e.g. to 1e-3 x the
     mean variance) or sphere well-level profiles of many plates together.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

AGGREGATIONS = ("mean", "median")
NORMALIZATIONS = ("none", "standardize", "mad", "sphering")
MAD_TO_STD = 1.4826
COUNT_COLUMN = "n_rows"


@dataclass
class ProfileConfig:
    """How cell embeddings become profiles (a nested block of the profile evaluators).

    :ivar group_by: metadata columns identifying one profile (e.g. ``[plate, well]`` for well-level or
        ``[compound, concentration]`` for treatment-level profiles); empty: every row is a profile.
    :ivar aggregate: ``mean`` or ``median`` of the rows of a group.
    :ivar normalize: ``none``, ``standardize``, ``mad`` or ``sphering`` (see the module docstring).
    :ivar plate_column: normalise separately per value of this column (empty: the whole table at once).
    :ivar epsilon: added to scales (and to covariance eigenvalues for ``sphering``).
    """

    group_by: list[str] = field(default_factory=list)
    aggregate: str = "mean"
    normalize: str = "none"
    plate_column: str = ""
    epsilon: float = 1e-6

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError(f"group_by has duplicate columns: {self.group_by}")


def require_columns(metadata: pd.DataFrame, columns: Sequence[str], key: str) -> None:
    """:raises DataError: naming the config ``key`` and the available columns when one is missing."""
    absent = [c for c in columns if c and c not in metadata.columns]
    if absent:
        raise DataError(
            f"columns {absent} (config key '{key}') are not in the embedding metadata; "
            f"available columns: {list(metadata.columns)}"
        )


def aggregate_profiles(
    embeddings: np.ndarray,
    metadata: pd.DataFrame,
    group_by: Sequence[str],
    method: str = "mean",
    key: str = "profiles.group_by",
) -> tuple[np.ndarray, pd.DataFrame]:
    """Aggregate rows into one profile per group of ``group_by`` values.

    :param embeddings: ``(N, D)`` row embeddings. :param metadata: ``N`` rows of metadata.
    :param group_by: grouping columns; empty returns float32 copies of the inputs (with ``n_rows`` = 1).
    :param method: ``mean`` or ``median``.
    :return: ``(profiles (G, D) float32, profile metadata)``; groups are sorted by their key values; the
        metadata has the ``group_by`` columns, every other column constant within each group, and
        ``n_rows``.
    :raises DataError: when a column is missing, a grouping value is missing (NaN), or the sizes differ.
    :raises ValueError: for an unknown ``method``.
    """
    import pandas as pd

    if method not in AGGREGATIONS:
        raise ValueError(f"method must be one of {AGGREGATIONS}, got {method!r}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(metadata):
        raise DataError(f"embeddings of shape {embeddings.shape} do not match {len(metadata)} metadata rows")
    metadata = metadata.reset_index(drop=True)
    if not group_by:
        out = metadata.copy()
        out[COUNT_COLUMN] = 1
        return embeddings.copy(), out
    columns = list(group_by)
    require_columns(metadata, columns, key)
    missing = metadata[columns].isna().any(axis=1).to_numpy()
    if missing.any():
        raise DataError(
            f"{int(missing.sum())} rows have a missing value in the grouping columns {columns} (first at row "
            f"{int(np.flatnonzero(missing)[0])}); fill them or filter those rows out"
        )
    codes, uniques = pd.MultiIndex.from_frame(metadata[columns].astype(str)).factorize(sort=True)
    n_groups = len(uniques)
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_groups))
    sorted_emb = embeddings[order]
    if method == "mean":
        sums = np.add.reduceat(sorted_emb.astype(np.float64), starts, axis=0)
        counts = np.diff(np.append(starts, len(order)))
        profiles = (sums / counts[:, None]).astype(np.float32)
    else:
        bounds = np.append(starts, len(order))
        profiles = np.stack([np.median(sorted_emb[bounds[g] : bounds[g + 1]], axis=0)
                             for g in range(n_groups)]).astype(np.float32)
        counts = np.diff(bounds)
    first = metadata.iloc[order[starts]].reset_index(drop=True)
    grouped = metadata.groupby(codes, sort=True)
    constant = [c for c in metadata.columns
                if c in columns or bool((grouped[c].nunique(dropna=False) <= 1).all())]
    out = first[constant].copy()
    out[COUNT_COLUMN] = counts.astype(np.int64)
    logger.info("aggregated %d rows into %d profiles by %s (%s)", len(metadata), n_groups, columns, method)
    return profiles, out


def _reference_stats(ref: np.ndarray, method: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(centre (D,), transform)``: a (D,) scale to divide by, or a (D, D) whitening matrix."""
    ref = ref.astype(np.float64)
    if method == "standardize":
        return ref.mean(axis=0), ref.std(axis=0) + eps
    if method == "mad":
        median = np.median(ref, axis=0)
        return median, MAD_TO_STD * np.median(np.abs(ref - median), axis=0) + eps
    centre = ref.mean(axis=0)
    centred = ref - centre
    cov = centred.T @ centred / ref.shape[0]
    values, vectors = np.linalg.eigh(cov)
    values = np.clip(values, 0.0, None)
    return centre, (vectors / np.sqrt(values + eps)) @ vectors.T


def normalize_profiles(
    profiles: np.ndarray,
    metadata: pd.DataFrame,
    method: str,
    reference: np.ndarray | None = None,
    plate_column: str = "",
    epsilon: float = 1e-6,
    key: str = "profiles",
) -> np.ndarray:
    """Normalise ``profiles`` per plate against the reference rows of that plate.

    :param profiles: ``(G, D)``. :param metadata: ``G`` rows (needs ``plate_column`` when set).
    :param method: one of :data:`NORMALIZATIONS` (``none`` returns a float32 copy).
    :param reference: ``(G,)`` bool, the rows statistics come from (negative controls); ``None``: all rows.
    :param plate_column: normalise each value of this column separately; empty: all rows together.
    :param epsilon: see :class:`ProfileConfig`.
    :return: ``(G, D)`` float32.
    :raises DataError: when a plate has fewer than 2 reference rows (naming the plate), or the plate column
        is missing or has missing values.
    :raises ValueError: for an unknown method or a reference mask of the wrong shape.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"method must be one of {NORMALIZATIONS}, got {method!r}")
    profiles = np.asarray(profiles, dtype=np.float32)
    if method == "none":
        return profiles.copy()
    n = profiles.shape[0]
    ref_mask = np.ones(n, dtype=bool) if reference is None else np.asarray(reference, dtype=bool)
    if ref_mask.shape != (n,):
        raise ValueError(f"reference mask has shape {ref_mask.shape}, expected ({n},)")
    if plate_column:
        require_columns(metadata, [plate_column], f"{key}.plate_column")
        plates = metadata[plate_column]
        if plates.isna().any():
            raise DataError(f"plate column '{plate_column}' has missing values; fill them before normalising")
        plate_values = plates.astype(str).to_numpy()
    else:
        plate_values = np.full(n, "all", dtype=object)
    out = np.empty_like(profiles)
    for plate in sorted(set(plate_values)):
        rows = plate_values == plate
        ref = profiles[rows & ref_mask]
        if ref.shape[0] < 2:
            where = f"plate '{plate}' (column '{plate_column}')" if plate_column else "the table"
            raise DataError(
                f"{where} has {ref.shape[0]} reference (control) profile(s); '{method}' normalisation needs "
                "at least 2. Check the control values, or normalise over more rows (fewer plates)."
            )
        centre, transform = _reference_stats(ref, method, epsilon)
        block = profiles[rows].astype(np.float64) - centre
        out[rows] = (block @ transform if transform.ndim == 2 else block / transform).astype(np.float32)
    return out


def build_profiles(
    embeddings: np.ndarray,
    metadata: pd.DataFrame,
    config: ProfileConfig,
    control_mask_fn: Any = None,
    key: str = "profiles",
) -> tuple[np.ndarray, pd.DataFrame]:
    """Aggregate then normalise, as configured.

    :param control_mask_fn: callable ``(profile metadata) -> (G,) bool`` marking the reference rows of
        normalisation (negative controls); ``None``: every profile is a reference row.
    :return: ``(profiles (G, D) float32, profile metadata)``.
    :raises DataError: see :func:`aggregate_profiles` and :func:`normalize_profiles`.
    """
    profiles, meta = aggregate_profiles(embeddings, metadata, config.group_by, config.aggregate,
                                        key=f"{key}.group_by")
    if config.normalize != "none":
        reference = control_mask_fn(meta) if control_mask_fn is not None else None
        profiles = normalize_profiles(profiles, meta, config.normalize, reference, config.plate_column,
                                      config.epsilon, key=key)
    return profiles, meta


def constant_column(meta: pd.DataFrame, column: str, group_by: Sequence[str], key: str) -> pd.Series:
    """``meta[column]`` after :func:`aggregate_profiles`.

    :raises DataError: when the column was dropped because it varies within a group (naming the config
        ``key`` and what to do) or never existed.
    """
    if column not in meta.columns:
        raise DataError(
            f"column '{column}' (config key '{key}') is not available at the profile level: it is missing "
            f"from the metadata or varies within the groups of {list(group_by)}. Add it to "
            "profiles.group_by, or aggregate at a level where it is constant."
        )
    return meta[column]
