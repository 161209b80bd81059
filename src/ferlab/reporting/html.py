"""The self-contained HTML report of an experiment, rebuilt from its files alone.

``build_report`` regenerates the derived plots (confusion matrices, learning curves, the
cross-dataset heatmaps) and tables from the experiment folder, then renders one page with the
images embedded as data URIs and inline CSS: it can be mailed, archived or opened offline.
No model is loaded and nothing is retrained.
"""

from __future__ import annotations

import base64
import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import yaml

from ferlab.reporting.plots import plot_confusion_matrix, plot_learning_curves
from ferlab.reporting.tables import (
    METRICS,
    Evaluation,
    ReportInputError,
    collect_dropped_labels,
    collect_summary,
    fmt_ci,
    fmt_count,
    fmt_pct,
    fmt_plain,
    fmt_seconds,
    headline,
    load_evaluations,
    ordered_test_sets,
    read_csv_rows,
    read_json,
    safe_name,
    write_cross_dataset,
    write_summary,
)

TEMPLATES = Path(__file__).parent / "templates"
LOG_TAIL_LINES = 60
ENVIRONMENT_KEYS = ("ferlab", "torch", "python", "device", "git_commit", "platform", "started")


def data_uri(path: Path) -> str | None:
    """A PNG file as a ``data:`` URI, or None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def pair_plot_paths(exp_dir: Path, dataset: str, model: str) -> dict[str, Path]:
    """Where the derived plots of a pair live (``plots/<dataset>_<model>_cm_TTA.png`` ...)."""
    stem = f"{safe_name(dataset)}_{safe_name(model)}"
    plots = Path(exp_dir) / "plots"
    return {
        "cm": plots / f"{stem}_cm.png",
        "cm_tta": plots / f"{stem}_cm_TTA.png",
        "curves": plots / f"{stem}_curves.png",
    }


def render_pair_plots(
    exp_dir: Path,
    row: Mapping[str, Any],
    evaluation: Evaluation | None,
) -> dict[str, Path]:
    """Regenerate the confusion matrices and learning curves of one pair from its files."""
    dataset, model = str(row["dataset"]), str(row["model"])
    paths = pair_plot_paths(exp_dir, dataset, model)
    written: dict[str, Path] = {}
    if evaluation is not None:
        for key, block_name, suffix in (("cm", "plain", ""), ("cm_tta", "tta", " (TTA)")):
            block = evaluation.data.get(block_name)
            if not block or block.get("confusion_matrix") is None:
                continue
            labels = block.get("labels") or evaluation.data.get("labels") or []
            title = f"{model} on {dataset}{suffix}: accuracy {fmt_pct(block.get('accuracy'))}"
            written[key] = plot_confusion_matrix(
                block["confusion_matrix"], labels, paths[key], title, normalize=True
            )
    run_dir = row.get("run_dir")
    if run_dir:
        history = Path(exp_dir) / str(run_dir) / "history.csv"
        rows = read_csv_rows(history) if history.is_file() else []
        if rows:
            written["curves"] = plot_learning_curves(
                rows,
                paths["curves"],
                f"{model} trained on {dataset}",
                best_epoch=_as_int(row.get("best_epoch")),
            )
    return written


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


def _read_config(exp_dir: Path) -> tuple[str, dict[str, Any]]:
    path = exp_dir / "config.yaml"
    if not path.is_file():
        return "", {}
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return text, data if isinstance(data, dict) else {}


def _read_environment(exp_dir: Path) -> dict[str, Any]:
    path = exp_dir / "environment.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _log_tail(exp_dir: Path) -> tuple[str | None, str]:
    logs = sorted((exp_dir / "logs").glob("execution_log_*.txt"))
    if not logs:
        return None, ""
    lines = logs[-1].read_text(encoding="utf-8", errors="replace").splitlines()
    return logs[-1].name, "\n".join(lines[-LOG_TAIL_LINES:])


def data_sections(exp_dir: Path, order: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One entry per ``data/<name>_data.json``: splits, protocol, bad files and distributions.

    Sections follow ``order`` (the experiment's dataset order); others come after, by name.
    """
    out = []
    for path in sorted((exp_dir / "data").glob("*_data.json")):
        info = read_json(path)
        stem = path.name[: -len("_data.json")]
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
                "dataset": info.get("dataset", stem),
                "labels": labels,
                "splits": splits,
                "protocol": info.get("protocol"),
                "bad_files": info.get("bad_files"),
                "excluded": dict(info.get("excluded") or {}),
                "bad_file_examples": [
                    b for b in (info.get("bad_file_examples") or []) if isinstance(b, dict)
                ],
                "dist_original": data_uri(exp_dir / "data" / f"{stem}_dist_original.png"),
                "dist_balanced": data_uri(exp_dir / "data" / f"{stem}_dist_balanced.png"),
            }
        )
    rank = {name: i for i, name in enumerate(order)}
    return sorted(out, key=lambda d: rank.get(str(d["dataset"]), len(rank)))


