"""The HTML report's pieces: per-pair plots and tables, the data, leakage, reuse and calibration
sections, and the page itself (``render_report``) from a context that ``ferlab.report``
builds out of the record and its analysis. One page with the images embedded as data URIs and
inline CSS: it can be mailed, archived or opened offline. It says which runs and
evaluations were reused and from which ferlab version, and lists folders on disk that the plan
does not name apart, without their numbers. No model is loaded and nothing is retrained.

With several training seeds the tables and the cross-dataset heatmaps give means and standard
deviations across seeds, labelled as such, beside one run's (the first seed's) bootstrap
intervals; a model's plots, per-class table and calibration are that first seed's run, and a
table lists every seed's own numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ferlab.layout import HISTORY, TEMPLATES_DIR, Layout, read_json
from ferlab.record import produced_by_text
from ferlab.record.reader import Evaluation, ExperimentRecord, read_csv_rows
from ferlab.reporting.plots import (
    RELIABILITY_PNG,
    data_uri,
    plot_confusion_matrix,
    plot_learning_curves,
    plot_reliability,
)
from ferlab.reporting.tables import (
    fmt_ci,
    fmt_count,
    fmt_mean_std,
    fmt_pct,
    fmt_plain,
    fmt_seconds,
    headline,
)

LOG_TAIL_LINES = 60
ENVIRONMENT_KEYS = ("ferlab", "torch", "python", "device", "git_commit", "platform", "started")


def render_pair_plots(
    layout: Layout,
    row: Mapping[str, Any],
    evaluation: Evaluation | None,
) -> dict[str, Path]:
    """Regenerate the confusion matrices and learning curves of one pair from its files (with
    several training seeds, of the row's ``seed``: the first seed's run)."""
    dataset, model = str(row["dataset"]), str(row["model"])
    seed = row.get("seed")  # only rows of several seeds have one
    paths = {k: layout.pair_plot(dataset, model, k, seed) for k in ("cm", "cm_tta", "curves")}
    of_seed = "" if seed is None else f" (seed {seed})"
    for path in paths.values():  # an earlier plan's picture must not outlive its numbers
        path.unlink(missing_ok=True)
    written: dict[str, Path] = {}
    if evaluation is not None:
        for key, block_name, suffix in (("cm", "plain", ""), ("cm_tta", "tta", " (TTA)")):
            block = evaluation.data.get(block_name)
            if not block or block.get("confusion_matrix") is None:
                continue
            labels = block.get("labels") or evaluation.data.get("labels") or []
            title = (
                f"{model} on {dataset}{suffix}{of_seed}: accuracy {fmt_pct(block.get('accuracy'))}"
            )
            written[key] = plot_confusion_matrix(
                block["confusion_matrix"], labels, paths[key], title, normalize=True
            )
    run_dir = row.get("run_dir")
    if run_dir and row.get("status") in ("trained", "reused"):
        history = layout.resolve(str(run_dir)) / HISTORY
        rows = read_csv_rows(history) if history.is_file() else []
        if rows:
            written["curves"] = plot_learning_curves(
                rows,
                paths["curves"],
                f"{model} trained on {dataset}{of_seed}",
                best_epoch=_as_int(row.get("best_epoch")),
            )
    return written


def calibration_entry(
    row: Mapping[str, Any], evaluation: Evaluation | None
) -> dict[str, Any] | None:
    """One model's calibration on its own test split (from its planned metrics.json), with its
    reliability diagram regenerated into the evaluation folder; None without calibration data
    (an evaluation written before calibration existed)."""
    if evaluation is None:
        return None
    path = evaluation.directory / RELIABILITY_PNG
    path.unlink(missing_ok=True)  # never a picture of other numbers
    cal = evaluation.data.get("calibration")
    if not isinstance(cal, dict) or not isinstance(cal.get("plain"), dict):
        return None
    plain, tta = cal["plain"], cal.get("tta") or {}
    dataset, model = str(row["dataset"]), str(row["model"])
    image = None
    if plain.get("reliability"):
        image = plot_reliability(
            plain["reliability"],
            plain.get("reliability_calibrated"),
            path,
            f"{model} on {dataset}: reliability (no TTA)",
            temperature=cal.get("temperature"),
        )
    return {
        "dataset": dataset,
        "model": model,
        "seed": row.get("seed"),
        "temperature": cal.get("temperature"),
        "member_temperatures": cal.get("member_temperatures"),
        "n": (evaluation.data.get("plain") or {}).get("n"),
        "ece": plain.get("ece"),
        "ece_calibrated": plain.get("ece_calibrated"),
        "log_loss": plain.get("log_loss"),
        "log_loss_calibrated": plain.get("log_loss_calibrated"),
        "tta_ece": tta.get("ece"),
        "tta_ece_calibrated": tta.get("ece_calibrated"),
        "image": data_uri(image) if image is not None else None,
    }


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def per_class_table(evaluation: Evaluation | None) -> list[dict[str, Any]]:
    """Per-class precision, recall, F1 and support, without and with TTA, in label order."""
    if evaluation is None:
        return []
    plain = evaluation.data.get("plain") or {}
    tta = evaluation.data.get("tta") or {}
    labels = list(plain.get("labels") or evaluation.data.get("labels") or [])
    out = []
    for label in labels:
        p = (plain.get("per_class") or {}).get(label, {})
        t = (tta.get("per_class") or {}).get(label, {})
        out.append({"label": label, "plain": p, "tta": t, "support": p.get("support")})
    return out


def read_config(layout: Layout) -> tuple[str, dict[str, Any]]:
    path = layout.config
    if not path.is_file():
        return "", {}
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return text, data if isinstance(data, dict) else {}


def read_environment(layout: Layout) -> dict[str, Any]:
    path = layout.environment
    if not path.is_file():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def log_tail(layout: Layout) -> tuple[str | None, str]:
    logs = layout.log_files()
    if not logs:
        return None, ""
    lines = logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()
    return logs[-1].name, "\n".join(lines[-LOG_TAIL_LINES:])


def data_sections(record: ExperimentRecord) -> list[dict[str, Any]]:
    """One entry per planned dataset (then mega): splits, protocol, bad files, distributions."""
    layout = record.layout
    names = [d.name for d in record.plan.datasets] + [
        d for d in record.plan.train_datasets if d not in {x.name for x in record.plan.datasets}
    ]
    out = []
    for name in names:
        path = layout.data_json(name)
        if not path.is_file():
            continue
        info = read_json(path)
        labels = list(info.get("labels") or [])
        splits = []
        for split, counts in (info.get("splits") or {}).items():
            per_class = counts.get("per_class") or {}
            splits.append(
                {
                    "name": split,
                    "total": counts.get("total"),
                    "per_class": [per_class.get(label) for label in labels],
                }
            )
        out.append(
            {
                "dataset": info.get("dataset", name),
                "use": info.get("use", "train"),
                "labels": labels,
                "splits": splits,
                "protocol": info.get("protocol"),
                "bad_files": info.get("bad_files"),
                "excluded": dict(info.get("excluded") or {}),
                "ignored": dict(info.get("ignored") or {}),
                "duplicates": dict(info.get("duplicates") or {}),
                "face_crop": (info.get("spec") or {}).get("face_crop") or "none",
                "face_crop_counts": dict((info.get("spec") or {}).get("face_crop_counts") or {}),
                "bad_file_examples": [
                    b for b in (info.get("bad_file_examples") or []) if isinstance(b, dict)
                ],
                "dist_original": data_uri(layout.dist_original(name)),
                "dist_balanced": data_uri(layout.dist_balanced(name))
                if info.get("use", "train") == "train"
                else None,
            }
        )
    return out


def reused_entries(record: ExperimentRecord) -> list[dict[str, Any]]:
    """Every reused run and evaluation of this plan, with the version that produced it."""
    out = []
    for pair in record.plan.pairs:
        st = record.pair_status(pair)
        seed = f" (seed {pair.seed})" if record.multi_seed else ""
        if st.status == "reused":
            out.append(
                {
                    "what": f"weights of {pair.model} trained on {pair.dataset}{seed}",
                    "where": pair.run_dir,
                    "produced_by": produced_by_text(st.produced_by),
                }
            )
        for e in st.evals:
            planned = pair.eval_on(e.test)
            if e.status == "reused":
                out.append(
                    {
                        "what": f"evaluation of {pair.dataset} / {pair.model}{seed} on {e.test}",
                        "where": planned.dir if planned else None,
                        "produced_by": produced_by_text(e.produced_by),
                    }
                )
    return out


def best_rows(rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """Per dataset, the pair with the highest headline accuracy (highlighted in the table)."""
    best: dict[str, tuple[float, str]] = {}
    scored: dict[str, int] = {}
    for r in rows:
        value = headline(r)
        if value is None:
            continue
        scored[r["dataset"]] = scored.get(r["dataset"], 0) + 1
        if r["dataset"] not in best or value > best[r["dataset"]][0]:
            best[r["dataset"]] = (float(value), str(r["model"]))
    # A dataset with a single scored pair has nothing to compare against.
    return {(d, m) for d, (_, m) in best.items() if scored[d] > 1}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every dataset name, error and path is untrusted text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pct=fmt_pct,
        ci=fmt_ci,
        seconds=fmt_seconds,
        count=fmt_count,
        plain=fmt_plain,
        ms=fmt_mean_std,
    )
    return env


def leakage_rows(record: ExperimentRecord) -> list[dict[str, Any]]:
    """Planned evaluations whose test images training or validation already saw, beside the
    accuracy they inflate (from ``data/leakage.json``; near duplicates include exact ones)."""
    path = record.layout.leakage
    if not path.is_file():
        return []
    data = read_json(path)
    seen = {
        (str(r.get("train_dataset")), str(r.get("test_dataset"))): r
        for r in (data.get("pairs") if isinstance(data, dict) else None) or []
        if isinstance(r, dict)
    }
    out = []
    for e in record.first_seed_evaluations():  # the data, not the seed, decide what was seen
        r = seen.get((e.train_dataset, e.test_dataset))
        if r is None:
            continue
        in_train, in_val = int(r.get("near_in_train") or 0), int(r.get("near_in_val") or 0)
        # an image near both a train and a val image counts once (older files: the sum)
        either = int(r.get("near_in_either", in_train + in_val) or 0)
        if not either:
            continue
        block = e.result(use_tta=True) or {}
        n = int(r.get("n_test") or 0)
        out.append(
            {
                "train_dataset": e.train_dataset,
                "model": e.model,
                "test_dataset": e.test_dataset,
                "accuracy": block.get("accuracy"),
                "n_test": n,
                "in_train": in_train,
                "in_val": in_val,
                "exact": int(
                    r.get("exact_in_either")
                    or int(r.get("exact_in_train") or 0) + int(r.get("exact_in_val") or 0)
                ),
                "share": min(either / n, 1.0) if n else None,
            }
        )
    return out


def evaluation_row(e: Evaluation) -> dict[str, Any]:
    plain = e.data.get("plain") or {}
    tta = e.data.get("tta") or {}
    return {
        "test_dataset": e.test_dataset,
        "n": plain.get("n"),
        "accuracy": plain.get("accuracy"),
        "tta_accuracy": tta.get("accuracy"),
        "macro_f1": plain.get("macro_f1"),
        "tta_macro_f1": tta.get("macro_f1"),
        "dropped": list(e.data.get("dropped_labels") or []),
    }


def mean_row(mean: Mapping[str, Any], e: Evaluation) -> dict[str, Any]:
    """A test set's row of the "All test sets" table with several seeds: means across seeds
    (``collect_across_seeds``) with their std; ``n`` and the classes left out are the data's."""
    row = evaluation_row(e)
    for key in ("accuracy", "tta_accuracy", "macro_f1", "tta_macro_f1"):
        row[key] = mean.get(f"{key}_mean")
        row[f"{key}_std"] = mean.get(f"{key}_std")
    row["n_seeds"] = mean.get("n_seeds")
    return row


def render_report(context: Mapping[str, Any]) -> str:
    """The report page from a context built by ``build_context``."""
    return _environment().get_template("report.html").render(**context)
