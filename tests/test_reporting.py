"""Reporting: plots, summary and cross-dataset tables, and the self-contained HTML report.

The experiment folder is a fake written by ``fixtures_report``; every assertion compares what
the reporting code shows with what is in the files.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferlab.evaluation.analysis import (
    collect_cross_dataset,
    collect_dropped_labels,
    collect_summary,
)
from ferlab.labels import CANONICAL, EMOTIONS
from ferlab.layout import Layout, ReportInputError
from ferlab.record import PairStatus, Plan, PlannedEval, PlannedPair, write_plan, write_status
from ferlab.report import build_report, write_cross_dataset, write_summary
from ferlab.reporting import (
    format_console_table,
    format_markdown_table,
    plot_confusion_matrix,
    plot_cross_dataset,
    plot_learning_curves,
)
from ferlab.reporting.tables import fmt_count, fmt_pct, fmt_seconds
from fixtures_report import (
    DATASETS,
    FAILED_ERROR,
    MODELS,
    dir_name,
    make_fake_experiment,
    write_eval,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_bytes: int = 5_000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is only {len(data)} bytes"


def metrics_file(exp: Path, train: str, model: str, test: str) -> dict[str, Any]:
    path = (
        exp
        / "eval"
        / f"{dir_name(train)}__{dir_name(model)}"
        / f"on_{dir_name(test)}"
        / "metrics.json"
    )
    return json.loads(path.read_text())


def fit_file(exp: Path, dataset: str, model: str) -> dict[str, Any]:
    (path,) = (exp / "runs" / dir_name(dataset)).glob(f"{dir_name(model)}-*/fit.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fake experiment with its report built once (read-only for the tests that use it)."""
    exp = make_fake_experiment(tmp_path_factory.mktemp("report"))
    report = build_report(exp)
    return exp, report.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- plots


def test_plots_are_written(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 40, size=(7, 7))
    labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    for normalize in (True, False):
        path = plot_confusion_matrix(
            cm, labels, tmp_path / f"cm_{normalize}.png", "a $title$", normalize
        )
        assert_png(path)
    history = [
        {
            "epoch": str(e),
            "train_loss": str(2 - 0.1 * e),
            "train_acc": str(0.1 * e),
            "val_loss": "",
            "val_accuracy": str(0.08 * e),
            "val_balanced_accuracy": str(0.07 * e),
        }
        for e in range(1, 6)
    ]
    assert_png(plot_learning_curves(history, tmp_path / "curves.png", "curves"))
    matrix = {("a / m", "a"): 0.8, ("a / m", "b"): 0.4, ("b / m", "b"): float("nan")}
    path = plot_cross_dataset(
        matrix, ["a / m", "b / m"], ["a", "b"], tmp_path / "x.png", "x", "accuracy"
    )
    assert_png(path)