def _best_rows(rows: Sequence[Mapping[str, Any]]) -> set[tuple[str, str]]:
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
        loader=jinja2.FileSystemLoader(TEMPLATES),
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
    )
    return env


def build_context(exp_dir: Path) -> dict[str, Any]:
    """Regenerate tables and plots and gather everything the template shows."""
    exp_dir = Path(exp_dir)
    rows = collect_summary(exp_dir)
    write_summary(rows, exp_dir)
    cross_files = {p.name: p for p in write_cross_dataset(exp_dir)}
    evaluations = load_evaluations(exp_dir)
    own = {(e.train_dataset, e.model): e for e in evaluations if e.train_dataset == e.test_dataset}
    datasets = list(dict.fromkeys(str(r["dataset"]) for r in rows))
    test_order = {t: i for i, t in enumerate(ordered_test_sets(evaluations, datasets))}

    pairs = []
    for i, row in enumerate(rows):
        if row["status"] == "failed":
            continue
        evaluation = own.get((row["dataset"], row["model"]))
        plots = render_pair_plots(exp_dir, row, evaluation)
        others = sorted(
            (
                e
                for e in evaluations
                if (e.train_dataset, e.model) == (row["dataset"], row["model"])
            ),
            key=lambda e: (e.test_dataset != row["dataset"], test_order.get(e.test_dataset, 0)),
        )
        pairs.append(
            {
                "anchor": f"pair-{i}",
                "row": row,
                "curves": data_uri(plots["curves"]) if "curves" in plots else None,
                "cm": data_uri(plots["cm"]) if "cm" in plots else None,
                "cm_tta": data_uri(plots["cm_tta"]) if "cm_tta" in plots else None,
                "per_class": per_class_table(evaluation),
                "has_tta": bool(evaluation and evaluation.data.get("tta")),
                "evaluations": [_evaluation_row(e) for e in others],
            }
        )

    config_text, config = _read_config(exp_dir)
    environment = _read_environment(exp_dir)
    log_name, log_tail = _log_tail(exp_dir)
    started = environment.get("started") or _dt.datetime.fromtimestamp(
        exp_dir.stat().st_mtime
    ).isoformat(timespec="seconds")
    return {
        "name": config.get("name") or exp_dir.name,
        "exp_dir": str(exp_dir),
        "started": started,
        "generated": _dt.datetime.now().isoformat(timespec="seconds"),
        "environment": [(k, environment[k]) for k in ENVIRONMENT_KEYS if k in environment]
        + [(k, v) for k, v in environment.items() if k not in ENVIRONMENT_KEYS],
        "config_text": config_text,
        "log_name": log_name,
        "log_tail": log_tail,
        "rows": rows,
        "best": _best_rows(rows),
        "any_tta": any(r.get("tta_accuracy") is not None for r in rows),
        "counts": {
            "pairs": len(rows),
            "ok": sum(r["status"] in ("ok", "reused") for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows),
        },
        "failed": [r for r in rows if r["status"] == "failed"],
        "cross_accuracy": data_uri(cross_files["cross_dataset_evaluation.png"])
        if "cross_dataset_evaluation.png" in cross_files
        else None,
        "cross_balanced": data_uri(cross_files["cross_dataset_evaluation_balanced_accuracy.png"])
        if "cross_dataset_evaluation_balanced_accuracy.png" in cross_files
        else None,
        "dropped": collect_dropped_labels(exp_dir),
        "pairs": pairs,
        "data": data_sections(exp_dir, datasets),
        "metrics": METRICS,
    }


def _evaluation_row(e: Evaluation) -> dict[str, Any]:
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


def render_report(context: Mapping[str, Any]) -> str:
    """The report page from a context built by ``build_context``."""
    return _environment().get_template("report.html").render(**context)


def build_report(exp_dir: Path) -> Path:
    """Rebuild plots and tables from the experiment folder and write ``<exp_dir>/report.html``."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(
            f"experiment folder {exp_dir} does not exist; pass the folder `ferlab run` wrote "
            "(it holds config.yaml, runs/ and eval/)"
        )
    markers = ("config.yaml", "status.json", "eval", "runs")
    if not any((exp_dir / m).exists() for m in markers):
        raise ReportInputError(
            f"{exp_dir} does not look like an experiment folder: none of {list(markers)} is "
            "there. Pass the folder `ferlab run` printed, e.g. runs/<experiment name>."
        )
    html = render_report(build_context(exp_dir))
    out = exp_dir / "report.html"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
