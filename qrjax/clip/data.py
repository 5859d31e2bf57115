"""Image-caption pairs for CLIP training: synthetic captioned scenes (rendered with Pillow, nothing downloaded) and
the formats CLIP users have (a CSV/TSV of image paths and captions, webdataset .tar shards).

Every source is a `PairSource`: `size` usable pairs with ids 0..size-1, `images(idx) -> uint8[B, S, S, 3]`,
`captions(idx) -> list[str]`, `bad_samples` / `bad_names` (the pairs passed over at open, counted and named, never
fatal), and `noisy` (synthetic only: which captions were swapped). `batch_indices` draws the training batches:
a fresh permutation per epoch, deterministic in the step so that a resumed run sees the same batches.

The synthetic scenes: one to three shapes of one colour and kind in a named region of a dark textured picture,
captioned from a few templates ("a photo of two red circles on the left."). `HELD_OUT` colour-shape pairs never
appear in training; `zero_shot_set` classifies images of exactly those pairs (compositional zero-shot transfer) and
`retrieval_set` holds one image per distinct training caption.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import sys
import tarfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from qrjax.data.decode import MAX_PIXELS, to_rgb

# ---------------------------------------------------------------------------------------------------------------
# Batches


def _steps_per_epoch(batch_size: int, size: int) -> int:
    if batch_size < 1 or size < batch_size:
        raise ValueError(f"batch_size {batch_size} does not fit a data set of {size} samples (need 1 <= batch_size "
                         f"<= size)")
    return size // batch_size


def epoch_of(step: int, batch_size: int, size: int) -> int:
    """The epoch a training step falls in: step // (size // batch_size) (incomplete tail batches are dropped)."""
    return step // _steps_per_epoch(batch_size, size)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(size: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(size).astype(np.int32)
    perm.flags.writeable = False
    return perm


def batch_indices(step: int, batch_size: int, size: int, seed: int) -> np.ndarray:
    """int32[batch_size]: the sample ids of a training step. Epoch e = step // (size // batch_size) walks the
    permutation of range(size) drawn from np.random.default_rng([seed, e]) in slices of batch_size; the incomplete
    tail is dropped. A pure function of its arguments, so a resumed run draws the same batches."""
    if step < 0 or seed < 0:
        raise ValueError(f"batch_indices: step {step} and seed {seed} must be non-negative")
    per_epoch = _steps_per_epoch(batch_size, size)
    k = step % per_epoch
    return _epoch_permutation(size, seed, step // per_epoch)[k * batch_size:(k + 1) * batch_size].copy()


class PairSource(Protocol):
    """What every source of image-caption pairs offers (SyntheticScenes, CSVPairs, WebDatasetPairs)."""

    size: int  # usable pairs; sample ids are 0..size-1
    image_size: int
    bad_samples: int  # pairs passed over when opening
    bad_names: list[str]  # the first MAX_BAD_NAMES of them, "name: reason"
    noisy: np.ndarray | None  # bool[size]: captions known to be wrong (synthetic noise), None when unknown

    def images(self, idx) -> np.ndarray:
        """uint8[B, image_size, image_size, 3] for int[B] sample ids."""

    def captions(self, idx) -> list[str]:
        """The B captions of int[B] sample ids."""


MAX_BAD_NAMES = 20


def _check_ids(idx, size: int, what: str) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"{what}: sample ids must be a 1-D integer array, got {idx.dtype}{list(idx.shape)}")
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise IndexError(f"{what}: sample ids must lie in 0..{size - 1}, got {idx.min()}..{idx.max()}")
    return idx.astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic scenes

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
COLOUR_RGB = np.array([(225, 35, 35), (40, 190, 60), (40, 90, 235), (240, 225, 40), (160, 60, 215), (250, 140, 20)],
                      np.float32)
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = ("circles", "squares", "triangles", "crosses")
POSITIONS = ("left", "right", "top", "bottom", "middle")
WHERE = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")
COUNTS = ("one", "two", "three")  # count c is written COUNTS[c - 1]; a single shape takes "a"/"an" instead
# Eight pairs, each shape held out twice and three colours twice, so that neither the colour nor the shape alone
# names a zero-shot class (red circle vs red cross vs blue circle): the classes need both words, composed. Every
# colour still meets at least two shapes in training and every shape four colours, so both words are learnt, only
# never together.
HELD_OUT = (("red", "circle"), ("red", "cross"), ("green", "square"), ("green", "triangle"), ("blue", "triangle"),
            ("blue", "circle"), ("yellow", "cross"), ("orange", "square"))
