"""The GPU training path, measured: the seed's models at 224x224 on one CUDA GPU, ferlab's path
against the compute floor and the seed's naive input pipeline.

    python bench/gpu.py --prepare          # once: a seeded FER2013 subset in bench/.gpu_data/
    python bench/gpu.py                    # the measurement (about 5-6 min on one GPU)
    python bench/gpu.py --smoke            # CPU wiring check on tiny input (numbers mean nothing)

Everything the run reads travels with the working tree: ``--prepare`` copies about 10,000
FER2013 JPEGs (seeded and stratified: 80% ``Training_``, 10% ``PublicTest_``, 10%
``PrivateTest_``, in the release's ``train/<emotion>/``, ``test/<emotion>/`` layout; about
15 MB) from ``../shared/datasets/fer2013`` into ``--data`` (default ``bench/.gpu_data/``,
which git must ignore), with ``SUBSET.json`` saying what was taken.

For each model of the seed's configuration (``seed_gpu.yaml``: densenet121 batch 96, resnet50
and efficientnet_b0 batch 144; 224x224, 3 channels; timm, ``pretrained=False``), in a child
process of its own (a fresh CUDA context and cuDNN autotuning cache, so each model's first
step is cold), in this order:

ferlab       ferlab's real training path, built as ``ferlab.training.fit`` builds it:
             ``load_dataset`` (the decode-once cache, memory-mapped, built once by the parent;
             ``cache_build_s``), ``FerDataModule`` (the uint8 split in RAM, ferlab's oversampling
             sampler), ``FerModule`` (uint8 -> float, batched augmentation, normalise and loss on
             the GPU) in the ``Trainer`` of ``build_trainer`` (``runtime.precision: auto``: bf16-
             mixed on a GPU that has it; cuDNN benchmark mode), no validation, no checkpoints.
             The model is what ferlab builds: its memory layout is ferlab's (``channels_last``
             in the JSON says whether its conv weights are channels-last).
floor        the compute floor: one random batch already on the GPU, channels-last (on CUDA),
             bf16 autocast, forward + label-smoothed loss + backward + gradient clipping +
             ferlab's optimizer (``build_optimizer``: fused AdamW) per step.
floor_nchw   the same without channels-last: how much of a gap the memory layout explains.
naive_w<N>   the seed's way: torchvision ``ImageFolder`` on the subset's JPEGs, PIL transforms
             equivalent to ferlab's recipe (``bench/throughput.py``'s ``naive_train_transform``:
             grey to 3 channels, random resized crop to 224, flip, affine, brightness/contrast,
             tensor, normalise, random erasing), a ``DataLoader`` with N workers (0, 4, 8;
             pinned memory, persistent workers), then the floor's step (channels-last, bf16).

Each path reports images/s: the median over ``--windows`` windows of at least ``--window-s``
seconds after a warm-up of ``--warmup-s`` seconds and at least 3 steps. The GPU is synchronised
at window edges only, never after every step, so the host may run ahead and prepare the next
batch while the GPU computes, as in a real run. Also per path: ``peak_gpu_mem_mb``
(``torch.cuda.max_memory_allocated`` from the path's start) and ``first_step_s`` (wall time from
the start of building the path, dataset load and model creation included, to the end of its
first step, synchronised). Ratios: ``ferlab/floor``, ``ferlab/floor_nchw``, ``ferlab/naive``
(against the best worker count) and ``naive/floor``.

Prints a Markdown table and one JSON object (``--json``: the JSON alone on stdout; progress on
stderr); ``--md FILE`` also writes the table to a file.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

# The seed's configuration (src/ferlab/configs/seed_gpu.yaml): model, batch size.
SEED_MODELS: tuple[tuple[str, int], ...] = (
    ("densenet121", 96),
    ("resnet50", 144),
    ("efficientnet_b0", 144),
)
SEED_CONFIG = "seed_gpu"
SIZE, CHANNELS = 224, 3
WORKERS = (0, 4, 8)
DEFAULT_DATA = C.BENCH_DIR / ".gpu_data"
SUBSET_JSON = "SUBSET.json"
DEFAULT_IMAGES = 10_000
# Shares of the subset by the file-name prefix that carries FER2013's original split.
SPLIT_SHARES: tuple[tuple[str, str, float], ...] = (
    ("Training_", "train", 0.8),
    ("PublicTest_", "test", 0.1),
    ("PrivateTest_", "test", 0.1),
)
PREFIXES = tuple(p for p, _, _ in SPLIT_SHARES)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# What the issue expects: ferlab within 10% of the floor, several times the naive path.
TARGET_FLOOR = 0.9
TARGET_NAIVE = 3.0
# Smoke: the CPU fallback on tiny input (one small model, 3 steps per path).
SMOKE_MODEL = ("test_resnet", 8)  # timm's own tiny test net (0.37M parameters)
SMOKE_SIZE = 32
SMOKE_IMAGES = 140
SMOKE_WORKERS = (0, 2)
# A child runs no new path after its share of --budget-s; it is stopped this much later.
CHILD_GRACE_S = 60.0


# -- arguments -------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prepare", action="store_true", help="write the FER2013 subset, then stop")
    ap.add_argument(
        "--source",
        default=None,
        help="FER2013 image-folder root (default ../shared/datasets/fer2013)",
    )
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the prepared subset's folder")
    ap.add_argument(
        "--images", type=int, default=None, help=f"subset size (default {DEFAULT_IMAGES})"
    )
    ap.add_argument("--seed", type=int, default=0, help="which images the subset takes")
    ap.add_argument(
        "--models",
        nargs="+",
        default=None,
        metavar="NAME:BATCH",
        help="models and batch sizes (default: the seed's densenet121:96 resnet50:144 "
        "efficientnet_b0:144)",
    )
    ap.add_argument("--size", type=int, default=None, help=f"input side (default {SIZE})")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="naive DataLoader workers")
    ap.add_argument("--windows", type=int, default=3, help="timed windows per path")
    ap.add_argument("--window-s", type=float, default=2.5, help="seconds per window (at least)")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="warm-up seconds per path")
    ap.add_argument(
        "--budget-s", type=float, default=420.0, help="the whole run's wall-clock budget"
    )
    ap.add_argument("--tmp-dir", default=None, help="where the dataset cache and temp files go")
    ap.add_argument("--md", default=None, help="also write the Markdown table to this file")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="CPU wiring check: timm's test_resnet at 32x32, batch 8, 3 steps per path, workers 0 and 2; "
        f"prepares a {SMOKE_IMAGES}-image subset into --data first when it has none",
    )
    ap.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.smoke:
        args.models = args.models or [f"{SMOKE_MODEL[0]}:{SMOKE_MODEL[1]}"]
        args.size = args.size or SMOKE_SIZE
        args.workers = args.workers or list(SMOKE_WORKERS)
        args.images = args.images or SMOKE_IMAGES
        args.windows, args.window_s, args.warmup_s = 2, 0.0, 0.0  # windows of one step
    args.models = args.models or [f"{m}:{b}" for m, b in SEED_MODELS]
    args.size = args.size or SIZE
    args.workers = list(WORKERS) if args.workers is None else args.workers
    args.images = args.images or DEFAULT_IMAGES
    return args


def parse_models(specs: list[str]) -> list[tuple[str, int]]:
    out = []
    for spec in specs:
        name, _, batch = spec.partition(":")
        if not name or not batch.isdigit() or int(batch) < 1:
            raise SystemExit(f"--models takes NAME:BATCH (e.g. resnet50:144); got {spec!r}.")
        out.append((name, int(batch)))
    return out


# -- the subset ------------------------------------------------------------------------------------
def _allocate(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """``total`` draws shared among groups in proportion to ``sizes`` (largest remainder), at
    most a group's size each."""
    whole = sum(sizes.values())
    if whole == 0:
        return dict.fromkeys(sizes, 0)
    exact = {k: total * v / whole for k, v in sizes.items()}
    out = {k: min(sizes[k], math.floor(v)) for k, v in exact.items()}
    left = min(total, whole) - sum(out.values())
    for k in sorted(exact, key=lambda k: exact[k] - math.floor(exact[k]), reverse=True):
        if left <= 0:
            break
        if out[k] < sizes[k]:
            out[k] += 1
            left -= 1
    return out


