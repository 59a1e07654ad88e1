"""The merge step of a plate array: well profiles of every plate, then ``jump_map`` once (mAP needs all plates).

:func:`merge_array` checks that every plate is done (:func:`cellssl_jumpcp.array.plate_status`), then streams
the plates' embedding sets plate by plate (:func:`cellssl_jumpcp.profiles.iter_plates`: one plate in memory,
whatever the number of plates) into :meth:`cellssl_jumpcp.evaluator.JumpMapEvaluator.evaluate_plates`, which
writes ``<run>/profiles/well_profiles*.parquet``, ``<run>/eval/jump_map_*.csv``; the result goes to
``<run>/eval/jump_map.json`` in the layout of a single run's evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cellssl.api import ConfigError, DataError

logger = logging.getLogger(__name__)


def merge_array(config: DictConfig, plates: Sequence[str] | None = None) -> dict[str, Any]:
    """Score every plate of the array of ``config`` with its ``jump_map`` evaluator.

    :param config: the array's run config (``run.output_dir`` is the array's run directory).
    :param plates: the plates to merge (default: those of ``<run>/array.json``, else every plate of the source).
    :return: the ``jump_map`` result, as written to ``<run>/eval/jump_map.json``.
    :raises ConfigError: when ``eval`` has no ``jump_map`` entry.
    :raises DataError: naming the plates that are not done (and why), or from the evaluator.
    """
    from cellssl.api import atomic_write_json, atomic_write_text, build_run_plan
    from cellssl_jumpcp.array import (
        ARRAY_FILE,
        EMBEDDINGS_DIR,
        INTENSITY_DIR,
        config_digest,
        list_plates,
        plate_config,
        plate_dir,
        plate_status,
    )
    from cellssl_jumpcp.profiles import iter_plates

    plan = build_run_plan(config)
    specs = [e for e in plan.evaluators if e.name == "jump_map"]
    if not specs:
        raise ConfigError("eval", "lists no jump_map evaluator; add `eval: [{name: jump_map}]`")
    if len(specs) < len(plan.evaluators):
        logger.warning("the merge step runs jump_map only; the other evaluators of eval: are not run")
    run_dir = plan.run_dir.resolve()
    array_file = run_dir / ARRAY_FILE
    stored = json.loads(array_file.read_text(encoding="utf-8")) if array_file.is_file() else {}
    plates = sorted({str(p) for p in plates}) if plates else stored.get("plates") or list_plates(config)
    config = config.copy()
    OmegaConf.update(config, "run.output_dir", str(run_dir))
    stats = run_dir / "channel_stats.json"
    if plan.normalize.mode == "dataset" and not plan.normalize.stats_path and stats.is_file():
        OmegaConf.update(config, "normalize.stats_path", str(stats))  # what prepare_array gave the plates
    problems = {}
    for plate in plates:
        reason = plate_status(run_dir, plate, config_digest(plate_config(config, plate, run_dir)))
        if reason:
            problems[plate] = reason
    if problems:
        shown = "; ".join(f"{plate}: {reason}" for plate, reason in list(problems.items())[:5])
        raise DataError(f"{len(problems)} of {len(plates)} plate(s) of {run_dir} are not done ({shown}); run "
                        "`cellssl jump array` with the same config again to finish them, then merge")
    records = [json.loads((plate_dir(run_dir, p) / "plate_done.json").read_text(encoding="utf-8")) for p in plates]
    manifests = [json.loads((plate_dir(run_dir, p) / EMBEDDINGS_DIR / "manifest.json").read_text(encoding="utf-8"))
                 for p in plates]
    rows = sum(int(m["rows"]) for m in manifests)
    dim = int(manifests[0]["dim"])
    skipped = sum(int(m.get("skipped_rows", 0)) for m in manifests)
    results = []
    for index, spec in enumerate(specs):
        evaluator = spec.build()
        cfg = evaluator.config
        cells = iter_plates([plate_dir(run_dir, p) / EMBEDDINGS_DIR for p in plates], cfg.plate_column)
        baseline = None
        if cfg.intensity_baseline:
            missing = [r["plate"] for r in records if not r.get("intensity")]
            if missing:
                raise DataError(f"plates {missing[:5]} were embedded without the intensity baseline that "
                                f"{spec.key}.intensity_baseline asks for; submit the array again with this config")
            baseline = iter_plates([plate_dir(run_dir, p) / INTENSITY_DIR for p in plates], cfg.plate_column)
        identity = {"dataset": plan.data.as_dict() if plan.data else None,
                    "backbone": plan.backbone.as_dict() if plan.backbone else None,
                    "weights": str(plan.weights.path) if plan.weights else None,
                    "plates": list(plates)}
        result = evaluator.evaluate_plates(cells, baseline, run_dir, rows, dim, identity)
        result = {**result, "skipped_rows": {"count": skipped, "file": None}}
        name = "jump_map" if index == 0 else f"jump_map_{index + 1}"
        atomic_write_json(run_dir / "eval" / f"{name}.json", result)
        results.append(result)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
    logger.info("merged %d plate(s), %d cells: activity mAP %.4f", len(plates), rows,
                results[0]["metrics"].get("activity_mean_average_precision", float("nan")))
    return results[0]

