"""Shared test fixtures: real datasets beside the checkout, small torch thread counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(
    os.environ.get("FERLAB_SHARED_DATASETS", REPO.parent / "shared" / "datasets")
)


def shared_dataset(rel: str) -> Path:
    """Path of a real dataset under ../shared/datasets, or skip the test with the reason."""
    path = SHARED_DATASETS / rel
    if not path.exists():
        pytest.skip(f"real dataset {rel!r} not found at {path} (set FERLAB_SHARED_DATASETS)")
    return path


@pytest.fixture(autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(2)
    yield


@pytest.fixture(autouse=True)
def _no_kernel_probe_in_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """In-process ``fit`` calls skip the CPU kernel probe (a child process per new model and
    geometry, and on a bf16 CPU a timing): they train in fp32 with oneDNN on, as before the
    probe. Tests marked ``kernel_probe`` (and every test that starts ferlab in a subprocess)
    run the real one."""
    if request.node.get_closest_marker("kernel_probe"):
        yield
        return
    import importlib

    from ferlab.probe import CpuKernels

    fit_module = importlib.import_module("ferlab.training.fit")  # (the package exports fit())
    monkeypatch.setattr(
        fit_module,
        "cpu_kernels_for",
        lambda *a, **k: CpuKernels(reason="kernel probe off in tests"),
    )
    yield


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "cache"
    d.mkdir()
    return d
