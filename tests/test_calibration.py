"""Probabilities you can read as confidences: the temperature fit, ECE and its bins, the
temperature in the model metadata, calibrated evaluation and ensembles, and the report.

The fit is checked on logits whose labels were drawn from ``softmax(logits / T_true)``, so the
right answer is known; ECE against a direct loop over the bins written from the definition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ferlab.calibration import (
    ECE_BINS,
    bin_index,
    calibration_block,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability,
    softmax,
)
from ferlab.config import load_config
from ferlab.data.base import ArraySplit
from ferlab.evaluation import ensemble_results, evaluate_split, flat_metrics, load_result
from ferlab.evaluation.evaluate import write_predictions
from ferlab.labels import CANONICAL, EMOTIONS
from ferlab.layout import META, Layout
from ferlab.models import ModelMeta, create_model, load_model, read_meta, save_model
from ferlab.models.errors import WeightsMetadataError
from ferlab.reporting.plots import RELIABILITY_PNG, plot_reliability
from ferlab.training.calibrate import fit_on_split

LABELS = list(EMOTIONS)
NET = {"widths": [8, 16, 16, 32], "depths": [1, 1, 1, 1]}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _labels_from(logits: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """Labels drawn from softmax(logits / temperature): the model whose true T is known."""
    p = softmax(logits, temperature).astype(np.float64)
    u = np.random.default_rng(seed).random((p.shape[0], 1))
    return np.minimum((p.cumsum(axis=1) < u).sum(axis=1), p.shape[1] - 1)


# ----------------------------------------------------------------------------- the fit
@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_the_fit_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 3.0, size=(20_000, 7))
    y = _labels_from(logits, true_t, seed=2)
    fit = fit_temperature(logits, y)
    assert fit.temperature == pytest.approx(true_t, rel=0.05)
    assert fit.n == 20_000 and fit.split == "val" and not fit.at_bound
    # A minimum: nudging T either way raises the NLL.
    assert fit.nll_after is not None and fit.nll_before is not None
    for factor in (0.9, 1.1):
        assert nll(logits, y, fit.temperature * factor) > fit.nll_after
    # Deterministic: the same inputs give the same temperature to the last bit.
    assert fit_temperature(logits, y).temperature == fit.temperature


def test_the_fitted_nll_is_never_worse_than_t1_on_the_fitted_set() -> None:
    for seed in range(6):
        rng = np.random.default_rng(seed)
        logits = rng.normal(0, rng.uniform(0.1, 6), size=(300, 5)).astype(np.float32)
        y = rng.integers(0, 5, size=300)  # labels unrelated to the logits: T grows
        fit = fit_temperature(logits, y)
        assert fit.nll_after is not None and fit.nll_before is not None
        assert fit.nll_after <= fit.nll_before
        assert fit.nll_after == pytest.approx(nll(logits, y, fit.temperature))
        assert fit.nll_before == pytest.approx(nll(logits, y, 1.0))


def test_the_fit_keeps_t1_without_images_or_with_broken_logits() -> None:
    empty = fit_temperature(np.zeros((0, 7)), np.zeros(0, dtype=int))
    assert empty.temperature == 1.0 and empty.method == "none" and "no images" in empty.note
    broken = fit_temperature(np.array([[0.0, math.nan]]), np.array([0]))
    assert broken.temperature == 1.0 and "non-finite" in broken.note
    with pytest.raises(ValueError, match="outside"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 1, 2]))


def test_fit_on_split_without_a_validation_split_says_so() -> None:
    model = create_model("ferlab_vgg", 7, 1, image_size=16, **NET)
    fit = fit_on_split(model, None, LABELS, (0.5,), (0.25,))
    assert fit.temperature == 1.0 and fit.split is None
    assert "no validation split" in fit.note


def test_fit_on_split_uses_the_validation_logits() -> None:
    torch.manual_seed(0)
    model = create_model("ferlab_vgg", 7, 1, image_size=16, **NET).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 16, 16, 1), dtype=np.uint8)
    labels = rng.integers(0, 7, size=40)
    split = ArraySplit(images=images, labels=labels, keys=[f"k{i}" for i in range(40)])
    fit = fit_on_split(model, split, LABELS, (0.5,), (0.25,), batch_size=16)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = model(x).numpy()
    assert fit.n == 40
    assert fit.temperature == pytest.approx(fit_temperature(logits, labels).temperature, rel=1e-4)


# ----------------------------------------------------------------------------- ECE
def _direct_ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE from its definition, one image at a time: bin b is (b/bins, (b+1)/bins], 0 in bin 0."""
    total = 0.0
    n = len(y)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [
            i
            for i in range(n)
            if (lo < float(probs[i].max()) <= hi) or (b == 0 and float(probs[i].max()) == 0.0)
        ]
        if not members:
            continue
        acc = sum(int(np.argmax(probs[i]) == y[i]) for i in members) / len(members)
        conf = sum(float(probs[i].max()) for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


def _rows_with_confidence(conf: list[float], k: int = 16) -> np.ndarray:
    """Probability rows (K = 16) whose largest value, in column 0, is exactly ``conf[i]``."""
    rows = np.empty((len(conf), k), dtype=np.float64)
    for i, c in enumerate(conf):
        rows[i] = (1 - c) / (k - 1)
        rows[i, 0] = c
    return rows


def test_ece_of_a_hand_computed_example() -> None:
    # 0.9 right and 0.9 wrong share bin 13 (accuracy 0.5, confidence 0.9); 0.5 right is alone
    # in bin 7 (accuracy 1, confidence 0.5): ECE = 2/3 * 0.4 + 1/3 * 0.5
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    y = np.array([0, 1, 2])
    assert expected_calibration_error(probs, y) == pytest.approx(2 / 3 * 0.4 + 1 / 3 * 0.5)
    bins = reliability(probs, y)
    assert bins["count"][13] == 2 and bins["count"][7] == 1 and sum(bins["count"]) == 3
    assert bins["accuracy"][13] == 0.5 and bins["confidence"][13] == pytest.approx(0.9)
    assert bins["accuracy"][7] == 1.0 and bins["confidence"][7] == pytest.approx(0.5)


def test_ece_matches_the_definition_with_empty_bins_and_the_15_bin_edges() -> None:
    edges = [b / 15 for b in range(1, 16)]  # every upper edge, 1/15 ... 1.0 included
    rng = np.random.default_rng(3)
    random_conf = list(rng.uniform(1 / 16, 1.0, size=40))
    conf = [*edges, 1 / 16, 0.5, *random_conf]
    probs = _rows_with_confidence(conf)
    y = rng.integers(0, 2, size=len(conf)) * rng.integers(0, 16, size=len(conf))
    assert expected_calibration_error(probs, y) == pytest.approx(_direct_ece(probs, y), abs=1e-12)
    # An edge belongs to the bin below it: b/15 -> bin b-1 (1.0 -> the last bin, 14).
    assert bin_index(np.array(edges)).tolist() == list(range(15))
    assert bin_index(np.array([0.0, 1e-12, 1 / 15 + 1e-12])).tolist() == [0, 0, 1]

    # Mostly empty bins: confidences only in two bins.
    few = _rows_with_confidence([0.95, 0.96, 0.2])
    y_few = np.array([0, 1, 0])
    bins = reliability(few, y_few)
    assert bins["bins"] == ECE_BINS and len(bins["edges"]) == 16
    assert sum(c > 0 for c in bins["count"]) == 2
    empty = [b for b in range(15) if bins["count"][b] == 0]
    assert all(bins["accuracy"][b] is None and bins["confidence"][b] is None for b in empty)
    assert bins["ece"] == pytest.approx(_direct_ece(few, y_few), abs=1e-12)
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=int)) is None


