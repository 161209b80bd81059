"""Training and TTA-evaluation throughput: ferlab's path against the compute floor and the naive
(seed) pipeline, for one model, input size, batch size and thread count, in one run.

    python bench/throughput.py                                   # default CPU model, 48x48
    python bench/throughput.py --model resnet18 --json
    python bench/throughput.py --precision both                  # + bf16 autocast beside fp32
    python bench/throughput.py --smoke                           # wiring check (numbers meaningless)

What each number measures (images/s, median of ``--windows`` windows of ``--window-s`` s after a
warm-up; every path builds a fresh model from the same seed, same optimizer and loss).

The limit and ferlab paths are timed *interleaved*, one window each in turn (training: a limit
window after every ferlab window, from a callback in the Lightning loop; evaluation: A B B A),
so both see the same machine: on a shared VM the speed of a 3 s window varies by ~8% (CV), far
more than the gap being measured. ``ratios["ferlab_*/limit"]`` is the *paired* ratio, the
median over windows of ferlab[i] / limit[i], with a bootstrap 95% interval (``*_ci95``); the
ratio of the two medians is reported beside it. The naive path runs on its own afterwards (its
gap is large enough for separate timing).

limit_train_ips    forward + backward + gradient clipping + optimizer step (``FerModule``'s own
                   ``build_optimizer``: AdamW, fused on CPU/CUDA, decay on weights only;
                   label-smoothed loss) on one random float batch already on the device: the
                   compute floor of this machine for this model.
ferlab_train_ips   ferlab's real path on FER2013: ``load_dataset`` (decode-once cache, memory-
                   mapped), ``FerDataModule`` (in-memory uint8 tensor, ferlab's sampler), the
                   ``FerModule`` step (uint8 -> float, batched augmentation, normalise, loss) in a
                   Lightning ``Trainer`` built like ``fit``'s (precision, clipping, deterministic
                   mode), progress bar off, no validation; a callback times every step from one
                   batch end to the next (batch fetch included).
naive_train_ips    the seed's way: ``ImageFolder`` + PIL transforms equivalent to ferlab's recipe
                   (grey, random resized crop, flip, affine, brightness/contrast, tensor,
                   normalise, random erasing) through a ``DataLoader`` with 0 and 2 workers (the
                   better counts), plain PyTorch loop.
*_eval_ips         inference with TTA (``--tta-views``: 1, 2 = identity + hflip, 7 = + five
                   crops, 12 = + their flips); an image counts once with all its views. limit:
                   a random (V*B, C, H, W) tensor in memory; ferlab: ``predict_all`` on the
                   cached uint8 PrivateTest split; naive: ``ImageFolder`` on the PrivateTest files
                   with per-image view transforms through a ``DataLoader`` (0 and 2 workers).
cache_build_s      ``load_dataset`` of FER2013 into a fresh, empty cache folder (index + decode
                   + write); cache_load_s: the median of three further loads (memory-mapped).
peak_rss_mb        ``ru_maxrss`` of a child process that runs only ferlab's path end to end:
                   imports, ``load_dataset`` (warm cache), ``fit`` for ``--rss-steps`` steps and
                   its validation pass, ``predict_all`` with TTA on the test split. A child of
                   its own, so the naive path's and the benchmark's own memory do not count.
time_to_first_step_s  wall time from launching ``python -c "<hook>; ferlab.cli.main()" train
                   --data fer2013:PATH ...`` (a fresh interpreter, warm dataset cache, fresh
                   output folder) to the end of its first training step (forward, backward,
                   optimizer). The hook patches ``FerModule.on_train_batch_end`` to print the
                   time and exit; it adds nothing to the path before that point.

--precision both   every limit and ferlab path above (naive aside) runs again under bf16 autocast
                   (``bf16-mixed``: Lightning's flag for ferlab's path; ``torch.autocast`` for the
                   floor; ferlab's evaluation under the rule ``ferlab.probe.inference_bf16``
                   applies, so it stays fp32 on a CPU without native bf16), each against the
                   compute floor of its own precision (``bf16`` in the output), and the two floors
                   take turns window by window for the paired bf16/fp32 speed-up
                   (``bf16_speedup``). The machine block names the CPU flags that pick kernels.

Prints one JSON object (``--json``: nothing else on stdout; progress goes to stderr).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import _common as C

TTA_BY_VIEWS = {
    1: {"hflip": False, "crops": 0},
    2: {"hflip": True, "crops": 0},
    7: {"hflip": True, "crops": 5},
    12: {"hflip": True, "crops": 10},
}
ALL_PARTS = ("cache", "limit", "ferlab", "naive", "rss", "first_step")
PRECISIONS = {"32": ("32",), "both": ("32", "bf16-mixed")}


# -- argument parsing ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model name (default: the default CPU model)")
    ap.add_argument("--size", type=int, default=48, help="input side in pixels")
    ap.add_argument("--channels", type=int, default=1, choices=[1, 3])
    ap.add_argument("--batch", type=int, default=64, help="training batch size")
    ap.add_argument("--eval-batch", type=int, default=256, help="images per evaluation batch")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (every path)")
    ap.add_argument("--windows", type=int, default=20, help="timed windows per path")
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--warmup-s", type=float, default=None, help="default: one window")
    ap.add_argument(
        "--precision",
        default="32",
        choices=sorted(PRECISIONS),
        help="32: fp32; both: also bf16 autocast, and the paired bf16/fp32 floor speed-up",
    )
    ap.add_argument("--tta-views", type=int, default=2, choices=sorted(TTA_BY_VIEWS))
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="naive DataLoader")
    ap.add_argument(
        "--data", default=None, help="FER2013 root (default ../shared/datasets/fer2013)"
    )
    ap.add_argument(
        "--cache-dir",
        default="~/.cache/ferlab",
        help="dataset cache used when the 'cache' part is skipped (else a fresh temp folder)",
    )
    ap.add_argument("--tmp-dir", default=None, help="where temporary folders go (default: system)")
    ap.add_argument("--config", default="fer2013_cpu", help="training recipe (a shipped config)")
    ap.add_argument("--rss-steps", type=int, default=30, help="fit() steps in the memory child")
    ap.add_argument("--first-step-runs", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=ALL_PARTS, help="parts to leave out")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny settings to check the wiring (1 window of 1 s, 3 fit steps, no cache build); "
        "the numbers mean nothing",
    )
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.windows, args.window_s = 1, 1.0
        args.warmup_s = 0.5 if args.warmup_s is None else args.warmup_s
        args.rss_steps, args.first_step_runs = 3, 1
        if "cache" not in args.skip:
            args.skip.append("cache")
    if args.warmup_s is None:
        args.warmup_s = args.window_s
    return args


# -- shared pieces ---------------------------------------------------------------------------------
def tta_config(views: int) -> Any:
    from ferlab.config import TTAConfig

    return TTAConfig(**TTA_BY_VIEWS[views])


def fresh_model(name: str, kwargs: dict[str, Any], classes: int, channels: int, size: int) -> Any:
    import torch

    from ferlab.models import create_model

    torch.manual_seed(0)
    return create_model(name, num_classes=classes, channels=channels, image_size=size, **kwargs)


def norm_of(model: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from ferlab.models import default_norm

    mean, std = default_norm(channels, model)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def load_fer2013(path: Path, size: int, channels: int, cache_dir: str | Path) -> Any:
    from ferlab.data.loading import load_dataset

    return load_dataset(f"fer2013:{path}", image_size=size, channels=channels, cache_dir=cache_dir)


# -- limit and ferlab, interleaved ------------------------------------------------------------------
# The compute floor and ferlab's path take turns window by window in one process, so a change in
# the machine's speed (a neighbour's burst, frequency drift) falls on both sides of the ratio.
def limit_train_timer(ctx: SimpleNamespace) -> C.WindowTimer:
    import torch

    model = fresh_model(ctx.model, ctx.kwargs, ctx.classes, ctx.channels, ctx.size)
    step = C.make_train_step(model, ctx.train_cfg, ctx.device, ctx.precision)
    x = torch.randn(ctx.batch, ctx.channels, ctx.size, ctx.size, device=ctx.device)
    y = torch.randint(0, ctx.classes, (ctx.batch,), device=ctx.device)
    return C.WindowTimer(lambda: step(x, y), **ctx.timing)


def train_pair(ctx: SimpleNamespace, dataset: Any, parts: set[str]) -> dict[str, Any]:
    """``limit_train`` and ``ferlab_train``: a limit window after every ferlab window (or the
    one of the two in ``parts`` alone)."""
    limit = limit_train_timer(ctx) if "limit" in parts else None
    if limit is not None:
        limit.warm_up()
        if "ferlab" not in parts:
            for _ in range(ctx.windows):
                limit.window()
            return pair_result(limit.result(), None)
    ferlab = C.ferlab_train_rate(
        dataset,
        ctx.model,
        ctx.kwargs,
        ctx.train_cfg,
        ctx.runtime,
        image_size=ctx.size,
        channels=ctx.channels,
        windows=ctx.windows,
        window_s=ctx.timing["window_s"],
        warmup_s=ctx.timing["warmup_s"],
        warmup_steps=ctx.timing["warmup_steps"],
        max_steps=1_000_000,
        root_dir=ctx.tmp_dir,
        between=None if limit is None else limit.window,
    )
    return pair_result(None if limit is None else limit.result(), ferlab)


def limit_eval_timer(ctx: SimpleNamespace) -> C.WindowTimer:
    import torch

    model = fresh_model(ctx.model, ctx.kwargs, ctx.classes, ctx.channels, ctx.size)
    model.to(ctx.device).eval()
    v, b = ctx.views, ctx.eval_batch
    x = torch.randn(v * b, ctx.channels, ctx.size, ctx.size, device=ctx.device)
    bf16 = ctx.precision == "bf16-mixed"

    def step() -> int:
        with torch.inference_mode(), torch.autocast(ctx.device.type, torch.bfloat16, bf16):
            model(x).float().softmax(-1).view(v, b, -1).mean(0)
        return b

    return C.WindowTimer(step, **ctx.timing)


def ferlab_eval_timer(ctx: SimpleNamespace, dataset: Any) -> C.WindowTimer:
    from ferlab.evaluation.tta import predict_all
    from ferlab.probe import INFERENCE_PRECISION

    model = fresh_model(ctx.model, ctx.kwargs, ctx.classes, ctx.channels, ctx.size)
    mean, std = norm_of(model, ctx.channels)
    inference = "bf16" if ctx.precision == "bf16-mixed" else "32"  # as fit records its choice
    meta = SimpleNamespace(
        labels=list(dataset.labels), image_size=ctx.size, channels=ctx.channels, mean=mean,
        std=std, extra={INFERENCE_PRECISION: inference},
    )  # fmt: skip
    images = dataset.splits["test"].images  # memory-mapped uint8 (N, H, W, C)
    chunk = ctx.eval_batch  # one predict_all call per batch: fine-grained windows
    starts = itertools.cycle(range(0, max(1, images.shape[0] - chunk + 1), chunk))

    def step() -> int:
        part = images[next(starts) :][:chunk]
        predict_all(model, part, meta, ctx.tta, ctx.eval_batch, ctx.device)
        return int(part.shape[0])

    return C.WindowTimer(step, **ctx.timing)


def eval_pair(ctx: SimpleNamespace, dataset: Any, parts: set[str]) -> dict[str, Any]:
    """``limit_eval`` and ``ferlab_eval``, taking turns (A B B A ...), or one of them alone."""
    limit = limit_eval_timer(ctx) if "limit" in parts else None
    ferlab = ferlab_eval_timer(ctx, dataset) if "ferlab" in parts else None
    C.interleaved([t for t in (limit, ferlab) if t is not None], ctx.windows)
    return pair_result(
        None if limit is None else limit.result(), None if ferlab is None else ferlab.result()
    )


def floors_by_precision(ctx: SimpleNamespace, bf16: SimpleNamespace) -> dict[str, Any]:
    """The compute floor in fp32 (``ctx``) and under bf16 autocast (``bf16``), taking turns
    window by window (A B B A): the paired bf16/fp32 speed-up, for training and for TTA."""
    out: dict[str, Any] = {}
    for part, make in (("train", limit_train_timer), ("eval", limit_eval_timer)):
        fp32_timer, bf16_timer = make(ctx), make(bf16)
        C.interleaved([fp32_timer, bf16_timer], ctx.windows)
        a, b = fp32_timer.result(), bf16_timer.result()
        out[part] = {"fp32": a, "bf16": b, "paired": C.paired_ratio(b["windows"], a["windows"])}
    return out


def pair_result(limit: dict[str, Any] | None, ferlab: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"limit": limit, "ferlab": ferlab}
    if limit is not None and ferlab is not None:
        out["paired"] = C.paired_ratio(ferlab["windows"], limit["windows"])
    return out


# -- naive -----------------------------------------------------------------------------------------
def naive_train_transform(aug: Any, size: int, channels: int, mean: Any, std: Any) -> Any:
    """PIL/torchvision transforms equivalent to ferlab's batched augmentation recipe."""
    from torchvision import transforms as T

    ops: list[Any] = [T.Grayscale(num_output_channels=channels)]
    if aug.enabled:
        ops.append(
            T.RandomResizedCrop(size, scale=tuple(aug.crop_scale), ratio=tuple(aug.crop_ratio))
        )
        if aug.hflip > 0:
            ops.append(T.RandomHorizontalFlip(aug.hflip))
        if aug.rotate > 0 or aug.translate > 0:
            ops.append(T.RandomAffine(aug.rotate, translate=(aug.translate, aug.translate)))
        if aug.brightness > 0 or aug.contrast > 0:
            ops.append(T.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
    else:
        ops.append(T.Resize((size, size)))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if aug.enabled and aug.erasing > 0:
        ops.append(T.RandomErasing(p=aug.erasing, scale=(0.02, 0.25), ratio=(0.3, 3.3)))
    return T.Compose(ops)


class NaiveViews:
    """Per-image TTA views as the seed would build them: (V, C, H, W) per image, in ferlab's view
    order (identity, hflip, five crops, their flips). Top-level class: picklable for workers."""

    def __init__(self, size: int, channels: int, mean: Any, std: Any, tta: Any) -> None:
        from torchvision import transforms as T

        self.size, self.tta = size, tta
        self.base = T.Compose(
            [
                T.Grayscale(num_output_channels=channels),
                T.Resize((size, size)),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )

    def __call__(self, img: Any) -> Any:
        import torch
        from torchvision.transforms import functional as TF

        t = self.base(img)  # (C, H, W)
        views = [t]
        if self.tta.hflip:
            views.append(TF.hflip(t))
        if self.tta.crops:
            side = max(1, round(self.size * self.tta.crop_fraction))
            crops = [
                TF.resize(c, [self.size, self.size], antialias=True) for c in TF.five_crop(t, side)
            ]
            views += crops
            if self.tta.crops == 10:
                views += [TF.hflip(c) for c in crops]
        return torch.stack(views)


def _is_private_test(path: str) -> bool:
    return os.path.basename(path).startswith("PrivateTest_")


def _cycle_loader(loader: Any) -> Any:
    while True:
        yield from loader


def naive_train(ctx: SimpleNamespace, workers: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    model = fresh_model(ctx.model, ctx.kwargs, ctx.classes, ctx.channels, ctx.size)
    mean, std = norm_of(model, ctx.channels)
    tf = naive_train_transform(ctx.train_cfg.augment, ctx.size, ctx.channels, mean, std)
    ds = ImageFolder(str(ctx.data / "train"), transform=tf)
    loader = DataLoader(
        ds, batch_size=ctx.batch, shuffle=True, num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
    )  # fmt: skip
    it = _cycle_loader(loader)
    step = C.make_train_step(model, ctx.train_cfg, ctx.device)

    def one() -> int:
        x, y = next(it)
        return step(x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True))

    return C.timed_windows(one, windows=ctx.windows, **ctx.timing)


def naive_eval(ctx: SimpleNamespace, workers: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    model = fresh_model(ctx.model, ctx.kwargs, ctx.classes, ctx.channels, ctx.size)
    mean, std = norm_of(model, ctx.channels)
    model.to(ctx.device).eval()
    views = NaiveViews(ctx.size, ctx.channels, mean, std, ctx.tta)
    ds = ImageFolder(str(ctx.data / "test"), transform=views, is_valid_file=_is_private_test)
    loader = DataLoader(ds, batch_size=ctx.eval_batch, shuffle=False, num_workers=workers)
    it = _cycle_loader(loader)

    def one() -> int:
        x, _ = next(it)  # (B, V, C, H, W)
        b, v = x.shape[:2]
        with torch.inference_mode():
            logits = model(x.to(ctx.device).flatten(0, 1))  # (B*V, K), image-major
            logits.float().softmax(-1).view(b, v, -1).mean(1)
        return int(b)

    return C.timed_windows(one, windows=ctx.windows, **ctx.timing)


# -- cache -----------------------------------------------------------------------------------------
def cache_times(ctx: SimpleNamespace, cache_dir: Path) -> tuple[dict[str, Any], Any]:
    t0 = time.perf_counter()
    load_fer2013(ctx.data, ctx.size, ctx.channels, cache_dir)
    build = time.perf_counter() - t0
    loads = []
    dataset = None
    for _ in range(3):
        t0 = time.perf_counter()
        dataset = load_fer2013(ctx.data, ctx.size, ctx.channels, cache_dir)
        loads.append(time.perf_counter() - t0)
    return {
        "build_s": build,
        "load_s": C.median(loads),
        "loads_s": [round(t, 3) for t in loads],
    }, dataset


# -- children --------------------------------------------------------------------------------------
def child_rss(a: dict[str, Any]) -> dict[str, Any]:
    """Only ferlab's path, in a process of its own: load, fit a few steps (+ validation), TTA."""
    import torch

    from ferlab.config import ModelConfig, RuntimeConfig, TrainConfig
    from ferlab.device import cpu_threads
    from ferlab.evaluation.tta import predict_all
    from ferlab.training import fit

    torch.set_num_threads(cpu_threads(a["threads"]))

    out: dict[str, Any] = {"rss_start_mb": C.current_rss_mb()}
    t0 = time.perf_counter()
    ds = load_fer2013(Path(a["data"]), a["size"], a["channels"], a["cache_dir"])
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_mb"] = C.current_rss_mb()
    train_cfg = TrainConfig.model_validate(a["train_cfg"]).model_copy(
        update={
            "epochs": 1,
            "limit_train_batches": a["steps"],
            "limit_val_batches": a["val_batches"],
        }
    )
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-rss-", dir=a["tmp_dir"]) as tmp:
        t0 = time.perf_counter()
        result = fit(
            ds,
            ModelConfig(name=a["model"], kwargs=a["kwargs"]),
            train_cfg,
            Path(tmp) / "run",
            seed=0,
            image_size=a["size"],
            channels=a["channels"],
            runtime=RuntimeConfig.model_validate(a["runtime"]),
            log=lambda m: print(m, file=sys.stderr),
        )
        out["fit_s"] = time.perf_counter() - t0
    out["rss_after_fit_mb"] = C.current_rss_mb()
    test = ds.splits["test"].images[: a["test_images"]]
    predict_all(result.model, test, result.meta, tta_config(a["views"]), a["eval_batch"])
    out["rss_after_eval_mb"] = C.current_rss_mb()
    out["peak_rss_mb"] = C.peak_rss_mb()
    return out


FIRST_STEP_HOOK = """
import json, os, sys, time
from ferlab.training.module import FerModule
_t = {}
def _fit_start(self):
    _t["fit_start"] = time.time()
def _batch_end(self, outputs, batch, batch_idx):
    _t["first_step_end"] = time.time()
    sys.stdout.write("\\n" + json.dumps(_t) + "\\n")
    sys.stdout.flush()
    os._exit(0)
FerModule.on_fit_start = _fit_start
FerModule.on_train_batch_end = _batch_end
from ferlab.cli import main
_t["imported"] = time.time()
sys.exit(main(sys.argv[1:]))
"""


def first_step(ctx: SimpleNamespace, cache_dir: Path) -> dict[str, Any]:
    """Launch ``ferlab train`` (through the hook above) and time its first training step."""
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-first-", dir=ctx.tmp_dir) as tmp:
        cmd = [
            sys.executable, "-c", FIRST_STEP_HOOK, "train",
            "--data", f"fer2013:{ctx.data}", "--model", ctx.model, "--config", ctx.config,
            "--out", str(Path(tmp) / "exp"), "--no-progress",
            "--set", f"data.cache_dir={cache_dir}", "--set", f"models.0.image_size={ctx.size}",
            "--set", f"models.0.channels={ctx.channels}", "--set", f"train.batch_size={ctx.batch}",
            "--set", f"runtime.threads={ctx.threads}",
        ]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS=str(ctx.threads))
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=C.REPO_ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(
                f"`ferlab train` child exited {proc.returncode} before its first step; stderr "
                f"tail: {proc.stderr[-1500:]}"
            )
        marks = json.loads(lines[-1])
    return {
        "first_step_s": marks["first_step_end"] - t0,
        "imports_s": marks["imported"] - t0,
        "to_fit_start_s": marks["fit_start"] - t0 if "fit_start" in marks else None,
    }


# -- main ------------------------------------------------------------------------------------------
def measure(name: str, results: dict[str, Any], fn: Any, *a: Any) -> None:
    """Run one part; a failure is recorded (and reported) instead of ending the benchmark."""
    C.log(f"{name} ...")
    try:
        results[name] = fn(*a)
        r = results[name]
        shown = {k: (C.rnd(v) if isinstance(v, float) else v) for k, v in r.items()}
        C.log(f"{name}: {shown}")
    except Exception as e:  # a benchmark reports what broke and carries on
        results[name] = {"error": f"{type(e).__name__}: {e}"}
        C.log(f"{name} FAILED: {e}")


def split_pair(r: dict[str, Any], name: str) -> None:
    """``r[name]`` from ``*_pair`` -> ``r["limit_<name>"]``, ``r["ferlab_<name>"]`` and the
    paired ratio in ``r["paired_<name>"]``; an error stays under both names."""
    got = r.pop(name)
    if "error" in got:
        r[f"limit_{name}"] = r[f"ferlab_{name}"] = got
        return
    for side in ("limit", "ferlab"):
        if got[side] is not None:
            r[f"{side}_{name}"] = got[side]
    if "paired" in got:
        r[f"paired_{name}"] = got["paired"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ferlab.device import cpu_threads, pick_device
    from ferlab.models import DEFAULT_CPU_MODEL

    torch.set_num_threads(cpu_threads(args.threads))
    model = args.model or DEFAULT_CPU_MODEL
    data = C.fer2013_path(args.data)
    train_cfg, runtime, kwargs = C.bench_train_config(model, args.batch, args.threads, args.config)
    device = pick_device(runtime.accelerator)
    ctx = SimpleNamespace(
        model=model, kwargs=kwargs, size=args.size, channels=args.channels, batch=args.batch,
        eval_batch=args.eval_batch, threads=args.threads, train_cfg=train_cfg, runtime=runtime,
        device=device,
        data=data, views=args.tta_views, tta=tta_config(args.tta_views), classes=7,
        config=args.config, tmp_dir=args.tmp_dir, precision="32",
        windows=args.windows,
        timing={"window_s": args.window_s, "warmup_s": args.warmup_s,
                "sync": C.device_sync(), "warmup_steps": 1 if args.smoke else C.MIN_WARMUP_STEPS},
    )  # fmt: skip
    skip = set(args.skip)
    bf16 = None
    if "bf16-mixed" in PRECISIONS[args.precision]:
        bf16_runtime = runtime.model_copy(update={"precision": "bf16-mixed"})
        bf16 = SimpleNamespace(**{**vars(ctx), "precision": "bf16-mixed", "runtime": bf16_runtime})
    r: dict[str, Any] = {}
    tmp_cache = None
    cache_dir = Path(args.cache_dir).expanduser()
    if "cache" not in skip:
        tmp_cache = Path(tempfile.mkdtemp(prefix="ferlab-bench-cache-", dir=args.tmp_dir))
        cache_dir = tmp_cache
        measure("cache", r, lambda: cache_times(ctx, tmp_cache)[0])
    try:
        dataset = None
        if skip != set(ALL_PARTS) - {"cache"}:
            C.log(f"loading FER2013 from the cache in {cache_dir} (built first if absent)")
            dataset = load_fer2013(data, args.size, args.channels, cache_dir)
            ctx.classes = len(dataset.labels)
        pair = {"limit", "ferlab"} - skip
        if pair:
            measure("train", r, train_pair, ctx, dataset, pair)
            split_pair(r, "train")
            if bf16 is not None:
                measure("train_bf16", r, train_pair, bf16, dataset, pair)
                split_pair(r, "train_bf16")
        if "naive" not in skip:
            for w in args.workers:
                measure(f"naive_train_w{w}", r, naive_train, ctx, w)
        if pair:
            measure("eval", r, eval_pair, ctx, dataset, pair)
            split_pair(r, "eval")
            if bf16 is not None:
                measure("eval_bf16", r, eval_pair, bf16, dataset, pair)
                split_pair(r, "eval_bf16")
        if bf16 is not None and "limit" not in skip:
            measure("bf16_speedup", r, floors_by_precision, ctx, bf16)
        if "naive" not in skip:
            for w in args.workers:
                measure(f"naive_eval_w{w}", r, naive_eval, ctx, w)
        if "rss" not in skip:
            child = {
                "threads": args.threads, "data": str(data), "size": args.size,
                "channels": args.channels, "cache_dir": str(cache_dir), "model": model,
                "kwargs": kwargs, "train_cfg": train_cfg.model_dump(mode="json"),
                "runtime": runtime.model_dump(mode="json"),
                "steps": args.rss_steps, "val_batches": 1 if args.smoke else None,
                "views": args.tta_views, "eval_batch": args.eval_batch,
                "test_images": 256 if args.smoke else None, "tmp_dir": args.tmp_dir,
            }  # fmt: skip
            measure(
                "rss", r, C.run_child,
                [__file__, "--child", "rss", "--child-args", json.dumps(child)],
            )  # fmt: skip
        if "first_step" not in skip:
            for i in range(args.first_step_runs):
                measure(f"first_step_{i}", r, first_step, ctx, cache_dir)
    finally:
        if tmp_cache is not None:
            shutil.rmtree(tmp_cache, ignore_errors=True)
    return summarise(args, ctx, r)


def _get(r: dict[str, Any], part: str, key: str) -> float | None:
    v = r.get(part, {}).get(key)
    return float(v) if isinstance(v, int | float) else None


def _paired(r: dict[str, Any], name: str) -> float | None:
    return C.rnd(_get(r, f"paired_{name}", "median"), 3)


def _paired_ci(r: dict[str, Any], name: str) -> list[float] | None:
    ci = r.get(f"paired_{name}", {}).get("ci95")
    return None if ci is None else [round(float(v), 3) for v in ci]


def _best(r: dict[str, Any], prefix: str, workers: list[int]) -> tuple[float | None, int | None]:
    got = [(_get(r, f"{prefix}_w{w}", "ips"), w) for w in workers]
    got = [(v, w) for v, w in got if v is not None]
    if not got:
        return None, None
    v, w = max(got)
    return v, w


def summarise(args: argparse.Namespace, ctx: SimpleNamespace, r: dict[str, Any]) -> dict[str, Any]:
    from ferlab.models import DEFAULT_CPU_MODEL

    lt, ft = _get(r, "limit_train", "ips"), _get(r, "ferlab_train", "ips")
    le, fe = _get(r, "limit_eval", "ips"), _get(r, "ferlab_eval", "ips")
    nt, ntw = _best(r, "naive_train", args.workers)
    ne, new = _best(r, "naive_eval", args.workers)
    firsts = [_get(r, f"first_step_{i}", "first_step_s") for i in range(args.first_step_runs)]
    firsts_ok = [f for f in firsts if f is not None]
    out: dict[str, Any] = {
        "benchmark": "throughput",
        "smoke": bool(args.smoke),
        "date": C.now_iso(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": {
            "model": ctx.model,
            "model_kwargs": ctx.kwargs,
            "size": ctx.size,
            "channels": ctx.channels,
            "batch": ctx.batch,
            "eval_batch": ctx.eval_batch,
            "threads": ctx.threads,
            "tta_views": ctx.views,
            "precision": args.precision,
            "windows": args.windows,
            "window_s": args.window_s,
            "warmup_s": args.warmup_s,
            "recipe": args.config,
            "device": str(ctx.device),
            "data": str(ctx.data),
            "skipped": sorted(set(args.skip)),
        },
        "machine": C.machine_info(ctx.threads),
        "limit_train_ips": C.rnd(lt, 1),
        "ferlab_train_ips": C.rnd(ft, 1),
        "naive_train_ips": C.rnd(nt, 1),
        "naive_train_best_workers": ntw,
        "limit_eval_ips": C.rnd(le, 1),
        "ferlab_eval_ips": C.rnd(fe, 1),
        "naive_eval_ips": C.rnd(ne, 1),
        "naive_eval_best_workers": new,
        "cache_build_s": C.rnd(_get(r, "cache", "build_s"), 2),
        "cache_load_s": C.rnd(_get(r, "cache", "load_s"), 3),
        "peak_rss_mb": C.rnd(_get(r, "rss", "peak_rss_mb"), 1),
        # The last run: the OS file cache is then warm too, as for a user's second command.
        "time_to_first_step_s": C.rnd(firsts_ok[-1], 2) if firsts_ok else None,
        "ratios": {
            # Paired: the median over interleaved windows of ferlab / limit (see --help).
            "ferlab_train/limit": _paired(r, "train") or C.ratio(ft, lt),
            "ferlab_train/limit_ci95": _paired_ci(r, "train"),
            "ferlab_train/limit_of_medians": C.ratio(ft, lt),
            "ferlab_train/naive": C.ratio(ft, nt),
            "naive_train/limit": C.ratio(nt, lt),
            "ferlab_eval/limit": _paired(r, "eval") or C.ratio(fe, le),
            "ferlab_eval/limit_ci95": _paired_ci(r, "eval"),
            "ferlab_eval/limit_of_medians": C.ratio(fe, le),
            "ferlab_eval/naive": C.ratio(fe, ne),
            "naive_eval/limit": C.ratio(ne, le),
        },
    }
    if args.precision == "both":
        out["bf16"], out["bf16_speedup"] = bf16_summary(r, ft, fe)
    naive_min = 1.15 if ctx.model == DEFAULT_CPU_MODEL else 1.0
    checks = {
        "ferlab_train/limit >= 0.95": (out["ratios"]["ferlab_train/limit"], 0.95, ">="),
        "ferlab_eval/limit >= 0.95": (out["ratios"]["ferlab_eval/limit"], 0.95, ">="),
        f"ferlab_train/naive >= {naive_min}": (
            out["ratios"]["ferlab_train/naive"],
            naive_min,
            ">=",
        ),
        f"ferlab_eval/naive >= {naive_min}": (out["ratios"]["ferlab_eval/naive"], naive_min, ">="),
        "cache_load_s < 1": (out["cache_load_s"], 1.0, "<"),
        "peak_rss_mb < 3000": (out["peak_rss_mb"], 3000.0, "<"),
        "time_to_first_step_s < 15": (out["time_to_first_step_s"], 15.0, "<"),
    }
    out["targets"] = {
        k: {"value": v, "met": None if v is None else (v >= t if op == ">=" else v < t)}
        for k, (v, t, op) in checks.items()
    }
    out["details"] = r
    out["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


def bf16_summary(
    r: dict[str, Any], fp32_train: float | None, fp32_eval: float | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``bf16``: each path under bf16 against the bf16 floor; ``bf16_speedup``: bf16/fp32, paired
    for the floors (interleaved windows), of medians for ferlab's paths (separate runs)."""
    lt, ft = _get(r, "limit_train_bf16", "ips"), _get(r, "ferlab_train_bf16", "ips")
    le, fe = _get(r, "limit_eval_bf16", "ips"), _get(r, "ferlab_eval_bf16", "ips")
    rates = {
        "limit_train_ips": C.rnd(lt, 1),
        "ferlab_train_ips": C.rnd(ft, 1),
        "limit_eval_ips": C.rnd(le, 1),
        "ferlab_eval_ips": C.rnd(fe, 1),
        "ferlab_train/limit": _paired(r, "train_bf16") or C.ratio(ft, lt),
        "ferlab_train/limit_ci95": _paired_ci(r, "train_bf16"),
        "ferlab_eval/limit": _paired(r, "eval_bf16") or C.ratio(fe, le),
        "ferlab_eval/limit_ci95": _paired_ci(r, "eval_bf16"),
    }
    floors = r.get("bf16_speedup", {})
    speedup: dict[str, Any] = {}
    for part in ("train", "eval"):
        paired = floors.get(part, {}).get("paired", {})
        ci = paired.get("ci95")
        speedup[f"limit_{part}"] = C.rnd(paired.get("median"), 3)
        speedup[f"limit_{part}_ci95"] = None if ci is None else [round(float(v), 3) for v in ci]
    speedup["ferlab_train"] = C.ratio(ft, fp32_train)
    speedup["ferlab_eval"] = C.ratio(fe, fp32_eval)
    return rates, speedup


def table(res: dict[str, Any]) -> str:
    ratios = res["ratios"]
    rows = [
        ("train", "train", res["limit_train_ips"], res["ferlab_train_ips"], res["naive_train_ips"]),
        ("eval (TTA)", "eval", res["limit_eval_ips"], res["ferlab_eval_ips"], res["naive_eval_ips"]),
    ]  # fmt: skip
    lines = [
        f"| {res['config']['model']} {res['config']['size']}px b{res['config']['batch']} "
        f"t{res['config']['threads']} | limit img/s | ferlab img/s | naive img/s "
        "| ferlab/limit (paired, 95% CI) | ferlab/naive |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, key, lim, fer, nai in rows:
        ci = ratios[f"ferlab_{key}/limit_ci95"]
        shown = f"{ratios[f'ferlab_{key}/limit']}" + (f" ({ci[0]}-{ci[1]})" if ci else "")
        lines.append(f"| {name} | {lim} | {fer} | {nai} | {shown} | {C.ratio(fer, nai)} |")
    if "bf16" in res:
        b = res["bf16"]
        for name, key in (("train bf16", "train"), ("eval (TTA) bf16", "eval")):
            ci = b[f"ferlab_{key}/limit_ci95"]
            shown = f"{b[f'ferlab_{key}/limit']}" + (f" ({ci[0]}-{ci[1]})" if ci else "")
            lines.append(
                f"| {name} | {b[f'limit_{key}_ips']} | {b[f'ferlab_{key}_ips']} | | {shown} | |"
            )
        s = res["bf16_speedup"]
        lines.append("")
        lines.append(
            f"bf16/fp32: floor train {s['limit_train']} (paired, 95% CI {s['limit_train_ci95']}), "
            f"floor eval {s['limit_eval']} ({s['limit_eval_ci95']}); ferlab train "
            f"{s['ferlab_train']}, ferlab eval {s['ferlab_eval']} (of medians)  "
            f"[{res['machine']['cpu_kernels']}]"
        )
    lines.append("")
    lines.append(
        f"cache_build_s {res['cache_build_s']}  cache_load_s {res['cache_load_s']}  "
        f"peak_rss_mb {res['peak_rss_mb']}  time_to_first_step_s {res['time_to_first_step_s']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "rss":
        print(json.dumps(child_rss(json.loads(args.child_args))))
        return 0
    res = run(args)
    C.emit(res, as_json=args.json, table=table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
