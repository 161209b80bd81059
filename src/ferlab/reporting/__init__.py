"""Reporting: plots, summary tables and the self-contained HTML report of an experiment.

Everything is read back from the experiment's recorded plan (``ferlab.record.reader``) and its
numbers computed by ``ferlab.evaluation.analysis``, so ``build_report(exp_dir)`` rebuilds the
report without retraining or loading a model.
"""

from ferlab.reporting.html import build_report
from ferlab.reporting.plots import plot_confusion_matrix, plot_cross_dataset, plot_learning_curves
from ferlab.reporting.tables import format_console_table, format_markdown_table
from ferlab.reporting.writers import write_cross_dataset, write_summary

__all__ = [
    "build_report",
    "format_console_table",
    "format_markdown_table",
    "plot_confusion_matrix",
    "plot_cross_dataset",
    "plot_learning_curves",
    "write_cross_dataset",
    "write_summary",
]
