"""Faults: kill -9 at any moment, two runs at once, folders that cannot be written, a disk
that fills up midway, output that is not a terminal, shipped files with a path to fix."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from ferlab.config import load_config
from ferlab.data.base import DatasetError
from ferlab.layout import Layout, atomic_write
from ferlab.pipeline import run_experiment
from ferlab.record import ExperimentLockedError, NotWritableError, experiment_lock

NET = "{widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}"
EXPERIMENT = f"""\
name: kill
seed: 0
datasets:
  - {{name: synthetic, path: lab, options: {{n_train: 140, n_val: 70, n_test: 70}}}}
  - {{name: synthetic, path: wild, options: {{n_train: 140, n_val: 70, n_test: 70}}}}
models:
  - {{name: ferlab_vgg, kwargs: {NET}}}
  - {{name: ferlab_vgg, label: vgg_b, kwargs: {NET}, train: {{lr: 0.001}}}}
train: {{epochs: 3, batch_size: 32}}
eval: {{bootstrap: 50}}
runtime: {{threads: 1}}
"""


def _ferlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "ferlab.cli", *args]


def _start(exp_file: Path, out: Path, cache: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        _ferlab("run", str(exp_file), "--out", str(out), "--set", f"data.cache_dir={cache}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the decode pool's workers die with it
        cwd=REPO,
    )


def _numbers(exp: Path) -> dict[str, object]:
    """Every planned result: metrics without timings, and the weights' tensors."""
    from safetensors.numpy import load_file

    layout = Layout(exp)
    plan = json.loads(layout.plan.read_text())
    out: dict[str, object] = {}
    for pair in plan["pairs"]:
        if pair["run_dir"]:
            w = load_file(str(layout.resolve(pair["run_dir"]) / "weights.safetensors"))
            out[pair["run_dir"]] = {k: v.tobytes() for k, v in w.items()}
        for e in pair["evals"]:
            m = json.loads((layout.resolve(e["dir"]) / "metrics.json").read_text())
            out[e["dir"]] = {k: m[k] for k in ("eval_key", "plain", "tta", "labels")}
    return out


def _check_whole(exp: Path) -> int:
    """Every artefact present parses: no half-written file. Returns how many were checked."""
    from safetensors import safe_open

    n = 0
    for p in exp.rglob("*"):
        if p.name.endswith(".tmp") or not p.is_file():
            continue  # a temporary file is never read; later runs remove or replace it
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".csv":
            rows = list(csv.reader(p.open(newline="")))
            assert rows and rows[0], p
        elif p.suffix == ".safetensors":
            with safe_open(str(p), framework="np") as f:
                assert list(f.keys()), p
        elif p.suffix == ".html":
            assert p.read_text().rstrip().endswith("</html>"), p
        else:
            continue
        n += 1
    return n


def _files(*roots: Path) -> dict[Path, int]:
    """Every finished file under ``roots`` with its modification time (temporary files aside).

    The run renames and removes folders while this polls (the cache's ``.tmp-*`` folder becomes
    the entry): ``os.walk`` passes over a folder gone before it is read, where ``Path.rglob``
    raised FileNotFoundError (seen once, in a fresh clone's suite)."""
    out: dict[Path, int] = {}
    for root in roots:
        for folder, _, names in os.walk(root):  # errors (a vanished folder) are skipped
            for name in names:
                if name.endswith(".tmp"):
                    continue
                p = Path(folder) / name
                try:
                    out[p] = p.stat().st_mtime_ns
                except OSError:  # replaced or removed between the listing and the stat
                    continue
    return out


