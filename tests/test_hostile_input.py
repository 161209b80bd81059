"""Hostile input: nothing crashes, nothing is lost, nothing is silently wrong.

A corpus of bad and unusual input, written here in tiny files in the real layouts, driven
through the real entry points, ``load_dataset`` and ``ferlab data inspect``, with
``on_bad_file`` skip and error:

- images (a folder dataset whose class folders are named ``Happiness``, ``SAD``,
  ``surprised``): every unusual but valid image is kept (counted), every bad one is a bad file
  named with its reason, every kind of OS litter is ignored and counted;
- CSV and list files as editors save them (byte-order mark, CRLF or CR line ends, blank
  lines, quoted fields, spaces, gzip, UTF-16) for every CSV/list file ferlab reads: the same
  records as the plain file;
- bad CSV rows (FER2013) and bad ``label.lst`` rows (ExpW), photos included;
- whole-input errors (text that is not UTF-8, a damaged gzip, a FER2013 test/ mixing
  prefixed and un-prefixed files, refused options): a one-line ``ferlab: error:`` and exit
  code 2 from the CLI, never a traceback.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapter_fakes import (
    FERPLUS_HEADER,
    LITTER_FILES,
    LITTER_FOLDERS,
    fer_faces,
    png_header,
    write_fer_folders,
    write_image,
    write_litter,
)
from ferlab.cli import main
from ferlab.data.adapters.utils import open_text
from ferlab.data.base import DatasetError, DatasetIndex, index_dataset
from ferlab.data.decode import MAX_IMAGE_PIXELS
from ferlab.data.loading import load_dataset
from ferlab.labels import CANONICAL

AS_ROOT = os.geteuid() == 0
PIXEL_LIMIT = f"over the pixel limit of {MAX_IMAGE_PIXELS:,}"


# ---------------------------------------------------------------------------- image writers
def _noise(size: tuple[int, int], mode: str = "L", seed: int = 0) -> Image.Image:
    w, h = size
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "LA": 2}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)


def _save(im: Image.Image, **kw: object) -> Callable[[Path], None]:
    return lambda p: im.save(p, **kw)


def _truncated(fmt: str) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        full = p.with_name(f"full-{p.name}.tmp")
        _noise((64, 64), seed=3).save(full, format=fmt)
        data = full.read_bytes()
        full.unlink()
        p.write_bytes(data[: len(data) // 2])

    return write


def _palette(transparent: bool) -> Callable[[Path], None]:
    im = Image.new("P", (12, 12), 0)
    im.putpalette([255, 255, 255, 0, 128, 0] + [0] * 762)
    im.paste(1, (0, 0, 6, 12))
    return _save(im, transparency=0) if transparent else _save(im)


def _exif_rotated(p: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees
    _noise((40, 20), "RGB", seed=4).save(p, quality=90, exif=exif.tobytes())


def _animated(p: Path) -> None:
    frames = [Image.new("L", (8, 8), v) for v in (200, 20, 90)]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50)


def _png_named(p: Path) -> None:
    _noise((16, 16), seed=5).save(p, format="PNG")


def _deep16(p: Path) -> None:
    Image.fromarray(np.full((10, 10), 40000, dtype=np.uint16)).save(p)


def _float_tiff(p: Path) -> None:
    Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), mode="F").save(p)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def _link(target: str) -> Callable[[Path], None]:
    return lambda p: p.symlink_to(target)


@dataclass(frozen=True)
class Item:
    """One file of the corpus: where it goes, how it is written, and what must become of it."""

    rel: str  # path under the dataset root: <class folder>/<file>
    write: Callable[[Path], None]
    reason: str | None  # None: a valid image that must be kept; else in its bad-file reason


# Class folders named with synonyms and odd case, as people name them.
CLASSES = {"Happiness": "happy", "SAD": "sad", "surprised": "surprise"}
CORPUS: tuple[Item, ...] = (
    # Unusual but valid: every one is kept.
    Item("Happiness/plain.png", _save(_noise((16, 16), seed=1)), None),
    Item("Happiness/png_named.jpg", _png_named, None),
    Item(
        "Happiness/cmyk.jpg", _save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), quality=90), None
    ),
    Item("Happiness/deep16.png", _deep16, None),
    Item("Happiness/float.tif", _float_tiff, None),
    Item("SAD/palette.png", _palette(transparent=False), None),
    Item("SAD/palette_alpha.png", _palette(transparent=True), None),
    Item("SAD/la.png", _save(_noise((12, 12), "LA", seed=6)), None),
    Item("SAD/rgba.png", _save(_noise((12, 12), "RGBA", seed=7)), None),
    Item("SAD/exif_rotated.jpg", _exif_rotated, None),
    Item("SAD/bilevel.bmp", _save(Image.new("1", (9, 9), 1)), None),
    Item("surprised/animated.gif", _animated, None),
    Item("surprised/one_pixel.png", _save(Image.new("L", (1, 1), 99)), None),
    Item("surprised/tall_10x2000.png", _save(Image.new("RGB", (10, 2000), (0, 0, 200))), None),
    Item("surprised/linked.png", _link("../Happiness/plain.png"), None),
    # Bad: each one is a bad file with its reason, nothing crashes.
    Item("Happiness/truncated.jpg", _truncated("JPEG"), "truncated"),
    Item("Happiness/truncated.png", _truncated("PNG"), "cannot decode the image"),
    Item("Happiness/garbage.gif", _bytes(bytes(range(256)) * 4), "not an image file"),
    Item("SAD/zero.jpg", _bytes(b""), "zero-byte file"),
    Item("SAD/text.png", _bytes(b"a note, saved as .png\n" * 20), "not an image file"),
    Item("surprised/bomb.png", _bytes(png_header(30_000, 30_000)), PIXEL_LIMIT),
    Item("surprised/loop.jpg", _link("loop.jpg"), "symbolic link loop"),
    Item("surprised/dangling.jpg", _link("nowhere.jpg"), "dangling symbolic link"),
)
VALID = [i for i in CORPUS if i.reason is None]
BAD = {Path(i.rel).name: i.reason for i in CORPUS if i.reason is not None}


def write_corpus(root: Path) -> dict[str, int]:
    """The image corpus as a folder dataset, litter in the root and a class folder; returns
    the litter counts by kind."""
    for item in CORPUS:
        path = root / item.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        item.write(path)
    litter = Counter(write_litter(root))
    litter.update(write_litter(root / "SAD"))
    return dict(litter)


def _bad_by_name(bad: list) -> dict[str, str]:
    out = {Path(b.path).name: b.reason for b in bad}
    assert len(out) == len(bad), f"a file is listed twice: {bad}"
    return out


# ---------------------------------------------------------------------------- images
def test_images_skip_keeps_every_valid_image_and_names_every_bad_one(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = tmp_path / "faces"
    litter = write_corpus(root)
    loaded = load_dataset(f"folder:{root}", image_size=16, channels=3, cache_dir=cache_dir)
    bad = _bad_by_name(loaded.bad_files)
    assert set(bad) == set(BAD)
    for name, reason in BAD.items():
        assert reason in bad[name], (name, bad[name])
    kept = {Path(k).name: CANONICAL[int(lab)] for s in loaded.splits.values()
            for k, lab in zip(s.keys, s.labels.tolist(), strict=True)}  # fmt: skip
    assert kept == {Path(i.rel).name: CLASSES[i.rel.split("/")[0]] for i in VALID}
    assert sum(len(s) for s in loaded.splits.values()) == len(VALID) == 15
    assert loaded.labels == ["happy", "sad", "surprise"]
    assert loaded.ignored == litter
    assert sum(litter.values()) == 2 * (len(LITTER_FILES) + len(LITTER_FOLDERS)) == 26
    for split in loaded.splits.values():
        assert split.images.shape[1:] == (16, 16, 3) and split.images.dtype == np.uint8


def test_images_error_names_the_bad_files_and_caches_nothing(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = tmp_path / "faces"
    write_corpus(root)
    found_by_adapter = _bad_by_name(index_dataset("folder", str(root)).bad_files)
    assert {"zero.jpg", "loop.jpg", "dangling.jpg"} <= set(found_by_adapter)
    with pytest.raises(DatasetError) as e:
        load_dataset(f"folder:{root}", cache_dir=cache_dir, on_bad_file="error")
    msg = str(e.value)
    # All of them at once: those the adapter found and those only decoding finds.
    assert msg.startswith(f"folder: {len(BAD)} bad file(s) found before training")
    for name, reason in BAD.items():
        assert name in msg and reason in msg, (name, reason)
    for name, reason in found_by_adapter.items():
        assert f"{name}: {reason}" in msg
    assert "on_bad_file: skip" in msg
    assert not list(cache_dir.glob("*/meta.json"))


def test_images_found_only_by_decoding_are_all_named_in_error_mode(
    tmp_path: Path, cache_dir: Path
) -> None:
    root = tmp_path / "faces"
    names = ("truncated.jpg", "truncated.png", "text.png")
    for item in CORPUS:
        if item.reason is None or Path(item.rel).name in names:
            (root / item.rel).parent.mkdir(parents=True, exist_ok=True)
            item.write(root / item.rel)
    assert not index_dataset("folder", str(root)).bad_files  # only decoding finds these
    with pytest.raises(DatasetError) as e:
        load_dataset(f"folder:{root}", cache_dir=cache_dir, on_bad_file="error")
    lines = str(e.value).splitlines()
    assert lines[0] == "folder: 3 bad file(s) found before training:"
    listed = {Path(line.split(": ", 1)[0].strip()).name: line for line in lines[1:4]}
    assert set(listed) == set(names)
    for name in names:
        assert BAD[name] in listed[name], listed[name]
    assert not list(cache_dir.glob("*/meta.json"))


def test_a_bomb_met_by_the_colour_guess_is_a_bad_file(tmp_path: Path) -> None:
    # Sorted first, the bomb is the first image the folder adapter's colour guess opens.
    write_image(tmp_path / "happy" / "b.png", mode="RGB")
    (tmp_path / "happy" / "a_bomb.png").write_bytes(png_header(30_000, 30_000))
    index = index_dataset("folder", str(tmp_path), val_fraction=0.0, test_fraction=0.0)
    assert [(Path(b.path).name, PIXEL_LIMIT in b.reason) for b in index.bad_files] == [
        ("a_bomb.png", True)
    ]
    assert [Path(r.path).name for r in index.splits["train"]] == ["b.png"] and index.color


@pytest.mark.skipif(AS_ROOT, reason="tests run as root, who can read a chmod 000 file")
def test_an_unreadable_file_is_a_bad_file(tmp_path: Path, cache_dir: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "faces" / "happy" / f"{i}.png")
    locked = write_image(tmp_path / "faces" / "happy" / "locked.png")
    locked.chmod(0)
    try:
        loaded = load_dataset(f"folder:{tmp_path / 'faces'}", image_size=8, cache_dir=cache_dir)
    finally:
        locked.chmod(0o644)
    bad = _bad_by_name(loaded.bad_files)
    assert list(bad) == ["locked.png"] and "permission denied" in bad["locked.png"]
    assert sum(len(s) for s in loaded.splits.values()) == 3


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_inspect_reports_the_corpus(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "faces"
    litter = write_corpus(root)
    code, out, err = _cli(
        ["data", "inspect", f"folder:{root}", "--json", "--cache-dir", str(cache_dir)], capsys
    )
    assert code == 0, err
    report = json.loads(out)
    bad = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert set(bad) == set(BAD) and all(BAD[n] in bad[n] for n in BAD), bad
    assert sum(s["total"] for s in report["splits"].values()) == len(VALID)
    assert report["ignored"] == litter
    code, out, err = _cli(["data", "inspect", f"folder:{root}", "--no-decode"], capsys)
    assert code == 0, err
    assert f"Ignored (not part of the dataset): {sum(litter.values())} (" in out
    assert "bomb.png" in out  # found without decoding, by the colour guess or not at all
    assert "zero.jpg" in out and "loop.jpg" in out and "dangling.jpg" in out


# ---------------------------------------------------------------------------- text files
PIXELS = [" ".join(map(str, f[3].ravel().tolist())) for f in fer_faces()]
USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}


def _rows_fer(root: Path, icml: bool) -> tuple[Path, list[list[str]]]:
    rows = [["emotion", "Usage", "pixels"] if icml else ["emotion", "pixels", "Usage"]]
    for i, pixels in enumerate(PIXELS):
        usage = ("Training", "PublicTest", "PrivateTest")[i % 3]
        rows.append([str(i % 7), usage, pixels] if icml else [str(i % 7), pixels, usage])
    return root / ("icml_face_data.csv" if icml else "fer2013.csv"), rows


def _rows_ferplus(root: Path) -> tuple[Path, list[list[str]]]:
    votes = [
        [8, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 6, 0, 0, 0, 0, 2, 2],
        [2, 0, 0, 0, 0, 0, 0, 8, 0, 0],
        [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 7, 0, 0, 0, 3, 0, 0, 0],
        [0, 0, 0, 0, 6, 4, 0, 0, 0, 0],
    ]
    rows = [list(FERPLUS_HEADER)]
    for i in range(len(votes)):
        write_image(root / "FER2013Train" / f"{i}.png", size=(48, 48), value=10 * i)
    rows += [[f"{i}.png", "(0, 0, 48, 48)", *map(str, v)] for i, v in enumerate(votes)]
    return root / "FER2013Train" / "label.csv", rows


def _rows_affectnet(root: Path) -> tuple[Path, list[list[str]]]:
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]  # fmt: skip
    rows = [header]
    for i in range(6):
        write_image(
            root / "Manually_Annotated_Images" / "1" / f"{i}.jpg", size=(32, 32), mode="RGB"
        )
        rows.append([f"1/{i}.jpg", "2", "3", "20", "24", "1.0;2.0", str(i), "0.1", "-0.2"])
    (root / "validation.csv").write_text(",".join(header) + "\n1/0.jpg,0,0,8,8,,1,0,0\n")
    return root / "training.csv", rows


def _rows_rafdb(root: Path) -> tuple[Path, list[list[str]]]:
    rows = []
    for split, n in (("train", 4), ("test", 2)):
        for i in range(1, n + 1):
            write_image(root / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", mode="RGB")
            rows.append([f"{split}_{i:05d}.jpg", str(i)])
    return root / "EmoLabel" / "list_patition_label.txt", rows


def _rows_expw(root: Path) -> tuple[Path, list[list[str]]]:
    rows = []
    for i in range(8):
        write_image(root / "origin" / f"p{i}.jpg", size=(50, 40), mode="RGB")
        rows.append([f"p{i}.jpg", "0", "2", "3", "30", "35", "42.5", str(i % 7)])
        rows.append([f"p{i}.jpg", "1", "1", "32", "49", "20", "7.25", str((i + 3) % 7)])
    return root / "label.lst", rows


FORMATS: dict[str, tuple[str, Callable[[Path], tuple[Path, list[list[str]]]], str]] = {
    # name: (adapter, writer, separator)
    "fer2013.csv": ("fer2013", lambda r: _rows_fer(r, icml=False), ","),
    "icml_face_data.csv": ("fer2013", lambda r: _rows_fer(r, icml=True), ","),
    "ferplus label.csv": ("ferplus", _rows_ferplus, ","),
    "affectnet training.csv": ("affectnet", _rows_affectnet, ","),
    "rafdb list_patition_label.txt": ("rafdb", _rows_rafdb, " "),
    "expw label.lst": ("expw", _rows_expw, " "),
}


def _render(rows: list[list[str]], sep: str, *, quoted: bool) -> str:
    if not quoted and sep == ",":  # as the csv module writes it: quotes only where needed
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        return buf.getvalue()
    if not quoted:
        return "".join(sep.join(r) + "\n" for r in rows)
    if sep == ",":  # spaces around quoted values and around the separators
        return "".join(" , ".join(f' "{v}" ' if v else "" for v in r) + "\n" for r in rows)
    return "".join("  \t".join(f'"{v}"' for v in r) + " \n" for r in rows)  # tabs and runs


VARIANTS: dict[str, Callable[[str], bytes]] = {
    "utf-8 BOM": lambda t: ("\ufeff" + t).encode(),
    "CRLF": lambda t: t.replace("\n", "\r\n").encode(),
    "CR (old Mac)": lambda t: t.replace("\n", "\r").encode(),
    "blank lines": lambda t: ("\n\n" + t.replace("\n", "\n\n", 2) + "\n  \n\n").encode(),
    "UTF-16": lambda t: t.encode("utf-16"),
    "Excel (BOM, CRLF, trailing blank lines)": lambda t: (
        ("\ufeff" + t + "\n\n").replace("\n", "\r\n").encode()
    ),
}


def _summary(index: DatasetIndex) -> dict[str, list[tuple]]:
    """What the records say, independent of the list file's name (.gz) and the root."""
    return {
        split: sorted(
            (Path(r.path).name if r.pixels is None else "", r.label, r.box, r.row, r.pixels, r.soft)
            for r in records
        )
        for split, records in index.splits.items()
    }


