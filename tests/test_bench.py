"""The benchmarks' timing helpers, and a smoke run of ``bench/throughput.py`` on real data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, shared_dataset

sys.path.insert(0, str(REPO / "bench"))
import _common as C
import distill as D
import ensemble as E
import gpu_repeatable as R
from ferlab.config import load_config
from ferlab.evaluation.tta import n_views


@pytest.fixture(scope="module")
def fer2013_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset cache for this module's FER2013 smoke runs: the first decodes, the rest read."""
    return tmp_path_factory.mktemp("fer2013_cache")


def fer2013_smoke(script: str, cache: Path, out: Path) -> dict:
    """``bench/SCRIPT --smoke --json`` on the real FER2013; its JSON record."""
    data = shared_dataset("fer2013")
    cmd = [
        sys.executable, str(REPO / "bench" / script), "--smoke", "--json",
        "--data", str(data), "--cache-dir", str(cache), "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_interleaved_timers_take_turns_in_abba_order() -> None:
    order: list[str] = []

    def step(name: str) -> int:
        order.append(name)
        return 1

    a = C.WindowTimer(lambda: step("a"), window_s=0.0, warmup_s=0.0, warmup_steps=1)
    b = C.WindowTimer(lambda: step("b"), window_s=0.0, warmup_s=0.0, warmup_steps=1)
    C.interleaved([a, b], windows=4)
    # warm-up a, b; then windows a b | b a | a b | b a (one step each: window_s is 0)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(a.result()["windows"]) == 4 and a.result()["timed_steps"] == 4
    assert a.result()["steps"] == 5  # with the warm-up step


def test_paired_ratio_is_the_median_of_window_ratios_with_an_interval() -> None:
    limit = [100.0, 50.0, 200.0, 100.0, 80.0]
    ferlab = [95.0, 48.0, 190.0, 99.0, 40.0]  # one outlier window
    got = C.paired_ratio(ferlab, limit)
    assert got["median"] == pytest.approx(0.95)
    assert got["n"] == 5
    lo, hi = got["ci95"]
    assert lo <= got["median"] <= hi
    assert C.paired_ratio([], [])["median"] is None


def test_windows_sync_only_at_their_edges_and_leave_out_restarted_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one timing core of the benchmarks (``Windows``), on a fake clock: every step takes
    0.5 s and 10 images."""
    clock = {"t": 0.0}
    monkeypatch.setattr(C.time, "perf_counter", lambda: clock["t"])
    syncs: list[int] = []
    timer = C.Windows(
        t0=-2.0,
        sync=lambda: syncs.append(timer.steps),
        warmup_s=1.0,
        warmup_steps=3,
        window_s=2.0,
        windows=2,
    )
    ends = []
    while not timer.done:
        clock["t"] += 0.5
        if timer.tick(10):
            ends.append(timer.steps)
        assert timer.steps < 50
    r = timer.result()
    # By the definition: the first step ends at 0.5 s (2.5 s after t0); the warm-up is 3 steps
    # and 1 s after that end, so it ends at step 3 (1.5 s); then windows of 2 s = 4 steps.
    first, warm = 1, 3
    want_ends = [warm + 4, warm + 8]
    assert ends == want_ends
    assert syncs == [first, warm, *want_ends]  # never inside a window
    assert r["first_step_s"] == pytest.approx(2.5)
    assert r["windows"] == [20.0, 20.0] and r["ips"] == pytest.approx(20.0)
    assert (r["steps"], r["timed_steps"]) == (warm + 8, 8)
    # restart(): time spent elsewhere (another path's window) is not counted.
    timer.windows = 3
    clock["t"] += 100.0  # a long pause, e.g. the other path of an A/B pair
    timer.restart()
    for _ in range(4):
        clock["t"] += 0.5
        timer.tick(10)
    assert timer.done and timer.result()["windows"][-1] == 20.0


TARGET = re.compile(r"^(?P<name>\S+) (?P<op>>=|<) (?P<threshold>[0-9.]+)$")


@pytest.mark.slow
@pytest.mark.realdata
def test_throughput_smoke_on_fer2013(tmp_path: Path) -> None:
    data = shared_dataset("fer2013")
    cmd = [
        sys.executable, str(REPO / "bench" / "throughput.py"), "--smoke", "--json",
        "--data", str(data), "--workers", "0",
        "--tmp-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
        "--precision", "both",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["smoke"] is True and res["config"]["skipped"] == ["cache"]  # --smoke skips it
    # The machine block names the CPU and the flags that pick its kernels.
    machine = res["machine"]
    assert machine["cpu"] in machine["cpu_kernels"] and isinstance(machine["native_bf16"], bool)
    # --precision both: each path under bf16 against its own floor, and the floors' speed-up
    # paired window by window; ferlab's bf16/fp32 is the ratio of its two medians.
    # The ratios are checked against the unrounded rates in "details": the reported rates are
    # rounded to 0.1 img/s, which at tens of images/s (a loaded machine) moves a ratio by 0.2%.
    b, speedup, details = res["bf16"], res["bf16_speedup"], res["details"]

    def ips(name: str) -> float:
        v = details[name]["ips"]
        assert isinstance(v, float) and 1 < v < 1e6, (name, v)
        return v

    for part in ("train", "eval"):
        for path in ("limit", "ferlab"):
            assert b[f"{path}_{part}_ips"] == round(ips(f"{path}_{part}_bf16"), 1)
        assert b[f"ferlab_{part}/limit"] == pytest.approx(
            ips(f"ferlab_{part}_bf16") / ips(f"limit_{part}_bf16"), rel=2e-3, abs=1e-3
        )  # one window each: the paired ratio is the ratio of the two rates
        floors = details["bf16_speedup"][part]
        paired = floors["bf16"]["windows"][0] / floors["fp32"]["windows"][0]  # one window each
        assert speedup[f"limit_{part}"] == pytest.approx(paired, rel=2e-3, abs=1e-3)
        assert speedup[f"ferlab_{part}"] == pytest.approx(
            ips(f"ferlab_{part}_bf16") / ips(f"ferlab_{part}"), rel=2e-3, abs=1e-3
        )
    rates = {}
    for path in ("limit", "ferlab", "naive"):
        for part in ("train", "eval"):
            # Tiny models at 48x48 on a CPU: hundreds to thousands of images/s, not 0 or 1e9.
            v = ips(f"{path}_{part}_w0" if path == "naive" else f"{path}_{part}")
            assert res[f"{path}_{part}_ips"] == round(v, 1), (path, part)
            rates[path, part] = v
    ratios = res["ratios"]
    for part in ("train", "eval"):
        paired = ratios[f"ferlab_{part}/limit"]
        # How fast ferlab is against its floor is the benchmark's to say on a quiet machine (a
        # one-second window on a loaded one can be off by any factor): here, the arithmetic.
        assert isinstance(paired, float) and paired > 0, (part, paired)
        lo, hi = ratios[f"ferlab_{part}/limit_ci95"]
        assert lo <= paired <= hi
        of_medians = rates["ferlab", part] / rates["limit", part]
        assert ratios[f"ferlab_{part}/limit_of_medians"] == pytest.approx(
            of_medians, rel=2e-3, abs=1e-3
        )
        assert paired == pytest.approx(of_medians, rel=2e-3, abs=1e-3)  # one window: the same ratio
        naive = rates["ferlab", part] / rates["naive", part]
        assert ratios[f"ferlab_{part}/naive"] == pytest.approx(naive, rel=2e-3, abs=1e-3)
        assert ratios[f"ferlab_{part}/naive"] > 0
    # Memory of the child that runs ferlab's path end to end, and the CLI's first step.
    rss = res["details"]["rss"]
    assert 100 < res["peak_rss_mb"] < 16_000
    assert res["peak_rss_mb"] >= max(rss["rss_after_load_mb"], rss["rss_after_fit_mb"]) - 1
    assert rss["load_s"] > 0 and rss["fit_s"] > 0
    first = res["details"]["first_step_0"]
    assert 0 < first["imports_s"] < first["to_fit_start_s"] <= first["first_step_s"]
    assert res["time_to_first_step_s"] == pytest.approx(first["first_step_s"], abs=0.01)
    assert 0 < res["time_to_first_step_s"] < 120
    # Each target reports the number above and whether it meets its threshold.
    assert set(res["targets"]) >= {
        "ferlab_train/limit >= 0.95",
        "ferlab_eval/limit >= 0.95",
        "peak_rss_mb < 3000",
        "time_to_first_step_s < 15",
        "cache_load_s < 1",
    }
    for key, target in res["targets"].items():
        m = TARGET.match(key)
        assert m, key
        name, threshold = m["name"], float(m["threshold"])
        value = ratios[name] if name in ratios else res[name]
        assert target["value"] == value, key
        if value is None:  # a part the run skipped: no number, no verdict
            assert name == "cache_load_s" and target["met"] is None
            continue
        assert target["met"] is (value >= threshold if m["op"] == ">=" else value < threshold)


@pytest.mark.slow
@pytest.mark.realdata
def test_accuracy_smoke_runs_the_shipped_recipe_and_scores_the_references(
    tmp_path: Path, fer2013_cache: Path
) -> None:
    res = fer2013_smoke("accuracy.py", fer2013_cache, tmp_path / "exp")

    recipe = load_config("fer2013_cpu")
    test = res["test"]
    # The headline is the recipe's own TTA, scored by the experiment (the same numbers as its
    # summary), and no reference variant repeats it.
    assert test["headline_tta"] == recipe.eval.tta.model_dump(mode="json")
    assert test["headline_views"] == n_views(recipe.eval.tta)
    assert test["headline"]["accuracy"] == pytest.approx(res["summary_row"]["tta_accuracy"])
    assert test["plain"]["accuracy"] == pytest.approx(res["summary_row"]["accuracy"])
    assert test["headline"]["n"] == 3589  # PrivateTest
    refs = test["reference_tta_variants"]
    assert refs and all(v["views"] != test["headline_views"] for v in refs.values())
    # The smoke trains one short epoch: the budget is off, and the record says so.
    assert res["epochs_run"] == res["epochs_planned"] == 1 and res["time_budget"] is None
    assert res["minutes"]["headline"] <= res["budget_min"] and res["within_budget"]
    for name in ("ferplus", "expw"):
        g = res["generalisation"][name]
        if "skipped" in g:
            continue
        assert g["split"] == "test" and 0 < g["scored"] <= g["images"]
        assert 0 <= g["tta"]["accuracy"] <= 1
    (key,) = res["target"]
    assert key.startswith("headline accuracy >= 0.73") and res["target"][key]["met"] is False


def test_ensemble_member_recipe_takes_the_budget_share_or_keeps_the_recipes() -> None:
    """bench/ensemble.py: a trained member gets its share of the budget (or exact epochs);
    with every member trained before (``--seeds`` alone, ``--with``), the scoring recipe keeps
    the file's budget (it was given the text 'None' and failed to load)."""
    fer = Path("/nowhere/fer2013")
    quick = E.member_config(E.parse_args(["--seeds", "--with", "a", "--with", "b"]), fer)
    assert quick.train.time_budget_min == load_config("fer2013_cpu_quick").train.time_budget_min
    shared = E.parse_args(["--budget-min", "20", "--reserve-min", "2", "--seeds", "0", "1"])
    assert E.member_config(shared, fer, seed=1).train.time_budget_min == 9.0
    fixed = E.member_config(E.parse_args(["--epochs", "7", "--seeds", "0", "1"]), fer, seed=0)
    assert fixed.train.time_budget_min is None and fixed.train.epochs == 7


@pytest.mark.slow
@pytest.mark.realdata
def test_ensemble_smoke_trains_seeded_members_and_soft_votes_them(
    tmp_path: Path, fer2013_cache: Path
) -> None:
    """bench/ensemble.py: each member is the recipe with its own seed in its own experiment;
    PublicTest and PrivateTest score every member and the soft vote of all of them."""
    res = fer2013_smoke("ensemble.py", fer2013_cache, tmp_path / "exp")
    runs = res["member_runs"]
    assert [r["seed"] for r in runs] == [0, 1] and res["members"] == 2
    assert len({r["run_dir"] for r in runs}) == 2  # two trainings, not one reused
    for r in runs:
        assert Path(r["run_dir"]).is_relative_to(tmp_path / "exp" / f"seed{r['seed']}")
        assert r["epochs_run"] == 1 and r["test_alone"]["n"] == 3589  # the experiment's read
        for split in ("val", "test"):
            assert r[split]["plain"]["n"] == r[split]["tta"]["n"] == 512  # the smoke's images
    # two differently seeded members predict differently
    assert runs[0]["val"]["plain"]["accuracy"] != runs[1]["val"]["plain"]["accuracy"]
    for split in ("public_test", "private_test"):
        (name,) = res[split]["ensembles"]
        assert name == "first_2" and res[split]["ensembles"][name]["tta"]["n"] == 512
    assert res["headline"] == res["private_test"]["ensembles"]["first_2"]["tta"]
    assert res["minutes"]["members_trained"] <= res["minutes"]["headline"]


@pytest.mark.slow
@pytest.mark.realdata
def test_gpu_pilots_cpu_fallback_trains_a_pilot_and_packs_its_run(
    tmp_path: Path, fer2013_cache: Path
) -> None:
    """bench/gpu_pilots.sh's CPU fallback (SMOKE=1) with one pilot: its JSON line in
    results.jsonl (the pilot beside the shipped model) and its run folder in runs.tar; one seed
    is no vote. (The vote's recipe is checked above, without training.)"""
    shared_dataset("fer2013")  # the script reads ../shared/datasets/fer2013 beside the repo
    res = tmp_path / "res"
    env = {
        **os.environ, "SMOKE": "1", "SKIP_SMOKE": "1", "PILOTS": "s1_56",
        "PYTHON": sys.executable, "CACHE_DIR": str(fer2013_cache), "TMPDIR": str(tmp_path),
    }  # fmt: skip
    done = subprocess.run(
        ["bash", "bench/gpu_pilots.sh", str(res)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = [json.loads(line) for line in (res / "results.jsonl").read_text().splitlines()]
    assert row["pilot"] == "s1_56" and row["seeds"] == [1]
    assert [m["name"] for m in row["member_runs"]] == ["default", "seed 1"]
    trained = row["member_runs"][1]["run_dir"]
    with tarfile.open(res / "runs.tar") as tar:
        weights = [n for n in tar.getnames() if n.endswith("weights.safetensors")]
    assert weights == [f"{trained.lstrip('/')}/weights.safetensors"]


def test_default_model_bench_matches_faces_one_to_one_and_scores_them() -> None:
    """bench/default_model.py's scoring: a detection counts once, for the labelled box it
    overlaps most (IoU >= 0.5); recall is over labelled boxes, precision over detections."""
    import default_model

    truth = {
        "a.jpg": [((0.0, 0.0, 10.0, 10.0), "happy"), ((20.0, 0.0, 30.0, 10.0), "sad")],
        "b.jpg": [((0.0, 0.0, 10.0, 10.0), "angry")],
    }
    found = {
        "a.jpg": [
            ([1.0, 1.0, 11.0, 11.0], "happy"),
            ([0.0, 0.0, 10.0, 9.0], "sad"),
            ([50.0, 50.0, 60.0, 60.0], "fear"),
        ],
        "b.jpg": [],
    }
    scores, matched = default_model.score_rows(found, truth)
    # a.jpg's first box: the second detection (IoU 0.9) beats the first (IoU 0.68); the sad box
    # and b.jpg's face are missed; the fear detection is a false positive
    assert matched == {"a.jpg": [1, -1], "b.jpg": [-1]}
    assert (scores["n"], scores["accuracy"]) == (1, 0.0)  # "sad" for a happy face
    assert (scores["annotated"], scores["detections"]) == (3, 3)
    assert scores["recall"] == round(1 / 3, 4) and scores["precision"] == round(1 / 3, 4)
    # a detector's boxes alone (no labels): the same detection scores, no accuracy
    boxes = {path: [(box, None) for box, _ in rows] for path, rows in found.items()}
    alone, _ = default_model.score_rows(boxes, truth)
    assert "accuracy" not in alone and (alone["n"], alone["recall"]) == (1, scores["recall"])


def test_gpu_repeatable_compares_a_runs_own_scores_with_a_fresh_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    R.tiny_fit(str(tmp_path))  # the script's own short fit: tmp_path/fit, cache tmp_path/cache
    cache = tmp_path / "cache"
    argv = ["--run", str(tmp_path / "fit"), "--data", "synthetic:lab", "--cache-dir", str(cache)]
    assert R.main([*argv, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["in_run"]["n"] == res["fresh"]["n"] == 35 and all(res["same"].values())
    # A run whose recorded scores differ from a fresh evaluation fails the check.
    (metrics,) = (tmp_path / "fit" / "eval").glob("*/on_*/metrics.json")
    m = json.loads(metrics.read_text())
    m["tta"]["confusion_matrix"][0][0] += 1
    metrics.write_text(json.dumps(m))
    assert R.main([*argv, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["same"]["confusion_matrix"] is False


def test_distill_targets_mix_the_vote_with_each_label() -> None:
    """bench/distill.py: alpha x the teachers' vote + (1 - alpha) x the one-hot label."""
    import numpy as np

    vote = np.zeros((3, 8), dtype=np.float32)
    vote[0, :2] = [0.75, 0.25]  # the vote agrees with the label (class 0)
    vote[1, :2] = [0.75, 0.25]  # it disagrees (label 1)
    vote[2, 3] = 1.0
    soft = D.soft_targets(vote, np.array([0, 1, 3]), alpha=0.5)
    assert soft.dtype == np.float32 and soft.shape == (3, 8)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(soft[0, :2], [0.875, 0.125])
    np.testing.assert_allclose(soft[1, :2], [0.375, 0.625])  # the label still wins at alpha 0.5
    np.testing.assert_allclose(soft[2, 3], 1.0)
    np.testing.assert_allclose(D.soft_targets(vote, np.array([0, 1, 3]), alpha=1.0), vote)
    with pytest.raises(SystemExit):
        D.parse_args(["--teacher", "default", "--epochs", "5", "--alpha", "0"])
    with pytest.raises(SystemExit):  # the pilots count epochs: no budgeted student
        D.parse_args(["--teacher", "default"])


@pytest.mark.slow
@pytest.mark.realdata
def test_distill_smoke_trains_a_student_on_the_teachers_vote(
    tmp_path: Path, fer2013_cache: Path
) -> None:
    """bench/distill.py: the shipped model teaches a student of the recipe (soft labels on),
    trained through ferlab's own path; student and teacher scored on both test splits."""
    res = fer2013_smoke("distill.py", fer2013_cache, tmp_path / "exp")
    assert res["teachers"] == ["default"] and res["teacher_views"] == "plain"
    st = res["student"]
    assert st["epochs_run"] == 1 and st["reused"] is False
    assert Path(st["run_dir"]).is_relative_to(tmp_path / "exp")
    fit = json.loads((Path(st["run_dir"]) / "fit.json").read_text())
    assert fit["train_config"]["soft_labels"] is True
    # alpha 0.5: each target's largest share is the label's half at least, and below 1 where
    # the teacher is unsure
    assert 0.5 <= res["target_mean_max"] < 1.0
    (teacher,) = res["teacher_runs"]
    assert teacher["name"] == "default" and res["teacher_vote"] is None
    for r in (st, teacher):
        for split in ("val", "test"):
            assert r[split]["plain"]["n"] == r[split]["tta"]["n"] == 512  # the smoke's images
    assert res["headline_public"] == st["val"]["tta"]
