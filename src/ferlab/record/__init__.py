"""The experiment record: what this run planned (``plan.json``) and what became of it
(``status.json``).

The plan lists every (train dataset, model) pair with its run key and run folder, every
(pair, test set) evaluation with its evaluation key and folder, and the ensembles with their
members. With several training seeds (``seeds:``) every pair and ensemble is planned once per
seed, each entry carrying its ``seed``; with one seed the entries carry none and the files are
those of a single-seed run. Summary, cross-dataset matrix, ensembles and the report read
exactly these entries;
an evaluation's numbers count only when its ``metrics.json`` carries the planned key, so a
file left by an earlier plan (or by a failed pair) never shows as current. Folders on disk that
the plan does not name are listed apart (``unplanned_folders``), never read for numbers.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ferlab.layout import LOCK_NAME, METRICS, Layout, ReportInputError, read_json, write_json
from ferlab.provenance import version_changes

PLAN_FORMAT = 1


@dataclass
class PlannedEval:
    """One evaluation: a pair scored on a test set's test split."""

    test: str  # display name of the test dataset
    key: str  # the evaluation key its metrics.json must carry
    dir: str  # folder, relative to the experiment


@dataclass
class PlannedPair:
    """A model trained on a dataset (``kind="model"``) or an ensemble of a dataset's models."""

    dataset: str
    model: str
    kind: str = "model"  # model | ensemble
    run_key: str | None = None
    run_dir: str | None = None  # relative to the experiment; None for ensembles
    members: list[str] = field(default_factory=list)  # ensemble members (model names)
    evals: list[PlannedEval] = field(default_factory=list)
    # The training seed (an ensemble: its members'), recorded when the experiment trains with
    # several seeds or with one ``seeds: [k]`` other than ``seed``; None: trained with the
    # experiment's ``seed`` alone (and not written to plan.json, as before seeds existed).
    seed: int | None = None

    def eval_on(self, test: str) -> PlannedEval | None:
        return next((e for e in self.evals if e.test == test), None)

    @property
    def label(self) -> str:
        """How the log names the pair: ``lab / ferlab_vgg``, ``lab / ferlab_vgg / seed 1``."""
        label = f"{self.dataset} / {self.model}"
        return label if self.seed is None else f"{label} / seed {self.seed}"


@dataclass
class PlannedDataset:
    name: str  # display name
    adapter: str
    path: str
    use: str  # train | test (evaluation-only)
    fingerprint: str
    splits: dict[str, int]  # split -> images


@dataclass
class Plan:
    name: str
    datasets: list[PlannedDataset]
    pairs: list[PlannedPair]
    provenance: dict[str, Any]  # ferlab version and code digests of this run
    format: int = PLAN_FORMAT

    def pair(self, dataset: str, model: str, seed: int | None = None) -> PlannedPair | None:
        """The planned pair (of ``seed``; None: of the first planned seed)."""
        want = self.seeds[0] if seed is None and self.seeds else seed
        return next(
            (p for p in self.pairs if (p.dataset, p.model, p.seed) == (dataset, model, want)), None
        )

    @property
    def seeds(self) -> list[int | None]:
        """The training seeds of the plan, in order (``[None]`` for a plan of one ``seed``)."""
        return list(dict.fromkeys(p.seed for p in self.pairs))

    @property
    def multi_seed(self) -> bool:
        """Every pair is trained with several seeds (reports give mean and std across them)."""
        return len(self.seeds) > 1

    @property
    def train_datasets(self) -> list[str]:
        return list(dict.fromkeys(p.dataset for p in self.pairs))

    @property
    def test_sets(self) -> list[str]:
        """Every test set of the plan, in dataset order (training datasets' own first)."""
        used = {e.test for p in self.pairs for e in p.evals}
        order = [d.name for d in self.datasets] + self.train_datasets
        return [n for n in dict.fromkeys(order) if n in used]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for p in data["pairs"]:  # a plan of one seed is written as before seeds existed
            if p.get("seed") is None:
                p.pop("seed", None)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        pairs = [
            PlannedPair(
                **{k: v for k, v in p.items() if k != "evals"},
                evals=[PlannedEval(**e) for e in p.get("evals", [])],
            )
            for p in data["pairs"]
        ]
        return cls(
            name=str(data["name"]),
            datasets=[PlannedDataset(**d) for d in data["datasets"]],
            pairs=pairs,
            provenance=dict(data.get("provenance") or {}),
            format=int(data.get("format", PLAN_FORMAT)),
        )