def test_calibration_block_reports_before_and_after() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(3000, 7))
    y = _labels_from(logits, 2.0, seed=1)  # the raw softmax is over-confident
    fit = fit_temperature(logits, y)
    block = calibration_block(y, softmax(logits), softmax(logits, fit.temperature))
    assert block["ece_calibrated"] < block["ece"] / 2  # the point of it
    assert block["log_loss_calibrated"] < block["log_loss"]
    assert block["reliability"]["ece"] == block["ece"]
    json.dumps(block, allow_nan=False)  # goes into metrics.json as it is


# ----------------------------------------------------------------------------- metadata
def _meta(**kw: Any) -> ModelMeta:
    return ModelMeta("ferlab_vgg", LABELS, image_size=16, kwargs=dict(NET), **kw)


def test_meta_round_trip_with_and_without_temperature(tmp_path: Path) -> None:
    meta = _meta(temperature=1.75)
    assert ModelMeta.from_dict(meta.to_dict()).temperature == 1.75
    assert meta.to_dict()["temperature"] == 1.75
    old = meta.to_dict()
    del old["temperature"]  # meta.json written before temperatures existed
    assert ModelMeta.from_dict(old).temperature == 1.0
    assert _meta().temperature == 1.0

    model = create_model("ferlab_vgg", 7, 1, image_size=16, **NET)
    save_model(model, meta, tmp_path / "run")
    assert json.loads((tmp_path / "run" / META).read_text())["temperature"] == 1.75
    _, loaded = load_model(tmp_path / "run")
    assert loaded.temperature == 1.75
    (tmp_path / "run" / META).unlink()  # the copy in the safetensors header
    assert read_meta(tmp_path / "run" / "weights.safetensors").temperature == 1.75


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, "1.5", True, None])
def test_a_bad_temperature_in_meta_json_names_the_file(tmp_path: Path, bad: Any) -> None:
    model = create_model("ferlab_vgg", 7, 1, image_size=16, **NET)
    save_model(model, _meta(), tmp_path)
    data = json.loads((tmp_path / META).read_text())
    data["temperature"] = bad
    (tmp_path / META).write_text(json.dumps(data))
    with pytest.raises(WeightsMetadataError, match="temperature") as e:
        load_model(tmp_path)
    assert str(tmp_path / META) in str(e.value)
    with pytest.raises(ValueError, match="temperature"):
        _meta(temperature=math.nan)


