"""Shared helpers for the benchmarks in ``bench/``: timing windows, peak memory, machine info,
JSON output, child processes, and ferlab's real training path instrumented step by step.

Not part of the ``ferlab`` package: the benchmarks import it as a sibling module
(``python bench/throughput.py`` puts ``bench/`` on ``sys.path``).

Conventions shared by every benchmark:

- a *rate* is images per second; a training image is one forward + backward + optimizer share,
  an evaluation image is one source image with all of its TTA views;
- a measurement warms up first (``warmup_s`` and at least ``MIN_WARMUP_STEPS`` steps), then
  times ``windows`` consecutive windows of at least ``window_s`` seconds each and reports the
  *median* window rate (robust to a neighbour's burst on a shared machine) and every window;
- ``peak_rss_mb`` is ``getrusage(RUSAGE_SELF).ru_maxrss`` of the process that ran the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# The layout: the shared datasets sit beside the repository.
DEFAULT_FER2013 = REPO_ROOT.parent / "shared" / "datasets" / "fer2013"
MIN_WARMUP_STEPS = 3


# -- output --------------------------------------------------------------------------------------
def log(msg: str) -> None:
    """Progress for people: always on stderr, so ``--json`` keeps stdout to one JSON object."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any], *, as_json: bool, table: str = "") -> None:
    """Print the result: the JSON object alone with ``--json``; else the table, then the JSON."""
    text = json.dumps(result, indent=None if as_json else 2, default=_json_default)
    if as_json:
        print(text, flush=True)
        return
    if table:
        print(table)
        print()
    print(text, flush=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def rnd(x: float | None, digits: int = 2) -> float | None:
    """Round for the report; ``None`` stays ``None`` (a part that was skipped or failed)."""
    return None if x is None else round(float(x), digits)


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    """``a / b`` rounded, or ``None`` when either side is missing."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


# -- data location -------------------------------------------------------------------------------
def fer2013_path(given: str | None) -> Path:
    """The FER2013 image-folder root: ``given`` or ``../shared/datasets/fer2013`` next to the
    repository; a clear error when it is absent (the benchmarks need the real data)."""
    path = Path(given).expanduser() if given else DEFAULT_FER2013
    path = path.resolve()
    if not (path / "train").is_dir() or not (path / "test").is_dir():
        raise SystemExit(
            f"FER2013 not found at {path}: expected train/<emotion>/*.jpg and test/<emotion>/*.jpg "
            f"(the image-folder release). Put it at {DEFAULT_FER2013} or pass --data PATH."
        )
    return path


# -- timing --------------------------------------------------------------------------------------
def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


class Windows:
    """Images/s in windows of at least ``window_s`` s after a warm-up, fed one step at a time:
    the one timing core of the benchmarks. ``WindowTimer`` drives a step function through it,
    ``make_step_timer``'s Lightning callback and ``bench/gpu.py``'s loops feed it.

    ``tick(images)`` after every step; it returns True when that step ended a window, and
    ``done`` says when ``windows`` windows are complete (``None``: never). The first step's end
    gives ``first_step_s`` (from ``t0``); the warm-up is the first ``warmup_steps`` steps and at
    least ``warmup_s`` s after the first step's end; then each window sums images until it
    lasts ``window_s``. ``restart()`` starts the current window afresh (the time since, spent
    on another path's window, is left out). ``sync`` (``torch.cuda.synchronize``) runs only
    where a clock is read at an edge (first step, warm-up end, window end), so the host can run
    ahead of the GPU within a window as it does in training.

    ``result()``: ``{"ips": median rate, "windows": [rates], "cpu_ips": median rate per
    CPU-second per thread, "steps": all steps, "timed_steps", "first_step_s"}``. ``cpu_ips``
    divides by the process's CPU time over torch's thread count, an estimate of the idle-machine
    rate when neighbours steal cores (it ignores DataLoader worker processes, so it is only
    reported, never compared).
    """

    def __init__(
        self,
        *,
        window_s: float,
        warmup_s: float,
        warmup_steps: int = MIN_WARMUP_STEPS,
        windows: int | None = None,
        sync: Callable[[], None] | None = None,
        t0: float | None = None,
    ) -> None:
        import torch

        self.window_s, self.warmup_s, self.warmup_steps = window_s, warmup_s, warmup_steps
        self.windows, self.sync = windows, sync or (lambda: None)
        self.t0 = time.perf_counter() if t0 is None else t0
        self.threads = max(1, torch.get_num_threads())
        self.steps = self.timed_steps = 0
        self.first_step_s: float | None = None
        self.rates: list[float] = []
        self.cpu_rates: list[float] = []
        self._warm_from = 0.0
        self._win: tuple[float, float] | None = None  # (wall, CPU) time the window started
        self._win_images = 0

    @property
    def warm(self) -> bool:
        return self._win is not None

    @property
    def done(self) -> bool:
        return self.windows is not None and len(self.rates) >= self.windows

    def restart(self) -> None:
        if self._win is not None:
            self.sync()
            self._win, self._win_images = (time.perf_counter(), time.process_time()), 0

    def tick(self, images: int) -> bool:
        self.steps += 1
        if self.first_step_s is None:
            self.sync()
            self._warm_from = time.perf_counter()
            self.first_step_s = self._warm_from - self.t0
        if self._win is None:
            now = time.perf_counter()
            if self.steps >= self.warmup_steps and now - self._warm_from >= self.warmup_s:
                self.sync()
                self._win, self._win_images = (time.perf_counter(), time.process_time()), 0
            return False
        self._win_images += images
        self.timed_steps += 1
        if time.perf_counter() - self._win[0] < self.window_s:
            return False
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        self.rates.append(self._win_images / max(wall - self._win[0], 1e-9))
        self.cpu_rates.append(self._win_images / max((cpu - self._win[1]) / self.threads, 1e-9))
        self._win, self._win_images = (wall, cpu), 0
        return True

    def result(self) -> dict[str, Any]:
        return {
            "ips": median(self.rates),
            "windows": [round(r, 1) for r in self.rates],
            "cpu_ips": median(self.cpu_rates),
            "steps": self.steps,
            "timed_steps": self.timed_steps,
            "first_step_s": self.first_step_s,
        }


def run_steps(
    step: Callable[[], int], timer: Windows, max_steps: int = 1_000_000
) -> dict[str, Any]:
    """Feed ``timer`` with ``step()`` (images per call) until its windows are complete."""
    for _ in range(max_steps):
        if timer.tick(step()) and timer.done:
            break
    return timer.result()


def autocast_for(precision: str, device: Any) -> Any:
    """The autocast of Lightning's precision flag on ``device`` (none at 32-bit)."""
    import torch

    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def make_train_step(model: Any, train_cfg: Any, device: Any, precision: str = "32") -> Any:
    """One plain-PyTorch training step on (x, y), the compute floor of ferlab's: autocast
    forward (Lightning's ``precision`` flag), the same label-smoothed loss, backward, gradient
    clipping and optimizer (``build_optimizer``, fused where ferlab's step fuses it)."""
    import torch
    import torch.nn.functional as F

    from ferlab.training.module import build_optimizer

    model.to(device).train()
    opt = build_optimizer(model, train_cfg, precision=precision)  # FerModule's own
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def step(x: Any, y: Any) -> int:
        with autocast_for(precision, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=train_cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if train_cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return int(x.shape[0])

    return step


class WindowTimer:
    """Drives ``step`` (returns the number of images it processed) through a ``Windows``, one
    window per ``window()`` call after a ``warm_up()``, so several paths can take turns
    (``interleaved``): each window starts when its turn comes."""

    def __init__(
        self,
        step: Callable[[], int],
        *,
        window_s: float,
        warmup_s: float,
        sync: Callable[[], None] | None = None,
        warmup_steps: int = MIN_WARMUP_STEPS,
    ) -> None:
        self.step = step
        self.timer = Windows(
            window_s=window_s, warmup_s=warmup_s, warmup_steps=warmup_steps, sync=sync
        )

    def warm_up(self) -> None:
        self.timer.t0 = time.perf_counter()
        while not self.timer.warm:
            self.timer.tick(self.step())

    def window(self) -> None:
        if not self.timer.warm:
            self.warm_up()
        self.timer.restart()
        while not self.timer.tick(self.step()):
            pass

    def result(self) -> dict[str, Any]:
        return self.timer.result()


def timed_windows(
    step: Callable[[], int],
    *,
    windows: int,
    window_s: float,
    warmup_s: float,
    sync: Callable[[], None] | None = None,
    warmup_steps: int = MIN_WARMUP_STEPS,
) -> dict[str, Any]:
    """One path alone: warm up, then ``windows`` windows (see ``WindowTimer``)."""
    timer = WindowTimer(
        step, window_s=window_s, warmup_s=warmup_s, sync=sync, warmup_steps=warmup_steps
    )
    timer.warm_up()
    for _ in range(windows):
        timer.window()
    return timer.result()


def interleaved(timers: Sequence[WindowTimer], windows: int) -> None:
    """Warm every timer up, then let them take turns, one window each, in A B B A order (a
    steady drift of the machine's speed then favours no path)."""
    for t in timers:
        t.warm_up()
    for i in range(windows):
        for t in timers if i % 2 == 0 else list(reversed(timers)):
            t.window()


def paired_ratio(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The ratio of two interleaved paths: the median over windows of ``a[i] / b[i]`` (each
    window against its neighbour in time, robust to the machine's speed changing), with a
    bootstrap 95% interval of that median (how far the figure can be trusted on this machine).
    """
    import numpy as np

    r = np.array([x / y for x, y in zip(a, b, strict=False) if y > 0], dtype=np.float64)
    if r.size == 0:
        return {"median": None, "ci95": None, "n": 0}
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, r.size, size=(resamples, r.size))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return {"median": float(np.median(r)), "ci95": [float(lo), float(hi)], "n": int(r.size)}


# -- memory --------------------------------------------------------------------------------------
def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size of this process (or of its finished, waited-for children), MiB.

    ``ru_maxrss`` is in KiB on Linux and bytes on macOS.
    """
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return peak / scale


def current_rss_mb() -> float | None:
    """Resident set size right now (Linux ``/proc``), MiB; ``None`` elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


# -- machine -------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, load, library versions, device."""
    import lightning
    import numpy
    import torch
    import torchvision

    import ferlab
    from ferlab.probe import cpu_description, cpu_model, native_bf16

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        # torch's kernel level and the flags that pick kernels (AVX2 / AVX-512 / bf16 / AMX)
        "cpu_kernels": cpu_description(),
        "native_bf16": native_bf16(),
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "numpy": numpy.__version__,
        "ferlab": ferlab.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    return info


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# -- child processes -----------------------------------------------------------------------------
def run_child(argv: Sequence[str], *, timeout: float | None = None) -> dict[str, Any]:
    """Run a Python child (``sys.executable`` + argv) whose last stdout line is a JSON object.

    The child's stderr passes through (its progress lines); a failure raises with its tail.
    """
    cmd = [sys.executable, *argv]
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, cwd=REPO_ROOT
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"child {' '.join(cmd[1:3])} ... exited {proc.returncode}; stdout tail: "
            f"{proc.stdout[-2000:]!r}"
        )
    return dict(json.loads(lines[-1]))


def device_sync() -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` when training runs on CUDA, else ``None`` (no-op)."""
    import torch

    return torch.cuda.synchronize if torch.cuda.is_available() else None


# -- ferlab's real training path, instrumented ---------------------------------------------------
def make_step_timer(
    *,
    warmup_steps: int,
    warmup_s: float,
    window_s: float,
    windows: int,
    sync: Any,
    between: Callable[[], None] | None = None,
) -> Any:
    """A Lightning ``Callback`` timing ferlab's training steps in windows.

    The interval from one ``on_train_batch_end`` to the next covers everything Lightning does
    for a step: fetching the batch from ferlab's batcher (index gather), the uint8 -> float
    conversion, batched augmentation, forward, backward, gradient clipping, the optimizer and
    scheduler steps and Lightning's own hooks. Steps before ``warmup_steps`` *and* ``warmup_s``
    are dropped; then steps are summed into windows of at least ``window_s`` seconds. After each
    window ``between()`` runs (another path's window, for interleaved A/B timing), its time
    left out. Once ``windows`` windows are complete the callback asks the trainer to stop.
    """
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.t_start: float | None = None
            self.timer = Windows(
                window_s=window_s, warmup_s=warmup_s, warmup_steps=warmup_steps,
                windows=windows, sync=sync,
            )  # fmt: skip

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t_start = self.timer.t0 = time.perf_counter()

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            if not self.timer.tick(int(batch[0].shape[0])):
                return
            if between is not None:  # after every window, the last too: as many on each side
                between()
                self.timer.restart()
            if self.timer.done:
                trainer.should_stop = True

    return StepTimer()


def ferlab_train_rate(
    dataset: Any,
    model_name: str,
    model_kwargs: dict[str, Any],
    train_cfg: Any,
    runtime: Any,
    *,
    image_size: int,
    channels: int,
    windows: int,
    window_s: float,
    warmup_s: float,
    max_steps: int,
    warmup_steps: int = MIN_WARMUP_STEPS,
    seed: int = 0,
    root_dir: str | Path | None = None,
    between: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Images/s of ferlab's own training path on ``dataset`` (a ``LoadedDataset``).

    Builds what ``ferlab.training.fit`` builds (the model, ``FerModule``, ``FerDataModule``
    with its in-memory batcher and sampler, and the ``Trainer`` from ``build_trainer``: the
    same precision, gradient clipping, deterministic mode and logs) with ``runtime`` (a
    ``RuntimeConfig``, see ``bench_runtime``) and a timing callback instead of fit's callbacks:
    no validation and no checkpoints. Times steady-state steps (see ``make_step_timer``;
    ``between`` runs after every window, untimed here: the other half of an A/B pair).
    Returns ``{"ips", "windows", "steps", "first_step_s", "setup_s"}``; ``setup_s`` is the
    time from the call to the start of training (model, module, trainer).
    """
    import tempfile

    import lightning.pytorch as pl
    import torch

    from ferlab.device import channels_last_for_training, pick_device
    from ferlab.models import create_model, default_norm
    from ferlab.training.data import remap_targets
    from ferlab.training.fit import FerDataModule
    from ferlab.training.module import FerModule
    from ferlab.training.trainer import build_trainer

    t0 = time.perf_counter()
    labels = list(dataset.labels)
    pl.seed_everything(seed, workers=True, verbose=False)
    model = create_model(
        model_name, num_classes=len(labels), channels=channels, image_size=image_size,
        **model_kwargs,
    )  # fmt: skip
    mean, std = default_norm(channels, model)
    channels_last_for_training(model, pick_device(runtime.accelerator))  # as fit does
    module = FerModule(
        model,
        train_cfg,
        num_classes=len(labels),
        channels=channels,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        seed=seed,
    )
    train, val = dataset.splits["train"], dataset.splits["val"]
    remap_targets(train.labels, labels)  # fail early, with ferlab's message, on a label mismatch
    datamodule = FerDataModule(train, val, labels, train_cfg, seed, None)
    on_cuda = pick_device(runtime.accelerator).type == "cuda"
    timer = make_step_timer(
        warmup_steps=warmup_steps, warmup_s=warmup_s, window_s=window_s, windows=windows,
        sync=torch.cuda.synchronize if on_cuda else None, between=between,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ferlab-bench-", dir=root_dir) as tmp:
        setup = build_trainer(
            runtime,
            Path(tmp),
            max_epochs=10_000,
            max_steps=max_steps,
            callbacks=[timer],
            gradient_clip_val=train_cfg.grad_clip,
            limit_val_batches=0,
        )
        setup.fit(module, datamodule)
    rates = timer.timer.rates
    if len(rates) < windows:
        log(
            f"ferlab train: only {len(rates)} of {windows} windows before max_steps={max_steps}; "
            "raise --max-steps or lower --window-s"
        )
    return {
        "ips": median(rates),
        "windows": [round(r, 1) for r in rates],
        "steps": timer.timer.timed_steps,
        "first_step_s": timer.timer.first_step_s,
        "setup_s": None if timer.t_start is None else timer.t_start - t0,
    }


def bench_runtime(threads: int | None, base: Any = None) -> Any:
    """Where every benchmark path runs: ``base`` (a ``RuntimeConfig``, default the defaults:
    the best device) on one device (one process) with ``threads`` torch threads (``None``: all
    cores) and no progress bar; returns a ``RuntimeConfig``."""
    from ferlab.config import RuntimeConfig

    base = base if base is not None else RuntimeConfig()
    return base.model_copy(update={"devices": 1, "threads": threads, "progress": False})


def bench_train_config(
    model_name: str, batch: int, threads: int, config: str = "fer2013_cpu"
) -> tuple[Any, Any, dict[str, Any]]:
    """The recipe every path uses: the shipped ``fer2013_cpu.yaml`` (the default CPU recipe)
    with ``batch_size`` set, and its runtime on one device with ``threads`` threads; returns
    (TrainConfig, RuntimeConfig, model kwargs).

    The model's kwargs come from the config when it trains that model, else none.
    """
    from ferlab.config import ModelConfig, load_config

    cfg = load_config(config)
    listed = [m for m in cfg.models if m.name == model_name]
    mcfg = listed[0] if listed else ModelConfig(name=model_name)
    train = cfg.train_for(mcfg).model_copy(update={"batch_size": batch})
    return train, bench_runtime(threads, cfg.runtime), dict(mcfg.kwargs)
