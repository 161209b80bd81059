"""Before and around a run: inputs that exist, folders that can be written, threads, the log
file, and the record of the config and environment the run starts from."""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from ferlab import __version__
from ferlab.config import ExperimentConfig, dump_config
from ferlab.data.base import DatasetError, dataset_traits
from ferlab.layout import Layout, write_json
from ferlab.provenance import code_digest, library_versions
from ferlab.record import check_writable

log = logging.getLogger("ferlab")


def experiment_dir(cfg: ExperimentConfig, out: str | Path | None = None) -> Path:
    """Where an experiment's files go: ``out``, or ``output_dir/name`` from the config."""
    return Path(out).expanduser() if out else Path(cfg.output_dir).expanduser() / cfg.name


def check_dataset_paths(cfg: ExperimentConfig) -> None:
    """Every dataset root exists, or an error that says how to give the path (before any work).

    The shipped experiment files name ``../shared/datasets/...``, which exists only beside
    ferlab's own repository: a user's copy lives elsewhere.
    """
    missing = [
        (i, ds)
        for i, ds in enumerate(cfg.datasets)
        if not dataset_traits(ds.name).generated and not Path(ds.path).expanduser().exists()
    ]
    if not missing:
        return
    lines = [
        f"  datasets[{i}] ({ds.name}): {ds.path!r} does not exist (from {Path.cwd()}). Point it "
        f"at your copy: --set datasets.{i}.path=/data/{ds.name}"
        for i, ds in missing
    ]
    first = missing[0][1]
    raise DatasetError(
        "Dataset folder(s) not found:\n"
        + "\n".join(lines)
        + f"\nOr train on one dataset directly: ferlab train --data {first.name}:/data/{first.name}"
    )


def check_output_folders(cfg: ExperimentConfig, layout: Layout) -> None:
    """The experiment and cache folders can be written: said before any long work."""
    check_writable(layout.root, "experiment folder")
    check_writable(Path(cfg.data.cache_dir).expanduser(), "dataset cache folder (data.cache_dir)")


def set_threads(cfg: ExperimentConfig) -> None:
    """``runtime.threads`` for the whole run, evaluation included: a CPU sum over another
    thread count differs in its last bits, and a rerun that reuses a finished training must
    evaluate exactly as the run that trained it did."""
    import torch  # lazy: torch

    from ferlab.device import cpu_threads  # lazy: imports torch

    torch.set_num_threads(cpu_threads(cfg.runtime.threads))


@contextmanager
def experiment_logging(layout: Layout, *, console: bool = True) -> Iterator[Path]:
    """Log to a timestamped file in the experiment's logs (and the console) while the block runs."""
    layout.logs_dir.mkdir(parents=True, exist_ok=True)
    path = layout.log_file(f"{datetime.now():%Y%m%d_%H%M%S}")
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(fmt)
    handlers: list[logging.Handler] = [file_handler]
    if console:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(stream)
    old_level = log.level
    log.setLevel(logging.INFO)
    for h in handlers:
        log.addHandler(h)
    try:
        yield path
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)


def environment_info() -> dict[str, Any]:
    """Versions, digests, machine and git commit of this process: ``environment.json``."""
    import torch  # lazy: torch

    from ferlab.device import describe_device  # lazy: imports torch

    commit = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        commit = out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "ferlab": __version__,
        "code_digest_train": code_digest("train"),
        "code_digest_eval": code_digest("eval"),
        "torch": torch.__version__,
        "versions": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": describe_device(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def record_start(cfg: ExperimentConfig, layout: Layout, log_path: Path) -> None:
    """Say what starts where, and keep the resolved config and the environment beside it."""
    log.info("ferlab %s: experiment %r in %s", __version__, cfg.name, layout.root)
    log.info("Log file: %s", log_path)
    dump_config(cfg, layout.config)
    write_json(layout.environment, environment_info())
