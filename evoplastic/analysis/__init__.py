"""Analysis of runs: rule equations, reference cosines, held-out summaries, plots.

Submodules imported on demand: :mod:`~evoplastic.analysis.plots` (figures, including ``dw``
heat maps and weight trajectories), :mod:`~evoplastic.analysis.trace` (recording an inner
loop's local signals) and :mod:`~evoplastic.analysis.distill` (a rule as a sparse equation).
"""

from .report import (
    BASELINES,
    baselines_for,
    cosine,
    evaluate_final,
    markdown_table,
    report_rows,
    rule_summary,
    seed_rows,
    summarize,
)

__all__ = [
    "BASELINES",
    "baselines_for",
    "cosine",
    "evaluate_final",
    "markdown_table",
    "report_rows",
    "seed_rows",
    "rule_summary",
    "summarize",
]
