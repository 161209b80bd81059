"""``bench/gpu.py``: the seeded FER2013 subset it prepares, its window timer, and a ``--smoke``
run of every path on the CPU (tiny images, one tiny model), whose JSON must carry every field.

The source data is a fake FER2013 image-folder release written here (random 48x48 grey JPEGs
with the release's file-name prefixes), so no real dataset is needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import _common as C
import gpu as G

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# Per class: Training_, PublicTest_, PrivateTest_ files (disgust rare, happy common, as in FER).
FAKE_COUNTS = {c: (24, 4, 4) for c in CLASSES} | {"disgust": (3, 1, 1), "happy": (48, 8, 8)}


def write_fake_fer2013(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, (n_train, n_public, n_private) in FAKE_COUNTS.items():
        for folder, prefix, n in (
            ("train", "Training_", n_train),
            ("test", "PublicTest_", n_public),
            ("test", "PrivateTest_", n_private),
        ):
            d = root / folder / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (48, 48), dtype=np.uint8)
                Image.fromarray(pixels, mode="L").save(d / f"{prefix}{cls}_{i:04d}.jpg")
    (root / "train" / "README.txt").write_text("not an image\n", encoding="utf-8")
    return root


@pytest.fixture
def fake_source(tmp_path: Path) -> Path:
    return write_fake_fer2013(tmp_path / "fer2013")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


# --------------------------------------------------------------------------- the subset


def test_prepare_writes_a_stratified_seeded_subset(fake_source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "subset"
    record = G.prepare(fake_source, dest, images=100, seed=3)
    files = listing(dest)
    assert record["images"] == len(files) == 100
    by_prefix = {p: [f for f in files if Path(f).name.startswith(p)] for p in G.PREFIXES}
    # 80% Training_ (in train/), 10% each test prefix (in test/), as the release lays them out.
    assert [len(by_prefix[p]) for p in G.PREFIXES] == [80, 10, 10]
    assert all(f.startswith("train/") for f in by_prefix["Training_"])
    assert all(f.startswith("test/") for f in by_prefix["PublicTest_"] + by_prefix["PrivateTest_"])
    # Stratified: each class keeps its share of the source's Training_ files (within one).
    total_train = sum(c[0] for c in FAKE_COUNTS.values())
    for cls, (n_train, _, _) in FAKE_COUNTS.items():
        got = sum(1 for f in by_prefix["Training_"] if f.split("/")[1] == cls)
        assert abs(got - 80 * n_train / total_train) < 1, cls
        assert record["per_split"]["Training_"].get(cls, 0) == got
    # The copies are the source's bytes.
    some = dest / by_prefix["PrivateTest_"][0]
    assert some.read_bytes() == (fake_source / by_prefix["PrivateTest_"][0]).read_bytes()
    assert record["bytes"] == sum((dest / f).stat().st_size for f in files)
    assert json.loads((dest / G.SUBSET_JSON).read_text())["images"] == 100
    # The adapter reads it as FER2013: val = PublicTest_, test = PrivateTest_.
    from ferlab.data.base import index_dataset

    index = index_dataset("fer2013", str(dest))
    assert {s: len(r) for s, r in index.splits.items()} == {"train": 80, "val": 10, "test": 10}


def test_prepare_is_reproducible_and_replaces_only_its_own_folder(
    fake_source: Path, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    G.prepare(fake_source, a, images=60, seed=0)
    G.prepare(fake_source, b, images=60, seed=0)
    assert listing(a) == listing(b)
    G.prepare(fake_source, b, images=60, seed=1)  # an earlier subset is replaced
    assert listing(a) != listing(b) and len(listing(b)) == 60
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a subset this script wrote"):
        G.prepare(fake_source, other, images=10, seed=0)
    assert (other / "keep.txt").exists()
    with pytest.raises(SystemExit, match="FER2013 not found"):
        G.prepare(tmp_path / "nowhere", tmp_path / "c", images=10, seed=0)
    with pytest.raises(SystemExit, match="--prepare"):
        G.read_subset(tmp_path / "nothing-here")


def test_allocate_shares_by_size_and_caps_at_what_exists() -> None:
    got = G._allocate(10, {"a": 50, "b": 30, "c": 20})
    assert got == {"a": 5, "b": 3, "c": 2}
    assert sum(G._allocate(7, {"a": 1, "b": 1, "c": 1}).values()) == 3  # only 3 exist
    assert sum(G._allocate(101, {"a": 333, "b": 333, "c": 334}).values()) == 101


# --------------------------------------------------------------------------- the timer


# --------------------------------------------------------------------------- smoke run


@pytest.mark.slow
def test_smoke_run_reports_every_figure(fake_source: Path, tmp_path: Path) -> None:
    md = tmp_path / "gpu.md"
    cmd = [
        sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--json",
        "--source", str(fake_source), "--data", str(tmp_path / "sub"),
        "--tmp-dir", str(tmp_path), "--md", str(md),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout)  # --json: the JSON object alone on stdout
    assert res["benchmark"] == "gpu" and res["smoke"] is True
    for key in ("gpu", "device", "torch", "cuda_runtime", "cudnn", "date", "command", "machine"):
        assert key in res, key
    assert res["torch"] and res["device"] in ("cpu", "cuda:0", "cuda")
    assert res["data"]["images"] == G.SMOKE_IMAGES and res["data"]["bytes"] > 0
    assert res["cache_build_s"] > 0 and res["total_s"] > 0
    assert res["config"]["workers"] == list(G.SMOKE_WORKERS)

    name, batch = G.SMOKE_MODEL
    assert list(res["models"]) == [name]
    s = res["models"][name]
    assert s["batch"] == batch and s["params"] > 1000 and s["errors"] == {}
    paths = ["ferlab", "floor", "floor_nchw", *(f"naive_w{w}" for w in G.SMOKE_WORKERS)]
    details = res["details"][name]
    for path in paths:
        ips = s[f"{path}_ips"]
        assert isinstance(ips, float) and 0 < ips < 1e6, (path, ips)
        d = details[path]
        # --smoke: a warm-up of one step (the first), then two windows of one step each (every
        # path runs all its windows: ferlab's once stopped after the first).
        assert d["steps"] == 3 and d["timed_steps"] == 2 and len(d["windows"]) == 2, path
        assert 0 < s["first_step_s"][path] < 120, path
        if res["device"] == "cpu":
            assert s["peak_gpu_mem_mb"][path] is None and d["precision"] == "32"
        else:
            assert s["peak_gpu_mem_mb"][path] > 0
    naive = {w: s[f"naive_w{w}_ips"] for w in G.SMOKE_WORKERS}
    assert s["naive_best_ips"] == max(naive.values())
    assert naive[s["naive_best_workers"]] == s["naive_best_ips"]
    ratios = s["ratios"]
    for key, (a, b) in {
        "ferlab/floor": ("ferlab_ips", "floor_ips"),
        "ferlab/floor_nchw": ("ferlab_ips", "floor_nchw_ips"),
        "ferlab/naive": ("ferlab_ips", "naive_best_ips"),
        "naive/floor": ("naive_best_ips", "floor_ips"),
    }.items():
        # The rates are reported to 0.1 img/s, the ratio from the unrounded rates (3 digits).
        low, high = (s[a] - 0.05) / (s[b] + 0.05), (s[a] + 0.05) / max(s[b] - 0.05, 1e-9)
        assert low - 1e-3 <= ratios[key] <= high + 1e-3, (key, ratios[key], s[a], s[b])
    for key, threshold in (("ferlab/floor", G.TARGET_FLOOR), ("ferlab/naive", G.TARGET_NAIVE)):
        target = res["targets"][f"{name} {key} >= {threshold}"]
        assert target == {"value": ratios[key], "met": ratios[key] >= threshold}
    table = md.read_text(encoding="utf-8")
    row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
    assert f"| {s['ferlab_ips']} |" in row and f"| {ratios['ferlab/naive']} |" in row


def test_a_smaller_batch_ends_no_window() -> None:
    # Windows of one step each after a one-step warm-up; the epoch's last batch (3 images, a new
    # shape for cuDNN's autotuner) comes while a window is under way.
    timer = C.Windows(window_s=0.0, warmup_s=0.0, warmup_steps=1, windows=3)
    feed = G.BatchFeed(timer)
    done = [feed(n) for n in (8, 8, 3, 8, 8)]
    assert done == [False, False, False, False, True]
    assert timer.timed_steps == 3 and len(timer.rates) == 3  # the 3-image batch is in none
    assert timer.steps == 4
    # Before the warm-up ends a smaller batch is only warm-up.
    cold = C.Windows(window_s=0.0, warmup_s=0.0, warmup_steps=3, windows=1)
    feed = G.BatchFeed(cold)
    assert [feed(n) for n in (8, 3, 8, 8)] == [False, False, False, True]
    assert cold.steps == 4 and cold.timed_steps == 1
