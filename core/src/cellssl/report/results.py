"""Evaluator results on disk (``<run_dir>/eval/*.json``) and the one schema they share.

Every result is a JSON object with

- ``evaluator`` (str): the registered evaluator name;
- ``metrics`` (object): flat metric name -> number (``null`` for a value that could not be computed);
- ``split`` (object): how rows were split, with at least one size key ending in ``_rows`` (an integer,
  or a list of integers, one per fold);
- ``config`` (object): the evaluator's validated parameters;
- ``identity`` (object): dataset and model identity (from the run, see
  :class:`cellssl.eval.base.EvalContext`);
- optionally ``table`` (list of objects): rows meant for a table (the CLI and the report print them);
- anything else the evaluator wants to keep (per-class reports, grids, folds).

:func:`schema_problems` lists what a result lacks; :func:`load_results` reads a run's results.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellssl.errors import DataError

REQUIRED_KEYS = ("evaluator", "metrics", "split", "config", "identity")


@dataclass
class RunResult:
    """One ``eval/<name>.json`` of a run.

    :ivar name: the file stem (``knn``, ``knn_2``).
    :ivar path: the JSON file.
    :ivar data: its parsed content.
    """

    name: str
    path: Path
    data: dict[str, Any]

    @property
    def evaluator(self) -> str:
        """The evaluator name recorded in the result (the file stem when absent)."""
        return str(self.data.get("evaluator") or self.name)


def schema_problems(result: Any) -> list[str]:
    """What ``result`` lacks to follow the common results schema (empty list: it conforms)."""
    if not isinstance(result, dict):
        return [f"a result must be a JSON object, got {type(result).__name__}"]
    problems = [f"missing key '{key}'" for key in REQUIRED_KEYS if key not in result]
    if "evaluator" in result and not isinstance(result["evaluator"], str):
        problems.append("'evaluator' must be a string")
    metrics = result.get("metrics")
    if "metrics" in result:
        if not isinstance(metrics, dict):
            problems.append("'metrics' must be an object of name -> number")
        else:
            bad = [k for k, v in metrics.items()
                   if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real))]
            if bad:
                problems.append(f"'metrics' must be flat name -> number; not numbers: {bad[:5]}")
    split = result.get("split")
    if "split" in result and (not isinstance(split, dict) or not any(str(k).endswith("_rows") for k in split)):
        problems.append("'split' must be an object with at least one '<side>_rows' size")
    for key in ("config", "identity"):
        if key in result and not isinstance(result[key], dict):
            problems.append(f"'{key}' must be an object")
    table = result.get("table")
    if table is not None and (not isinstance(table, list) or not all(isinstance(r, dict) for r in table)):
        problems.append("'table' must be a list of objects (rows)")
    return problems


def load_results(run_dir: str | Path) -> list[RunResult]:
    """The results of ``run_dir/eval/*.json``, sorted by file name.

    :raises DataError: when ``run_dir`` is not a directory, has no ``eval/*.json``, or a file is not
        valid JSON (the message names the file).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory '{run_dir}' does not exist")
    files = sorted((run_dir / "eval").glob("*.json"))
    if not files:
        raise DataError(f"'{run_dir / 'eval'}' holds no results (*.json); run `cellssl eval CONFIG` or "
                        "`cellssl run CONFIG` with an `eval:` list first")
    results = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read result file '{path}': {exc}") from None
        if not isinstance(data, dict):
            raise DataError(f"result file '{path}' holds a JSON {type(data).__name__}, not an object")
        results.append(RunResult(path.stem, path, data))
    return results


def format_value(value: Any) -> str:
    """A table cell: floats with 4 decimals, ``None`` as ``n/a``, lists joined by commas."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def split_sizes(result: dict[str, Any]) -> str:
    """``"train 480, test 120"`` from the ``*_rows`` keys of ``result["split"]``."""
    split = result.get("split")
    if not isinstance(split, dict):
        return ""
    parts = [f"{str(k)[: -len('_rows')]} {format_value(v)}" for k, v in split.items() if str(k).endswith("_rows")]
    mode = split.get("mode")
    return (f"{mode}: " if mode else "") + ", ".join(parts)


def identity_line(result: dict[str, Any]) -> str:
    """One line naming the dataset, backbone and weights of ``result["identity"]``."""
    identity = result.get("identity")
    if not isinstance(identity, dict) or not identity:
        return ""
    parts = []
    for key, value in identity.items():
        if isinstance(value, dict):
            name = value.get("name")
            extra = value.get("root") or value.get("arch")
            value = f"{name} ({extra})" if name and extra and extra != name else (name or json.dumps(value))
        parts.append(f"{key}: {format_value(value)}")
    return "; ".join(parts)
