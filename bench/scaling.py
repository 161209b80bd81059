"""How ferlab's training epoch time and peak memory grow with dataset size and input size.

    python bench/scaling.py                         # 1k, 4k, 16k, full FER2013 at 48; full at 96, 112
    python bench/scaling.py --counts 1000 full --sizes 48 --json
    python bench/scaling.py --smoke                 # wiring check (numbers meaningless)

Each point (train images N, input side S) runs in a child process of its own, so its
``peak_rss_mb`` (``ru_maxrss``) is that point's alone. The child loads FER2013 at S from the
decode-once cache (built beforehand, in separate children, so decoding never counts), takes a
seeded random N-image subset of the train split written as a memory-mapped ``.npy`` (the form the
cache has), and times ferlab's real training path on it (``_common.ferlab_train_rate``: the
``FerModule``/``FerDataModule``/Lightning loop of ``fit``, no validation) for ``--windows``
windows of ``--window-s`` seconds after a warm-up. The epoch time is *extrapolated*:
``epoch_s = N / images-per-second`` (steady-state steps only; the per-epoch index draw is
O(N) numpy and is included in the per-step timing when an epoch boundary falls in a window).

Expected, if nothing scales badly: epoch_s linear in N (constant seconds per 1k images), epoch_s
growing like S^2 with the input size (the convolutions' work), and peak memory = a constant
(interpreter, torch, Lightning, model) + the training images held in RAM (N * S * S bytes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

FULL = "full"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model name (default: the default CPU model)")
    ap.add_argument("--counts", nargs="+", default=["1000", "4000", "16000", FULL],
                    help="train-set sizes at the first of --sizes ('full' = all 28,709)")  # fmt: skip
    ap.add_argument("--sizes", nargs="+", type=int, default=[48, 96, 112],
                    help="input sides, each run on the full train set")  # fmt: skip
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--window-s", type=float, default=6.0)
    ap.add_argument("--warmup-s", type=float, default=4.0)
    ap.add_argument(
        "--data", default=None, help="FER2013 root (default ../shared/datasets/fer2013)"
    )
    ap.add_argument("--cache-dir", default="~/.cache/ferlab", help="decode-once cache folder")
    ap.add_argument("--config", default="fer2013_cpu", help="training recipe (a shipped config)")
    ap.add_argument("--smoke", action="store_true",
                    help="1k and 2k images at 48 only, 1 window of 1 s: checks the wiring")  # fmt: skip
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.counts, args.sizes = ["1000", "2000"], [48]
        args.windows, args.window_s, args.warmup_s = 1, 1.0, 0.5
    return args


# -- children --------------------------------------------------------------------------------------
def child_prepare(a: dict[str, Any]) -> dict[str, Any]:
    """Build (or find) the cache entry for one input size."""
    from ferlab.data.loading import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(
        f"fer2013:{a['data']}", image_size=a["size"], channels=1, cache_dir=a["cache_dir"]
    )
    return {
        "size": a["size"],
        "seconds": time.perf_counter() - t0,
        "train": len(ds.splits["train"]),
    }


def memmapped_subset(split: Any, n: int, seed: int, folder: Path) -> Any:
    """A seeded random ``n``-image subset, stored as a memory-mapped .npy like the cache's."""
    import numpy as np

    from ferlab.data.base import ArraySplit

    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    path = folder / "train.images.npy"
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(n, *split.images.shape[1:])
    )
    for lo in range(0, n, 4096):  # bounded memory while copying
        out[lo : lo + 4096] = split.images[idx[lo : lo + 4096]]
    out.flush()
    del out
    return ArraySplit(
        images=np.load(path, mmap_mode="r"),
        labels=np.asarray(split.labels)[idx],
        keys=[split.keys[i] for i in idx],
    )


def child_point(a: dict[str, Any]) -> dict[str, Any]:
    """One (N, S) point: ferlab's training rate and this process's peak RSS."""
    import torch

    from ferlab.data.loading import load_dataset
    from ferlab.device import cpu_threads

    torch.set_num_threads(cpu_threads(a["threads"]))

    rss_imports = C.current_rss_mb()
    ds = load_dataset(
        f"fer2013:{a['data']}", image_size=a["size"], channels=1, cache_dir=a["cache_dir"]
    )
    full = len(ds.splits["train"])
    n = full if a["count"] == FULL else min(int(a["count"]), full)
    train_cfg, runtime, kwargs = C.bench_train_config(
        a["model"], a["batch"], a["threads"], a["config"]
    )
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-scaling-") as tmp:
        if n < full:
            ds.splits["train"] = memmapped_subset(ds.splits["train"], n, 0, Path(tmp))
        rate = C.ferlab_train_rate(
            ds, a["model"], kwargs, train_cfg, runtime, image_size=a["size"], channels=1,
            windows=a["windows"], window_s=a["window_s"], warmup_s=a["warmup_s"],
            warmup_steps=1 if a["smoke"] else C.MIN_WARMUP_STEPS, max_steps=1_000_000,
            root_dir=tmp,
        )  # fmt: skip
    ips = rate["ips"]
    return {
        "train_images": n,
        "size": a["size"],
        "ips": C.rnd(ips, 1),
        "windows": rate["windows"],
        "epoch_s": C.rnd(n / ips, 1) if ips else None,
        "s_per_1k_images": C.rnd(1000 / ips, 2) if ips else None,
        "train_data_mb": C.rnd(n * a["size"] ** 2 / 2**20, 1),
        "rss_after_imports_mb": C.rnd(rss_imports, 1),
        "peak_rss_mb": C.rnd(C.peak_rss_mb(), 1),
    }