TEMPLATES = (
    "a photo of {obj} {where}.",
    "{obj} {where} of the picture.",
    "{obj} {where}.",
    "an image with {obj} {where}.",
    "there {be} {obj} {where}.",
    "a picture of {obj} {where}.",
)
# CLIP-style prompt ensembling for zero-shot classification; `{}` takes a class name such as "red circle". Only
# words the captions use, so the synthetic tokenizer knows them all (and no plural: "crosss").
PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image with a {}.",
    "a {} in the picture.",
    "there is a {} in the picture.",
    "a photo of the {}.",
    "a {}.",
)
SPLITS = {"train": 0, "val": 1, "zero_shot": 2, "retrieval": 3}  # seeds each split's rendering apart
ATTRIBUTES = np.dtype([("count", np.int8), ("colour", np.int8), ("shape", np.int8), ("position", np.int8)])

_HELD = np.zeros((len(COLOURS), len(SHAPES)), bool)
for _c, _s in HELD_OUT:
    _HELD[COLOURS.index(_c), SHAPES.index(_s)] = True
TRAIN_PAIRS = tuple((c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES)) if not _HELD[c, s])

# Regions as (x0, y0, x1, y1) fractions of the picture and whether the shapes stack vertically (else side by side).
# The boxes have one long side of 0.8 so three shapes fit; a group is told apart by its centre and its direction.
_REGIONS = np.array([(0.03, 0.10, 0.31, 0.90), (0.69, 0.10, 0.97, 0.90), (0.10, 0.03, 0.90, 0.31),
                     (0.10, 0.69, 0.90, 0.97), (0.10, 0.36, 0.90, 0.64)])
_VERTICAL = (True, True, False, False, False)
_GAP = 0.025  # free margin around each shape's slot: shapes never touch
_SUPERSAMPLE = 4


def caption_text(count: int, colour: int, shape: int, position: int, template: int = 0) -> str:
    """The caption of one scene: attribute ids (count 1..3, indices into COLOURS, SHAPES, POSITIONS, TEMPLATES)."""
    c = COLOURS[colour]
    if count == 1:
        obj = f"{'an' if c[0] in 'aeiou' else 'a'} {c} {SHAPES[shape]}"
    else:
        obj = f"{COUNTS[count - 1]} {c} {PLURALS[shape]}"
    return TEMPLATES[template].format(obj=obj, where=WHERE[position], be="is" if count == 1 else "are")


def class_names() -> list[str]:
    """The zero-shot classes: the HELD_OUT pairs as "colour shape"."""
    return [f"{c} {s}" for c, s in HELD_OUT]


def synthetic_texts() -> list[str]:
    """Every caption any scene can have (all attributes and templates, held-out pairs included) and every prompt of
    every zero-shot class: the texts the synthetic tokenizer is built from."""
    texts = [caption_text(n, c, s, p, t) for n in (1, 2, 3) for c in range(len(COLOURS)) for s in range(len(SHAPES))
             for p in range(len(POSITIONS)) for t in range(len(TEMPLATES))]
    return texts + [t.format(name) for t in PROMPT_TEMPLATES for name in class_names()]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: int, cx: float, cy: float, d: float) -> None:
    """One filled shape of extent d (canvas pixels) centred at (cx, cy)."""
    r = d / 2
    if shape == 0:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == 1:
        h = 0.44 * d  # about the circle's area
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif shape == 2:
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=255)
    else:
        t = 0.18 * d
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=255)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=255)


