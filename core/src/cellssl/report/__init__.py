"""Reports of runs: ``cellssl report RUN_DIR`` (Markdown + HTML of a run's results and pictures) and
``cellssl compare RUN_DIR...`` (runs side by side), and the common results schema they read.

Modules: :mod:`~cellssl.report.results` (loading, schema), :mod:`~cellssl.report.document` (Markdown /
HTML rendering), :mod:`~cellssl.report.report`, :mod:`~cellssl.report.compare`.
"""

from __future__ import annotations

from cellssl.report.compare import compare_runs, comparison_text, write_comparison
from cellssl.report.report import build_report, write_report
from cellssl.report.results import load_results, schema_problems

__all__ = ["build_report", "compare_runs", "comparison_text", "load_results", "schema_problems", "write_comparison",
           "write_report"]
