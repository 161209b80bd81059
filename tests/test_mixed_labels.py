"""A run that mixes a 7-class and an 8-class dataset: every cross pair is scored on the shared
classes, says which class it left out and how many images, and so do the ensembles and the
report.

The real pipeline end to end on tiny data: ``synthetic:lab`` (the 7 basic emotions) and a
``folder`` dataset in the ``<split>/<class>/`` layout with contempt as an eighth class.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from adapter_fakes import write_image
from ferlab.config import load_config
from ferlab.evaluation import load_result
from ferlab.labels import CANONICAL, EMOTIONS
from ferlab.models import load_model
from ferlab.pipeline import run_experiment

SMALL = "{n_train: 70, n_val: 35, n_test: 35}"
NET = "{widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}"
LAB, EIGHT = "synthetic-lab", "eight"
MODELS = ("ferlab_vgg", "vgg_b")
# Images per split and class of the 8-class folder dataset; contempt has its own test count so
# that the number of images left out cannot be right by accident.
PER_SPLIT = {"train": 4, "val": 2, "test": 2}
CONTEMPT_TEST = 3


def write_eight_class_folders(root: Path) -> None:
    """``<root>/<train|val|test>/<class>/<n>.png``, 20x20, every image a different grey."""
    value = 0
    for split, n in PER_SPLIT.items():
        for cls in CANONICAL:
            count = CONTEMPT_TEST if (split, cls) == ("test", "contempt") else n
            for i in range(count):
                write_image(root / split / cls / f"{i}.png", size=(20, 20), value=value)
                value += 3


def metrics(exp: Path, train: str, model: str, test: str) -> dict[str, Any]:
    return json.loads(
        (exp / "eval" / f"{train}__{model}" / f"on_{test}" / "metrics.json").read_text()
    )


def dropped_table(html: str) -> set[tuple[str, ...]]:
    """The rows of the report's "Classes left out" table, as tuples of their cell texts."""
    table = html.split('id="dropped-table"', 1)[1].split("</table>", 1)[0]
    body = table.split("<tbody>", 1)[1]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return {tuple(c.strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)) for r in rows}


@pytest.mark.slow
def test_seven_and_eight_class_datasets_are_scored_on_their_shared_classes(tmp_path: Path) -> None:
    eight = tmp_path / "eight"
    write_eight_class_folders(eight)
    cfg = load_config(
        "default",
        [
            "train.epochs=1",
            "train.batch_size=32",
            "eval.bootstrap=10",
            f"datasets=[{{name: synthetic, path: lab, options: {SMALL}}},"
            f" {{name: folder, path: '{eight}', label: {EIGHT}}}]",
            f"models=[{{name: ferlab_vgg, kwargs: {NET}}},"
            f" {{name: ferlab_vgg, label: vgg_b, kwargs: {NET}, train: {{lr: 0.001}}}}]",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"output_dir={tmp_path}",
        ],
    )
    res = run_experiment(cfg, progress=False, console=False)
    assert not res.failed, [(p.dataset, p.model, p.error) for p in res.failed]
    exp = res.exp_dir
    n_lab_test = 35
    n_eight_test = 7 * PER_SPLIT["test"] + CONTEMPT_TEST
    n_test_kept = {LAB: n_lab_test, EIGHT: n_eight_test - CONTEMPT_TEST}

    # The 8-class models have 8 outputs, the 7-class ones 7.
    for dataset, labels in ((EIGHT, list(CANONICAL)), (LAB, list(EMOTIONS))):
        for model in MODELS:
            run = res.run_dir_of(dataset, model)
            assert run is not None, (dataset, model)
            net, meta = load_model(run)
            assert meta.labels == labels
            assert net(torch.zeros(2, 1, 48, 48)).shape == (2, len(labels))

    for model in MODELS:
        # 8-class model on the 7-class set: contempt is an output the data lack; no image lost.
        m = metrics(exp, EIGHT, model, LAB)
        assert m["labels"] == list(EMOTIONS)
        assert m["dropped_labels"] == ["contempt"] and m["dropped_from_model"] == ["contempt"]
        assert m["dropped_from_data"] == [] and m["n_dropped_images"] == 0
        assert m["n_total"] == n_lab_test
        for block in ("plain", "tta"):
            assert m[block]["n"] == n_lab_test and m[block]["labels"] == list(EMOTIONS)
            cm = np.array(m[block]["confusion_matrix"])
            assert cm.shape == (7, 7) and cm.sum() == n_lab_test
        # 7-class model on the 8-class set: exactly the contempt test images are left out.
        m = metrics(exp, LAB, model, EIGHT)
        assert m["labels"] == list(EMOTIONS)
        assert m["dropped_labels"] == ["contempt"] and m["dropped_from_data"] == ["contempt"]
        assert m["dropped_from_model"] == [] and m["n_dropped_images"] == CONTEMPT_TEST
        assert m["n_total"] == n_eight_test
        for block in ("plain", "tta"):
            assert m[block]["n"] == n_eight_test - CONTEMPT_TEST
            assert list(m[block]["per_class"]) == list(EMOTIONS)
            supports = [m[block]["per_class"][c]["support"] for c in EMOTIONS]
            assert supports == [PER_SPLIT["test"]] * 7
            assert np.array(m[block]["confusion_matrix"]).shape == (7, 7)
        # On its own test set the 8-class model keeps all 8 classes.
        own = metrics(exp, EIGHT, model, EIGHT)
        assert own["labels"] == list(CANONICAL) and own["dropped_labels"] == []
        assert own["plain"]["per_class"]["contempt"]["support"] == CONTEMPT_TEST

    # The ensembles soft-vote their members' probabilities over the classes the members share
    # with the test set, and count the images left out as their members do.
    for train, test, n_dropped in ((EIGHT, LAB, 0), (LAB, EIGHT, CONTEMPT_TEST)):
        e = metrics(exp, train, "ensemble", test)
        assert e["members"] == list(MODELS)
        assert e["labels"] == list(EMOTIONS) and e["dropped_labels"] == ["contempt"]
        assert e["n_dropped_images"] == n_dropped
        for block in ("plain", "tta"):
            assert e[block]["n"] == n_test_kept[test] and e[block]["labels"] == list(EMOTIONS)
            assert np.array(e[block]["confusion_matrix"]).sum() == n_test_kept[test]
        ens, ens_keys = load_result(exp / "eval" / f"{train}__ensemble" / f"on_{test}")
        members = [load_result(exp / "eval" / f"{train}__{m}" / f"on_{test}") for m in MODELS]
        assert all(keys == ens_keys for _, keys in members)
        assert all(r.labels == list(EMOTIONS) for r, _ in members)
        for views in ("probs_plain", "probs_tta"):
            got = getattr(ens, views)
            # The mean of the members' probabilities over the 7 shared classes (rows renormalised).
            probs = [getattr(r, views).astype(np.float64) for r, _ in members]
            want = np.mean([p / p.sum(axis=1, keepdims=True) for p in probs], axis=0)
            assert got is not None and got.shape == (n_test_kept[test], 7)
            np.testing.assert_allclose(got, want, atol=1e-6)

    # The report's "Classes left out" table lists every pair scored on a subset.
    html = (exp / "report.html").read_text(encoding="utf-8")
    shared = ", ".join(EMOTIONS)
    want_rows = {
        (train, model, test, "contempt", str(n), shared)
        for model in (*MODELS, "ensemble")
        for train, test, n in ((EIGHT, LAB, 0), (LAB, EIGHT, CONTEMPT_TEST))
    }
    assert dropped_table(html) == want_rows
