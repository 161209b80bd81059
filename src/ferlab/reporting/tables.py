"""The summary, per-seed, across-seed, comparison and cross-dataset tables as text: CSV at full
precision, aligned console columns and Markdown.

Nothing here reads an experiment or computes a statistic: the rows come from
``ferlab.evaluation.analysis`` (which reads the record with ``ferlab.record.reader``), and
``ferlab.reporting.writers`` writes the files. The ``*_FIELDS`` tuples are the columns of the
CSV files, in order, and the keys of the rows the analysis gives.

With several training seeds a summary row carries ``SEED_FIELDS`` too: the mean and sample
standard deviation across seeds of each metric beside one run's numbers (the first seed's), and
the console and Markdown tables show ``mean ± sd`` columns. With one seed every table is as
before seeds existed.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ferlab.evaluation.analysis import (
    COMPARISON_FIELDS,
    COMPARISON_SEED_FIELDS,
    METRIC_NAMES,
    CrossDataset,
)
from ferlab.evaluation.compare import ALPHA

METRIC_TITLES: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
}

# One run's metrics (plain, then TTA) with their 95% bootstrap intervals.
METRIC_FIELDS: tuple[str, ...] = tuple(
    name
    for prefix in ("", "tta_")
    for metric in METRIC_NAMES
    for name in (
        f"{prefix}{metric}",
        f"{prefix}{metric}_ci_low",
        f"{prefix}{metric}_ci_high",
    )
)

# The run's own columns, in summary.csv and per_seed.csv: log loss, views, training time.
RUN_FIELDS: tuple[str, ...] = (
    "log_loss",
    "tta_log_loss",
    "tta_views",
    "train_seconds",
    "epochs",
    "best_epoch",
)

# Columns of summary.csv, in order. Metrics are fractions in [0, 1] written at full precision.
SUMMARY_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "status",
    "error",
    "n_test",
    *METRIC_FIELDS,
    *RUN_FIELDS,
    "stopped_early",
    "params",
    "throughput_ips",
    "reused",
    "produced_by",
    "run_dir",
)


# Several training seeds: the columns summary.csv gains (after SUMMARY_FIELDS, whose metrics,
# intervals and training facts are then one run's: that of ``seed``, the first seed). The mean
# and the sample standard deviation (n - 1) are over the ``n_seeds`` seeds ``seeds`` that gave
# a result; the std is empty with fewer than two.
SEED_STAT_FIELDS: tuple[str, ...] = tuple(
    f"{prefix}{metric}_{stat}"
    for prefix in ("", "tta_")
    for metric in METRIC_NAMES
    for stat in ("mean", "std")
)
SEED_FIELDS: tuple[str, ...] = ("seed", "n_seeds", "seeds", *SEED_STAT_FIELDS)

# per_seed.csv: one row per planned (pair, seed, test set), every seed's own numbers.
PER_SEED_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "seed",
    "test_dataset",
    "status",
    "n_test",
    *METRIC_FIELDS,
    *RUN_FIELDS,
    "reused",
    "run_dir",
    "eval_dir",
)

# across_seeds.csv: one row per planned (pair, test set): mean and std across seeds, then the
# first seed's numbers with their bootstrap intervals.
ACROSS_SEEDS_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "test_dataset",
    "n_seeds",
    "seeds",
    *SEED_STAT_FIELDS,
    "seed",
    "n_test",
    *METRIC_FIELDS,
)


def headline(row: Mapping[str, Any], metric: str = "accuracy") -> float | None:
    """The metric with TTA when it was measured, else without; with several training seeds,
    its mean across seeds."""
    names = (f"tta_{metric}", metric)
    if "n_seeds" in row:
        names = (f"tta_{metric}_mean", f"{metric}_mean")
    for name in names:
        if row.get(name) is not None:
            return row[name]
    return None


def is_multi_seed(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Summary rows of an experiment trained with several seeds (they carry ``SEED_FIELDS``)."""
    return any("n_seeds" in r for r in rows)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value)


