"""Dataset adapters on tiny fake files written in each dataset's exact published layout.

The first tests run over the adapter registry (``list_datasets()``) with the fake-data writers
of ``adapter_fakes``: indexing, loading end to end, missing roots, bad files and unknown
options. The rest check what only one adapter does (FER+ majority votes, RAF-DB's label
numbers, ExpW's boxes, FER2013's CSV rows, ...).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapter_fakes import (
    FAKES,
    FERPLUS_ROWS,
    FakeData,
    fer_faces,
    write_affectnet_set,
    write_fer_csv,
    write_fer_folders,
    write_ferplus,
    write_image,
    write_litter,
    write_origin,
    write_rafdb_basic,
    write_rafdb_folders,
)
from ferlab.data.adapters.affectnet import affectnet
from ferlab.data.adapters.expw import clip_box, enlarge_box, expw
from ferlab.data.adapters.fer2013 import fer2013, pixel_problem
from ferlab.data.adapters.ferplus import ferplus, majority
from ferlab.data.adapters.folder import folder
from ferlab.data.adapters.rafdb import rafdb
from ferlab.data.adapters.utils import seeded_split
from ferlab.data.base import (
    DatasetError,
    DatasetIndex,
    Record,
    get_adapter,
    index_dataset,
    list_datasets,
    relative_key,
)
from ferlab.data.loading import load_dataset
from ferlab.labels import CANONICAL, EMOTIONS, INDEX


# ---------------------------------------------------------------------------- helpers
def per_class(index: DatasetIndex, split: str | None = None) -> dict[str, int]:
    """Records per canonical class in ``split``, or in all splits together."""
    records = all_records(index) if split is None else index.splits[split]
    return dict(Counter(CANONICAL[r.label] for r in records))


def sizes(index: DatasetIndex) -> dict[str, int]:
    return {split: len(records) for split, records in index.splits.items()}


def all_records(index: DatasetIndex) -> list[Record]:
    return [r for records in index.splits.values() for r in records]


def assignment(index: DatasetIndex) -> dict[str, str]:
    """Record key -> split; fails when a key is in two splits."""
    out: dict[str, str] = {}
    for split, records in index.splits.items():
        for r in records:
            assert r.key not in out, f"{r.key} is in {out[r.key]} and {split}"
            out[r.key] = split
    return out


def write_fake(name: str, folder: Path) -> FakeData:
    assert name in FAKES, (
        f"adapter {name!r} has no fake-data writer; add one to tests/adapter_fakes.py"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return FAKES[name](folder)


def skip_without_files(fake: FakeData, name: str) -> Path:
    if fake.corrupt is None:
        pytest.skip(f"{name} has no files (its images are drawn)")
    return fake.corrupt


# ---------------------------------------------------------------------------- every adapter
@pytest.mark.parametrize("name", list_datasets())
def test_every_registered_adapter_has_a_fake_data_writer(name: str) -> None:
    assert name in FAKES, (
        f"adapter {name!r} is registered but has no fake-data writer: add one to "
        f"tests/adapter_fakes.py with @fake_data({name!r}) so the generic tests cover it"
    )


@pytest.mark.parametrize("name", sorted(FAKES))
def test_every_fake_data_writer_names_a_registered_adapter(name: str) -> None:
    assert name in list_datasets(), (
        f"tests/adapter_fakes.py has a fake-data writer for {name!r}, which is not a "
        f"registered adapter (registered: {', '.join(list_datasets())})"
    )


@pytest.mark.parametrize("name", list_datasets())
def test_fake_data_is_indexed_as_written(name: str, tmp_path: Path) -> None:
    fake = write_fake(name, tmp_path)
    index = index_dataset(name, fake.root, **fake.options)
    assert index.name == name
    assert index.labels == fake.labels
    assert tuple(index.splits) == fake.splits
    assert index.color is fake.color
    assert not index.bad_files
    if fake.counts is not None:
        assert sizes(index) == fake.counts
    records = all_records(index)
    assert len(records) == fake.total
    assert per_class(index) == fake.classes
    assert all(
        isinstance(r.label, int)
        and 0 <= r.label < len(CANONICAL)
        and CANONICAL[r.label] in index.labels
        for r in records
    )
    keys = assignment(index)  # unique keys: splits are disjoint
    assert len(keys) == fake.total  # and together hold every record
    if fake.corrupt is not None:
        assert all(Path(r.path).is_relative_to(fake.root) for r in records)
    assert assignment(index_dataset(name, fake.root, **fake.options)) == keys  # deterministic


@pytest.mark.parametrize("name", list_datasets())
def test_fake_data_loads_end_to_end(name: str, tmp_path: Path, cache_dir: Path) -> None:
    fake = write_fake(name, tmp_path / "data")
    index = index_dataset(name, fake.root, **fake.options)
    loaded = load_dataset(
        f"{name}:{fake.root}", image_size=48, channels=1, cache_dir=cache_dir, options=fake.options
    )
    assert list(loaded.splits) == ["train", "val", "test"]
    assert loaded.labels == fake.labels and not loaded.bad_files
    for split in loaded.splits.values():
        assert split.images.dtype == np.uint8
        assert split.images.shape == (len(split), 48, 48, 1)
        assert split.labels.shape == (len(split),) and len(split.keys) == len(split)
    label_of = {r.key: r.label for r in all_records(index)}
    got = {
        key: int(label)
        for split in loaded.splits.values()
        for key, label in zip(split.keys, split.labels.tolist(), strict=True)
    }
    assert sum(len(s) for s in loaded.splits.values()) == len(got) == fake.total
    assert got == label_of
    for split, records in index.splits.items():  # given val/test pass through the loader as is
        if split != "train" and records:
            assert loaded.splits[split].keys == [r.key for r in records]


@pytest.mark.parametrize("name", list_datasets())
def test_missing_root_is_an_error_naming_it(name: str, tmp_path: Path, cache_dir: Path) -> None:
    skip_without_files(write_fake(name, tmp_path / "data"), name)
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        get_adapter(name)(missing)
    with pytest.raises(DatasetError, match=re.escape(str(missing))):
        load_dataset(f"{name}:{missing}", cache_dir=cache_dir)


@pytest.mark.parametrize("damage", ["zero-byte", "not an image"])
@pytest.mark.parametrize("name", list_datasets())
def test_damaged_image_is_a_bad_file_named_by_its_path(
    name: str, damage: str, tmp_path: Path
) -> None:
    fake = write_fake(name, tmp_path / "data")
    corrupt = skip_without_files(fake, name)
    corrupt.write_bytes(b"" if damage == "zero-byte" else b"these bytes are not an image\n" * 8)
    with pytest.raises(DatasetError, match=re.escape(str(corrupt))):
        load_dataset(
            f"{name}:{fake.root}",
            cache_dir=tmp_path / "error",
            on_bad_file="error",
            options=fake.options,
        )
    assert not list((tmp_path / "error").glob("*/meta.json"))  # nothing cached

    loaded = load_dataset(
        f"{name}:{fake.root}", cache_dir=tmp_path / "skip", on_bad_file="skip", options=fake.options
    )
    assert len(loaded.bad_files) == 1, loaded.bad_files
    bad = loaded.bad_files[0]
    assert str(corrupt) in f"{bad.path} {bad.reason}"
    if damage == "zero-byte":  # found by the adapter (zero-byte) or the decoder (empty)
        assert "empty" in bad.reason
    keys = [k for split in loaded.splits.values() for k in split.keys]
    assert len(keys) == fake.total - 1
    assert not [k for k in keys if k == str(corrupt) or k.startswith(f"{corrupt}#")]


@pytest.mark.parametrize("name", list_datasets())
def test_unknown_option_is_an_error_naming_it(name: str, tmp_path: Path) -> None:
    fake = write_fake(name, tmp_path)
    with pytest.raises(DatasetError, match=r"Unknown option.*colour_mode.*Accepted options: "):
        index_dataset(name, fake.root, **fake.options, colour_mode=True)


# Each adapter's options: exactly those it uses (the split settings only where it splits).
ACCEPTED = {
    "affectnet": "classes",
    "expw": "class_map, margin, split_seed, test_fraction, val_fraction",
    "fer2013": "class_map, layout, split_by_prefix",
    "ferplus": "none",
    "folder": "class_map, split_seed, test_fraction, val_fraction",
    "rafdb": "class_map, images",
    "synthetic": "classes, n_test, n_train, n_val, seed",
}
FORMERLY_COMMON = ("class_map", "split_seed", "val_fraction", "test_fraction", "on_bad_file")


@pytest.mark.parametrize("name", list_datasets())
def test_an_option_the_adapter_does_not_use_is_an_error_listing_its_options(
    name: str, tmp_path: Path
) -> None:
    fake = write_fake(name, tmp_path)
    assert name in ACCEPTED, f"add {name!r}'s accepted options to ACCEPTED"
    unused = [o for o in FORMERLY_COMMON if o not in ACCEPTED[name].split(", ")]
    assert unused  # on_bad_file is no adapter's option
    for option in unused:
        with pytest.raises(DatasetError) as e:
            index_dataset(name, fake.root, **fake.options, **{option: 1})
        assert f"Unknown option(s) {option!r} for dataset {name!r}" in str(e.value)
        assert f"Accepted options: {ACCEPTED[name]}." in str(e.value)


@pytest.mark.parametrize("option", ["split_seed", "val_fraction", "test_fraction"])
@pytest.mark.parametrize("name", list_datasets())
def test_split_settings_among_a_datasets_options_are_refused(
    name: str, option: str, tmp_path: Path, cache_dir: Path
) -> None:
    fake = write_fake(name, tmp_path)
    with pytest.raises(DatasetError) as e:
        load_dataset(
            f"{name}:{fake.root}", cache_dir=cache_dir, options={**fake.options, option: 0.2}
        )
    msg = str(e.value)
    assert f"{option!r} of dataset {name!r} are not accepted" in msg
    assert "data.split_seed, data.val_fraction, data.test_fraction" in msg
    assert not list(cache_dir.iterdir())  # refused before anything was decoded


@pytest.mark.parametrize("name", ["folder", "expw"])
def test_adapters_that_split_use_the_loaders_split_settings(
    name: str, tmp_path: Path, cache_dir: Path
) -> None:
    fake = write_fake(name, tmp_path)
    settings = {"split_seed": 5, "val_fraction": 0.2, "test_fraction": 0.3}
    loaded = load_dataset(f"{name}:{fake.root}", image_size=8, cache_dir=cache_dir, **settings)
    direct = index_dataset(name, fake.root, **settings)
    assert {s: a.keys for s, a in loaded.splits.items()} == {
        s: [r.key for r in recs] for s, recs in direct.splits.items()
    }
    assert assignment(index_dataset(name, fake.root)) != assignment(direct)  # settings matter
    assert "seed 5" in loaded.protocol and "30% test" in loaded.protocol
    assert loaded.spec["split_seed"] == 5 and loaded.spec["options"] == {}
    other = load_dataset(
        f"{name}:{fake.root}", image_size=8, cache_dir=cache_dir, **{**settings, "split_seed": 6}
    )
    assert other.fingerprint != loaded.fingerprint


@pytest.mark.parametrize(
    ("name", "options", "layout"),
    [
        ("fer2013", {"class_map": {"x": "angry"}}, "the CSV release"),
        ("fer2013", {"split_by_prefix": False}, "the CSV release"),
        ("rafdb", {"class_map": {"x": "angry"}}, "the basic release"),
        ("rafdb", {"images": "original"}, "the DATASET/train/, DATASET/test/ layout"),
        ("expw", {"class_map": {"x": "angry"}}, "label.lst"),
        ("expw", {"margin": 0.2}, "the cropped faces of Expw-F/"),
    ],
)
def test_an_option_for_another_layout_is_an_error(
    name: str, options: dict, layout: str, tmp_path: Path
) -> None:
    root = tmp_path / name
    if name == "fer2013":
        write_fer_csv(root / "fer2013.csv", fer_faces(), icml=False)
    elif name == "rafdb" and "class_map" in options:
        write_image(root / "Image" / "aligned" / "train_00001_aligned.jpg", mode="RGB")
        write_image(root / "Image" / "aligned" / "test_00001_aligned.jpg", mode="RGB")
        (root / "EmoLabel").mkdir()
        (root / "EmoLabel" / "list_patition_label.txt").write_text(
            "train_00001.jpg 1\ntest_00001.jpg 2\n"
        )
    elif name == "rafdb":
        write_rafdb_folders(root, {"train": 1, "test": 1})
    elif "class_map" in options:
        write_origin(root, ["a.jpg 0 0 0 20 20 1.0 5"], {"a.jpg": (40, 40)})
    else:
        write_image(root / "Expw-F" / "happy" / "a.jpg", mode="RGB")
    (option,) = options
    with pytest.raises(
        DatasetError,
        match=rf"Option\(s\) '{option}' of dataset '{name}' do nothing for {re.escape(layout)}",
    ):
        index_dataset(name, str(root), **options)


@pytest.mark.parametrize("name", list_datasets())
def test_litter_is_ignored_and_counted_by_every_adapter(
    name: str, tmp_path: Path, cache_dir: Path
) -> None:
    clean = write_fake(name, tmp_path / "clean")
    skip_without_files(clean, name)
    dirty = write_fake(name, tmp_path / "dirty")
    assert dirty.corrupt is not None
    expected: Counter[str] = Counter()
    for where in (Path(dirty.root), dirty.corrupt.parent):  # the root and an image folder
        expected.update(write_litter(where))
    index = index_dataset(name, dirty.root, **dirty.options)
    assert index.ignored == dict(expected)
    assert not index.bad_files
    assert not index_dataset(name, clean.root, **clean.options).ignored

    def relative(ix: DatasetIndex, root: str) -> dict[str, str]:
        return {relative_key(k, root): s for k, s in assignment(ix).items()}

    before = index_dataset(name, clean.root, **clean.options)
    assert relative(index, dirty.root) == relative(before, clean.root)  # nothing more, nothing less
    loaded = load_dataset(
        f"{name}:{dirty.root}", image_size=8, cache_dir=cache_dir, options=dirty.options
    )
    assert loaded.ignored == index.ignored and not loaded.bad_files
    assert sum(len(s) for s in loaded.splits.values()) == dirty.total


# ---------------------------------------------------------------------------- fer2013
def test_fer2013_folders_split_test_by_prefix(tmp_path: Path) -> None:
    write_fer_folders(tmp_path, fer_faces())
    index = fer2013(tmp_path)
    assert sizes(index) == {"train": 5, "val": 3, "test": 3}
    assert per_class(index, "train") == {"angry": 3, "happy": 2}
    assert per_class(index, "val") == {"angry": 2, "happy": 1}
    assert per_class(index, "test") == {"angry": 1, "happy": 2}
    assert all("PublicTest_" in r.path for r in index.splits["val"])
    assert all("PrivateTest_" in r.path for r in index.splits["test"])
    assert "PublicTest" in index.protocol and index.labels == list(EMOTIONS)
    assert not index.color and not index.bad_files


def test_fer2013_split_by_prefix_false_keeps_all_of_test(tmp_path: Path) -> None:
    write_fer_folders(tmp_path, fer_faces())
    index = fer2013(tmp_path, split_by_prefix=False)
    assert sizes(index) == {"train": 5, "test": 6}
    assert "loader" in index.protocol


def test_fer2013_folders_without_prefixes_leave_val_to_the_loader(tmp_path: Path) -> None:
    write_fer_folders(tmp_path, fer_faces(), prefixes=False)
    index = fer2013(tmp_path)
    assert sizes(index) == {"train": 5, "test": 6}
    assert "val" not in index.splits and "without" in index.protocol


def test_fer2013_one_unprefixed_test_file_is_an_error_naming_it(tmp_path: Path) -> None:
    write_fer_folders(tmp_path, fer_faces())
    write_image(tmp_path / "test" / "happy" / "IMG_0042.png")
    with pytest.raises(DatasetError) as e:
        fer2013(tmp_path)
    msg = str(e.value)
    assert "1 file(s) have neither prefix: 'happy/IMG_0042.png'." in msg
    assert "Rename them" in msg and "split_by_prefix: false" in msg
    whole = fer2013(tmp_path, split_by_prefix=False)  # the named way out
    assert sizes(whole) == {"train": 5, "test": 7}


def test_fer2013_unprefixed_files_are_named_up_to_five(tmp_path: Path) -> None:
    write_fer_folders(tmp_path, fer_faces())
    for i in range(7):
        write_image(tmp_path / "test" / "angry" / f"x{i}.png")
    with pytest.raises(DatasetError) as e:
        fer2013(tmp_path)
    msg = str(e.value)
    assert "7 file(s) have neither prefix: " in msg and "and 2 more" in msg
    assert [f"'angry/x{i}.png'" in msg for i in range(7)] == [True] * 5 + [False] * 2


def test_fer2013_listing_is_sorted_and_deterministic(tmp_path: Path) -> None:
    write_fer_folders(tmp_path, fer_faces())
    first, second = fer2013(tmp_path), fer2013(tmp_path)
    paths = [r.path for r in first.splits["train"]]
    assert paths == [r.path for r in second.splits["train"]]
    angry = [p for p in paths if "/angry/" in p]
    assert angry == sorted(angry)


def test_fer2013_folder_synonyms_and_class_map(tmp_path: Path) -> None:
    write_fer_folders(tmp_path / "a", fer_faces(), folder_names={"angry": "Anger", "happy": "joy"})
    assert per_class(fer2013(tmp_path / "a"), "train") == {"angry": 3, "happy": 2}
    write_fer_folders(tmp_path / "b", fer_faces(), folder_names={"angry": "ang", "happy": "hap"})
    with pytest.raises(DatasetError, match=r"'ang'.*Accepted names.*class_map"):
        fer2013(tmp_path / "b")
    index = fer2013(tmp_path / "b", class_map={"ang": "angry", "hap": "happiness"})
    assert per_class(index, "val") == {"angry": 2, "happy": 1}


def test_fer2013_missing_split_folder(tmp_path: Path) -> None:
    faces = [f for f in fer_faces() if f[0] == "train"]
    write_fer_folders(tmp_path, faces)
    with pytest.raises(DatasetError, match=r"no test/ folder"):
        fer2013(tmp_path)


@pytest.mark.parametrize("icml", [False, True])
def test_fer2013_csv_gives_the_folder_splits_and_labels(tmp_path: Path, icml: bool) -> None:
    faces = fer_faces()
    write_fer_folders(tmp_path / "folders", faces)
    name = "icml_face_data.csv" if icml else "fer2013.csv"
    write_fer_csv(tmp_path / "csv" / name, faces, icml=icml)
    from_folders = fer2013(tmp_path / "folders")
    from_dir = fer2013(tmp_path / "csv")  # the CSV is found under the root
    from_file = fer2013(tmp_path / "csv" / name)  # or the root is the CSV itself
    assert sizes(from_dir) == sizes(from_file) == sizes(from_folders)
    for split in ("train", "val", "test"):

        def content(records, *, from_csv: bool):
            out = []
            for r in records:
                if from_csv:
                    pixels = np.array(r.pixels.split(), dtype=np.uint8)
                else:
                    pixels = np.asarray(Image.open(r.path)).ravel()
                out.append((r.label, pixels.tobytes()))
            return sorted(out)

        expected = content(from_folders.splits[split], from_csv=False)
        assert content(from_dir.splits[split], from_csv=True) == expected
    rows = [r.row for r in from_dir.splits["train"]]
    assert rows == [0, 1, 2, 3, 4] and all(r.path.endswith(name) for r in from_dir.splits["val"])
    assert "Usage" in from_dir.protocol and not from_dir.bad_files


def test_fer2013_csv_bad_rows_are_listed_with_their_row(tmp_path: Path) -> None:
    good = " ".join(["7"] * 2304)
    rows = [
        ["0", good, "Training"],
        ["1", " ".join(["7"] * 2303), "Training"],  # 2303 values
        ["7", good, "Training"],  # label out of range
        ["x", good, "PublicTest"],  # label not an integer
        ["2", good.replace("7", "300", 1), "PublicTest"],  # value over 255
        ["2", good.replace("7", "-1", 1), "PublicTest"],  # negative value
        ["3", good, "Validation"],  # unknown Usage
        ["3", good],  # missing field
        ["4", good, "PrivateTest"],
    ]
    path = tmp_path / "fer2013.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)
    index = fer2013(path)
    assert sizes(index) == {"train": 1, "val": 0, "test": 1}
    reasons = {b.path.rsplit("#", 1)[1]: b.reason for b in index.bad_files}
    assert sorted(reasons) == [f"row{i}" for i in range(1, 8)]
    assert "2303 pixel values" in reasons["row1"] and "line 3" in reasons["row1"]
    assert "emotion '7'" in reasons["row2"]
    assert "emotion 'x'" in reasons["row3"]
    assert "300" in reasons["row4"]
    assert "'-'" in reasons["row5"]
    assert "Validation" in reasons["row6"]
    assert "2 fields" in reasons["row7"]
    assert index.splits["test"][0].row == 8


@pytest.mark.parametrize(
    ("pixels", "problem"),
    [
        (" ".join(["255"] * 2304), None),
        (" ".join(["0"] * 2303 + ["256"]), "256"),
        (" ".join(["1000"] + ["0"] * 2303), "1000"),
        (" ".join(["12"] * 2305), "2305 pixel values"),
        ("", "0 pixel values"),
        (" ".join(["1.5"] + ["0"] * 2303), "'.'"),
    ],
)
def test_pixel_problem(pixels: str, problem: str | None) -> None:
    found = pixel_problem(pixels)
    assert found is None if problem is None else problem in (found or "")


def test_fer2013_csv_without_needed_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("emotion,pixels\n0," + " ".join(["0"] * 2304) + "\n")
    with pytest.raises(DatasetError, match=r"train.csv.*lacks the column\(s\) usage"):
        fer2013(tmp_path)


def test_fer2013_root_without_any_layout(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match=r"neither train/ and test/"):
        fer2013(tmp_path)


# ---------------------------------------------------------------------------- folder trees
def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    write_fer_folders(tmp_path, fer_faces())
    (tmp_path / "train" / "sad").mkdir()
    (tmp_path / "train" / "sad" / "readme.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"sad'? holds no images"):
        fer2013(tmp_path)


def test_folder_tree_without_splits_is_split_by_seed(tmp_path: Path) -> None:
    # Seeded splits hold their fractions only approximately: check membership, not sizes.
    for cls, n in (("happy", 40), ("Sadness", 20)):
        for i in range(n):
            write_image(tmp_path / cls / f"{i:03d}.JPG", mode="RGB", value=i)
    (tmp_path / "happy" / "Thumbs.db").write_bytes(b"x")  # not an image: ignored
    (tmp_path / ".hidden").mkdir()
    index = folder(tmp_path)
    assert list(index.splits) == ["train", "val", "test"]
    assert per_class(index) == {"happy": 40, "sad": 20}
    assert len(index.splits["train"]) > 30  # 80% of 60 expected: most records train
    assert index.labels == ["happy", "sad"] and index.color
    split_of = assignment(index)
    assert len(split_of) == 60
    assert assignment(folder(tmp_path)) == split_of
    assert assignment(folder(tmp_path, split_seed=1)) != split_of
    assert "seed 0" in index.protocol and "80% train" in index.protocol


def test_folder_with_split_folders_and_extensions(tmp_path: Path) -> None:
    exts = [".jpg", ".jpeg", ".PNG", ".bmp", ".gif", ".tif", ".TIFF", ".webp"]
    for split in ("train", "Valid", "test"):
        for i, ext in enumerate(exts):
            write_image(tmp_path / split / "surprised" / f"{i}{ext}")
        write_image(tmp_path / split / "contemptuous" / "a.png")
    index = folder(tmp_path)
    assert sizes(index) == {"train": 9, "val": 9, "test": 9}
    assert index.labels == ["surprise", "contempt"] and not index.color
    assert index.protocol.startswith("Split folders train, val, test as given")


def test_folder_with_train_and_test_leaves_val_to_the_loader(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write_image(tmp_path / split / "fear" / "a.png")
    index = folder(tmp_path)
    assert set(index.splits) == {"train", "test"} and "loader" in index.protocol


def test_folder_with_only_train_carves_val_and_test(tmp_path: Path) -> None:
    for i in range(10):
        write_image(tmp_path / "train" / "fear" / f"{i}.png")
    index = folder(tmp_path)
    assert sorted(index.splits) == ["test", "train", "val"]
    assert per_class(index) == {"fear": 10} and len(assignment(index)) == 10
    assert "carved from train" in index.protocol


def test_folder_errors(tmp_path: Path) -> None:
    write_image(tmp_path / "mixed" / "train" / "fear" / "a.png")
    write_image(tmp_path / "mixed" / "happy" / "a.png")
    with pytest.raises(DatasetError, match="mixes split folders"):
        folder(tmp_path / "mixed")
    write_image(tmp_path / "unknown" / "grumpy" / "a.png")
    with pytest.raises(DatasetError, match=r"'grumpy'.*Accepted names: angry, disgust"):
        folder(tmp_path / "unknown")
    mapped = folder(tmp_path / "unknown", class_map={"Grumpy": "angry"})
    assert per_class(mapped) == {"angry": 1}
    with pytest.raises(DatasetError, match="class_map"):
        folder(tmp_path / "unknown", class_map={"grumpy": "cranky"})
    (tmp_path / "flat").mkdir()
    write_image(tmp_path / "flat" / "a.png")
    with pytest.raises(DatasetError, match="has no class folders"):
        folder(tmp_path / "flat")


def test_folder_class_map_case_insensitive(tmp_path: Path) -> None:
    for i in range(10):
        write_image(tmp_path / "Grumpy" / f"{i}.png")
    index = folder(tmp_path, class_map={"grumpy": "anger"})
    assert index.labels == ["angry"] and sum(sizes(index).values()) == 10


def test_broken_links_are_bad_files_and_stray_entries_are_counted(tmp_path: Path) -> None:
    for i in range(10):
        write_image(tmp_path / "happy" / f"{i}.png")
    happy = tmp_path / "happy"
    (happy / "gone.jpg").symlink_to(happy / "nowhere.jpg")  # dangling
    (happy / "loop.png").symlink_to(happy / "loop.png")  # a loop
    (happy / "gone.txt").symlink_to(happy / "nowhere.txt")  # not an image name: counted
    (happy / "linked.png").symlink_to(happy / "0.png")  # a good link is an image
    (happy / "more").mkdir()  # a sub-folder of a class folder is not read
    write_image(happy / "more" / "x.png")
    write_image(tmp_path / "stray.png")  # an image beside the class folders
    (tmp_path / "classes.xlsx").write_bytes(b"PK")
    index = folder(tmp_path)
    reasons = {Path(b.path).name: b.reason for b in index.bad_files}
    assert set(reasons) == {"gone.jpg", "loop.png"}
    assert (
        reasons["gone.jpg"].startswith("dangling symbolic link")
        and "nowhere.jpg" in reasons["gone.jpg"]
    )
    assert reasons["loop.png"].startswith("symbolic link loop")
    assert per_class(index) == {"happy": 11}
    assert index.ignored == {
        "broken symbolic link": 1,
        "image outside the layout's image folders": 1,
        "note (.xlsx)": 1,
        "sub-folder of an image folder (not read)": 1,
    }


# ---------------------------------------------------------------------------- rafdb
def test_rafdb_dataset_folders(tmp_path: Path) -> None:
    write_rafdb_folders(tmp_path, {"train": 2, "test": 1})
    for root in (tmp_path, tmp_path / "DATASET"):
        index = rafdb(root)
        assert sizes(index) == {"train": 14, "test": 7}
        assert index.color and "val" not in index.splits and "loader" in index.protocol
    one = [r for r in index.splits["train"] if "/1/" in r.path]
    six = [r for r in index.splits["train"] if "/6/" in r.path]
    assert {r.label for r in one} == {INDEX["surprise"]} and {r.label for r in six} == {
        INDEX["angry"]
    }


# RAF-DB's own numbering (its README), written out here rather than read from ferlab.labels.
RAFDB_NUMBERS = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happy",
    5: "sad",
    6: "angry",
    7: "neutral",
}


@pytest.mark.parametrize("layout", ["folders", "basic aligned", "basic original"])
def test_rafdb_maps_every_label_to_its_canonical_class(tmp_path: Path, layout: str) -> None:
    per_split = {"train": 3, "test": 2}  # images of each label 1..7
    options: dict[str, str] = {}
    if layout == "folders":
        write_rafdb_folders(tmp_path, per_split)

        def number_of(path: str) -> int:
            return int(Path(path).parent.name)  # DATASET/<split>/<1..7>/

    else:
        images = layout.split()[1]
        numbers: dict[str, int] = {}
        for split, n in per_split.items():
            for i in range(7 * n):  # labels scrambled against the file numbering
                numbers[f"{split}_{i + 1:05d}.jpg"] = (3 * i) % 7 + 1
        write_rafdb_basic(tmp_path / "basic", numbers, images=images)
        suffix = "_aligned" if images == "aligned" else ""
        options = {"images": images}

        def number_of(path: str) -> int:
            return numbers[Path(path).name.replace(suffix, "")]

    index = rafdb(tmp_path, **options)
    assert index.labels == list(EMOTIONS) and not index.bad_files
    for split, n in per_split.items():
        records = index.splits[split]
        assert sorted(number_of(r.path) for r in records) == sorted(list(range(1, 8)) * n)
        for r in records:
            assert CANONICAL[r.label] == RAFDB_NUMBERS[number_of(r.path)], r.path
        assert per_class(index, split) == dict.fromkeys(RAFDB_NUMBERS.values(), n)


def test_rafdb_unknown_class_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "8" / "a.jpg")
    write_image(tmp_path / "test" / "1" / "a.jpg")
    with pytest.raises(DatasetError, match=r"'8'.*also accepts the folder names 1, 2"):
        rafdb(tmp_path)


def test_rafdb_missing_split(tmp_path: Path) -> None:
    write_image(tmp_path / "DATASET" / "train" / "1" / "a.jpg")
    with pytest.raises(DatasetError, match=r"test folder .*DATASET/test.* does not exist"):
        rafdb(tmp_path)


def test_rafdb_basic_release(tmp_path: Path) -> None:
    base = tmp_path / "basic"
    aligned = base / "Image" / "aligned"
    lines = []
    for split, n in (("train", 3), ("test", 2)):
        for i in range(1, n + 1):
            write_image(aligned / f"{split}_{i:05d}_aligned.jpg", mode="RGB")
            lines.append(f"{split}_{i:05d}.jpg {i}")
    (aligned / "test_00009_aligned.jpg").write_bytes(b"")
    lines += [
        "train_00099.jpg 1",  # image missing
        "train_00001.jpg 8",  # label out of range
        "train_00002.jpg",  # field missing
        "val_00001.jpg 2",  # no train_/test_ prefix
        "test_00009.jpg 3",  # zero-byte image
        "",
    ]
    (base / "EmoLabel").mkdir()
    (base / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    write_image(aligned / "train_00042_aligned.jpg", mode="RGB")  # in no row: counted
    for root in (base, tmp_path):
        index = rafdb(root)
        assert index.ignored == {"image not in list_patition_label.txt": 1}
        assert sizes(index) == {"train": 3, "test": 2}
        assert [CANONICAL[r.label] for r in index.splits["train"]] == [
            "surprise",
            "fear",
            "disgust",
        ]
        assert index.splits["test"][0].path.endswith("test_00001_aligned.jpg")
        reasons = [b.reason for b in index.bad_files]
        assert [r.split(":")[0] for r in reasons] == [f"line {n}" for n in range(6, 11)]
        assert "missing" in reasons[0] and "not 1..7" in reasons[1] and "1 fields" in reasons[2]
        assert "train_ or test_" in reasons[3] and "zero-byte" in reasons[4]


def test_rafdb_basic_release_without_images(tmp_path: Path) -> None:
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 1\n")
    with pytest.raises(DatasetError, match=r"Image/aligned.*does not exist"):
        rafdb(tmp_path)


# ---------------------------------------------------------------------------- expw
def test_expw_cropped_faces_are_split_by_seed(tmp_path: Path) -> None:
    for cls in EMOTIONS:
        for i in range(10):
            write_image(tmp_path / "Expw-F" / cls / f"{cls}_{i}_0.jpg", mode="RGB")
    index = expw(tmp_path)
    # Seeded splits hold their fractions only approximately: check membership, not sizes.
    assert list(index.splits) == ["train", "val", "test"]
    assert per_class(index) == dict.fromkeys(EMOTIONS, 10)
    assert len(index.splits["train"]) > 35  # 80% of 70 expected: most records train
    assert index.color and "no official split" in index.protocol
    same = expw(tmp_path / "Expw-F")  # root may be Expw-F itself
    assert assignment(same) == assignment(index)


def test_expw_label_list_boxes_are_clipped(tmp_path: Path) -> None:
    photos = {"a.jpg": (100, 80), "b.jpg": (50, 50)}
    rows = [
        # image face_id top left right bottom confidence label
        "a.jpg 0 10 20 60 70 50.1 3",  # inside
        "a.jpg 1 -5 90 130 40 12.0 0",  # runs past the right and top border
        "b.jpg 0 0 0 50 50 9.9 6",  # whole photo
    ]
    write_origin(tmp_path, rows, photos)
    index = expw(tmp_path, val_fraction=0.0, test_fraction=0.0)
    boxes = {(Path(r.path).name, r.box): CANONICAL[r.label] for r in index.splits["train"]}
    assert boxes == {
        ("a.jpg", (20, 10, 60, 70)): "happy",
        ("a.jpg", (90, 0, 100, 40)): "angry",
        ("b.jpg", (0, 0, 50, 50)): "neutral",
    }
    assert not index.bad_files
    wide = expw(tmp_path, margin=0.25, val_fraction=0.0, test_fraction=0.0)
    wide_boxes = {r.box for r in wide.splits["train"]}
    assert (10, 0, 70, 80) in wide_boxes  # 40x60 box grown by 10 and 15 a side, then clipped


def test_expw_label_list_bad_rows(tmp_path: Path) -> None:
    photos = {"a.jpg": (100, 80)}
    rows = [
        "a.jpg 0 10 20 60 70 50.1 3",
        "a.jpg 0 10 20 60 70 50.1",  # 7 fields
        "a.jpg 0 ten 20 60 70 50.1 3",  # not an integer
        "a.jpg 0 10 20 60 70 50.1 7",  # label out of range
        "a.jpg 0 10 60 20 70 50.1 3",  # right <= left
        "a.jpg 0 90 20 60 120 50.1 3",  # empty after clipping (top 90 > height 80)
        "gone.jpg 0 10 20 60 70 50.1 3",  # image missing
        "",
        "zero.jpg 0 10 20 60 70 50.1 3",  # zero-byte photo
    ]
    write_origin(tmp_path, rows, photos)
    (tmp_path / "origin" / "zero.jpg").write_bytes(b"")
    index = expw(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert len(index.splits["train"]) == 1
    reasons = [b.reason for b in index.bad_files]
    assert [r.split(":")[0] for r in reasons] == [f"line {n}" for n in (2, 3, 4, 5, 6, 7, 9)]
    assert "7 fields" in reasons[0] and "integers" in reasons[1] and "not 0..6" in reasons[2]
    assert "empty" in reasons[3] and "empty" in reasons[4]
    assert "missing" in reasons[5] and "zero-byte" in reasons[6]
    assert all(b.path.startswith(str(tmp_path / "label.lst")) for b in index.bad_files)


def test_expw_other_label_list_places(tmp_path: Path) -> None:
    write_image(tmp_path / "image" / "origin" / "a.jpg", size=(40, 40), mode="RGB")
    (tmp_path / "label").mkdir()
    (tmp_path / "label" / "label.lst").write_text("a.jpg 0 0 0 20 20 1.0 5\n")
    index = expw(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert [CANONICAL[r.label] for r in index.splits["train"]] == ["surprise"]
    (tmp_path / "image" / "origin" / "a.jpg").unlink()
    (tmp_path / "image" / "origin").rmdir()
    (tmp_path / "image").rmdir()
    with pytest.raises(DatasetError, match="no photo folder"):
        expw(tmp_path)


def test_expw_faces_of_one_photo_share_a_split(tmp_path: Path) -> None:
    photos: dict[str, tuple[int, int]] = {}
    rows = []
    for i in range(60):  # 60 photos with 1 to 4 faces each
        name = f"photo_{i:02d}.jpg"
        photos[name] = (100, 60)
        for face in range(1 + i % 4):
            left = 5 + 20 * face
            rows.append(f"{name} {face} 10 {left} {left + 15} 40 9.5 {(i + face) % 7}")
    write_origin(tmp_path, rows, photos)
    index = expw(tmp_path)
    split_of: dict[str, set[str]] = {}
    for split, records in index.splits.items():
        for r in records:
            assert r.group == r.path
            split_of.setdefault(r.path, set()).add(split)
    assert len(split_of) == 60 and sum(len(r) for r in index.splits.values()) == 150
    assert all(len(splits) == 1 for splits in split_of.values()), split_of
    assert {s for splits in split_of.values() for s in splits} == {"train", "val", "test"}
    assert "one photo in one split" in index.protocol
    # Split by face instead, some photo would straddle two splits: the grouping is what holds.
    faces = [replace(r, group=None) for r in all_records(index)]
    by_face: dict[str, set[str]] = {}
    for split, records in seeded_split(faces, 0, 0.1, 0.1).items():
        for r in records:
            by_face.setdefault(r.path, set()).add(split)
    assert any(len(splits) > 1 for splits in by_face.values())


def test_expw_photos_not_in_the_label_list_are_counted(tmp_path: Path) -> None:
    write_origin(tmp_path, ["a.jpg 0 0 0 20 20 1.0 5"], {"a.jpg": (40, 40), "b.jpg": (40, 40)})
    write_image(tmp_path / "origin" / "c.png", mode="RGB")
    index = expw(tmp_path, val_fraction=0.0, test_fraction=0.0)
    assert len(index.splits["train"]) == 1
    assert index.ignored == {"image not in label.lst": 2}


def test_box_helpers() -> None:
    assert enlarge_box((10, 10, 30, 50), 0.5) == (0, -10, 40, 70)
    assert clip_box((-3, -4, 120, 90), (100, 80)) == (0, 0, 100, 80)


# ---------------------------------------------------------------------------- ferplus
def test_ferplus_majority_rule_and_soft_votes(tmp_path: Path) -> None:
    write_ferplus(tmp_path / "FER2013Valid", FERPLUS_ROWS)
    index = ferplus(tmp_path)
    assert list(index.splits) == ["val"] and index.labels == list(CANONICAL)
    got = {Path(r.path).name: CANONICAL[r.label] for r in index.splits["val"]}
    assert got == {name: label for name, _, label in FERPLUS_ROWS if label}
    assert index.excluded == {
        "majority not a face": 1,
        "majority unknown": 1,
        "no majority label": 3,
    }
    soft = {Path(r.path).name: r.soft for r in index.splits["val"]}
    assert soft["a.png"] == tuple(1.0 if c == "neutral" else 0.0 for c in CANONICAL)
    assert soft["b.png"][INDEX["neutral"]] == pytest.approx(5 / 9)
    assert soft["b.png"][INDEX["happy"]] == pytest.approx(4 / 9)
    assert soft["g.png"][INDEX["contempt"]] == pytest.approx(0.8)
    assert soft["i.png"][INDEX["sad"]] == pytest.approx(1.0)  # unknown/NF votes left out
    assert soft["j.png"][INDEX["disgust"]] == pytest.approx(0.4)
    assert all(len(s or ()) == len(CANONICAL) for s in soft.values())
    assert all(r.box is None for r in index.splits["val"]) and not index.color


def test_ferplus_majority_function() -> None:
    for _, votes, label in FERPLUS_ROWS:
        winner, reason = majority(votes)
        assert (CANONICAL[winner] if winner is not None else None) == label
        assert (reason is None) == (label is not None)


def test_ferplus_splits_header_and_bad_rows(tmp_path: Path) -> None:
    rows = FERPLUS_ROWS[:2]
    write_ferplus(tmp_path / "FER2013Train", rows, header=True)
    write_ferplus(
        tmp_path / "FER2013Test",
        rows,
        extra=[
            ["k.png", "(0, 0, 48, 48)", "8", "x", "0", "0", "0", "0", "0", "0", "0", "0"],
            ["l.png", "(0, 0, 48, 48)", "8", "0"],
            ["gone.png", "(0, 0, 48, 48)", "8", "0", "0", "0", "0", "0", "0", "0", "0", "0"],
            ["a.png", "(0, 0, 0, 48)", "8", "0", "0", "0", "0", "0", "0", "0", "0", "0"],
        ],
    )
    (tmp_path / "FER2013Test" / "z.png").write_bytes(b"")
    write_image(tmp_path / "FER2013Test" / "unlisted.png")
    with open(tmp_path / "FER2013Test" / "label.csv", "a", newline="") as f:
        csv.writer(f).writerow(["z.png", "(0, 0, 48, 48)", 8, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    index = ferplus(tmp_path)
    assert sizes(index) == {"train": 2, "test": 2}
    assert "val is carved from train by the loader" in index.protocol
    assert index.ignored == {"image not in label.csv": 1}
    reasons = [b.reason for b in index.bad_files]
    assert [r.split(":")[0] for r in reasons] == [f"line {n}" for n in (3, 4, 5, 6, 7)]
    assert "not all integers" in reasons[0] and "4 fields" in reasons[1]
    assert "missing" in reasons[2] and "box" in reasons[3] and "zero-byte" in reasons[4]


def test_ferplus_errors(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match="holds none of FER2013Train"):
        ferplus(tmp_path)
    (tmp_path / "FER2013Valid").mkdir()
    with pytest.raises(DatasetError, match=r"has no label\.csv"):
        ferplus(tmp_path)


# ---------------------------------------------------------------------------- affectnet
def test_affectnet_folder_release(tmp_path: Path) -> None:
    write_affectnet_set(
        tmp_path,
        "train_set",
        {"0": "1", "1": 6, "2": "7", "3": "8", "4": "12", "5": None, "6": np.int64(0)},
    )
    write_affectnet_set(tmp_path, "val_set", {"10": "3", "11": "10"})
    index = affectnet(tmp_path)
    assert sizes(index) == {"train": 4, "test": 1}
    labels = {Path(r.path).stem: CANONICAL[r.label] for r in index.splits["train"]}
    assert labels == {"0": "happy", "1": "angry", "2": "contempt", "6": "neutral"}
    assert index.labels == list(CANONICAL) and index.color
    assert index.excluded == {"no face (10)": 1, "none (8)": 1}
    reasons = {Path(b.path).name: b.reason for b in index.bad_files}
    assert "not 0..10" in reasons["4_exp.npy"] and "no annotation" in reasons["5.jpg"]
    assert "validation set serves as test" in index.protocol

    seven = affectnet(tmp_path, classes=7)
    assert seven.labels == list(EMOTIONS) and sizes(seven) == {"train": 3, "test": 1}
    assert seven.excluded["contempt (classes: 7)"] == 1
    with pytest.raises(DatasetError, match="classes=9"):
        affectnet(tmp_path, classes=9)


def test_affectnet_folder_release_missing_val_set(tmp_path: Path) -> None:
    write_affectnet_set(tmp_path, "train_set", {"0": "1"})
    with pytest.raises(DatasetError, match=r"val_set image folder .*does not exist"):
        affectnet(tmp_path)


def test_affectnet_csv_release(tmp_path: Path) -> None:
    images = tmp_path / "Manually_Annotated_Images"
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    train = [
        '1/a.jpg,10,20,30,40,"1;2;3",1,0.5,0.2',
        '1/b.jpg,0,0,8,8,"",7,0.1,0.1',
        '2/c.jpg,0,0,8,8,"",9,0.1,0.1',  # uncertain: excluded
        '2/gone.jpg,0,0,8,8,"",2,0.1,0.1',  # missing image
        '2/c.jpg,0,0,0,8,"",2,0.1,0.1',  # zero width
        '2/c.jpg,x,0,8,8,"",2,0.1,0.1',  # not an integer
    ]
    for rel in ("1/a.jpg", "1/b.jpg", "2/c.jpg", "3/d.jpg"):
        write_image(images / rel, size=(64, 64), mode="RGB")
    (tmp_path / "Manually_Annotated_file_lists").mkdir()
    (tmp_path / "Manually_Annotated_file_lists" / "training.csv").write_text(
        "\n".join([header, *train]) + "\n"
    )
    (tmp_path / "validation.csv").write_text(header + '\n3/d.jpg,1,2,3,4,"",5,0.1,0.1\n')
    index = affectnet(tmp_path)
    assert sizes(index) == {"train": 2, "test": 1}
    first = index.splits["train"][0]
    assert first.box == (10, 20, 40, 60) and CANONICAL[first.label] == "happy"
    assert CANONICAL[index.splits["test"][0].label] == "disgust"
    assert index.excluded == {"uncertain (9)": 1}
    reasons = [b.reason for b in index.bad_files]
    assert [r.split(":")[0] for r in reasons] == ["line 5", "line 6", "line 7"]
    assert "missing" in reasons[0] and "width 0" in reasons[1] and "integers" in reasons[2]
    assert affectnet(tmp_path, classes=7).excluded == {
        "contempt (classes: 7)": 1,
        "uncertain (9)": 1,
    }


def test_affectnet_csv_without_columns(tmp_path: Path) -> None:
    (tmp_path / "Manually_Annotated_Images").mkdir()
    (tmp_path / "training.csv").write_text("subDirectory_filePath,face_x\n1/a.jpg,1\n")
    (tmp_path / "validation.csv").write_text("subDirectory_filePath,face_x\n1/a.jpg,1\n")
    with pytest.raises(DatasetError, match=r"lacks the column\(s\) face_y"):
        affectnet(tmp_path)


def test_affectnet_without_any_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither train_set/"):
        affectnet(tmp_path)


def test_a_registered_generated_adapter_is_named_per_domain_and_never_looked_up_on_disk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Dataset traits come from the registry, not from a dataset's name: a user's own generated
    adapter behaves as the built-in synthetic one (no folder check, one dataset per domain)."""
    from ferlab.config import DatasetConfig
    from ferlab.data import base

    monkeypatch.setattr(base, "_ADAPTERS", dict(base._ADAPTERS))
    monkeypatch.setattr(base, "_TRAITS", dict(base._TRAITS))
    seen: list[object] = []

    @base.register_dataset("toygen", generated=True)
    def toygen(path: object, **options: object) -> base.DatasetIndex:
        seen.append(path)
        return base.DatasetIndex("toygen", str(path), ["happy"], {"train": []}, "drawn")

    @base.register_dataset("toydisk")
    def toydisk(root: object, **options: object) -> base.DatasetIndex:
        raise AssertionError("a missing root must be refused before the adapter runs")

    assert base.dataset_traits("toygen").generated and not base.dataset_traits("toydisk").generated
    assert DatasetConfig(name="toygen", path="dusk").display == "toygen-dusk"
    assert DatasetConfig(name="toydisk", path=str(tmp_path)).display == "toydisk"
    assert base.dataset_traits("synthetic").generated  # the built-in one declares it too
    base.index_dataset("toygen", "dusk")  # "dusk" is no folder here: not checked
    assert seen == ["dusk"]
    with pytest.raises(base.DatasetError, match="does not exist"):
        base.index_dataset("toydisk", str(tmp_path / "absent"))
