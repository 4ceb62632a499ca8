"""Reports: seed-aggregated tables with confidence intervals, baseline comparisons with tests, figures, and one
self-contained HTML page (``build_report``), from a results store's rows.

Loaded on first use, so ``medtransfer results`` (tables only) never imports matplotlib.
"""

from medtransfer.lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "Analysis": "build", "analyse": "build", "build_report": "build", "report_folder": "build",
    "comparison_table": "comparisons", "summary_table": "tables", "summary_with_ci": "tables"})

__all__ = ["Analysis", "analyse", "build_report", "comparison_table", "report_folder", "summary_table",
           "summary_with_ci"]
