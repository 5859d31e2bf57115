"""Decoding for detection: every Pillow mode to RGB, draft-mode JPEG, stop-early PNG, and a clear error per bad file."""

import os

import numpy as np
import pytest
from PIL import Image

from qrjax.data import load_image
from qrjax.data.decode import ImageReadError, decode


@pytest.fixture(scope="module")
def photo():
    from qrjax.data import bundled_images

    return bundled_images(("astronaut",))["astronaut"]  # 512 x 512


def test_png_stops_after_the_rows_it_needs(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.png")
    full = decode(tmp_path / "a.png")
    part = decode(tmp_path / "a.png", rows=100)
    assert full.rows.shape == (512, 512, 3) and part.rows.shape == (100, 512, 3)
    np.testing.assert_array_equal(part.rows, full.rows[:100])
    with Image.open(tmp_path / "a.png") as im:
        np.testing.assert_array_equal(full.rows, np.asarray(im.convert("RGB")))
    # rows chosen from the header size, before decoding
    seen = []
    r = decode(tmp_path / "a.png", rows=lambda size: seen.append(size) or 64)
    assert seen == [(512, 512)] and r.rows.shape[0] == 64


def test_jpeg_draft_mode(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=95)
    d = decode(tmp_path / "a.jpg", min_size=256)
    assert d.size == (256, 256) and d.source_size == (512, 512) and d.rows.shape == (256, 256, 3)
    assert decode(tmp_path / "a.jpg", min_size=300).size == (512, 512)  # a 1/2 scale would go below 300
    ref = np.asarray(Image.fromarray(decode(tmp_path / "a.jpg").rows).resize((256, 256), Image.BOX), np.float64)
    assert np.abs(d.rows - ref).mean() < 4  # the DCT-domain reduction is a good downscale


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_modes_become_rgb(tmp_path, photo, mode):
    if mode == "I;16":
        grey = photo[..., 1].astype(np.uint16) * 257  # 16-bit: 8-bit values scaled to the full 16-bit range
        im = Image.fromarray(grey)
        assert im.mode.startswith("I;16")
    else:
        im = Image.fromarray(photo).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path)
    got = decode(path).rows
    assert got.dtype == np.uint8 and got.shape == (512, 512, 3)
    if mode == "I;16":
        np.testing.assert_array_equal(got[..., 0], photo[..., 1])  # not clipped at 255
    elif mode in ("L", "LA"):
        np.testing.assert_array_equal(got[..., 0], got[..., 2])
    elif mode == "RGBA":
        np.testing.assert_array_equal(got, photo)


def test_bad_files_name_the_file_and_the_problem(tmp_path, photo):
    Image.fromarray(photo).save(tmp_path / "ok.png")
    Image.fromarray(photo).save(tmp_path / "ok.jpg")
    data_png, data_jpg = (tmp_path / "ok.png").read_bytes(), (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.png").write_bytes(data_png[: len(data_png) // 2])
    (tmp_path / "cut.jpg").write_bytes(data_jpg[: len(data_jpg) // 2])
    (tmp_path / "garbage.png").write_bytes(data_png[:100] + bytes(5000) + data_png[-12:])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    cases = {"cut.png": "truncated PNG", "cut.jpg": "truncated JPEG", "garbage.png": "cannot be decoded",
             "empty.png": "empty file", "text.jpg": "not an image", "missing.png": "no such file",
             "folder.png": "is a directory"}
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=problem) as err:
            decode(tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_image(tmp_path / "missing.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path, photo):
    p = tmp_path / "locked.png"
    Image.fromarray(photo).save(p)
    p.chmod(0)
    with pytest.raises(ImageReadError, match="permission denied"):
        decode(p)