def _write_format(root: Path, fmt: str, *, quoted: bool, variant: str | None, gz: bool) -> Path:
    _, writer, sep = FORMATS[fmt]
    path, rows = writer(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _render(rows, sep, quoted=quoted)
    data = VARIANTS[variant](text) if variant else text.encode()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("fmt", "gz"),
    # gzip is read where a .csv is; the list files (.txt, .lst) are plain text.
    [(f, False) for f in FORMATS] + [(f, True) for f in FORMATS if f.endswith(".csv")],
)
@pytest.mark.parametrize("quoted", [False, True], ids=["bare", "quoted+spaces"])
@pytest.mark.parametrize("variant", [None, *VARIANTS])
def test_list_and_csv_files_read_as_editors_save_them(
    fmt: str, variant: str | None, quoted: bool, gz: bool, tmp_path: Path
) -> None:
    adapter = FORMATS[fmt][0]
    plain_root, root = tmp_path / "plain", tmp_path / "saved"
    _write_format(plain_root, fmt, quoted=False, variant=None, gz=False)
    _write_format(root, fmt, quoted=quoted, variant=variant, gz=gz)
    expected = index_dataset(adapter, str(plain_root))
    assert not expected.bad_files and sum(len(r) for r in expected.splits.values()) >= 6
    index = index_dataset(adapter, str(root))
    assert not index.bad_files, index.bad_files[:3]
    assert _summary(index) == _summary(expected)
    assert index.ignored == expected.ignored == {}


