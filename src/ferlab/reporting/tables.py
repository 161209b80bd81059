"""Summary and cross-dataset tables, read back from an experiment folder.

Nothing here trains or loads a model: every number comes from ``status.json``, the run folders'
``fit.json`` and the ``eval/<train>__<model>/on_<test>/metrics.json`` files, so
``ferlab report DIR`` rebuilds the same tables a run printed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")
METRIC_TITLES: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
}
ENSEMBLE = "ensemble"
MEGA = "mega"

# Columns of summary.csv, in order. Metrics are fractions in [0, 1] written at full precision.
SUMMARY_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "status",
    "error",
    "n_test",
    *(
        name
        for prefix in ("", "tta_")
        for metric in METRICS
        for name in (
            f"{prefix}{metric}",
            f"{prefix}{metric}_ci_low",
            f"{prefix}{metric}_ci_high",
        )
    ),
    "log_loss",
    "tta_log_loss",
    "tta_views",
    "train_seconds",
    "epochs",
    "best_epoch",
    "stopped_early",
    "params",
    "throughput_ips",
    "reused",
    "run_dir",
)


class ReportInputError(ValueError):
    """A file in the experiment folder is unreadable or has the wrong shape."""


def safe_name(text: str) -> str:
    """A file-name-safe version of a dataset or model name (``tv:resnet50`` -> ``tv_resnet50``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")
    return cleaned or "unnamed"


def read_json(path: Path) -> Any:
    """Parse a JSON file; the error names the file and how to regenerate it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportInputError(
            f"cannot read {path}: {e}. The file is damaged; delete it and rerun `ferlab run` "
            "on the same experiment to regenerate it."
        ) from e


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line, as dicts of strings."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- reading files


@dataclass(frozen=True)
class Evaluation:
    """One ``metrics.json``: a model trained on ``train_dataset`` scored on ``test_dataset``."""

    train_dataset: str
    model: str
    test_dataset: str
    directory: Path
    data: dict[str, Any]

    def result(self, use_tta: bool) -> dict[str, Any] | None:
        """The TTA block when asked for and present, else the plain block."""
        if use_tta and self.data.get("tta"):
            return dict(self.data["tta"])
        plain = self.data.get("plain")
        return dict(plain) if plain else None


def load_evaluations(exp_dir: Path) -> list[Evaluation]:
    """Every ``eval/*/on_*/metrics.json`` in the experiment folder, sorted by path."""
    out = []
    for path in sorted(Path(exp_dir).glob("eval/*/on_*/metrics.json")):
        data = read_json(path)
        missing = [k for k in ("train_dataset", "model", "test_dataset") if k not in data]
        if missing:
            raise ReportInputError(
                f"{path} lacks the keys {missing}; expected a metrics file written by "
                "`ferlab run` (keys train_dataset, model, test_dataset, plain, tta)"
            )
        out.append(
            Evaluation(
                str(data["train_dataset"]),
                str(data["model"]),
                str(data["test_dataset"]),
                path.parent,
                data,
            )
        )
    return out


def load_status(exp_dir: Path) -> list[dict[str, Any]]:
    """The ``pairs`` of ``status.json``; empty when the file does not exist yet."""
    path = Path(exp_dir) / "status.json"
    if not path.exists():
        return []
    data = read_json(path)
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list):
        raise ReportInputError(f"{path} has no 'pairs' list; expected {{'pairs': [...]}}")
    return [p for p in pairs if isinstance(p, dict) and "dataset" in p and "model" in p]


def _ordered(names: Iterable[str], last: str) -> list[str]:
    """Unique names in first-seen order, ``last`` (``mega``/``ensemble``) moved to the end."""
    seen = list(dict.fromkeys(names))
    return [n for n in seen if n != last] + ([last] if last in seen else [])


def ordered_pairs(
    status: Sequence[Mapping[str, Any]], evaluations: Sequence[Evaluation]
) -> list[tuple[str, str]]:
    """Every (dataset, model) pair, in the run's order: datasets, then models; mega and ensembles last."""
    pairs = [(str(p["dataset"]), str(p["model"])) for p in status]
    pairs += [(e.train_dataset, e.model) for e in evaluations]
    datasets = _ordered((d for d, _ in pairs), MEGA)
    models = _ordered((m for _, m in pairs), ENSEMBLE)
    unique = set(pairs)
    return [(d, m) for d in datasets for m in models if (d, m) in unique]


def ordered_test_sets(evaluations: Sequence[Evaluation], datasets: Sequence[str]) -> list[str]:
    """Test sets in the datasets' order, then any others, mega last."""
    names = [d for d in datasets if any(e.test_dataset == d for e in evaluations)]
    names += sorted({e.test_dataset for e in evaluations} - set(names))
    return _ordered(names, MEGA)


def find_run(
    exp_dir: Path, dataset: str, model: str, hint: str | None = None
) -> tuple[Path | None, dict[str, Any] | None]:
    """The run folder of a pair and its ``fit.json`` (both None for ensembles and failed pairs).

    ``hint`` is the ``run_dir`` from status.json (absolute or relative to the experiment);
    without one, or when it moved, the newest ``runs/*/*/fit.json`` naming the pair is used.
    """
    exp_dir = Path(exp_dir)
    if hint:
        candidate = Path(hint)
        # An absolute path goes stale when the folder is moved or copied: look inside
        # this experiment's runs/ first.
        inside = exp_dir / "runs" / candidate.parent.name / candidate.name
        for path in (inside, exp_dir / candidate, candidate):
            if (path / "fit.json").is_file():
                return path, read_json(path / "fit.json")
    found: list[tuple[float, Path, dict[str, Any]]] = []
    for fit_path in exp_dir.glob("runs/*/*/fit.json"):
        fit = read_json(fit_path)
        # fit.json names its pair; older files are named by their folder only.
        fit_dataset = str(fit.get("dataset") or fit_path.parent.parent.name)
        fit_model = str(fit.get("model") or fit_path.parent.name.rsplit("-", 1)[0])
        if fit_dataset in (dataset, safe_name(dataset)) and fit_model == model:
            found.append((fit_path.stat().st_mtime, fit_path.parent, fit))
    if not found:
        return None, None
    _, run_dir, fit = max(found, key=lambda t: t[0])
    return run_dir, fit


def own_evaluation(
    evaluations: Sequence[Evaluation], dataset: str, model: str
) -> Evaluation | None:
    """The evaluation of a pair on its own test set (``on_<dataset>``)."""
    for e in evaluations:
        if e.train_dataset == dataset and e.model == model and e.test_dataset == dataset:
            return e
    return None


# --------------------------------------------------------------------------- summary


def _metric_fields(block: Mapping[str, Any] | None, prefix: str) -> dict[str, Any]:
    row: dict[str, Any] = {}
    ci = (block or {}).get("ci") or {}
    for metric in METRICS:
        row[f"{prefix}{metric}"] = (block or {}).get(metric)
        bounds = ci.get(metric) or [None, None]
        row[f"{prefix}{metric}_ci_low"], row[f"{prefix}{metric}_ci_high"] = bounds[0], bounds[1]
    row[f"{prefix}log_loss"] = (block or {}).get("log_loss")
    return row


def summary_row(
    exp_dir: Path,
    dataset: str,
    model: str,
    status_entry: Mapping[str, Any] | None,
    evaluation: Evaluation | None,
) -> dict[str, Any]:
    """One summary row: status, own-test metrics (plain and TTA, with CIs) and training facts."""
    status = (
        str(status_entry.get("status")) if status_entry else ("ok" if evaluation else "missing")
    )
    error = status_entry.get("error") if status_entry else None
    run_dir, fit = find_run(exp_dir, dataset, model, (status_entry or {}).get("run_dir"))
    data = evaluation.data if evaluation else {}
    plain = data.get("plain")
    tta = data.get("tta")
    row: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "status": status,
        "error": error,
        "n_test": (plain or {}).get("n"),
        **_metric_fields(plain, ""),
        **_metric_fields(tta, "tta_"),
        "tta_views": data.get("tta_views"),
        "train_seconds": (fit or {}).get("train_seconds"),
        "epochs": (fit or {}).get("epochs_run"),
        "best_epoch": (fit or {}).get("best_epoch"),
        "stopped_early": (fit or {}).get("stopped_early"),
        "params": _params(run_dir, fit),
        "throughput_ips": data.get("throughput_ips"),
        "reused": (fit or {}).get("reused"),
        "run_dir": _relative(run_dir, exp_dir),
    }
    return row


