"""Label-set intersection, evaluate_split, result files, cross-dataset matrix and ensembles."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ferlab.calibration import expected_calibration_error
from ferlab.config import TTAConfig
from ferlab.data.base import ArraySplit
from ferlab.evaluation import (
    EvalResult,
    align_labels,
    ensemble_from_dirs,
    ensemble_results,
    evaluate,
    evaluate_split,
    flat_metrics,
    load_result,
    predict_all,
    soft_vote,
    write_predictions,
)
from ferlab.evaluation.evaluate import write_predictions_csv
from ferlab.labels import CANONICAL, EMOTIONS, INDEX
from ferlab.layout import write_json
from ferlab.models import ModelMeta

SIZE = 8


def make_meta(labels: Sequence[str]) -> Any:
    return ModelMeta(
        architecture="test",
        labels=list(labels),
        image_size=SIZE,
        channels=1,
        mean=(0.0,),
        std=(1.0,),
        kwargs={},
        ferlab_version="0",
        extra={},
    )


def brightness(canonical: int) -> int:
    """Pixel value that encodes a canonical class in the test images."""
    return 20 + 25 * canonical


class Oracle(nn.Module):
    """Reads the class from the image brightness; ``favour`` adds a bonus to one output.

    A left-right ramp of strength ``tilt`` makes it sensitive to horizontal flips.
    """

    def __init__(self, labels: Sequence[str], favour: str | None = None, tilt: float = 0.0) -> None:
        super().__init__()
        centres = [brightness(INDEX[n]) / 255 for n in labels]
        self.register_buffer("centres", torch.tensor(centres))
        self.bonus = torch.zeros(len(labels))
        if favour is not None:
            self.bonus[list(labels).index(favour)] = 200.0
        self.tilt = tilt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))[:, None]  # (B, 1)
        ramp = torch.linspace(-1, 1, x.shape[-1])
        lean = (x.mean(dim=(1, 2)) * ramp).sum(-1, keepdim=True)  # (B, 1), flips sign with hflip
        return -200 * (m - self.centres) ** 2 + self.bonus + self.tilt * lean * self.centres


def make_split(classes: Sequence[str], per_class: int = 3, seed: int = 0) -> ArraySplit:
    rng = np.random.default_rng(seed)
    labels = np.repeat([INDEX[c] for c in classes], per_class).astype(np.int64)
    rng.shuffle(labels)
    images = np.stack(
        [np.full((SIZE, SIZE, 1), brightness(int(y)), dtype=np.uint8) for y in labels]
    )
    images[:, :, : SIZE // 2] += 3  # brighter left half: flips matter to a tilted model
    keys = [f"img{i:03d}.png" for i in range(len(labels))]
    return ArraySplit(images=images, labels=labels, keys=keys)


# ----------------------------------------------------------------------------- alignment


def test_align_labels_maps_positions_and_lists_what_is_dropped() -> None:
    a = align_labels(["sad", "angry", "happy"], ["angry", "happy", "neutral"])
    assert a.shared == ["angry", "happy"]
    assert a.model_idx.tolist() == [1, 2]
    assert a.data_idx.tolist() == [INDEX["angry"], INDEX["happy"]]
    assert a.dropped_from_model == ["sad"]
    assert a.dropped_from_data == ["neutral"]
    assert a.dropped == ["sad", "neutral"]  # canonical order
    y = np.array([INDEX["neutral"], INDEX["happy"], INDEX["angry"]])
    assert a.keep_mask(y).tolist() == [False, True, True]
    assert a.to_shared(y[1:]).tolist() == [1, 0]
    restricted = a.restrict(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    np.testing.assert_allclose(restricted, [[0.6, 0.4]], atol=1e-6)
    with pytest.raises(ValueError, match="non-canonical"):
        align_labels(["happy", "joyful"], ["happy"])


def test_seven_class_model_on_eight_class_data_drops_and_counts_contempt() -> None:
    split = make_split(CANONICAL, per_class=3)
    meta = make_meta(EMOTIONS)
    res = evaluate(Oracle(EMOTIONS), meta, split, list(CANONICAL), bootstrap=50, device="cpu")
    m = res.metrics
    assert m["labels"] == list(EMOTIONS)
    assert m["dropped_labels"] == ["contempt"]
    assert m["dropped_from_data"] == ["contempt"] and m["dropped_from_model"] == []
    assert m["n_dropped_images"] == 3 and m["n_total"] == 24
    assert m["plain"]["n"] == 21 and m["plain"]["accuracy"] == 1.0
    assert res.kept_mask.tolist() == (split.labels != INDEX["contempt"]).tolist()
    assert res.probs_plain.shape == (21, 7)
    assert [EMOTIONS[i] for i in res.y_true] == [CANONICAL[i] for i in split.labels[res.kept_mask]]


def test_eight_class_model_on_seven_class_data_is_scored_on_shared_outputs() -> None:
    split = make_split(EMOTIONS, per_class=2)
    model = Oracle(CANONICAL, favour="contempt")  # contempt always wins among all 8 outputs
    meta = make_meta(CANONICAL)
    raw = predict_all(model, split.images, meta, None, device="cpu").probs
    assert (raw.argmax(1) == INDEX["contempt"]).all()  # unrestricted, everything is wrong
    res = evaluate_split(
        model, meta, split.images, split.labels, list(EMOTIONS), bootstrap=0, device="cpu"
    )
    assert res.metrics["dropped_labels"] == ["contempt"]
    assert res.metrics["dropped_from_model"] == ["contempt"]
    assert res.metrics["n_dropped_images"] == 0
    assert res.metrics["plain"]["accuracy"] == 1.0
    np.testing.assert_allclose(res.probs_plain.sum(axis=1), 1.0, atol=1e-5)


class Untouchable(nn.Module):
    """A model that must not be run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model was run although there is nothing to score")


