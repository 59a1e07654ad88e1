"""Training curves of a run (``metrics.jsonl``, one JSON object per logged step) as PNG plots for its report.

:func:`read_training_log` reads the log; :func:`write_training_curves` draws, against the step,

- ``training_loss.png``: the loss terms (``loss`` and every ``*_loss`` the objective logs: ``dino_loss``,
  ``ibot_loss``, ``koleo_loss``);
- ``training_collapse.png``: the collapse statistics of :mod:`cellssl.train.monitor` (teacher entropy and
  entropy of the batch-mean teacher output against their maximum ``log K``; ``embed_std``);
- ``training_schedules.png``: learning rate, weight decay, teacher momentum and temperature.

A figure whose values are all absent from the log is not drawn. :func:`training_summary` gives the rows of the
report's summary table (first / last / min of each curve).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from cellssl.errors import DataError

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
COLLAPSE_KEYS = ("teacher_entropy", "teacher_mean_entropy", "embed_std")
SCHEDULE_KEYS = ("lr", "wd", "momentum", "teacher_temp")


def read_training_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` with a numeric ``step``, in file order (``[]`` without a log).

    A line cut by a crash (not valid JSON) is skipped with a warning.

    :raises DataError: naming the file and line when a complete line is not a JSON object.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s line %d is not valid JSON (cut by a crash?); skipped", path, number)
            continue
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number}: expected a JSON object per line, got {type(record).__name__}")
        if isinstance(record.get("step"), int | float):
            records.append(record)
    return records


def loss_keys(records: list[dict[str, Any]]) -> list[str]:
    """``loss`` first, then the other ``*_loss`` terms, in first-seen order."""
    keys: list[str] = []
    for record in records:
        keys.extend(k for k in record if (k == "loss" or k.endswith("_loss")) and k not in keys)
    return sorted(keys, key=lambda k: k != "loss")


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(record["step"]))
            values.append(float(value))
    return steps, values


def _draw(axes: Any, records: list[dict[str, Any]], keys: list[str] | tuple[str, ...], title: str) -> bool:
    drawn = False
    for key in keys:
        steps, values = _series(records, key)
        if steps:
            axes.plot(steps, values, label=key, marker="." if len(steps) < 30 else None)
            drawn = True
    axes.set_title(title)
    axes.set_xlabel("step")
    if drawn:
        axes.legend(fontsize="small")
    return drawn


def write_training_curves(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw the training curves of ``run_dir`` into ``out_dir`` (see the module docstring).

    :return: the PNG files written (empty when the run has no ``metrics.jsonl``).
    :raises DataError: see :func:`read_training_log`.
    """
    from cellssl.eval.engines.figures import new_figure, save_png

    records = read_training_log(run_dir)
    if not records:
        return []
    out = Path(out_dir)
    written = []
    losses = loss_keys(records)
    if losses:
        figure = new_figure(6, 3.5, layout="constrained")
        if _draw(figure.add_subplot(), records, losses, "loss terms"):
            written.append(save_png(figure, out / "training_loss.png"))
    if any(k in r for r in records for k in COLLAPSE_KEYS):
        figure = new_figure(10, 3.5, layout="constrained")
        entropy = figure.add_subplot(1, 2, 1)
        drawn = _draw(entropy, records, COLLAPSE_KEYS[:2], "teacher entropy (collapse: uniform or one-hot)")
        steps, maximum = _series(records, "teacher_entropy_max")
        if steps:
            entropy.plot(steps, maximum, linestyle="--", color="grey", label="log K (uniform)")
            entropy.legend(fontsize="small")
        drawn = _draw(figure.add_subplot(1, 2, 2), records, COLLAPSE_KEYS[2:], "std of normalised embeddings") or drawn
        if drawn:
            written.append(save_png(figure, out / "training_collapse.png"))
    present = [k for k in SCHEDULE_KEYS if any(k in r for r in records)]
    if present:
        figure = new_figure(3 * len(present), 3, layout="constrained")
        for i, key in enumerate(present, 1):
            _draw(figure.add_subplot(1, len(present), i), records, [key], key)
        written.append(save_png(figure, out / "training_schedules.png"))
    logger.info("training curves of %s: %s", run_dir, ", ".join(p.name for p in written))
    return written


def training_summary(records: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows ``[name, first, last, min]`` for the loss terms and collapse statistics of ``records``."""
    rows = []
    for key in [*loss_keys(records), *COLLAPSE_KEYS]:
        _, values = _series(records, key)
        if values:
            rows.append([key, values[0], values[-1], min(values)])
    return rows