def _params(run_dir: Path | None, fit: Mapping[str, Any] | None) -> int | None:
    """The parameter count from fit.json, else from meta.json's ``extra`` block."""
    if fit and fit.get("params") is not None:
        return int(fit["params"])
    meta_path = run_dir / "meta.json" if run_dir else None
    if meta_path is None or not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    extra = meta.get("extra") if isinstance(meta, dict) else None
    value = (extra or {}).get("params") if isinstance(extra, dict) else None
    return int(value) if value is not None else None


def _relative(path: Path | None, base: Path) -> str | None:
    """``path`` relative to ``base`` when inside it (so a moved experiment folder still works)."""
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path)


def collect_summary(exp_dir: Path) -> list[dict[str, Any]]:
    """One row per (dataset, model) pair, ensembles and failed pairs included.

    Metrics are from the pair's own test set (``on_<dataset>``); a failed pair has its error
    and no metrics. Keys are ``SUMMARY_FIELDS``; missing values are None.
    """
    exp_dir = Path(exp_dir)
    status = load_status(exp_dir)
    evaluations = load_evaluations(exp_dir)
    by_pair = {(str(p["dataset"]), str(p["model"])): p for p in status}
    return [
        summary_row(exp_dir, d, m, by_pair.get((d, m)), own_evaluation(evaluations, d, m))
        for d, m in ordered_pairs(status, evaluations)
    ]


