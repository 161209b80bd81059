"""The one command end to end: synthetic data (fast), the failed-pair path, rerun from cache,
the experiment record (only this plan's numbers), evaluation-only datasets, the CLI, and a
small FER2013 + FER+ + ExpW experiment on the real datasets."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import shared_dataset
from ferlab.cli import main
from ferlab.config import load_config
from ferlab.pipeline import run_experiment

TINY = [
    "train.epochs=2",
    "train.batch_size=32",
    "eval.bootstrap=20",
    "datasets.0.options={n_train: 70, n_val: 35, n_test: 35}",
    "datasets.1.options={n_train: 70, n_val: 35, n_test: 35}",
    "models.0.kwargs={widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}",
]


def _tiny_cfg(tmp_path: Path, extra: list[str] | None = None):
    return load_config(
        "default",
        [*TINY, f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path}", *(extra or [])],
    )


@pytest.fixture(scope="module")
def failed_pair_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """One experiment whose second model does not exist: (its tmp folder, its result)."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    cfg = _tiny_cfg(tmp_path, ["models.1.name=no_such_net"])
    return tmp_path, run_experiment(cfg, progress=False, console=False)


@pytest.mark.slow
def test_run_end_to_end_with_a_failed_pair(failed_pair_run: tuple[Path, Any]) -> None:
    _, res = failed_pair_run
    exp = res.exp_dir
    # The failed pair is reported and the rest carries on.
    assert [(p.model, p.status) for p in res.failed] == [("no_such_net", "failed")] * 2
    ok = [p for p in res.pairs if p.status == "trained"]
    assert len(ok) == 2
    for name in ("report.html", "summary.csv", "summary.md", "cross_dataset_evaluation.png",
                 "config.yaml", "environment.json", "status.json", "plan.json"):  # fmt: skip
        assert (exp / name).is_file(), name
    assert list((exp / "logs").glob("execution_log_*.txt"))
    for ds in ("synthetic-lab", "synthetic-wild"):
        assert (exp / "data" / f"{ds}_dist_original.png").is_file()
        assert (exp / "data" / f"{ds}_dist_balanced.png").is_file()
        assert (exp / "plots" / f"{ds}_ferlab_vgg_cm_TTA.png").is_file()
        assert (exp / "plots" / f"{ds}_ferlab_vgg_cm.png").is_file()
        run_dirs = list((exp / "runs" / ds).glob("ferlab_vgg-*"))
        assert len(run_dirs) == 1
        assert {"weights.safetensors", "meta.json", "history.csv", "DONE"} <= {
            p.name for p in run_dirs[0].iterdir()
        }
        for other in ("synthetic-lab", "synthetic-wild"):  # cross-dataset, both directions
            m = exp / "eval" / f"{ds}__ferlab_vgg" / f"on_{other}" / "metrics.json"
            assert m.is_file()
    # Numbers in the summary are the numbers in the metrics files.
    with open(exp / "summary.csv") as f:
        rows = {(r["dataset"], r["model"]): r for r in csv.DictReader(f)}
    m = json.loads(
        (exp / "eval/synthetic-lab__ferlab_vgg/on_synthetic-lab/metrics.json").read_text()
    )
    row = rows[("synthetic-lab", "ferlab_vgg")]
    assert float(row["accuracy"]) == pytest.approx(m["plain"]["accuracy"], abs=1e-6)
    assert float(row["tta_accuracy"]) == pytest.approx(m["tta"]["accuracy"], abs=1e-6)
    assert rows[("synthetic-lab", "no_such_net")]["status"] == "failed"


@pytest.mark.slow
def test_rerun_with_the_failing_model_fixed_trains_only_the_rest(
    failed_pair_run: tuple[Path, Any],
) -> None:
    tmp_path, first = failed_pair_run
    exp = first.exp_dir
    # A rerun with the failing model fixed reuses the finished pairs and trains only the rest.
    cfg2 = _tiny_cfg(tmp_path, ["models.1.name=ferlab_mini_xception"])
    res2 = run_experiment(cfg2, progress=False, console=False)
    status = {(p.dataset, p.model): p.status for p in res2.pairs}
    assert status[("synthetic-lab", "ferlab_vgg")] == "reused"
    assert status[("synthetic-lab", "ferlab_mini_xception")] == "trained"
    assert not res2.failed
    # Two models per dataset: the soft-voting ensemble is evaluated too.
    assert (exp / "eval/synthetic-lab__ensemble/on_synthetic-lab/metrics.json").is_file()


@pytest.mark.slow
def test_a_changed_training_setting_trains_into_its_own_folder(
    failed_pair_run: tuple[Path, Any],
) -> None:
    tmp_path, first = failed_pair_run
    exp = first.exp_dir
    # A changed training setting trains anew into its own folder.
    cfg3 = _tiny_cfg(tmp_path, ["models.1.name=ferlab_mini_xception", "train.lr=0.001"])
    res3 = run_experiment(cfg3, progress=False, console=False)
    assert all(p.status in ("trained", "computed") for p in res3.pairs)
    assert len(list((exp / "runs" / "synthetic-lab").glob("ferlab_vgg-*"))) == 2


@pytest.mark.slow
def test_the_report_is_rebuilt_from_the_files_alone(failed_pair_run: tuple[Path, Any]) -> None:
    exp = failed_pair_run[1].exp_dir
    (exp / "report.html").unlink()
    assert main(["report", str(exp)]) == 0
    assert (exp / "report.html").is_file()


