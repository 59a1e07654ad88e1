"""The ``nsc_nscb`` evaluator: cosine 1-NN mechanism-of-action accuracy, not-same-compound (-or-batch).

The BBBC021 MoA protocol (Ljosa et al. 2013; used by uniDINO): profiles (cells aggregated per well or per
treatment, :mod:`cellssl.eval.engines.profiles`) are classified by the label of their nearest neighbour (cosine
similarity), where the neighbour may not be a profile of the same compound:

- **NSC** (not-same-compound): candidates are the profiles whose ``compound_column`` differs from the
  query's, so a model cannot score by recognising the compound itself;
- **NSCB** (not-same-compound-or-batch): candidates from the query's ``batch_column`` value are excluded
  too, so batch effects (plate, week) cannot help. Which ones is ``nscb_batch_exclusion``:
  ``same_label`` (default; uniDINO's ``nearest_neighbor_classifier_NSBW``, which produced its published
  NSCB figures) excludes a same-batch candidate only when it also has the query's label, so a same-batch
  profile of another label can still be the (wrong) nearest neighbour; ``all`` (the rule as Ljosa et al.
  and Ando et al. state it) excludes every same-batch candidate. Both rules allow exactly the same correct
  neighbours, so they score the same queries; ``all`` can only be kinder. The rule used is recorded in the
  result's ``split`` block and ``config``.

A query is *scored* only when some allowed candidate shares its label (otherwise no neighbour could be
right, e.g. a MoA with one compound, or one batch for NSCB): unscored queries are counted, not counted
as wrong (uniDINO's routine scores them, always wrongly, and its NSCB drops the single-batch MoAs first;
``exclude_labels`` does the latter here). Profiles whose label is in ``exclude_labels`` (e.g. the DMSO
controls of the classic protocol) are neither queries nor candidates; those in ``reference_only_labels`` are
candidates but never queries.
Ties of similarity go to the candidate that comes first in the profile order.

YAML block::

    eval:
      - name: nsc_nscb
        label_column: moa
        compound_column: compound
        batch_column: plate
        profiles: {group_by: [compound, concentration], aggregate: mean}   # treatment-level profiles
        exclude_labels: [DMSO]
        nscb_batch_exclusion: same_label      # uniDINO's rule; `all`: every same-batch profile excluded
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.errors import ConfigError, DataError
from cellssl.eval.base import EvalContext, Evaluator, to_jsonable
from cellssl.eval.engines.profiles import ProfileConfig, build_profiles, constant_column, require_columns

if TYPE_CHECKING:
    from cellssl.embed.store import EmbeddingTable

logger = logging.getLogger(__name__)

NSCB_BATCH_EXCLUSIONS = ("same_label", "all")


@dataclass
class NSCConfig:
    """Parameters of the ``nsc_nscb`` evaluator (see the module docstring).

    :ivar label_column: the class of a profile, e.g. ``moa`` (default: the dataset's label column).
    :ivar compound_column: the compound (or treatment) of a profile; required.
    :ivar batch_column: the batch (plate, week); empty: NSCB is not computed.
    :ivar profiles: aggregation level (``group_by``: e.g. ``[plate, well]`` or ``[compound, concentration]``)
        and normalisation (reference rows: ``control_values`` of ``control_column``; all rows if none).
    :ivar control_column: column of the normalisation controls (default: ``label_column``).
    :ivar control_values: values of ``control_column`` marking controls for normalisation.
    :ivar exclude_labels: labels left out entirely (neither queries nor candidates).
    :ivar reference_only_labels: labels that are candidates but never queries.
    :ivar nscb_batch_exclusion: which same-batch candidates NSCB excludes: ``same_label`` (only those with
        the query's label, uniDINO's published rule) or ``all`` (every one, Ljosa et al.).
    :ivar batch_size: queries per similarity block.
    """

    label_column: str = ""
    compound_column: str = ""
    batch_column: str = ""
    profiles: ProfileConfig = field(default_factory=ProfileConfig)
    control_column: str = ""
    control_values: list[str] = field(default_factory=list)
    exclude_labels: list[str] = field(default_factory=list)
    reference_only_labels: list[str] = field(default_factory=list)
    nscb_batch_exclusion: str = "same_label"
    batch_size: int = 1024

    def __post_init__(self) -> None:
        if isinstance(self.profiles, dict):
            self.profiles = ProfileConfig(**self.profiles)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.nscb_batch_exclusion not in NSCB_BATCH_EXCLUSIONS:
            raise ValueError(f"nscb_batch_exclusion must be one of {', '.join(NSCB_BATCH_EXCLUSIONS)}, got "
                             f"{self.nscb_batch_exclusion!r} (same_label: uniDINO's rule; all: every same-batch "
                             "profile excluded)")
        both = set(self.exclude_labels) & set(self.reference_only_labels)
        if both:
            raise ValueError(f"labels {sorted(both)} are in both exclude_labels and reference_only_labels")


def not_same_nn_accuracy(
    profiles: np.ndarray,
    labels: np.ndarray,
    exclude_keys: list[np.ndarray],
    is_query: np.ndarray | None = None,
    batch_size: int = 1024,
    same_label_keys: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Cosine 1-NN accuracy where a query's neighbour must differ from it in every ``exclude_keys`` array.

    :param profiles: ``(G, D)``. :param labels: ``(G,)`` labels. :param exclude_keys: ``(G,)`` arrays
        (e.g. ``[compound]`` for NSC, ``[compound, batch]`` for classic NSCB); a candidate equal to the query
        in any of them is not allowed. The query itself is never a candidate.
    :param is_query: ``(G,)`` bool, the profiles to classify (default: all).
    :param same_label_keys: ``(G,)`` arrays (e.g. ``[batch]`` for uniDINO's NSCB); a candidate equal to the
        query in any of them is not allowed when it also has the query's label.
    :return: ``{"accuracy", "correct", "scored", "unscored", "neighbour" ((G,) index or -1),
        "scored_mask" ((G,) bool)}``; ``accuracy`` is NaN when no query is scored.
    """
    x = np.asarray(profiles, dtype=np.float64)
    n = x.shape[0]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    labels = np.asarray(labels, dtype=object).astype(str)
    keys = [np.asarray(k, dtype=object).astype(str) for k in exclude_keys]
    label_keys = [np.asarray(k, dtype=object).astype(str) for k in same_label_keys or []]
    queries = np.flatnonzero(np.ones(n, dtype=bool) if is_query is None else np.asarray(is_query, dtype=bool))
    neighbour = np.full(n, -1, dtype=np.int64)
    scored = np.zeros(n, dtype=bool)
    correct = 0
    for start in range(0, len(queries), batch_size):
        block = queries[start : start + batch_size]
        sims = x[block] @ x.T
        for row, q in enumerate(block):
            allowed = np.ones(n, dtype=bool)
            for key in keys:
                allowed &= key != key[q]
            same_label = labels == labels[q]
            for key in label_keys:
                allowed &= ~(same_label & (key == key[q]))
            allowed[q] = False
            if not (allowed & (labels == labels[q])).any():
                continue
            candidates = np.flatnonzero(allowed)
            best = candidates[int(np.argmax(sims[row, candidates]))]
            neighbour[q] = best
            scored[q] = True
            correct += int(labels[best] == labels[q])
    n_scored = int(scored.sum())
    return {
        "accuracy": correct / n_scored if n_scored else float("nan"),
        "correct": correct,
        "scored": n_scored,
        "unscored": int(len(queries) - n_scored),
        "neighbour": neighbour,
        "scored_mask": scored,
    }


def _control_marker(column: str, values: list[str], group_by: list[str], key: str) -> Any:
    """Callable ``(profile metadata) -> (G,) bool`` marking the normalisation controls."""
    wanted = [str(v).strip() for v in values]

    def mark(meta: Any) -> np.ndarray:
        series = constant_column(meta, column, group_by, key)
        return np.isin(series.astype(str).str.strip().to_numpy(), wanted)

    return mark


class NSCEvaluator(Evaluator):
    """NSC / NSCB 1-NN accuracy on profiles."""

    name = "nsc_nscb"

    def __init__(self, config: NSCConfig) -> None:
        self.config = config

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Build profiles and score NSC (and NSCB when a batch column is set).

        :return: ``{"evaluator", "metrics" (nsc_accuracy, nscb_accuracy, counts), "table" (per label),
            "split" (profile sizes), "config", "identity", "embedding_dim"}``.
        :raises ConfigError: no label column or no compound column.
        :raises DataError: missing columns, columns that vary within a profile, or no scored query.
        """
        cfg = self.config
        label = cfg.label_column or (context.label_columns[0] if context.label_columns else "")
        if not label:
            raise ConfigError(f"{self.name}.label_column", "is required (the dataset declares no label column).")
        if not cfg.compound_column:
            raise ConfigError(f"{self.name}.compound_column",
                              "is required: the column naming each profile's compound (or treatment).")
        control_column = cfg.control_column or label
        require_columns(table.metadata, [label, cfg.compound_column, cfg.batch_column], self.name)
        reference = None
        if cfg.control_values:
            require_columns(table.metadata, [control_column], f"{self.name}.control_column")
            reference = _control_marker(control_column, cfg.control_values, cfg.profiles.group_by,
                                        f"{self.name}.control_column")
        profiles, meta = build_profiles(table.embeddings, table.metadata, cfg.profiles, reference,
                                        key=f"{self.name}.profiles")
        group_by = cfg.profiles.group_by
        labels = constant_column(meta, label, group_by, f"{self.name}.label_column")
        compounds = constant_column(meta, cfg.compound_column, group_by, f"{self.name}.compound_column")
        text = labels.astype(str).str.strip().to_numpy()
        keep = ~labels.isna().to_numpy() & ~np.isin(text, [str(v).strip() for v in cfg.exclude_labels])
        if cfg.batch_column:
            constant_column(meta, cfg.batch_column, group_by, f"{self.name}.batch_column")
        meta, profiles, text = meta.loc[keep].reset_index(drop=True), profiles[keep], text[keep]
        compounds = compounds[keep].astype(str).to_numpy()
        is_query = ~np.isin(text, [str(v).strip() for v in cfg.reference_only_labels])
        nsc = not_same_nn_accuracy(profiles, text, [compounds], is_query, cfg.batch_size)
        if not nsc["scored"]:
            raise DataError(
                f"nsc_nscb: none of the {int(is_query.sum())} query profiles has a candidate of the same "
                f"'{label}' with another '{cfg.compound_column}'; NSC needs every label to span at least two "
                "compounds (check compound_column, exclude_labels and profiles.group_by)."
            )
        metrics: dict[str, Any] = {
            "nsc_accuracy": nsc["accuracy"], "nsc_scored": nsc["scored"], "nsc_unscored": nsc["unscored"],
        }
        nscb = None
        if cfg.batch_column:
            batches = meta[cfg.batch_column].astype(str).to_numpy()
            if cfg.nscb_batch_exclusion == "all":
                nscb = not_same_nn_accuracy(profiles, text, [compounds, batches], is_query, cfg.batch_size)
            else:
                nscb = not_same_nn_accuracy(profiles, text, [compounds], is_query, cfg.batch_size,
                                            same_label_keys=[batches])
            metrics.update({"nscb_accuracy": nscb["accuracy"], "nscb_scored": nscb["scored"],
                            "nscb_unscored": nscb["unscored"]})
        rows = []
        for name in sorted(set(text[is_query])):
            members = is_query & (text == name)
            row: dict[str, Any] = {label: name, "profiles": int(members.sum())}
            for tag, res in (("nsc", nsc), ("nscb", nscb)):
                if res is None:
                    continue
                hit = members & res["scored_mask"]
                right = int(np.sum(text[res["neighbour"][hit]] == name))
                row[f"{tag}_scored"] = int(hit.sum())
                row[f"{tag}_accuracy"] = right / int(hit.sum()) if hit.any() else float("nan")
            rows.append(row)
        logger.info("nsc_nscb: NSC %.3f on %d profiles%s", nsc["accuracy"], nsc["scored"],
                    f", NSCB {nscb['accuracy']:.3f} on {nscb['scored']}" if nscb else "")
        result = {
            "evaluator": self.name,
            "metrics": metrics,
            "table": rows,
            "split": {
                "mode": "profiles, leave-compound-out 1-NN (no train/test split)",
                "input_rows": len(table),
                "profile_rows": len(meta),
                "query_rows": int(is_query.sum()),
                "left_out_rows": int((~keep).sum()),
                "group_by": list(group_by),
                "compounds": len(set(compounds)),
                "nscb_batch_exclusion": cfg.nscb_batch_exclusion if cfg.batch_column else None,
            },
            "embedding_dim": table.dim,
            "config": dataclasses.asdict(cfg),
            "identity": dict(context.identity),
        }
        return to_jsonable(result)


def build_nsc_nscb(config: NSCConfig) -> NSCEvaluator:
    """Factory registered under the name ``nsc_nscb``."""
    return NSCEvaluator(config)