def test_csv_gz_through_the_loader(tmp_path: Path, cache_dir: Path) -> None:
    data = tmp_path / "data"
    _write_format(data, "fer2013.csv", quoted=True, variant="utf-8 BOM", gz=True)
    loaded = load_dataset(f"fer2013:{data}", image_size=8, cache_dir=cache_dir)
    assert {s: len(a) for s, a in loaded.splits.items()} == {"train": 4, "val": 4, "test": 3}
    assert not loaded.bad_files and loaded.splits["train"].keys[0].endswith("fer2013.csv.gz#row0")


# ---------------------------------------------------------------------------- bad rows
def _fer_csv_with_bad_rows(path: Path) -> dict[str, str]:
    """A FER2013 CSV as Excel saves it, with bad rows; returns row key suffix -> reason part."""
    good = PIXELS[0]
    rows = [
        ["0", good, "Training"],
        ["1", " ".join(good.split()[:-1]), "Training"],  # 2303 values
        ["2", good.replace(" ", " x ", 1), "Training"],  # non-numeric
        ["9", good, "PublicTest"],  # label out of range
        ["happy", good, "PublicTest"],  # label not a number
        ["3", good, "Validation"],  # bad usage
        ["4", good],  # a field missing
        ["5", good, "PublicTest"],
        ["6", good, "PrivateTest"],
        ["3", good, " Training "],  # spaces around a value are fine
    ]
    text = "emotion , pixels , Usage\n" + "".join(
        ",".join(f'"{v}"' for v in r) + "\n" for r in rows
    )
    path.write_bytes(("\ufeff" + text + "\n\n").replace("\n", "\r\n").encode())
    return {
        "#row1": "2303 pixel values",
        "#row2": "pixel string holds 'x'",
        "#row3": "emotion '9' is not an integer 0..6",
        "#row4": "emotion 'happy'",
        "#row5": "Usage 'Validation'",
        "#row6": "2 fields, expected 3",
    }


