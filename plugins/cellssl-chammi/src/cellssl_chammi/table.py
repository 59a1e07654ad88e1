"""The benchmark table: nine task columns (WTC T1-T2, HPA T1-T3, CP T1-T4), their mean, and the CHAMMI score.

A row is a dict ``{"classifier": ..., "WTC T1": f1, ..., "CP T4": f1, "mean": m, "CHAMMI": s}``; a task that
was not evaluated holds ``None`` and the mean is over the tasks present (``tasks_in_mean`` says how many).
The CHAMMI score is the single number CHAMMI-75 reports: the mean over WTC, HPA and CP of each subset's
out-of-distribution tasks, ``WTC T2 / 3 + (HPA T2 + HPA T3) / 6 + (CP T2 + CP T3 + CP T4) / 9``; it is ``None``
when one of those six tasks is missing (``CHAMMI_missing`` lists them). Values are macro F1 in ``[0, 1]``.
Rendering: Markdown, CSV, or aligned text; :func:`load_run_rows` collects the
rows of several run directories for ``cellssl chammi-table``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellssl.api import DataError
from cellssl_chammi.subsets import TABLE_COLUMNS

MEAN = "mean"
SCORE = "CHAMMI"
SCORE_MISSING = "CHAMMI_missing"
#: The out-of-distribution tasks of each subset, whose means the CHAMMI score averages.
OOD_TASKS: dict[str, tuple[str, ...]] = {"WTC": ("WTC T2",), "HPA": ("HPA T2", "HPA T3"),
                                         "CP": ("CP T2", "CP T3", "CP T4")}
_NOT_LABELS = (MEAN, "tasks_in_mean", SCORE, SCORE_MISSING)


def chammi_score(scores: Mapping[str, float | None]) -> tuple[float | None, list[str]]:
    """The CHAMMI score of task columns ``scores`` (see the module docstring) and the OOD tasks it lacks.

    :return: ``(score, [])``, or ``(None, missing columns)`` when any of the six OOD tasks is absent or ``None``.
    """
    missing = [c for tasks in OOD_TASKS.values() for c in tasks if scores.get(c) is None]
    if missing:
        return None, missing
    means = [sum(float(scores[c]) for c in tasks) / len(tasks) for tasks in OOD_TASKS.values()]  # type: ignore[arg-type]
    return sum(means) / len(means), []


def table_row(label_key: str, label: str, scores: Mapping[str, float | None]) -> dict[str, Any]:
    """One row: ``label`` under ``label_key``, the nine columns from ``scores`` (missing -> ``None``), mean, CHAMMI
    score (and ``CHAMMI_missing`` naming the OOD tasks it lacks, when it is ``None``)."""
    row: dict[str, Any] = {label_key: label}
    values = []
    for column in TABLE_COLUMNS:
        value = scores.get(column)
        row[column] = None if value is None else float(value)
        if value is not None:
            values.append(float(value))
    row[MEAN] = sum(values) / len(values) if values else None
    row["tasks_in_mean"] = len(values)
    row[SCORE], missing = chammi_score(row)
    if missing:
        row[SCORE_MISSING] = missing
    return row


def _cell(value: Any, percent: bool, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{100 * value:.{max(digits - 2, 0)}f}" if percent else f"{value:.{digits}f}"
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    labels = [key for key in rows[0] if key not in TABLE_COLUMNS and key not in _NOT_LABELS]
    return [*labels, *TABLE_COLUMNS, MEAN, SCORE]


def to_markdown(rows: Sequence[Mapping[str, Any]], percent: bool = False, digits: int = 4) -> str:
    """A GitHub Markdown table of ``rows`` (values with ``digits`` decimals, or percent)."""
    if not rows:
        return ""
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c), percent, digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text of ``rows`` (full precision, empty cells for missing tasks)."""
    if not rows:
        return ""
    columns = _columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                         for c in columns])
    return buffer.getvalue()


def to_text(rows: Sequence[Mapping[str, Any]], percent: bool = False, digits: int = 4) -> str:
    """Aligned plain-text columns."""
    if not rows:
        return ""
    columns = _columns(rows)
    cells = [[_cell(row.get(c), percent, digits) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines) + "\n"


def result_files(run_dir: str | Path) -> list[Path]:
    """The CHAMMI result JSON files of a run (``eval/chammi*.json`` written by the ``chammi`` evaluator)."""
    folder = Path(run_dir) / "eval"
    found = []
    for path in sorted(folder.glob("chammi*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("evaluator") == "chammi" and isinstance(data.get("table"), list):
            found.append(path)
    return found


def load_run_rows(run_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The table rows of each run (one per classifier), with a ``run`` column first.

    :raises DataError: naming the run directory when it does not exist or holds no CHAMMI result.
    """
    rows: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        if not path.is_dir():
            raise DataError(f"run directory {path} does not exist")
        files = result_files(path)
        if not files:
            raise DataError(f"{path} holds no CHAMMI result (eval/chammi*.json); run "
                            "`cellssl run configs/eval/chammi_knn.yaml ...` with this run directory first")
        for file in files:
            data = json.loads(file.read_text(encoding="utf-8"))
            suffix = "" if file.stem == "chammi" else f" ({file.stem})"
            for row in data["table"]:
                if SCORE not in row:  # a result written before the score was part of the table
                    row[SCORE] = chammi_score(row)[0]
                rows.append({"run": f"{path.name}{suffix}", **row})
    return rows
