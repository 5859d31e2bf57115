import numpy as np
import pytest
from PIL import Image

from qrjax.data import (HELD_OUT, ImageFolderSource, bundled_images, bundled_source, image_source, load_image,
                        scan_inputs)


def test_bundled_images_are_rgb_and_split_disjointly():
    imgs = bundled_images()
    assert len(imgs) >= 12
    for name, im in imgs.items():
        assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 and min(im.shape[:2]) >= 256, name
    train, val = bundled_source("train"), bundled_source("val")
    assert set(val.names) == set(HELD_OUT) and not set(train.names) & set(val.names)


def test_sampling_is_deterministic_in_the_seed():
    src = bundled_source("train")
    a = src.sample(np.random.default_rng(3), 32, 4)
    b = src.sample(np.random.default_rng(3), 32, 4)
    assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)


def test_folder_source_reads_images_and_names_bad_files(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "grey.jpg")
    src = ImageFolderSource(tmp_path)
    assert len(src) == 5
    out = src.sample(np.random.default_rng(0), 24, 6)
    assert out.shape == (6, 24, 24, 3)  # the 20-px grey image is scaled up to the crop size
    assert len(image_source(tmp_path, "val", val_fraction=0.5)) + len(image_source(tmp_path, "train", 0.5)) == 5
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    with pytest.raises(NotADirectoryError, match="nowhere"):
        ImageFolderSource(tmp_path / "nowhere")


def test_scan_inputs_expands_in_order_and_names_what_it_passes_over(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("a/1.png", "a/b/2.JPG", "a/notes.txt", "a/b/photo.heic", "c.png"):
        (tmp_path / p).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# inputs\nc.png\n\n/abs/missing.png\n")
    got = scan_inputs([tmp_path / "a", tmp_path / "list.txt", tmp_path / "gone.png"])
    assert got.paths == [str(tmp_path / "a/1.png"), str(tmp_path / "a/b/2.JPG"), str(tmp_path / "c.png"),
                         "/abs/missing.png", str(tmp_path / "gone.png")]
    assert got.skipped == [str(tmp_path / "a/b/photo.heic"), str(tmp_path / "a/notes.txt")]


def test_folder_source_names_the_files_it_passes_over(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = ImageFolderSource(tmp_path)
    assert src.names == ["x.png"] and src.skipped == [str(tmp_path / "notes.txt")]
    (tmp_path / "x.png").unlink()
    with pytest.raises(ValueError, match="no image files .* 1 other file"):
        ImageFolderSource(tmp_path)
