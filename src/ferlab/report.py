"""An experiment's report files, rebuilt from its folder alone: read the record
(``ferlab.record.reader``), compute its numbers (``ferlab.evaluation.analysis``), format them
(``ferlab.reporting``) and write ``summary.csv``, ``summary.md``, ``comparisons.csv``, the
per-seed files, the cross-dataset matrix with its heatmaps and ``report.html``. No model is
loaded and nothing is retrained (``ferlab report DIR``, and the end of every ``ferlab run``). So ``ferlab report DIR`` rebuilds the files a run wrote, and a file an earlier
plan left (its comparisons, its seeds, its heatmap) is removed rather than shown as current.

With several training seeds (``seeds:``) ``per_seed.csv`` keeps every seed's numbers and
``across_seeds.csv`` the mean and std on every test set; the cross-dataset matrix holds means
across seeds. With one seed every file is as before seeds existed, with the Holm columns added
to comparisons.csv.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ferlab.evaluation.analysis import (
    METRIC_NAMES,
    collect_across_seeds,
    collect_comparisons,
    collect_cross_dataset,
    collect_dropped_labels,
    collect_per_seed,
    collect_summary,
    summary_row,
)
from ferlab.layout import Layout, ReportInputError, atomic_write
from ferlab.record import produced_by_text, unplanned_folders
from ferlab.record.reader import ExperimentRecord, load_record
from ferlab.reporting.html import (
    ENVIRONMENT_KEYS,
    best_rows,
    calibration_entry,
    data_sections,
    evaluation_row,
    leakage_rows,
    log_tail,
    mean_row,
    per_class_table,
    read_config,
    read_environment,
    render_pair_plots,
    render_report,
    reused_entries,
)
from ferlab.reporting.plots import data_uri, plot_cross_dataset
from ferlab.reporting.tables import (
    ACROSS_SEEDS_FIELDS,
    METRIC_TITLES,
    PER_SEED_FIELDS,
    comparisons_csv,
    cross_dataset_csv,
    display_comparisons,
    format_across_seeds_markdown,
    format_comparisons_markdown,
    format_markdown_table,
    is_multi_seed,
    md_escape,
    rows_csv,
    summary_csv,
)
from ferlab.reporting.tuning import tuning_section


def write_summary(
    rows: Sequence[Mapping[str, Any]],
    exp_dir: Path | Layout,
    *,
    record: ExperimentRecord | None = None,
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
            f"- {r['dataset']} / {r['model']}: {md_escape(str(r.get('error')))}" for r in failed
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
            f"- {r['dataset']} / {r['model']}: {md_escape(str(r.get('produced_by')))}"
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


def write_cross_dataset(exp_dir: Path | ExperimentRecord) -> list[Path]:
    """Write ``cross_dataset.csv`` (accuracy), ``cross_dataset_evaluation.png`` and the
    balanced-accuracy heatmap; returns the files written (none when nothing was evaluated).
    With several training seeds they hold the means across seeds (the heatmaps say so)."""
    record = exp_dir if isinstance(exp_dir, ExperimentRecord) else load_record(Path(exp_dir))
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


def build_context(exp_dir: Path) -> dict[str, Any]:
    """Regenerate tables and plots and gather everything the template shows."""
    record = load_record(Path(exp_dir))
    layout = record.layout
    rows = collect_summary(record)
    write_summary(rows, layout, record=record)
    cross_files = {p.name: p for p in write_cross_dataset(record)}
    test_order = {t: i for i, t in enumerate(record.plan.test_sets)}
    multi = record.multi_seed
    groups = {(g[0].dataset, g[0].model): g for g in record.pair_groups()}
    across: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in collect_across_seeds(record) if multi else []:
        across.setdefault((r["dataset"], r["model"]), []).append(r)

    pairs = []
    calibration = []
    for i, row in enumerate(rows):
        if row["status"] in ("failed", "skipped", "pending"):
            continue
        dataset, model = str(row["dataset"]), str(row["model"])
        evaluation = record.evaluation(dataset, model, dataset)
        plots = render_pair_plots(layout, row, evaluation)
        cal = calibration_entry(row, evaluation)
        if cal is not None:
            calibration.append(cal)
        others = sorted(
            record.evaluations_of(dataset, model),
            key=lambda e: (e.test_dataset != dataset, test_order.get(e.test_dataset, 0)),
        )
        evaluations = [evaluation_row(e) for e in others]
        seed_rows: list[dict[str, Any]] = []
        if multi:  # every test set's mean across seeds, and every seed's own run
            means = {r["test_dataset"]: r for r in across.get((dataset, model), [])}
            evaluations = [mean_row(means[e.test_dataset], e) for e in others]
            seed_rows = [summary_row(record, p) for p in groups[(dataset, model)]]
            for seed_row, p in zip(seed_rows, groups[(dataset, model)], strict=True):
                seed_row["seed"] = p.seed
        pairs.append(
            {
                "anchor": f"pair-{i}",
                "row": row,
                "curves": data_uri(plots["curves"]) if "curves" in plots else None,
                "cm": data_uri(plots["cm"]) if "cm" in plots else None,
                "cm_tta": data_uri(plots["cm_tta"]) if "cm_tta" in plots else None,
                "per_class": per_class_table(evaluation),
                "has_tta": bool(evaluation and evaluation.data.get("tta")),
                "evaluations": evaluations,
                "seed_rows": seed_rows,
            }
        )

    config_text, config = read_config(layout)
    environment = read_environment(layout)
    log_name, tail = log_tail(layout)
    started = environment.get("started") or _dt.datetime.fromtimestamp(
        layout.root.stat().st_mtime
    ).isoformat(timespec="seconds")
    failed = [r for r in rows if r["status"] == "failed"]
    return {
        "name": config.get("name") or record.plan.name or layout.root.name,
        "exp_dir": str(layout.root),
        "started": started,
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "environment": [(k, environment[k]) for k in ENVIRONMENT_KEYS if k in environment]
        + [(k, v) for k, v in environment.items() if k not in ENVIRONMENT_KEYS],
        "config_text": config_text,
        "log_name": log_name,
        "log_tail": tail,
        "rows": rows,
        "best": best_rows(rows),
        "any_tta": any(r.get("tta_accuracy") is not None for r in rows),
        "counts": {
            "pairs": len(rows),
            "ok": sum(r["status"] in ("trained", "reused", "computed") for r in rows),
            "failed": len(failed),
        },
        "failed": failed,
        "cross_accuracy": data_uri(cross_files["cross_dataset_evaluation.png"])
        if "cross_dataset_evaluation.png" in cross_files
        else None,
        "cross_balanced": data_uri(cross_files["cross_dataset_evaluation_balanced_accuracy.png"])
        if "cross_dataset_evaluation_balanced_accuracy.png" in cross_files
        else None,
        "eval_only": [d.name for d in record.plan.datasets if d.use == "test"],
        "dropped": collect_dropped_labels(record),
        "leakage": leakage_rows(record),
        "pairs": pairs,
        "calibration": calibration,
        "comparisons": comparison_rows(record),
        "tuning": tuning_section(layout, {p.run_dir for p in record.plan.pairs if p.run_dir}),
        "data": data_sections(record),
        "metrics": METRIC_NAMES,
        "seeds": list(record.plan.seeds) if multi else [],
        "first_seed": record.first_seed,
        "provenance": record.plan.provenance,
        "reused": reused_entries(record),
        "unplanned": unplanned_folders(layout, record.plan),
    }


def comparison_rows(record: ExperimentRecord) -> list[dict[str, Any]]:
    """The record's paired comparisons (``collect_comparisons``) formatted for display
    (``display_comparisons``)."""
    return display_comparisons(collect_comparisons(record))


def build_report(exp_dir: Path) -> Path:
    """Rebuild plots and tables from the experiment's plan and write ``<exp_dir>/report.html``."""
    layout = Layout(Path(exp_dir))
    if not layout.root.is_dir():
        raise FileNotFoundError(
            f"experiment folder {layout.root} does not exist; pass the folder `ferlab run` "
            "wrote (it holds plan.json, config.yaml, runs/ and eval/)"
        )
    if not layout.looks_like_experiment():
        raise ReportInputError(
            f"{layout.root} does not look like an experiment folder: it has no plan.json, "
            "config.yaml, status.json or runs/. Pass the folder `ferlab run` printed, e.g. "
            "runs/<experiment name>."
        )
    html = render_report(build_context(layout.root))
    return atomic_write(layout.report, html)
