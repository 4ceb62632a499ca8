"""Reports: seed-aggregated tables with confidence intervals, baseline comparisons with tests, figures, and one
self-contained HTML page (``build_report``), from a results store's rows."""

from medtransfer.report.build import Analysis, analyse, build_report, report_folder
from medtransfer.report.comparisons import comparison_table
from medtransfer.report.tables import summary_table, summary_with_ci

__all__ = ["Analysis", "analyse", "build_report", "comparison_table", "report_folder", "summary_table",
           "summary_with_ci"]
