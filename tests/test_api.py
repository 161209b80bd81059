"""The public API: ``import ferlab`` names, their runnable docstring examples, the README's
five-line script."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ferlab
import ferlab.api
from conftest import REPO


def test_top_level_names() -> None:
    for name in ("run", "train", "evaluate", "load_dataset", "create_model", "list_models",
                 "load_model"):  # fmt: skip
        assert name in ferlab.__all__
        assert callable(getattr(ferlab, name)), name
        assert ">>> " in (getattr(ferlab, name).__doc__ or "") or name not in (
            "run",
            "train",
            "evaluate",
        )
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = ferlab.nope  # type: ignore[attr-defined]


def test_import_ferlab_is_light() -> None:
    code = "import sys, ferlab; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
@pytest.mark.parametrize("module", [ferlab, ferlab.api], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: object) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert "import ferlab" in block and len(block.strip().splitlines()) <= 5
    env = dict(os.environ, HOME=str(tmp_path))  # its cache goes to ~/.cache/ferlab
    out = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"accuracy \d+\.\d%", out.stdout), out.stdout
    assert (tmp_path / "runs" / "train_synthetic_lab" / "report.html").is_file()


def test_run_data_points_the_files_datasets_elsewhere(tmp_path: Path) -> None:
    from ferlab.api import with_data
    from ferlab.cli import build_parser
    from ferlab.config import ConfigError, load_config
    from ferlab.data.base import DatasetError

    cfg = load_config("fer2013_cpu", ["datasets.0.options={class_map: {contempt: neutral}}"])
    out = with_data(cfg, [f"FER2013:{tmp_path}", "folder:/c", "folder:/d"])
    assert [(d.name, d.path) for d in out.datasets] == [
        ("fer2013", str(tmp_path)),
        ("folder", "/d"),  # the second folder: spec names the entry the first one added
    ]
    assert out.datasets[0].options == cfg.datasets[0].options  # only the path moves
    assert [d.path for d in cfg.datasets] == ["../shared/datasets/fer2013"]  # a copy
    with pytest.raises(DatasetError, match="not NAME:PATH"):
        with_data(cfg, ["fer2013"])
    # The demo's synthetic-lab moved to the wild domain would share the other entry's name.
    with pytest.raises(ConfigError, match="both named 'synthetic-wild'"):
        with_data(load_config("default"), ["synthetic-lab:wild"])
    args = build_parser().parse_args(
        ["run", "fer2013_cpu", "--data", "fer2013:/x", "--data", "a:b"]
    )
    assert args.data == ["fer2013:/x", "a:b"]


def test_train_takes_typed_settings_then_overrides() -> None:
    from ferlab.api import train_config
    from ferlab.config import ConfigError

    cfg = train_config("synthetic:lab", "ferlab_vgg", epochs=3, lr=0.01, seed=5)
    assert (cfg.train.epochs, cfg.train.lr, cfg.seed) == (3, 0.01, 5)
    assert [m.name for m in cfg.models] == ["ferlab_vgg"]
    later = train_config("synthetic:lab", epochs=3, overrides=["train.epochs=4"])
    assert later.train.epochs == 4  # overrides apply last
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) epoch\b.*epochs"):
        train_config("synthetic:lab", epoch=3)
    with pytest.raises(ConfigError, match="epochs"):  # a value of the wrong type
        train_config("synthetic:lab", epochs="many")


def test_run_takes_a_config_object(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from ferlab.config import load_config
    from ferlab.pipeline import ExperimentResult

    seen = []

    def fake_run(cfg: object, **kwargs: object) -> ExperimentResult:
        seen.append(cfg)
        return ExperimentResult(exp_dir=tmp_path)

    monkeypatch.setattr(ferlab.api, "run_experiment", fake_run)
    cfg = load_config("default")
    ferlab.run(cfg, overrides=["train.epochs=1"])
    assert seen[0].train.epochs == 1 and seen[0].name == cfg.name
    assert cfg.train.epochs != 1  # the caller's object is not changed


def test_experiment_result_names_folders_and_files(tmp_path: Path) -> None:
    from ferlab.layout import WEIGHTS
    from ferlab.pipeline import ExperimentResult
    from ferlab.record import PairStatus

    one = ExperimentResult(
        exp_dir=tmp_path,
        pairs=[PairStatus("lab", "vgg", "trained", run_dir="runs/lab/vgg-1")],
    )
    assert one.run_dir == tmp_path / "runs/lab/vgg-1"
    assert one.weights == tmp_path / "runs/lab/vgg-1" / WEIGHTS
    two = ExperimentResult(
        exp_dir=tmp_path,
        pairs=[
            PairStatus("lab", "vgg", "trained", run_dir="runs/lab/vgg-1"),
            PairStatus("lab", "xc", "reused", run_dir="runs/lab/xc-2"),
            PairStatus("lab", "bad", "failed", run_dir="runs/lab/bad-3"),
        ],
    )
    with pytest.raises(ValueError, match=r"exactly one trained pair.*run_dir_of"):
        _ = two.run_dir
    assert two.run_dir_of("lab", "xc") == tmp_path / "runs/lab/xc-2"
    assert two.run_dir_of("lab", "nope") is None


def test_one_way_to_name_a_dataset_and_its_geometry(tmp_path: Path) -> None:
    from ferlab.data.base import DatasetError

    with pytest.raises(DatasetError, match="not NAME:PATH"):
        ferlab.load_dataset("synthetic")
    small = {"n_train": 14, "n_val": 7, "n_test": 7}
    data = ferlab.load_dataset(
        "synthetic:wild", image_size=16, channels=3, cache_dir=tmp_path, options=small
    )
    assert data.splits["train"].images.shape[1:] == (16, 16, 3)
    net = ferlab.create_model("ferlab_vgg", num_classes=7, channels=3, image_size=16)
    assert next(net.parameters()).shape[1] == 3
