"""``cellssl compare RUN_DIR...``: runs side by side, one table per result, metrics as rows, runs as columns.

Results are matched by file name (``eval/knn.json`` of every run goes into one table). A run without a
result, or a result without a metric, shows ``n/a``. ``metrics`` filters metric names with shell-style
patterns (``*_f1_mean``); ``evaluators`` keeps only the named results.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellssl.atomic import atomic_write_text
from cellssl.errors import ConfigError, DataError
from cellssl.report.document import Block, Heading, Paragraph, Table, to_html, to_markdown
from cellssl.report.results import format_value, load_results


@dataclass
class Comparison:
    """Runs side by side.

    :ivar runs: column labels of the runs (directory names, made unique).
    :ivar paths: the run directories, in column order.
    :ivar tables: ``(result name, Table)`` with columns ``["metric", *runs]``.
    """

    runs: list[str]
    paths: list[Path]
    tables: list[tuple[str, Table]]

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``{"runs", "paths", "results": {name: {metric: {run: value}}}}``."""
        results = {
            name: {row[0]: dict(zip(self.runs, row[1:], strict=True)) for row in table.rows}
            for name, table in self.tables
        }
        return {"runs": self.runs, "paths": [str(p) for p in self.paths], "results": results}


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    labels = []
    for path, name in zip(paths, names, strict=True):
        label = name if names.count(name) == 1 else f"{path.resolve().parent.name}/{name}"
        while label in labels:
            label += "'"
        labels.append(label)
    return labels


def compare_runs(
    run_dirs: Sequence[str | Path],
    metrics: Sequence[str] = (),
    evaluators: Sequence[str] = (),
) -> Comparison:
    """Collect the metrics of every run's ``eval/*.json`` into one table per result name.

    :param metrics: shell-style patterns of metric names to keep (empty: all).
    :param evaluators: result names (file stems) to keep (empty: all).
    :raises ConfigError: when no run is given, or a filter matches nothing.
    :raises DataError: when a run directory has no readable results.
    """
    if not run_dirs:
        raise ConfigError("compare", "give at least one run directory")
    paths = [Path(p) for p in run_dirs]
    runs = _labels(paths)
    loaded = [{r.name: r.data for r in load_results(p)} for p in paths]
    names: list[str] = []
    for run in loaded:
        names.extend(n for n in run if n not in names)
    if evaluators:
        unknown = [e for e in evaluators if e not in names]
        if unknown:
            raise ConfigError("compare --evaluator", f"no run has results {unknown}; results are {names}")
        names = [n for n in names if n in evaluators]
    tables = []
    for name in names:
        metric_names: list[str] = []
        for run in loaded:
            found = run.get(name, {}).get("metrics") or {}
            metric_names.extend(m for m in found if m not in metric_names)
        if metrics:
            metric_names = [m for m in metric_names if any(fnmatch.fnmatchcase(m, p) for p in metrics)]
        if not metric_names:
            continue
        rows = [[m, *[(run.get(name, {}).get("metrics") or {}).get(m) for run in loaded]] for m in metric_names]
        tables.append((name, Table(["metric", *runs], rows)))
    if not tables:
        raise ConfigError("compare --metrics", f"no metric matches {list(metrics)} in results {names}")
    return Comparison(runs, paths, tables)


def comparison_text(comparison: Comparison) -> str:
    """Plain-text tables (aligned columns), one per result."""
    blocks = []
    for name, table in comparison.tables:
        cells = [[str(c) for c in table.columns]] + [[format_value(v) for v in row] for row in table.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
        lines = [f"{name}:"] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                                for row in cells]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def comparison_blocks(comparison: Comparison) -> list[Block]:
    """Document blocks of ``comparison`` (for Markdown / HTML)."""
    blocks: list[Block] = [Heading("cellssl compare", 1),
                           Table(["run", "directory"], [[r, str(p)] for r, p in zip(comparison.runs, comparison.paths,
                                                                                      strict=True)])]
    for name, table in comparison.tables:
        blocks += [Heading(name, 2), table]
    if not comparison.tables:
        blocks.append(Paragraph("no metrics to compare"))
    return blocks


def write_comparison(comparison: Comparison, out: str | Path) -> Path:
    """Write ``comparison`` to ``out``: Markdown (``.md``), HTML (``.html``) or JSON (``.json``).

    :raises DataError: for another suffix.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".md":
        text = to_markdown(comparison_blocks(comparison))
    elif suffix in (".html", ".htm"):
        text = to_html(comparison_blocks(comparison), "cellssl compare")
    elif suffix == ".json":
        text = json.dumps(comparison.as_dict(), indent=2) + "\n"
    else:
        raise DataError(f"--out '{out}': unknown format '{out.suffix}'; use a .md, .html or .json file name")
    return atomic_write_text(out, text)