def prepare(source: Path, dest: Path, images: int, seed: int) -> dict[str, Any]:
    """Copy a seeded, stratified subset of FER2013's image files into ``dest`` in the release's
    own layout, and write ``dest/SUBSET.json``; returns that record.

    ``dest`` is replaced only when it holds an earlier subset (its ``SUBSET.json``); any other
    existing folder is an error, never deleted.
    """
    import random

    root = C.fer2013_path(str(source))
    if images < 1:
        raise SystemExit(f"--images must be at least 1; got {images}.")
    if dest.exists() and not (dest / SUBSET_JSON).is_file():
        raise SystemExit(
            f"{dest} exists and holds no {SUBSET_JSON}: it is not a subset this script wrote. "
            "Choose another --data folder, or remove it yourself."
        )
    files: dict[str, dict[str, list[Path]]] = {p: {} for p, _, _ in SPLIT_SHARES}
    for folder in ("train", "test"):
        for cls_dir in sorted(d for d in (root / folder).iterdir() if d.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                prefix = next((p for p, _, _ in SPLIT_SHARES if f.name.startswith(p)), None)
                if prefix is not None:
                    files[prefix].setdefault(cls_dir.name, []).append(f)
    rng = random.Random(seed)
    quota = {p: round(images * share) for p, _, share in SPLIT_SHARES}
    quota[SPLIT_SHARES[0][0]] += images - sum(quota.values())
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts: dict[str, dict[str, int]] = {}
    total_bytes = 0
    for prefix, folder, _ in SPLIT_SHARES:
        per_class = _allocate(quota[prefix], {c: len(v) for c, v in files[prefix].items()})
        counts[prefix] = {}
        for cls, n in per_class.items():
            if n == 0:
                continue  # no empty class folder: the adapter refuses one
            out_dir = tmp / folder / cls
            out_dir.mkdir(parents=True, exist_ok=True)
            for f in rng.sample(files[prefix][cls], n):
                shutil.copyfile(f, out_dir / f.name)
                total_bytes += f.stat().st_size
            counts[prefix][cls] = n
    record = {
        "source": str(root),
        "seed": seed,
        "requested": images,
        "images": sum(sum(c.values()) for c in counts.values()),
        "bytes": total_bytes,
        "per_split": counts,
        "layout": "train/<emotion>/Training_*; test/<emotion>/PublicTest_*, PrivateTest_*",
        "created": C.now_iso(),
    }
    (tmp / SUBSET_JSON).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return record


def read_subset(data: Path) -> dict[str, Any]:
    path = data / SUBSET_JSON
    if not path.is_file():
        raise SystemExit(
            f"{data} holds no prepared subset ({SUBSET_JSON} missing). Run "
            f"`python bench/gpu.py --prepare --data {data}` first (it reads "
            f"{C.DEFAULT_FER2013})."
        )
    return dict(json.loads(path.read_text(encoding="utf-8")))


# -- timing ----------------------------------------------------------------------------------------
def on_cuda(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


class GpuMemory:
    """Peak GPU memory of one path: ``max_memory_allocated`` from ``start()``, MiB (None on CPU)."""

    def __init__(self, device: Any) -> None:
        self.cuda = on_cuda(device)

    def start(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20


def release(device: Any) -> None:
    gc.collect()
    if on_cuda(device):
        import torch

        torch.cuda.empty_cache()


# -- the paths -------------------------------------------------------------------------------------
class BatchFeed:
    """Feeds training batches to a ``Windows`` timer; a batch of another size than the first (an
    epoch's last, smaller one) ends no window: the window under way starts again after it. A
    new input shape makes cuDNN's autotuner time every convolution again, once a run: on an H200
    a window that held it read resnet50 at about a tenth of the floor's rate (a window that starts
    again at each epoch is not enough: the autotuning ends the window first). Returns True when
    every window is done."""

    def __init__(self, timer: C.Windows) -> None:
        self.timer, self.full = timer, 0

    def __call__(self, images: int) -> bool:
        self.full = self.full or images
        if images != self.full and self.timer.warm:
            self.timer.restart()
            return False
        return self.timer.tick(images) and self.timer.done


def ferlab_path(ctx: dict[str, Any], timing: dict[str, Any]) -> dict[str, Any]:
    """ferlab's training path as ``fit`` builds it, timed by a Lightning callback."""
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback

    from ferlab.device import channels_last_for_training, is_channels_last
    from ferlab.models import create_model, default_norm
    from ferlab.training.fit import FerDataModule
    from ferlab.training.module import FerModule
    from ferlab.training.trainer import build_trainer
    from throughput import load_fer2013

    t0 = time.perf_counter()
    dataset = load_fer2013(Path(ctx["data"]), ctx["size"], CHANNELS, ctx["cache_dir"])
    labels = list(dataset.labels)
    pl.seed_everything(0, workers=True, verbose=False)
    model = create_model(
        ctx["model"], num_classes=len(labels), channels=CHANNELS, image_size=ctx["size"],
        **ctx["kwargs"],
    )  # fmt: skip
    mean, std = default_norm(CHANNELS, model)
    channels_last_for_training(model, torch.device(str(ctx["device"])))  # as fit does
    module = FerModule(
        model,
        ctx["train_cfg"],
        num_classes=len(labels),
        channels=CHANNELS,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        seed=0,
        log_every=0,  # as fit does without a progress bar
    )
    train, val = dataset.splits["train"], dataset.splits["val"]
    datamodule = FerDataModule(train, val, labels, ctx["train_cfg"], 0, None)
    cuda = on_cuda(ctx["device"])
    timer = C.Windows(t0=t0, sync=torch.cuda.synchronize if cuda else None, **timing)

    feed = BatchFeed(timer)

    class Windows(Callback):
        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if feed(int(batch[0].shape[0])):
                trainer.should_stop = True

    with tempfile.TemporaryDirectory(prefix="ferlab-gpu-bench-", dir=ctx["tmp_dir"]) as tmp:
        setup = build_trainer(
            ctx["runtime"],
            Path(tmp),
            max_epochs=10_000,
            max_steps=ctx["max_steps"],
            callbacks=[Windows()],
            gradient_clip_val=ctx["train_cfg"].grad_clip,
            limit_val_batches=0,
        )
        setup.fit(module, datamodule)
    out = timer.result()
    out.update(
        precision=setup.precision,
        channels_last=is_channels_last(model),
        train_images=len(train),
    )
    return out


def floor_path(ctx: dict[str, Any], timing: dict[str, Any], channels_last: bool) -> dict[str, Any]:
    """The compute floor: random tensors on the device, the full training step."""
    import torch

    from ferlab.device import is_channels_last
    from throughput import fresh_model

    t0 = time.perf_counter()
    device = ctx["device"]
    model = fresh_model(ctx["model"], ctx["kwargs"], ctx["classes"], CHANNELS, ctx["size"])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    step = C.make_train_step(model, ctx["train_cfg"], device, ctx["precision"])
    b, s = ctx["batch"], ctx["size"]
    x = torch.randn(b, CHANNELS, s, s, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, ctx["classes"], (b,), device=device)
    sync = torch.cuda.synchronize if on_cuda(device) else None
    out = C.run_steps(lambda: step(x, y), C.Windows(t0=t0, sync=sync, **timing))
    out.update(
        precision=ctx["precision"],
        channels_last=is_channels_last(model),
        params=sum(p.numel() for p in model.parameters()),
    )
    return out


def naive_path(ctx: dict[str, Any], timing: dict[str, Any], workers: int) -> dict[str, Any]:
    """The seed's input pipeline (ImageFolder + PIL + DataLoader) feeding the floor's step."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from ferlab.device import is_channels_last
    from throughput import fresh_model, naive_train_transform, norm_of

    t0 = time.perf_counter()
    device = ctx["device"]
    cuda = on_cuda(device)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = fresh_model(ctx["model"], ctx["kwargs"], ctx["classes"], CHANNELS, ctx["size"])
    mean, std = norm_of(model, CHANNELS)
    model = model.to(device, memory_format=fmt)
    step = C.make_train_step(model, ctx["train_cfg"], device, ctx["precision"])
    tf = naive_train_transform(ctx["train_cfg"].augment, ctx["size"], CHANNELS, mean, std)
    ds = ImageFolder(str(Path(ctx["data"]) / "train"), transform=tf)
    loader = DataLoader(
        ds, batch_size=ctx["batch"], shuffle=True, num_workers=workers, pin_memory=cuda,
        drop_last=True, persistent_workers=workers > 0,
    )  # fmt: skip

    def batches(loader: Any) -> Any:
        while True:
            yield from loader

    it = batches(loader)

    def one() -> int:
        x, y = next(it)
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        return step(x, y.to(device, non_blocking=True))

    sync = torch.cuda.synchronize if cuda else None
    try:
        out = C.run_steps(one, C.Windows(t0=t0, sync=sync, **timing))
    finally:
        it.close()
        del loader  # stops the persistent workers
    out.update(precision=ctx["precision"], channels_last=is_channels_last(model), workers=workers)
    return out


# -- one model, in a child process -----------------------------------------------------------------
def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_gb=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
            bf16=torch.cuda.is_bf16_supported(),
        )
    return info


def model_child(a: dict[str, Any]) -> dict[str, Any]:
    """Every path of one model (ferlab first, so its first step meets a cold cuDNN cache)."""
    import torch

    from ferlab.device import pick_device, resolve_precision

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    train_cfg, runtime, kwargs = C.bench_train_config(
        a["model"], a["batch"], a["threads"], SEED_CONFIG
    )
    device = pick_device(runtime.accelerator)
    if on_cuda(device):
        torch.backends.cudnn.benchmark = True  # as build_trainer sets it for ferlab's path
    ctx = {
        **a,
        "train_cfg": train_cfg,
        "runtime": runtime,
        "kwargs": kwargs,
        "device": device,
        "precision": resolve_precision(runtime.precision, device.type),
        "classes": 7,
    }
    timing = a["timing"]
    out: dict[str, Any] = {"model": a["model"], "batch": a["batch"], "device": str(device)}
    out.update(device_info())
    memory = GpuMemory(device)
    # ferlab first (a cold cuDNN cache, as for a user), the layout diagnostic last: what a
    # model's share of --budget-s leaves out is the least needed.
    paths: list[tuple[str, Any]] = [
        ("ferlab", lambda: ferlab_path(ctx, timing)),
        ("floor", lambda: floor_path(ctx, timing, channels_last=on_cuda(device))),
    ]
    paths += [(f"naive_w{w}", lambda w=w: naive_path(ctx, timing, w)) for w in a["workers"]]
    paths.append(("floor_nchw", lambda: floor_path(ctx, timing, channels_last=False)))
    deadline = time.perf_counter() + a["budget_s"]
    for name, run in paths:
        if time.perf_counter() > deadline:
            out[name] = {
                "error": f"skipped: this model's share of --budget-s ({a['budget_s']:.0f} s) was used up"
            }
            C.log(f"{a['model']} {name}: {out[name]['error']}")
            continue
        C.log(f"{a['model']} {name} ...")
        memory.start()
        try:
            got = run()
            got["peak_gpu_mem_mb"] = C.rnd(memory.peak_mb(), 1)
        except Exception as e:  # a benchmark reports what broke (an OOM, say) and carries on
            got = {"error": f"{type(e).__name__}: {e}"}
        release(device)
        out[name] = got
        C.log(f"{a['model']} {name}: {_brief(got)}")
    out["params"] = next(
        (r["params"] for r in out.values() if isinstance(r, dict) and r.get("params")), None
    )
    out["machine"] = C.machine_info(torch.get_num_threads())
    return out


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"FAILED {r['error']}"
    return (
        f"{C.rnd(r.get('ips'), 1)} img/s, first step {C.rnd(r.get('first_step_s'), 2)} s, "
        f"peak GPU {r.get('peak_gpu_mem_mb')} MiB"
    )


# -- the parent --------------------------------------------------------------------------------------
def build_cache(data: Path, size: int, cache_dir: Path) -> float:
    """Decode the subset once into ferlab's cache (every child then memory-maps it)."""
    from throughput import load_fer2013

    t0 = time.perf_counter()
    load_fer2013(data, size, CHANNELS, cache_dir)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    data = Path(args.data).expanduser().resolve()
    if args.smoke and not (data / SUBSET_JSON).is_file():
        C.log(f"smoke: preparing a {args.images}-image subset in {data}")
        prepare(Path(args.source or C.DEFAULT_FER2013), data, args.images, args.seed)
    subset = read_subset(data)
    models = parse_models(args.models)
    tmp_root = Path(tempfile.mkdtemp(prefix="ferlab-gpu-bench-", dir=args.tmp_dir))
    results: dict[str, Any] = {}
    try:
        cache_dir = tmp_root / "cache"
        C.log(f"decoding the subset into ferlab's cache ({args.size}x{args.size}x{CHANNELS})")
        cache_build_s = build_cache(data, args.size, cache_dir)
        C.log(f"cache built in {cache_build_s:.1f} s")
        timing = {
            "warmup_s": args.warmup_s,
            "warmup_steps": 1 if args.smoke else C.MIN_WARMUP_STEPS,
            "window_s": args.window_s,
            "windows": args.windows,
        }
        for i, (model, batch) in enumerate(models):
            left = args.budget_s - (time.perf_counter() - started)
            share = left / (len(models) - i)  # what is left, shared among the models to come
            child = {
                "model": model, "batch": batch, "size": args.size, "data": str(data),
                "cache_dir": str(cache_dir), "tmp_dir": str(tmp_root), "workers": args.workers,
                "timing": timing, "threads": 2 if args.smoke else None, "max_steps": 1_000_000,
                "budget_s": max(share, 20.0),
            }  # fmt: skip
            C.log(f"{model} (batch {batch}): a child process, about {share:.0f} s")
            try:
                results[model] = C.run_child(
                    [__file__, "--child", "--child-args", json.dumps(child)],
                    timeout=max(share, 20.0) + CHILD_GRACE_S,
                )
            except Exception as e:  # a child that crashed or ran out of time
                results[model] = {
                    "model": model,
                    "batch": batch,
                    "error": f"{type(e).__name__}: {e}",
                }
                C.log(f"{model} FAILED: {e}")
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return summarise(args, subset, data, cache_build_s, results, time.perf_counter() - started)


def _ips(r: dict[str, Any], path: str) -> float | None:
    v = (r.get(path) or {}).get("ips")
    return float(v) if isinstance(v, int | float) else None


def model_summary(r: dict[str, Any], workers: list[int]) -> dict[str, Any]:
    ferlab, floor, nchw = _ips(r, "ferlab"), _ips(r, "floor"), _ips(r, "floor_nchw")
    naive = {w: _ips(r, f"naive_w{w}") for w in workers}
    ok = {w: v for w, v in naive.items() if v is not None}
    best_w = max(ok, key=ok.__getitem__) if ok else None
    best = ok[best_w] if best_w is not None else None
    paths = ["ferlab", "floor", "floor_nchw", *(f"naive_w{w}" for w in workers)]
    return {
        "batch": r.get("batch"),
        "params": r.get("params"),
        "error": r.get("error"),
        "ferlab_ips": C.rnd(ferlab, 1),
        "floor_ips": C.rnd(floor, 1),
        "floor_nchw_ips": C.rnd(nchw, 1),
        **{f"naive_w{w}_ips": C.rnd(v, 1) for w, v in naive.items()},
        "naive_best_ips": C.rnd(best, 1),
        "naive_best_workers": best_w,
        "ferlab_channels_last": (r.get("ferlab") or {}).get("channels_last"),
        "precision": (r.get("ferlab") or {}).get("precision")
        or (r.get("floor") or {}).get("precision"),
        "peak_gpu_mem_mb": {p: (r.get(p) or {}).get("peak_gpu_mem_mb") for p in paths},
        "first_step_s": {p: C.rnd((r.get(p) or {}).get("first_step_s"), 2) for p in paths},
        "ratios": {
            "ferlab/floor": C.ratio(ferlab, floor),
            "ferlab/floor_nchw": C.ratio(ferlab, nchw),
            "ferlab/naive": C.ratio(ferlab, best),
            "naive/floor": C.ratio(best, floor),
        },
        "errors": {
            p: r[p]["error"] for p in paths if isinstance(r.get(p), dict) and "error" in r[p]
        },
    }


def summarise(
    args: argparse.Namespace,
    subset: dict[str, Any],
    data: Path,
    cache_build_s: float,
    results: dict[str, Any],
    total_s: float,
) -> dict[str, Any]:
    first = next((r for r in results.values() if r.get("torch")), {})
    models = {m: model_summary(r, args.workers) for m, r in results.items()}
    targets = {}
    for m, s in models.items():
        for key, threshold in (("ferlab/floor", TARGET_FLOOR), ("ferlab/naive", TARGET_NAIVE)):
            v = s["ratios"][key]
            targets[f"{m} {key} >= {threshold}"] = {
                "value": v,
                "met": None if v is None else v >= threshold,
            }
    out: dict[str, Any] = {
        "benchmark": "gpu",
        "smoke": bool(args.smoke),
        "date": C.now_iso(),
        "command": "python bench/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "gpu": first.get("gpu"),
        "device": first.get("device"),
        "torch": first.get("torch"),
        "cuda_runtime": first.get("cuda_runtime"),
        "cudnn": first.get("cudnn"),
        "config": {
            "recipe": SEED_CONFIG,
            "size": args.size,
            "channels": CHANNELS,
            "models": [f"{m}:{b}" for m, b in parse_models(args.models)],
            "workers": args.workers,
            "windows": args.windows,
            "window_s": args.window_s,
            "warmup_s": args.warmup_s,
            "budget_s": args.budget_s,
        },
        "data": {
            "path": str(data),
            "images": subset.get("images"),
            "bytes": subset.get("bytes"),
            "seed": subset.get("seed"),
        },
        "cache_build_s": C.rnd(cache_build_s, 2),
        "models": models,
        "targets": targets,
        "total_s": C.rnd(total_s, 1),
        "machine": first.get("machine"),
        "details": results,
    }
    return out


def _cell(v: Any) -> str:
    return "-" if v is None else str(v)


def markdown(res: dict[str, Any]) -> str:
    """The figures as a Markdown table: one row per model."""
    workers = res["config"]["workers"]
    head = ["model", "batch", "floor", "floor NCHW", "ferlab"]
    head += [f"naive w{w}" for w in workers]
    head += [
        "ferlab/floor",
        "ferlab/naive",
        "peak GPU MiB (ferlab / floor)",
        "first step s (ferlab)",
    ]
    lines = [
        f"GPU: {res['gpu'] or 'none (CPU)'}; torch {res['torch']}, CUDA {res['cuda_runtime']}; "
        f"{res['config']['size']}x{res['config']['size']}x{CHANNELS}; training images/s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(head))) + "|",
    ]
    for m, s in res["models"].items():
        mem = s["peak_gpu_mem_mb"]
        cells = [m, s["batch"], s["floor_ips"], s["floor_nchw_ips"], s["ferlab_ips"]]
        cells += [s[f"naive_w{w}_ips"] for w in workers]
        cells += [s["ratios"]["ferlab/floor"], s["ratios"]["ferlab/naive"]]
        cells += [f"{_cell(mem['ferlab'])} / {_cell(mem['floor'])}", s["first_step_s"]["ferlab"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(model_child(json.loads(args.child_args)), default=str), flush=True)
        return
    if args.prepare:
        source = Path(args.source).expanduser() if args.source else C.DEFAULT_FER2013
        record = prepare(source, Path(args.data).expanduser().resolve(), args.images, args.seed)
        C.log(f"wrote {record['images']} images ({record['bytes'] / 2**20:.1f} MiB) to {args.data}")
        print(json.dumps(record, indent=None if args.json else 2), flush=True)
        return
    res = run(args)
    table = markdown(res)
    if args.md:
        Path(args.md).write_text(table, encoding="utf-8")
    C.emit(res, as_json=args.json, table=table)


if __name__ == "__main__":
    main()
