"""Summary and cross-dataset tables, read back from an experiment's recorded plan.

Nothing here trains or loads a model, and nothing globs for results: every number comes from
an evaluation the experiment's ``plan.json`` names, and only when its ``metrics.json`` carries
the planned key (``ferlab.record.planned_metrics``); statuses come from ``status.json`` and
training facts from the planned run folder's ``fit.json``. So ``ferlab report DIR`` rebuilds
the tables a run printed, and a result left by another plan never shows as current.

The paired comparisons (``comparisons.csv`` and a section of ``summary.md``) read the per-image
predictions (``probs.npz``) of the same planned evaluations, and test every two models trained
on one dataset and scored on one test split (``ferlab.evaluation.compare``); every verdict's
p-value is also corrected with Holm's method over all the comparisons of the experiment.

With several training seeds (``seeds:``) the plan holds every pair once per seed. Then a summary
row is one (dataset, model): the mean and sample standard deviation across seeds of each metric
(``*_mean``, ``*_std``, ``n_seeds``) beside one run's numbers, bootstrap intervals and training
facts, those of the first seed (``seed``); ``per_seed.csv`` keeps every seed's numbers and
``across_seeds.csv`` the mean and std on every test set. The cross-dataset matrix holds means
across seeds, and a paired comparison shows the first seed's interval and McNemar p, with the
mean and std across seeds of the accuracy difference (seed s of A against seed s of B) and a
verdict from every seed (``compare.across_seeds_test``). With one seed every file is as before
seeds existed, with the Holm columns added to comparisons.csv.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferlab.layout import FIT_JSON, META, PROBS, Layout, atomic_write, read_json
from ferlab.record import (
    PairStatus,
    Plan,
    PlannedEval,
    PlannedPair,
    planned_metrics,
    produced_by_text,
    read_plan,
    read_status,
)

METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1")
METRIC_TITLES: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro-F1",
}

# One run's metrics (plain, then TTA) with their 95% bootstrap intervals.
METRIC_FIELDS: tuple[str, ...] = tuple(
    name
    for prefix in ("", "tta_")
    for metric in METRICS
    for name in (
        f"{prefix}{metric}",
        f"{prefix}{metric}_ci_low",
        f"{prefix}{metric}_ci_high",
    )
)

# Columns of summary.csv, in order. Metrics are fractions in [0, 1] written at full precision.
SUMMARY_FIELDS: tuple[str, ...] = (
    "dataset",
    "model",
    "status",
    "error",
    "n_test",
    *METRIC_FIELDS,
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
    for metric in METRICS
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
    "log_loss",
    "tta_log_loss",
    "tta_views",
    "train_seconds",
    "epochs",
    "best_epoch",
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


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """``ferlab.evaluation.compare.mean_std``, imported when needed (``ferlab.evaluation``
    brings torch, which reading an experiment folder does not need)."""
    from ferlab.evaluation.compare import mean_std as compute

    return compute(values)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file with a header line, as dicts of strings."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class Evaluation:
    """One planned evaluation with its numbers: a pair trained on ``train_dataset`` scored on
    ``test_dataset``."""

    train_dataset: str
    model: str
    test_dataset: str
    directory: Path
    data: dict[str, Any]
    relative: str = ""  # the folder as plan.json names it, relative to the experiment
    seed: int | None = None  # the planned pair's training seed (None: the experiment's one seed)

    def result(self, use_tta: bool) -> dict[str, Any] | None:
        """The TTA block when asked for and present, else the plain block."""
        if use_tta and self.data.get("tta"):
            return dict(self.data["tta"])
        plain = self.data.get("plain")
        return dict(plain) if plain else None


@dataclass
class Record:
    """An experiment folder as its plan describes it, with the results that match the plan."""

    layout: Layout
    plan: Plan
    status: dict[tuple[str, str, int | None], PairStatus]  # (dataset, model, seed)
    evaluations: list[Evaluation]
    # collect_comparisons' rows, kept so the summary and the report bootstrap only once
    comparison_cache: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def multi_seed(self) -> bool:
        """Every pair was planned with several training seeds."""
        return self.plan.multi_seed

    @property
    def first_seed(self) -> int | None:
        """The seed whose run gives the single-run numbers (None: the experiment's one seed)."""
        seeds = self.plan.seeds
        return seeds[0] if seeds else None

    def pair_status(self, pair: PlannedPair) -> PairStatus:
        return self.status.get(
            (pair.dataset, pair.model, pair.seed),
            PairStatus(pair.dataset, pair.model, run_dir=pair.run_dir, seed=pair.seed),
        )

    def evaluation(
        self, dataset: str, model: str, test: str, seed: int | None = None
    ) -> Evaluation | None:
        """The pair's evaluation on ``test`` (of ``seed``; None: of the first seed)."""
        want = (dataset, model, test, self.first_seed if seed is None else seed)
        for e in self.evaluations:
            if (e.train_dataset, e.model, e.test_dataset, e.seed) == want:
                return e
        return None

    def evaluations_of(self, dataset: str, model: str, seed: int | None = None) -> list[Evaluation]:
        """The pair's evaluations (of ``seed``; None: of the first seed)."""
        want = (dataset, model, self.first_seed if seed is None else seed)
        return [e for e in self.evaluations if (e.train_dataset, e.model, e.seed) == want]

    def first_seed_evaluations(self) -> list[Evaluation]:
        """The evaluations of the first seed (all of them with one seed)."""
        return [e for e in self.evaluations if e.seed == self.first_seed]

    def pair_groups(self) -> list[list[PlannedPair]]:
        """The planned pairs per (dataset, model), one per seed, in plan order."""
        groups: dict[tuple[str, str], list[PlannedPair]] = {}
        for p in self.plan.pairs:
            groups.setdefault((p.dataset, p.model), []).append(p)
        return list(groups.values())


def load_record(exp_dir: Path | Layout) -> Record:
    """Read ``plan.json``, ``status.json`` and every planned evaluation whose key matches.

    An evaluation of a pair that is not ``ok`` in this run's status is left out even if a
    file with the planned key exists (the pair failed after it was written).
    """
    layout = exp_dir if isinstance(exp_dir, Layout) else Layout(Path(exp_dir))
    plan = read_plan(layout)
    status = read_status(layout)
    evaluations = []
    for pair in plan.pairs:
        st = status.get((pair.dataset, pair.model, pair.seed))
        if st is None or not st.ok:
            continue
        failed = {e.test for e in st.evals if e.status == "failed"}
        for planned in pair.evals:
            if planned.test in failed:
                continue
            data = planned_metrics(layout, planned)
            if data is not None:
                evaluations.append(
                    Evaluation(
                        pair.dataset,
                        pair.model,
                        planned.test,
                        layout.resolve(planned.dir),
                        data,
                        planned.dir,
                        pair.seed,
                    )
                )
    return Record(layout, plan, status, evaluations)


def fit_summary(layout: Layout, pair: PlannedPair) -> dict[str, Any] | None:
    """The planned run folder's ``fit.json`` (None for ensembles and runs not finished)."""
    if not pair.run_dir:
        return None
    path = layout.resolve(pair.run_dir) / FIT_JSON
    return read_json(path) if path.is_file() else None


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


def summary_row(record: Record, pair: PlannedPair) -> dict[str, Any]:
    """One summary row: status, own-test metrics (plain and TTA, with CIs) and training facts."""
    st = record.pair_status(pair)
    evaluation = record.evaluation(pair.dataset, pair.model, pair.dataset, pair.seed)
    fit = fit_summary(record.layout, pair) if st.ok else None
    data = evaluation.data if evaluation else {}
    plain = data.get("plain")
    tta = data.get("tta")
    return {
        "dataset": pair.dataset,
        "model": pair.model,
        "status": st.status,
        "error": st.error,
        "n_test": (plain or {}).get("n"),
        **_metric_fields(plain, ""),
        **_metric_fields(tta, "tta_"),
        "tta_views": data.get("tta_views"),
        "train_seconds": (fit or {}).get("train_seconds"),
        "epochs": (fit or {}).get("epochs_run"),
        "best_epoch": (fit or {}).get("best_epoch"),
        "stopped_early": (fit or {}).get("stopped_early"),
        "training_notes": (fit or {}).get("notes") or [],  # report only (not a CSV column)
        "params": _params(record.layout, pair, fit),
        "throughput_ips": data.get("throughput_ips"),
        "reused": st.status == "reused",
        "produced_by": produced_by_text(st.produced_by) if st.status == "reused" else None,
        "run_dir": pair.run_dir,
    }


def _params(layout: Layout, pair: PlannedPair, fit: Mapping[str, Any] | None) -> int | None:
    """The parameter count from fit.json, else from meta.json's ``extra`` block."""
    if fit and fit.get("params") is not None:
        return int(fit["params"])
    if not pair.run_dir or not (layout.resolve(pair.run_dir) / META).is_file():
        return None
    meta = read_json(layout.resolve(pair.run_dir) / META)
    extra = meta.get("extra") if isinstance(meta, dict) else None
    value = (extra or {}).get("params") if isinstance(extra, dict) else None
    return int(value) if value is not None else None


def seed_stats(first_seed: int | None, results: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """``SEED_FIELDS`` of one pair on one test set from ``(seed, metrics.json data or None)``
    per seed: the mean and sample std across the seeds with a result, and which they are."""
    scored = [(seed, data) for seed, data in results if data and data.get("plain")]
    out: dict[str, Any] = {
        "seed": first_seed,
        "n_seeds": len(scored),
        "seeds": [seed for seed, _ in scored],
    }
    for prefix, block in (("", "plain"), ("tta_", "tta")):
        for metric in METRICS:
            values = [
                float(v)
                for _, data in scored
                if (v := (data.get(block) or {}).get(metric)) is not None
            ]
            out[f"{prefix}{metric}_mean"], out[f"{prefix}{metric}_std"] = mean_std(values)
    return out


def _combined_status(statuses: Sequence[str]) -> str:
    """One status for a pair trained with several seeds: theirs when they agree, else the
    first that needs attention (failed, skipped, pending), else ``trained`` or ``computed``."""
    distinct = list(dict.fromkeys(statuses))
    if len(distinct) == 1:
        return distinct[0]
    for status in ("failed", "skipped", "pending", "trained", "computed"):
        if status in distinct:
            return status
    return distinct[0]


def seed_summary_row(record: Record, pairs: Sequence[PlannedPair]) -> dict[str, Any]:
    """One summary row of a (dataset, model) trained with several seeds (``pairs``, one per
    seed): the first seed's row (one run's numbers, intervals and training facts) with the
    combined status, every seed's error, and ``SEED_FIELDS`` on its own test set."""
    first = pairs[0]
    row = summary_row(record, first)
    statuses = [record.pair_status(p) for p in pairs]
    row["status"] = _combined_status([st.status for st in statuses])
    errors = [
        f"seed {p.seed}: {st.error}" for p, st in zip(pairs, statuses, strict=True) if st.error
    ]
    row["error"] = "; ".join(errors) or None
    row["reused"] = all(st.status == "reused" for st in statuses)
    row["produced_by"] = produced_by_text(statuses[0].produced_by) if row["reused"] else None
    results = []
    for p in pairs:
        e = record.evaluation(p.dataset, p.model, p.dataset, p.seed)
        results.append((p.seed, e.data if e else None))
    row.update(seed_stats(first.seed, results))
    return row


def collect_summary(exp_dir: Path | Record) -> list[dict[str, Any]]:
    """One row per planned (dataset, model) pair, ensembles and failed pairs included, in the
    plan's order. Metrics are from the pair's own test set; a failed pair has its error and no
    metrics (an evaluation-only dataset has no own test: its models are scored in the matrix).
    Keys are ``SUMMARY_FIELDS``; missing values are None. With several training seeds, one row
    per (dataset, model) with ``SEED_FIELDS`` too (``seed_summary_row``).
    """
    record = exp_dir if isinstance(exp_dir, Record) else load_record(Path(exp_dir))
    if record.multi_seed:
        return [seed_summary_row(record, group) for group in record.pair_groups()]
    return [summary_row(record, p) for p in record.plan.pairs]


def _eval_fields(e: Evaluation | None) -> dict[str, Any]:
    data = e.data if e else {}
    plain, tta = data.get("plain"), data.get("tta")
    return {
        "n_test": (plain or {}).get("n"),
        **_metric_fields(plain, ""),
        **_metric_fields(tta, "tta_"),
        "tta_views": data.get("tta_views"),
    }


def collect_per_seed(exp_dir: Path | Record) -> list[dict[str, Any]]:
    """One row per planned (pair, seed, test set) in plan order (``PER_SEED_FIELDS``): every
    seed's own numbers with its bootstrap intervals; a failed seed's rows have no numbers."""
    record = exp_dir if isinstance(exp_dir, Record) else load_record(Path(exp_dir))
    rows = []
    for pair in record.plan.pairs:
        st = record.pair_status(pair)
        fit = fit_summary(record.layout, pair) if st.ok else None
        common = {
            "dataset": pair.dataset,
            "model": pair.model,
            "seed": pair.seed,
            "status": st.status,
            "train_seconds": (fit or {}).get("train_seconds"),
            "epochs": (fit or {}).get("epochs_run"),
            "best_epoch": (fit or {}).get("best_epoch"),
            "reused": st.status == "reused",
            "run_dir": pair.run_dir,
        }
        planned_evals: list[PlannedEval | None] = [*pair.evals] or [None]
        for planned in planned_evals:
            test = planned.test if planned else None
            e = record.evaluation(pair.dataset, pair.model, test, pair.seed) if test else None
            rows.append(
                {
                    **common,
                    "test_dataset": test,
                    **_eval_fields(e),
                    "eval_dir": planned.dir if planned else None,
                }
            )
    return rows


def collect_across_seeds(exp_dir: Path | Record) -> list[dict[str, Any]]:
    """One row per planned (dataset, model, test set) (``ACROSS_SEEDS_FIELDS``): the mean and
    std across seeds of every metric, and the first seed's numbers with their intervals."""
    record = exp_dir if isinstance(exp_dir, Record) else load_record(Path(exp_dir))
    rows = []
    for group in record.pair_groups():
        first = group[0]
        tests = list(dict.fromkeys(e.test for p in group for e in p.evals))
        for test in tests:
            per_seed = [(p, record.evaluation(p.dataset, p.model, test, p.seed)) for p in group]
            stats = seed_stats(first.seed, [(p.seed, e.data if e else None) for p, e in per_seed])
            rows.append(
                {
                    "dataset": first.dataset,
                    "model": first.model,
                    "test_dataset": test,
                    **stats,
                    **_eval_fields(per_seed[0][1]),
                }
            )
    return rows


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


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def format_markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as a GitHub-flavoured Markdown table, with 95% confidence intervals."""
    cols = _columns(rows, with_ci=True)
    lines = [
        "| " + " | ".join(c.header for c in cols) + " |",
        "|" + "|".join("---:" if c.right else ":---" for c in cols) + "|",
    ]
    for values in _cells(rows, cols):
        lines.append("| " + " | ".join(_md_escape(v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    rows: Sequence[Mapping[str, Any]], exp_dir: Path | Layout, *, record: Record | None = None
) -> tuple[Path, Path]:
    """Write ``summary.csv`` (full precision) and ``summary.md`` (formatted) in the experiment
    folder, and the paired comparisons of its models (``comparisons.csv`` and a section of
    ``summary.md``; ``record`` saves reading the experiment again when the caller has it)."""
    layout = exp_dir if isinstance(exp_dir, Layout) else Layout(Path(exp_dir))
    if record is None and layout.plan.is_file():
        record = load_record(layout)
    csv_path = atomic_write(layout.summary_csv, summary_csv(rows))
    multi = is_multi_seed(rows)
    intro = (
        "Metrics on each training dataset's own test split; `TTA` columns use test-time "
        "augmentation. Confidence intervals are 95% bootstrap intervals."
    )
    if multi:
        seeds = (record.plan.seeds if record else None) or sorted(
            {s for r in rows for s in (r.get("seeds") or [])}
        )
        intro = (
            f"Every pair was trained with {len(seeds)} seeds ({', '.join(map(str, seeds))}). "
            "Metrics on each training dataset's own test split: `mean ± sd` is the mean across "
            "the seeds with its sample standard deviation in percentage points (`seeds`: how "
            "many gave a result); `TTA` columns use test-time augmentation. The 95% bootstrap "
            f"intervals, training time and epochs are one run's, seed {rows[0].get('seed')}'s. "
            "An ensemble is built per seed, from that seed's models. "
            "Every seed's numbers: `per_seed.csv`; mean and sd on every test set: "
            "`across_seeds.csv`."
        )
    notes = ["# Summary", "", intro, "", format_markdown_table(rows)]
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        notes += ["", "## Failed pairs", ""]
        notes += [
            f"- {r['dataset']} / {r['model']}: {_md_escape(str(r.get('error')))}" for r in failed
        ]
        notes.append("")
    reused = [r for r in rows if r.get("reused")]
    if multi and record is not None:  # every seed's run that was reused
        reused = [
            {
                "dataset": p.dataset,
                "model": f"{p.model} (seed {p.seed})",
                "produced_by": produced_by_text(st.produced_by),
            }
            for p in record.plan.pairs
            if (st := record.pair_status(p)).status == "reused"
        ]
    if reused:
        notes += ["", "## Reused runs", ""]
        notes += [
            f"- {r['dataset']} / {r['model']}: {_md_escape(str(r.get('produced_by')))}"
            for r in reused
        ]
        notes.append("")
    if multi and record is not None:
        across = collect_across_seeds(record)
        atomic_write(layout.per_seed_csv, rows_csv(collect_per_seed(record), PER_SEED_FIELDS))
        atomic_write(layout.across_seeds_csv, rows_csv(across, ACROSS_SEEDS_FIELDS))
        notes += ["", format_across_seeds_markdown(across)]
    else:  # never an earlier plan's seeds
        layout.per_seed_csv.unlink(missing_ok=True)
        layout.across_seeds_csv.unlink(missing_ok=True)
    if record is not None:
        comparisons = collect_comparisons(record)
        comparisons_path = layout.comparisons_csv
        if comparisons:
            atomic_write(comparisons_path, comparisons_csv(comparisons))
            notes += ["", format_comparisons_markdown(comparisons)]
        else:
            comparisons_path.unlink(missing_ok=True)  # never an earlier plan's comparisons
    md_path = atomic_write(layout.summary_md, "\n".join(notes))
    return csv_path, md_path


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
            _md_escape(str(r["dataset"])),
            _md_escape(str(r["model"])),
            _md_escape(str(r["test_dataset"])),
            fmt_plain(r.get("n_seeds")),
            fmt_mean_std(r.get(f"{p}accuracy_mean"), r.get(f"{p}accuracy_std")),
            fmt_ci(r.get(f"{p}accuracy_ci_low"), r.get(f"{p}accuracy_ci_high")),
            fmt_mean_std(r.get(f"{p}balanced_accuracy_mean"), r.get(f"{p}balanced_accuracy_std")),
            fmt_mean_std(r.get(f"{p}macro_f1_mean"), r.get(f"{p}macro_f1_std")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- paired comparisons

# In the experiment folder, beside summary.csv.

# Columns of comparisons.csv, in order. ``difference`` is accuracy A minus accuracy B (a
# fraction); ``b01``: images only B gets right, ``b10``: images only A gets right; ``variant_*``
# says which predictions were compared (``tta`` or ``plain``, the headline of the summary).
COMPARISON_FIELDS: tuple[str, ...] = (
    "dataset",
    "test_dataset",
    "model_a",
    "model_b",
    "variant_a",
    "variant_b",
    "n",
    "accuracy_a",
    "accuracy_b",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "b01",
    "b10",
    "p_value",
    "verdict",
    "note",
    "p_holm",
    "holm",
)
# ``p_holm``: the verdict's p-value after Holm's correction over every comparison of the
# experiment that has one (``compare.holm``); ``holm``: True when the verdict's difference
# survives that correction (``p_holm`` at most ``compare.ALPHA``). Empty for a pair not compared.
# Several training seeds: the columns comparisons.csv gains. The row's other numbers
# (accuracies, interval, counts, ``p_value``) are one run's, the first seed's (``seed``);
# ``difference_mean``/``difference_std`` are the mean and sample std across the ``n_seeds``
# seeds ``seeds`` of the accuracy difference A - B, seed s of A against seed s of B. The
# verdict is then every seed's (``compare.across_seeds_test``): ``p_value_seeds`` =
# max(``p_seeds``, the t-test over the per-seed differences; ``p_images``, the largest per-seed
# McNemar p), and ``p_holm`` corrects ``p_value_seeds``.
COMPARISON_SEED_FIELDS: tuple[str, ...] = (
    "seed",
    "n_seeds",
    "seeds",
    "difference_mean",
    "difference_std",
    "p_seeds",
    "p_images",
    "p_value_seeds",
)
COMPARISON_SEED = 0  # the paired bootstrap's seed, so a report rebuilds the same intervals
DEFAULT_BOOTSTRAP = 1000  # resamples when the metrics do not record how many were used


@dataclass(frozen=True)
class Correctness:
    """The headline predictions of one evaluation, image by image."""

    keys: list[str]  # (M,) image keys of the scored images
    correct: Any  # (M,) bool numpy array: prediction equals the true class
    variant: str  # "tta" or "plain"


def headline_correctness(e: Evaluation) -> Correctness | str:
    """Right-or-wrong per image of the evaluation's headline predictions (TTA when its metrics
    have a TTA block, as in the summary), read from its ``probs.npz``; or why they cannot be.

    The flags must reproduce the recorded accuracy and image count, so a ``probs.npz`` that
    does not belong to the planned ``metrics.json`` is never compared.
    """
    from ferlab.evaluation.evaluate import load_result

    # Named inside the experiment folder: a moved or copied experiment gives the same report.
    shown = Path(e.relative or e.directory) / PROBS
    if not (e.directory / PROBS).is_file():
        return f"no per-image predictions ({shown}); rerun the evaluation"
    use_tta = bool(e.data.get("tta"))
    variant = "tta" if use_tta else "plain"
    try:
        result, keys = load_result(e.directory)
    except ValueError as err:
        return str(err)
    probs = result.probs_tta if use_tta else result.probs_plain
    if probs is None:
        return f"{shown} has no TTA probabilities although metrics.json has TTA"
    if probs.ndim != 2 or probs.shape[0] != result.y_true.shape[0]:
        return (
            f"{shown} is inconsistent: probabilities of shape {probs.shape} for "
            f"{result.y_true.shape[0]} labels; rerun the evaluation"
        )
    correct = probs.argmax(axis=1) == result.y_true  # (M,)
    block = e.result(use_tta) or {}
    n, accuracy = block.get("n"), block.get("accuracy")
    m = int(correct.shape[0])
    consistent = (
        len(keys) == result.kept_mask.shape[0]
        and int(result.kept_mask.sum()) == m
        and n == m
        and m > 0
        and accuracy is not None
        and abs(float(correct.mean()) - float(accuracy)) <= 1e-9
    )
    if not consistent:
        return (
            f"{shown} does not match its metrics.json ({m} scored images against "
            f"n={n}, accuracy {float(correct.mean()) if m else 0.0:.4f} against {accuracy}); "
            "rerun the evaluation"
        )
    kept = [k for k, keep in zip(keys, result.kept_mask.tolist(), strict=True) if keep]
    return Correctness(kept, correct, variant)


def _bootstrap_count(evaluations: Sequence[Evaluation]) -> int:
    counts = [
        int(block["bootstrap"])
        for e in evaluations
        if (block := e.result(bool(e.data.get("tta")))) and block.get("bootstrap") is not None
    ]
    return max(counts) if counts else DEFAULT_BOOTSTRAP


def _correctness(
    evaluations: Sequence[Evaluation],
) -> tuple[dict[str, tuple[list[str], Any]], dict[str, str], dict[str, str]]:
    """Per model: its headline flags ``(keys, correct)``, why it has none, and its variant."""
    correct: dict[str, tuple[list[str], Any]] = {}
    unavailable: dict[str, str] = {}
    variants: dict[str, str] = {}
    for e in evaluations:
        got = headline_correctness(e)
        if isinstance(got, str):
            unavailable[e.model] = got
        else:
            correct[e.model] = (got.keys, got.correct)
            variants[e.model] = got.variant
    return correct, unavailable, variants


def collect_comparisons(record: Record) -> list[dict[str, Any]]:
    """One row per unordered pair of planned models trained on the same dataset and scored on
    the same test split (keys ``COMPARISON_FIELDS``), own test split first, models in plan
    order. Only evaluations the record holds count (planned, of pairs that completed, with the
    planned key); a pair that cannot be compared (no per-image predictions, different test
    images) has a row with the reason in ``note`` and no numbers.

    With several training seeds a row holds the first seed's comparison (its paired interval
    and McNemar p), with ``COMPARISON_SEED_FIELDS``: the mean and std across seeds of the
    accuracy difference, seed s of A against seed s of B, and the verdict of every seed
    together (``compare.across_seeds_test``), not the first seed's alone.

    Every row with a verdict p-value gets ``p_holm`` and ``holm``: Holm's correction over all
    the comparisons of the experiment, the family a reader scans for a "better".
    """
    if record.comparison_cache is not None:
        return record.comparison_cache
    from ferlab.evaluation.compare import (
        across_seeds_test,
        compare_pairs,
        holm,
        seed_comparisons,
        seed_verdict,
    )

    multi = record.multi_seed
    fields = COMPARISON_FIELDS + COMPARISON_SEED_FIELDS if multi else COMPARISON_FIELDS
    first_seed = record.first_seed
    by_seed: dict[tuple[str, str, int | None], list[Evaluation]] = {}
    for e in record.evaluations:
        by_seed.setdefault((e.train_dataset, e.test_dataset, e.seed), []).append(e)
    groups: dict[tuple[str, str], list[Evaluation]] = {}
    for e in record.evaluations:
        if e.seed == first_seed:
            groups.setdefault((e.train_dataset, e.test_dataset), []).append(e)
    test_order = {t: i for i, t in enumerate(record.plan.test_sets)}
    ordered = sorted(
        groups,
        key=lambda g: (
            record.plan.train_datasets.index(g[0]) if g[0] in record.plan.train_datasets else 0,
            g[1] != g[0],
            test_order.get(g[1], len(test_order)),
        ),
    )
    rows: list[dict[str, Any]] = []
    for dataset, test in ordered:
        evaluations = groups[(dataset, test)]
        if len(evaluations) < 2:
            continue
        correct, unavailable, variants = _correctness(evaluations)
        pairs = compare_pairs(
            correct,
            dataset=dataset,
            test=test,
            n_boot=_bootstrap_count(evaluations),
            seed=COMPARISON_SEED,
            unavailable=unavailable,
            order=[e.model for e in evaluations],
        )
        spread: dict[tuple[str, str], list[tuple[float, float]]] = {}
        used: dict[tuple[str, str], list[Any]] = {}
        if multi:
            for seed in record.plan.seeds:
                flags = (
                    correct
                    if seed == first_seed
                    else _correctness(by_seed.get((dataset, test, seed), []))[0]
                )
                for models, values in seed_comparisons([flags]).items():
                    spread.setdefault(models, []).extend(values)
                    used.setdefault(models, []).append(seed)
        for row in pairs:
            row["variant_a"] = variants.get(row["model_a"])
            row["variant_b"] = variants.get(row["model_b"])
            if multi:
                models = (row["model_a"], row["model_b"])
                values = spread.get(models, [])
                diffs = [d for d, _ in values]
                row["seed"] = first_seed
                row["n_seeds"] = len(values)
                row["seeds"] = used.get(models, [])
                row["difference_mean"], row["difference_std"] = mean_std(diffs)
                if row.get("note") is None and values:
                    test_ = across_seeds_test(diffs, [p for _, p in values])
                    row["p_seeds"], row["p_images"] = test_["p_seeds"], test_["p_images"]
                    row["p_value_seeds"] = test_["p_value"]
                    row["verdict"] = seed_verdict(
                        row["model_a"],
                        row["model_b"],
                        float(row["difference_mean"]),
                        test_["p_value"],
                        len(values),
                    )
            rows.append({k: row.get(k) for k in fields})
    tested = [r for r in rows if verdict_p(r) is not None]
    adjusted, survives = holm([float(verdict_p(r)) for r in tested])  # type: ignore[arg-type]
    for r, p_adj, ok in zip(tested, adjusted, survives, strict=True):
        r["p_holm"], r["holm"] = p_adj, ok
    record.comparison_cache = rows
    return rows


def verdict_p(row: Mapping[str, Any]) -> float | None:
    """The p-value a comparison's verdict rests on: McNemar's (one seed) or the test across
    seeds (``p_value_seeds``, several); None for a pair not compared or not tested."""
    if row.get("note") not in (None, ""):
        return None
    value = row.get("p_value_seeds") if "n_seeds" in row else row.get("p_value")
    return None if value is None or value == "" else float(value)


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


def comparison_rows(record: Record) -> list[dict[str, Any]]:
    """The comparisons formatted for display (the summary's Markdown and the HTML report).

    Each dict: ``dataset, test, model_a, model_b`` (with `` (TTA)`` when TTA predictions were
    compared), ``n, acc_a, acc_b, diff`` (percentage points, signed), ``ci``, ``only_a``,
    ``only_b``, ``p``, ``verdict``, ``note`` (why a pair was not compared, else None), and the
    flags ``compared``, ``significant`` (the verdict's p below ``ALPHA``) and ``holm`` (it
    survives Holm's correction over all the comparisons), ``p_holm`` (formatted). With several
    training seeds also ``seed`` (whose run the other numbers are), ``n_seeds``, ``diff_seeds``
    (the difference's mean ± std across seeds, in percentage points) and ``p_seeds`` (the
    verdict's p across seeds); else these are None.
    """
    return _display_comparisons(collect_comparisons(record))


def fmt_points_std(mean: Any, std: Any) -> str:
    """A mean difference across seeds with its std, in percentage points (``+1.2 ± 0.8``)."""
    if mean is None or mean == "":
        return "-"
    if std is None or std == "":
        return fmt_points(mean)
    return f"{fmt_points(mean)} ± {100 * float(std):.1f}"


def _display_comparisons(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    from ferlab.evaluation.compare import ALPHA

    def name(model: Any, variant: Any) -> str:
        return f"{model} (TTA)" if variant == "tta" else str(model)

    out = []
    for r in rows:
        compared = r.get("note") is None
        low, high = r.get("difference_ci_low"), r.get("difference_ci_high")
        multi = "n_seeds" in r
        p_verdict = verdict_p(r)
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
                "significant": p_verdict is not None and p_verdict < ALPHA,
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
    from ferlab.evaluation.compare import ALPHA

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
    from ferlab.evaluation.compare import ALPHA

    display = _display_comparisons(rows)
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
            lines.append("| " + " | ".join(_md_escape(str(cells[k])) for k in keys) + " |")
        lines.append("")
        note = holm_note(display)
        if note:
            lines += [note, ""]
    skipped = [d for d in display if not d["compared"]]
    if skipped:
        lines += ["Not compared:", ""]
        lines += [
            f"- {_md_escape(d['dataset'])} on {_md_escape(d['test'])}: {_md_escape(d['model_a'])} "
            f"vs {_md_escape(d['model_b'])}: {_md_escape(str(d['note']))}"
            for d in skipped
        ]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- cross-dataset


@dataclass
class CrossDataset:
    """A train x test matrix of one metric.

    ``values`` maps (row name, test set) to a fraction; a row name is ``"<dataset> / <model>"``
    and ``rows`` gives the (dataset, model) behind each row name, in order. With several
    training seeds a value is the mean across the seeds with a result (``counts`` of them,
    ``seeds`` the plan's); with one seed ``seeds`` is empty.
    """

    metric: str
    use_tta: bool
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    train_names: list[str] = field(default_factory=list)
    test_names: list[str] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)
    tta_used: bool = False  # at least one cell is a TTA result
    seeds: list[Any] = field(default_factory=list)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def fewer_seeds(self) -> bool:
        """Some cell averages fewer seeds than the plan has (a seed failed there)."""
        return any(n < len(self.seeds) for n in self.counts.values())

    def __iter__(self) -> Any:  # unpack as (values, train_names, test_names)
        return iter((self.values, self.train_names, self.test_names))


def row_name(dataset: str, model: str) -> str:
    """How a (trained dataset, model) pair is named in the cross-dataset matrix."""
    return f"{dataset} / {model}"


def collect_cross_dataset(
    exp_dir: Path | Record, metric: str = "accuracy", use_tta: bool = True
) -> CrossDataset:
    """The planned cross-dataset matrix of ``metric`` (TTA where measured): one row per planned
    pair that completed, one column per planned test set; a cell is blank unless its planned
    evaluation produced a result in this plan. With several training seeds a cell is the mean
    across the seeds whose evaluation produced a result."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(METRICS)}")
    record = exp_dir if isinstance(exp_dir, Record) else load_record(Path(exp_dir))
    out = CrossDataset(metric=metric, use_tta=use_tta)
    out.rows = list(
        dict.fromkeys(
            (p.dataset, p.model) for p in record.plan.pairs if record.pair_status(p).ok and p.evals
        )
    )
    out.train_names = [row_name(d, m) for d, m in out.rows]
    out.test_names = record.plan.test_sets
    out.seeds = list(record.plan.seeds) if record.multi_seed else []
    cells: dict[tuple[str, str], list[float]] = {}
    for e in record.evaluations:
        block = e.result(use_tta)
        if block is None or block.get(metric) is None:
            continue
        cells.setdefault((row_name(e.train_dataset, e.model), e.test_dataset), []).append(
            float(block[metric])
        )
        out.tta_used = out.tta_used or (use_tta and bool(e.data.get("tta")))
    for cell, values in cells.items():
        mean = values[0] if len(values) == 1 else mean_std(values)[0]
        assert mean is not None
        out.values[cell] = mean
        out.counts[cell] = len(values)
    return out


def collect_dropped_labels(exp_dir: Path | Record) -> list[dict[str, Any]]:
    """Planned evaluations scored on a subset of classes: which labels were left out, how many
    images."""
    record = exp_dir if isinstance(exp_dir, Record) else load_record(Path(exp_dir))
    out = []
    for e in record.first_seed_evaluations():  # the labels, not the seed, decide what is left out
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


def write_cross_dataset(exp_dir: Path | Record) -> list[Path]:
    """Write ``cross_dataset.csv`` (accuracy), ``cross_dataset_evaluation.png`` and the
    balanced-accuracy heatmap; returns the files written (none when nothing was evaluated).
    With several training seeds they hold the means across seeds (the heatmaps say so)."""
    from ferlab.reporting.plots import plot_cross_dataset

    record = exp_dir if isinstance(exp_dir, Record) else load_record(Path(exp_dir))
    layout = record.layout
    written: list[Path] = []
    for metric in ("accuracy", "balanced_accuracy"):
        cross = collect_cross_dataset(record, metric=metric, use_tta=True)
        if not cross.values:
            layout.cross_png(metric).unlink(missing_ok=True)  # never an earlier plan's picture
            continue
        if metric == "accuracy":
            written.append(atomic_write(layout.cross_csv, cross_dataset_csv(cross)))
        suffix = " (TTA where measured)" if cross.tta_used else ""
        if cross.seeds:
            suffix = f", mean over {len(cross.seeds)} seeds{suffix}"
        title = f"Cross-dataset {METRIC_TITLES[metric]}{suffix}"
        written.append(
            plot_cross_dataset(
                cross.values,
                cross.train_names,
                cross.test_names,
                layout.cross_png(metric),
                title,
                METRIC_TITLES[metric],
            )
        )
    return written