def test_confusion_matrix_shape_mismatch_names_the_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 2\), expected \(3, 3\)"):
        plot_confusion_matrix([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png", "t", True)


def test_empty_history_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"history\.csv is empty"):
        plot_learning_curves([], tmp_path / "c.png", "t")


# Rows: true class, columns: predicted class (EMOTIONS order). Asymmetric: true angry is taken
# for disgust twice, never the reverse; recall and precision differ for most classes.
ORIENTED = np.array(
    [
        [8, 2, 0, 0, 0, 0, 0],  # angry
        [0, 5, 0, 0, 0, 0, 0],  # disgust
        [0, 0, 6, 0, 0, 3, 0],  # fear
        [0, 0, 0, 9, 0, 0, 1],  # happy
        [0, 0, 0, 0, 4, 0, 4],  # sad
        [0, 0, 0, 0, 0, 7, 0],  # surprise
        [0, 0, 0, 0, 2, 0, 10],  # neutral
    ]
)


def oriented_predictions(cm: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (y_true, y_pred) whose confusion matrix [true, pred] is ``cm``."""
    pairs = np.array([(i, j) for i, j in np.ndindex(*cm.shape) for _ in range(cm[i, j])])
    pairs = pairs[np.random.default_rng(seed).permutation(len(pairs))]
    return pairs[:, 0], pairs[:, 1]


def capture_figures(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The figures the plotting functions save, by file name."""
    import ferlab.reporting.plots as plots

    figures: dict[str, Any] = {}
    real = plots.save_figure

    def save(fig: Any, path: Path) -> Path:
        figures[Path(path).name] = fig
        return real(fig, path)

    monkeypatch.setattr(plots, "save_figure", save)
    return figures


def assert_oriented_plot(fig: Any, cm: np.ndarray, labels: list[str]) -> None:
    """The plotted colours are row-normalised with rows true; the cells show share and count."""
    ax = fig.axes[0]
    recall_rows = cm / cm.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), recall_rows)
    assert (ax.get_ylabel(), ax.get_xlabel()) == ("true", "predicted")
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    cells = {tuple(map(round, t.get_position())): t.get_text() for t in ax.texts}
    assert len(cells) == cm.size
    for i, j in np.ndindex(*cm.shape):  # text at x = column j (predicted), y = row i (true)
        assert cells[(j, i)] == f"{100 * recall_rows[i, j]:.0f}%\n({cm[i, j]})", (i, j)


def test_confusion_matrix_rows_are_true_classes_columns_predictions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferlab.evaluation.metrics import compute_metrics, confusion_matrix

    labels = list(EMOTIONS)
    y_true, y_pred = oriented_predictions(ORIENTED)
    cm = confusion_matrix(y_true, y_pred, len(labels))
    np.testing.assert_array_equal(cm, ORIENTED)
    assert cm[0, 1] == 2 and cm[1, 0] == 0  # true angry predicted disgust, not the reverse
    m = compute_metrics(y_true, np.eye(len(labels))[y_pred], labels, bootstrap=0)
    assert m["confusion_matrix"] == ORIENTED.tolist()
    rows, cols = ORIENTED.sum(axis=1), ORIENTED.sum(axis=0)
    np.testing.assert_allclose(m["confusion_matrix_normalized"], ORIENTED / rows[:, None])
    for i, name in enumerate(labels):
        pc = m["per_class"][name]
        assert pc["recall"] == pytest.approx(ORIENTED[i, i] / rows[i]), name
        assert pc["precision"] == pytest.approx(ORIENTED[i, i] / cols[i]), name
        assert pc["support"] == rows[i]
    assert m["per_class"]["angry"]["recall"] == pytest.approx(0.8)
    assert m["per_class"]["angry"]["precision"] == 1.0

    figures = capture_figures(monkeypatch)
    plot_confusion_matrix(ORIENTED, labels, tmp_path / "cm.png", "oriented", normalize=True)
    assert_oriented_plot(figures["cm.png"], ORIENTED, labels)
    plot_confusion_matrix(ORIENTED, labels, tmp_path / "raw.png", "raw", normalize=False)
    raw = figures["raw.png"].axes[0]
    np.testing.assert_array_equal(np.asarray(raw.images[0].get_array()), ORIENTED)
    raw_cells = {tuple(map(round, t.get_position())): t.get_text() for t in raw.texts}
    assert raw_cells[(1, 0)] == "2" and raw_cells[(0, 1)] == "0"