def test_cli_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["run", "--help"], ["train", "--help"], ["evaluate", "--help"],
                 ["data", "inspect", "--help"], ["report", "--help"], ["--version"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--set" in out and "ferlab" in out


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text("datasets: [{name: synthetic, path: lab}]\nmodels: [{name: x}]\nbogus: 1\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bogus" in err and "line 3" in err
    assert main(["data", "inspect", f"fer2013:{tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "inspect", "nonsense"]) == 2
    assert "NAME:PATH" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_then_cached_then_evaluate(tmp_path: Path, capsys) -> None:
    common = [
        "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", "train.epochs=1", "--set", "eval.bootstrap=10",
        "--set", "datasets.0.options={n_train: 70, n_val: 35, n_test: 35}",
        "--set", "models.0.kwargs={widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}",
        "--out", str(tmp_path / "exp"), "--no-progress",
    ]  # fmt: skip
    assert main(["train", "--data", "synthetic:lab", "--model", "ferlab_vgg", *common]) == 0
    assert "trained" in capsys.readouterr().out
    assert main(["train", "--data", "synthetic:lab", "--model", "ferlab_vgg", *common]) == 0
    assert "reused" in capsys.readouterr().out
    run = next((tmp_path / "exp" / "runs" / "synthetic-lab").glob("ferlab_vgg-*"))
    code = main(["evaluate", "--weights", str(run), "--data", "synthetic:wild", "--tta", "--json",
                 "--cache-dir", str(tmp_path / "cache")])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"accuracy", "balanced_accuracy", "macro_f1", "n", "per_class", "confusion_matrix",
            "labels", "dropped_labels"} <= set(out)  # fmt: skip
    # The same adapter as the run's: its recorded options (n_test: 35) and split settings apply.
    assert out["n"] == 35 and out["split_settings"]["from_run"] is True


@pytest.mark.slow
@pytest.mark.realdata
def test_real_fer2013_ferplus_and_expw_experiment(tmp_path: Path) -> None:
    fer = shared_dataset("fer2013")
    expw = shared_dataset("expw")
    ferplus = shared_dataset("ferplus")
    cfg = load_config(
        "default",
        [
            f"datasets=[{{name: fer2013, path: '{fer}'}}, {{name: ferplus, path: '{ferplus}'}},"
            f" {{name: expw, path: '{expw}'}}]",
            "models=[{name: ferlab_vgg}]",
            "train.epochs=1",
            "train.limit_train_batches=8",
            "train.limit_val_batches=4",
            "eval.bootstrap=20",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path}",
            "name=real",
        ],
    )
    res = run_experiment(cfg, progress=False, console=False)
    assert not res.failed
    exp = res.exp_dir
    m = json.loads((exp / "eval/fer2013__ferlab_vgg/on_fer2013/metrics.json").read_text())
    assert m["plain"]["n"] == 3589  # PrivateTest
    x = json.loads((exp / "eval/fer2013__ferlab_vgg/on_expw/metrics.json").read_text())
    expw_data = json.loads((exp / "data/expw_data.json").read_text())
    n_expw = expw_data["splits"]["test"]["total"]
    assert sum(v["total"] for v in expw_data["splits"].values()) == 5705
    assert 500 < n_expw < 640  # about 10% by the seeded hash split
    assert x["plain"]["n"] == n_expw and x["dropped_labels"] == []
    data = json.loads((exp / "data/fer2013_data.json").read_text())
    assert data["splits"]["train"]["total"] == 28709
    assert "PublicTest" in data["protocol"]
    for p in ("cross_dataset_evaluation.png", "report.html", "plots/expw_ferlab_vgg_cm_TTA.png"):
        assert (exp / p).is_file(), p
    # FER+ (Valid/Test only) is a test set, never trained on: a column, not a row.
    assert [(p.dataset, p.model) for p in res.pairs] == [
        ("fer2013", "ferlab_vgg"),
        ("expw", "ferlab_vgg"),
    ]
    f = json.loads((exp / "eval/fer2013__ferlab_vgg/on_ferplus/metrics.json").read_text())
    assert f["n_total"] == 3137 and f["dropped_labels"] == ["contempt"]
    assert f["plain"]["n"] == 3137 - 15  # FER+ test majority labels, contempt left out
    with open(exp / "cross_dataset.csv") as fh:
        header = next(csv.reader(fh))
    assert header == ["train_dataset", "model", "fer2013", "ferplus", "expw"]


@pytest.mark.slow
def test_mega_dataset_trains_and_is_cross_evaluated(tmp_path: Path) -> None:
    cfg = _tiny_cfg(
        tmp_path,
        [
            "models=[{name: ferlab_vgg, kwargs: {widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}}]",
            "train.epochs=1",
            "mega.enabled=true",
            "mega.balance_sources=true",
            "name=mega",
        ],
    )
    res = run_experiment(cfg, progress=False, console=False)
    assert not res.failed
    assert {p.dataset for p in res.pairs} == {"synthetic-lab", "synthetic-wild", "mega"}
    exp = res.exp_dir
    m = json.loads((exp / "eval/mega__ferlab_vgg/on_mega/metrics.json").read_text())
    assert m["plain"]["n"] == 70  # both sources' test splits
    for src in ("synthetic-lab", "synthetic-wild"):
        assert (exp / f"eval/mega__ferlab_vgg/on_{src}/metrics.json").is_file()
        assert (exp / f"eval/{src}__ferlab_vgg/on_mega/metrics.json").is_file()
    data = json.loads((exp / "data/mega_data.json").read_text())
    assert data["splits"]["train"]["total"] == 140
    assert "(source, class)" in data["protocol"]