# ----------------------------------------------------------------------------- evaluation
class Fixed(torch.nn.Module):
    """Returns the logits stored for each image (the image's first pixel is its index)."""

    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = torch.round(x[:, 0, 0, 0] * 255).long()
        return self.table[idx]


def _fixed_case(n: int = 200, true_t: float = 2.0) -> tuple[Fixed, ArraySplit, np.ndarray]:
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 4, size=(n, 7))
    y = _labels_from(logits, true_t, seed=6)
    images = np.zeros((n, 4, 4, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    split = ArraySplit(images=images, labels=np.array([CANONICAL.index(LABELS[i]) for i in y]),
                       keys=[f"img{i}" for i in range(n)])  # fmt: skip
    return Fixed(logits), split, logits


def _eval_meta(temperature: float = 1.0) -> ModelMeta:
    return ModelMeta("x", LABELS, image_size=4, mean=(0.0,), std=(1.0,), temperature=temperature)


def test_evaluation_reports_ece_before_and_after_with_the_same_predictions() -> None:
    model, split, logits = _fixed_case()
    y = np.array([LABELS.index(CANONICAL[c]) for c in split.labels])
    res = evaluate_split(
        model, _eval_meta(2.0), split.images, split.labels, LABELS, bootstrap=0, device="cpu"
    )
    cal = res.metrics["calibration"]
    assert cal["temperature"] == 2.0 and cal["bins"] == 15
    assert cal["plain"]["ece"] == pytest.approx(
        expected_calibration_error(softmax(logits), y), abs=1e-6
    )
    assert cal["plain"]["ece_calibrated"] == pytest.approx(
        expected_calibration_error(softmax(logits, 2.0), y), abs=1e-6
    )
    assert res.calibrated_plain is not None
    np.testing.assert_allclose(res.calibrated_plain, softmax(logits, 2.0), atol=1e-6)
    np.testing.assert_allclose(res.probs_plain, softmax(logits), atol=1e-6)
    # T never changes a prediction, so no number of the plain block changes with it.
    at_one = evaluate_split(
        model, _eval_meta(1.0), split.images, split.labels, LABELS, bootstrap=0, device="cpu"
    )
    assert at_one.metrics["plain"] == res.metrics["plain"]
    assert at_one.metrics["calibration"]["plain"]["ece_calibrated"] == cal["plain"]["ece"]
    flat = flat_metrics(res, use_tta=False)
    assert (flat["temperature"], flat["ece"], flat["ece_calibrated"]) == (
        2.0,
        cal["plain"]["ece"],
        cal["plain"]["ece_calibrated"],
    )
    # an explicit temperature overrides the metadata's
    other = evaluate_split(
        model, _eval_meta(2.0), split.images, split.labels, LABELS, bootstrap=0, device="cpu",
        temperature=1.0,
    )  # fmt: skip
    assert other.metrics["calibration"]["temperature"] == 1.0


def test_tta_predictions_are_calibrated_per_view(tmp_path: Path) -> None:
    from ferlab.config import TTAConfig

    model, split, logits = _fixed_case(n=50)
    tta = TTAConfig(hflip=True, crops=0)
    res = evaluate_split(
        model, _eval_meta(3.0), split.images, split.labels, LABELS, tta=tta, bootstrap=0,
        device="cpu",
    )  # fmt: skip
    cal = res.metrics["calibration"]
    assert cal["tta"] is not None and res.calibrated_tta is not None
    # Fixed reads pixel (0, 0): the flipped view reads (0, 3), which is 0 -> the logits of image 0
    flipped = np.repeat(logits[:1], 50, axis=0)
    expected = (softmax(logits, 3.0) + softmax(flipped, 3.0)) / 2
    np.testing.assert_allclose(res.calibrated_tta, expected, atol=1e-6)
    # probs.npz keeps the calibrated arrays and reads them back
    write_predictions(tmp_path, split.keys, res)
    back, _ = load_result(tmp_path)
    assert back.calibrated_tta is not None and back.calibrated_plain is not None
    np.testing.assert_allclose(back.calibrated_tta, res.calibrated_tta)
    np.testing.assert_allclose(back.calibrated_plain, res.calibrated_plain)


def test_an_ensemble_averages_calibrated_probabilities() -> None:
    model, split, logits = _fixed_case()
    args = (split.images, split.labels, LABELS)
    hot = evaluate_split(model, _eval_meta(2.0), *args, bootstrap=0, device="cpu")
    cold = evaluate_split(model, _eval_meta(0.5), *args, bootstrap=0, device="cpu")
    ens = ensemble_results([hot, cold], bootstrap=0)
    cal = ens.metrics["calibration"]
    assert cal["temperature"] is None and cal["member_temperatures"] == [2.0, 0.5]
    calibrated_vote = (softmax(logits, 2.0) + softmax(logits, 0.5)) / 2
    y = ens.y_true
    assert ens.calibrated_plain is not None
    np.testing.assert_allclose(ens.calibrated_plain, calibrated_vote, atol=1e-6)
    assert cal["plain"]["ece_calibrated"] == pytest.approx(
        expected_calibration_error(calibrated_vote, y), abs=1e-6
    )
    # the ensemble's own prediction is the vote of the uncalibrated members, as before
    np.testing.assert_allclose(ens.probs_plain, softmax(logits), atol=1e-6)
    assert cal["plain"]["accuracy_calibrated"] == pytest.approx(
        float((calibrated_vote.argmax(1) == y).mean())
    )


def test_reliability_diagram_is_a_png_even_with_empty_bins(tmp_path: Path) -> None:
    probs = _rows_with_confidence([0.95, 0.96, 0.2])
    y = np.array([0, 1, 0])
    path = plot_reliability(
        reliability(probs, y), reliability(probs * 0 + 1 / 16, y), tmp_path / "r.png", "t $x$", 1.5
    )
    assert path.read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_tiny_training_stores_a_temperature_and_the_report_shows_it(tmp_path: Path) -> None:
    from ferlab.pipeline import run_experiment

    cfg = load_config(
        "default",
        [
            "train.epochs=1",
            "train.batch_size=32",
            "eval.bootstrap=10",
            "datasets=[{name: synthetic, path: lab, options: {n_train: 70, n_val: 30, n_test: 35}}]",
            f"models=[{{name: ferlab_vgg, kwargs: {json.dumps(NET)}}}]",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path}",
            "runtime.progress=false",
        ],
    )
    res = run_experiment(cfg, progress=False, console=False)
    run = res.run_dir
    meta = read_meta(run)
    assert meta.temperature != 1.0 and math.isfinite(meta.temperature)
    fit = json.loads((run / "fit.json").read_text())
    assert fit["temperature"] == meta.temperature
    # fitted on the 30 validation images, not on the 35 test images
    assert fit["calibration"]["n"] == 30 and fit["calibration"]["split"] == "val"
    assert fit["calibration"]["nll_after"] <= fit["calibration"]["nll_before"]

    plan = json.loads(Layout(res.exp_dir).plan.read_text())
    own = Layout(res.exp_dir).resolve(plan["pairs"][0]["evals"][0]["dir"])
    metrics = json.loads((own / "metrics.json").read_text())
    assert metrics["calibration"]["temperature"] == meta.temperature
    assert (own / RELIABILITY_PNG).read_bytes()[:8] == PNG_MAGIC
    html = (res.exp_dir / "report.html").read_text()
    assert 'id="calibration"' in html and "calibration-table" in html
    assert "reliability diagram of ferlab_vgg" in html
    assert f"{meta.temperature:.3f}" in html
    ece = metrics["calibration"]["plain"]["ece"]
    assert f"{100 * ece:.2f}%" in html

    # A rerun reuses the run, and with it its temperature.
    again = run_experiment(cfg, progress=False, console=False)
    assert [p.status for p in again.pairs] == ["reused"]
    assert read_meta(again.run_dir).temperature == meta.temperature
