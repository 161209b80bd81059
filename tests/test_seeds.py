"""Several training seeds (``ferlab run --seeds K`` / ``seeds: [...]``) end to end.

One tiny experiment on the built-in synthetic faces (one trained dataset, one evaluation-only
test set, two models, two seeds) is run once through the CLI; the tests then read its folder:
one run folder per seed with different weights, each seed's evaluations in their own folder,
mean and standard deviation in the summary, the matrix and the comparisons that equal a direct
computation from the per-seed metrics files, a rerun that reuses everything, and a single-seed
run in the same folder whose layout is that of a run without seeds.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from ferlab.cli import main
from ferlab.layout import Layout
from ferlab.reporting.tables import SUMMARY_FIELDS

NET = "{widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}"
SMALL = "{n_train: 64, n_val: 32, n_test: 32}"
LAB, WILD = "synthetic-lab", "synthetic-wild"
MODELS = ("ferlab_vgg", "vgg_b")


def _common(tmp: Path) -> list[str]:
    sets = [
        "train.epochs=1",
        "train.batch_size=32",
        "eval.bootstrap=10",
        f"datasets=[{{name: synthetic, path: lab, options: {SMALL}}},"
        f" {{name: synthetic, path: wild, use: test, options: {SMALL}}}]",
        f"models=[{{name: ferlab_vgg, kwargs: {NET}}},"
        f" {{name: ferlab_vgg, label: vgg_b, kwargs: {NET}, train: {{lr: 0.001}}}}]",
        f"data.cache_dir={tmp / 'cache'}",
        "name=seeds",
    ]
    out = []
    for item in sets:
        out += ["--set", item]
    return [*out, "--out", str(tmp / "exp"), "--no-progress"]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _metrics(exp: Path, model: str, test: str, seed: int | None) -> dict[str, Any]:
    return json.loads((Layout(exp).eval_dir(LAB, model, test, seed) / "metrics.json").read_text())


def _headline(m: dict[str, Any], metric: str = "accuracy") -> float:
    return float((m.get("tta") or m["plain"])[metric])


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the two-seed experiment, then the same command again (everything reused)."""
    tmp = tmp_path_factory.mktemp("seeds")
    args = ["run", "default", "--seeds", "2", *_common(tmp)]
    assert main(args) == 0
    exp = tmp / "exp"
    first_status = json.loads((exp / "status.json").read_text())
    report_first = (exp / "report.html").read_text()
    assert main(args) == 0
    return {
        "tmp": tmp,
        "exp": exp,
        "first_status": first_status,
        "status": json.loads((exp / "status.json").read_text()),
        "plan": json.loads((exp / "plan.json").read_text()),
        "report_first": report_first,
    }


def test_each_seed_trains_its_own_run_with_its_own_weights(experiment: dict[str, Any]) -> None:
    from safetensors.numpy import load_file

    exp, plan = experiment["exp"], experiment["plan"]
    models = [p for p in plan["pairs"] if p["kind"] == "model"]
    assert [(p["model"], p["seed"]) for p in models] == [
        ("ferlab_vgg", 0),
        ("vgg_b", 0),
        ("ferlab_vgg", 1),
        ("vgg_b", 1),
    ]
    by_seed = {p["seed"]: p for p in models if p["model"] == "ferlab_vgg"}
    assert by_seed[0]["run_key"] != by_seed[1]["run_key"]
    assert by_seed[0]["run_dir"] != by_seed[1]["run_dir"]
    weights = [load_file(exp / by_seed[s]["run_dir"] / "weights.safetensors") for s in (0, 1)]
    assert weights[0].keys() == weights[1].keys()
    assert any((weights[0][k] != weights[1][k]).any() for k in weights[0])
    metas = [
        json.loads((exp / by_seed[s]["run_dir"] / "meta.json").read_text())["extra"] for s in (0, 1)
    ]
    assert [m["seed"] for m in metas] == [0, 1]  # the training seed reached fit ...
    assert metas[0]["dataset_fingerprint"] == metas[1]["dataset_fingerprint"]  # ... not the data
    assert metas[0]["data"]["split_seed"] == metas[1]["data"]["split_seed"]
    # Each seed's evaluations (and ensemble) have a folder level of their own.
    for p in plan["pairs"]:
        for e in p["evals"]:
            assert f"/seed{p['seed']}/on_" in e["dir"], e["dir"]
            assert (exp / e["dir"] / "metrics.json").is_file()
    ensembles = [p for p in plan["pairs"] if p["kind"] == "ensemble"]
    assert [(p["seed"], p["members"]) for p in ensembles] == [(0, list(MODELS)), (1, list(MODELS))]


