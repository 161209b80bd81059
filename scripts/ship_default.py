"""Put a trained run into the package as ferlab's default model, with its model card.

    python bench/accuracy.py --config fer2013_cpu_quick --budget-min 20 --json --out RUN > RUN.json
    python scripts/ship_default.py --bench-json RUN.json

reads the run that ``bench/accuracy.py`` measured (it is ``ferlab run fer2013_cpu_quick`` with the
reference scores added: other TTA variants, FER+ test, ExpW test), and writes
``src/ferlab/models/default/``: ``weights.safetensors`` and ``meta.json`` (the run's, with the
machine-local dataset path replaced by the recipe's and the measured scores under
``extra.default_model``) and ``MODEL_CARD.md`` (data, protocol, per-class metrics, calibration,
FER+ and ExpW, limits, terms of use). Nothing is trained or scored here; every figure in the card
is copied from the run's own files.

    python scripts/ship_default.py --compare OTHER_RUN_FOLDER

prints the PrivateTest scores of another run of the recipe (a reproduction) beside the shipped
model's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ferlab.config import load_config
from ferlab.layout import WEIGHTS, Layout, read_json
from ferlab.models import load_model, save_model
from ferlab.models.meta import SHIPPED
from ferlab.record.reader import load_record

CARD = "MODEL_CARD.md"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _ci(block: dict[str, Any], key: str) -> str:
    lo, hi = block["ci"][key]
    return f"{_pct(block[key])} ({100 * lo:.2f}-{100 * hi:.2f})"


def _metrics_of(experiment: Path) -> dict[str, Any]:
    """The evaluation of the experiment's FER2013 model on FER2013's test split (PrivateTest),
    as its plan records it (``load_record``: files of an older plan in the folder are not read)."""
    found = [
        e.data
        for e in load_record(experiment).evaluations
        if e.train_dataset == e.test_dataset == "fer2013"
    ]
    if len(found) != 1:
        raise SystemExit(
            f"{experiment}: expected one FER2013 -> FER2013 evaluation, got {len(found)}"
        )
    return found[0]


def _top_confusions(block: dict[str, Any], k: int) -> str:
    """The k largest off-diagonal cells of the confusion matrix, as "true as predicted (n)"."""
    labels, cm = block["labels"], block["confusion_matrix"]
    cells = [(cm[i][j], labels[i], labels[j]) for i in range(len(labels))
             for j in range(len(labels)) if i != j]  # fmt: skip
    top = sorted(cells, reverse=True)[:k]
    return ", ".join(f"`{t}` taken for `{p}` ({n} faces)" for n, t, p in top)


def default_facts(bench: dict[str, Any], metrics: dict[str, Any], seed: int) -> dict[str, Any]:
    """What meta.json says about how the shipped model was made and what it scored."""
    test = bench["test"]
    head, gen = test["headline"], bench["generalisation"]
    recipe = bench["recipe"]
    return {
        "recipe": recipe,
        "command": f"ferlab run {recipe}",
        "seed": seed,
        "epochs": bench["epochs_run"],
        "best_epoch": bench["best_epoch"],
        "train_minutes": bench["minutes"]["train"],
        "machine": bench["machine"]["cpu_kernels"],
        "threads": bench["machine"]["torch_threads"],
        "trained": bench["date"],
        "code_digest": metrics["produced_by"]["code_digest"],
        "scores": {
            "publictest_accuracy": bench["val_best"]["val_accuracy"],
            "privatetest_accuracy": head["accuracy"],
            "privatetest_accuracy_ci": head["ci"]["accuracy"],
            "privatetest_balanced_accuracy": head["balanced_accuracy"],
            "privatetest_macro_f1": head["macro_f1"],
            "privatetest_plain_accuracy": test["plain"]["accuracy"],
            "ferplus_test_accuracy": gen.get("ferplus", {}).get("tta", {}).get("accuracy"),
            "expw_test_accuracy": gen.get("expw", {}).get("tta", {}).get("accuracy"),
        },
    }


def card(
    meta: Any,
    facts: dict[str, Any],
    bench: dict[str, Any],
    metrics: dict[str, Any],
    splits: dict[str, Any],
) -> str:
    """MODEL_CARD.md: every figure from the run's files, none typed in."""
    s, head, plain = facts["scores"], bench["test"]["headline"], bench["test"]["plain"]
    tta = metrics["tta_config"]
    views = bench["test"]["headline_views"]
    cal = metrics["calibration"]
    per = metrics["tta"]["per_class"]
    gen = bench["generalisation"]
    n = {split: splits[split]["total"] for split in ("train", "val", "test")}
    rare = min(splits["train"]["per_class"].items(), key=lambda kv: kv[1])
    weakest = min(per, key=lambda name: per[name]["f1"])
    confusions = _top_confusions(metrics["tta"], 3)
    rows = "\n".join(
        f"| {name} | {_pct(c['precision'])} | {_pct(c['recall'])} | {_pct(c['f1'])} | "
        f"{c['support']} |"
        for name, c in per.items()
    )
    other = []
    for key, title in (("ferplus", "FER+ test (FER2013 faces, ten annotators' majority)"),
                       ("expw", "ExpW test (seeded split of the `Expw-F` crops, in the wild)")):  # fmt: skip
        g = gen.get(key)
        if g:
            t = g["tta"]
            other.append(
                f"| {title} | {g['scored']:,} | {_ci(t, 'accuracy')} | "
                f"{_ci(t, 'balanced_accuracy')} | {_pct(t['macro_f1'])} |"
            )
    other_rows = "\n".join(other) or "| (not measured) | | | | |"
    crops = (
        f"hflip + {tta['crops']} crops of {tta['crop_fraction']:.0%}" if tta["crops"] else "hflip"
    )
    return f"""# ferlab's default model

`ferlab predict photos/` uses this model when no `--weights` is given; `--weights default`
(predict, evaluate, export) and `ferlab.load_model("default")` name it.

| | |
| --- | --- |
| architecture | `{meta.architecture}` ({bench["params"]:,} parameters), ferlab's compact VGG-style net |
| input | {meta.image_size}x{meta.image_size} greyscale face crop, pixels / 255, normalised with mean {list(meta.mean)}, std {list(meta.std)} |
| output | {len(meta.labels)} classes: {", ".join(meta.labels)} |
| calibration | temperature {meta.temperature:.4f} (fitted on PublicTest) |
| test-time augmentation | {crops} ({views} views, averaged) |
| weights | `{WEIGHTS}` (safetensors, state dict only; loading runs no code from the file) |

## How it was made: one command

`{facts["command"]}` (the shipped recipe `src/ferlab/configs/{facts["recipe"]}.yaml`, seed
{facts["seed"]}) on FER2013's image folders. The recipe's time budget planned the schedule on the
machine that trained it: {facts["epochs"]} epochs in {facts["train_minutes"]:.1f} minutes on
{facts["threads"]} CPU threads ({facts["machine"]}; bf16 autocast where the CPU has native bf16).
Measured by `{bench["command"]}` on {facts["trained"]}.

Protocol (FER2013's official splits): Training ({n["train"]:,} faces) trains; PublicTest ({n["val"]:,}) chooses
the best epoch ({facts["best_epoch"]}, PublicTest accuracy {_pct(s["publictest_accuracy"])}),
the temperature and every recipe choice; PrivateTest ({n["test"]:,}) was read once, after all choices,
with the recipe's TTA. The 73.28% often quoted for FER2013 from scratch (Khaireddin & Chen 2021)
is a PublicTest number chosen on PrivateTest, so it is not comparable with the one below.

A rerun of the command gives a model within the seed spread of this one, not the same bytes:
the epoch count depends on the machine's speed (`bench/RESULTS.md`, round three, has the
reproduction).

## Scores

| FER2013 PrivateTest ({n["test"]:,}) | accuracy (95% CI) | balanced accuracy (95% CI) | macro-F1 |
| --- | --- | --- | ---: |
| with the TTA (headline) | **{_ci(head, "accuracy")}** | {_ci(head, "balanced_accuracy")} | {_pct(head["macro_f1"])} |
| one view | {_ci(plain, "accuracy")} | {_ci(plain, "balanced_accuracy")} | {_pct(plain["macro_f1"])} |

Per class on PrivateTest, with the TTA:

| class | precision | recall | F1 | support |
| --- | ---: | ---: | ---: | ---: |
{rows}

Calibration on PrivateTest ({cal["bins"]} bins): expected calibration error
{_pct(cal["tta"]["ece"])} with the TTA before temperature scaling and
{_pct(cal["tta"]["ece_calibrated"])} after; one view {_pct(cal["plain"]["ece"])} and
{_pct(cal["plain"]["ece_calibrated"])}. The probabilities `ferlab predict` prints are the
calibrated ones.

Other datasets, never seen in training or in any choice (reference only), with the TTA:

| dataset | faces | accuracy (95% CI) | balanced accuracy (95% CI) | macro-F1 |
| --- | ---: | --- | --- | ---: |
{other_rows}

## Known limits

- Trained on FER2013 only: 48x48 greyscale web images, mostly frontal, posed or semi-posed,
  labelled by one annotator each. In-the-wild photos score far lower (ExpW above), and so do
  faces that are small, in profile, occluded or badly lit.
- `{rare[0]}` has {rare[1]:,} training faces of {n["train"]:,} ({splits["test"]["per_class"][rare[0]]} in
  PrivateTest), so its scores above have wide margins of error. The weakest class is
  `{weakest}` (F1 {_pct(per[weakest]["f1"])}); the most frequent confusions on PrivateTest are
  {confusions}.
- `ferlab predict` finds faces first (MTCNN where facenet-pytorch is installed, else OpenCV's
  Haar cascade); a face the detector misses gets no row. The model saw FER2013's tight crops,
  so predict frames a face as the detector's box made square, with no margin (FER2013's faces
  measure as large as either box); `--margin` and `--detector` change that, and the scores
  with them. `bench/RESULTS.md` has its accuracy on whole ExpW photos beside the `fer`
  package's model.
- Seven basic-emotion labels describe facial configurations, not what a person feels. Do not
  use this model to make decisions about people (hiring, policing, health, education).

## Terms of use

The weights are derived from FER2013 (Goodfellow et al., "Challenges in Representation Learning:
A report on three machine learning contests", 2013; released through the Kaggle ICML 2013
challenge) which is distributed for research use. Treat the weights as research-only as well
and cite FER2013 when you use them. ferlab's MIT licence covers its code, not this dataset or
what was trained on it. FER+ (Barsoum et al. 2016; labels MIT) and ExpW (Zhang et al. 2016/2018,
research use) were used only to score the model.
"""