def test_no_shared_class_is_an_error() -> None:
    split = make_split(["happy", "neutral"], per_class=1)
    meta = make_meta(["angry", "sad"])
    want = (
        "The model's labels ['angry', 'sad'] and the dataset's labels ['happy', 'neutral'] "
        "share no class, so there is nothing to score."
    )
    with pytest.raises(ValueError) as err:
        evaluate(Untouchable(), meta, split, ["happy", "neutral"], device="cpu")
    assert type(err.value) is ValueError and str(err.value) == want  # before any prediction
    with pytest.raises(ValueError) as again:
        evaluate_split(
            Untouchable(), meta, split.images, split.labels, ["happy", "neutral"], device="cpu"
        )
    assert str(again.value) == want


def test_one_pass_gives_plain_and_tta_results() -> None:
    split = make_split(EMOTIONS, per_class=2)
    model, meta = Oracle(EMOTIONS, tilt=400.0), make_meta(EMOTIONS)
    tta = TTAConfig(hflip=True)
    res = evaluate(model, meta, split, list(EMOTIONS), tta, bootstrap=20, device="cpu")
    plain = predict_all(model, split.images, meta, None, device="cpu").probs
    averaged = predict_all(model, split.images, meta, tta, device="cpu").probs
    np.testing.assert_allclose(res.probs_plain, plain, atol=1e-6)
    assert res.probs_tta is not None
    np.testing.assert_allclose(res.probs_tta, averaged, atol=1e-6)
    assert not np.allclose(res.probs_plain, res.probs_tta, atol=1e-3)  # the tilt shows
    m = res.metrics
    assert m["tta_views"] == 2 and m["tta_config"]["hflip"] is True
    assert m["tta"]["n"] == m["plain"]["n"] == 14
    assert m["throughput_ips"] > 0
    off = evaluate(model, meta, split, list(EMOTIONS), None, bootstrap=0, device="cpu")
    assert off.metrics["tta"] is None and off.probs_tta is None and off.metrics["tta_views"] == 1


def test_flat_metrics_has_the_cli_shape() -> None:
    split = make_split(CANONICAL, per_class=2)
    res = evaluate(
        Oracle(EMOTIONS), make_meta(EMOTIONS), split, list(CANONICAL), bootstrap=10, device="cpu"
    )
    flat = flat_metrics(res, use_tta=False)
    assert set(flat) == {
        "accuracy",
        "balanced_accuracy",
        "macro_f1",
        "n",
        "per_class",
        "confusion_matrix",
        "labels",
        "dropped_labels",
        "ci",
        "temperature",
        "ece",
        "ece_calibrated",
    }
    assert flat["dropped_labels"] == ["contempt"] and flat["n"] == 14
    # T = 1 from the metadata: the calibrated probabilities are the plain ones.
    assert flat["temperature"] == 1.0
    assert flat["ece"] == pytest.approx(expected_calibration_error(res.probs_plain, res.y_true))
    assert flat["ece_calibrated"] == flat["ece"]
    assert flat == flat_metrics(res.metrics, use_tta=False)  # also from metrics.json
    with pytest.raises(ValueError, match="tta"):
        flat_metrics(res, use_tta=True)


# ----------------------------------------------------------------------------- files