def _per_class_cells(html: str, dataset: str, model: str) -> dict[str, list[str]]:
    """Class -> the text of its per-class table cells in the pair section of (dataset, model)."""
    head = f'<h3>{model} <span class="muted">trained on</span> {dataset} <span'
    (section,) = [p for p in html.split('<div class="pair"')[1:] if head in p]
    table = section.split('<table class="per-class">', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>([^<]+)</td>(.*?)</tr>", table, re.S)
    return {name: re.findall(r'<td class="num">([^<]*)</td>', rest) for name, rest in rows}


def test_report_shows_the_confusion_matrix_with_true_classes_as_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferlab.evaluation.metrics import compute_metrics

    exp = make_fake_experiment(tmp_path)
    labels = list(EMOTIONS)
    tta_cm = ORIENTED.copy()
    tta_cm[2, 2:6] = [8, 0, 0, 1]  # TTA rescues two fear images from surprise
    path = exp / "eval" / f"{dir_name(DATASETS[0])}__{dir_name(MODELS[0])}"
    path = path / f"on_{dir_name(DATASETS[0])}" / "metrics.json"
    data = json.loads(path.read_text())
    assert data["labels"] == labels
    for block, cm in (("plain", ORIENTED), ("tta", tta_cm)):
        y_true, y_pred = oriented_predictions(cm, seed=1)
        data[block] = compute_metrics(y_true, np.eye(len(labels))[y_pred], labels, bootstrap=0)
    path.write_text(json.dumps(data))

    figures = capture_figures(monkeypatch)
    html = build_report(exp).read_text(encoding="utf-8")
    stem = f"{dir_name(DATASETS[0])}_{dir_name(MODELS[0])}"
    assert_oriented_plot(figures[f"{stem}_cm.png"], ORIENTED, labels)
    assert_oriented_plot(figures[f"{stem}_cm_TTA.png"], tta_cm, labels)

    cells = _per_class_cells(html, DATASETS[0], MODELS[0])
    assert list(cells) == labels
    for i, name in enumerate(labels):
        # precision, recall, F1, then the same with TTA, then the support
        p, r, _, p_tta, r_tta, _, support = cells[name]
        assert r == fmt_pct(ORIENTED[i, i] / ORIENTED[i].sum()), name  # diagonal / row sum
        assert p == fmt_pct(ORIENTED[i, i] / ORIENTED[:, i].sum()), name  # diagonal / column sum
        assert r_tta == fmt_pct(tta_cm[i, i] / tta_cm[i].sum()), name
        assert p_tta == fmt_pct(tta_cm[i, i] / tta_cm[:, i].sum()), name
        assert support == str(ORIENTED[i].sum())
    assert cells["angry"][:2] == ["100.0%", "80.0%"] and cells["fear"][4] == "88.9%"


# --------------------------------------------------------------------------- summary


def test_summary_csv_equals_metrics_files(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path)
    rows = collect_summary(exp)
    csv_path, md_path = write_summary(rows, exp)
    with csv_path.open(newline="") as fh:
        table = {(r["dataset"], r["model"]): r for r in csv.DictReader(fh)}

    ok_pairs = [(d, m) for d in DATASETS for m in MODELS if (d, m) != (DATASETS[1], MODELS[1])]
    ok_pairs += [("mega", MODELS[0])]
    expected_pairs = {*ok_pairs, (DATASETS[0], "ensemble"), (DATASETS[1], MODELS[1])}
    assert set(table) == expected_pairs
    # Run order: datasets as listed, mega last; within a dataset the ensemble comes last.
    assert [(r["dataset"], r["model"]) for r in rows][-1] == ("mega", MODELS[0])
    assert [r["model"] for r in rows if r["dataset"] == DATASETS[0]][-1] == "ensemble"

    for dataset, model in ok_pairs:
        row = table[(dataset, model)]
        metrics = metrics_file(exp, dataset, model, dataset)
        fit = fit_file(exp, dataset, model)
        assert row["status"] == "trained"
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert float(row[metric]) == metrics["plain"][metric]
            assert float(row[f"tta_{metric}"]) == metrics["tta"][metric]
            lo, hi = metrics["tta"]["ci"][metric]
            assert (float(row[f"tta_{metric}_ci_low"]), float(row[f"tta_{metric}_ci_high"])) == (
                lo,
                hi,
            )
        assert int(row["n_test"]) == metrics["plain"]["n"]
        assert float(row["throughput_ips"]) == metrics["throughput_ips"]
        assert float(row["train_seconds"]) == fit["train_seconds"]
        assert int(row["epochs"]) == fit["epochs_run"]
        assert int(row["best_epoch"]) == fit["best_epoch"]
        assert int(row["params"]) == fit["params"]

    ensemble = table[(DATASETS[0], "ensemble")]
    metrics = metrics_file(exp, DATASETS[0], "ensemble", DATASETS[0])
    assert float(ensemble["accuracy"]) == metrics["plain"]["accuracy"]
    assert ensemble["tta_accuracy"] == "" and ensemble["train_seconds"] == ""

    failed = table[(DATASETS[1], MODELS[1])]
    assert failed["status"] == "failed"
    assert failed["error"] == FAILED_ERROR
    assert failed["accuracy"] == ""
    assert FAILED_ERROR in md_path.read_text()


def test_markdown_table_shape(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path)
    rows = collect_summary(exp)
    lines = format_markdown_table(rows).strip().splitlines()
    assert len(lines) == 2 + len(rows)
    widths = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
    assert len(widths) == 1, "every Markdown row must have the same number of cells"
    assert set(lines[1]) <= set("|-:")
    first = rows[0]
    assert fmt_pct(first["accuracy"]) in lines[2]
    assert fmt_pct(first["tta_accuracy"]) in lines[2]


def test_console_table_is_aligned(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path)
    rows = collect_summary(exp)
    text = format_console_table(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    # Columns are separated by two spaces and the dash rule marks each column's extent.
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    for line in [lines[0], *lines[2:]]:
        for start in starts[1:]:
            assert line[start - 2 : start] == "  ", f"misaligned column at {start}: {line!r}"
    for row, line in zip(rows, lines[2:], strict=True):
        if row["accuracy"] is not None:
            pct = fmt_pct(row["accuracy"])
            assert re.fullmatch(r"\d{1,3}\.\d%", pct)
            assert pct in line


def test_formatters() -> None:
    assert fmt_pct(0.83449) == "83.4%"
    assert fmt_pct(None) == "-"
    assert fmt_count(802_113) == "802K"
    assert fmt_count(11_200_000) == "11.2M"
    assert fmt_count(2_310_000) == "2.31M"
    assert fmt_count(950) == "950"
    assert fmt_seconds(42) == "42.0s"
    assert fmt_seconds(185) == "3m 05s"
    assert fmt_seconds(7620) == "2h 07m"


# --------------------------------------------------------------------------- cross-dataset


def test_cross_dataset_matrix_equals_metrics_files(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path)
    tests = [DATASETS[0], DATASETS[1], "mega"]
    for use_tta, block in ((True, "tta"), (False, "plain")):
        for metric in ("accuracy", "balanced_accuracy"):
            cross = collect_cross_dataset(exp, metric=metric, use_tta=use_tta)
            assert cross.test_names == tests
            for (dataset, model), name in zip(cross.rows, cross.train_names, strict=True):
                for test in tests:
                    try:
                        metrics = metrics_file(exp, dataset, model, test)
                    except FileNotFoundError:
                        assert (name, test) not in cross.values
                        continue
                    source = metrics[block] or metrics["plain"]
                    assert cross.values[(name, test)] == source[metric]
    cross = collect_cross_dataset(exp)
    values, train_names, test_names = cross  # unpacks like a (matrix, rows, columns) tuple
    assert test_names == tests
    assert f"{DATASETS[0]} / ensemble" in train_names
    assert (f"{DATASETS[0]} / ensemble", DATASETS[1]) not in values  # not evaluated: a blank cell
    assert not any(
        name.startswith(f"{DATASETS[1]} / {MODELS[1]}") for name in train_names
    )  # failed

    written = {p.name: p for p in write_cross_dataset(exp)}
    assert_png(written["cross_dataset_evaluation.png"])
    assert_png(written["cross_dataset_evaluation_balanced_accuracy.png"])
    with written["cross_dataset.csv"].open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["train_dataset"], r["model"]) for r in table] == cross.rows
    for r, name in zip(table, cross.train_names, strict=True):
        for test in tests:
            expected = cross.values.get((name, test))
            assert (float(r[test]) if r[test] else None) == expected


