"""Reporting: plots, summary tables and the self-contained HTML report of an experiment.

Everything is read back from the experiment's recorded plan (``load_record``), so
``build_report(exp_dir)`` rebuilds the report without retraining or loading a model.
"""

from ferlab.reporting.html import build_report
from ferlab.reporting.plots import plot_confusion_matrix, plot_cross_dataset, plot_learning_curves
from ferlab.reporting.tables import (
    CrossDataset,
    collect_cross_dataset,
    collect_dropped_labels,
    collect_summary,
    format_console_table,
    format_markdown_table,
    load_record,
    write_cross_dataset,
    write_summary,
)

__all__ = [
    "CrossDataset",
    "build_report",
    "collect_cross_dataset",
    "collect_dropped_labels",
    "collect_summary",
    "format_console_table",
    "format_markdown_table",
    "load_record",
    "plot_confusion_matrix",
    "plot_cross_dataset",
    "plot_learning_curves",
    "write_cross_dataset",
    "write_summary",
]
