"""Metrics against hand-computed cases and a plain-loop reference; bootstrap CI behaviour."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ferlab.evaluation import metrics as metrics_mod
from ferlab.evaluation.metrics import compute_metrics


def one_hot_probs(pred: list[int], k: int, top: float = 0.6) -> np.ndarray:
    """Rows with ``top`` on the predicted class and the rest spread evenly."""
    p = np.full((len(pred), k), (1 - top) / (k - 1))
    p[np.arange(len(pred)), pred] = top
    return p


def test_three_class_hand_case_with_zero_support_and_never_predicted_classes() -> None:
    # Worked on paper. Classes: a (0), b (1), c (2).
    # truth: a a a b b b        -> c has no test images (zero support)
    # pred:  a a c a a c        -> b is never predicted
    # confusion (rows true): a: [2 0 1]  b: [2 0 1]  c: [0 0 0]
    # precision a = 2/4, b = 0/0 -> 0, c = 0/2 = 0; recall a = 2/3, b = 0, c = 0/0 -> 0
    # f1 a = 2 * .5 * (2/3) / (.5 + 2/3) = 4/7, b = c = 0
    # accuracy 2/6; balanced accuracy = mean recall over {a, b} = (2/3 + 0) / 2 = 1/3
    # macro-F1 over classes in truth or predicted {a, b, c} = (4/7) / 3 = 4/21
    # log loss: 2 correct rows at 0.6, 4 wrong at 0.2 -> -(2 ln .6 + 4 ln .2) / 6
    y_true = np.array([0, 0, 0, 1, 1, 1])
    probs = one_hot_probs([0, 0, 2, 0, 0, 2], 3)
    m = compute_metrics(y_true, probs, ["a", "b", "c"], bootstrap=0)
    assert m["n"] == 6
    assert m["confusion_matrix"] == [[2, 0, 1], [2, 0, 1], [0, 0, 0]]
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["macro_f1"] == pytest.approx(4 / 21)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3}
    )
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    np.testing.assert_allclose(
        m["confusion_matrix_normalized"], [[2 / 3, 0, 1 / 3], [2 / 3, 0, 1 / 3], [0, 0, 0]]
    )
    assert m["log_loss"] == pytest.approx(-(2 * math.log(0.6) + 4 * math.log(0.2)) / 6)
    assert m["labels"] == ["a", "b", "c"]
    assert m["ci"] == {"accuracy": None, "balanced_accuracy": None, "macro_f1": None}
    json.dumps(m, allow_nan=False)  # JSON-able as it is


def test_a_class_neither_present_nor_predicted_is_left_out_of_the_averages() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 1])
    probs = one_hot_probs([0, 0, 2, 0, 0, 2], 4)
    m = compute_metrics(y_true, probs, ["a", "b", "c", "d"], bootstrap=0)
    assert m["macro_f1"] == pytest.approx(4 / 21)  # not (4/7) / 4
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["per_class"]["d"]["support"] == 0
    assert m["confusion_matrix_normalized"][3] == [0.0, 0.0, 0.0, 0.0]


def reference(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> dict[str, object]:
    """Plain loops, written independently of the vectorised code."""
    cm = [[0] * k for _ in range(k)]
    for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True):
        cm[t][p] += 1
    f1s, recalls, per = [], [], {}
    for c in range(k):
        tp = cm[c][c]
        support = sum(cm[c])
        predicted = sum(cm[r][c] for r in range(k))
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[c] = (prec, rec, f1, support)
        if support:
            recalls.append(rec)
        if support or predicted:
            f1s.append(f1)
    acc = sum(cm[c][c] for c in range(k)) / len(y_true)
    return {
        "cm": cm,
        "per": per,
        "acc": acc,
        "bal": sum(recalls) / len(recalls),
        "f1": sum(f1s) / len(f1s),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_loop_reference_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = 5, 300
    y_true = rng.choice(4, size=n, p=[0.5, 0.3, 0.15, 0.05])  # class 4 never true
    probs = rng.dirichlet(np.ones(k), size=n)
    probs[np.arange(n), y_true] += rng.random(n) * 0.5  # better than chance
    labels = list("vwxyz")
    m = compute_metrics(y_true, probs, labels, bootstrap=0)
    ref = reference(y_true, probs.argmax(1), k)
    assert m["confusion_matrix"] == ref["cm"]
    assert m["accuracy"] == pytest.approx(ref["acc"])
    assert m["balanced_accuracy"] == pytest.approx(ref["bal"])
    assert m["macro_f1"] == pytest.approx(ref["f1"])
    for c, name in enumerate(labels):
        prec, rec, f1, support = ref["per"][c]  # type: ignore[index]
        got = m["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (prec, rec, f1, support)
        )


def test_names_are_accepted_as_y_true() -> None:
    probs = one_hot_probs([0, 1, 1], 2)
    by_name = compute_metrics(["happy", "sad", "happy"], probs, ["happy", "sad"], bootstrap=0)
    by_idx = compute_metrics(np.array([0, 1, 0]), probs, ["happy", "sad"], bootstrap=0)
    assert by_name == by_idx
    with pytest.raises(ValueError, match="angry"):
        compute_metrics(["angry", "sad", "happy"], probs, ["happy", "sad"], bootstrap=0)


def test_shape_and_range_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        compute_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, ["a", "b"], bootstrap=0)
    with pytest.raises(ValueError, match="outside"):
        compute_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, ["a", "b"], bootstrap=0)


def test_perfect_predictions_have_degenerate_intervals() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    m = compute_metrics(y, one_hot_probs(y.tolist(), 3, top=0.9), ["a", "b", "c"], bootstrap=200)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert m[key] == 1.0
        assert m["ci"][key] == [1.0, 1.0]


def noisy_case(n: int, acc: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Predictions right with probability ``acc`` over three unbalanced classes."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    pred = np.where(rng.random(n) < acc, y, (y + rng.integers(1, 3, size=n)) % 3)
    return y, one_hot_probs(pred.tolist(), 3)


def test_ci_contains_the_point_estimate_and_narrows_with_more_data() -> None:
    widths = {}
    for n in (100, 4000):
        y, p = noisy_case(n, 0.7, seed=3)
        m = compute_metrics(y, p, ["a", "b", "c"], bootstrap=500, seed=0)
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            lo, hi = m["ci"][key]
            assert lo <= m[key] <= hi, (n, key)
            assert 0 <= lo < hi <= 1
        widths[n] = {k: v[1] - v[0] for k, v in m["ci"].items()}
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert widths[4000][key] < widths[100][key] / 3  # ~ 1/sqrt(40) in theory


def test_bootstrap_is_deterministic_by_seed() -> None:
    y, p = noisy_case(300, 0.6, seed=4)
    a = compute_metrics(y, p, ["a", "b", "c"], bootstrap=300, seed=7)
    b = compute_metrics(y, p, ["a", "b", "c"], bootstrap=300, seed=7)
    c = compute_metrics(y, p, ["a", "b", "c"], bootstrap=300, seed=8)
    assert a == b
    assert a["ci"] != c["ci"]


def test_bootstrap_in_chunks_still_gives_sensible_intervals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    y, p = noisy_case(500, 0.7, seed=5)
    whole = compute_metrics(y, p, ["a", "b", "c"], bootstrap=400, seed=0)["ci"]
    monkeypatch.setattr(metrics_mod, "_MAX_CHUNK_ELEMENTS", 500 * 7)  # 7 resamples per chunk
    chunked = compute_metrics(y, p, ["a", "b", "c"], bootstrap=400, seed=0)["ci"]
    for key in whole:
        assert chunked[key] == pytest.approx(whole[key], abs=0.03)


def test_empty_input_gives_null_metrics() -> None:
    m = compute_metrics(np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"], bootstrap=100)
    assert m["n"] == 0
    assert m["accuracy"] is None and m["macro_f1"] is None and m["log_loss"] is None
    assert m["ci"]["accuracy"] is None
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]
    json.dumps(m, allow_nan=False)
