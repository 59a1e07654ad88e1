"""A run directory holds the outputs of one plan: :func:`prepare_run_dir`.

Beside ``config.yaml`` the directory keeps ``plan.json`` (every section with its defaults, as validated).
When a run directory is used again, the new plan is compared with the stored one:

- keys that change what a finished stage produced (``data``, ``channels``, ``backbone``, ``objective``,
  ``normalize`` and ``train.extra_datasets`` for training; ``data``, ``channels``, ``backbone``, ``weights``,
  ``normalize`` and the feature recipe for embeddings) are refused, with the list of changed keys, unless
  the caller asks to start over (``restart``: the outputs are deleted first);
- other changes (more epochs, other evaluators) are allowed and appended to ``config_history.jsonl``.

Nothing is written before the plan validated; a rejected plan never replaces a valid ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from cellssl.atomic import atomic_write_json, atomic_write_text
from cellssl.errors import ConfigError
from cellssl.plan.model import RunPlan

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
HISTORY_FILE = "config_history.jsonl"
CONFIG_FILE = "config.yaml"

#: Dotted key prefixes whose values determine each stage's outputs.
PRODUCED_BY: dict[str, tuple[str, ...]] = {
    "train": ("data", "channels", "backbone", "objective", "normalize", "train.extra_datasets"),
    "embed": ("data", "channels", "backbone", "weights", "normalize", "embed.features", "embed.img_size",
              "embed.precision", "embed.bf16"),
}
#: Outputs a restart deletes.
OUTPUTS = ("checkpoints", "embeddings", "eval", "teacher_backbone.pt", "channel_stats.json", "skipped.csv",
           "metrics.jsonl", "report.md", "report.html")


def finished_stages(run_dir: Path) -> list[str]:
    """The stages whose outputs ``run_dir`` holds: ``train`` (a checkpoint or the exported teacher) and
    ``embed`` (an embedding manifest or shard)."""
    stages = []
    if (run_dir / "teacher_backbone.pt").is_file() or any((run_dir / "checkpoints").glob("*.pt")):
        stages.append("train")
    embeddings = run_dir / "embeddings"
    if any(embeddings.glob("*manifest.json")) or any(embeddings.glob("*.parquet")):
        stages.append("embed")
    return stages


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two :meth:`RunPlan.sections` dicts."""
    flat_old, flat_new = _flatten(old), _flatten(new)
    return sorted(k for k in flat_old.keys() | flat_new.keys() if flat_old.get(k) != flat_new.get(k))


def _relevant(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") or key.startswith(p + "[") for p in prefixes)


def _comparable(sections: dict[str, Any]) -> dict[str, Any]:
    """Sections without what never affects outputs (where they go, which stages run now, how to resume)."""
    out = json.loads(json.dumps(sections, default=str))
    for key in ("output_dir", "stages", "num_threads", "device"):
        out.get("run", {}).pop(key, None)
    out.get("train", {}).pop("resume", None)
    return out


def _remove_outputs(run_dir: Path) -> None:
    for name in OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    logger.info("restart: removed the earlier outputs of %s", run_dir)


def prepare_run_dir(plan: RunPlan, *, restart: bool = False, write: bool = True) -> Path:
    """Check ``plan`` against what its run directory already holds, then save ``config.yaml`` and ``plan.json``.

    :param restart: delete the directory's outputs and start over instead of refusing a changed plan.
    :param write: save the config (``False`` on every rank but 0: the check still runs).
    :return: the run directory.
    :raises ConfigError: naming ``run.output_dir`` and the changed keys when the plan changes what a finished
        stage of this directory produced.
    """
    from omegaconf import OmegaConf

    run_dir = plan.run_dir
    current = _comparable(plan.sections())
    stored = run_dir / PLAN_FILE
    changes: list[str] = []
    if stored.is_file():
        try:
            previous = json.loads(stored.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError("run.output_dir", f"{stored} is unreadable ({exc}); use another run.output_dir or "
                                                "delete the file to adopt the directory") from None
        changes = changed_keys(previous, current)
        finished = finished_stages(run_dir)
        blocking = [k for k in changes if any(_relevant(k, PRODUCED_BY[s]) for s in finished)]
        if blocking and not restart:
            shown = ", ".join(blocking[:12]) + (f" (and {len(blocking) - 12} more)" if len(blocking) > 12 else "")
            raise ConfigError(
                "run.output_dir",
                f"{run_dir} holds the outputs of the {' and '.join(finished)} stage(s) of another config: changed "
                f"keys {shown}. Use another run.output_dir, or pass --restart (restart=True) to delete its "
                "outputs and start over.",
            )
        if blocking and restart and write:
            _remove_outputs(run_dir)
    elif restart and write and run_dir.is_dir():
        _remove_outputs(run_dir)
    if not write:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(plan.config, resolve=True))
    atomic_write_json(stored, current)
    if changes:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": plan.stages, "changed": changes,
                  "restart": restart}
        with (run_dir / HISTORY_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info("run directory %s: config changed since the last run (%s)", run_dir, ", ".join(changes[:8]))
    return run_dir