def test_summary_gives_mean_and_std_of_the_per_seed_metrics(experiment: dict[str, Any]) -> None:
    exp = experiment["exp"]
    rows = {(r["dataset"], r["model"]): r for r in _csv(exp / "summary.csv")}
    assert set(rows) == {(LAB, "ferlab_vgg"), (LAB, "vgg_b"), (LAB, "ensemble")}
    for model in (*MODELS, "ensemble"):
        row = rows[(LAB, model)]
        per_seed = [_metrics(exp, model, LAB, s) for s in (0, 1)]
        assert row["n_seeds"] == "2" and row["seeds"] == "0;1" and row["seed"] == "0"
        for prefix, block in (("", "plain"), ("tta_", "tta")):
            for metric in ("accuracy", "balanced_accuracy", "macro_f1"):
                values = [m[block][metric] for m in per_seed if m.get(block)]
                if not values:
                    continue
                name = f"{prefix}{metric}"
                assert float(row[f"{name}_mean"]) == pytest.approx(statistics.fmean(values))
                assert float(row[f"{name}_std"]) == pytest.approx(statistics.stdev(values))
                # One run's number and interval beside them: the first seed's.
                assert float(row[name]) == pytest.approx(values[0])
        ci = per_seed[0]["plain"]["ci"]["accuracy"]
        assert float(row["accuracy_ci_low"]) == pytest.approx(ci[0])
    # Every seed's own numbers stay available, on every test set.
    per_seed_rows = _csv(exp / "per_seed.csv")
    got = {(r["model"], r["seed"], r["test_dataset"]): r for r in per_seed_rows}
    for model in (*MODELS, "ensemble"):
        for s in (0, 1):
            for test in (LAB, WILD):
                m = _metrics(exp, model, test, s)
                r = got[(model, str(s), test)]
                assert float(r["accuracy"]) == pytest.approx(m["plain"]["accuracy"])
    across = {(r["model"], r["test_dataset"]): r for r in _csv(exp / "across_seeds.csv")}
    values = [_metrics(exp, "vgg_b", WILD, s)["plain"]["macro_f1"] for s in (0, 1)]
    row = across[("vgg_b", WILD)]
    assert float(row["macro_f1_mean"]) == pytest.approx(statistics.fmean(values))
    assert float(row["macro_f1_std"]) == pytest.approx(statistics.stdev(values))
    md = (exp / "summary.md").read_text()
    assert "trained with 2 seeds (0, 1)" in md and "mean ± sd" in md
    assert "## Across seeds, every test set" in md


def test_matrix_and_heatmap_show_the_mean_across_seeds(experiment: dict[str, Any]) -> None:
    exp = experiment["exp"]
    cross = {(r["train_dataset"], r["model"]): r for r in _csv(exp / "cross_dataset.csv")}
    assert set(cross) == {(LAB, "ferlab_vgg"), (LAB, "vgg_b"), (LAB, "ensemble")}
    for model in (*MODELS, "ensemble"):
        for test in (LAB, WILD):
            want = statistics.fmean(_headline(_metrics(exp, model, test, s)) for s in (0, 1))
            assert float(cross[(LAB, model)][test]) == pytest.approx(want)
    html = (exp / "report.html").read_text()
    assert "mean across the 2 training seeds" in html
    assert "Accuracy (TTA where measured), mean over 2 seeds" in html


