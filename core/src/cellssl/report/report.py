"""``cellssl report RUN_DIR``: one Markdown and one HTML page with the tables and pictures of a run.

Layout: a header (run directory, dataset / channels / backbone / weights from ``config.yaml``), then
one section per ``eval/<name>.json``: identity, split sizes, the result's ``table`` (when it has one),
its flat ``metrics`` (collapsed when a table is shown), other row lists it holds (e.g. the linear probe's
``grid``, collapsed) and its pictures. PNG files under ``eval/`` belong to the result that names them (a
string ending in ``.png`` in the result) or whose name starts their path (``eval/umap_moa.png`` and
``eval/attention_maps/x.png`` go to ``umap`` and ``attention_maps``); the rest are listed at the end.
Pictures are embedded by paths relative to the report file, so the report folder can be moved with its run.
A run that trained (``metrics.jsonl``) gets a "Training" section after the header: its loss terms, collapse
statistics and schedules drawn by :mod:`cellssl.report.curves` into ``training/`` beside the report, and a table
of the first, last and smallest value of each curve; such a run needs no ``eval/`` results to be reported.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from cellssl.atomic import atomic_write_text
from cellssl.report.curves import read_training_log, training_summary, write_training_curves
from cellssl.report.document import (
    Block,
    Details,
    Heading,
    Image,
    Paragraph,
    Table,
    table_from_rows,
    to_html,
    to_markdown,
)
from cellssl.report.results import (
    RunResult,
    format_value,
    identity_line,
    load_results,
    schema_problems,
    split_sizes,
)

logger = logging.getLogger(__name__)

_SKIP_LISTS = {"table"}


def _run_summary(run_dir: Path) -> list[str]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as exc:  # a broken config must not prevent the report
        logger.warning("cannot read %s: %s", path, exc)
        return []
    lines = []
    for key in ("data", "channels", "backbone", "objective"):
        block = config.get(key) if isinstance(config, dict) else None
        if isinstance(block, dict) and block.get("name"):
            detail = ", ".join(f"{k}={'null' if v is None else format_value(v)}" for k, v in block.items()
                               if k != "name" and not isinstance(v, dict))
            lines.append(f"{key}: {block['name']}" + (f" ({detail})" if detail else ""))
    if isinstance(config, dict):
        lines.append(f"weights: {config.get('weights') or 'none given (this run’s teacher if trained, else random)'}")
    return lines


def _png_refs(value: Any, depth: int = 0) -> list[str]:
    """Strings ending in ``.png`` inside ``value`` (nested up to 4 levels)."""
    if isinstance(value, str):
        return [value] if value.lower().endswith(".png") else []
    if depth > 4:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [ref for item in items for ref in _png_refs(item, depth + 1)]


def assign_pictures(run_dir: Path, results: list[RunResult]) -> tuple[dict[str, list[Path]], list[Path]]:
    """PNG files under ``run_dir/eval`` per result name, and the unassigned ones (both sorted)."""
    eval_dir = run_dir / "eval"
    pngs = sorted(p for p in eval_dir.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    owner: dict[Path, str] = {}
    for result in results:
        for ref in _png_refs(result.data):
            for candidate in (Path(ref), run_dir / ref, eval_dir / ref):
                if candidate.is_file() and candidate.resolve() in {p.resolve() for p in pngs}:
                    owner.setdefault(next(p for p in pngs if p.resolve() == candidate.resolve()), result.name)
                    break
    names = sorted((r.name for r in results), key=len, reverse=True)
    for png in pngs:
        if png in owner:
            continue
        relative = png.relative_to(eval_dir).as_posix()
        for name in names:
            if relative == name or relative.startswith((f"{name}.", f"{name}_", f"{name}-", f"{name}/")):
                owner[png] = name
                break
    by_result: dict[str, list[Path]] = {}
    for png, name in owner.items():
        by_result.setdefault(name, []).append(png)
    return {k: sorted(v) for k, v in by_result.items()}, [p for p in pngs if p not in owner]


def _rows_lists(data: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Top-level lists of flat dicts other than ``table`` (e.g. ``grid``)."""
    found = []
    for key, value in data.items():
        if key in _SKIP_LISTS or not isinstance(value, list) or not value:
            continue
        if all(isinstance(r, dict) and all(not isinstance(v, dict | list) for v in r.values()) for r in value):
            found.append((key, value))
    return found


