"""The CPU kernel probe: a model's first training steps, in a child process, before a run.

A native crash in a CPU kernel (oneDNN, torch 2.14 on AVX-512 CPUs: a stride-2 1x1 conv's
weight gradient in channels_last, see ``ferlab.models.compact.XceptionBlock``) kills the
process with no Python error: no log line names the cause, and every run of that model dies
the same way. So before a model trains on a CPU, ``probe_cpu_kernels`` runs one
forward+backward step of the real architecture at the run's geometry in a child process:

1. on a small odd batch, on the run's batch size and on its last, partial batch (the sizes
   where crashes were seen; the two real sizes only for inputs up to 64 px, where a step is
   cheap), then one evaluation-mode forward;
2. where the CPU has native bf16 (``avx512_bf16``/``amx_bf16``, Arm's ``bf16``) and
   ``runtime.precision`` is ``auto``: a few training steps (and forward passes) at the batch
   size in fp32 and in bf16 autocast, interleaved, each timed by its median.

If the child dies by a signal, the probe runs again with oneDNN off; when that passes, the
run trains with oneDNN off and says so (log, ``fit.json``, report: "oneDNN disabled: it
crashed on this CPU in <op>"); when both die, ``KernelCrashError`` names the model, the signal
and the CPU. The op is the last marker the child wrote before it died: a forward pre-hook and
a backward pre-hook (on the module output's autograd node) per leaf module.

bf16 mixed precision is chosen only where its training step is at least ``BF16_MIN_SPEEDUP``
times faster than fp32: on AVX2-only CPUs bf16 is emulated and several times slower, so the
choice is measured, never assumed. ``runtime.onednn`` and ``runtime.precision`` force either
way and skip what they decide.

Outcomes are cached per (architecture, its kwargs, geometry, batch sizes, threads, torch
version, CPU model and flags, this file) under ``<cache folder>/probes/`` (ferlab's cache
folder ``~/.cache/ferlab`` for training: a fact of the machine, not of a dataset), so the probe
costs a few seconds once per machine and model, not once per run; a lock makes processes that
probe at once (DDP ranks, tuning workers) wait for the first and read its outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ferlab import layout
from ferlab.defaults import CACHE_DIR
from ferlab.models import create_model

PROVISIONAL_S = 1800.0  # how long a timing taken on a busy machine holds (one run's span)
BF16_MIN_SPEEDUP = 1.2  # bf16 autocast trains only where a step is at least this much faster
# bf16 inference: where its forward pass measured BF16_MIN_SPEEDUP faster and the trained
# model's validation probabilities move by at most this much (measured on FER2013's PublicTest,
# ferlab_vgg: at most 0.0094, mean 0.0005, 99.6% of argmaxes unchanged; bench/RESULTS.md).
BF16_PROB_TOLERANCE = 0.02
INFERENCE_PRECISION = "inference_precision"  # the key of meta.json's extra that records it
ODD_BATCH = 3  # a small batch whose size is not a multiple of 4 (the crashes seen here)
SMALL_INPUT = 64  # up to this side, the probe also steps at the run's real batch sizes
CHILD_TIMEOUT_S = 600.0
MARK = "@@ferlab-probe "  # prefix of the child's progress markers on stderr

ONEDNN_SETTINGS = ("auto", "on", "off")


class KernelCrashError(RuntimeError):
    """The model's training step kills the process on this CPU, with and without oneDNN."""


