import colorsys
import io
import re
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageOps
from scipy import ndimage

from qrjax.clip import data
from qrjax.clip.data import (CSVPairs, SyntheticScenes, WebDatasetPairs, batch_indices, epoch_of, open_pairs,
                             retrieval_set, zero_shot_set)

# Written out here, not read from the module: what the captions must say.
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = {"circle": 0, "circles": 0, "square": 1, "squares": 1, "triangle": 2, "triangles": 2, "cross": 3,
          "crosses": 3}
COUNT_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
POSITIONS = ["left", "right", "top", "bottom", "middle"]
OBJECT_RE = r"(two|three|an?) (red|green|blue|yellow|purple|orange) \w+"
POSITION_RE = r"(on|at|in) the (left|right|top|bottom|middle)"
HUES = {"red": 0, "orange": 30, "yellow": 55, "green": 125, "blue": 225, "purple": 275}  # degrees


def parse(caption: str) -> tuple[int, int, int, int]:
    """(count, colour, shape, position) read back from a caption's words."""
    w = re.findall(r"[a-z]+", caption)
    (i,) = [k for k, x in enumerate(w) if x in COLOURS]
    (position,) = [POSITIONS.index(x) for x in w if x in POSITIONS]
    count = COUNT_WORDS[w[i - 1]]
    assert (count == 1) == (w[i + 1] in ("circle", "square", "triangle", "cross")), caption  # number agreement
    return count, COLOURS.index(w[i]), SHAPES[w[i + 1]], position


def bright(images):
    """bool[..., S, S]: shape pixels (the backgrounds are dark)."""
    return images.max(axis=-1) > 110


def dominant_colour(image) -> str:
    rgb = np.median(image[bright(image)], axis=0) / 255
    hue = colorsys.rgb_to_hsv(*rgb)[0] * 360
    return min(HUES, key=lambda c: min(abs(hue - HUES[c]), 360 - abs(hue - HUES[c])))


def record(attributes) -> list[tuple[int, int, int, int]]:
    return [tuple(int(v) for v in a) for a in attributes.tolist()]


# --------------------------------------------------------------------------------------------- synthetic scenes


def test_synthetic_is_deterministic_and_order_independent():
    a, b = SyntheticScenes(200, 16, seed=5, noise=0.1), SyntheticScenes(200, 16, seed=5, noise=0.1)
    idx = np.array([7, 3, 150, 3])
    assert (a.images(idx) == b.images(idx)).all()
    assert a.captions(idx) == b.captions(idx) and a.hard_negatives(idx) == b.hard_negatives(idx)
    assert (a.noisy == b.noisy).all()
    # a sample's picture does not depend on the batch it is drawn in
    assert (a.images(np.arange(8))[[7, 3]] == a.images([7, 3])).all()
    c = SyntheticScenes(200, 16, seed=6)
    assert a.captions(np.arange(200)) != c.captions(np.arange(200))
    assert not (a.images(idx) == c.images(idx)).all()
    val = SyntheticScenes(200, 16, seed=5, split="val")
    assert not (val.images(idx) == a.images(idx)).all()
    assert a.images([]).shape == (0, 16, 16, 3) and a.size == 200 and a.bad_samples == 0 and a.bad_names == []
    with pytest.raises(IndexError, match="0..199"):
        a.images([200])
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(10, 16, split="test")


def test_held_out_pairs_never_in_training_and_every_word_still_trained():
    held = set(data.HELD_OUT)
    # every shape held out twice; neither word alone tells the classes apart
    assert sorted(s for _, s in held) == sorted(["circle", "square", "triangle", "cross"] * 2)
    assert any(sum(c == c2 for c2, _ in held) > 1 for c, _ in held)
    for c, s in held:
        assert sum(c == c2 for c2, _ in held) > 1 or sum(s == s2 for _, s2 in held) > 1
    scenes = SyntheticScenes(3000, 16, seed=1)
    attrs = record(scenes.attributes(np.arange(3000)))
    pairs = {(data.COLOURS[c], data.SHAPES[s]) for _, c, s, _ in attrs}
    assert not pairs & held
    assert len(pairs) == 24 - len(held)
    assert {c for c, _ in pairs} == set(COLOURS) and len({s for _, s in pairs}) == 4
    assert {n for n, *_ in attrs} == {1, 2, 3} and {p for *_, p in attrs} == set(range(5))
    # the captions say what the attributes say, and never name a held-out pair
    for caption, truth in zip(scenes.captions(np.arange(3000)), attrs):
        assert parse(caption) == truth
    templates = {re.sub(POSITION_RE, "P", re.sub(OBJECT_RE, "X", c)) for c in scenes.captions(np.arange(3000))}
    assert len(templates) >= 4 and "a photo of X P." in templates