def result_blocks(result: RunResult, pictures: list[Path], report_dir: Path) -> list[Block]:
    """The report section of one result."""
    data = result.data
    title = result.name if result.evaluator == result.name else f"{result.name} ({result.evaluator})"
    blocks: list[Block] = [Heading(title, 2)]
    for label, text in (("Identity", identity_line(data)), ("Split", split_sizes(data))):
        if text:
            blocks.append(Paragraph(f"{label}: {text}"))
    problems = schema_problems(data)
    if problems:
        blocks.append(Paragraph("Not in the common results schema: " + "; ".join(problems)))
    table = data.get("table")
    if isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        blocks.append(table_from_rows(table))
    metrics = data.get("metrics")
    if isinstance(metrics, dict) and metrics:
        metric_table = Table(["metric", "value"], [[k, v] for k, v in metrics.items()])
        blocks.append(Details(f"all metrics ({len(metrics)})", [metric_table]) if table else metric_table)
    for key, rows in _rows_lists(data):
        blocks.append(Details(f"{key} ({len(rows)} rows)", [table_from_rows(rows)]))
    for png in pictures:
        relative = Path(os.path.relpath(png, report_dir)).as_posix()
        blocks.append(Image(relative, png.name))
    return blocks


def training_blocks(run_dir: Path, curves: list[Path], report_dir: Path) -> list[Block]:
    """The "Training" section: steps logged, the summary table and the ``curves`` PNGs (``[]`` without a log)."""
    records = read_training_log(run_dir)
    if not records:
        return []
    steps = [int(r["step"]) for r in records]
    blocks: list[Block] = [Heading("Training", 2),
                           Paragraph(f"{len(records)} logged steps ({steps[0]} to {steps[-1]}) in metrics.jsonl.")]
    summary = training_summary(records)
    if summary:
        blocks.append(Table(["curve", "first", "last", "min"], summary))
    blocks.extend(Image(Path(os.path.relpath(p, report_dir)).as_posix(), p.name) for p in curves)
    return blocks


def build_report(run_dir: str | Path, report_dir: str | Path | None = None,
                 curves: list[Path] | None = None) -> list[Block]:
    """The blocks of the report of ``run_dir`` (image paths relative to ``report_dir``, default ``run_dir``).

    :param curves: training-curve PNGs to show in the "Training" section (see :func:`write_report`).
    :raises cellssl.errors.DataError: when the run has no readable results (see :func:`load_results`) and did not
        train (no ``metrics.jsonl``).
    """
    run_dir = Path(run_dir)
    report_dir = Path(report_dir) if report_dir is not None else run_dir
    trained = bool(read_training_log(run_dir)) if run_dir.is_dir() else False
    has_results = any((run_dir / "eval").glob("*.json"))
    results = load_results(run_dir) if has_results or not trained else []
    pictures, others = assign_pictures(run_dir, results) if results else ({}, [])
    blocks: list[Block] = [Heading(f"cellssl report: {run_dir.resolve().name}", 1),
                           Paragraph(f"Run directory: {run_dir}")]
    summary = _run_summary(run_dir)
    if summary:
        blocks.append(Table(["setting", "value"], [line.split(": ", 1) for line in summary]))
    blocks.extend(training_blocks(run_dir, list(curves or []), report_dir))
    if results:
        blocks.append(Table(["result", "evaluator", "split"],
                            [[r.name, r.evaluator, split_sizes(r.data)] for r in results]))
    for result in results:
        blocks.extend(result_blocks(result, pictures.get(result.name, []), report_dir))
    if others:
        blocks.append(Heading("Other pictures", 2))
        blocks.extend(Image(Path(os.path.relpath(p, report_dir)).as_posix(), p.name) for p in others)
    return blocks


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir`` (default ``run_dir``), atomically; for a run that
    trained, also its training curves as ``training/*.png`` under ``out_dir``.

    :return: the two paths.
    :raises cellssl.errors.DataError: when the run has no readable results and did not train.
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    curves = write_training_curves(run_dir, out / "training") if run_dir.is_dir() else []
    blocks = build_report(run_dir, out, curves)
    out.mkdir(parents=True, exist_ok=True)
    title = blocks[0].text if isinstance(blocks[0], Heading) else "cellssl report"
    markdown = atomic_write_text(out / "report.md", to_markdown(blocks))
    page = atomic_write_text(out / "report.html", to_html(blocks, title))
    logger.info("wrote %s and %s", markdown, page)
    return markdown, page