def test_fer2013_bad_rows_skip_and_error(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    csv_path = data / "fer2013.csv"
    expected = _fer_csv_with_bad_rows(csv_path)
    loaded = load_dataset(f"fer2013:{data}", image_size=8, cache_dir=cache_dir)
    reasons = {b.path.rsplit("#", 1)[1]: b.reason for b in loaded.bad_files}
    assert {f"#{k}" for k in reasons} == set(expected)
    for key, reason in expected.items():
        assert reason in reasons[key[1:]], (key, reasons[key[1:]])
    assert {s: len(a) for s, a in loaded.splits.items()} == {"train": 2, "val": 1, "test": 1}
    with pytest.raises(DatasetError) as e:
        load_dataset(f"fer2013:{data}", cache_dir=cache_dir, on_bad_file="error")
    assert str(e.value).startswith("fer2013: 6 bad file(s)")
    assert all(f"{csv_path}{key}: " in str(e.value) for key in expected)
    code, out, err = _cli(["data", "inspect", f"fer2013:{csv_path}", "--json", "--cache-dir",
                           str(cache_dir)], capsys)  # fmt: skip
    assert code == 0, err
    assert {b["path"] for b in json.loads(out)["bad_files"]} == {f"{csv_path}{k}" for k in expected}


def _expw_with_bad_rows(root: Path) -> tuple[dict[int, str], dict[str, int]]:
    """label.lst with bad rows and bad photos, CRLF and a BOM; returns line -> reason part and
    the litter counts."""
    origin = root / "origin"
    for i in range(6):
        write_image(origin / f"p{i}.jpg", size=(100, 80), mode="RGB", value=30 * i)
    write_image(origin / "unlisted.jpg", size=(10, 10), mode="RGB")
    (origin / "bomb.png").write_bytes(png_header(30_000, 30_000))
    (origin / "zero.jpg").write_bytes(b"")
    (origin / "text.jpg").write_text("not a photo\n" * 10)
    (origin / "loop.jpg").symlink_to("loop.jpg")
    rows = [f"p{i}.jpg 0 10 20 60 70 50.5 {i}" for i in range(6)]
    bad = [
        ("p0.jpg 1 200 300 400 500 9.0 3", "lies outside the 100x80 photo"),
        ("p0.jpg 2 10 60 20 70 9.0 3", "inverted or empty"),
        ("p0.jpg 3 10 20 60", "5 fields, expected 8"),
        ("p0.jpg 4 10 20 60 70 9.0 9", "label 9 is not 0..6"),
        ("p0.jpg 5 ten 20 60 70 9.0 3", "must be integers"),
        ("bomb.png 0 0 0 10 10 1.0 2", PIXEL_LIMIT),
        ("gone.jpg 0 0 0 10 10 1.0 2", "is missing"),
        ("zero.jpg 0 0 0 10 10 1.0 2", "zero-byte file"),
        ("text.jpg 0 0 0 10 10 1.0 2", "not an image file"),
        ("loop.jpg 0 0 0 10 10 1.0 2", "symbolic link loop"),
    ]
    lines = rows + [b for b, _ in bad]
    (root / "label.lst").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n\r\n").encode())
    litter = Counter(write_litter(root))
    litter.update(write_litter(origin))
    litter["image not in label.lst"] += 1
    return {len(rows) + 1 + i: reason for i, (_, reason) in enumerate(bad)}, dict(litter)


def test_expw_bad_rows_and_photos_skip_and_error(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    expected, litter = _expw_with_bad_rows(data)
    loaded = load_dataset(f"expw:{data}", image_size=8, cache_dir=cache_dir)
    reasons = {int(b.path.rsplit(":", 1)[1]): b.reason for b in loaded.bad_files}
    assert set(reasons) == set(expected)
    for line, reason in expected.items():
        assert reasons[line].startswith(f"line {line}: ") and reason in reasons[line]
    assert sum(len(a) for a in loaded.splits.values()) == 6
    assert loaded.ignored == litter
    with pytest.raises(DatasetError) as e:
        load_dataset(f"expw:{data}", cache_dir=cache_dir, on_bad_file="error")
    assert str(e.value).startswith(f"expw: {len(expected)} bad file(s)")
    code, out, err = _cli(["data", "inspect", f"expw:{data}", "--json", "--cache-dir",
                           str(cache_dir)], capsys)  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert len(report["bad_files"]) == len(expected) and report["ignored"] == litter
    assert any(PIXEL_LIMIT in b["reason"] for b in report["bad_files"])


# ---------------------------------------------------------------------------- whole-input errors
def _one_line_error(code: int, err: str, *parts: str) -> None:
    assert code == 2
    assert err.startswith("ferlab: error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, (part, err)


def test_text_that_is_not_utf8_or_a_damaged_gzip(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    latin = tmp_path / "latin" / "fer2013.csv"
    latin.parent.mkdir()
    latin.write_bytes(b"emotion,pixels,Usage\n0," + PIXELS[0].encode() + b",Training \xe9t\xe9\n")
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        load_dataset(f"fer2013:{latin.parent}", cache_dir=cache_dir)
    _one_line_error(
        *_cli(["data", "inspect", f"fer2013:{latin}"], capsys)[::2], str(latin), "UTF-8"
    )

    cut = tmp_path / "cut" / "fer2013.csv.gz"
    cut.parent.mkdir()
    cut.write_bytes(gzip.compress(latin.read_bytes().replace(b"\xe9", b"e") * 50)[:-40])
    with pytest.raises(DatasetError, match="damaged gzip"):
        index_dataset("fer2013", str(cut.parent))
    _one_line_error(
        *_cli(["data", "inspect", f"fer2013:{cut.parent}"], capsys)[::2], "damaged gzip"
    )
    junk = tmp_path / "junk" / "FER2013Valid" / "label.csv.gz"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"\x1f\x8b" + b"\x00" * 40)  # gzip's magic, then nothing valid
    with pytest.raises(DatasetError, match=r"label\.csv\.gz.* is a damaged gzip file"):
        index_dataset("ferplus", str(junk.parent.parent))
    with pytest.raises(DatasetError, match="is not UTF-8"), open_text(latin) as f:
        f.read()


def test_fer2013_mixed_prefixes_is_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_fer_folders(tmp_path, fer_faces())
    write_image(tmp_path / "test" / "happy" / "IMG_0042.png")
    code, _, err = _cli(["data", "inspect", f"fer2013:{tmp_path}", "--no-decode"], capsys)
    _one_line_error(code, err, "'happy/IMG_0042.png'", "split_by_prefix: false")
    code, _, err = _cli(["data", "inspect", f"fer2013:{tmp_path}", "--no-decode",
                         "--option", "split_by_prefix=false"], capsys)  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize(
    ("option", "parts"),
    [
        ("split_seed=3", ("'split_seed' of dataset 'folder' are not accepted", "data.split_seed")),
        ("colour=1", ("Unknown option(s) 'colour'", "Accepted options: class_map")),
        ("on_bad_file=error", ("Unknown option(s) 'on_bad_file'",)),
    ],
)
def test_refused_options_are_one_line_cli_errors(
    option: str, parts: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(3):
        write_image(tmp_path / "happy" / f"{i}.png")
    code, _, err = _cli(["data", "inspect", f"folder:{tmp_path}", "--option", option], capsys)
    _one_line_error(code, err, *parts)


def test_class_names_people_use(tmp_path: Path) -> None:
    names = {"Happiness": "happy", "SAD": "sad", "surprised": "surprise", "Anger": "angry",
             "NEUTRAL": "neutral", "fearful": "fear", "Disgusted": "disgust"}  # fmt: skip
    for folder_name in names:
        write_image(tmp_path / folder_name / "a.png")
    index = index_dataset("folder", str(tmp_path), val_fraction=0.0, test_fraction=0.0)
    got = {Path(r.path).parent.name: CANONICAL[r.label] for r in index.splits["train"]}
    assert got == names
    assert index.labels == [n for n in CANONICAL if n in names.values()]


# ---------------------------------------------------------------------------- ferlab run
@pytest.mark.slow
def test_ferlab_run_over_the_corpus_skip_and_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The corpus as an external test set of a real run: skip scores every valid image and
    reports every bad one and the litter; error stops before training, naming them all."""
    import json

    from ferlab.cli import main

    root = tmp_path / "faces"
    litter = write_corpus(root)
    common = [
        "--set", "train.epochs=1", "--set", "eval.bootstrap=0",
        "--set", f"data.cache_dir={tmp_path / 'cache'}",
        "--set", "models=[{name: ferlab_vgg, kwargs: {widths: [8, 16, 16, 32], depths: [1, 1, 1, 1]}}]",
        "--set", "datasets=[{name: synthetic, path: lab, options: {n_train: 70, n_val: 35, n_test: 35}},"
                 f" {{name: folder, path: '{root}', label: corpus, use: test}}]",
        "--no-progress",
    ]  # fmt: skip
    assert main(["run", "default", "--out", str(tmp_path / "skip"), *common]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    exp = tmp_path / "skip"
    data = json.loads((exp / "data" / "corpus_data.json").read_text())
    assert data["bad_files"] == len(BAD) and data["ignored"] == litter
    assert {Path(b["path"]).name for b in data["bad_file_examples"]} == set(BAD)
    m = json.loads((exp / "eval/synthetic-lab__ferlab_vgg/on_corpus/metrics.json").read_text())
    assert m["n_total"] == len(VALID)  # every valid image scored, the bad ones left out
    html = (exp / "report.html").read_text()
    for name in BAD:
        assert name in html

    code = main(["run", "default", "--out", str(tmp_path / "error"), *common,
                 "--set", "data.on_bad_file=error"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    message = err.split("ferlab: error:", 1)[1]  # after the run's own log lines
    for name, reason in BAD.items():
        assert name in message and reason in message, (name, reason)
    assert not list((tmp_path / "error").glob("runs/*/*"))  # nothing was trained
