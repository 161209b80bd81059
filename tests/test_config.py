"""The experiment file: validation with key and line, overrides, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferlab.config import (
    CONFIGS_DIR,
    ConfigError,
    apply_overrides,
    config_hash,
    load_config,
)
from ferlab.labels import UnknownLabelError, canonical_name, shared_labels


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.datasets and cfg.models


def test_default_is_the_demo() -> None:
    cfg = load_config(None)
    assert cfg.name == "default"
    assert {d.name for d in cfg.datasets} == {"synthetic"}
    assert len({d.path for d in cfg.datasets}) >= 2  # two visual domains
    assert len(cfg.models) == 2


def test_seed_gpu_matches_the_seed() -> None:
    cfg = load_config("seed_gpu")
    batch = {m.name: cfg.train_for(m).batch_size for m in cfg.models}
    assert batch == {"densenet121": 96, "resnet50": 144, "efficientnet_b0": 144}
    assert {(m.image_size, m.channels) for m in cfg.models} == {(224, 3)}
    assert {d.name for d in cfg.datasets} == {"fer2013", "rafdb", "expw"}


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text(
        "name: x\n"
        "datasets:\n"
        "  - name: synthetic\n"
        "    path: lab\n"
        "models:\n"
        "  - name: ferlab_vgg\n"
        "train:\n"
        "  epochs: 3\n"
        "  learning_rate: 0.1\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "train.learning_rate" in msg
    assert "line 9" in msg
    assert "unknown key" in msg


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text(
        "datasets:\n  - name: synthetic\n    path: lab\nmodels:\n  - name: m\ntrain:\n  epochs: many\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "train.epochs" in str(e.value) and "line 7" in str(e.value)


def test_overrides_apply_and_validate(tmp_path: Path) -> None:
    cfg = load_config(
        "default", ["train.epochs=2", "models.0.train.batch_size=16", "eval.tta.crops=5", "seed=7"]
    )
    assert cfg.train.epochs == 2
    assert cfg.train_for(cfg.models[0]).batch_size == 16
    assert cfg.train_for(cfg.models[1]).batch_size == cfg.train.batch_size
    assert cfg.eval.tta.crops == 5
    assert cfg.seed == 7
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config("default", ["train.epochs=0"])
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_config("default", ["train.epochs"])
    with pytest.raises(ConfigError, match="no list item"):
        apply_overrides({"models": []}, ["models.3.name=x"])


def test_model_train_overrides_merge() -> None:
    cfg = load_config("default", ["models.0.train={lr: 0.5, augment: {hflip: 0.0}}"])
    t = cfg.train_for(cfg.models[0])
    assert t.lr == 0.5 and t.augment.hflip == 0.0
    assert t.augment.rotate == cfg.train.augment.rotate  # untouched fields kept
    assert cfg.train_for(cfg.models[1]).lr == cfg.train.lr


def test_missing_file_lists_shipped() -> None:
    with pytest.raises(ConfigError, match="default"):
        load_config("/nonexistent/exp.yaml")


def test_config_hash_stable_and_sensitive() -> None:
    a = load_config("default")
    b = load_config("default")
    c = load_config("default", ["train.lr=0.1"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_labels_synonyms_and_errors() -> None:
    assert canonical_name("Happiness") == "happy"
    assert canonical_name("surprised") == "surprise"
    assert canonical_name("ANGER") == "angry"
    with pytest.raises(UnknownLabelError) as e:
        canonical_name("happyy", where="/data/x/happyy")
    assert "happy" in str(e.value) and "/data/x/happyy" in str(e.value)
    common, dropped = shared_labels(["angry", "happy", "contempt"], ["happy", "angry", "sad"])
    assert common == ["angry", "happy"] and dropped == ["sad", "contempt"]


def test_duplicate_dataset_names_are_an_error_naming_both(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text(
        "datasets:\n"
        "  - {name: folder, path: /data/jaffe}\n"
        "  - {name: folder, path: /data/ck}\n"
        "models:\n"
        "  - {name: ferlab_vgg}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "datasets[0] (folder: '/data/jaffe') (line 2)" in msg
    assert "datasets[1] (folder: '/data/ck')" in msg and "line 3" in msg
    assert "`label:`" in msg and "share one slot" in msg
    # Labels tell them apart.
    f.write_text(
        "datasets:\n"
        "  - {name: folder, path: /data/jaffe, label: jaffe}\n"
        "  - {name: folder, path: /data/ck, label: ck+}\n"
        "models:\n"
        "  - {name: ferlab_vgg}\n"
    )
    assert [d.display for d in load_config(f).datasets] == ["jaffe", "ck+"]


def test_duplicate_and_reserved_model_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\[0\] \(resnet18, pretrained: False\)"):
        load_config("default", ["models=[{name: resnet18}, {name: resnet18, pretrained: true}]"])
    # Names that differ only in characters a file name cannot hold would share a folder too.
    with pytest.raises(ConfigError, match="both named"):
        load_config("default", ["models.0.label='my net'", "models.1.label=my_net"])
    with pytest.raises(ConfigError, match="ensembles"):
        load_config("default", ["models.1.label=ensemble"])
    with pytest.raises(ConfigError, match="mega dataset"):
        load_config("default", ["datasets.0.label=mega"])


def test_model_train_overrides_are_validated_with_their_line(tmp_path: Path) -> None:
    f = tmp_path / "exp.yaml"
    f.write_text(
        "datasets:\n"
        "  - {name: synthetic, path: lab}\n"
        "models:\n"
        "  - name: ferlab_vgg\n"
        "    train:\n"
        "      lr: -1\n"
        "      epoks: 3\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "models.0.train.lr" in msg and "line 6" in msg
    assert "models.0.train.epoks" in msg and "line 7" in msg and "unknown key" in msg


def test_hardware_settings_live_in_runtime_and_not_in_train() -> None:
    cfg = load_config("default", ["runtime.threads=1", "runtime.accelerator=cpu"])
    assert cfg.runtime.threads == 1 and cfg.runtime.accelerator == "cpu"
    with pytest.raises(ConfigError, match=r"train\.threads.*unknown key"):
        load_config("default", ["train.threads=1"])
    assert load_config("seed_gpu").runtime.precision == "auto"


def test_batch_size_and_geometry_have_one_home_each(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.0 .*train: \{batch_size: 32\}"):
        load_config("default", ["models.0.batch_size=32"])
    with pytest.raises(ConfigError, match=r"data .*image_size belong to each model entry"):
        load_config("default", ["data.image_size=96"])
    cfg = load_config("default", ["models.1.image_size=64", "models.1.channels=3"])
    assert [(m.image_size, m.channels) for m in cfg.models] == [(48, 1), (64, 3)]


def test_mega_balance_sources_contradicting_a_models_balance_is_an_error() -> None:
    base = ["mega.enabled=true", "mega.balance_sources=true"]
    with pytest.raises(ConfigError) as e:
        load_config("default", [*base, "models.1.train={balance: weighted}"])
    msg = str(e.value)
    assert (
        "mega.balance_sources" in msg
        and "models[1] (ferlab_mini_xception) has balance: weighted" in msg
    )
    assert "models[0]" not in msg
    with pytest.raises(ConfigError, match="balance: none"):
        load_config("default", [*base, "train.balance=none"])
    assert load_config("default", base).mega.balance_sources  # oversample everywhere: fine
