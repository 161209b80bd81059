"""Duplicates and leakage the run looks for: exact and near-identical images within a dataset,
across its splits and across datasets, and the report's table of inflated scores."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ferlab.data.base import ArraySplit, LoadedDataset
from ferlab.data.duplicates import exact_hashes, leakage, near_hashes, split_duplicates


def _faces(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 8, 8)).astype(np.float32)
    big = np.kron(base, np.ones((6, 6), dtype=np.float32))  # (n, 48, 48), 8x8 cells of 6 px
    big += rng.normal(0, 12, size=big.shape)  # texture, so that JPEG changes the pixels
    return np.clip(big, 0, 255).astype(np.uint8)[..., None]


def _dataset(name: str, splits: dict[str, np.ndarray]) -> LoadedDataset:
    arrays = {
        s: ArraySplit(images=a, labels=np.zeros(len(a), dtype=np.int64), keys=[f"{s}/{i}" for i in range(len(a))])
        for s, a in splits.items()
    }  # fmt: skip
    fp = "".join(f"{s}{exact_hashes(a.images).sum()}" for s, a in arrays.items())
    return LoadedDataset(name, ["angry"], arrays, "", fingerprint=f"{name}-{fp}")


def _jpeg(images: np.ndarray, quality: int = 85) -> np.ndarray:
    out = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im[..., 0]).save(buf, format="JPEG", quality=quality)
        out.append(np.asarray(Image.open(buf))[..., None])
    return np.stack(out)


def test_near_hash_sees_through_reencoding_and_tells_faces_apart() -> None:
    faces = _faces(200, 0)
    again = _jpeg(faces)
    assert not np.array_equal(faces, again)  # the bytes differ ...
    assert (near_hashes(faces) == near_hashes(again)).mean() > 0.9  # ... the faces match
    assert (exact_hashes(faces) == exact_hashes(again)).mean() < 0.1
    others = near_hashes(_faces(200, 1))
    assert np.isin(others, near_hashes(faces)).sum() <= 2


def test_split_duplicates_and_leakage_count_what_they_should() -> None:
    train, val, test = _faces(50, 0), _faces(20, 1), _faces(30, 2)
    test[:4] = train[:4]  # 4 test images are training images
    test[4:6] = _jpeg(val[:2])  # 2 are re-encoded validation images
    train[10] = train[11]  # a duplicate within train
    d = _dataset("a", {"train": train, "val": val, "test": test})
    dup = split_duplicates(d)
    assert dup["exact"]["cross_split_groups"] == 4
    assert dup["exact"]["groups"] == 5 and dup["exact"]["test_images_seen_in_train_or_val"] == 4
    assert dup["near"]["test_images_seen_in_train_or_val"] >= 6
    other = _dataset("b", {"test": np.concatenate([_jpeg(train[:7]), _faces(13, 3)])})
    leak = leakage(d, other)
    assert leak["n_test"] == 20 and leak["exact_in_train"] == 0
    assert leak["near_in_train"] >= 6 and leak["near_in_val"] == 0
    assert leakage(d, _dataset("c", {"val": val})) == {"n_test": 0}
    # A test image that is both a train and a val image counts once (not "2 of 1 images").
    both = _dataset(
        "e", {"train": train, "val": np.concatenate([val, train[:1]]), "test": train[:1]}
    )
    twice = leakage(both, both)
    assert twice["exact_in_train"] == twice["exact_in_val"] == 1
    assert twice["exact_in_either"] == 1 and twice["near_in_either"] == 1


def test_the_report_shows_leakage_beside_the_accuracy(tmp_path: Path) -> None:
    from ferlab.layout import Layout
    from ferlab.report import build_report
    from fixtures_report import DATASETS, MODELS, make_fake_experiment

    exp = make_fake_experiment(tmp_path)
    rows = [
        {"train_dataset": DATASETS[0], "test_dataset": DATASETS[1], "n_test": 300,
         "exact_in_train": 10, "exact_in_val": 0, "near_in_train": 27, "near_in_val": 3},
        {"train_dataset": DATASETS[0], "test_dataset": DATASETS[0], "n_test": 300,
         "exact_in_train": 0, "exact_in_val": 0, "near_in_train": 0, "near_in_val": 0},
    ]  # fmt: skip
    Layout(exp).leakage.write_text(json.dumps({"pairs": rows}))
    html = build_report(exp).read_text()
    table = html.split('id="leakage-table"', 1)[1].split("</table>", 1)[0]
    metrics = json.loads(
        (
            exp / "eval" / f"{DATASETS[0]}__{MODELS[0]}" / f"on_{DATASETS[1]}" / "metrics.json"
        ).read_text()
    )
    acc = f"{100 * metrics['tta']['accuracy']:.1f}%"
    assert (
        f'<td>{DATASETS[0]}</td><td>{MODELS[0]}</td><td>{DATASETS[1]}</td><td class="num">{acc}</td>'
        in table
    )
    assert (
        '<td class="num">27</td><td class="num">3</td><td class="num">10</td><td class="num">10.0%</td>'
        in table
    )
    assert f"<td>{DATASETS[0]}</td><td>{MODELS[0]}</td><td>{DATASETS[0]}</td>" not in table
