"""The experiment record end to end: a report shows only what this run's plan produced.

Each test runs the real pipeline on tiny synthetic data (or tiny fake files in a dataset's
real layout) and checks the plan, the status, the summary, the matrix and the ensembles.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import ferlab
from adapter_fakes import write_image
from ferlab.config import load_config
from ferlab.layout import Layout
from ferlab.pipeline import run_experiment

SMALL = "{n_train: 70, n_val: 35, n_test: 35}"
NET = "{widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}"


def _cfg(tmp_path: Path, *extra: str):
    return load_config(
        "default",
        [
            "train.epochs=1",
            "train.batch_size=32",
            "eval.bootstrap=10",
            f"datasets.0.options={SMALL}",
            f"datasets.1.options={SMALL}",
            f"models=[{{name: ferlab_vgg, kwargs: {NET}}}, {{name: ferlab_vgg, label: vgg_b, kwargs: {NET}, train: {{lr: 0.001}}}}]",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path}",
            *extra,
        ],
    )


def _summary(exp: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (exp / "summary.csv").open(newline="") as f:
        return {(r["dataset"], r["model"]): r for r in csv.DictReader(f)}


def _cross(exp: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (exp / "cross_dataset.csv").open(newline="") as f:
        return {(r["train_dataset"], r["model"]): r for r in csv.DictReader(f)}


@pytest.mark.slow
def test_removed_model_and_a_pair_failing_on_rerun_leave_no_stale_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_experiment(_cfg(tmp_path), progress=False, console=False)
    exp = first.exp_dir
    assert not first.failed
    assert ("synthetic-lab", "vgg_b") in _summary(exp)
    ens = json.loads(
        (exp / "eval/synthetic-lab__ensemble/on_synthetic-lab/metrics.json").read_text()
    )
    assert ens["members"] == ["ferlab_vgg", "vgg_b"]

    # Rerun without vgg_b, and with the training code changed so that ferlab_vgg retrains
    # and fails on synthetic-wild this time.
    import ferlab.provenance as provenance
    import ferlab.service.session as session

    provenance.code_digest.cache_clear()
    real = provenance.code_digest
    monkeypatch.setattr(session, "code_digest", lambda scope: "changed-" + real(scope))
    import ferlab.training.runcache as runcache

    monkeypatch.setattr(runcache, "code_digest", lambda scope: "changed-" + real(scope))
    import ferlab.training as training

    real_fit = training.fit

    def flaky_fit(data, *args, **kwargs):
        if data.name == "synthetic-wild":
            raise RuntimeError("out of memory (simulated)")
        return real_fit(data, *args, **kwargs)

    monkeypatch.setattr(training, "fit", flaky_fit)
    cfg = _cfg(tmp_path, f"models=[{{name: ferlab_vgg, kwargs: {NET}}}]")
    second = run_experiment(cfg, progress=False, console=False)
    status = {(p.dataset, p.model): p for p in second.pairs}
    assert status[("synthetic-lab", "ferlab_vgg")].status == "trained"  # new code: retrained
    assert status[("synthetic-wild", "ferlab_vgg")].status == "failed"

    rows = _summary(exp)
    assert set(rows) == {("synthetic-lab", "ferlab_vgg"), ("synthetic-wild", "ferlab_vgg")}
    failed = rows[("synthetic-wild", "ferlab_vgg")]
    assert failed["status"] == "failed" and "simulated" in failed["error"]
    assert failed["accuracy"] == "" and failed["tta_accuracy"] == ""
    cross = _cross(exp)
    assert set(cross) == {("synthetic-lab", "ferlab_vgg")}  # no row for vgg_b, none for the failure
    assert cross[("synthetic-lab", "ferlab_vgg")]["synthetic-wild"] != ""
    # The old evaluations of the failed pair carried the old key: they were removed.
    assert not (exp / "eval/synthetic-wild__ferlab_vgg/on_synthetic-wild/metrics.json").exists()
    # No ensemble of one model; the old ensemble and vgg_b are listed as not in this plan.
    html = (exp / "report.html").read_text()
    before, record = html.split('id="record"', 1)
    assert "vgg_b" not in before and "vgg_b" in record
    assert "eval/synthetic-lab__ensemble/on_synthetic-lab" in record
    assert ("synthetic-lab", "ensemble") not in rows
    plan = json.loads((exp / "plan.json").read_text())
    assert [(p["dataset"], p["model"]) for p in plan["pairs"]] == list(rows)


@pytest.mark.slow
def test_changed_code_digest_retrains_and_reevaluates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path, "datasets=[{name: synthetic, path: lab, options: " + SMALL + "}]")
    first = run_experiment(cfg, progress=False, console=False)
    again = run_experiment(cfg, progress=False, console=False)
    assert [p.status for p in again.pairs] == ["reused", "reused", "reused"]
    assert all(e.status == "reused" for p in again.pairs for e in p.evals)
    log = sorted((first.exp_dir / "logs").glob("*.txt"))[-1].read_text()
    assert "reusing the completed run in runs/synthetic-lab/ferlab_vgg-" in log
    assert f"(trained by ferlab {ferlab.__version__} (code " in log
    assert f"(reused: evaluated by ferlab {ferlab.__version__} (code " in log
    row = _summary(first.exp_dir)[("synthetic-lab", "ferlab_vgg")]
    assert row["reused"] == "True" and f"ferlab {ferlab.__version__}" in row["produced_by"]

    import ferlab.record.planning as planning
    import ferlab.service.session as session
    import ferlab.training.runcache as runcache

    for module in (runcache, session, planning):
        monkeypatch.setattr(module, "code_digest", lambda scope: f"new-{scope}")
    third = run_experiment(cfg, progress=False, console=False)
    assert [p.status for p in third.pairs] == ["trained", "trained", "computed"]
    assert all(e.status == "computed" for p in third.pairs for e in p.evals)
    runs = sorted(p.name for p in (first.exp_dir / "runs" / "synthetic-lab").iterdir())
    assert len(runs) == 4  # two new run folders beside the two old ones
    plan = json.loads((first.exp_dir / "plan.json").read_text())
    assert plan["provenance"]["code_digest_eval"] == "new-eval"


@pytest.mark.slow
def test_a_reused_result_made_with_other_library_versions_says_so(tmp_path: Path) -> None:
    from ferlab import provenance

    cfg = _cfg(tmp_path, "datasets=[{name: synthetic, path: lab, options: " + SMALL + "}]")
    first = run_experiment(cfg, progress=False, console=False)
    now = provenance.library_versions()
    metrics = sorted(first.exp_dir.glob("eval/**/metrics.json"))
    assert metrics
    for path in metrics:  # every evaluation records the versions it was made with
        assert json.loads(path.read_text())["produced_by"]["versions"] == now
    fit = json.loads(next(first.exp_dir.glob("runs/*/*/meta.json")).read_text())
    assert fit["extra"]["provenance"]["versions"] == now  # and so does every run
    # As if one evaluation had been made with another torch: it is still reused (versions are
    # not in the key), and the log and the report name the difference.
    edited = next(p for p in metrics if p.parent.parent.name.endswith("__ferlab_vgg"))
    old = json.loads(edited.read_text())
    old["produced_by"]["versions"]["torch"] = "1.0.0"
    edited.write_text(json.dumps(old))
    again = run_experiment(cfg, progress=False, console=False)
    assert all(e.status == "reused" for p in again.pairs for e in p.evals)
    said = f"torch 1.0.0 (now {now['torch']})"
    log = sorted((first.exp_dir / "logs").glob("*.txt"))[-1].read_text()
    assert said in log
    assert sum(said in line for line in log.splitlines()) == 1  # that evaluation alone
    assert said in again.report.read_text()


@pytest.mark.slow
def test_evaluation_only_datasets_are_columns_not_rows(tmp_path: Path) -> None:
    # A folder dataset of three classes without split folders, declared use: test ...
    jaffe = tmp_path / "jaffe"
    for cls, n in (("happy", 9), ("sad", 7), ("surprise", 5)):
        for i in range(n):
            write_image(jaffe / cls / f"{i}.png", size=(20, 20), value=12 * i)
    # ... and a FER+ copy with only Valid and Test (no train split).
    from adapter_fakes import write_ferplus

    ferplus = tmp_path / "ferplus"
    votes = [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    for split in ("FER2013Valid", "FER2013Test"):
        rows = []
        for i in range(6):
            v = votes[:]
            v[0], v[1] = (0, 10) if i % 2 else (10, 0)  # neutral / happiness majorities
            rows.append((f"fer{i:05d}.png", v, None))
        write_ferplus(ferplus / split, rows)
    cfg = _cfg(
        tmp_path,
        "datasets=[{name: synthetic, path: lab, options: " + SMALL + "},"
        f" {{name: folder, path: '{jaffe}', label: jaffe, use: test}},"
        f" {{name: ferplus, path: '{ferplus}'}}]",
        f"models=[{{name: ferlab_vgg, kwargs: {NET}}}]",
        "eval.cross_dataset=false",  # external test sets are scored anyway
    )
    res = run_experiment(cfg, progress=False, console=False)
    assert not res.failed
    assert [(p.dataset, p.model) for p in res.pairs] == [("synthetic-lab", "ferlab_vgg")]
    exp = res.exp_dir
    assert set(_summary(exp)) == {("synthetic-lab", "ferlab_vgg")}
    cross = _cross(exp)[("synthetic-lab", "ferlab_vgg")]
    assert set(cross) == {"train_dataset", "model", "synthetic-lab", "jaffe", "ferplus"}
    m = json.loads((exp / "eval/synthetic-lab__ferlab_vgg/on_jaffe/metrics.json").read_text())
    assert m["n_total"] == 21 and m["plain"]["n"] == 21  # every image of it, all three classes
    assert m["labels"] == ["happy", "sad", "surprise"]
    f = json.loads((exp / "eval/synthetic-lab__ferlab_vgg/on_ferplus/metrics.json").read_text())
    assert f["n_total"] == 6  # FER+'s official test split
    data = json.loads((exp / "data/jaffe_data.json").read_text())
    assert data["use"] == "test" and list(data["splits"]) == ["test"]
    assert "use: test" in data["protocol"]
    fp = json.loads((exp / "data/ferplus_data.json").read_text())
    assert fp["use"] == "test" and list(fp["splits"]) == ["val", "test"]
    assert (exp / "data/ferplus_dist_original.png").is_file()
    assert not (exp / "data/ferplus_dist_balanced.png").exists()
    html = (exp / "report.html").read_text()
    assert "Evaluation-only test sets (never trained on): jaffe, ferplus" in html


@pytest.mark.slow
def test_evaluate_reuses_the_runs_split_and_refuses_overlap(tmp_path: Path) -> None:
    from adapter_fakes import write_origin

    root = tmp_path / "expw"
    photos, rows = {}, []
    for label in range(7):
        for i in range(12):
            name = f"p{label}_{i:02d}.jpg"
            photos[name] = (40, 32)
            rows.append(f"{name} 0 4 6 30 28 {50 + i}.5 {label}")
    write_origin(root, rows, photos)
    cache = tmp_path / "cache"
    res = ferlab.train(
        f"expw:{root}",
        out=tmp_path / "exp",
        progress=False,
        console=False,
        overrides=[
            "train.epochs=1",
            "eval.bootstrap=0",
            f"data.cache_dir={cache}",
            "data.split_seed=7",
            "data.val_fraction=0.2",
            "data.test_fraction=0.3",
            "datasets.0.options={margin: 0.1}",
            f"models.0.kwargs={NET}",
        ],
    )
    run = res.run_dir
    splits = json.loads((run / "splits.json").read_text())
    assert splits == json.loads((Layout(res.exp_dir).splits_json("expw")).read_text())
    meta = json.loads((run / "meta.json").read_text())
    assert meta["extra"]["data"]["split_seed"] == 7 and meta["extra"]["data"]["options"] == {
        "margin": 0.1
    }
    m = ferlab.evaluate(run, f"expw:{root}", cache_dir=cache, bootstrap=0)
    assert m.split_settings["from_run"] and m.split_settings["test_fraction"] == 0.3
    assert m.n == len(splits["test"]) and m.overlap == {"n": 0, "allowed": False}
    own = json.loads((res.exp_dir / "eval/expw__ferlab_vgg/on_expw/metrics.json").read_text())
    assert m.accuracy == pytest.approx(own["plain"]["accuracy"])  # the same test images

    with pytest.raises(ferlab.api.DatasetError, match="trained or validated on") as e:
        ferlab.evaluate(run, f"expw:{root}", split="all", cache_dir=cache, bootstrap=0)
    assert "--allow-overlap" in str(e.value)
    allowed = ferlab.evaluate(
        run, f"expw:{root}", split="train", cache_dir=cache, bootstrap=0, allow_overlap=True
    )
    assert allowed.overlap == {"n": len(splits["train"]), "allowed": True}
    # The CLI says the same.
    from ferlab.cli import main

    assert main(["evaluate", "--weights", str(run), "--data", f"expw:{root}", "--split", "all",
                 "--cache-dir", str(cache)]) == 2  # fmt: skip


def test_the_code_that_plans_evaluations_and_decodes_images_is_digested() -> None:
    """Editing the planning code re-keys every evaluation; editing decoding re-keys the cache."""
    import inspect

    from ferlab import provenance
    from ferlab.data import decode, facecrop
    from ferlab.record import planning

    evaluated = provenance.source_files("eval")
    for fn in (planning.make_plan, planning.eval_key, planning.pair_run_key):
        assert Path(inspect.getsourcefile(fn) or "").resolve() in evaluated, fn.__name__
    decoding = provenance.source_files("decode")
    for module in (decode, facecrop):
        assert Path(inspect.getsourcefile(module) or "").resolve() in decoding
    assert not any(f.name == "pipeline.py" for f in decoding)
