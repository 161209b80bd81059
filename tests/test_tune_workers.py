"""Several ``ferlab tune`` workers on one study: exactly N trials in total, distinct trials and
run folders, a worker killed mid-trial leaves a study the next worker continues (and retries),
and a real PostgreSQL server shared by two workers.

Workers are real processes (``python -m ferlab.cli tune ...``) on tiny synthetic data.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from ferlab.config import ConfigError, load_config  # noqa: E402
from ferlab.layout import DONE, Layout  # noqa: E402
from ferlab.tuning import tune  # noqa: E402
from ferlab.tuning.study import open_storage  # noqa: E402

SMALL = "{n_train: 70, n_val: 35, n_test: 35}"
NET = "{widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}"


def _experiment(tmp_path: Path, epochs: int = 1, trials: int = 4, sampler: str = "random") -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: workers\n"
        f"output_dir: {tmp_path}\n"
        "seed: 0\n"
        f"data: {{cache_dir: {tmp_path / 'cache'}}}\n"
        f"datasets: [{{name: synthetic, path: lab, options: {SMALL}}}]\n"
        f"models: [{{name: ferlab_vgg, kwargs: {NET}}}]\n"
        f"train: {{epochs: {epochs}, batch_size: 32}}\n"
        "eval: {bootstrap: 10}\n"
        "runtime: {progress: false, threads: 1}\n"
        "tune:\n"
        f"  trials: {trials}\n"
        f"  sampler: {sampler}\n"
        "  pruner: none\n"
        "  space:\n"
        "    train.lr: {float: [1.0e-3, 1.0e-2], log: true}\n"
        "    train.augment.erasing: {float: [0.0, 0.5]}\n"
    )
    return path


def _worker(exp: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ferlab.cli", "tune", str(exp), "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _rows(out: Path) -> list[dict[str, str]]:
    with Layout(out).tune_trials.open(newline="") as f:
        return list(csv.DictReader(f))


def _journal_study(out: Path, name: str = "workers") -> optuna.Study:
    storage, _ = open_storage(None, Layout(out))  # the journal file in tune/
    return optuna.load_study(study_name=name, storage=storage)


def _check_exactly(rows: list[dict[str, str]], n: int, out: Path) -> None:
    assert [int(r["number"]) for r in rows] == list(range(n))
    assert all(r["state"] == "COMPLETE" for r in rows), rows
    params = [r["params"] for r in rows]
    assert len(set(params)) == n, params  # every trial drew its own values
    run_dirs = [r["run_dir"] for r in rows]
    assert len(set(run_dirs)) == n  # no run folder trained twice
    for d in run_dirs:
        assert (out / d / DONE).is_file()
    assert len({r["worker"] for r in rows}) == 2  # both workers ran trials


@pytest.mark.slow
def test_two_workers_on_one_journal_run_exactly_n_trials(tmp_path: Path) -> None:
    # Trials of several seconds, so both workers get some whichever imports faster.
    exp, out = _experiment(tmp_path, epochs=20, trials=6), tmp_path / "study"
    # Decode the tiny dataset once first, so both workers start training at the same moment.
    tune(load_config(exp), trials=1, out=tmp_path / "warm", console=False)
    procs = [_worker(exp, out, "--no-progress") for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    _check_exactly(_rows(out), 6, out)
    # Rerunning either worker's command finds the study finished.
    again = _worker(exp, out, "--no-progress")
    text = again.communicate(timeout=300)[0]
    assert again.returncode == 0, text
    assert "6 of 6 trials finished; nothing to do" in text
    assert len(_rows(out)) == 6


def test_trials_of_one_study_draw_per_trial_seeded_values(tmp_path: Path) -> None:
    """Two workers asking at once get trials 0 and 1, whose seeds differ (seed + number), and
    the same study run again draws the same values."""
    from ferlab.tuning.study import make_sampler, trial_seeded_sampler

    cfg = load_config(_experiment(tmp_path))
    draws = []
    for _ in range(2):
        sampler = trial_seeded_sampler(lambda seed: make_sampler(cfg.tune, seed), cfg.seed)
        study = optuna.create_study(sampler=sampler)
        draws.append([study.ask().suggest_float("x", 0.0, 1.0) for _ in range(3)])
    assert draws[0] == draws[1]  # reproducible
    assert len(set(draws[0])) == 3  # trial 0, 1, 2 differ
    plain = optuna.samplers.RandomSampler(seed=cfg.seed)
    study = optuna.create_study(sampler=plain)
    assert study.ask().suggest_float("x", 0.0, 1.0) == draws[0][0]  # trial 0: the seed itself


@pytest.mark.slow
def test_a_worker_killed_mid_trial_leaves_a_study_the_next_worker_continues(
    tmp_path: Path,
) -> None:
    exp, out = _experiment(tmp_path, epochs=30, trials=2), tmp_path / "study"
    victim = _worker(exp, out, "--no-progress")
    deadline = time.monotonic() + 300
    running = None
    while time.monotonic() < deadline and running is None:
        time.sleep(0.5)
        if victim.poll() is not None:
            pytest.fail(f"the worker ended before it could be killed:\n{victim.stdout.read()}")  # type: ignore[union-attr]
        if not Layout(out).tune_journal.is_file():
            continue
        try:
            study = _journal_study(out)
        except KeyError:
            continue
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            run_dir = t.user_attrs.get("run_dir")
            if run_dir and (out / run_dir / "history.csv").is_file():  # an epoch is done
                running = t
    assert running is not None, "no trial got to its first epoch in time"
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert (out / running.user_attrs["run_dir"] / ".lock").is_file()  # left by the dead worker

    cfg = load_config(exp, ["train.epochs=2"])  # a faster study from here on
    # The dead worker's trial is failed and retried with its parameters; it is not counted.
    result = tune(cfg, out=out, retries=1, console=False)
    rows = _rows(out)
    by_number = {int(r["number"]): r for r in rows}
    lost = by_number[running.number]
    assert lost["state"] == "FAIL" and lost["error"].startswith("lost: its worker (process")
    retry = [r for r in rows if r["retry_of"] == str(running.number)]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE"
    assert json.loads(retry[0]["params"]) == json.loads(lost["params"])
    assert result.count("COMPLETE") == 2 and len(rows) == 3
    assert not (out / retry[0]["run_dir"] / ".lock").exists()


def test_a_choice_that_makes_no_model_is_an_error_before_training(tmp_path: Path) -> None:
    exp = _experiment(tmp_path)
    text = exp.read_text() + "    models.0.name: {choice: [ferlab_vgg, ferlab_vggg]}\n"
    exp.write_text(text.replace(f"kwargs: {NET}", "kwargs: {}"))
    with pytest.raises(ConfigError, match=r"tune.space.models.0.name: the choice 'ferlab_vggg'"):
        tune(load_config(exp), out=tmp_path / "out", console=False)
    assert not (tmp_path / "out" / "runs").exists()
    # kwargs of one architecture that another one does not take
    exp.write_text(text.replace("ferlab_vggg", "ferlab_resnet"))
    with pytest.raises(ConfigError, match="the choice 'ferlab_resnet' does not make a model"):
        tune(load_config(exp), out=tmp_path / "out", console=False)


@pytest.mark.slow
def test_best_yaml_reproduces_the_best_trials_validation_score(tmp_path: Path) -> None:
    from ferlab.pipeline import run_experiment
    from ferlab.training import read_history

    exp, out = _experiment(tmp_path, trials=2), tmp_path / "study"
    result = tune(load_config(exp), out=out, console=False)
    best_row = next(r for r in result.trials if r["number"] == result.best_number)
    run = run_experiment(load_config(Layout(out).tune_best), out=out, console=False)
    # The same run key: ferlab run reuses the best trial's run folder and its weights ...
    assert run.run_dir_of("synthetic-lab", "ferlab_vgg") == out / best_row["run_dir"]
    report = (out / "report.html").read_text()
    assert 'id="tuning"' in report and "this report's plan scored it" in report
    # ... and a retrained copy (another folder) gives the same validation score.
    again = run_experiment(
        load_config(Layout(out).tune_best), out=tmp_path / "fresh", console=False
    )
    history = read_history(again.run_dir_of("synthetic-lab", "ferlab_vgg") / "history.csv")
    best = max(r["val_balanced_accuracy"] for r in history)
    assert best == pytest.approx(result.best_value, abs=1e-9)


# -- a real PostgreSQL server --------------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).is_file():
            return str(root / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1; yields its URL."""
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'ferlab[tune]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    # Not under pytest's tmp folders (mode 0700): the server may run as another user.
    root = Path(tempfile.mkdtemp(prefix="ferlab-pg-"))
    data, port = root / "data", _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o755)
        prefix = ["runuser", "-u", "postgres", "--"]
        for parent in root.parents:  # the server must reach its data folder
            if parent.stat().st_mode & 0o001 == 0 and str(parent) != "/":
                pytest.skip(f"{parent} is not searchable by the postgres user")
    subprocess.run(
        [*prefix, initdb, "-D", str(data), "-U", "ferlab", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}"
    subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://ferlab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(tmp_path: Path, postgres: str) -> None:
    exp, out = _experiment(tmp_path, epochs=20, trials=6), tmp_path / "study"
    tune(load_config(exp), trials=1, out=tmp_path / "warm", console=False)  # decode once
    procs = [_worker(exp, out, "--no-progress", "--storage", postgres) for _ in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    _check_exactly(_rows(out), 6, out)
    assert not Layout(out).tune_journal.exists()  # the study lives in the database
    study = optuna.load_study(study_name="workers", storage=postgres)
    assert len(study.trials) == 6 and study.best_value == max(t.value for t in study.trials)
