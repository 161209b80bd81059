"""decode_record: every image mode, EXIF orientation, box crops, CSV rows and bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adapter_fakes import png_header
from ferlab.data import decode
from ferlab.data.base import Record
from ferlab.data.decode import BadImageError, decode_many, decode_record


def rec(path: Path, box: tuple[int, int, int, int] | None = None) -> Record:
    return Record(path=str(path), label=0, box=box)


def save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


def test_grey_png_resized_and_channels(tmp_path: Path) -> None:
    arr = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # horizontal ramp 0..252
    p = save(Image.fromarray(arr, mode="L"), tmp_path / "ramp.png")
    one = decode_record(rec(p), 32, 1)
    three = decode_record(rec(p), 32, 3)
    assert one.shape == (32, 32, 1) and one.dtype == np.uint8
    assert three.shape == (32, 32, 3)
    # Grey is replicated into R, G, B; the ramp still rises left to right after resizing.
    assert np.array_equal(three[..., 0], one[..., 0]) and np.array_equal(three[..., 2], one[..., 0])
    assert one[0, 0, 0] < 20 and one[0, -1, 0] > 230
    assert np.all(np.diff(one[10, :, 0].astype(int)) >= 0)


def test_rgb_to_luma_and_rgb(tmp_path: Path) -> None:
    p = save(Image.new("RGB", (20, 20), (200, 50, 10)), tmp_path / "c.png")
    grey = decode_record(rec(p), 20, 1)
    rgb = decode_record(rec(p), 20, 3)
    assert np.all(rgb == np.array([200, 50, 10], dtype=np.uint8))
    expected = round(0.299 * 200 + 0.587 * 50 + 0.114 * 10)
    assert abs(int(grey[5, 5, 0]) - expected) <= 1


def test_palette_without_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, 5, 10))  # left half palette index 1 = blue
    p = save(im, tmp_path / "p.png")
    out = decode_record(rec(p), 10, 3)
    assert tuple(out[5, 1]) == (0, 0, 255)
    assert tuple(out[5, 8]) == (255, 0, 0)


def test_palette_with_transparency_composited_on_black(tmp_path: Path) -> None:
    im = Image.new("P", (10, 10), 0)
    im.putpalette([255, 255, 255, 0, 255, 0] + [0] * 762)  # 0 white (transparent), 1 green
    im.paste(1, (0, 0, 5, 10))
    p = save(im, tmp_path / "pt.png", transparency=0)
    assert "transparency" in Image.open(p).info
    out = decode_record(rec(p), 10, 3)
    assert tuple(out[5, 1]) == (0, 255, 0)
    assert tuple(out[5, 8]) == (0, 0, 0)  # transparent white -> the black background


def test_rgba_composited_on_black(tmp_path: Path) -> None:
    arr = np.zeros((10, 30, 4), dtype=np.uint8)
    arr[:, :10] = (255, 255, 255, 255)  # opaque white
    arr[:, 10:20] = (255, 255, 255, 0)  # fully transparent white
    arr[:, 20:] = (255, 255, 255, 128)  # half transparent white
    p = save(Image.fromarray(arr, mode="RGBA"), tmp_path / "a.png")
    out = decode_record(rec(p), 30, 1)[..., 0]
    # Square resize of a 30x10 image keeps the columns: sample the middle of each band.
    assert out[15, 4] == 255
    assert out[15, 15] == 0
    assert abs(int(out[15, 25]) - 128) <= 2


def test_la_mode(tmp_path: Path) -> None:
    arr = np.zeros((8, 8, 2), dtype=np.uint8)
    arr[..., 0] = 200
    arr[:4, :, 1] = 255
    p = save(Image.fromarray(arr, mode="LA"), tmp_path / "la.png")
    out = decode_record(rec(p), 8, 1)[..., 0]
    assert out[1, 1] == 200 and out[6, 6] == 0


def test_cmyk_jpeg(tmp_path: Path) -> None:
    im = Image.new("CMYK", (32, 32), (255, 0, 0, 0))  # pure cyan
    p = save(im, tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    out = decode_record(rec(p), 16, 3).astype(int)
    r, g, b = out[8, 8]
    assert r < 25 and g > 230 and b > 230


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.zeros((16, 48), dtype=np.uint16)
    arr[:, :16] = 65535
    arr[:, 16:32] = 32896  # 128 * 257
    arr[:, 32:] = 1000  # would clip to 255 if cast naively; is 1000/257 ~ 4
    p = save(Image.fromarray(arr), tmp_path / "deep.png")
    assert Image.open(p).mode.startswith("I")
    out = decode_record(rec(p), 48, 1)[..., 0].astype(int)
    assert out[24, 5] == 255
    assert abs(out[24, 24] - 128) <= 1
    assert abs(out[24, 42] - 4) <= 1


def test_one_bit(tmp_path: Path) -> None:
    im = Image.new("1", (16, 16), 0)
    im.paste(1, (0, 0, 8, 16))
    p = save(im, tmp_path / "bw.png")
    out = decode_record(rec(p), 16, 1)[..., 0]
    assert out[8, 2] == 255 and out[8, 13] == 0


def _exif_jpeg(path: Path, size: tuple[int, int], orientation: int, bright: tuple) -> Path:
    """A grey JPEG stored ``size`` (W, H) with a bright block at stored pixels ``bright``."""
    im = Image.new("L", size, 30)
    im.paste(250, bright)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("stored", [(40, 20), (800, 400)])  # small, and large (JPEG draft)
def test_exif_orientation_applied(tmp_path: Path, stored: tuple[int, int]) -> None:
    w, h = stored
    # Bright block in the stored top-left corner; orientation 6 = display rotated 90° clockwise,
    # so the block must end up in the top-right corner of the upright image.
    p = _exif_jpeg(tmp_path / "rot.jpg", stored, 6, (0, 0, w // 4, h // 4))
    out = decode_record(rec(p), 16, 1)[..., 0].astype(int)
    top_right = out[:3, -3:].mean()
    others = [out[:3, :3].mean(), out[-3:, :3].mean(), out[-3:, -3:].mean()]
    assert top_right > 200, out
    assert max(others) < 60


def test_box_crop_is_clipped(tmp_path: Path) -> None:
    arr = np.zeros((40, 40), dtype=np.uint8)
    arr[:, 20:] = 255
    p = save(Image.fromarray(arr, mode="L"), tmp_path / "half.png")
    out = decode_record(rec(p, box=(20, -10, 60, 50)), 8, 1)  # runs past three borders
    assert np.all(out == 255)
    whole = decode_record(rec(p), 8, 1)
    assert whole.min() == 0 and whole.max() == 255


def test_box_outside_image_is_bad(tmp_path: Path) -> None:
    p = save(Image.new("L", (10, 10)), tmp_path / "s.png")
    with pytest.raises(BadImageError, match="outside") as e:
        decode_record(rec(p, box=(20, 20, 30, 30)), 8, 1)
    assert e.value.path == str(p)


def test_box_on_large_jpeg_with_draft(tmp_path: Path) -> None:
    # A bright face box on a big photo: the decoder downscales by DCT and scales the box.
    im = Image.new("RGB", (800, 800), (20, 20, 20))
    im.paste((240, 240, 240), (600, 40, 760, 200))
    p = save(im, tmp_path / "photo.jpg", quality=95)
    out = decode_record(rec(p, box=(600, 40, 760, 200)), 16, 3).astype(int)
    assert out[2:-2, 2:-2].min() > 200
    # A box just outside the bright block stays dark.
    dark = decode_record(rec(p, box=(100, 100, 260, 260)), 16, 3)
    assert dark.max() < 60


def test_csv_pixel_source() -> None:
    values = np.arange(2304) % 256
    r = Record(path="fer2013.csv", label=3, row=7, pixels=" ".join(map(str, values)))
    out = decode_record(r, 48, 1)
    assert np.array_equal(out[..., 0], values.reshape(48, 48).astype(np.uint8))
    assert decode_record(r, 24, 3).shape == (24, 24, 3)


@pytest.mark.parametrize(
    ("pixels", "reason"),
    [("1 2 3", "3 values"), ("1 2 x 4", "non-integer"), (" ".join(["300"] * 2304), "0..255")],
)
def test_csv_bad_rows(pixels: str, reason: str) -> None:
    r = Record(path="fer2013.csv", label=0, row=12, pixels=pixels)
    with pytest.raises(BadImageError, match=reason) as e:
        decode_record(r, 48, 1)
    assert e.value.path == "fer2013.csv#row12"


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(BadImageError, match="empty") as e:
        decode_record(rec(p), 48, 1)
    assert e.value.path == str(p) and "0 bytes" in e.value.reason
    assert str(p) in str(e.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L")
    full = tmp_path / f"full.{fmt.lower()}"
    noise.save(full, format=fmt)
    data = full.read_bytes()
    p = tmp_path / f"cut.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError) as e:
        decode_record(rec(p), 48, 1)
    assert e.value.path == str(p)
    assert "decode" in e.value.reason or "truncated" in e.value.reason


def test_text_file_named_jpg(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    with pytest.raises(BadImageError, match="not an image") as e:
        decode_record(rec(p), 48, 1)
    assert e.value.path == str(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match="not found"):
        decode_record(rec(tmp_path / "gone.png"), 48, 1)


def test_decompression_bomb_header(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header(60_000, 60_000))  # 3.6 G pixels claimed by 100 bytes
    with pytest.raises(BadImageError, match="pixel") as e:
        decode_record(rec(p), 48, 1)
    assert e.value.path == str(p)


def test_pixel_limit_is_ours_and_configurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "big.png"
    p.write_bytes(png_header(9000, 9000))  # 81 MP: under PIL's own limit, over ours
    with pytest.raises(
        BadImageError, match=r"9000 x 9000 = 81,000,000 pixels, over the pixel limit of 50,000,000"
    ):
        decode_record(rec(p), 48, 1)
    small = save(Image.new("L", (20, 20)), tmp_path / "small.png")
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImageError, match="20 x 20 = 400 pixels"):
        decode_record(rec(small), 48, 1)


def test_synthetic_draw_uses_render(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def render(domain: str, seed: int, size: int, channels: int) -> np.ndarray:
        calls.append((domain, seed, size, channels))
        return np.full((size, size, channels), seed, dtype=np.uint8)

    from ferlab.data import base

    base.dataset_traits("synthetic")  # the built-in adapters are registered
    traits = base.DatasetTraits(generated=True, render=render)
    monkeypatch.setitem(base._TRAITS, "synthetic", traits)
    r = Record(path="synthetic", label=1, draw=("wild", 7))
    out = decode_record(r, 12, 3)
    assert calls == [("wild", 7, 12, 3)] and out.shape == (12, 12, 3) and out[0, 0, 0] == 7

    flat = base.DatasetTraits(
        generated=True, render=lambda d, s, size, ch: np.zeros((size, size), dtype=np.uint8)
    )
    monkeypatch.setitem(base._TRAITS, "synthetic", flat)
    with pytest.raises(BadImageError, match="render"):
        decode_record(r, 12, 3)


def _mixed_records(tmp_path: Path, n: int) -> list[Record]:
    records = []
    for i in range(n):
        p = tmp_path / f"img{i:03d}.png"
        Image.new("L", (10, 10), i * 7 % 256).save(p)
        records.append(rec(p))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    records.insert(n // 2, rec(bad))
    return records


def test_decode_many_serial_and_pool_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = _mixed_records(tmp_path, 30)
    serial = np.zeros((len(records), 8, 8, 1), dtype=np.uint8)
    bad_serial = decode_many(records, 8, 1, serial, workers=1)
    monkeypatch.setattr(decode, "POOL_THRESHOLD", 5)
    monkeypatch.setattr(decode, "POOL_CHUNK", 4)
    pooled = np.zeros_like(serial)
    seen: list[int] = []
    bad_pool = decode_many(records, 8, 1, pooled, workers=2, progress=lambda d, n: seen.append(d))
    assert np.array_equal(serial, pooled)
    assert [b.path for b in bad_pool] == [b.path for b in bad_serial] == [str(tmp_path / "bad.jpg")]
    assert seen[-1] == len(records)
    assert pooled[3, 0, 0, 0] == 3 * 7  # rows stay in record order


def test_bad_image_error_pickles() -> None:
    import pickle

    e = pickle.loads(pickle.dumps(BadImageError("a.jpg", "broken")))
    assert (e.path, e.reason) == ("a.jpg", "broken")


# --- open_image: the one guarded way to open an image ----------------------------------------


def test_every_dataset_image_is_opened_through_open_image() -> None:
    """``Image.open`` appears once in ``ferlab.data``: inside ``decode.open_image``; everything
    that reads a dataset's images (decoding, the colour guess, ExpW's photo sizes) calls it."""
    data = Path(decode.__file__).resolve().parent
    calls = {
        str(p.relative_to(data)): p.read_text().count("Image.open(")
        for p in data.rglob("*.py")
        if "Image.open(" in p.read_text()
    }
    assert calls == {"decode.py": 1}, f"use ferlab.data.decode.open_image instead: {calls}"


@pytest.mark.parametrize(("side", "via"), [(30_000, "PIL's bomb error"), (9_000, "our limit")])
def test_open_image_refuses_a_bomb_naming_the_pixel_limit(
    tmp_path: Path, side: int, via: str
) -> None:
    p = tmp_path / "bomb.png"
    p.write_bytes(png_header(side, side))
    with pytest.raises(BadImageError) as e:
        decode.open_image(p)
    assert e.value.path == str(p)
    assert f"over the pixel limit of {decode.MAX_IMAGE_PIXELS:,}" in e.value.reason, via
    with pytest.raises(BadImageError, match="over the pixel limit"):
        decode_record(rec(p), 48, 1)


def test_open_image_links_folders_and_pipes(tmp_path: Path) -> None:
    good = save(Image.new("L", (4, 4)), tmp_path / "good.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "link.png").symlink_to(good)
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    expected = {
        "loop.png": "symbolic link loop",
        "gone.png": "dangling symbolic link",
        "dir.png": "is a folder",
        "pipe.png": "not a regular file",
        "missing.png": "file not found",
    }
    for name, reason in expected.items():
        with pytest.raises(BadImageError) as e:
            decode_record(rec(tmp_path / name), 8, 1)  # never blocks on the pipe
        assert e.value.path == str(tmp_path / name) and e.value.reason.startswith(reason)
    assert decode_record(rec(tmp_path / "link.png"), 4, 1).shape == (4, 4, 1)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway")
def test_open_image_unreadable_file(tmp_path: Path) -> None:
    p = save(Image.new("L", (4, 4)), tmp_path / "locked.png")
    p.chmod(0)
    try:
        with pytest.raises(BadImageError, match="permission denied"):
            decode_record(rec(p), 8, 1)
    finally:
        p.chmod(0o644)


def test_float_tiff_animated_gif_and_extreme_shapes(tmp_path: Path) -> None:
    ramp = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    f = save(Image.fromarray(ramp, mode="F"), tmp_path / "f.tif")
    assert Image.open(f).mode == "F"
    out = decode_record(rec(f), 8, 1)[..., 0].astype(int)
    assert out[0, 0] == 0 and out[-1, -1] == 255  # 0..1 floats are scaled to 0..255
    frames = [Image.new("L", (8, 8), v) for v in (200, 10)]
    g = tmp_path / "anim.gif"
    frames[0].save(g, save_all=True, append_images=frames[1:])
    assert getattr(Image.open(g), "n_frames", 1) == 2
    assert abs(int(decode_record(rec(g), 8, 1)[4, 4, 0]) - 200) <= 2  # the first frame
    one = save(Image.new("L", (1, 1), 77), tmp_path / "one.png")
    assert np.all(decode_record(rec(one), 16, 1) == 77)
    tall = save(Image.new("RGB", (10, 2000), (0, 0, 255)), tmp_path / "tall.png")
    assert tuple(decode_record(rec(tall), 16, 3)[8, 8]) == (0, 0, 255)


def test_png_named_jpg_decodes(tmp_path: Path) -> None:
    p = tmp_path / "really_a_png.jpg"
    Image.new("L", (6, 6), 123).save(p, format="PNG")
    assert np.all(decode_record(rec(p), 6, 1) == 123)