def _run_until(exp_file: Path, out: Path, cache: Path, writes: int | None) -> tuple[bool, int]:
    """Run ``ferlab run`` and kill -9 it once it has written ``writes`` files (a new file or a
    rewritten one, seen by polling the folders it writes): the run's own outputs are the
    markers, so where the kill lands does not depend on the machine's speed or load. Returns
    (killed, files written); ``writes=None`` lets it finish."""
    proc = _start(exp_file, out, cache)
    seen, written = _files(out, cache), 0
    while proc.poll() is None:
        now = _files(out, cache)
        written += sum(1 for p, t in now.items() if seen.get(p) != t)
        seen = now
        if writes is not None and written >= writes:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()  # reap it, or its lock would look held by a live (zombie) process
            return True, written
        time.sleep(0.01)
    assert proc.returncode == 0, f"ferlab run exited with {proc.returncode}"
    return False, written


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(EXPERIMENT)
    ref_out, ref_cache = tmp_path / "ref", tmp_path / "ref-cache"
    _, total = _run_until(exp_file, ref_out, ref_cache, None)
    reference = _numbers(ref_out)
    assert total > 40, total  # enough writes to kill between

    out, cache = tmp_path / "killed", tmp_path / "killed-cache"
    rng = random.Random(0)
    # Each rerun resumes and is killed after a random number of its own writes, so the kills
    # march through the whole run: cache building and start-up, training, evaluation,
    # ensembles and the report.
    killed = 0
    for _ in range(10):
        stopped, _ = _run_until(exp_file, out, cache, rng.randint(1, max(2, total // 8)))
        killed += stopped
        if out.exists():
            _check_whole(out)
    assert killed >= 5, f"only {killed} of 10 runs were killed before they finished"
    _run_until(exp_file, out, cache, None)
    assert _check_whole(out) > 20
    assert _numbers(out) == reference
    assert not Layout(out).lock.exists()


def _live_holder(layout: Layout) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.lock.write_text(
        json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "now"})
    )
    return holder


def test_a_second_run_on_the_same_folder_stops_at_once(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "exp")
    holder = _live_holder(layout)
    try:
        with pytest.raises(ExperimentLockedError) as e, experiment_lock(layout):
            pass
        msg = str(e.value)
        assert str(layout.root) in msg and f"process {holder.pid}" in msg and "--out" in msg
        # Through the CLI: one line, exit code 2, before any work.
        exp = tmp_path / "exp.yaml"
        exp.write_text(EXPERIMENT)
        out = subprocess.run(
            _ferlab("run", str(exp), "--out", str(layout.root)),
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert f"is in use by process {holder.pid}" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (layout.root / "plan.json").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
    # The holder is dead now: its stale lock is taken over, and released afterwards.
    with experiment_lock(layout) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not layout.lock.exists()


@pytest.mark.slow
def test_two_processes_building_one_cache_both_finish_with_one_valid_cache(
    tmp_path: Path,
) -> None:
    code = (
        "import sys; from ferlab.data.loading import load_dataset; "
        "d = load_dataset('synthetic:wild', cache_dir=sys.argv[1], "
        "options={'n_train': 700, 'n_val': 70, 'n_test': 70}); "
        "print(d.fingerprint, sum(len(s) for s in d.splits.values()))"
    )
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(cache)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] and outs[0][1] == "840"
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()


def test_folders_that_cannot_be_written_fail_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = load_config("default", [f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(NotWritableError, match=r"experiment folder .*a-file/exp cannot be written"):
        run_experiment(cfg, out=blocker / "exp", console=False)
    cfg = load_config("default", [f"data.cache_dir={blocker / 'cache'}"])
    with pytest.raises(NotWritableError, match=r"data\.cache_dir"):
        run_experiment(cfg, out=tmp_path / "exp", console=False)
    assert not (tmp_path / "exp" / "plan.json").exists()


def test_a_write_that_fails_midway_leaves_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "metrics.json"
    atomic_write(target, '{"accuracy": 0.5}')

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, '{"accuracy": 0.9, "half": ' + "x" * 100_000)
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


def test_a_full_disk_is_named_before_any_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Path.write_bytes

    def full(self: Path, data: bytes) -> int:
        if self.name.startswith(".ferlab-write-test"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    cfg = load_config("default", [f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(NotWritableError, match="the disk is full"):
        run_experiment(cfg, out=tmp_path / "exp", console=False)


def test_output_that_is_not_a_terminal_gets_plain_lines(tmp_path: Path) -> None:
    exp = tmp_path / "exp.yaml"
    exp.write_text(EXPERIMENT.replace("epochs: 3", "epochs: 2"))
    log = tmp_path / "out.txt"
    with log.open("wb") as fh:
        code = subprocess.run(
            _ferlab("run", str(exp), "--out", str(tmp_path / "o"), "--set",
                    f"data.cache_dir={tmp_path / 'cache'}"),
            stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, timeout=600,
        ).returncode  # fmt: skip
    text = log.read_text()
    assert code == 0, text[-2000:]
    assert "\r" not in text and "it/s" not in text  # no progress-bar frames
    assert text.count("epoch 2/2:") == 4  # one plain line per epoch and pair instead
    assert len(text) < 20_000


def test_shipped_files_say_how_to_give_the_dataset_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # ../shared/datasets does not exist from here
    cfg = load_config("fer2013_cpu", [f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(DatasetError) as e:
        run_experiment(cfg, out=tmp_path / "exp", console=False)
    msg = str(e.value)
    assert "'../shared/datasets/fer2013' does not exist" in msg
    assert "--set datasets.0.path=/data/fer2013" in msg
    assert "ferlab train --data fer2013:/data/fer2013" in msg
