"""The ``retrieval_map`` evaluator: mean average precision of retrieving same-label profiles against controls.

The protocol of JUMP Cell Painting profiling (the ``copairs`` package's rules; computed by
:mod:`cellssl.eval.engines.average_precision`, whose AP values agree with copairs 0.5.5 except on exact similarity
ties, which we rank negatives first):

- Profiles are built from the embedding table (:mod:`cellssl.eval.engines.profiles`: aggregation per group of
  metadata columns, e.g. wells, and per-plate normalisation against the negative controls).
- Every non-control profile is a *query*; its ranked list holds its *positives* (the other profiles with
  the same label that differ from it in every ``pos_diffby`` column, e.g. come from another well) and
  its *negatives* (the negative-control profiles sharing every ``neg_sameby`` column, e.g. the plate).
- AP of a query: the mean, over its positives, of the precision at the rank of that positive.
- Queries are grouped by ``report_by`` (default: the label); a group's mAP is the mean AP of its
  queries, with a p-value against the mAP of random rankings and a Benjamini-Hochberg ``q_value``; a
  group is *retrieved* when ``q_value < threshold``; ``fraction_retrieved`` is the fraction of groups
  retrieved.

We do not call copairs itself: its mAP p-value counts only null values strictly above the observed
mAP (a perfect mAP of a short list gets p = 1 / (1 + null_size) whatever its chance probability), it
caches null distributions under ``~/.copairs`` by default, and it needs duckdb and statsmodels.

YAML block::

    eval:
      - name: retrieval_map
        label_column: moa
        control_values: [DMSO]           # rows of control_column (default: label_column) with these values
        profiles: {group_by: [plate, well], aggregate: mean, normalize: mad, plate_column: plate}
        pos_diffby: [well]               # positives must come from another well
        report_by: [moa]
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext, Evaluator, to_jsonable
from cellssl.eval.engines.average_precision import DISTANCES, average_precisions, group_map_pvalues
from cellssl.eval.engines.profiles import ProfileConfig, build_profiles, constant_column, require_columns

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)


@dataclass
class RetrievalMAPConfig:
    """Parameters of the ``retrieval_map`` evaluator (see the module docstring).

    :ivar label_column: positives share this column's value (default: the dataset's label column).
    :ivar control_column: column identifying negative controls (default: ``label_column``).
    :ivar control_values: values of ``control_column`` marking negative controls (required).
    :ivar profiles: aggregation and normalisation of the embeddings (normalised against the controls).
    :ivar pos_diffby: columns in which a positive must differ from its query (e.g. ``[well]``, ``[plate]``).
    :ivar neg_sameby: columns a negative (control) must share with its query (e.g. ``[plate]``).
    :ivar report_by: columns grouping queries into the reported mAPs (default: ``[label_column]``).
    :ivar distance: ``cosine``, ``correlation`` or ``euclidean`` (ranked by minus the distance).
    :ivar null_size: random rankings in each null distribution.
    :ivar threshold: significance level of the (corrected) p-values.
    :ivar seed: seed of the null distributions.
    :ivar batch_size: queries per similarity block.
    """

    label_column: str = ""
    control_column: str = ""
    control_values: list[str] = field(default_factory=list)
    profiles: ProfileConfig = field(default_factory=ProfileConfig)
    pos_diffby: list[str] = field(default_factory=list)
    neg_sameby: list[str] = field(default_factory=list)
    report_by: list[str] = field(default_factory=list)
    distance: str = "cosine"
    null_size: int = 10000
    threshold: float = 0.05
    seed: int = 0
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if isinstance(self.profiles, dict):
            self.profiles = ProfileConfig(**self.profiles)
        if self.distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {self.distance!r}")
        if self.null_size < 1:
            raise ValueError(f"null_size must be >= 1, got {self.null_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _as_text(series: pd.Series) -> np.ndarray:
    return series.astype(str).str.strip().to_numpy()


def control_mask(meta: pd.DataFrame, column: str, values: list[str]) -> np.ndarray:
    """``(G,)`` bool: rows whose ``column`` (compared as stripped text) is one of ``values``."""
    return np.isin(_as_text(meta[column]), [str(v).strip() for v in values])


class RetrievalMAPEvaluator(Evaluator):
    """mAP of same-label retrieval against negative controls, with null p-values per group."""

    name = "retrieval_map"

    def __init__(self, config: RetrievalMAPConfig) -> None:
        self.config = config

    def _label_column(self, context: EvalContext) -> str:
        column = self.config.label_column or (context.label_columns[0] if context.label_columns else "")
        if not column:
            raise ConfigError(f"{self.name}.label_column", "is required (the dataset declares no label column).")
        return column

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Build profiles, compute the AP of every query and the mAP and p-value of every group.

        :return: ``{"evaluator", "metrics", "table" (one row per group), "split" (profile sizes), "config",
            "identity", "embedding_dim"}``.
        :raises ConfigError: no label column or no control values.
        :raises DataError: a missing column, no control profile, too few controls to normalise, or no
            positive pair.
        """
        cfg = self.config
        label = self._label_column(context)
        control_column = cfg.control_column or label
        if not cfg.control_values:
            raise ConfigError(f"{self.name}.control_values",
                              f"is required: the values of '{control_column}' marking negative controls "
                              "(e.g. [DMSO]).")
        require_columns(table.metadata, [label, control_column, *cfg.pos_diffby, *cfg.neg_sameby,
                                         *cfg.report_by], self.name)
        profiles, meta = build_profiles(
            table.embeddings, table.metadata, cfg.profiles,
            lambda m: control_mask(m, control_column, cfg.control_values), key=f"{self.name}.profiles")
        group_by = cfg.profiles.group_by
        constant_column(meta, control_column, group_by, f"{self.name}.control_column")
        controls = control_mask(meta, control_column, cfg.control_values)
        if not controls.any():
            present = sorted(set(_as_text(meta[control_column])))[:20]
            raise DataError(
                f"no profile has {control_column} in {cfg.control_values} (config key "
                f"'{self.name}.control_values'); values there include {present}"
            )
        labels = constant_column(meta, label, group_by, f"{self.name}.label_column")
        unlabelled = labels.isna().to_numpy() & ~controls
        if unlabelled.any():
            logger.info("retrieval_map: %d non-control profiles without a label are left out", int(unlabelled.sum()))
        keep = ~unlabelled
        meta, profiles, controls = meta.loc[keep].reset_index(drop=True), profiles[keep], controls[keep]
        report_by = list(cfg.report_by) or [label]
        for name, cols in (("pos_diffby", cfg.pos_diffby), ("neg_sameby", cfg.neg_sameby), ("report_by", report_by)):
            for column in cols:
                constant_column(meta, column, group_by, f"{self.name}.{name}")
        diffby = meta[cfg.pos_diffby].to_numpy() if cfg.pos_diffby else None
        sameby = meta[cfg.neg_sameby].to_numpy() if cfg.neg_sameby else None
        ap = average_precisions(profiles, _as_text(meta[label]), controls, diffby, sameby, cfg.distance,
                                cfg.batch_size)
        if not ap.scored.any():
            raise DataError(
                f"retrieval_map: none of the {int(ap.is_query.sum())} query profiles has both a positive (another "
                f"profile with the same '{label}'{' differing in ' + str(cfg.pos_diffby) if cfg.pos_diffby else ''}) "
                f"and a negative control{' sharing ' + str(cfg.neg_sameby) if cfg.neg_sameby else ''}; check "
                "label_column, control_values, pos_diffby, neg_sameby and profiles.group_by."
            )
        groups = group_map_pvalues(ap, meta[report_by].to_numpy(), cfg.null_size, cfg.seed)
        rows = []
        for i, key in enumerate(groups.keys):
            row: dict[str, Any] = dict(zip(report_by, key, strict=True))
            row.update({
                "mAP": float(groups.map[i]),
                "chance_mAP": float(groups.chance[i]),
                "p_value": float(groups.p_value[i]),
                "q_value": float(groups.q_value[i]),
                "retrieved": bool(groups.q_value[i] < cfg.threshold),
                "queries": int(groups.queries[i]),
            })
            rows.append(row)
        metrics = {
            "mean_average_precision": float(groups.map.mean()),
            "mean_chance_map": float(groups.chance.mean()),
            "mean_ap_queries": float(np.nanmean(ap.ap[ap.scored])),
            "fraction_retrieved": float(np.mean(groups.q_value < cfg.threshold)),
            "fraction_retrieved_uncorrected": float(np.mean(groups.p_value < cfg.threshold)),
            "num_groups": len(rows),
            "num_queries": int(ap.scored.sum()),
        }
        result = {
            "evaluator": self.name,
            "metrics": metrics,
            "table": rows,
            "split": {
                "mode": "profiles (no train/test split)",
                "input_rows": len(table),
                "profile_rows": len(meta),
                "control_rows": int(controls.sum()),
                "query_rows": int(ap.is_query.sum()),
                "unscored_query_rows": int((ap.is_query & ~ap.scored).sum()),
                "unlabelled_rows": int(unlabelled.sum()),
                "group_by": list(cfg.profiles.group_by),
                "report_by": report_by,
            },
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_retrieval_map(config: RetrievalMAPConfig) -> RetrievalMAPEvaluator:
    """Factory registered under the name ``retrieval_map``."""
    return RetrievalMAPEvaluator(config)
