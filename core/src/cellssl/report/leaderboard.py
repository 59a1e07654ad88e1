"""The leaderboard of ``cellssl benchmark``: models as columns, one row per (benchmark, result, metric).

Each benchmark's run directories (one per model, named by the model's label) are compared with
:func:`cellssl.report.compare.compare_runs`, so a metric a model's run lacks shows ``n/a`` as in
``cellssl compare``. Benchmarks that were skipped are listed with the reason. :func:`write_leaderboard` writes
``leaderboard.md``, ``leaderboard.html`` and ``leaderboard.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellssl.atomic import atomic_write_text
from cellssl.errors import ConfigError
from cellssl.report.compare import Comparison, compare_runs
from cellssl.report.document import Block, Heading, Paragraph, Table, to_html, to_markdown

KEY_COLUMNS = ("benchmark", "result", "metric")


@dataclass
class BenchmarkSection:
    """One benchmark that ran: its name, config file, run directory per model label, and metric patterns."""

    name: str
    config: str
    runs: dict[str, Path]
    metrics: tuple[str, ...] = ()


@dataclass
class Leaderboard:
    """Everything a leaderboard shows.

    :ivar models: ``(label, what the user gave, kind)`` per model, in column order.
    :ivar sections: the benchmarks that ran, in suite order.
    :ivar skipped: ``{"benchmark", "config", "reason"}`` per benchmark that did not run.
    """

    suite: str
    models: list[tuple[str, str, str]]
    sections: list[BenchmarkSection]
    skipped: list[dict[str, str]] = field(default_factory=list)
    _comparisons: dict[str, Comparison] = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> list[str]:
        """The model columns."""
        return [label for label, _, _ in self.models]

    def comparison(self, section: BenchmarkSection) -> Comparison:
        """The models side by side on ``section`` (computed once).

        :raises ConfigError: naming the benchmark when its ``metrics`` patterns match nothing.
        """
        if section.name not in self._comparisons:
            dirs = [section.runs[label] for label in self.labels if label in section.runs]
            try:
                self._comparisons[section.name] = compare_runs(dirs, metrics=section.metrics)
            except ConfigError as exc:
                raise ConfigError(f"{section.name}.metrics", f"benchmark '{section.name}': {exc}") from None
        return self._comparisons[section.name]

    def table(self) -> Table:
        """One row per (benchmark, result, metric); one column per model (``None`` where a model has no value)."""
        rows = []
        for section in self.sections:
            comparison = self.comparison(section)
            for result, table in comparison.tables:
                for row in table.rows:
                    values = dict(zip(comparison.runs, row[1:], strict=True))
                    rows.append([section.name, result, row[0], *[values.get(label) for label in self.labels]])
        return Table([*KEY_COLUMNS, *self.labels], rows)

    def as_dict(self) -> dict[str, Any]:
        """JSON form: ``suite``, ``models``, ``benchmarks`` (``{name: {config, runs, results: {result: {metric:
        {model: value}}}}}``), ``skipped``."""
        benchmarks = {}
        for section in self.sections:
            comparison = self.comparison(section)
            benchmarks[section.name] = {"config": section.config,
                                        "runs": {k: str(v) for k, v in section.runs.items()},
                                        "results": comparison.as_dict()["results"]}
        return {"suite": self.suite,
                "models": [{"label": label, "model": given, "kind": kind} for label, given, kind in self.models],
                "benchmarks": benchmarks, "skipped": list(self.skipped)}


def leaderboard_blocks(board: Leaderboard) -> list[Block]:
    """Document blocks: the models, the leaderboard table, and the skipped benchmarks with their reasons."""
    blocks: list[Block] = [
        Heading(f"cellssl benchmark: {board.suite}", 1),
        Table(["model", "given as", "kind"], [list(m) for m in board.models]),
        Heading("Leaderboard", 2),
    ]
    if board.sections:
        blocks.append(board.table())
    else:
        blocks.append(Paragraph("No benchmark ran."))
    blocks += [Heading("Run directories", 2),
               Table(["benchmark", "config", *board.labels],
                     [[s.name, s.config, *[str(s.runs.get(label, "")) for label in board.labels]]
                      for s in board.sections])]
    if board.skipped:
        blocks += [Heading("Skipped", 2),
                   Table(["benchmark", "config", "reason"],
                         [[s["benchmark"], s["config"], s["reason"]] for s in board.skipped])]
    return blocks


def write_leaderboard(board: Leaderboard, out_dir: str | Path) -> dict[str, Path]:
    """Write ``leaderboard.md``, ``leaderboard.html`` and ``leaderboard.json`` into ``out_dir`` (atomically).

    :return: ``{"md": path, "html": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = leaderboard_blocks(board)
    title = f"cellssl benchmark: {board.suite}"
    return {
        "md": atomic_write_text(out / "leaderboard.md", to_markdown(blocks)),
        "html": atomic_write_text(out / "leaderboard.html", to_html(blocks, title)),
        "json": atomic_write_text(out / "leaderboard.json", json.dumps(board.as_dict(), indent=2) + "\n"),
    }