def test_noise_swaps_exactly_the_requested_number_of_captions_for_different_ones():
    scenes = SyntheticScenes(1000, 16, seed=2, noise=0.137)
    idx = np.arange(1000)
    assert scenes.noisy.dtype == bool and scenes.noisy.sum() == 137
    noisy, clean = scenes.captions(idx), scenes.clean_captions(idx)
    for i in idx:
        assert (noisy[i] != clean[i]) == scenes.noisy[i]
    assert set(noisy) <= set(clean)  # a swapped caption is another sample's
    assert SyntheticScenes(1000, 16, seed=2).noisy.sum() == 0
    assert SyntheticScenes(1000, 16, seed=2).clean_captions(idx) == clean


def test_hard_negatives_differ_in_exactly_one_attribute():
    scenes = SyntheticScenes(400, 16, seed=4, noise=0.3)
    idx = np.arange(400)
    changed = []
    for negative, truth in zip(scenes.hard_negatives(idx), record(scenes.attributes(idx))):
        diff = [k for k, (x, y) in enumerate(zip(parse(negative), truth)) if x != y]
        assert len(diff) == 1, (negative, truth)
        changed += diff
        _, c, s, _ = parse(negative)
        assert (COLOURS[c], data.SHAPES[s]) not in data.HELD_OUT
    assert set(changed) == {0, 1, 2, 3}


def test_images_show_the_named_colour():
    scenes = SyntheticScenes(60, 32, seed=7)
    images = scenes.images(np.arange(60))
    assert images.dtype == np.uint8 and images.shape == (60, 32, 32, 3)
    for image, (_, colour, _, _) in zip(images, record(scenes.attributes(np.arange(60)))):
        assert dominant_colour(image) == COLOURS[colour]
        background = image[~bright(image)]
        assert background.mean() < 70  # dark,
        assert background.std() > 3  # textured


def test_images_show_the_named_count_in_the_named_place():
    scenes = SyntheticScenes(80, 64, seed=8)
    images = scenes.images(np.arange(80))
    for image, (count, _, _, position) in zip(images, record(scenes.attributes(np.arange(80)))):
        mask = bright(image)
        assert ndimage.label(mask)[1] == count  # separate shapes, none touching
        y, x = (np.argwhere(mask).mean(axis=0) + 0.5) / 64
        where = {"left": x < 0.3, "right": x > 0.7, "top": y < 0.3, "bottom": y > 0.7,
                 "middle": 0.3 < x < 0.7 and 0.3 < y < 0.7}
        assert [p for p, yes in where.items() if yes] == [POSITIONS[position]], (x, y)


