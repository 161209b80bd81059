"""``ferlab tune``: the search space is validated like the config, trials are ordinary runs
through the run cache, the study continues where it stopped, and the test split is never read.

Each study runs on tiny synthetic data (70 training images, a 10k-parameter net, 1-2 epochs).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from ferlab.cli import main  # noqa: E402
from ferlab.config import ConfigError, load_config  # noqa: E402
from ferlab.layout import Layout  # noqa: E402
from ferlab.tuning import tune  # noqa: E402

SMALL = "{n_train: 70, n_val: 35, n_test: 35}"
NET = "{widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}"
SPACE = "{train.lr: {float: [0.001, 0.01], log: true}, train.augment.erasing: {float: [0.0, 0.5]}}"


def _overrides(tmp_path: Path, tune_block: str, epochs: int = 1) -> list[str]:
    return [
        f"train.epochs={epochs}",
        "train.batch_size=32",
        "eval.bootstrap=10",
        f"datasets=[{{name: synthetic, path: lab, options: {SMALL}}}]",
        f"models=[{{name: ferlab_vgg, kwargs: {NET}}}]",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"output_dir={tmp_path}",
        "runtime.progress=false",
        f"tune={tune_block}",
    ]


def _cfg(tmp_path: Path, tune_block: str = "", epochs: int = 1, *extra: str) -> Any:
    block = tune_block or f"{{trials: 3, sampler: random, pruner: none, space: {SPACE}}}"
    return load_config("default", [*_overrides(tmp_path, block, epochs), *extra])


def _rows(exp: Path) -> list[dict[str, str]]:
    with Layout(exp).tune_trials.open(newline="") as f:
        return list(csv.DictReader(f))


# -- the space is validated like the rest of the config ------------------------------------------
@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("{train.lrr: {float: [0.1, 1]}}", "nearest valid field is train.lr"),
        ("{train.augment.erasingg: {float: [0, 1]}}", "train.augment.erasing"),
        ("{train.lr: {float: [0.1, 0.01]}}", "empty or inverted range"),
        ("{train.lr: {float: [0.0, 0.01], log: true}}", "positive low end"),
        ("{train.optimizer: {choice: [adamw, adam]}}", "the value 'adam' does not make a valid"),
        ("{train.label_smoothing: {float: [0.0, 1.5]}}", "the value 1.5 does not make a valid"),
        ("{models.x.name: {choice: [ferlab_vgg]}}", "address an entry by its index"),
        ("{train.lr: {floats: [0.1, 1]}}", "tune.space.train.lr.floats"),
        ("{train.lr: {float: [0.1, 1], choice: [1]}}", "exactly one of"),
        ("{}", "must list at least one field"),
    ],
)
def test_a_bad_space_is_a_config_error_naming_the_path(
    tmp_path: Path, space: str, expected: str
) -> None:
    with pytest.raises(ConfigError, match="tune") as e:
        _cfg(tmp_path, f"{{space: {space}}}")
    assert expected in str(e.value)


@pytest.mark.parametrize(
    "path",
    ["data.split_seed", "data.val_fraction", "data.test_fraction", "datasets.0.path",
     "datasets.0.options.split_seed"],
)  # fmt: skip
def test_a_space_over_what_decides_the_splits_is_refused_naming_the_key(
    tmp_path: Path, path: str
) -> None:
    space = (
        f"{{{path}: {{choice: [lab, wild]}}}}"
        if path.endswith("path")
        else f"{{{path}: {{choice: [1, 2]}}}}"
        if path.endswith("seed")
        else f"{{{path}: {{float: [0.1, 0.2]}}}}"
    )
    with pytest.raises(ConfigError, match="another trial's training images") as e:
        _cfg(tmp_path, f"{{space: {space}}}")
    assert f"tune.space.{path}" in str(e.value)


def _median_pruner(tmp_path: Path, *extra: str, block: str = "") -> Any:
    from ferlab.tuning.study import make_pruner, protected_epochs

    cfg = _cfg(tmp_path, block or f"{{pruner: median, space: {SPACE}}}", 6, *extra)
    train = cfg.train_for(cfg.models[0])
    return make_pruner(cfg.tune, train), protected_epochs(cfg.tune, train)


def _pruned_at(pruner: Any, finished: int, bad: float = 0.0) -> list[int]:
    """Run ``finished`` good trials (0.9 at every epoch of 6) to completion, then one bad
    trial (``bad`` at every epoch); the epochs (1-based) at which the pruner would stop it."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(finished):
        t = study.ask()
        for epoch in range(1, 7):
            t.report(0.9, step=epoch)
        study.tell(t, 0.9)
    t = study.ask()
    out = []
    for epoch in range(1, 7):
        t.report(bad, step=epoch)
        if t.should_prune():
            out.append(epoch)
    return out


