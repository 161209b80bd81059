"""Writes the experiment's summary files: ``summary.csv``, ``summary.md``, ``comparisons.csv``,
the per-seed files and the cross-dataset matrix with its heatmaps.

The rows are computed by ``ferlab.evaluation.analysis`` from the experiment's record
(``ferlab.record.reader``) and formatted by ``ferlab.reporting.tables``; this module only puts
them in files. So ``ferlab report DIR`` rebuilds the files a run wrote, and a file an earlier
plan left (its comparisons, its seeds, its heatmap) is removed rather than shown as current.

With several training seeds (``seeds:``) ``per_seed.csv`` keeps every seed's numbers and
``across_seeds.csv`` the mean and std on every test set; the cross-dataset matrix holds means
across seeds. With one seed every file is as before seeds existed, with the Holm columns added
to comparisons.csv.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ferlab.evaluation.analysis import (
    collect_across_seeds,
    collect_comparisons,
    collect_cross_dataset,
    collect_per_seed,
)
from ferlab.layout import Layout, atomic_write
from ferlab.record import produced_by_text
from ferlab.record.reader import ExperimentRecord, load_record
from ferlab.reporting.plots import plot_cross_dataset
from ferlab.reporting.tables import (
    ACROSS_SEEDS_FIELDS,
    METRIC_TITLES,
    PER_SEED_FIELDS,
    comparisons_csv,
    cross_dataset_csv,
    format_across_seeds_markdown,
    format_comparisons_markdown,
    format_markdown_table,
    is_multi_seed,
    md_escape,
    rows_csv,
    summary_csv,
)


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
