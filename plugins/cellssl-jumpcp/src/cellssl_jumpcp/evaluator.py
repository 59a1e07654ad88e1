"""The ``jump_map`` evaluator: cell embeddings -> well profiles -> normalised profiles -> activity / consistency mAP.

1. Well profiles: the cells of each (plate, well) aggregated (``median`` by default), plate by plate from the
   run's embedding shards (:func:`cellssl_jumpcp.profiles.iter_plates`; the table passed in when the run has
   no shards) -> ``<run_dir>/profiles/well_profiles.parquet``.
2. Normalisation per plate against the negative-control wells (``mad_robustize`` by default) ->
   ``<run_dir>/profiles/well_profiles_normalized.parquet``.
3. Phenotypic activity (and consistency, with ``target_column``): :mod:`cellssl_jumpcp.mapping`; the
   per-perturbation tables go to ``eval/jump_map_activity.csv`` (and ``eval/jump_map_consistency.csv``).
4. With ``intensity_baseline``, the same protocol on per-channel intensity statistics of the same cells
   (mean, standard deviation, 10th and 90th percentile of each channel of each crop): the reference a
   learned embedding should beat. Its tables are ``eval/jump_map_baseline_*.csv``.

Wells of ``Metadata_pert_type == empty`` and wells without a perturbation are left out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellssl.api import ConfigError, DataError, EvalContext, Evaluator, to_jsonable
from cellssl_jumpcp.config import JumpMapConfig
from cellssl_jumpcp.mapping import phenotypic_activity, phenotypic_consistency
from cellssl_jumpcp.profiles import (
    iter_plates,
    iter_table_plates,
    normalize_wells,
    well_profiles,
    write_profiles,
)

if TYPE_CHECKING:
    import pandas as pd

    from cellssl.api import EmbeddingTable

logger = logging.getLogger(__name__)

PROFILE_DIR = "profiles"
Plate = tuple[str, np.ndarray, "pd.DataFrame"]


def intensity_features(dataset: Any) -> np.ndarray:
    """``(N, 4 C)`` per-channel mean, std, 10th and 90th percentile of every sample of ``dataset``."""
    from tqdm import tqdm

    rows = []
    for index in tqdm(range(len(dataset)), desc="intensity features", disable=len(dataset) < 1000, leave=False):
        image = dataset.load_image(index).numpy().reshape(len(dataset.channel_names), -1).astype(np.float64)
        low, high = np.percentile(image, [10, 90], axis=1)
        rows.append(np.concatenate([image.mean(1), image.std(1), low, high]))
    return np.asarray(rows, dtype=np.float32)


class JumpMapEvaluator(Evaluator):
    """mAP of JUMP well profiles (see the module docstring)."""

    name = "jump_map"

    def __init__(self, config: JumpMapConfig) -> None:
        self.config = config

    def _score(self, plates: Any, run_dir: Path, tag: str) -> dict[str, Any]:
        cfg = self.config
        profiles, meta = well_profiles(plates, cfg.plate_column, cfg.well_column, cfg.aggregate, cfg.site_column)
        for column, key in ((cfg.perturbation_column, "perturbation_column"), (cfg.control_column, "control_column")):
            if column not in meta.columns:
                raise DataError(f"column '{column}' (config key 'jump_map.{key}') is not a well-level column of the "
                                f"embeddings; well columns: {list(meta.columns)}. Set data.metadata so the sites are "
                                "joined with their perturbations.")
        suffix = "" if tag == "embeddings" else f"_{tag}"
        write_profiles(run_dir / PROFILE_DIR / f"well_profiles{suffix}.parquet", profiles, meta)
        keep = meta[cfg.perturbation_column].notna().to_numpy() & \
            (meta[cfg.control_column].astype(str) != "empty").to_numpy()
        profiles, meta = profiles[keep], meta.loc[keep].reset_index(drop=True)
        negcon = meta[cfg.control_column].astype(str).isin([str(v) for v in cfg.negcon_values]).to_numpy()
        if not negcon.any():
            raise DataError(f"no well has {cfg.control_column} in {cfg.negcon_values} (jump_map.negcon_values); "
                            f"values present: {sorted(set(meta[cfg.control_column].astype(str)))[:10]}")
        normalized = normalize_wells(profiles, meta, cfg.normalize, negcon, cfg.plate_column, cfg.epsilon)
        write_profiles(run_dir / PROFILE_DIR / f"well_profiles{suffix}_normalized.parquet", normalized, meta)
        activity = phenotypic_activity(normalized, meta, cfg.perturbation_column, negcon, list(cfg.neg_sameby),
                                       cfg.distance, cfg.null_size, cfg.threshold, cfg.seed)
        tables = {"activity": activity.table}
        metrics = dict(activity.metrics)
        if cfg.target_column:
            if cfg.target_column not in meta.columns:
                raise DataError(f"column '{cfg.target_column}' (jump_map.target_column) is not a well-level column")
            treated = ~negcon
            consistency = phenotypic_consistency(normalized[treated], meta.loc[treated].reset_index(drop=True),
                                                 cfg.perturbation_column, cfg.target_column, cfg.distance,
                                                 cfg.null_size, cfg.threshold, cfg.seed)
            tables["consistency"] = consistency.table
            metrics.update(consistency.metrics)
        files = {}
        for name, table in tables.items():
            path = run_dir / "eval" / f"jump_map{'' if tag == 'embeddings' else '_' + tag}_{name}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, index=False)
            files[name] = str(path.relative_to(run_dir))
        counts = {"wells": len(meta), "negcon_wells": int(negcon.sum()),
                  "plates": int(meta[cfg.plate_column].nunique()),
                  "cells": int(meta["Metadata_Count_Cells"].sum()), "features": int(profiles.shape[1])}
        return {"metrics": metrics, "tables": {k: v.to_dict(orient="records") for k, v in tables.items()},
                "counts": counts, "files": files}

    def evaluate(self, table: EmbeddingTable, context: EvalContext) -> dict[str, Any]:
        """Score the run's cell embeddings; write profiles and per-perturbation tables.

        The cells are read plate by plate from the run's shards (``embeddings`` folder) when it has them, else
        from ``table``.

        :return: ``{"evaluator", "metrics", "tables", "counts", "files", "baseline", "split", "config", "identity"}``.
        :raises DataError: for missing columns, no negative control, too few controls to normalise or nothing to score.
        :raises ConfigError: ``intensity_baseline`` without the run's dataset.
        """
        cfg = self.config
        run_dir = Path(context.run_dir)
        folder = run_dir / cfg.embeddings if cfg.embeddings else None
        if folder is not None and folder.is_dir() and any(folder.glob("*.parquet")):
            plates = iter_plates(folder, cfg.plate_column)
        else:
            plates = iter_table_plates(table.embeddings, table.metadata, cfg.plate_column)
        baseline = None
        if cfg.intensity_baseline:
            if context.load_dataset is None:
                raise ConfigError("jump_map.intensity_baseline", "needs the run's data block (the images of the cells)")
            dataset, _ = context.load_dataset()
            if len(dataset) != len(table):
                raise DataError(f"the run's dataset has {len(dataset)} samples but the embeddings {len(table)} rows; "
                                "the intensity baseline needs the same cells (embed.limit unset)")
            baseline = iter_table_plates(intensity_features(dataset), dataset.metadata, cfg.plate_column)
        return self.evaluate_plates(plates, baseline, run_dir, len(table), table.dim, context.identity)

    def evaluate_plates(self, plates: Iterator[Plate], baseline: Iterator[Plate] | None, run_dir: Path,
                        input_rows: int, dim: int, identity: Mapping[str, Any]) -> dict[str, Any]:
        """Score cells given plate by plate (the plate array's merge step streams each plate's shards so).

        :param plates: ``(plate, embeddings, metadata)`` per plate (:func:`cellssl_jumpcp.profiles.iter_plates`).
        :param baseline: the same for per-channel intensity statistics of the same cells, or ``None``.
        :param input_rows: cells in all; :param dim: embedding dimension; :param identity: the run's identity.
        :return: see :meth:`evaluate`.
        :raises DataError: see :meth:`evaluate`.
        """
        cfg = self.config
        result = self._score(plates, run_dir, "embeddings")
        scored_baseline = None
        if baseline is not None:
            scored_baseline = self._score(baseline, run_dir, "baseline")
            result["metrics"].update({f"baseline_{k}": v for k, v in scored_baseline["metrics"].items()})
        out = {
            "evaluator": self.name,
            **result,
            "baseline": scored_baseline,
            "split": {"mode": "well profiles (no train/test split)", "input_rows": int(input_rows)},
            "embedding_dim": int(dim),
            "config": dataclasses.asdict(cfg),
            "identity": dict(identity),
        }
        return to_jsonable(out)


def build_jump_map(config: JumpMapConfig) -> JumpMapEvaluator:
    """Factory registered as evaluator ``jump_map``."""
    return JumpMapEvaluator(config)


__all__ = ["JumpMapEvaluator", "build_jump_map", "intensity_features"]