def test_the_median_pruner_spares_the_warm_up_and_waits_for_enough_trials(tmp_path: Path) -> None:
    pruner, protected = _median_pruner(tmp_path, "train.warmup_epochs=2")
    assert protected == 3  # the schedule's 2 warm-up epochs, and the one after
    # A hopeless trial is judged only after the protected epochs, and from the first one on.
    assert _pruned_at(pruner, finished=5) == [4, 5, 6]
    # With fewer finished trials than pruner_startup_trials (5) there is no bar yet.
    pruner, _ = _median_pruner(tmp_path, "train.warmup_epochs=2")
    assert _pruned_at(pruner, finished=4) == []
    # A fractional warm-up rounds up; the settings override both defaults.
    _, protected = _median_pruner(tmp_path, "train.warmup_epochs=0.5")
    assert protected == 2
    block = f"{{pruner: median, pruner_warmup_epochs: 1, pruner_startup_trials: 2, space: {SPACE}}}"
    pruner, protected = _median_pruner(tmp_path, block=block)
    assert protected == 1 and _pruned_at(pruner, finished=2) == [2, 3, 4, 5, 6]


def test_bad_study_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="contradicts metric val_loss"):
        _cfg(tmp_path, f"{{metric: val_loss, direction: maximize, space: {SPACE}}}")
    with pytest.raises(ConfigError, match="sampler grid needs int ranges or choices"):
        _cfg(tmp_path, f"{{sampler: grid, space: {SPACE}}}")
    with pytest.raises(ConfigError, match=r"tune\.model: 'nope'"):
        _cfg(tmp_path, f"{{model: nope, space: {SPACE}}}")
    with pytest.raises(ConfigError, match="metric"):
        _cfg(tmp_path, f"{{metric: test_accuracy, space: {SPACE}}}")
    cfg = _cfg(tmp_path, f"{{metric: val_loss, space: {SPACE}}}")
    assert cfg.tune.direction == "minimize"
    no_tune = load_config("default", _overrides(tmp_path, "null"))
    with pytest.raises(ConfigError, match="no `tune:` section"):
        tune(no_tune, console=False)


def test_a_file_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "datasets: [{name: synthetic, path: lab}]\n"
        "models: [{name: ferlab_vgg}]\n"
        "tune:\n"
        "  space:\n"
        "    train.lr: {float: [0.001, 0.01]}\n"
        "    train.weight_decayy: {float: [0.0, 0.1]}\n"
    )
    with pytest.raises(ConfigError, match=r"line 6\): 'weight_decayy' is not a field of train"):
        load_config(path)


# -- a study ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_study_runs_n_trials_writes_its_outputs_and_continues_up_to_the_total(
    tmp_path: Path,
) -> None:
    cfg = _cfg(tmp_path)
    first = tune(cfg, trials=2, console=False)
    exp = first.exp_dir
    layout = Layout(exp)
    assert first.count("COMPLETE") == 2
    rows = _rows(exp)
    assert [r["number"] for r in rows] == ["0", "1"]
    assert all(r["state"] == "COMPLETE" for r in rows)
    for r in rows:
        assert set(json.loads(r["params"])) == {"train.lr", "train.augment.erasing"}
        assert json.loads(r["intermediate"])  # every epoch reported
        assert (exp / r["run_dir"] / "DONE").is_file()  # an ordinary run folder
    assert layout.tune_journal.is_file()
    assert layout.tune_plot("history").is_file() and layout.tune_plot("intermediate").is_file()

    best = load_config(layout.tune_best)  # a complete experiment file for ferlab run
    assert best.train.lr == pytest.approx(first.best_params["train.lr"])
    assert best.train.augment.erasing == pytest.approx(first.best_params["train.augment.erasing"])
    assert first.best_value == max(float(r["value"]) for r in rows)

    from ferlab.reporting.tuning import tuning_section

    study = json.loads(layout.tune_study.read_text())
    assert study["best"]["number"] == first.best_number
    assert study["best"]["run_dir"] == rows[first.best_number]["run_dir"]
    section = tuning_section(layout, planned_run_dirs=set())
    assert section is not None and section["counts"]["COMPLETE"] == 2
    assert section["best"]["number"] == first.best_number and not section["best"]["in_plan"]
    assert section["trials"][0]["number"] == str(first.best_number)  # best first
    assert set(section["plots"]) >= {"history", "intermediate"}
    in_plan = tuning_section(layout, planned_run_dirs={study["best"]["run_dir"]})
    assert in_plan is not None and in_plan["best"]["in_plan"]

    second = tune(cfg, console=False)  # tune.trials is 3: one more
    assert len(second.trials) == 3
    third = tune(cfg, console=False)  # already 3: nothing runs
    assert len(third.trials) == 3
    assert len(_rows(exp)) == 3
    assert not (exp / "eval").exists()  # tuning never evaluates


