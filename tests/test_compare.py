"""Paired model comparison: McNemar's exact test, the paired bootstrap interval, and the
comparisons an experiment's summary reports.

The statistics are checked against direct computation on constructed predictions; the
experiment is a small fake written through ``ferlab.layout`` and ``ferlab.record`` with the
real prediction writer (``write_predictions``), so the reader sees the files a run writes.
"""

from __future__ import annotations

import csv
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ferlab.evaluation import compare
from ferlab.evaluation.analysis import COMPARISON_FIELDS, collect_comparisons, collect_summary
from ferlab.evaluation.compare import (
    align_by_key,
    compare_pairs,
    compare_two,
    mcnemar_exact,
    mcnemar_exact_counts,
    paired_bootstrap_diff,
)
from ferlab.evaluation.evaluate import EvalResult, write_predictions
from ferlab.evaluation.metrics import compute_metrics
from ferlab.labels import EMOTIONS
from ferlab.layout import PROBS, Layout, write_json
from ferlab.record import (
    EvalStatus,
    PairStatus,
    Plan,
    PlannedDataset,
    PlannedEval,
    PlannedPair,
    write_plan,
    write_status,
)
from ferlab.record.reader import load_record
from ferlab.report import comparison_rows, write_summary


def flags_with(b01: int, b10: int, both: int = 0, neither: int = 0) -> tuple[np.ndarray, ...]:
    """Correctness of A and B with the given discordant and concordant counts, shuffled."""
    a = np.array([0] * b01 + [1] * b10 + [1] * both + [0] * neither, dtype=bool)
    b = np.array([1] * b01 + [0] * b10 + [1] * both + [0] * neither, dtype=bool)
    order = np.random.default_rng(b01 * 1000 + b10).permutation(a.shape[0])
    return a[order], b[order]


# --------------------------------------------------------------------------- McNemar


def brute_force_p(b01: int, b10: int) -> Fraction:
    """Two-sided exact p by definition: the probability, under Bin(n, 1/2), of every outcome
    no more likely than the one observed."""
    n = b01 + b10
    if n == 0:
        return Fraction(1)
    observed = math.comb(n, b10)
    return Fraction(sum(math.comb(n, x) for x in range(n + 1) if math.comb(n, x) <= observed), 2**n)


def test_mcnemar_known_cases() -> None:
    assert mcnemar_exact(*flags_with(0, 10)) == 2 / 1024
    assert mcnemar_exact(*flags_with(10, 0, both=50)) == 2 / 1024
    assert mcnemar_exact(*flags_with(1, 9)) == 2 * (1 + 10) / 1024
    assert mcnemar_exact(*flags_with(0, 0, both=7, neither=3)) == 1.0  # no discordant pairs
    assert mcnemar_exact(*flags_with(6, 6)) == 1.0
    assert mcnemar_exact(*flags_with(0, 1)) == 1.0  # 2 * 1/2


@pytest.mark.parametrize(
    ("b01", "b10"),
    [(0, 1), (1, 2), (3, 3), (2, 7), (7, 2), (4, 11), (12, 13), (9, 30), (17, 40), (60, 41)],
)
def test_mcnemar_equals_brute_force(b01: int, b10: int) -> None:
    a, b = flags_with(b01, b10, both=13, neither=5)
    assert mcnemar_exact(a, b) == pytest.approx(float(brute_force_p(b01, b10)), rel=1e-12)


def test_mcnemar_is_safe_for_thousands_of_images() -> None:
    # Against a log-space evaluation of the same tail; a float sum of terms would overflow.
    for b01, b10 in ((2000, 2300), (1400, 1500), (100, 400), (3000, 3100)):
        n, k = b01 + b10, min(b01, b10)
        logs = [
            math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
            for i in range(k + 1)
        ]
        top = max(logs)
        expected = min(1.0, 2 * math.exp(top + math.log(sum(math.exp(v - top) for v in logs))))
        p = mcnemar_exact_counts(b01, b10)
        assert 0.0 < p <= 1.0
        assert p == pytest.approx(expected, rel=1e-9)
    assert mcnemar_exact_counts(0, 3000) == 0.0  # 2 / 2**3000 is below the smallest float