def render_scenes(attributes: np.ndarray, image_size: int, keys: Sequence) -> np.ndarray:
    """uint8[B, S, S, 3]: the scenes of ATTRIBUTES records, sample b drawn from np.random.default_rng(keys[b])
    (keys: B seeds, e.g. [seed, SPLITS[split], index]).

    The shapes are drawn at 4x on a coverage mask and box-filtered down (antialiasing keeps 32-pixel shapes
    legible); each of the `count` shapes sits in its own slot of the named region, so they never overlap. The
    background is dark: a tinted base, a low-frequency wave and mild noise."""
    s, big = int(image_size), int(image_size) * _SUPERSAMPLE
    n = len(attributes)
    if n == 0:
        return np.zeros((0, s, s, 3), np.uint8)
    u = np.empty((n, 17))  # every per-sample scalar, drawn first from the sample's generator
    noise = np.empty((n, s, s, 3), np.float32)
    # All masks on one tall canvas and one box filter: the 4x4 blocks never straddle two pictures (per-picture
    # Pillow calls were most of the cost at 32 pixels).
    canvas = Image.new("L", (big, big * n), 0)
    draw = ImageDraw.Draw(canvas)
    for b, (count, _, shape, position) in enumerate(attributes.tolist()):
        rng = np.random.default_rng(keys[b])
        u[b] = rng.random(17)
        noise[b] = rng.random((s, s, 3), np.float32)
        r = u[b].tolist()
        x0, y0, x1, y1 = _REGIONS[position]
        lo, hi, across_lo, across_hi = (y0, y1, x0, x1) if _VERTICAL[position] else (x0, x1, y0, y1)
        slot = (hi - lo) / count
        d = (min(slot, across_hi - across_lo) - 2 * _GAP) * (0.7 + 0.25 * r[0])
        # a lone shape stays near the region's centre: a "middle" one must not drift half way to the edge
        along_jitter = min(0.3 * (slot - 2 * _GAP - d), 0.12)
        for k in range(count):
            along = lo + slot * (k + 0.5) + (2 * r[1 + 2 * k] - 1) * along_jitter
            across = (across_lo + across_hi) / 2 + (2 * r[2 + 2 * k] - 1) * (across_hi - across_lo - 2 * _GAP - d) / 2
            x, y = (across, along) if _VERTICAL[position] else (along, across)
            _draw_shape(draw, shape, x * big, (b + y) * big, d * big)
    alpha = np.asarray(canvas.reduce(_SUPERSAMPLE), np.float32).reshape(n, s, s, 1) * np.float32(1 / 255)
    u = u.astype(np.float32)
    base = 8 + 37 * u[:, 7:10]
    freq = (0.5 + 2.5 * u[:, 10:12]) * np.where(u[:, 12:14] < 0.5, np.float32(-1), np.float32(1))  # cycles/picture
    phase, amplitude = 2 * np.pi * u[:, 14], 4 + 6 * u[:, 15]
    shade = 0.85 + 0.15 * u[:, 16]
    grid = (np.arange(s, dtype=np.float32) + 0.5) / s
    along_x = freq[:, 0, None, None] * grid[None, None, :]
    along_y = freq[:, 1, None, None] * grid[None, :, None]
    wave = np.sin(2 * np.pi * (along_x + along_y) + phase[:, None, None]) * amplitude[:, None, None]
    bg = base[:, None, None, :] + wave[..., None]
    fg = (COLOUR_RGB[attributes["colour"].astype(np.int64)] * shade[:, None])[:, None, None, :]
    out = bg + (fg - bg) * alpha
    out += 12 * noise - 6  # uniform noise, std 3.5
    return (np.clip(out, 0, 255) + 0.5).astype(np.uint8)


def _keys(seed: int, split: str, idx: np.ndarray) -> list[list[int]]:
    return [[seed, SPLITS[split], i] for i in np.asarray(idx).tolist()]


def _caption_key(attributes: np.ndarray, templates: np.ndarray) -> np.ndarray:
    """One integer per distinct caption text (equal keys <=> equal captions)."""
    a = {k: attributes[k].astype(np.int64) for k in ATTRIBUTES.names}
    return (((a["count"] * 8 + a["colour"]) * 8 + a["shape"]) * 8 + a["position"]) * 8 + templates