def ship(bench_json: Path) -> None:
    bench = json.loads(bench_json.read_text())
    run_dir = Path(bench["run_dir"])
    experiment = Path(bench["experiment"])
    metrics = _metrics_of(experiment)
    splits = read_json(Layout(experiment).data_json("fer2013"))["splits"]
    model, meta = load_model(run_dir)
    recipe = load_config(bench["recipe"])
    facts = default_facts(bench, metrics, meta.extra.get("seed", recipe.seed))
    data = dict(meta.extra.get("data") or {})
    data["path"] = str(recipe.datasets[0].path)  # not this machine's absolute path
    meta.extra = {**meta.extra, "data": data, "default_model": facts}
    SHIPPED.mkdir(parents=True, exist_ok=True)
    save_model(model, meta, SHIPPED)
    (SHIPPED / CARD).write_text(card(meta, facts, bench, metrics, splits))
    print(
        f"shipped {run_dir} -> {SHIPPED} (PrivateTest {_pct(facts['scores']['privatetest_accuracy'])})"
    )


def compare(other: Path) -> None:
    """A reproduction's PrivateTest scores beside the shipped model's."""
    shipped = json.loads((SHIPPED / "meta.json").read_text())["extra"]["default_model"]["scores"]
    metrics = _metrics_of(other)
    t = metrics["tta"]
    print(f"{'':24} {'shipped':>9} {'rerun':>9} {'difference':>11}")
    for key, mine in (("accuracy", "privatetest_accuracy"),
                      ("balanced_accuracy", "privatetest_balanced_accuracy"),
                      ("macro_f1", "privatetest_macro_f1")):  # fmt: skip
        a, b = shipped[mine], t[key]
        print(f"{key:24} {_pct(a):>9} {_pct(b):>9} {100 * (b - a):+10.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--bench-json", type=Path, help="bench/accuracy.py --json output of the run")
    g.add_argument("--compare", type=Path, help="an experiment folder of a rerun of the recipe")
    args = p.parse_args(argv)
    if args.bench_json:
        ship(args.bench_json)
    else:
        compare(args.compare)
    return 0


if __name__ == "__main__":
    sys.exit(main())