def test_cross_dataset_unknown_metric(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        collect_cross_dataset(tmp_path, metric="auc")


def test_dropped_labels_are_reported(built: tuple[Path, str]) -> None:
    exp, html = built
    dropped = collect_dropped_labels(exp)
    pairs = {(d["train_dataset"], d["model"], d["test_dataset"]) for d in dropped}
    assert (DATASETS[0], MODELS[0], DATASETS[1]) in pairs
    for d in dropped:
        metrics = metrics_file(exp, d["train_dataset"], d["model"], d["test_dataset"])
        assert d["dropped_labels"] == metrics["dropped_labels"] == ["contempt"]
        assert d["n_dropped_images"] == metrics["n_dropped_images"]
    table = html.split('id="dropped-table"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == len(dropped) + 1
    assert "contempt" in table


# --------------------------------------------------------------------------- HTML report


class _SummaryCells(HTMLParser):
    """Collects the text of the summary table's metric cells, keyed by (dataset, model, metric)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple[str, str, str], str] = {}
        self._row: tuple[str, str] | None = None
        self._metric: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-dataset" in a:
            self._row = (a["data-dataset"] or "", a["data-model"] or "")
        elif tag == "td" and self._row and "data-metric" in a:
            self._metric = a["data-metric"]
            self.cells[(*self._row, self._metric or "")] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._metric = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row and self._metric:
            self.cells[(*self._row, self._metric)] += data


def test_report_shows_the_numbers_in_the_files(built: tuple[Path, str]) -> None:
    exp, html = built
    parser = _SummaryCells()
    parser.feed(html)
    assert parser.cells, "summary table cells not found"
    for dataset, model in [(DATASETS[0], MODELS[0]), (DATASETS[1], MODELS[0]), ("mega", MODELS[0])]:
        metrics = metrics_file(exp, dataset, model, dataset)
        for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
            plain = parser.cells[(dataset, model, metric)]
            tta = parser.cells[(dataset, model, f"tta_{metric}")]
            assert plain.startswith(fmt_pct(metrics["plain"][metric]))
            assert tta.startswith(fmt_pct(metrics["tta"][metric]))
            lo, hi = metrics["plain"]["ci"][metric]
            assert f"{100 * lo:.1f}-{100 * hi:.1f}" in plain
    assert parser.cells[(DATASETS[1], MODELS[1], "accuracy")] == "-"


def test_report_is_self_contained(built: tuple[Path, str]) -> None:
    _, html = built
    assert '<meta name="viewport"' in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<link\b", html, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I)
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", html)
    assert len(sources) == html.count("<img ")
    # 2 heatmaps; 4 trained pairs x (curves + 2 confusion matrices); the ensemble's one
    # confusion matrix (no TTA, no curves); 2 distributions for each of 3 datasets (mega included).
    assert len(sources) == 2 + 4 * 3 + 1 + 3 * 2
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC


def test_report_lists_the_failed_pair(built: tuple[Path, str]) -> None:
    _, html = built
    section = html.split('id="failed"', 1)[1]
    assert f'{MODELS[1]} <span class="muted">on</span> {DATASETS[1]}' in section
    assert (
        "RuntimeError: CUDA out of memory while allocating &lt;tensor 512x512&gt; &amp; more"
        in section
    )
    assert "<tensor 512x512>" not in html


def test_report_rebuilds_from_files_only(built: tuple[Path, str], tmp_path: Path) -> None:
    exp = Path(shutil.copytree(built[0], tmp_path / "copy"))
    first = exp / "report.html"
    plots = sorted(p.name for p in (exp / "plots").iterdir())
    assert f"{DATASETS[0]}_{MODELS[0]}_cm_TTA.png" in plots
    assert f"{DATASETS[0]}_{MODELS[0]}_cm.png" in plots
    assert f"{DATASETS[0]}_{MODELS[0]}_curves.png" in plots
    assert (
        f"{DATASETS[0]}_ensemble_cm.png" in plots
        and f"{DATASETS[0]}_ensemble_cm_TTA.png" not in plots
    )

    shutil.rmtree(exp / "plots")
    for name in (
        "summary.csv",
        "summary.md",
        "cross_dataset.csv",
        "cross_dataset_evaluation.png",
        "report.html",
    ):
        (exp / name).unlink()
    second = build_report(exp)  # the weights files are garbage: nothing may load them
    assert second == first and second.is_file()
    # Same page apart from the paths and the generation time.
    strip = re.compile(r"generated [0-9T:-]+|<code>[^<]*</code>|ferlab report [^<]*")
    assert strip.sub("", second.read_text()) == strip.sub("", built[1])
    assert sorted(p.name for p in (exp / "plots").iterdir()) == plots
    for name in plots:
        assert_png(exp / "plots" / name)
    for name in ("summary.csv", "summary.md", "cross_dataset.csv", "cross_dataset_evaluation.png"):
        assert (exp / name).is_file()


def test_report_escapes_names(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path, datasets=("<b>x</b>", "rafdb"))
    html = build_report(exp).read_text(encoding="utf-8")
    assert "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<b>x</b>" not in html
    assert (exp / "plots" / f"b_x_b_{MODELS[0]}_cm_TTA.png").is_file()


def test_report_without_evaluations(tmp_path: Path) -> None:
    exp = tmp_path / "empty"
    layout = Layout(exp)
    pair = PlannedPair("fer2013", "m", run_key="k", run_dir="runs/fer2013/m-k")
    pair.evals.append(PlannedEval("fer2013", "e", "eval/fer2013__m/on_fer2013"))
    write_plan(layout, Plan("empty", [], [pair], {}))
    write_status(layout, [PairStatus("fer2013", "m", "failed", "boom", pair.run_dir)])
    html = build_report(exp).read_text(encoding="utf-8")
    assert "No evaluations found." in html
    assert "boom" in html
    rows = collect_summary(exp)
    assert [(r["status"], r["accuracy"]) for r in rows] == [("failed", None)]


def test_build_report_rejects_other_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report(tmp_path / "nope")
    with pytest.raises(ReportInputError, match="does not look like an experiment folder"):
        build_report(tmp_path)
    # An experiment folder without a recorded plan (an older ferlab's) is refused, not guessed.
    (tmp_path / "config.yaml").write_text("name: old\n")
    with pytest.raises(ReportInputError, match=r"plan\.json does not exist"):
        build_report(tmp_path)


# --------------------------------------------------------------------------- the record


def _plan(exp: Path) -> dict[str, Any]:
    return json.loads((exp / "plan.json").read_text())


def test_results_of_another_plan_are_never_shown(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path)
    layout = Layout(exp)
    # 1. A planned evaluation whose file carries another key (an earlier plan, other code).
    stale = metrics_file(exp, DATASETS[0], MODELS[0], DATASETS[1])
    stale_acc = stale["tta"]["accuracy"]
    stale["eval_key"] = "from-an-earlier-plan"
    (layout.eval_dir(DATASETS[0], MODELS[0], DATASETS[1]) / "metrics.json").write_text(
        json.dumps(stale)
    )
    # 2. A model removed from the experiment: its folders are still on disk.
    write_eval(layout, np.random.default_rng(1), (DATASETS[0], list(EMOTIONS)), "old_net",
               (DATASETS[0], list(EMOTIONS)), skill=0.99, with_tta=True, key="k")  # fmt: skip
    (layout.runs_dir / DATASETS[0] / "old_net-12345678").mkdir(parents=True)
    # 3. The failed pair left files with its planned key by an earlier, successful run.
    failed = next(
        p for p in _plan(exp)["pairs"] if (p["dataset"], p["model"]) == (DATASETS[1], MODELS[1])
    )
    for e in failed["evals"]:
        write_eval(layout, np.random.default_rng(2), (DATASETS[1], list(CANONICAL)), MODELS[1],
                   (e["test"], list(CANONICAL)), skill=0.99, with_tta=True, key=e["key"])  # fmt: skip

    rows = {(r["dataset"], r["model"]): r for r in collect_summary(exp)}
    assert (DATASETS[0], "old_net") not in rows
    assert rows[(DATASETS[1], MODELS[1])]["status"] == "failed"
    assert rows[(DATASETS[1], MODELS[1])]["accuracy"] is None
    cross = collect_cross_dataset(exp)
    row = f"{DATASETS[0]} / {MODELS[0]}"
    assert (row, DATASETS[1]) not in cross.values  # the stale cell is blank, not old numbers
    assert all(not name.startswith(f"{DATASETS[1]} / {MODELS[1]}") for name in cross.train_names)
    assert all("old_net" not in name for name in cross.train_names)
    html = build_report(exp).read_text(encoding="utf-8")
    assert "old_net" in html.split('id="record"', 1)[1]  # listed apart, as not in this plan
    assert "old_net" not in html.split('id="record"', 1)[0]
    section = html.split('id="unplanned"', 1)[1].split("</ul>", 1)[0]
    assert f"eval/{DATASETS[0]}__old_net/on_{DATASETS[0]}" in section
    assert f"runs/{DATASETS[0]}/old_net-12345678" in section
    # The stale file's number is nowhere in the cross-dataset CSV either.
    assert str(stale_acc) not in (exp / "cross_dataset.csv").read_text()


def test_reused_runs_are_named_with_their_version(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path)
    layout = Layout(exp)
    status = json.loads(layout.status.read_text())
    produced = {
        "ferlab_version": "0.0.9",
        "code_digest": "abcdef0123456789",
        "created": "2025-01-01T09:00:00",
    }
    for p in status["pairs"]:
        if (p["dataset"], p["model"]) == (DATASETS[0], MODELS[0]):
            p["status"], p["produced_by"] = "reused", produced
    layout.status.write_text(json.dumps(status))
    rows = {(r["dataset"], r["model"]): r for r in collect_summary(exp)}
    assert rows[(DATASETS[0], MODELS[0])]["reused"] is True
    assert rows[(DATASETS[0], MODELS[0])]["produced_by"] == (
        "ferlab 0.0.9 (code abcdef01), 2025-01-01T09:00:00"
    )
    assert rows[(DATASETS[0], MODELS[1])]["reused"] is False
    html = build_report(exp).read_text(encoding="utf-8")
    record = html.split('id="reused-table"', 1)[1].split("</table>", 1)[0]
    assert f"weights of {MODELS[0]} trained on {DATASETS[0]}" in record
    assert "ferlab 0.0.9 (code abcdef01), 2025-01-01T09:00:00" in record
    assert MODELS[1] not in record
    assert "ferlab 0.0.9" in (exp / "summary.md").read_text()


def test_damaged_metrics_file_is_named(tmp_path: Path) -> None:
    exp = make_fake_experiment(tmp_path)
    bad = exp / "eval" / f"{DATASETS[0]}__{MODELS[0]}" / f"on_{DATASETS[0]}" / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(ReportInputError, match=re.escape(str(bad))):
        collect_summary(exp)


def test_report_shows_the_data_files(built: tuple[Path, str]) -> None:
    exp, html = built
    section = html.split('id="data"', 1)[1].split("</section>", 1)[0]
    for name in (*DATASETS, "mega"):
        info = json.loads((exp / "data" / f"{dir_name(name)}_data.json").read_text())
        part = section.split(f"<h3>{name}</h3>", 1)[1].split("<h3>", 1)[0]
        assert info["protocol"] in part
        assert f"Bad files skipped: <b>{info['bad_files']}</b>" in part
        assert f"duplicates: <b>{info['excluded']['duplicates']}</b>" in part
        for example in info["bad_file_examples"]:
            assert example["path"] in part
        train = info["splits"]["train"]
        cells = [str(train["total"])] + [str(train["per_class"][c]) for c in info["labels"]]
        row = "".join(f'<td class="num">{c}</td>' for c in cells)
        assert f"<tr><td>train</td>{row}</tr>" in part
        assert part.count('<img src="data:image/png;base64,') == 2