def headline(row: Mapping[str, Any], metric: str = "accuracy") -> float | None:
    """The metric with TTA when it was measured, else without."""
    value = row.get(f"tta_{metric}")
    return value if value is not None else row.get(metric)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value)


def summary_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as CSV text (header ``SUMMARY_FIELDS``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_FIELDS)
    for row in rows:
        writer.writerow([_csv_value(row.get(k)) for k in SUMMARY_FIELDS])
    return buf.getvalue()


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
    cols = summary_columns(with_ci=False)
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


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def format_markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a GitHub-flavoured Markdown table, with 95% confidence intervals."""
    cols = summary_columns(with_ci=True)
    lines = [
        "| " + " | ".join(c.header for c in cols) + " |",
        "|" + "|".join("---:" if c.right else ":---" for c in cols) + "|",
    ]
    for values in _cells(rows, cols):
        lines.append("| " + " | ".join(_md_escape(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> Path:
    """Write through a temporary file and rename, so a reader never sees half a table."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_summary(rows: Sequence[Mapping[str, Any]], exp_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.csv`` (full precision) and ``summary.md`` (formatted) in the experiment folder."""
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    csv_path = _write_text(exp_dir / "summary.csv", summary_csv(rows))
    notes = [
        "# Summary",
        "",
        "Metrics on each training dataset's own test split; `TTA` columns use test-time "
        "augmentation. Confidence intervals are 95% bootstrap intervals.",
        "",
        format_markdown_table(rows),
    ]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        notes += ["", "## Failed pairs", ""]
        notes += [
            f"- {r['dataset']} / {r['model']}: {_md_escape(str(r.get('error')))}" for r in failed
        ]
        notes.append("")
    md_path = _write_text(exp_dir / "summary.md", "\n".join(notes))
    return csv_path, md_path


# --------------------------------------------------------------------------- cross-dataset