class SyntheticScenes:
    """`num_samples` synthetic image-caption pairs; attributes are drawn up front, images rendered per batch.

    split "train" or "val" (fresh scenes of the same distribution); neither holds a HELD_OUT colour-shape pair.
    noise: round(noise * num_samples) captions, chosen at random, are swapped for the caption of another random
    sample whose caption differs (`noisy` marks them; `clean_captions` gives the true ones). Sample i is a pure
    function of (seed, split, i) for its rendering, and of (seed, split, num_samples) for its attributes."""

    def __init__(self, num_samples: int, image_size: int, seed: int = 0, noise: float = 0.0, split: str = "train"):
        if split not in ("train", "val"):
            raise ValueError(f"SyntheticScenes split {split!r}: use 'train' or 'val' (evaluation sets come from "
                             f"zero_shot_set and retrieval_set)")
        if num_samples < 1 or image_size < 8:
            raise ValueError(f"SyntheticScenes: num_samples {num_samples} must be >= 1 and image_size {image_size} "
                             f">= 8")
        if not 0 <= noise < 1:
            raise ValueError(f"SyntheticScenes noise {noise}: must be in [0, 1)")
        self.size, self.image_size, self.seed, self.split = int(num_samples), int(image_size), int(seed), split
        self.bad_samples, self.bad_names = 0, []
        rng = np.random.default_rng([self.seed, SPLITS[split], 1])
        n = self.size
        pairs = np.array(TRAIN_PAIRS)[rng.integers(len(TRAIN_PAIRS), size=n)]
        self._attributes = np.empty(n, ATTRIBUTES)
        self._attributes["count"] = rng.integers(1, 4, n)
        self._attributes["colour"], self._attributes["shape"] = pairs[:, 0], pairs[:, 1]
        self._attributes["position"] = rng.integers(len(POSITIONS), size=n)
        self._templates = rng.integers(len(TEMPLATES), size=n).astype(np.int8)
        self._hard = (rng.integers(len(ATTRIBUTES.names), size=n), rng.random(n))
        # caption i is the text of sample _caption_of[i]: itself, or the partner a noisy caption was swapped with
        self._caption_of = np.arange(n)
        self.noisy = np.zeros(n, bool)
        k = int(round(noise * n))
        if k:
            key = _caption_key(self._attributes, self._templates)
            if np.all(key == key[0]):
                raise ValueError(f"SyntheticScenes: noise {noise} needs two distinct captions; all {n} are equal")
            chosen = rng.choice(n, k, replace=False)
            partner = rng.integers(n, size=k)
            while np.any(same := key[partner] == key[chosen]):
                partner[same] = rng.integers(n, size=int(same.sum()))
            self._caption_of[chosen] = partner
            self.noisy[chosen] = True

    def attributes(self, idx) -> np.ndarray:
        """ATTRIBUTES[B] records (count 1..3, colour, shape, position ids into COLOURS/SHAPES/POSITIONS) of the
        images (the truth, whatever the caption says)."""
        return self._attributes[_check_ids(idx, self.size, "SyntheticScenes.attributes")]

    def images(self, idx) -> np.ndarray:
        """uint8[B, image_size, image_size, 3]."""
        idx = _check_ids(idx, self.size, "SyntheticScenes.images")
        return render_scenes(self._attributes[idx], self.image_size, _keys(self.seed, self.split, idx))

    def captions(self, idx) -> list[str]:
        """The training captions (noisy ones swapped)."""
        idx = _check_ids(idx, self.size, "SyntheticScenes.captions")
        src = self._caption_of[idx]
        return [caption_text(*a, t) for a, t in zip(self._attributes[src].tolist(), self._templates[src].tolist())]

    def clean_captions(self, idx) -> list[str]:
        """The true captions of the images (before any noise swap)."""
        idx = _check_ids(idx, self.size, "SyntheticScenes.clean_captions")
        return [caption_text(*a, t) for a, t in zip(self._attributes[idx].tolist(), self._templates[idx].tolist())]

    def hard_negatives(self, idx) -> list[str]:
        """Per sample, a caption that differs from its true caption in exactly one attribute (count, colour, shape
        or position, drawn per sample), in the same template; colour/shape changes avoid HELD_OUT pairs."""
        idx = _check_ids(idx, self.size, "SyntheticScenes.hard_negatives")
        which, u = self._hard[0][idx], self._hard[1][idx]
        out = []
        for (count, colour, shape, position), t, w, x in zip(self._attributes[idx].tolist(),
                                                            self._templates[idx].tolist(), which, u):
            a = [count, colour, shape, position]
            if w == 0:
                options = [c for c in (1, 2, 3) if c != count]
            elif w == 1:
                options = [c for c in range(len(COLOURS)) if c != colour and not _HELD[c, shape]]
            elif w == 2:
                options = [s for s in range(len(SHAPES)) if s != shape and not _HELD[colour, s]]
            else:
                options = [p for p in range(len(POSITIONS)) if p != position]
            a[w] = options[int(x * len(options))]
            out.append(caption_text(*a, t))
        return out