def write_plan(layout: Layout, plan: Plan) -> None:
    write_json(layout.plan, plan.to_dict())


def read_plan(layout: Layout) -> Plan:
    """The recorded plan; an experiment folder without one cannot be reported on."""
    if not layout.plan.is_file():
        raise ReportInputError(
            f"{layout.plan} does not exist: this folder was not written by this version of "
            "`ferlab run` (or the run stopped before planning). Rerun `ferlab run` with the "
            f"experiment's config ({layout.config}) to record a plan and its results."
        )
    data = read_json(layout.plan)
    try:
        return Plan.from_dict(data)
    except (KeyError, TypeError) as e:
        raise ReportInputError(
            f"{layout.plan} has the wrong shape ({e}); rerun `ferlab run` to rewrite it."
        ) from e


# -- status ------------------------------------------------------------------------------------
@dataclass
class EvalStatus:
    test: str
    status: str  # computed | reused | failed
    error: str | None = None
    produced_by: dict[str, Any] = field(default_factory=dict)  # version, code, created


@dataclass
class PairStatus:
    dataset: str
    model: str
    # trained | reused | computed (ensembles) | failed | skipped (an ensemble whose member
    # failed) | pending
    status: str = "pending"
    error: str | None = None
    run_dir: str | None = None  # relative to the experiment
    produced_by: dict[str, Any] = field(default_factory=dict)  # of the weights
    evals: list[EvalStatus] = field(default_factory=list)
    seed: int | None = None  # the planned pair's seed (None: not written to status.json)

    @property
    def ok(self) -> bool:
        return self.status in ("trained", "reused", "computed")


def produced_by_text(produced: dict[str, Any] | None) -> str | None:
    """``ferlab 0.1.0 (code 1a2b3c4d), 2026-12-01T10:00:00`` for a recorded stamp, and the
    libraries it was made with where they differ from the installed ones (``with torch 2.13.0
    (now 2.14.1)``): a reused number then says that today's libraries did not make it."""
    if not produced:
        return None
    version = f"ferlab {produced.get('ferlab_version', '?')}"
    code = produced.get("code_digest")
    if code:
        version += f" (code {str(code)[:8]})"
    created = produced.get("created")
    text = f"{version}, {created}" if created else version
    changed = version_changes(produced)
    return f"{text}, with {', '.join(changed)}" if changed else text


def write_status(layout: Layout, pairs: list[PairStatus]) -> None:
    entries = [asdict(p) for p in pairs]
    for e in entries:  # a run of one seed is written as before seeds existed
        if e.get("seed") is None:
            e.pop("seed", None)
    write_json(layout.status, {"pairs": entries})


def read_status(layout: Layout) -> dict[tuple[str, str, int | None], PairStatus]:
    """(dataset, model, seed) -> status (seed None for a run of one seed); empty when the run
    has not written one yet."""
    if not layout.status.is_file():
        return {}
    data = read_json(layout.status)
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list):
        raise ReportInputError(f"{layout.status} has no 'pairs' list; expected {{'pairs': [...]}}")
    out: dict[tuple[str, str, int | None], PairStatus] = {}
    for p in pairs:
        try:
            evals = [EvalStatus(**e) for e in p.get("evals", [])]
            st = PairStatus(**{k: v for k, v in p.items() if k != "evals"}, evals=evals)
        except TypeError as e:
            raise ReportInputError(f"{layout.status}: an entry has the wrong shape ({e})") from e
        out[(st.dataset, st.model, st.seed)] = st
    return out


