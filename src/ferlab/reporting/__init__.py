"""Reporting: formats what ``ferlab.evaluation.analysis`` computed from an experiment's record:
plots, summary tables (console, Markdown, CSV) and the pieces of the HTML report.
``ferlab.report`` reads, analyses and writes them (``build_report(exp_dir)``).
"""

from ferlab.reporting.plots import plot_confusion_matrix, plot_cross_dataset, plot_learning_curves
from ferlab.reporting.tables import format_console_table, format_markdown_table

__all__ = [
    "format_console_table",
    "format_markdown_table",
    "plot_confusion_matrix",
    "plot_cross_dataset",
    "plot_learning_curves",
]