# -- parent ----------------------------------------------------------------------------------------
def points(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(count, size): every count at the first size, then the full set at the other sizes."""
    first = args.sizes[0]
    pts = [(c, first) for c in args.counts]
    pts += [(FULL, s) for s in args.sizes[1:]]
    return list(dict.fromkeys(pts))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ferlab.models import DEFAULT_CPU_MODEL

    model = args.model or DEFAULT_CPU_MODEL
    data = str(C.fer2013_path(args.data))
    cache_dir = str(Path(args.cache_dir).expanduser())
    me = str(Path(__file__).resolve())
    prepared = []
    for size in dict.fromkeys(args.sizes):
        C.log(f"cache at {size}px (decoded once, not timed as part of any point) ...")
        a = {"data": data, "size": size, "cache_dir": cache_dir}
        prepared.append(C.run_child([me, "--child", "prepare", "--child-args", json.dumps(a)]))
    rows = []
    for count, size in points(args):
        C.log(f"point: {count} images at {size}px ...")
        a = {
            "data": data, "size": size, "cache_dir": cache_dir, "count": count, "model": model,
            "batch": args.batch, "threads": args.threads, "windows": args.windows,
            "window_s": args.window_s, "warmup_s": args.warmup_s, "config": args.config,
            "smoke": args.smoke,
        }  # fmt: skip
        try:
            row = C.run_child([me, "--child", "point", "--child-args", json.dumps(a)])
        except Exception as e:  # report the failed point, keep measuring the others
            row = {"train_images": count, "size": size, "error": str(e)}
        C.log(f"  {row}")
        rows.append(row)
    return {
        "benchmark": "scaling",
        "smoke": bool(args.smoke),
        "date": C.now_iso(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": {
            "model": model,
            "batch": args.batch,
            "threads": args.threads,
            "windows": args.windows,
            "window_s": args.window_s,
            "warmup_s": args.warmup_s,
            "recipe": args.config,
            "epoch_s": "extrapolated: train_images / steady-state img/s",
        },
        "machine": C.machine_info(args.threads),
        "cache_prepare": prepared,
        "points": rows,
        "linearity": linearity(rows, args.sizes[0]),
    }


def linearity(rows: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """Seconds per 1k images across dataset sizes (flat = linear epoch time) and the memory
    growth per MB of training data (about 1 = only the images are added)."""
    same = [r for r in rows if r.get("size") == size and r.get("s_per_1k_images")]
    if len(same) < 2:
        return {}
    per_k = [r["s_per_1k_images"] for r in same]
    lo, hi = min(same, key=lambda r: r["train_images"]), max(same, key=lambda r: r["train_images"])
    d_data = hi["train_data_mb"] - lo["train_data_mb"]
    return {
        "s_per_1k_images_max_over_min": C.ratio(max(per_k), min(per_k)),
        "peak_rss_growth_per_data_mb": C.ratio(hi["peak_rss_mb"] - lo["peak_rss_mb"], d_data),
    }


def table(res: dict[str, Any]) -> str:
    lines = [
        f"{res['config']['model']}, batch {res['config']['batch']}, "
        f"{res['config']['threads']} threads ({res['machine']['cpu']})",
        "",
        "| train images | input | img/s | epoch s (extrapolated) | s per 1k images "
        "| train data MB | peak RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["points"]:
        if "error" in r:
            lines.append(f"| {r['train_images']} | {r['size']} | failed: {r['error'][:60]} |||||")
            continue
        lines.append(
            f"| {r['train_images']:,} | {r['size']}x{r['size']} | {r['ips']} | {r['epoch_s']} "
            f"| {r['s_per_1k_images']} | {r['train_data_mb']} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        a = json.loads(args.child_args)
        print(json.dumps(child_prepare(a) if args.child == "prepare" else child_point(a)))
        return 0
    res = run(args)
    C.emit(res, as_json=args.json, table=table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