@pytest.mark.slow
def test_the_test_split_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ferlab.evaluation as evaluation
    import ferlab.service.store as store

    class Untouchable:
        """Stands in for the test images: any read fails the test."""

        dtype = np.dtype(np.uint8)

        def __init__(self, n: int) -> None:
            self.shape = (n, 48, 48, 1)

        def __len__(self) -> int:
            return self.shape[0]

        def __getitem__(self, item: Any) -> Any:
            raise AssertionError("the test split was read while tuning")

        def __array__(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the test split was read while tuning")

    real_get = store.DataStore.get

    def guarded_get(self: Any, ds: Any, size: int, channels: int) -> Any:
        data = real_get(self, ds, size, channels)
        test = data.splits["test"]
        if not isinstance(test.images, Untouchable):
            data.splits["test"] = dataclasses.replace(test, images=Untouchable(len(test)))
        return data

    def no_evaluation(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tuning evaluated a model")

    monkeypatch.setattr(store.DataStore, "get", guarded_get)
    monkeypatch.setattr(evaluation, "evaluate", no_evaluation)
    result = tune(_cfg(tmp_path), trials=2, console=False)
    assert result.count("COMPLETE") == 2, result.trials
    assert not (result.exp_dir / "eval").exists()


@pytest.mark.slow
def test_a_pruner_that_prunes_records_pruned_trials(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "", 2)
    # balanced accuracy is never above 1.1: every trial is pruned at its first report
    result = tune(
        cfg, trials=2, console=False, pruner=optuna.pruners.ThresholdPruner(upper=None, lower=1.1)
    )
    rows = _rows(result.exp_dir)
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"]
    for r in rows:
        assert list(json.loads(r["intermediate"])) == ["1"]  # stopped after epoch 1 of 2
        assert not (result.exp_dir / r["run_dir"] / "DONE").exists()
    assert result.best_yaml is None and not Layout(result.exp_dir).tune_best.exists()
    assert Layout(result.exp_dir).tune_plot("intermediate").is_file()


@pytest.mark.slow
def test_sqlite_storage_a_failed_trial_and_a_reused_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ferlab.training as training

    real_fit = training.fit
    calls = {"n": 0}

    def flaky_fit(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of memory (simulated)")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", flaky_fit)
    cfg = _cfg(tmp_path, "{trials: 3, sampler: random, space: {train.lr: {choice: [0.002]}}}")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = tune(cfg, storage=url, study="s1", console=False)
    rows = _rows(result.exp_dir)
    assert [r["state"] for r in rows] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert "simulated" in rows[0]["error"]
    assert rows[1]["run_dir"] == rows[2]["run_dir"]  # one parameter value: one run
    assert [rows[1]["reused"], rows[2]["reused"]] == ["False", "True"]
    assert calls["n"] == 2  # the third trial returned from the run cache
    assert (tmp_path / "study.db").is_file()
    assert not Layout(result.exp_dir).tune_journal.exists()

    # The same study with another metric is refused before any training.
    other = _cfg(tmp_path, "{metric: val_loss, space: {train.lr: {choice: [0.002]}}}")
    with pytest.raises(ConfigError, match="already exists with metric val_balanced_accuracy"):
        tune(other, storage=url, study="s1", console=False)


def test_an_unreachable_storage_is_an_error_before_training(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ConfigError, match="cannot open the study storage"):
        tune(cfg, storage="nosuchdialect://nowhere/db", console=False)


def test_an_unwritable_folder_is_an_error_before_training(tmp_path: Path) -> None:
    from ferlab.record import NotWritableError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(NotWritableError, match="experiment folder"):
        tune(_cfg(tmp_path), out=blocker / "exp", console=False)
    assert not list(tmp_path.glob("**/journal.log"))


# -- the command --------------------------------------------------------------------------------
def test_cli_tune_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["tune", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--trials" in out and "--storage" in out and "--timeout" in out


@pytest.mark.slow
def test_cli_tune_runs_a_tiny_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exp = tmp_path / "tiny.yaml"
    exp.write_text(
        "name: tiny\n"
        f"output_dir: {tmp_path}\n"
        f"data: {{cache_dir: {tmp_path / 'cache'}}}\n"
        f"datasets: [{{name: synthetic, path: lab, options: {SMALL}}}]\n"
        f"models: [{{name: ferlab_vgg, kwargs: {NET}}}]\n"
        "train: {epochs: 1, batch_size: 32}\n"
        "tune:\n"
        "  trials: 5\n"
        "  space:\n"
        "    train.lr: {float: [1.0e-3, 1.0e-2], log: true}\n"
    )
    out_dir = tmp_path / "out"
    code = main(["tune", str(exp), "--trials", "2", "--out", str(out_dir), "--no-progress"])
    assert code == 0
    assert "2 complete" in capsys.readouterr().out
    assert len(_rows(out_dir)) == 2
    assert load_config(Layout(out_dir).tune_best).name == "tiny"
    assert main(["tune", str(tmp_path / "missing.yaml")]) == 2


def test_ferlab_tune_is_the_function_after_the_cli_imported_its_module() -> None:
    import ferlab
    import ferlab.cli  # imports ferlab.tuning

    assert callable(ferlab.tune) and ferlab.tune is tune