@dataclass
class CrossDataset:
    """A train x test matrix of one metric.

    ``values`` maps (row name, test set) to a fraction; a row name is ``"<dataset> / <model>"``
    and ``rows`` gives the (dataset, model) behind each row name, in order.
    """

    metric: str
    use_tta: bool
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    train_names: list[str] = field(default_factory=list)
    test_names: list[str] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)
    tta_used: bool = False  # at least one cell is a TTA result

    def __iter__(self) -> Any:  # unpack as (values, train_names, test_names)
        return iter((self.values, self.train_names, self.test_names))


def row_name(dataset: str, model: str) -> str:
    """How a (trained dataset, model) pair is named in the cross-dataset matrix."""
    return f"{dataset} / {model}"


def collect_cross_dataset(
    exp_dir: Path, metric: str = "accuracy", use_tta: bool = True
) -> CrossDataset:
    """The cross-dataset matrix of ``metric`` from every metrics.json (TTA where measured)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
    evaluations = load_evaluations(Path(exp_dir))
    pairs = ordered_pairs(load_status(Path(exp_dir)), evaluations)
    evaluated = {(e.train_dataset, e.model) for e in evaluations}
    pairs = [p for p in pairs if p in evaluated]
    datasets = list(dict.fromkeys(d for d, _ in pairs))
    out = CrossDataset(metric=metric, use_tta=use_tta)
    out.rows = pairs
    out.train_names = [row_name(d, m) for d, m in pairs]
    out.test_names = ordered_test_sets(evaluations, datasets)
    for e in evaluations:
        block = e.result(use_tta)
        if block is None or block.get(metric) is None:
            continue
        out.values[(row_name(e.train_dataset, e.model), e.test_dataset)] = float(block[metric])
        out.tta_used = out.tta_used or (use_tta and bool(e.data.get("tta")))
    return out


def collect_dropped_labels(exp_dir: Path) -> list[dict[str, Any]]:
    """Pairs scored on a subset of classes: which labels were left out and how many images."""
    out = []
    for e in load_evaluations(Path(exp_dir)):
        dropped = list(e.data.get("dropped_labels") or [])
        if dropped:
            out.append(
                {
                    "train_dataset": e.train_dataset,
                    "model": e.model,
                    "test_dataset": e.test_dataset,
                    "dropped_labels": dropped,
                    "n_dropped_images": e.data.get("n_dropped_images"),
                    "labels": list(e.data.get("labels") or []),
                }
            )
    return out


def cross_dataset_csv(cross: CrossDataset) -> str:
    """The matrix as CSV: ``train_dataset, model`` then one column per test set (blank: not run)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["train_dataset", "model", *cross.test_names])
    for (dataset, model), name in zip(cross.rows, cross.train_names, strict=True):
        cells = [_csv_value(cross.values.get((name, t))) for t in cross.test_names]
        writer.writerow([dataset, model, *cells])
    return buf.getvalue()


def write_cross_dataset(exp_dir: Path) -> list[Path]:
    """Write ``cross_dataset.csv`` (accuracy), ``cross_dataset_evaluation.png`` and the
    balanced-accuracy heatmap; returns the files written (none when nothing was evaluated)."""
    from ferlab.reporting.plots import plot_cross_dataset

    exp_dir = Path(exp_dir)
    written: list[Path] = []
    for metric, png in (
        ("accuracy", "cross_dataset_evaluation.png"),
        ("balanced_accuracy", "cross_dataset_evaluation_balanced_accuracy.png"),
    ):
        cross = collect_cross_dataset(exp_dir, metric=metric, use_tta=True)
        if not cross.values:
            continue
        if metric == "accuracy":
            written.append(_write_text(exp_dir / "cross_dataset.csv", cross_dataset_csv(cross)))
        suffix = " (TTA where measured)" if cross.tta_used else ""
        title = f"Cross-dataset {METRIC_TITLES[metric]}{suffix}"
        written.append(
            plot_cross_dataset(
                cross.values,
                cross.train_names,
                cross.test_names,
                exp_dir / png,
                title,
                METRIC_TITLES[metric],
            )
        )
    return written