def test_mcnemar_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError, match="same images"):
        mcnemar_exact(np.ones(5, bool), np.ones(6, bool))
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact(np.array([0, 2, 1]), np.array([1, 1, 1]))
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact_counts(-1, 3)


# --------------------------------------------------------------------------- paired bootstrap


def correlated_models(n: int, seed: int, p_a: float = 0.75, p_b: float = 0.70) -> tuple:
    """Two models whose errors overlap, as two models on the same faces do."""
    rng = np.random.default_rng(seed)
    difficulty = rng.random(n)
    noise = rng.random(n) < 0.15
    a = np.where(noise, rng.random(n) < p_a, difficulty < p_a)
    b = np.where(noise, rng.random(n) < p_b, difficulty < p_b)
    return a, b


def loop_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The textbook paired bootstrap, one resample at a time."""
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        diffs.append(a[idx].mean() - b[idx].mean())
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(low), float(high)


def test_bootstrap_matches_a_loop_and_is_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = correlated_models(301, seed=1)
    diff, low, high = paired_bootstrap_diff(a, b, n_boot=400, seed=5)
    assert diff == pytest.approx(a.mean() - b.mean(), abs=1e-15)
    assert (low, high) == pytest.approx(loop_bootstrap(a, b, 400, 5), abs=1e-12)
    assert paired_bootstrap_diff(a, b, n_boot=400, seed=5) == (diff, low, high)
    # The seed is used: other seeds draw other resamples (the percentiles sit on a 1/301 grid,
    # so two seeds may share one; ten seeds do not all agree).
    assert len({paired_bootstrap_diff(a, b, n_boot=400, seed=s)[1:] for s in range(10)}) > 1
    # Drawn in chunks, the resamples (and so the interval) are the same.
    monkeypatch.setattr(compare, "_MAX_CHUNK_ELEMENTS", 301 * 7)
    assert paired_bootstrap_diff(a, b, n_boot=400, seed=5) == (diff, low, high)


def test_bootstrap_interval_holds_the_true_difference_and_shrinks_with_n() -> None:
    # The population: p_a - p_b = 0.05. About 95% of the intervals must hold it.
    covered = 0
    trials = 60
    for t in range(trials):
        a, b = correlated_models(1000, seed=100 + t)
        diff, low, high = paired_bootstrap_diff(a, b, n_boot=400, seed=t)
        assert low is not None and high is not None and low <= diff <= high
        covered += low <= 0.05 <= high
    assert covered >= 50, f"only {covered} of {trials} intervals hold the true difference"

    widths = {}
    for n in (250, 4000):
        a, b = correlated_models(n, seed=7)
        _, low, high = paired_bootstrap_diff(a, b, n_boot=1000, seed=0)
        assert low is not None and high is not None
        widths[n] = high - low
    # 16 times the images: about a quarter of the width (1 / sqrt(16)).
    assert 2.5 < widths[250] / widths[4000] < 6.0


def test_paired_interval_is_narrower_than_unpaired_intervals() -> None:
    # Why pairing matters: two strongly correlated models differ by 2 points; each accuracy's
    # own interval is wider than the paired interval of their difference.
    a, b = correlated_models(2000, seed=3, p_a=0.72, p_b=0.70)
    _, low, high = paired_bootstrap_diff(a, b, n_boot=1000, seed=0)
    _, low_a, high_a = paired_bootstrap_diff(a, np.zeros_like(a), n_boot=1000, seed=0)
    assert low is not None and high is not None and low_a is not None and high_a is not None
    assert high - low < high_a - low_a


def test_bootstrap_edge_cases() -> None:
    a, b = flags_with(2, 5, both=10)
    assert paired_bootstrap_diff(a, b, n_boot=0) == (pytest.approx(3 / 17), None, None)
    same = np.array([True, False, True])
    assert paired_bootstrap_diff(same, same, n_boot=50) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_diff(np.zeros(0, bool), np.zeros(0, bool))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap_diff(a, b, level=95)


# --------------------------------------------------------------------------- pairs of models


def test_compare_pairs_aligns_by_key_and_names_the_better_model() -> None:
    rng = np.random.default_rng(0)
    n = 400
    keys = [f"test/img_{i:04d}.png" for i in range(n)]
    truth = {
        "good": rng.random(n) < 0.85,
        "fair": rng.random(n) < 0.60,
        "same_as_fair": None,
    }
    truth["same_as_fair"] = truth["fair"].copy()
    correct: dict[str, tuple[list[str], np.ndarray]] = {}
    for i, (name, flags) in enumerate(truth.items()):
        order = np.random.default_rng(i).permutation(n)  # each model lists images in its order
        correct[name] = ([keys[j] for j in order], flags[order])
    rows = compare_pairs(correct, dataset="fer2013", test="fer2013", n_boot=300, seed=1)
    assert [(r["model_a"], r["model_b"]) for r in rows] == [
        ("good", "fair"),
        ("good", "same_as_fair"),
        ("fair", "same_as_fair"),
    ]
    first = rows[0]
    expected = compare_two(truth["good"], truth["fair"], n_boot=300, seed=1)
    assert {k: first[k] for k in expected} == expected
    assert first["dataset"] == first["test_dataset"] == "fer2013"
    assert first["difference"] == pytest.approx(truth["good"].mean() - truth["fair"].mean())
    assert first["b10"] == int((truth["good"] & ~truth["fair"]).sum())
    assert first["verdict"].startswith("good better (p = ") and first["note"] is None
    assert rows[1]["verdict"].startswith("good better")
    last = rows[2]
    assert (last["b01"], last["b10"], last["p_value"]) == (0, 0, 1.0)
    assert last["verdict"] == "no significant difference (p = 1.000)"


def test_compare_pairs_refuses_pairs_it_cannot_pair() -> None:
    a = (["x1", "x2", "x3"], np.array([1, 0, 1]))
    b = (["x1", "x2", "x4"], np.array([1, 1, 1]))
    rows = compare_pairs(
        {"a": a, "b": b},
        dataset="d",
        test="t",
        unavailable={"c": "no per-image predictions"},
        order=["c", "a", "b"],
    )
    assert [(r["model_a"], r["model_b"]) for r in rows] == [("c", "a"), ("c", "b"), ("a", "b")]
    assert all(r["verdict"] == "not compared" and "p_value" not in r for r in rows)
    assert rows[0]["note"] == "c: no per-image predictions"
    assert "different images (3 and 3 images, 2 in common)" in rows[2]["note"]
    assert isinstance(align_by_key(["k", "k"], [1, 0], ["k", "j"], [1, 1]), str)
    with pytest.raises(ValueError, match="order"):
        compare_pairs({"a": a, "b": b}, dataset="d", test="t", order=["a"])


# --------------------------------------------------------------------------- an experiment

LABELS = list(EMOTIONS)
N_OWN = 240


def _write_evaluation(
    layout: Layout,
    planned: PlannedEval,
    keys: list[str],
    y_true: np.ndarray,
    correct: np.ndarray,
    *,
    correct_tta: np.ndarray | None = None,
    eval_key: str | None = None,
) -> None:
    """probs.npz and predictions.csv with the real writer, and a metrics.json computed from
    the same probabilities, as the pipeline writes them."""
    k = len(LABELS)

    def probs_for(flags: np.ndarray) -> np.ndarray:
        pred = np.where(flags, y_true, (y_true + 1) % k)
        probs = np.full((len(keys), k), 0.05, dtype=np.float32)
        probs[np.arange(len(keys)), pred] = 0.7
        return probs

    plain = probs_for(correct)
    tta = probs_for(correct_tta) if correct_tta is not None else None
    result = EvalResult(
        metrics={"labels": LABELS},
        probs_plain=plain,
        probs_tta=tta,
        y_true=y_true,
        kept_mask=np.ones(len(keys), dtype=bool),
    )
    out = layout.resolve(planned.dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out, keys, result)
    write_json(
        out / "metrics.json",
        {
            "eval_key": eval_key or planned.key,
            "labels": LABELS,
            "plain": compute_metrics(y_true, plain, LABELS, bootstrap=200),
            "tta": compute_metrics(y_true, tta, LABELS, bootstrap=200) if tta is not None else None,
            "tta_views": 2 if tta is not None else 1,
        },
    )


def make_experiment(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """fer2013 with models strong (TTA), weak, broken (failed) and stale (metrics of another
    plan), all scored on fer2013 and on rafdb; on rafdb, weak saw other images. An unplanned
    folder holds a fine evaluation of a fifth model."""
    rng = np.random.default_rng(42)
    exp = tmp_path / "exp"
    layout = Layout(exp)
    own_keys = [f"fer2013/test/{i:05d}.png" for i in range(N_OWN)]
    raf_keys = [f"rafdb/test/{i:05d}.jpg" for i in range(150)]
    y_own = rng.integers(0, len(LABELS), N_OWN)
    y_raf = rng.integers(0, len(LABELS), len(raf_keys))
    truth = {
        ("strong", "fer2013"): rng.random(N_OWN) < 0.80,
        ("strong_tta", "fer2013"): rng.random(N_OWN) < 0.86,
        ("weak", "fer2013"): rng.random(N_OWN) < 0.55,
        ("stale", "fer2013"): rng.random(N_OWN) < 0.99,
        ("strong", "rafdb"): rng.random(len(raf_keys)) < 0.5,
        ("weak", "rafdb"): rng.random(len(raf_keys)) < 0.4,
    }
    pairs, statuses = [], []
    for model in ("strong", "weak", "broken", "stale"):
        pair = PlannedPair("fer2013", model, run_key=f"rk-{model}", run_dir=f"runs/{model}")
        st = PairStatus("fer2013", model, "failed" if model == "broken" else "trained")
        for test in ("fer2013", "rafdb"):
            planned = PlannedEval(test, f"ek-{model}-{test}", f"eval/{model}__{test}")
            pair.evals.append(planned)
            if model == "broken":
                continue
            st.evals.append(EvalStatus(test, "computed"))
            if test == "fer2013":
                _write_evaluation(
                    layout,
                    planned,
                    own_keys,
                    y_own,
                    truth[(model, test)],
                    correct_tta=truth[("strong_tta", test)] if model == "strong" else None,
                    eval_key="another-plan" if model == "stale" else None,
                )
            elif model != "stale":
                keys = raf_keys if model == "strong" else [k + ".other" for k in raf_keys]
                _write_evaluation(layout, planned, keys, y_raf, truth[(model, test)])
        pairs.append(pair)
        statuses.append(st)
    unplanned = PlannedEval("fer2013", "ek-ghost", "eval/ghost__fer2013")
    _write_evaluation(layout, unplanned, own_keys, y_own, rng.random(N_OWN) < 0.95)
    datasets = [
        PlannedDataset("fer2013", "fer2013", "/d/fer", "train", "f1", {"test": N_OWN}),
        PlannedDataset("rafdb", "rafdb", "/d/raf", "test", "f2", {"test": 150}),
    ]
    write_plan(layout, Plan("cmp", datasets, pairs, {}))
    write_status(layout, statuses)
    return exp, {"truth": truth, "own_keys": own_keys}


def test_experiment_comparisons_csv_and_summary_section(tmp_path: Path) -> None:
    exp, facts = make_experiment(tmp_path)
    truth = facts["truth"]
    write_summary(collect_summary(exp), exp)

    with Layout(exp).comparisons_csv.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == COMPARISON_FIELDS
        table = list(reader)
    # Broken (failed), stale (another plan's metrics) and ghost (not planned) are left out.
    assert [(r["test_dataset"], r["model_a"], r["model_b"]) for r in table] == [
        ("fer2013", "strong", "weak"),
        ("rafdb", "strong", "weak"),
    ]
    own = table[0]
    # strong's headline is its TTA prediction (as in the summary), weak has only plain.
    expected = compare_two(truth[("strong_tta", "fer2013")], truth[("weak", "fer2013")], n_boot=200)
    assert (own["variant_a"], own["variant_b"]) == ("tta", "plain")
    assert int(own["n"]) == N_OWN
    assert (int(own["b01"]), int(own["b10"])) == (expected["b01"], expected["b10"])
    for name in ("accuracy_a", "accuracy_b", "difference", "difference_ci_low"):
        assert float(own[name]) == pytest.approx(expected[name], abs=1e-12), name
    assert float(own["difference_ci_high"]) == pytest.approx(expected["difference_ci_high"])
    assert float(own["p_value"]) == pytest.approx(expected["p_value"], rel=1e-12)
    assert expected["p_value"] < 0.05 and own["verdict"].startswith("strong better (p = ")
    assert own["note"] == ""
    cross = table[1]
    assert cross["verdict"] == "not compared" and cross["p_value"] == ""
    assert "different images (150 and 150 images, 0 in common)" in cross["note"]

    md = (exp / "summary.md").read_text(encoding="utf-8")
    section = md.split("## Paired comparisons", 1)[1]
    shown = comparison_rows(load_record(exp))[0]
    diff_pp = f"{100 * expected['difference']:+.1f}"
    assert shown["diff"] == diff_pp and diff_pp in section
    low, high = expected["difference_ci_low"], expected["difference_ci_high"]
    assert f"{100 * low:+.1f} to {100 * high:+.1f}" in section
    assert f"| strong (TTA) | weak | {N_OWN} |" in section
    assert shown["p"] in section and shown["significant"] is True
    assert "Not compared:" in section and "rafdb: strong vs weak: the two were scored" in section
    for left_out in ("broken", "stale", "ghost"):
        assert left_out not in section


def test_unreadable_or_mismatched_predictions_are_not_compared(tmp_path: Path) -> None:
    exp, _ = make_experiment(tmp_path)
    layout = Layout(exp)
    (layout.resolve("eval/weak__fer2013") / PROBS).unlink()
    rows = collect_comparisons(load_record(exp))
    assert rows[0]["verdict"] == "not compared"
    assert rows[0]["note"].startswith(
        "weak: no per-image predictions (eval/weak__fer2013/probs.npz)"
    )

    # probs.npz of the wrong evaluation: its accuracy does not match metrics.json.
    source = layout.resolve("eval/ghost__fer2013") / PROBS
    (layout.resolve("eval/weak__fer2013") / PROBS).write_bytes(source.read_bytes())
    rows = collect_comparisons(load_record(exp))
    assert "does not match its metrics.json" in rows[0]["note"]

    target = layout.resolve("eval/weak__fer2013") / PROBS
    target.write_bytes(b"not an npz file")
    assert "cannot read saved probabilities" in collect_comparisons(load_record(exp))[0]["note"]
    with np.load(source) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["y_true"] = arrays["y_true"][:-1]  # one label short of the probabilities
    np.savez(target.with_suffix(""), **arrays)
    assert "is inconsistent" in collect_comparisons(load_record(exp))[0]["note"]
    # Nothing was compared, but the strong model's evaluation on its own is still reported.
    assert collect_summary(exp)[0]["tta_accuracy"] is not None


def test_one_model_writes_no_comparisons(tmp_path: Path) -> None:
    exp, _ = make_experiment(tmp_path)
    Layout(exp).comparisons_csv.write_text("left by an earlier plan\n", encoding="utf-8")
    layout = Layout(exp)
    plan = load_record(exp).plan
    plan.pairs = [p for p in plan.pairs if p.model == "strong"]
    write_plan(layout, plan)
    write_summary(collect_summary(exp), exp)
    assert not Layout(exp).comparisons_csv.exists()
    assert "Paired comparisons" not in (exp / "summary.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- several seeds, Holm


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.706, 40.0])
def test_student_t_matches_the_closed_forms(t: float) -> None:
    # df = 1 is Cauchy: P[|T| >= t] = 1 - 2 atan(t) / pi; df = 2: 1 - t / sqrt(2 + t^2).
    assert compare.student_t_two_sided(t, 1) == pytest.approx(1 - 2 * math.atan(t) / math.pi)
    assert compare.student_t_two_sided(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t))
    # df = 3: 1 - (2/pi) (atan(u) + u / (1 + u^2)), u = t / sqrt(3)
    u = t / math.sqrt(3)
    want = 1 - 2 / math.pi * (math.atan(u) + u / (1 + u * u))
    assert compare.student_t_two_sided(t, 3) == pytest.approx(want, abs=1e-12)


def test_seeds_that_disagree_are_not_a_significant_difference() -> None:
    # Each seed alone is overwhelming (McNemar p ~ 1e-18), but in opposite directions.
    seeds = [flags_with(b01=2, b10=80, both=100), flags_with(b01=80, b10=2, both=100)]
    diffs = [float(a.mean() - b.mean()) for a, b in seeds]
    ps = [mcnemar_exact(a, b) for a, b in seeds]
    assert diffs[0] > 0 > diffs[1] and max(ps) < 1e-10
    got = compare.across_seeds_test(diffs, ps)
    assert got["p_value"] is not None and got["p_value"] >= compare.ALPHA
    # Seeds that agree closely, each significant: the difference holds across seeds.
    agree = [flags_with(b01=2, b10=80, both=100), flags_with(b01=3, b10=80, both=100)]
    d2 = [float(a.mean() - b.mean()) for a, b in agree]
    p2 = [mcnemar_exact(a, b) for a, b in agree]
    got2 = compare.across_seeds_test(d2, p2)
    assert got2["p_value"] is not None and got2["p_value"] < compare.ALPHA
    # The combined p is never below either part: both must hold.
    assert got2["p_value"] == max(got2["p_seeds"], got2["p_images"])  # type: ignore[type-var]
    # Consistent across seeds but not on these images (each seed's McNemar p is large).
    weak = [flags_with(b01=10, b10=13, both=100), flags_with(b01=10, b10=13, both=100)]
    d3 = [float(a.mean() - b.mean()) for a, b in weak]
    got3 = compare.across_seeds_test(d3, [mcnemar_exact(a, b) for a, b in weak])
    assert got3["p_seeds"] == 0.0 and got3["p_value"] >= compare.ALPHA  # type: ignore[operator]
    assert compare.across_seeds_test([0.1], [0.001])["p_value"] is None  # one seed: no test


def holm_by_definition(ps: list[float], alpha: float) -> list[bool]:
    """Holm (1979): order the p-values; reject H_(1), ..., H_(k-1) where k is the first rank
    with p_(k) > alpha / (m - k + 1); reject all when there is no such k."""
    m = len(ps)
    ranked = sorted(range(m), key=lambda i: ps[i])
    reject = [False] * m
    for k, i in enumerate(ranked, start=1):
        if ps[i] > alpha / (m - k + 1):
            break
        reject[i] = True
    return reject


@pytest.mark.parametrize(
    "ps",
    [
        [0.01, 0.04, 0.03, 0.005],
        [0.001, 0.2, 0.012, 0.013, 0.0125, 0.049],
        [0.04, 0.04],
        [0.05],
        [0.3, 0.6, 0.9],
        list(np.random.default_rng(3).uniform(0, 0.03, 12)),
    ],
)
def test_holm_marks_follow_the_definition(ps: list[float]) -> None:
    adjusted, survives = compare.holm(ps)
    assert survives == holm_by_definition(ps, compare.ALPHA)
    # The adjusted p-values: max over the ranks up to k of min(1, (m - j + 1) p_(j)).
    m, ranked = len(ps), sorted(ps)
    for i, p in enumerate(ps):
        k = ranked.index(p) + ranked.count(p)  # ties share the largest rank's value
        want = max(min(1.0, (m - j) * ranked[j]) for j in range(k))
        assert adjusted[i] == pytest.approx(want)
    assert [a <= compare.ALPHA for a in adjusted] == survives


def make_two_seed_experiment(tmp_path: Path) -> Path:
    """Models a and b trained with seeds 0 and 1 on fer2013: seed 0's a is far better than
    seed 0's b, seed 1's a far worse than seed 1's b (on the same test images)."""
    rng = np.random.default_rng(7)
    exp = tmp_path / "exp2"
    layout = Layout(exp)
    keys = [f"fer2013/test/{i:05d}.png" for i in range(N_OWN)]
    y = rng.integers(0, len(LABELS), N_OWN)
    good, bad = rng.random(N_OWN) < 0.85, rng.random(N_OWN) < 0.45
    correct = {("a", 0): good, ("b", 0): bad, ("a", 1): bad, ("b", 1): good}
    pairs, statuses = [], []
    for seed in (0, 1):
        for model in ("a", "b"):
            pair = PlannedPair(
                "fer2013", model, run_key=f"rk-{model}-{seed}", run_dir=f"runs/{model}-{seed}"
            )
            pair.seed = seed
            planned = PlannedEval("fer2013", f"ek-{model}-{seed}", f"eval/{model}/seed{seed}")
            pair.evals.append(planned)
            _write_evaluation(layout, planned, keys, y, correct[(model, seed)])
            st = PairStatus("fer2013", model, "trained", seed=seed)
            st.evals.append(EvalStatus("fer2013", "computed"))
            pairs.append(pair)
            statuses.append(st)
    datasets = [PlannedDataset("fer2013", "fer2013", "/d/fer", "train", "f1", {"test": N_OWN})]
    write_plan(layout, Plan("two-seeds", datasets, pairs, {}))
    write_status(layout, statuses)
    return exp