# -- reading results of the plan ---------------------------------------------------------------
def planned_metrics(layout: Layout, evaluation: PlannedEval) -> dict[str, Any] | None:
    """The metrics of a planned evaluation, or None when its folder holds no result with the
    planned key (not run, failed, or left by another plan)."""
    path = layout.resolve(evaluation.dir) / METRICS
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or data.get("eval_key") != evaluation.key:
        return None
    return data


def unplanned_folders(layout: Layout, plan: Plan) -> list[str]:
    """Run and evaluation folders on disk that this plan does not name (relative paths)."""
    planned = {p.run_dir for p in plan.pairs if p.run_dir}
    planned |= {e.dir for p in plan.pairs for e in p.evals}
    found = [layout.relative(d) for d in layout.run_dirs_on_disk() + layout.eval_dirs_on_disk()]
    return [d for d in found if d not in planned]


# -- one run at a time -------------------------------------------------------------------------
class ExperimentLockedError(RuntimeError):
    """Another live process is running an experiment in this folder."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _try_create(path: Path, text: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def _lock_holder(path: Path) -> dict[str, Any]:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextmanager
def hold_lock(path: Path, busy: Callable[[str], str], *, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the lock file ``path`` while the block runs.

    The file (created atomically, ``O_EXCL``) records the PID, host and start time. A lock left
    by a dead process on this host (a kill -9) is taken over. A live holder, or one on another
    host that cannot be checked, is waited for up to ``wait_s`` seconds, then an
    ``ExperimentLockedError`` whose message is ``busy(holder description)``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    text = json.dumps(me)
    deadline = time.monotonic() + wait_s
    while not _try_create(path, text):
        holder = _lock_holder(path)
        pid, host = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and host == me["host"] and not pid_alive(pid):
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        if not holder and not path.exists():
            continue  # released between our two looks
        if time.monotonic() >= deadline:
            who = f"process {pid} on {host}, started {holder.get('started', '?')}"
            raise ExperimentLockedError(busy(who))
        time.sleep(min(1.0, max(deadline - time.monotonic(), 0.01)))
    try:
        yield path
    finally:
        if _lock_holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def experiment_lock(layout: Layout) -> AbstractContextManager[Path]:
    """Hold ``<experiment>/.lock`` while the block runs; a second run stops at once."""
    path = layout.lock

    def busy(who: str) -> str:
        return (
            f"Experiment folder {layout.root} is in use by {who} (lock file {path}). Wait for "
            "it to finish, or give this run another folder with --out. If that process is "
            f"gone (a crash on another machine), delete {path}."
        )

    return hold_lock(path, busy)


def run_lock(run_dir: Path, *, wait_s: float = 24 * 3600.0) -> AbstractContextManager[Path]:
    """Hold ``<run folder>/.lock`` while one process trains it: tuning workers sharing a study
    folder lock only the run they train, and a worker that samples a run another one is
    training waits for it (then reuses it) instead of training it twice."""
    path = run_dir / LOCK_NAME

    def busy(who: str) -> str:
        return (
            f"Run folder {run_dir} is being trained by {who} (lock file {path}). If that "
            f"process is gone (a crash on another machine), delete {path}."
        )

    return hold_lock(path, busy, wait_s=wait_s)


class NotWritableError(RuntimeError):
    """An output or cache folder cannot be written (read-only, no permission, disk full)."""


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` and write a probe file in it, or say plainly why it cannot be."""
    probe = folder / f".ferlab-write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise NotWritableError(
            f"The {what} {folder} cannot be written ({reason}). Choose a folder you can write "
            "to (--out DIR for the experiment, data.cache_dir for the cache) before anything "
            "is trained."
        ) from e