def zero_shot_set(image_size: int, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8[N, S, S, 3], labels int32[N], class_names): per_class images of each HELD_OUT colour-shape
    pair (class k = HELD_OUT[k], named "red circle"), random count and position, class-major order. Never seen in
    training: the pairs are held out and the split's rendering seeds differ. Prompts: PROMPT_TEMPLATES."""
    rng = np.random.default_rng([seed, SPLITS["zero_shot"], 1])
    n = len(HELD_OUT) * per_class
    attributes = np.empty(n, ATTRIBUTES)
    labels = np.repeat(np.arange(len(HELD_OUT), dtype=np.int32), per_class)
    attributes["colour"] = [COLOURS.index(HELD_OUT[k][0]) for k in labels]
    attributes["shape"] = [SHAPES.index(HELD_OUT[k][1]) for k in labels]
    attributes["count"] = rng.integers(1, 4, n)
    attributes["position"] = rng.integers(len(POSITIONS), size=n)
    images = render_scenes(attributes, image_size, _keys(seed, "zero_shot", np.arange(n)))
    return images, labels, class_names()


def retrieval_set(image_size: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """(images uint8[N, S, S, 3], captions): one scene per distinct (count, colour, shape, position) over the
    training colour-shape pairs (N = 3 x 16 x 5 = 240), each captioned with TEMPLATES[0]: every caption is unique,
    so image i <-> caption i is the only right match. Rendered apart from the training scenes."""
    rows = [(n, c, s, p) for n in (1, 2, 3) for c, s in TRAIN_PAIRS for p in range(len(POSITIONS))]
    attributes = np.array(rows, ATTRIBUTES)
    images = render_scenes(attributes, image_size, _keys(seed, "retrieval", np.arange(len(rows))))
    return images, [caption_text(*r) for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# User data

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # webdataset members read as the image
_PROGRESS_ABOVE = 300  # rows: a progress bar while checking more images than this


def _open_checked(src) -> Image.Image:
    """Image.open with the pixel-count guard of qrjax.data.decode."""
    im = Image.open(src)
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise ValueError(f"{im.width}x{im.height} is over the {MAX_PIXELS:,}-pixel limit")
    return im


def image_problem(src) -> str | None:
    """None when the image (a path or a binary file object) decodes, else the reason. JPEGs are decoded at 1/8
    scale (cheap); a truncated file fails here, not in the middle of training."""
    try:
        with _open_checked(src) as im:
            if im.format == "JPEG" and im.mode in ("RGB", "L"):
                im.draft(im.mode, (1, 1))
            im.load()
        return None
    except FileNotFoundError:
        return "no such file"
    except IsADirectoryError:
        return "is a directory"
    except PermissionError:
        return "permission denied"
    except Image.UnidentifiedImageError:
        return "not an image file Pillow can identify"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        return f"cannot be decoded ({type(err).__name__}: {err})"


def load_image(src, image_size: int) -> np.ndarray:
    """uint8[S, S, 3]: an image file (path or binary file object) in RGB (qrjax.data.decode.to_rgb), its shorter
    side resized to S (bicubic, antialiased) and centre-cropped to S x S, as CLIP preprocesses."""
    with _open_checked(src) as im:
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            im.draft(im.mode, (image_size, image_size))  # DCT-domain reduction, both sides stay >= image_size
        rgb = Image.fromarray(to_rgb(im))
    w, h = rgb.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(rgb.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box), np.uint8)


def _problems(items: Sequence, get, what: str) -> list[str | None]:
    """[image_problem(get(item))] in threads (Pillow decodes without the GIL), with a progress bar on stderr for more
    than a few hundred images."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(tqdm(pool.map(lambda item: image_problem(get(item)), items), total=len(items),
                         desc=f"checking {what}", unit="image", file=sys.stderr,
                         disable=len(items) <= _PROGRESS_ABOVE, leave=False))


class _BadLog:
    def __init__(self):
        self.count, self.names = 0, []

    def add(self, name: str):
        self.count += 1
        if len(self.names) < MAX_BAD_NAMES:
            self.names.append(name)


def _none_usable(what: str, total: int, bad: _BadLog) -> ValueError:
    return ValueError(f"{what}: none of its {total} samples is usable; first problems: " + "; ".join(bad.names))


class CSVPairs:
    """Pairs from a CSV/TSV file with a header row (OpenCLIP's format): column `img_key` holds image paths
    (relative ones are relative to the file's folder), column `caption_key` the captions.

    separator: None picks tab for .tsv, else what csv.Sniffer finds among ',', tab and ';' (',' when unsure).
    Rows whose image is missing or does not decode, or whose caption is empty, are counted (`bad_samples`), named
    (`bad_names`, "path (line n): reason") and skipped; images are checked when opening, so `size` is exact."""

    noisy = None

    def __init__(self, path: str | Path, image_size: int, img_key: str = "filepath", caption_key: str = "title",
                 separator: str | None = None):
        self.path, self.image_size = Path(path), int(image_size)
        if not self.path.is_file():
            raise FileNotFoundError(f"CSV file {str(path)!r}: no such file")
        try:
            rows, bad = self._read_rows(path, img_key, caption_key, separator)
        except UnicodeDecodeError as err:
            raise ValueError(f"CSV file {str(path)!r}: not UTF-8 text ({err})") from None
        except csv.Error as err:
            raise ValueError(f"CSV file {str(path)!r}: malformed CSV ({err})") from None
        paths = [self._resolve(image) for _, image, _ in rows]
        problems = _problems(paths, lambda p: p, self.path.name)
        self._paths, self._captions = [], []
        for (line, image, caption), p, problem in zip(rows, paths, problems):
            if problem is None:
                self._paths.append(p)
                self._captions.append(caption)
            else:
                bad.add(f"{image} (line {line}): {problem}")
        self.size, self.bad_samples, self.bad_names = len(self._paths), bad.count, bad.names
        if not self.size:
            raise _none_usable(f"CSV file {str(path)!r}", bad.count, bad)

    def _read_rows(self, path: str | Path, img_key: str, caption_key: str,
                   separator: str | None) -> tuple[list, _BadLog]:
        """(line, image as written, caption) of the rows with both, and the log of the others."""
        with open(self.path, newline="", encoding="utf-8-sig") as f:
            if separator is None:
                if self.path.suffix.lower() == ".tsv":
                    separator = "\t"
                else:
                    try:
                        separator = csv.Sniffer().sniff(f.read(65536), delimiters=",\t;").delimiter
                    except csv.Error:
                        separator = ","
                    f.seek(0)
            reader = csv.reader(f, delimiter=separator)
            header = [h.strip() for h in next(reader, [])]
            for key, flag in ((img_key, "--csv-img-key"), (caption_key, "--csv-caption-key")):
                if key not in header:
                    raise ValueError(f"CSV file {str(path)!r}: no column {key!r} (columns: {header}, separator "
                                     f"{separator!r}); name the image and caption columns with --csv-img-key and "
                                     f"--csv-caption-key (here {flag})")
            ii, ci = header.index(img_key), header.index(caption_key)
            rows = []  # (line, image as written, caption)
            bad = _BadLog()
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(ii, ci):
                    bad.add(f"line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
                    continue
                image, caption = row[ii].strip(), " ".join(row[ci].split())
                if not image:
                    bad.add(f"line {reader.line_num}: empty image path")
                elif not caption:
                    bad.add(f"{image} (line {reader.line_num}): empty caption")
                else:
                    rows.append((reader.line_num, image, caption))
        return rows, bad

    def _resolve(self, image: str) -> Path:
        p = Path(image).expanduser()
        return p if p.is_absolute() else self.path.parent / p

    def images(self, idx) -> np.ndarray:
        """uint8[B, image_size, image_size, 3]."""
        idx = _check_ids(idx, self.size, "CSVPairs.images")
        out = np.empty((len(idx), self.image_size, self.image_size, 3), np.uint8)
        for b, i in enumerate(idx.tolist()):
            try:
                out[b] = load_image(self._paths[i], self.image_size)
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise ValueError(f"CSV file {str(self.path)!r}: image {str(self._paths[i])!r} (sample {i}) cannot "
                                 f"be read any more: {err}") from None
        return out

    def captions(self, idx) -> list[str]:
        return [self._captions[i] for i in _check_ids(idx, self.size, "CSVPairs.captions").tolist()]


_MEMBER = re.compile(r"^((?:.*/)?[^./][^./]*)\.([^/]*)$")  # webdataset: key = path up to the basename's first dot


class WebDatasetPairs:
    """Pairs from webdataset shards: one .tar file or a folder of *.tar files (sorted by name, not recursive).

    Members sharing a key (the path up to the first dot of the basename) form a sample: the image is the member with
    extension jpg/jpeg/png/webp, the caption the .txt (UTF-8). A key without image or caption, an image that does
    not decode, or an empty caption is counted and named ("shard.tar:key: reason"), never fatal. The members are
    indexed when opening (offsets into the tar) and image bytes read by seeking, so shards are never held in memory;
    captions are kept."""

    noisy = None

    def __init__(self, path: str | Path, image_size: int):
        self.path, self.image_size = Path(path), int(image_size)
        if self.path.is_dir():
            self.shards = sorted(self.path.glob("*.tar"))
            if not self.shards:
                raise ValueError(f"webdataset folder {str(path)!r}: holds no .tar shards")
        elif self.path.is_file():
            self.shards = [self.path]
        else:
            raise FileNotFoundError(f"webdataset shard {str(path)!r}: no such file or folder")
        bad = _BadLog()
        found = []  # (shard, key, image (offset, size) | None, caption bytes | None)
        for si, shard in enumerate(self.shards):
            found += self._index_shard(si, shard, bad)
        candidates = []
        for si, key, image, text in found:
            name = f"{self.shards[si].name}:{key}"
            if image is None:
                bad.add(f"{name}: no image (.{'/.'.join(IMAGE_EXTENSIONS)} member)")
                continue
            if text is None:
                bad.add(f"{name}: no caption (.txt member)")
                continue
            try:
                caption = " ".join(text.decode("utf-8").split())
            except UnicodeDecodeError:
                bad.add(f"{name}: caption is not UTF-8")
                continue
            if not caption:
                bad.add(f"{name}: empty caption")
                continue
            candidates.append((si, key, image, caption))
        problems = _problems(candidates, lambda c: self._read(c[0], *c[2]), self.path.name)
        shard_ids, offsets, sizes, self._keys, self._captions = [], [], [], [], []
        for (si, key, image, caption), problem in zip(candidates, problems):
            if problem is None:
                shard_ids.append(si)
                offsets.append(image[0])
                sizes.append(image[1])
                self._keys.append(key)
                self._captions.append(caption)
            else:
                bad.add(f"{self.shards[si].name}:{key}: image {problem}")
        self._shard, self._offset, self._nbytes = (np.array(shard_ids, np.int32), np.array(offsets, np.int64),
                                                   np.array(sizes, np.int64))
        self.size, self.bad_samples, self.bad_names = len(self._captions), bad.count, bad.names
        if not self.size:
            raise _none_usable(f"webdataset {str(path)!r}", bad.count, bad)

    @staticmethod
    def _index_shard(si: int, shard: Path, bad: _BadLog) -> list:
        samples: dict[str, list] = {}
        try:
            with tarfile.open(shard, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    match = _MEMBER.match(member.name.removeprefix("./"))
                    if not match:
                        continue
                    key, ext = match[1], match[2].lower()
                    entry = samples.setdefault(key, [si, key, None, None])
                    if ext in IMAGE_EXTENSIONS and entry[2] is None:
                        entry[2] = (member.offset_data, member.size)
                    elif ext == "txt" and entry[3] is None:
                        entry[3] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            # what was indexed before the damage stays usable
            bad.add(f"{shard.name}: unreadable tar after {len(samples)} keys ({type(err).__name__}: {err})")
        return list(map(tuple, samples.values()))

    def _read(self, si: int, offset: int, nbytes: int) -> io.BytesIO:
        with open(self.shards[si], "rb") as f:
            f.seek(offset)
            return io.BytesIO(f.read(nbytes))

    def images(self, idx) -> np.ndarray:
        """uint8[B, image_size, image_size, 3]; each image's bytes are read by seeking into its shard."""
        idx = _check_ids(idx, self.size, "WebDatasetPairs.images")
        out = np.empty((len(idx), self.image_size, self.image_size, 3), np.uint8)
        for si in np.unique(self._shard[idx]).tolist():
            with open(self.shards[si], "rb") as f:
                for b in np.flatnonzero(self._shard[idx] == si).tolist():
                    i = int(idx[b])
                    f.seek(self._offset[i])
                    try:
                        out[b] = load_image(io.BytesIO(f.read(self._nbytes[i])), self.image_size)
                    except (OSError, SyntaxError, ValueError, EOFError) as err:
                        raise ValueError(f"webdataset {self.shards[si].name}:{self._keys[i]} (sample {i}): image "
                                         f"cannot be read any more: {err}") from None
        return out

    def captions(self, idx) -> list[str]:
        return [self._captions[i] for i in _check_ids(idx, self.size, "WebDatasetPairs.captions").tolist()]


# ---------------------------------------------------------------------------------------------------------------

_ACCEPTED = ("'synthetic', a .csv/.tsv file (or a tab-separated .txt), a webdataset .tar shard or a folder of .tar "
             "shards")


def open_pairs(data: str | Path, image_size: int, *, num_samples: int = 16384, noise: float = 0.0, seed: int = 0,
               csv_img_key: str = "filepath", csv_caption_key: str = "title",
               csv_separator: str | None = None) -> PairSource:
    """The pair source for a `--data` argument: "synthetic" (num_samples scenes, `noise`, `seed`), a CSV/TSV file,
    a .tar shard or a folder of them. num_samples and seed are the synthetic set's; noise applies to it only."""
    if str(data) == "synthetic":
        return SyntheticScenes(num_samples, image_size, seed=seed, noise=noise)
    if noise:
        raise ValueError(f"noise {noise}: caption noise is a property of the synthetic set; {str(data)!r} is a "
                         f"user data set (set noise=0)")
    path = Path(data).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"training data {str(data)!r}: no such file or folder (accepted: {_ACCEPTED})")
    if path.is_dir():
        if any(path.glob("*.tar")):
            return WebDatasetPairs(path, image_size)
        raise ValueError(f"training data {str(data)!r}: a folder without .tar shards (accepted: {_ACCEPTED})")
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return WebDatasetPairs(path, image_size)
    tabbed_txt = False
    if suffix == ".txt":
        with open(path, encoding="utf-8", errors="replace") as f:
            tabbed_txt = "\t" in f.readline()
    if suffix in (".csv", ".tsv") or tabbed_txt:
        return CSVPairs(path, image_size, img_key=csv_img_key, caption_key=csv_caption_key,
                        separator=csv_separator or ("\t" if tabbed_txt else None))
    raise ValueError(f"training data {str(data)!r}: not a format this reads (accepted: {_ACCEPTED})")


__all__ = ["ATTRIBUTES", "COLOURS", "COLOUR_RGB", "COUNTS", "CSVPairs", "HELD_OUT", "IMAGE_EXTENSIONS",
           "MAX_BAD_NAMES", "PLURALS", "POSITIONS", "PROMPT_TEMPLATES", "PairSource", "SHAPES", "SPLITS", "TEMPLATES",
           "TRAIN_PAIRS", "SyntheticScenes", "WHERE", "WebDatasetPairs", "batch_indices", "caption_text",
           "class_names", "epoch_of", "image_problem", "load_image", "open_pairs", "render_scenes",
           "retrieval_set", "synthetic_texts", "zero_shot_set"]