def test_metrics_json_is_atomic_and_strict(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "metrics.json"
    write_json(path, {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None, "c": [0, 1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left


def test_predictions_csv_lists_kept_images_with_both_predictions(tmp_path: Path) -> None:
    split = make_split(CANONICAL, per_class=2)
    model, meta = Oracle(EMOTIONS, tilt=400.0), make_meta(EMOTIONS)
    res = evaluate(
        model, meta, split, list(CANONICAL), TTAConfig(hflip=True), bootstrap=0, device="cpu"
    )
    path = tmp_path / "predictions.csv"
    res.write_predictions(path, split.keys)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 14
    kept_keys = [k for k, keep in zip(split.keys, res.kept_mask, strict=True) if keep]
    assert [r["key"] for r in rows] == kept_keys
    assert list(rows[0]) == ["key", "true", "pred", "pred_plain"] + [f"prob_{n}" for n in EMOTIONS]
    assert all(r["true"] != "contempt" for r in rows)
    assert sum(float(rows[0][f"prob_{n}"]) for n in EMOTIONS) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="keys"):
        res.write_predictions(path, split.keys[:3])
    write_predictions_csv(path, ["x"], np.array([1]), np.array([[0.2, 0.8]]), ["sad", "happy"])
    assert path.read_text().splitlines() == [
        "key,true,pred,prob_sad,prob_happy",
        "x,happy,happy,0.2,0.8",
    ]


# ----------------------------------------------------------------------------- cross-dataset


def test_cross_pair_without_images_of_shared_classes_is_an_empty_evaluation() -> None:
    # A 7-class model on a test split holding only contempt: the label sets share 7 classes,
    # but every image is dropped. The result says so with empty metrics, not an error or a 0.
    split = make_split(["contempt"], per_class=3)
    tta = TTAConfig(hflip=True)
    res = evaluate(
        Oracle(EMOTIONS),
        make_meta(EMOTIONS),
        split,
        list(CANONICAL),
        tta,
        bootstrap=20,
        device="cpu",
    )
    m = res.metrics
    assert m["labels"] == list(EMOTIONS) and m["dropped_labels"] == ["contempt"]
    assert m["n_total"] == 3 and m["n_dropped_images"] == 3
    assert m["tta_views"] == 2 and m["throughput_ips"] == 0.0
    assert res.kept_mask.tolist() == [False, False, False]
    assert res.y_true.shape == (0,)
    assert res.probs_plain.shape == (0, 7)
    assert res.probs_tta is not None and res.probs_tta.shape == (0, 7)
    zeros = [[0] * 7 for _ in range(7)]
    for block in (m["plain"], m["tta"]):
        assert block["n"] == 0 and block["labels"] == list(EMOTIONS)
        assert block["accuracy"] is None and block["balanced_accuracy"] is None
        assert block["macro_f1"] is None and block["log_loss"] is None
        assert block["ci"] == {"accuracy": None, "balanced_accuracy": None, "macro_f1": None}
        assert block["confusion_matrix"] == zeros
        assert block["confusion_matrix_normalized"] == [[0.0] * 7 for _ in range(7)]
        assert all(pc["support"] == 0 and pc["recall"] == 0.0 for pc in block["per_class"].values())
    flat = flat_metrics(res, use_tta=True)
    assert flat["n"] == 0 and flat["accuracy"] is None and flat["dropped_labels"] == ["contempt"]


# ----------------------------------------------------------------------------- ensembles


def test_soft_vote_averages_over_the_label_intersection() -> None:
    p1 = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])  # angry happy sad
    p2 = np.array([[0.2, 0.8], [0.6, 0.4]])  # sad angry (any order)
    probs, labels = soft_vote([p1, p2], [["angry", "happy", "sad"], ["sad", "angry"]])
    assert labels == ["angry", "sad"]
    # member 1 on {angry, sad}: [5/7, 2/7], [1/9, 8/9]; member 2: [0.8, 0.2], [0.4, 0.6]
    expected = np.array(
        [[(5 / 7 + 0.8) / 2, (2 / 7 + 0.2) / 2], [(1 / 9 + 0.4) / 2, (8 / 9 + 0.6) / 2]]
    )
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    weighted, _ = soft_vote([p1, p2], [["angry", "happy", "sad"], ["sad", "angry"]], weights=[3, 1])
    np.testing.assert_allclose(
        weighted[0], [(3 * 5 / 7 + 0.8) / 4, (3 * 2 / 7 + 0.2) / 4], atol=1e-6
    )
    with pytest.raises(ValueError, match="share no label"):
        soft_vote([p1, p2[:, :1]], [["angry", "happy", "sad"], ["neutral"]])
    with pytest.raises(ValueError, match="weights"):
        soft_vote([p1, p2], [["angry", "happy", "sad"], ["sad", "angry"]], weights=[1, -1])
    with pytest.raises(ValueError, match="member 1"):
        soft_vote([p1, p2[:1]], [["angry", "happy", "sad"], ["sad", "angry"]])


def test_ensemble_results_combines_members_with_different_label_sets() -> None:
    split = make_split(CANONICAL, per_class=2)
    tta = TTAConfig(hflip=True)
    seven = evaluate(
        Oracle(EMOTIONS),
        make_meta(EMOTIONS),
        split,
        list(CANONICAL),
        tta,
        bootstrap=0,
        device="cpu",
    )
    five_labels = ["angry", "fear", "happy", "sad", "neutral"]
    five = evaluate(
        Oracle(five_labels),
        make_meta(five_labels),
        split,
        list(CANONICAL),
        tta,
        bootstrap=0,
        device="cpu",
    )
    ens = ensemble_results([seven, five], bootstrap=20)
    m = ens.metrics
    assert m["labels"] == five_labels
    assert m["dropped_labels"] == ["disgust", "surprise", "contempt"]
    assert m["n_dropped_images"] == 6 and m["plain"]["n"] == 10
    assert m["plain"]["accuracy"] == 1.0 and m["tta"]["accuracy"] == 1.0
    assert ens.kept_mask.sum() == 10
    expected, _ = soft_vote(
        [
            seven.probs_plain[ens.kept_mask[seven.kept_mask]],
            five.probs_plain[ens.kept_mask[five.kept_mask]],
        ],
        [seven.labels, five.labels],
    )
    np.testing.assert_allclose(ens.probs_plain, expected, atol=1e-6)
    assert isinstance(ens, EvalResult)
    assert flat_metrics(ens, use_tta=True)["n"] == 10


def test_saved_probabilities_round_trip(tmp_path: Path) -> None:
    split = make_split(CANONICAL, per_class=2)
    res = evaluate(
        Oracle(EMOTIONS, tilt=400.0),
        make_meta(EMOTIONS),
        split,
        list(CANONICAL),
        TTAConfig(hflip=True),
        bootstrap=0,
        device="cpu",
    )
    write_predictions(tmp_path, split.keys, res)
    write_json(tmp_path / "metrics.json", {"train_dataset": "a", **res.metrics})
    back, keys = load_result(tmp_path)
    assert keys == split.keys
    assert back.labels == res.labels and back.metrics["train_dataset"] == "a"
    np.testing.assert_array_equal(back.kept_mask, res.kept_mask)
    np.testing.assert_array_equal(back.y_true, res.y_true)
    np.testing.assert_allclose(back.probs_plain, res.probs_plain)
    assert back.probs_tta is not None and res.probs_tta is not None
    np.testing.assert_allclose(back.probs_tta, res.probs_tta)
    assert (tmp_path / "predictions.csv").exists()
    (tmp_path / "probs.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"probs\.npz"):
        load_result(tmp_path)


def save_member(
    exp: Path, train: str, model: str, labels: Sequence[str], split: ArraySplit
) -> Path:
    res = evaluate(
        Oracle(labels),
        make_meta(labels),
        split,
        list(CANONICAL),
        TTAConfig(),
        bootstrap=0,
        device="cpu",
    )
    out = exp / "eval" / f"{train}__{model}" / f"on_{train}"
    write_predictions(out, split.keys, res)
    ids = {"train_dataset": train, "model": model, "test_dataset": train}
    write_json(out / "metrics.json", {**ids, **res.metrics})
    return out


def test_ensemble_from_dirs_votes_over_the_named_members_only(tmp_path: Path) -> None:
    split = make_split(CANONICAL, per_class=2)
    seven = save_member(tmp_path, "lab", "seven", EMOTIONS, split)
    five = save_member(tmp_path, "lab", "five", ["angry", "fear", "happy", "sad", "neutral"], split)
    # A third evaluation on disk that the caller does not name takes no part (nothing globs).
    save_member(tmp_path, "lab", "stray", ["angry", "happy"], split)
    out = tmp_path / "eval" / "lab__ensemble" / "on_lab"
    ids = {"train_dataset": "lab", "model": "ensemble", "test_dataset": "lab", "eval_key": "k"}
    ensemble_from_dirs({"five": five, "seven": seven}, out, ids=ids, bootstrap=10, seed=0)
    with pytest.raises(ValueError, match="at least two members"):
        ensemble_from_dirs({"seven": seven}, out, bootstrap=0)
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "ensemble" and m["train_dataset"] == "lab" and m["test_dataset"] == "lab"
    assert m["eval_key"] == "k"
    assert m["members"] == ["five", "seven"]
    assert m["labels"] == ["angry", "fear", "happy", "sad", "neutral"]
    assert m["tta"]["n"] == 10 and m["tta"]["accuracy"] == 1.0 and m["tta_views"] == 2
    assert m["throughput_ips"] > 0
    assert len(list(csv.DictReader((out / "predictions.csv").open()))) == 10
    # A member evaluated on other images is refused, naming the folders.
    other = save_member(
        tmp_path, "lab", "five", ["angry", "happy"], make_split(CANONICAL, per_class=1)
    )
    with pytest.raises(ValueError, match="different images"):
        ensemble_from_dirs({"five": other, "seven": seven}, out, bootstrap=0)