def rows_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """Rows as CSV text with the header ``fields`` (fractions at full precision)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_csv_value(row.get(k)) for k in fields])
    return buf.getvalue()


def summary_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as CSV text (header ``SUMMARY_FIELDS``; with several training seeds,
    ``SUMMARY_FIELDS`` then ``SEED_FIELDS``)."""
    fields = SUMMARY_FIELDS + SEED_FIELDS if is_multi_seed(rows) else SUMMARY_FIELDS
    return rows_csv(rows, fields)


def fmt_pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage (``0.8342`` -> ``83.4%``); ``-`` when missing."""
    if value is None or value == "":
        return "-"
    v = float(value)
    return "-" if math.isnan(v) else f"{100 * v:.{digits}f}%"


def fmt_ci(low: Any, high: Any) -> str:
    """A confidence interval in percent (``81.2-85.3``); ``-`` when missing."""
    if low is None or high is None:
        return "-"
    return f"{100 * float(low):.1f}-{100 * float(high):.1f}"


def fmt_mean_std(mean: Any, std: Any) -> str:
    """A mean across seeds with its standard deviation in percentage points
    (``83.4% ± 1.2``); the mean alone when there is no std (one seed); ``-`` when missing."""
    if mean is None or mean == "":
        return "-"
    if std is None or std == "":
        return fmt_pct(mean)
    return f"{fmt_pct(mean)} ± {100 * float(std):.1f}"


def fmt_seconds(value: Any) -> str:
    """A duration: ``42.0s``, ``3m 05s``, ``2h 07m``; ``-`` when missing."""
    if value is None or value == "":
        return "-"
    s = float(value)
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(round(s), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def fmt_count(value: Any) -> str:
    """A parameter count: ``2.31M``, ``45.2K``; ``-`` when missing."""
    if value is None or value == "":
        return "-"
    n = float(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            scaled = n / size
            digits = 2 if abs(scaled) < 10 else 1 if abs(scaled) < 100 else 0
            return f"{scaled:.{digits}f}{unit}"
    return f"{int(n)}"


def fmt_plain(value: Any) -> str:
    """Any value for a table cell; ``-`` when missing."""
    return "-" if value is None or value == "" else str(value)


@dataclass(frozen=True)
class Column:
    """A summary-table column: header, how to format a row, and alignment."""

    header: str
    render: Any  # Callable[[Mapping[str, Any]], str]
    right: bool = True


def seed_summary_columns(with_ci: bool, first_seed: Any) -> list[Column]:
    """The console and Markdown summary columns with several training seeds: mean ± std across
    seeds (std in percentage points), the seed count, and the first seed's intervals and
    training facts (one run's)."""
    short = {"accuracy": "acc", "balanced_accuracy": "bal acc", "macro_f1": "macro-F1"}

    def ms(name: str) -> Column:
        tta = " TTA" if name.startswith("tta_") else ""
        return Column(
            f"{short[name.removeprefix('tta_')]}{tta} mean ± sd",
            lambda r: fmt_mean_std(r.get(f"{name}_mean"), r.get(f"{name}_std")),
        )

    def ci(name: str, header: str) -> Column:
        return Column(
            f"{header} 95% CI (seed {first_seed})",
            lambda r: fmt_ci(r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")),
        )

    cols = [
        Column("dataset", lambda r: fmt_plain(r.get("dataset")), right=False),
        Column("model", lambda r: fmt_plain(r.get("model")), right=False),
        Column("status", lambda r: fmt_plain(r.get("status")), right=False),
        Column("seeds", lambda r: fmt_plain(r.get("n_seeds"))),
        ms("accuracy"),
        ms("tta_accuracy"),
    ]
    if with_ci:
        cols += [ci("accuracy", "acc"), ci("tta_accuracy", "acc TTA")]
    cols += [ms("balanced_accuracy"), ms("tta_balanced_accuracy")]
    cols += [ms("macro_f1"), ms("tta_macro_f1")]
    if with_ci:
        cols.append(ci("macro_f1", "F1"))
    cols += [
        Column(f"train time (seed {first_seed})", lambda r: fmt_seconds(r.get("train_seconds"))),
        Column(f"epochs (seed {first_seed})", lambda r: fmt_plain(r.get("epochs"))),
        Column("params", lambda r: fmt_count(r.get("params"))),
    ]
    return cols


def _columns(rows: Sequence[Mapping[str, Any]], with_ci: bool) -> list[Column]:
    if is_multi_seed(rows):
        return seed_summary_columns(with_ci, rows[0].get("seed") if rows else None)
    return summary_columns(with_ci)


def summary_columns(with_ci: bool) -> list[Column]:
    """The columns shown in the console and Markdown summaries."""
    cols = [
        Column("dataset", lambda r: fmt_plain(r.get("dataset")), right=False),
        Column("model", lambda r: fmt_plain(r.get("model")), right=False),
        Column("status", lambda r: fmt_plain(r.get("status")), right=False),
        Column("acc", lambda r: fmt_pct(r.get("accuracy"))),
        Column("acc TTA", lambda r: fmt_pct(r.get("tta_accuracy"))),
    ]
    if with_ci:
        cols += [
            Column(
                "acc 95% CI", lambda r: fmt_ci(r.get("accuracy_ci_low"), r.get("accuracy_ci_high"))
            ),
            Column(
                "acc TTA 95% CI",
                lambda r: fmt_ci(r.get("tta_accuracy_ci_low"), r.get("tta_accuracy_ci_high")),
            ),
        ]
    cols += [
        Column("bal acc", lambda r: fmt_pct(r.get("balanced_accuracy"))),
        Column("bal acc TTA", lambda r: fmt_pct(r.get("tta_balanced_accuracy"))),
        Column("macro-F1", lambda r: fmt_pct(r.get("macro_f1"))),
        Column("macro-F1 TTA", lambda r: fmt_pct(r.get("tta_macro_f1"))),
    ]
    if with_ci:
        cols.append(
            Column(
                "F1 95% CI", lambda r: fmt_ci(r.get("macro_f1_ci_low"), r.get("macro_f1_ci_high"))
            )
        )
    cols += [
        Column("train time", lambda r: fmt_seconds(r.get("train_seconds"))),
        Column("epochs", lambda r: fmt_plain(r.get("epochs"))),
        Column("params", lambda r: fmt_count(r.get("params"))),
    ]
    return cols


def _cells(rows: Sequence[Mapping[str, Any]], cols: Sequence[Column]) -> list[list[str]]:
    return [[str(c.render(r)) for c in cols] for r in rows]


def format_console_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as aligned plain-text columns for the terminal (percentages, 1 decimal)."""
    cols = _columns(rows, with_ci=False)
    body = _cells(rows, cols)
    widths = [max([len(c.header)] + [len(line[i]) for line in body]) for i, c in enumerate(cols)]

    def fmt(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if c.right else v.ljust(w)
            for v, w, c in zip(values, widths, cols, strict=True)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt([c.header for c in cols]), "  ".join("-" * w for w in widths)]
    lines += [fmt(values) for values in body]
    return "\n".join(lines)


def md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def format_markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a GitHub-flavoured Markdown table, with 95% confidence intervals."""
    cols = _columns(rows, with_ci=True)
    lines = [
        "| " + " | ".join(c.header for c in cols) + " |",
        "|" + "|".join("---:" if c.right else ":---" for c in cols) + "|",
    ]
    for values in _cells(rows, cols):
        lines.append("| " + " | ".join(md_escape(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def format_across_seeds_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The ``## Across seeds, every test set`` section of summary.md (``collect_across_seeds``)."""
    seed = rows[0].get("seed") if rows else None
    lines = [
        "## Across seeds, every test set",
        "",
        "Mean ± sample standard deviation across the training seeds (percentage points), with "
        f"TTA where measured; the 95% bootstrap interval is one run's (seed {seed}).",
        "",
        "| trained on | model | test set | seeds | acc mean ± sd | acc 95% CI (seed "
        f"{seed}) | bal acc mean ± sd | macro-F1 mean ± sd |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = "tta_" if r.get("tta_accuracy_mean") is not None else ""
        cells = [
            md_escape(str(r["dataset"])),
            md_escape(str(r["model"])),
            md_escape(str(r["test_dataset"])),
            fmt_plain(r.get("n_seeds")),
            fmt_mean_std(r.get(f"{p}accuracy_mean"), r.get(f"{p}accuracy_std")),
            fmt_ci(r.get(f"{p}accuracy_ci_low"), r.get(f"{p}accuracy_ci_high")),
            fmt_mean_std(r.get(f"{p}balanced_accuracy_mean"), r.get(f"{p}balanced_accuracy_std")),
            fmt_mean_std(r.get(f"{p}macro_f1_mean"), r.get(f"{p}macro_f1_std")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def comparisons_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparisons as CSV text (header ``COMPARISON_FIELDS``, with several training seeds
    then ``COMPARISON_SEED_FIELDS``; fractions at full precision)."""
    multi = any("n_seeds" in r for r in rows)
    return rows_csv(
        rows, COMPARISON_FIELDS + COMPARISON_SEED_FIELDS if multi else COMPARISON_FIELDS
    )


def fmt_points(value: Any) -> str:
    """A difference of fractions in percentage points, signed (``0.012`` -> ``+1.2``)."""
    if value is None or value == "":
        return "-"
    return f"{100 * float(value):+.1f}"


def fmt_p(value: Any) -> str:
    """A p-value: three decimals, or two significant digits below 0.001; ``-`` when missing."""
    if value is None or value == "":
        return "-"
    p = float(value)
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def fmt_points_std(mean: Any, std: Any) -> str:
    """A mean difference across seeds with its std, in percentage points (``+1.2 ± 0.8``)."""
    if mean is None or mean == "":
        return "-"
    if std is None or std == "":
        return fmt_points(mean)
    return f"{fmt_points(mean)} ± {100 * float(std):.1f}"


def display_comparisons(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``collect_comparisons`` rows formatted for display (summary.md and the HTML report).

    Each dict: ``dataset, test, model_a, model_b`` (with `` (TTA)`` when TTA predictions were
    compared), ``n, acc_a, acc_b, diff`` (percentage points, signed), ``ci``, ``only_a``,
    ``only_b``, ``p``, ``verdict``, ``note`` (why a pair was not compared, else None), and the
    flags ``compared``, ``significant`` (the verdict's p below ``ALPHA``) and ``holm`` (it
    survives Holm's correction over all the comparisons), ``p_holm`` (formatted). With several
    training seeds also ``seed`` (whose run the other numbers are), ``n_seeds``, ``diff_seeds``
    (the difference's mean ± std across seeds, in percentage points) and ``p_seeds`` (the
    verdict's p across seeds); else these are None.
    """

    def name(model: Any, variant: Any) -> str:
        return f"{model} (TTA)" if variant == "tta" else str(model)

    out = []
    for r in rows:
        compared = r.get("note") is None
        low, high = r.get("difference_ci_low"), r.get("difference_ci_high")
        multi = "n_seeds" in r
        out.append(
            {
                "dataset": str(r["dataset"]),
                "test": str(r["test_dataset"]),
                "model_a": name(r["model_a"], r.get("variant_a")),
                "model_b": name(r["model_b"], r.get("variant_b")),
                "n": fmt_plain(r.get("n")),
                "acc_a": fmt_pct(r.get("accuracy_a")),
                "acc_b": fmt_pct(r.get("accuracy_b")),
                "diff": fmt_points(r.get("difference")),
                "ci": "-" if low is None else f"{fmt_points(low)} to {fmt_points(high)}",
                "only_a": fmt_plain(r.get("b10")),
                "only_b": fmt_plain(r.get("b01")),
                "p": fmt_p(r.get("p_value")),
                "verdict": str(r.get("verdict")),
                "note": r.get("note"),
                "compared": compared,
                "significant": bool(r.get("significant")),
                "holm": bool(r.get("holm")),
                "p_holm": fmt_p(r.get("p_holm")),
                "seed": r.get("seed") if multi else None,
                "n_seeds": fmt_plain(r.get("n_seeds")) if multi else None,
                "diff_seeds": fmt_points_std(r.get("difference_mean"), r.get("difference_std"))
                if multi
                else None,
                "p_seeds": fmt_p(r.get("p_value_seeds")) if multi else None,
            }
        )
    return out


def holm_note(display: Sequence[Mapping[str, Any]]) -> str | None:
    """How many comparisons the report made and how many survive Holm's correction."""
    tested = [d for d in display if d["p_holm"] != "-"]
    if not tested:
        return None
    kept = sum(1 for d in tested if d["holm"])
    return (
        f"{len(tested)} comparison{'s' if len(tested) != 1 else ''} with a p-value in this "
        f"report; {kept} survive{'s' if kept == 1 else ''} Holm's correction for all "
        f"{len(tested)} at {ALPHA} (`Holm`: yes). With many comparisons some p below {ALPHA} "
        'come by chance; Holm\'s step-down keeps the chance of any false "better" among them '
        f"below {ALPHA}."
    )


def format_comparisons_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The ``## Paired comparisons`` section of summary.md from ``collect_comparisons`` rows."""
    display = display_comparisons(rows)
    multi = any("n_seeds" in r for r in rows)
    lines = [
        "## Paired comparisons",
        "",
        "Every two models trained on the same dataset and scored on the same test images, on "
        "the summary's headline predictions (TTA where measured). `A - B` is the accuracy "
        "difference in percentage points with its 95% paired bootstrap interval (the same "
        "resampled images score both models); `only A` / `only B` count the images exactly one "
        f"model gets right, and `p` is McNemar's exact test on them (significant below {ALPHA}).",
        "",
    ]
    if multi:
        seed = rows[0].get("seed") if rows else None
        lines[-1:-1] = [
            "",
            f"Trained with several seeds: the accuracies, interval, counts and `p` are one "
            f"run's, seed {seed}'s. `A - B across seeds` is the mean ± sample standard deviation "
            "(pp) of the accuracy difference over the seeds (`seeds`: how many), seed s of A "
            "against seed s of B. The verdict uses every seed: `p across seeds` is the larger "
            "of a t-test over the per-seed differences and the largest per-seed McNemar p (a "
            "seed whose difference has the other sign counts as 1), so a difference must hold "
            "across seeds and across test images to be called better.",
        ]
    shown = [d for d in display if d["compared"]]
    if shown:
        head = ["trained on", "test set", "A", "B", "n", "acc A", "acc B", "A - B (pp)", "95% CI"]
        head += ["only A", "only B", "p", "verdict"]
        keys = ["dataset", "test", "model_a", "model_b", "n", "acc_a", "acc_b", "diff", "ci"]
        keys += ["only_a", "only_b", "p", "verdict"]
        right = {"n", "acc_a", "acc_b", "diff", "ci", "only_a", "only_b", "p"}
        if multi:
            head += ["A - B across seeds (pp)", "seeds", "p across seeds"]
            keys += ["diff_seeds", "n_seeds", "p_seeds"]
            right |= {"diff_seeds", "n_seeds", "p_seeds"}
        head += ["Holm p", "Holm"]
        keys += ["p_holm", "holm_mark"]
        right |= {"p_holm"}
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---:" if k in right else ":---" for k in keys) + "|")
        for d in shown:
            mark = "-" if d["p_holm"] == "-" else ("yes" if d["holm"] else "no")
            cells = {**d, "holm_mark": mark}
            lines.append("| " + " | ".join(md_escape(str(cells[k])) for k in keys) + " |")
        lines.append("")
        note = holm_note(display)
        if note:
            lines += [note, ""]
    skipped = [d for d in display if not d["compared"]]
    if skipped:
        lines += ["Not compared:", ""]
        lines += [
            f"- {md_escape(d['dataset'])} on {md_escape(d['test'])}: {md_escape(d['model_a'])} "
            f"vs {md_escape(d['model_b'])}: {md_escape(str(d['note']))}"
            for d in skipped
        ]
        lines.append("")
    return "\n".join(lines)


def cross_dataset_csv(cross: CrossDataset) -> str:
    """The matrix as CSV: ``train_dataset, model`` then one column per test set (blank: not run)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["train_dataset", "model", *cross.test_names])
    for (dataset, model), name in zip(cross.rows, cross.train_names, strict=True):
        cells = [_csv_value(cross.values.get((name, t))) for t in cross.test_names]
        writer.writerow([dataset, model, *cells])
    return buf.getvalue()
