"""Analysis of runs: rule equations, reference cosines, held-out summaries, plots."""

from .report import (
    BASELINES,
    baselines_for,
    cosine,
    evaluate_final,
    markdown_table,
    report_rows,
    rule_summary,
    summarize,
)

__all__ = [
    "BASELINES",
    "baselines_for",
    "cosine",
    "evaluate_final",
    "markdown_table",
    "report_rows",
    "rule_summary",
    "summarize",
]