def shape_of(component: np.ndarray) -> int:
    """Which shape a bool mask of one component is, from its fill of the bounding box and its profile."""
    rows = component[component.any(axis=1)][:, component.any(axis=0)]
    fill = rows.mean()
    if fill > 0.85:
        return 1  # square
    if fill > 0.68:
        return 0  # circle
    h = len(rows)
    top, bottom = rows[h // 5].sum(), rows[h - 1 - h // 5].sum()
    return 2 if bottom > 2 * top else 3  # triangle widens downwards; a cross's arms are alike


def test_large_images_show_the_named_shape():
    scenes = SyntheticScenes(24, 128, seed=9)
    for image, (count, _, shape, _) in zip(scenes.images(np.arange(24)), record(scenes.attributes(np.arange(24)))):
        labels, found = ndimage.label(bright(image))
        assert found == count
        assert [shape_of(labels == k) for k in range(1, found + 1)] == [shape] * count


def test_zero_shot_set_labels_match_the_class_names():
    images, labels, names = zero_shot_set(32, per_class=5, seed=1)
    k = len(data.HELD_OUT)
    assert images.shape == (5 * k, 32, 32, 3) and images.dtype == np.uint8
    assert names == [f"{c} {s}" for c, s in data.HELD_OUT] and names[0] == "red circle"
    assert np.bincount(labels).tolist() == [5] * k
    for image, label in zip(images, labels):
        assert dominant_colour(image) == names[label].split()[0]
    assert all("{}" in t for t in data.PROMPT_TEMPLATES) and len(data.PROMPT_TEMPLATES) >= 3
    again = zero_shot_set(32, per_class=5, seed=1)
    assert (again[0] == images).all() and not (zero_shot_set(32, per_class=5, seed=2)[0] == images).all()


def test_retrieval_set_has_one_image_per_distinct_training_caption():
    images, captions = retrieval_set(16, seed=0)
    assert images.shape == (len(captions), 16, 16, 3)
    assert len(set(captions)) == len(captions) == 3 * (24 - len(data.HELD_OUT)) * 5
    parsed = [parse(c) for c in captions]
    assert len(set(parsed)) == len(parsed)
    assert not {(COLOURS[c], data.SHAPES[s]) for _, c, s, _ in parsed} & set(data.HELD_OUT)
    assert len({re.sub(POSITION_RE, "P", re.sub(OBJECT_RE, "X", c)) for c in captions}) == 1  # one template


# --------------------------------------------------------------------------------------------- batches


def test_batch_indices_cover_each_sample_once_per_epoch_and_reshuffle():
    size, b = 100, 10
    epoch0 = np.concatenate([batch_indices(s, b, size, seed=3) for s in range(10)])
    epoch1 = np.concatenate([batch_indices(s, b, size, seed=3) for s in range(10, 20)])
    assert epoch0.dtype == np.int32 and batch_indices(0, b, size, 3).shape == (b,)
    assert sorted(epoch0) == list(range(size)) == sorted(epoch1)
    assert (epoch0 != epoch1).any()
    assert (batch_indices(13, b, size, seed=3) == epoch1[30:40]).all()  # a resumed run draws the same batch
    assert (batch_indices(13, b, size, seed=4) != epoch1[30:40]).any()
    assert [epoch_of(s, b, size) for s in (0, 9, 10, 25)] == [0, 0, 1, 2]
    # incomplete tail dropped: 103 samples, batches of 10 -> 10 steps of distinct ids per epoch
    tail = np.concatenate([batch_indices(s, b, 103, seed=0) for s in range(10)])
    assert len(set(tail.tolist())) == 100 and tail.max() < 103 and epoch_of(10, b, 103) == 1
    batch = batch_indices(0, b, size, 3)
    batch[:] = -1  # the caller's copy: the cached permutation is untouched
    assert (batch_indices(0, b, size, 3) == epoch0[:10]).all()
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(0, 20, 10, 0)


# --------------------------------------------------------------------------------------------- user data


def write_image(path, size=(40, 30), colour=(200, 30, 30), fmt=None):
    """A picture with a colour gradient (so crops and resizes are visible)."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    arr = (np.array(colour) * (0.4 + 0.6 * x) * (0.5 + 0.5 * y)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def expected(path_or_bytes, s):
    """CLIP's preprocessing by Pillow's own fit: centre crop to a square, bicubic resize."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(ImageOps.fit(im.convert("RGB"), (s, s), Image.Resampling.BICUBIC), np.int16)


def close(a, b):
    d = np.abs(a.astype(np.int16) - b)
    return d.mean() < 2 and d.max() <= 16


def test_csv_relative_paths_default_keys_and_preprocessing(tmp_path):
    a = write_image(tmp_path / "imgs" / "a.png", (60, 30))
    b = write_image(tmp_path / "imgs" / "b.jpg", (30, 50), (30, 200, 30))
    c = write_image(tmp_path / "c.png", (16, 16), (30, 30, 200))
    grey = tmp_path / "imgs" / "g.png"
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(grey)
    (tmp_path / "pairs.csv").write_text('filepath,title\nimgs/a.png,"a red, wide image"\nimgs/b.jpg, green tall '
                                        f'\n{c},blue square\nimgs/g.png,grey\n\n')
    pairs = CSVPairs(tmp_path / "pairs.csv", 16)
    assert pairs.size == 4 and pairs.bad_samples == 0 and pairs.noisy is None
    assert pairs.captions([0, 1, 2, 3]) == ["a red, wide image", "green tall", "blue square", "grey"]
    images = pairs.images(np.arange(4))
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    for image, path in zip(images, (a, b, c, grey)):
        assert close(image, expected(path, 16))
    assert (np.abs(images[3].astype(int) - 128) <= 1).all()  # grey replicated to RGB


def test_csv_custom_keys_and_separators(tmp_path):
    write_image(tmp_path / "a.png")
    (tmp_path / "semi.csv").write_text("id;image;caption\n1;a.png;one picture\n2;a.png;the same\n")
    pairs = open_pairs(tmp_path / "semi.csv", 8, csv_img_key="image", csv_caption_key="caption")
    assert isinstance(pairs, CSVPairs) and pairs.captions([1]) == ["the same"]
    (tmp_path / "t.tsv").write_text("title\tfilepath\nwith, commas; and semicolons\ta.png\n")
    assert open_pairs(tmp_path / "t.tsv", 8).captions([0]) == ["with, commas; and semicolons"]
    (tmp_path / "t.txt").write_text("title\tfilepath\ntabbed text\ta.png\n")
    assert open_pairs(tmp_path / "t.txt", 8).captions([0]) == ["tabbed text"]
    (tmp_path / "forced.csv").write_text("filepath|title\na.png|piped\n")
    assert CSVPairs(tmp_path / "forced.csv", 8, separator="|").captions([0]) == ["piped"]


def test_csv_missing_column_names_the_file_key_and_columns(tmp_path):
    (tmp_path / "x.csv").write_text("path,caption\na.png,hello\n")
    with pytest.raises(ValueError) as err:
        CSVPairs(tmp_path / "x.csv", 8)
    msg = str(err.value)
    assert "x.csv" in msg and "'filepath'" in msg and "'path'" in msg and "'caption'" in msg
    assert "--csv-img-key" in msg and "--csv-caption-key" in msg
    with pytest.raises(ValueError, match="'title'"):
        CSVPairs(tmp_path / "x.csv", 8, img_key="path")


def test_csv_bad_rows_are_counted_named_and_skipped(tmp_path):
    write_image(tmp_path / "ok.png")
    write_image(tmp_path / "ok2.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    jpeg = (tmp_path / "ok2.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "pairs.csv").write_text("filepath,title\nok.png,first\nmissing.png,gone\ncorrupt.jpg,broken\n"
                                        "ok2.jpg,   \ncut.jpg,truncated\nok2.jpg,second\n,no image\nshort\n")
    pairs = CSVPairs(tmp_path / "pairs.csv", 8)
    assert pairs.size == 2 and pairs.captions([0, 1]) == ["first", "second"]
    assert pairs.bad_samples == 6 and len(pairs.bad_names) == 6
    names = "\n".join(pairs.bad_names)
    for expected_name in ("missing.png (line 3): no such file", "corrupt.jpg (line 4)",
                          "ok2.jpg (line 5): empty caption",
                          "cut.jpg (line 6)", "line 8: empty image path", "line 9: 1 fields"):
        assert expected_name in names
    assert pairs.images([0, 1]).shape == (2, 8, 8, 3)
    (tmp_path / "bad.csv").write_text("filepath,title\nmissing.png,gone\ncorrupt.jpg,broken\n")
    with pytest.raises(ValueError, match=r"bad.csv.*none of its 2 samples.*missing.png"):
        CSVPairs(tmp_path / "bad.csv", 8)
    (tmp_path / "latin1.csv").write_bytes("filepath,title\nok.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.csv.*UTF-8"):
        CSVPairs(tmp_path / "latin1.csv", 8)


def test_csv_bad_names_keep_the_first_twenty(tmp_path):
    write_image(tmp_path / "ok.png")
    rows = "".join(f"gone{i}.png,x\n" for i in range(30))
    (tmp_path / "many.csv").write_text("filepath,title\nok.png,fine\n" + rows)
    pairs = CSVPairs(tmp_path / "many.csv", 8)
    assert pairs.bad_samples == 30 and len(pairs.bad_names) == 20 and pairs.bad_names[0].startswith("gone0.png")


def image_bytes(size, colour, fmt):
    buf = io.BytesIO()
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    arr = (np.array(colour) * (0.4 + 0.6 * x) * np.ones((h, 1, 1))).astype(np.uint8)
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_webdataset_shard_groups_members_by_key_and_names_bad_samples(tmp_path):
    red = image_bytes((48, 32), (220, 40, 40), "JPEG")
    green = image_bytes((20, 30), (40, 200, 40), "PNG")
    members = [("000.jpg", red), ("000.txt", b"a red picture"), ("000.json", b"{}"),
               ("sub/001.png", green), ("sub/001.txt", "gr\u00fcn  picture\n".encode()),
               ("002.jpg", red),  # no caption
               ("003.txt", b"no image"),
               ("004.jpg", b"\xff\xd8\xff garbage"), ("004.txt", b"corrupt image"),
               ("005.jpeg", red), ("005.txt", b"  \n"),
               ("006.txt", b"\xff\xfe bad utf8"), ("006.webp", red),
               ("007.seg.png", green), ("007.txt", b"multi-dot extension is not the image"),
               ("./008.JPG", red), ("008.txt", b"upper-case extension")]
    pairs = WebDatasetPairs(write_tar(tmp_path / "shard-0.tar", members), 16)
    assert pairs.size == 3
    assert pairs.captions([0, 1, 2]) == ["a red picture", "gr\u00fcn picture", "upper-case extension"]
    images = pairs.images([1, 0, 2])
    assert close(images[1], expected(red, 16)) and close(images[0], expected(green, 16))
    assert (images[2] == images[1]).all()
    assert pairs.bad_samples == 6
    names = "\n".join(pairs.bad_names)
    for name in ("shard-0.tar:002: no caption", "shard-0.tar:003: no image", "shard-0.tar:004: image",
                 "shard-0.tar:005: empty caption", "shard-0.tar:006: caption is not UTF-8",
                 "shard-0.tar:007: no image"):
        assert name in names


def test_webdataset_folder_of_shards_in_name_order(tmp_path):
    blue = image_bytes((16, 16), (40, 40, 220), "PNG")
    write_tar(tmp_path / "b.tar", [("x.png", blue), ("x.txt", b"second shard")])
    write_tar(tmp_path / "a.tar", [("x.png", blue), ("x.txt", b"first shard"), ("y.png", blue),
                                   ("y.txt", b"first shard again")])
    (tmp_path / "notes.md").write_text("not a shard")
    pairs = open_pairs(tmp_path, 8)
    assert isinstance(pairs, WebDatasetPairs) and pairs.size == 3
    assert pairs.captions(np.arange(3)) == ["first shard", "first shard again", "second shard"]
    assert pairs.images(np.array([2, 0])).shape == (2, 8, 8, 3)
    (tmp_path / "c.tar").write_bytes(b"this is not a tar file at all" * 30)
    damaged = WebDatasetPairs(tmp_path, 8)
    assert damaged.size == 3 and damaged.bad_samples == 1 and damaged.bad_names[0].startswith("c.tar: unreadable")


def test_webdataset_without_usable_samples_is_an_error(tmp_path):
    write_tar(tmp_path / "s.tar", [("a.txt", b"caption only")])
    with pytest.raises(ValueError, match=r"none of its 1 samples.*s.tar:a: no image"):
        WebDatasetPairs(tmp_path / "s.tar", 8)


def test_open_pairs_dispatch_and_errors(tmp_path):
    synthetic = open_pairs("synthetic", 16, num_samples=64, noise=0.25, seed=2)
    assert isinstance(synthetic, SyntheticScenes) and synthetic.size == 64 and synthetic.noisy.sum() == 16
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        open_pairs(tmp_path / "nowhere.csv", 16)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"x.json.*not a format.*synthetic.*\.csv.*\.tar"):
        open_pairs(tmp_path / "x.json", 16)
    (tmp_path / "plain.txt").write_text("no tabs here\n")
    with pytest.raises(ValueError, match="plain.txt"):
        open_pairs(tmp_path / "plain.txt", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*without .tar shards"):
        open_pairs(tmp_path / "empty", 16)
    write_image(tmp_path / "a.png")
    (tmp_path / "p.csv").write_text("filepath,title\na.png,x\n")
    with pytest.raises(ValueError, match="noise"):
        open_pairs(tmp_path / "p.csv", 16, noise=0.1)