def test_comparisons_keep_the_first_seed_and_add_the_spread(experiment: dict[str, Any]) -> None:
    exp = experiment["exp"]
    rows = {
        (r["model_a"], r["model_b"], r["test_dataset"]): r for r in _csv(exp / "comparisons.csv")
    }
    row = rows[("ferlab_vgg", "vgg_b", LAB)]
    diffs = [
        _headline(_metrics(exp, "ferlab_vgg", LAB, s)) - _headline(_metrics(exp, "vgg_b", LAB, s))
        for s in (0, 1)
    ]
    assert row["seed"] == "0" and row["n_seeds"] == "2"
    assert float(row["difference"]) == pytest.approx(diffs[0])  # the single run's, seed 0
    assert row["p_value"] != "" and row["difference_ci_low"] != ""
    assert float(row["difference_mean"]) == pytest.approx(statistics.fmean(diffs))
    assert float(row["difference_std"]) == pytest.approx(statistics.stdev(diffs))
    # The verdict is both seeds' (a t-test over the two differences and each seed's McNemar),
    # never seed 0's McNemar p alone; Holm corrects that p over the report's comparisons.
    p_seeds, p_images = float(row["p_seeds"]), float(row["p_images"])
    assert float(row["p_value_seeds"]) == max(p_seeds, p_images)
    assert p_images >= float(row["p_value"]) or diffs[0] * statistics.fmean(diffs) <= 0
    assert "across 2 seeds" in row["verdict"]
    assert float(row["p_holm"]) >= float(row["p_value_seeds"]) and row["holm"] in ("True", "False")
    md = (exp / "summary.md").read_text()
    assert "A - B across seeds (pp)" in md
    assert "A &minus; B across seeds" in (exp / "report.html").read_text()


def test_rerun_reuses_every_run_and_evaluation(experiment: dict[str, Any]) -> None:
    first, again = experiment["first_status"]["pairs"], experiment["status"]["pairs"]
    assert {p["status"] for p in first} == {"trained", "computed"}
    assert [p["status"] for p in again] == ["reused"] * len(again)
    assert all(e["status"] == "reused" for p in again for e in p["evals"])
    assert len(again) == 6  # two models and an ensemble, per seed
    html = (experiment["exp"] / "report.html").read_text()
    assert "weights of ferlab_vgg trained on synthetic-lab (seed 1)" in html
    assert "Nothing was reused" in experiment["report_first"]


def test_one_seed_in_the_same_folder_keeps_the_single_seed_layout(
    experiment: dict[str, Any],
) -> None:
    tmp, exp = experiment["tmp"], experiment["exp"]
    assert main(["run", "default", *_common(tmp)]) == 0  # seeds unset: seed 0 alone
    plan = json.loads((exp / "plan.json").read_text())
    status = json.loads((exp / "status.json").read_text())
    assert all("seed" not in p for p in plan["pairs"]) and all("seed" not in p for p in status)
    for p in plan["pairs"]:
        for e in p["evals"]:
            assert e["dir"] == f"eval/{LAB}__{p['model']}/on_{e['test']}"
    # Seed 0's runs are the very folders the two-seed run trained: reused, not retrained.
    two = {(p["model"], p["seed"]): p["run_dir"] for p in experiment["plan"]["pairs"]}
    for p in plan["pairs"]:
        if p["kind"] == "model":
            assert p["run_dir"] == two[(p["model"], 0)]
    assert {p["status"] for p in status["pairs"] if p["model"] != "ensemble"} == {"reused"}
    with (exp / "summary.csv").open(newline="") as f:
        assert tuple(next(csv.reader(f))) == SUMMARY_FIELDS
    assert not (exp / "per_seed.csv").exists() and not (exp / "across_seeds.csv").exists()
    header = (exp / "comparisons.csv").read_text().splitlines()[0]
    assert "difference_mean" not in header
    assert (exp / "plots" / f"{LAB}_ferlab_vgg_cm.png").is_file()
    # The two-seed run's evaluation folders are listed as not in this plan, never read.
    html = (exp / "report.html").read_text()
    record = html.split('id="record"', 1)[1]
    assert f"eval/{LAB}__vgg_b/seed1/on_{WILD}" in record
    assert "mean across" not in html


def test_seeds_flag_is_checked_and_combines_with_set_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "--seeds" in err and "at least 1" in err
    assert main(["run", "--seeds", "2", "--set", "seeds=[4, 5]"]) == 2
    assert "--set seeds=[4, 5]" in capsys.readouterr().err
    assert main(["tune", "tune_demo", "--seeds", "3"]) == 2
    assert "ferlab run <experiment>/tune/best.yaml --seeds K" in capsys.readouterr().err

    import ferlab.api as api

    seen = []

    def fake_run(cfg: Any, **kwargs: Any) -> api.ExperimentResult:
        seen.append(cfg)
        return api.ExperimentResult(exp_dir=tmp_path)

    monkeypatch.setattr(api, "run_experiment", fake_run)
    assert main(["run", "--seeds", "3", "--set", "seed=5"]) == 0
    assert main(["run", "--seeds", "1"]) == 0
    assert main(["run", "--set", "seeds=[7, 2]"]) == 0
    assert [c.seed_list for c in seen] == [[5, 6, 7], [0], [7, 2]]