def test_a_two_seed_comparison_whose_seeds_disagree_is_not_significant(tmp_path: Path) -> None:
    exp = make_two_seed_experiment(tmp_path)
    write_summary(collect_summary(exp), exp)
    with Layout(exp).comparisons_csv.open(newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    # Seed 0 alone says "a better" beyond doubt; the verdict uses both seeds and does not.
    assert float(row["p_value"]) < 1e-6 and float(row["difference"]) > 0.2
    assert row["n_seeds"] == "2"
    assert float(row["p_value_seeds"]) >= compare.ALPHA
    assert row["verdict"].startswith("no significant difference across 2 seeds")
    assert row["holm"] == "False"
    shown = comparison_rows(load_record(exp))[0]
    assert shown["significant"] is False and shown["holm"] is False
    md = (exp / "summary.md").read_text(encoding="utf-8")
    assert "p across seeds" in md
    assert "1 comparison with a p-value in this report; 0 survive Holm's correction" in md
    from ferlab.report import build_report

    html = build_report(exp).read_text(encoding="utf-8")
    assert "p across seeds" in html and 'data-holm="no"' in html


def test_every_comparison_gets_a_holm_mark_and_the_report_counts_them(tmp_path: Path) -> None:
    from ferlab.report import build_report

    exp, _ = make_experiment(tmp_path)
    write_summary(collect_summary(exp), exp)
    rows = collect_comparisons(load_record(exp))
    tested = [r for r in rows if r["note"] is None]
    assert len(tested) == 1  # the rafdb pair was not compared: not in the family
    adjusted, survives = compare.holm([r["p_value"] for r in tested])
    assert tested[0]["p_holm"] == adjusted[0] and tested[0]["holm"] is survives[0] is True
    assert all(r["p_holm"] is None for r in rows if r["note"] is not None)
    md = (exp / "summary.md").read_text(encoding="utf-8")
    assert "1 comparison with a p-value in this report; 1 survives Holm's correction" in md
    html = build_report(exp).read_text(encoding="utf-8")
    assert 'id="holm-note"' in html and "survive Holm's correction for all 1" in html
    assert 'data-holm="yes"' in html
