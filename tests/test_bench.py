"""The benchmarks' timing helpers, and a smoke run of ``bench/throughput.py`` on real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared_dataset

sys.path.insert(0, str(REPO / "bench"))
import _common as C


def test_interleaved_timers_take_turns_in_abba_order() -> None:
    order: list[str] = []

    def step(name: str) -> int:
        order.append(name)
        return 1

    a = C.WindowTimer(lambda: step("a"), window_s=0.0, warmup_s=0.0, warmup_steps=1)
    b = C.WindowTimer(lambda: step("b"), window_s=0.0, warmup_s=0.0, warmup_steps=1)
    C.interleaved([a, b], windows=4)
    # warm-up a, b; then windows a b | b a | a b | b a (one step each: window_s is 0)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(a.result()["windows"]) == 4 and a.result()["steps"] == 4


def test_paired_ratio_is_the_median_of_window_ratios_with_an_interval() -> None:
    limit = [100.0, 50.0, 200.0, 100.0, 80.0]
    ferlab = [95.0, 48.0, 190.0, 99.0, 40.0]  # one outlier window
    got = C.paired_ratio(ferlab, limit)
    assert got["median"] == pytest.approx(0.95)
    assert got["n"] == 5
    lo, hi = got["ci95"]
    assert lo <= got["median"] <= hi
    assert C.paired_ratio([], [])["median"] is None


@pytest.mark.slow
@pytest.mark.realdata
def test_throughput_smoke_on_fer2013(tmp_path: Path) -> None:
    data = shared_dataset("fer2013")
    cmd = [
        sys.executable, str(REPO / "bench" / "throughput.py"), "--smoke", "--json",
        "--data", str(data), "--skip", "rss", "first_step", "--workers", "0",
        "--tmp-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    for key in ("limit_train_ips", "ferlab_train_ips", "naive_train_ips", "ferlab_eval_ips"):
        assert res[key] is not None and res[key] > 0, key
    assert res["ratios"]["ferlab_train/limit"] is not None
    assert res["ratios"]["ferlab_train/limit_ci95"] is not None
    assert set(res["targets"]) >= {"ferlab_train/limit >= 0.95", "cache_load_s < 1"}
