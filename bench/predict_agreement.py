"""Does ``ferlab predict`` give an image the number ``ferlab run`` gave it? (issue 19)

Takes an experiment folder that ``ferlab run`` trained and evaluated (its planned evaluation of
a pair on its own test split: ``eval/<dataset>__<model>/on_<dataset>/probs.npz``, the test
images' keys and calibrated probabilities), treats those test images as photos, and runs
``ferlab predict`` on them with the run's weights: with ``--detector none`` (each image one
face, decoded as the data layer decodes it) and with the default framing (the run's, or for a
run without ``data.face_crop``, Haar with a tight margin), each plain and with ``--tta``.
Reports, per setting, how many images got a face, the argmax agreement with the run's
evaluation and the largest and mean absolute probability difference.

    python bench/predict_agreement.py --exp runs/fer2013_cpu_quick [--limit 1000] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common as C


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--exp", required=True, help="an experiment folder ferlab run wrote")
    ap.add_argument("--pair", default=None, help="eval/<folder> to use (default: the first)")
    ap.add_argument("--limit", type=int, default=None, help="first N test images only")
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    return ap.parse_args(argv)


def planned_eval(exp: Path, pair: str | None) -> tuple[Path, Path]:
    """(the evaluation folder of a pair on its own test set, the pair's run folder)."""
    from ferlab.layout import Layout
    from ferlab.record import read_plan

    layout = Layout(exp)
    plan = read_plan(layout)
    for p in plan.pairs:
        if p.kind != "model" or (pair is not None and pair not in p.run_dir):
            continue
        own = [e for e in p.evals if e.test == p.dataset]
        if own:
            return layout.resolve(own[0].dir), layout.resolve(p.run_dir)
    raise SystemExit(f"{exp}: no planned evaluation of a model on its own test set")


def compare(
    rows: list[dict[str, Any]], want: dict[str, np.ndarray], labels: list[str]
) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok" and r["face"] == 0]
    got = np.array([[r["probs"][n] for n in labels] for r in ok])
    ref = np.stack([want[r["file"]] for r in ok]) if ok else np.zeros((0, len(labels)))
    diff = np.abs(got - ref) if ok else np.zeros((0,))
    return {
        "images": len({r["file"] for r in rows}),
        "with_face": len(ok),
        "no_face": sum(r["status"] == "no_face" for r in rows),
        "errors": sum(r["status"] == "error" for r in rows),
        "argmax_agreement": C.rnd(float((got.argmax(1) == ref.argmax(1)).mean()), 5)
        if ok
        else None,
        "max_abs_diff": float(diff.max()) if ok else None,
        "mean_abs_diff": float(diff.mean()) if ok else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ferlab.predict.run import iter_predictions

    exp = Path(args.exp).expanduser().resolve()
    eval_dir, run_dir = planned_eval(exp, args.pair)
    npz = np.load(eval_dir / "probs.npz")
    keys = [str(k) for k in npz["keys"][npz["kept_mask"]]]
    labels = [str(x) for x in npz["labels"]]
    plain = npz["probs_plain_calibrated"] if "probs_plain_calibrated" in npz else npz["probs_plain"]
    tta = npz["probs_tta_calibrated"] if "probs_tta_calibrated" in npz else npz.get("probs_tta")
    if args.limit:
        keys, plain = keys[: args.limit], plain[: args.limit]
        tta = None if tta is None else tta[: args.limit]
    files = [str(Path(k)) for k in keys]
    out: dict[str, Any] = {
        "benchmark": "predict_agreement",
        "date": C.now_iso(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "run": str(run_dir),
        "evaluation": str(eval_dir),
        "machine": C.machine_info(0),
        "settings": {},
    }
    for name, kw in (
        ("detector none", {"detector": "none"}),
        ("default framing", {}),
        ("detector none, --tta", {"detector": "none", "tta": True}),
        ("default framing, --tta", {"tta": True}),
    ):
        ref = tta if kw.get("tta") else plain
        if ref is None:
            continue
        t0 = time.perf_counter()
        rows = list(iter_predictions(run_dir, files, **kw))
        res = compare(rows, dict(zip(files, ref, strict=True)), labels)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out["settings"][name] = res
        C.log(f"{name}: {res}")
    lines = [
        "| predict setting | images | with a face | argmax agreement | max abs diff | mean abs diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in out["settings"].items():
        lines.append(
            f"| {name} | {r['images']} | {r['with_face']} | {r['argmax_agreement']} | "
            f"{r['max_abs_diff']:.2e} | {r['mean_abs_diff']:.2e} |"
        )
    C.emit(out, as_json=args.json, table="\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
