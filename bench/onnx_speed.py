"""Classification speed of an exported model: PyTorch eager against onnxruntime, on the CPU.

    python bench/onnx_speed.py                          # ferlab_vgg at 48x48, 2 threads
    python bench/onnx_speed.py --resnet18 --json        # also resnet18 at 224x224 (fewer reps)
    python bench/onnx_speed.py --smoke                  # wiring check (numbers meaningless)

What is measured, for each model (randomly initialised: speed does not depend on the weights):

latency_ms_b1       one image, batch 1: the median (and p10/p90) over ``--reps`` calls, after
                    ``--warmup`` calls. Eager: the same graph ``ferlab export`` writes (the
                    normalisation, the network, softmax(logits / T)) under
                    ``torch.inference_mode`` with ``torch.set_num_threads(--threads)``;
                    onnxruntime: the exported .onnx file (``--dynamic-batch``), CPU provider,
                    ``intra_op_num_threads = --threads``, ``inter_op_num_threads = 1``, all graph
                    optimisations. The input is a float32 array in [0, 1] already in memory
                    (no decoding): classification alone.
throughput_ips_b64  images per second at batch 64: 64 / the median time of one batch.

The two runtimes are timed interleaved (one eager call, one onnxruntime call, in turn), so both
see the same machine. The JSON also gives ``ort_vs_eager`` (eager time / onnxruntime time:
above 1 means onnxruntime is faster) and the machine (``_common.machine_info``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log, machine_info, now_iso, ratio, rnd


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _interleaved(
    calls: dict[str, Callable[[], Any]], warmup: int, reps: int
) -> dict[str, list[float]]:
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_model(
    arch: str, size: int, channels: int, *, threads: int, reps_b1: int, reps_b64: int, warmup: int
) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from ferlab.export import _deployable, export_onnx
    from ferlab.models import ModelMeta, create_model, default_norm, load_model, save_model

    torch.manual_seed(0)
    model = create_model(arch, 7, channels, pretrained=False, image_size=size)
    mean, std = default_norm(channels, model)
    labels = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    meta = ModelMeta(arch, labels, image_size=size, channels=channels, mean=mean, std=std)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, meta, tmp)
        t0 = time.perf_counter()
        path = export_onnx(tmp, dynamic_batch=True)
        export_s = time.perf_counter() - t0
        loaded, meta = load_model(tmp)
        eager = _deployable(loaded, meta.mean, meta.std, meta.temperature)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        onnx_mb = path.stat().st_size / 2**20

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {
        "model": arch,
        "input": [channels, size, size],
        "params": sum(p.numel() for p in model.parameters()),
        "onnx_mb": rnd(onnx_mb, 2),
        "export_s": rnd(export_s, 2),
    }
    for batch, reps in ((1, reps_b1), (64, reps_b64)):
        x = rng.random((batch, channels, size, size), dtype=np.float32)
        xt = torch.from_numpy(x)

        def run_eager(xt: Any = xt) -> Any:
            with torch.inference_mode():
                return eager(xt)[1]

        def run_ort(x: np.ndarray = x) -> Any:
            return session.run(["probs"], {"pixels": x})[0]

        diff = float(np.abs(run_eager().numpy() - run_ort()).max())
        log(f"{arch} batch {batch}: {reps} interleaved reps (max |probs diff| {diff:.2e})")
        times = _interleaved({"eager": run_eager, "onnxruntime": run_ort}, warmup, reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        if batch == 1:
            out["latency_ms_b1"] = {
                k: {
                    "median": rnd(1000 * med[k], 3),
                    "p10": rnd(1000 * _percentile(v, 10), 3),
                    "p90": rnd(1000 * _percentile(v, 90), 3),
                }
                for k, v in times.items()
            }
            out["reps_b1"] = reps
        else:
            out["throughput_ips_b64"] = {k: rnd(batch / med[k], 1) for k in times}
            out["reps_b64"] = reps
        out[f"ort_vs_eager_b{batch}"] = ratio(med["eager"], med["onnxruntime"])
        out[f"max_abs_probs_diff_b{batch}"] = diff
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=300, help="batch-1 calls per runtime (ferlab_vgg)")
    p.add_argument("--reps-b64", type=int, default=30, help="batch-64 calls per runtime")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--resnet18", action="store_true", help="also resnet18 at 224x224 (fewer reps)")
    p.add_argument("--smoke", action="store_true", help="a few reps: checks the wiring only")
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    reps, reps64, warm = (5, 2, 1) if args.smoke else (args.reps, args.reps_b64, args.warmup)
    started = now_iso()
    results = [
        bench_model(
            "ferlab_vgg", 48, 1, threads=args.threads, reps_b1=reps, reps_b64=reps64, warmup=warm
        )
    ]
    if args.resnet18:
        results.append(
            bench_model(
                "tv:resnet18",
                224,
                3,
                threads=args.threads,
                reps_b1=max(reps // 5, 3),
                reps_b64=max(reps64 // 5, 2),
                warmup=max(warm // 2, 1),
            )
        )
    import onnxruntime

    machine = machine_info(args.threads)
    machine["onnxruntime"] = onnxruntime.__version__
    machine["load_avg_1m_at_end"] = rnd(os.getloadavg()[0], 2)
    result = {
        "benchmark": "onnx_speed",
        "started": started,
        "finished": now_iso(),
        "smoke": bool(args.smoke),
        "models": results,
        "machine": machine,
    }
    lines = [
        f"{r['model']:<12} b1 latency ms eager {r['latency_ms_b1']['eager']['median']:>8} "
        f"ort {r['latency_ms_b1']['onnxruntime']['median']:>8}  |  b64 img/s eager "
        f"{r['throughput_ips_b64']['eager']:>8} ort {r['throughput_ips_b64']['onnxruntime']:>8}"
        for r in results
    ]
    emit(result, as_json=args.json, table="\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