# -- the CPU ---------------------------------------------------------------------------------
def cpu_flags() -> list[str]:
    """The CPU's feature flags as the kernel reports them (x86 ``flags``, Arm ``Features``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return sorted(set(value.split()))
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "CPU part"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(flags: Sequence[str] | None = None) -> bool:
    """True where the CPU computes bf16 natively (not emulated in fp32 by oneDNN)."""
    have = set(cpu_flags() if flags is None else flags)
    return bool(have & {"avx512_bf16", "amx_bf16"}) or (
        platform.machine() in ("aarch64", "arm64") and "bf16" in have
    )


def cpu_description(flags: Sequence[str] | None = None) -> str:
    """One line for logs and notes: model, torch's kernel level, the flags that pick kernels."""
    have = cpu_flags() if flags is None else list(flags)
    shown = [
        f
        for f in have
        if f in ("avx2", "fma", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "bf16", "asimd")
        or f.startswith("avx512")
    ]
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_model()} ({capability}; {' '.join(shown) or 'no flags read'})"


# -- the outcome -----------------------------------------------------------------------------
@dataclass
class CpuKernels:
    """What a run uses on this CPU, and why (``fit.json``'s ``cpu_kernels``)."""

    onednn: bool = True
    precision: str = "32"  # Lightning's flag: "32" or "bf16-mixed"
    crash: str | None = None  # where oneDNN crashed (the op and the signal), when it did
    bf16_speedup: float | None = None  # fp32 / bf16 seconds per training step, when measured
    bf16_infer_speedup: float | None = None  # the same for a forward pass in eval mode
    reason: str = ""  # how the precision was chosen
    cpu: str = ""
    probed: bool = False  # a child ran (or its cached outcome was used)
    cached: bool = False
    seconds: float = 0.0  # the probe's own time this call

    def notes(self) -> list[str]:
        """Lines for the log and the report."""
        out = []
        if not self.onednn:
            out.append(
                "oneDNN disabled: "
                + (f"it crashed on this CPU in {self.crash}" if self.crash else "runtime.onednn")
            )
        out.append(f"precision {self.precision}: {self.reason}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChildOutcome:
    """One probe child: passed, or died by ``signal_name`` after the marker ``where``."""

    ok: bool
    returncode: int
    signal_name: str | None = None
    where: str | None = None
    phase: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""


# -- the child -------------------------------------------------------------------------------
def _child_argv(spec: dict[str, Any]) -> list[str]:
    """The child's command line (a function, so tests can stand a crashing child in for it)."""
    return [sys.executable, "-m", "ferlab.probe", json.dumps(spec)]


def run_child(spec: dict[str, Any], timeout: float = CHILD_TIMEOUT_S) -> ChildOutcome:
    """Run one probe child for ``spec`` and read how it ended."""
    try:
        proc = subprocess.run(_child_argv(spec), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        where, phase = _last_marker(err or "")
        return ChildOutcome(False, -1, None, where, phase, error=f"no answer in {timeout:.0f} s")
    where, phase = _last_marker(proc.stderr)
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return ChildOutcome(False, proc.returncode, name, where, phase)
    if proc.returncode != 0:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(MARK)]
        return ChildOutcome(False, proc.returncode, None, where, phase, error=" ".join(tail[-1:]))
    timings: dict[str, float] = {}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            timings = json.loads(line).get("timings", {})
            break
    return ChildOutcome(True, 0, None, where, phase, timings=timings)


def _last_marker(stderr: str) -> tuple[str | None, str | None]:
    where = phase = None
    for line in stderr.splitlines():
        if line.startswith(MARK):
            text = line[len(MARK) :].strip()
            if text.startswith("phase "):
                phase = text[len("phase ") :]
            else:
                where = text
    return where, phase


def _mark(text: str) -> None:
    print(MARK + text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _markers(model: torch.nn.Module) -> Iterator[None]:
    """A marker before each leaf module's forward and before its backward (the module
    output's autograd node), so a crash is named by the last op that started."""
    handles = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        what = f"{name or 'model'} {module!r}".replace("\n", " ")

        def pre(mod: Any, args: Any, what: str = what) -> None:
            _mark(f"forward of {what}")

        def post(mod: Any, args: Any, out: Any, what: str = what) -> None:
            node = getattr(out, "grad_fn", None)
            if node is not None:
                node.register_prehook(lambda grads, what=what: _mark(f"backward of {what}"))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Step the model as training would; time fp32 against bf16 when asked."""
    import torch.nn.functional as F

    torch.set_num_threads(int(spec["threads"]))
    torch._C._set_mkldnn_enabled(bool(spec["onednn"]))
    torch.use_deterministic_algorithms(True, warn_only=True)  # as TrainerSetup.fit on a CPU
    torch.manual_seed(0)
    c, s, k = int(spec["in_chans"]), int(spec["image_size"]), int(spec["num_classes"])
    model = create_model(
        spec["architecture"], num_classes=k, channels=c, image_size=s, **spec["kwargs"]
    )

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, c, s, s), torch.arange(n) % k

    def check(autocast: bool) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
        with _markers(model):
            for n in spec["batch_sizes"]:
                model.train()
                x, y = batch(n)
                _mark(f"step at batch {n}")
                with ctx:
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                model.zero_grad(set_to_none=True)
            model.eval()
            with torch.no_grad(), ctx:
                model(batch(spec["batch_sizes"][0])[0])

    _mark("phase fp32")
    check(False)
    timings: dict[str, float] = {}
    if spec.get("time_batch"):
        _mark("phase bf16")
        check(True)
        _mark("phase timing")
        timings = _time_precisions(model, *batch(int(spec["time_batch"])))
    _mark("phase done")
    return {"ok": True, "timings": timings}


def _time_precisions(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Median seconds per training step and per eval forward, fp32 and bf16, interleaved."""
    import torch.nn.functional as F

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(bf16: bool) -> float:
        model.train()
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    def forward(bf16: bool) -> float:
        model.eval()
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
        return time.perf_counter() - t

    for bf16 in (False, True):  # first kernels, caches
        step(bf16)
        forward(bf16)
    steps: dict[bool, list[float]] = {False: [], True: []}
    fwd: dict[bool, list[float]] = {False: [], True: []}
    t_end = time.perf_counter() + 2.0
    while len(steps[True]) < 3 or (time.perf_counter() < t_end and len(steps[True]) < 8):
        for bf16 in (False, True):
            steps[bf16].append(step(bf16))
            fwd[bf16].append(forward(bf16))
    return {
        "fp32_step_s": statistics.median(steps[False]),
        "bf16_step_s": statistics.median(steps[True]),
        "fp32_forward_s": statistics.median(fwd[False]),
        "bf16_forward_s": statistics.median(fwd[True]),
    }


# -- the parent ------------------------------------------------------------------------------
def probe_batch_sizes(image_size: int, batch_size: int, last_batch: int) -> list[int]:
    """The batch sizes a probe steps at (first: the small odd one)."""
    sizes = [ODD_BATCH]
    if image_size <= SMALL_INPUT:
        sizes += [n for n in (batch_size, last_batch) if n > 0 and n not in sizes]
    return sizes


def _cache_path(cache_dir: str | Path, spec: dict[str, Any], flags: Sequence[str]) -> Path:
    source = Path(__file__).read_bytes()
    key = json.dumps(
        {
            "spec": {k: v for k, v in spec.items() if k != "onednn"},
            "torch": torch.__version__,
            "cpu": cpu_model(),
            "flags": list(flags),
            "code": hashlib.sha256(source).hexdigest(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / "probes" / f"{spec['architecture']}-{digest}.json"


def probe_cpu_kernels(
    architecture: str,
    *,
    kwargs: dict[str, Any] | None = None,
    num_classes: int,
    in_chans: int,
    image_size: int,
    batch_size: int,
    last_batch: int = 0,
    threads: int = 1,
    onednn: str = "auto",
    precision: str = "auto",
    cache_dir: str | Path = CACHE_DIR,
    log: Callable[[str], None] = print,
) -> CpuKernels:
    """How ``architecture`` should train on this CPU: oneDNN on or off, fp32 or bf16-mixed.

    ``onednn`` (``runtime.onednn``): ``auto`` probes for a crash, ``on``/``off`` force it.
    ``precision`` (``runtime.precision``): ``auto`` measures bf16 against fp32 where the CPU has
    native bf16; anything else is used as it is. Raises ``KernelCrashError`` when the step
    dies with oneDNN on and off.
    """
    if onednn not in ONEDNN_SETTINGS:
        raise ValueError(f"runtime.onednn must be one of {ONEDNN_SETTINGS}; got {onednn!r}")
    t0 = time.perf_counter()
    flags = cpu_flags()
    cpu = f"{cpu_description(flags)}, {threads} threads"
    measure = precision == "auto" and native_bf16(flags)
    result = CpuKernels(onednn=onednn != "off", cpu=cpu)
    if precision != "auto":
        result.precision, result.reason = precision, "set by runtime.precision"
    elif not measure:
        result.reason = "this CPU has no native bf16 (avx512_bf16/amx_bf16): fp32"
    if onednn != "auto" and not measure:  # both forced or decided: nothing to probe
        return result

    spec = {
        "architecture": architecture,
        "kwargs": dict(kwargs or {}),
        "num_classes": int(num_classes),
        "in_chans": int(in_chans),
        "image_size": int(image_size),
        "batch_sizes": probe_batch_sizes(image_size, batch_size, last_batch),
        "threads": int(threads),
        "time_batch": int(batch_size) if measure else 0,
        "onednn": onednn != "off",
    }
    path = _cache_path(cache_dir, {**spec, "forced": onednn}, flags)
    # One probe at a time per key on this machine: processes started together (DDP ranks, a
    # tuning worker beside a run) wait and read the first one's outcome, so they all agree.
    with _probe_lock(path):
        cached = _read_cached(path)
        if cached is not None:
            cached.cpu, cached.seconds = cpu, time.perf_counter() - t0
            return cached
        busy = _machine_busy() if measure else None
        result.probed = _run_probe(result, spec, architecture, precision, measure, log)
        result.seconds = time.perf_counter() - t0
        if result.probed:
            record = {k: v for k, v in result.to_dict().items() if k != "seconds"}
            if busy and result.onednn:
                # A speed measured beside other work is no fact of the machine: it holds for
                # the runs starting now (every pair of this run, every DDP rank: one answer),
                # and is measured again after PROVISIONAL_S (a crash, which does not depend on
                # load, is kept for good).
                record["provisional_until"] = time.time() + PROVISIONAL_S
                log(
                    f"the bf16/fp32 timing of {architecture} ran on a busy machine ({busy}): "
                    f"its choice holds for {PROVISIONAL_S / 60:.0f} minutes, then it is measured "
                    "again"
                )
            try:
                layout.write_json(path, record)
            except OSError as e:
                log(f"could not cache the CPU kernel probe in {path.parent} ({e}); it runs again")
    return result


def _machine_busy() -> str | None:
    """Why timings taken now would not be the machine's own: more runnable work than cores
    (the 1-minute load average, which also counts ferlab's own loading just before), or None."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return None
    cores = os.cpu_count() or 1
    return f"load average {load:.1f} on {cores} cores" if load > cores + 0.5 else None


def _read_cached(path: Path) -> CpuKernels | None:
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        until = record.pop("provisional_until", None)
        cached = CpuKernels(**record)
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # unreadable: probe again
    if until is not None and time.time() > float(until):
        return None  # measured on a busy machine, a while ago: measure again
    cached.cached = True
    return cached


@contextlib.contextmanager
def _probe_lock(path: Path) -> Iterator[None]:
    """An advisory lock beside ``path`` (released when the process dies); none where the
    folder cannot be written or ``fcntl`` is missing (the probe then just runs)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the block)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def _run_probe(
    result: CpuKernels,
    spec: dict[str, Any],
    architecture: str,
    precision: str,
    measure: bool,
    log: Callable[[str], None],
) -> bool:
    """Run the child (and the retry without oneDNN) and fill ``result``; False when the probe
    itself failed (a Python error or a hang: training meets and reports it, or passes)."""
    first = run_child(spec)
    where = first.where or "the first step"
    size = f"{spec['in_chans']}x{spec['image_size']}x{spec['image_size']}"
    if first.ok:
        _choose_precision(result, first.timings, measure)
    elif first.signal_name and first.phase in ("bf16", "timing"):
        result.precision = "32"
        result.reason = f"bf16 crashed the probe ({first.signal_name} in {where}): fp32"
    elif first.signal_name and spec["onednn"]:
        result.crash = f"{where} ({first.signal_name})"
        log(
            f"the CPU kernel probe of {architecture} died by {first.signal_name} with oneDNN "
            f"on, in {where}; trying again with oneDNN off"
        )
        second = run_child({**spec, "onednn": False, "time_batch": 0})
        if not second.ok:
            why = second.signal_name or second.error or f"exit code {second.returncode}"
            raise KernelCrashError(
                f"{architecture} cannot train on this CPU: one training step ({size}, batches "
                f"{spec['batch_sizes']}) dies by {first.signal_name} with oneDNN (in {where}) "
                f"and by {why} without it (in {second.where}). CPU: {result.cpu}; torch "
                f"{torch.__version__}. Try another architecture or torch version, or a GPU."
            )
        result.onednn = False
        if precision == "auto":
            result.precision = "32"
            result.reason = "oneDNN is off (bf16 is slow without it): fp32"
    elif first.signal_name:  # oneDNN was already off (forced)
        raise KernelCrashError(
            f"{architecture} cannot train on this CPU: one training step ({size}) dies by "
            f"{first.signal_name} with oneDNN off (runtime.onednn: off), in {where}. "
            f"CPU: {result.cpu}; torch {torch.__version__}."
        )
    else:
        log(f"the CPU kernel probe of {architecture} did not finish ({first.error}); skipped")
        return False
    return True


def _choose_precision(result: CpuKernels, timings: dict[str, float], measure: bool) -> None:
    if not measure:
        return
    if not timings:
        result.precision, result.reason = "32", "bf16 not measured: fp32"
        return
    train = timings["fp32_step_s"] / max(timings["bf16_step_s"], 1e-9)
    infer = timings["fp32_forward_s"] / max(timings["bf16_forward_s"], 1e-9)
    result.bf16_speedup, result.bf16_infer_speedup = round(train, 3), round(infer, 3)
    if train >= BF16_MIN_SPEEDUP:
        result.precision = "bf16-mixed"
        result.reason = f"bf16 autocast measured {train:.2f}x faster per training step"
    else:
        result.precision = "32"
        result.reason = (
            f"bf16 autocast measured {train:.2f}x the speed of fp32 per training step "
            f"(below {BF16_MIN_SPEEDUP}x): fp32"
        )


def inference_bf16(meta: Any, device: torch.device) -> bool:
    """Whether inference for the model of ``meta`` runs under bf16 autocast on ``device``.

    Only where training chose it (``meta.extra["inference_precision"]``: measured faster and
    within ``BF16_PROB_TOLERANCE`` of fp32 on validation) and only on a CPU with native bf16:
    one answer for evaluate, predict and the pipeline, so an image gets one number on a machine.
    """
    extra = getattr(meta, "extra", None) or {}
    return device.type == "cpu" and extra.get(INFERENCE_PRECISION) == "bf16" and native_bf16()


@contextlib.contextmanager
def onednn_enabled(enabled: bool) -> Iterator[None]:
    """torch's oneDNN switch inside the block, the previous setting after."""
    previous = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(enabled)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(previous)


if __name__ == "__main__":  # the probe child: python -m ferlab.probe SPEC_JSON
    print(json.dumps(_child(json.loads(sys.argv[1]))), flush=True)
