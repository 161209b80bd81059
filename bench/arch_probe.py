"""Probe candidate architectures: training and inference images/s at 48x48 on a few CPU threads.

A quick, throwaway-quality measurement used to pick ``ferlab.models.DEFAULT_CPU_MODEL``: random
tensors already in memory (no data loading), batch 64, AdamW step, after warm-up, the median of
a few short timed windows, for contiguous and channels_last memory formats. Prints one JSON
object (a list of rows) and a small table on stderr.

    python bench/arch_probe.py                      # the default candidate list
    python bench/arch_probe.py --models ferlab_vgg resnet18 --windows 5 --window-s 2
    python bench/arch_probe.py --models 'ferlab_vgg:{"width_mult":1.25}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import _common as C
from ferlab.device import cpu_threads
from ferlab.models import create_model

DEFAULT_CANDIDATES = [
    "ferlab_vgg",
    "ferlab_vgg_fast",
    "ferlab_mini_xception",
    "ferlab_resnet",
    "resnet18",
    "mobilenetv3_small_100",
    "efficientnet_b0",
]


def parse_candidate(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:{json kwargs}``."""
    name, sep, rest = spec.partition(":")
    if name == "tv" and sep:  # tv:resnet18 or tv:resnet18:{...}
        inner, sep2, rest2 = rest.partition(":")
        return f"tv:{inner}", json.loads(rest2) if sep2 else {}
    return name, json.loads(rest) if sep else {}


def macs_per_image(model: nn.Module, size: int, chans: int) -> float:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, chans, size, size))
    return counter.get_total_flops() / 2


def timed_windows(step: Any, batch: int, windows: int, window_s: float) -> tuple[float, float]:
    """Median images/s over ``windows`` windows of at least ``window_s`` s after two warm-up
    steps (``_common.Windows``): (wall-clock rate, rate per CPU-second per thread)."""

    def one() -> int:
        step()
        return batch

    timer = C.Windows(window_s=window_s, warmup_s=0.0, warmup_steps=2, windows=windows)
    r = C.run_steps(one, timer)
    return r["ips"], r["cpu_ips"]


def probe(
    name: str,
    kwargs: dict[str, Any],
    *,
    size: int,
    chans: int,
    batch: int,
    windows: int,
    window_s: float,
    channels_last: bool,
    bf16: bool,
    threads: int,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name, 7, chans, image_size=size, **kwargs)
    params = sum(p.numel() for p in model.parameters())
    macs = macs_per_image(model, size, chans)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    x = torch.randn(batch, chans, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 7, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def train_step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    model.train()
    train_ips, train_cpu = timed_windows(train_step, batch, windows, window_s)
    model.eval()
    infer_ips, infer_cpu = timed_windows(infer_step, batch, windows, window_s)
    return {
        "model": name,
        "kwargs": kwargs,
        "params_m": round(params / 1e6, 3),
        "mmacs": round(macs / 1e6, 1),
        "channels_last": channels_last,
        "bf16": bf16,
        "train_ips": round(train_ips, 1),
        "infer_ips": round(infer_ips, 1),
        "train_ips_cpu": round(train_cpu, 1),
        "infer_ips_cpu": round(infer_cpu, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", nargs="+", default=DEFAULT_CANDIDATES)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument(
        "--formats",
        nargs="+",
        choices=["contiguous", "channels_last"],
        default=["contiguous", "channels_last"],
    )
    ap.add_argument("--bf16", action="store_true", help="also measure bf16 autocast")
    args = ap.parse_args(argv)
    torch.set_num_threads(cpu_threads(args.threads))
    rows = []
    for spec in args.models:
        name, kwargs = parse_candidate(spec)
        for fmt in args.formats:
            for bf16 in [False, True] if args.bf16 else [False]:
                row = probe(
                    name,
                    kwargs,
                    size=args.size,
                    chans=args.channels,
                    batch=args.batch,
                    windows=args.windows,
                    window_s=args.window_s,
                    channels_last=fmt == "channels_last",
                    bf16=bf16,
                    threads=args.threads,
                )
                rows.append(row)
                print(
                    f"{name:24s} {json.dumps(kwargs):40s} {fmt:13s} bf16={int(bf16)} "
                    f"{row['params_m']:6.3f}M {row['mmacs']:7.1f}MMAC "
                    f"train {row['train_ips']:6.1f} ({row['train_ips_cpu']:6.1f} cpu) "
                    f"infer {row['infer_ips']:7.1f} ({row['infer_ips_cpu']:7.1f} cpu) img/s "
                    f"load {row['load_avg_1m']}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        json.dumps({"threads": args.threads, "batch": args.batch, "size": args.size, "rows": rows})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
