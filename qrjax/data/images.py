"""Natural images that ship inside PyPI wheels, user image folders, and random square crops from either.

Nothing is downloaded: the default images are the photographs inside the scikit-image, scikit-learn and matplotlib
wheels, read straight from their package folders. A few are held out for validation (`HELD_OUT`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# name -> (package, path inside the package). Grey images are used as RGB: they add texture variety.
BUNDLED_IMAGES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "ihc": ("skimage", "data/ihc.png"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "retina": ("skimage", "data/retina.jpg"),
    "camera": ("skimage", "data/camera.png"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
# Validation images, never seen in training: two colour photographs and two unusual scenes.
HELD_OUT = ("grace_hopper", "coffee", "retina", "hubble_deep_field")


LIST_SUFFIXES = (".txt", ".lst")


def scan_folder(folder: str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under folder, recursively, each sorted; "image" is judged by the suffix."""
    suffixes = tuple(s.lower() for s in suffixes)
    images, other = [], []
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            (images if f.suffix.lower() in suffixes else other).append(f)
    return images, other


@dataclasses.dataclass(frozen=True)
class InputScan:
    """What a list of command-line inputs expands to: `paths`, the inputs in order (each gets a record), and
    `skipped`, the files that folder scans passed over (not images by their suffix), reported by name."""

    paths: list[str]
    skipped: list[str]


def scan_inputs(items: Iterable[str | Path], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> InputScan:
    """Expand inputs in order: a folder gives its image files (recursively, sorted) and passes over the rest (listed
    in `skipped`); a `.txt`/`.lst` file gives the paths listed in it (one a line; relative to the list; blank lines
    and # comments skipped); anything else is taken as an image path as it is (a missing or unreadable one becomes an
    error record downstream, not an exception here)."""
    paths: list[str] = []
    skipped: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            images, other = scan_folder(p, suffixes)
            paths += [str(f) for f in images]
            skipped += [str(f) for f in other]
        elif p.suffix.lower() in LIST_SUFFIXES and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    paths.append(str(q if q.is_absolute() else p.parent / q))
        else:
            paths.append(str(p))
    return InputScan(paths, skipped)


def load_image(path: str | Path) -> np.ndarray:
    """uint8[H, W, 3] from an image file (grey and RGBA become RGB); a clear error names a bad file."""
    from qrjax.data.decode import ImageReadError, decode

    try:
        return decode(path).rows
    except ImageReadError as err:
        if not Path(path).exists():
            raise FileNotFoundError(str(err)) from None
        raise


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def bundled_images(names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """{name: uint8[H, W, 3]} for the bundled images whose wheels are installed (all of them with the default deps)."""
    out = {}
    for name in names or tuple(BUNDLED_IMAGES):
        if name not in BUNDLED_IMAGES:
            raise ValueError(f"unknown bundled image {name!r}; choose from {sorted(BUNDLED_IMAGES)}")
        package, rel = BUNDLED_IMAGES[name]
        root = _package_dir(package)
        if root is not None and (root / rel).is_file():
            out[name] = load_image(root / rel)
    if not out:
        raise RuntimeError("no bundled images found: install scikit-image, scikit-learn or matplotlib")
    return out


def _random_side(rng: np.random.Generator, min_side: int, size: int, area: tuple[float, float]) -> int:
    """Side of a square crop covering a random fraction of the image's short side squared (never below `size`)."""
    frac = rng.uniform(*area)
    return int(np.clip(round(np.sqrt(frac) * min_side), size, min_side))


class InMemorySource:
    """Random square crops from decoded images held in memory, resized to `size` (random-resized-crop + h-flip).

    Each image is kept as a small pyramid (halving scales) so a crop of any side is resized from the closest level
    above it, which keeps per-sample cost at a `size`-sized resize.
    """

    def __init__(self, images: dict[str, np.ndarray] | list[np.ndarray], area: tuple[float, float] = (0.02, 1.0)):
        items = images.items() if isinstance(images, dict) else enumerate(images)
        self.names, self.images = [], []
        for name, img in items:
            img = np.asarray(img)
            if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
                raise ValueError(f"image {name!r}: expected uint8[H, W, 3], got {img.dtype}{list(img.shape)}")
            self.names.append(str(name))
            self.images.append(img)
        if not self.images:
            raise ValueError("InMemorySource: no images")
        self.area = area

    def __len__(self) -> int:
        return len(self.images)

    def _get(self, index: int) -> np.ndarray:
        return self.images[index]

    def sample(self, rng: np.random.Generator, size: int, n: int, *, augment: bool = True,
               area: tuple[float, float] | None = None, return_index: bool = False):
        """uint8[n, size, size, 3]: random crops covering a fraction `area` (default self.area) of the short side
        squared; with return_index also int32[n], the index of each crop's image (a class label)."""
        area = self.area if area is None else area
        out = np.empty((n, size, size, 3), np.uint8)
        index = np.empty(n, np.int32)
        for i in range(n):  # host-side loader: one crop per sample, outside any jitted code
            index[i] = int(rng.integers(len(self)))
            img = self._get(int(index[i]))
            h, w = img.shape[:2]
            m = min(h, w)
            if m < size:
                img = np.asarray(Image.fromarray(img).resize((max(size, round(w * size / m)),
                                                             max(size, round(h * size / m))), Image.BICUBIC))
                h, w = img.shape[:2]
                m = min(h, w)
            side = _random_side(rng, m, size, area) if augment else m
            y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
            crop = img[y:y + side, x:x + side]
            if side != size:
                crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
            if augment and rng.random() < 0.5:
                crop = crop[:, ::-1]
            out[i] = crop
        return (out, index) if return_index else out


class ImageFolderSource(InMemorySource):
    """Like InMemorySource over every image file under a folder (recursively), decoded lazily with an LRU cache.
    `skipped` names the files under the folder that are not images (by suffix)."""

    def __init__(self, folder: str | Path, area: tuple[float, float] = (0.02, 1.0), cache_size: int = 256):
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"image folder {str(folder)!r}: not a directory")
        self.paths, other = scan_folder(folder)
        self.skipped = [str(p) for p in other]  # files passed over (not images): callers report them
        if not self.paths:
            raise ValueError(f"image folder {str(folder)!r}: no image files ({', '.join(IMAGE_SUFFIXES)}); "
                             f"{len(other)} other file(s)")
        self.names = [str(p.relative_to(folder)) for p in self.paths]
        self.area = area
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self.paths)

    def _get(self, index: int) -> np.ndarray:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        img = load_image(self.paths[index])
        self._cache[index] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img


def bundled_source(split: str = "train", **kwargs) -> InMemorySource:
    """The bundled images: split 'train' (all but HELD_OUT), 'val' (HELD_OUT) or 'all'."""
    images = bundled_images()
    if split == "train":
        images = {k: v for k, v in images.items() if k not in HELD_OUT}
    elif split == "val":
        images = {k: v for k, v in images.items() if k in HELD_OUT}
    elif split != "all":
        raise ValueError(f"split {split!r}: choose train, val or all")
    return InMemorySource(images, **kwargs)


def image_source(folder: str | Path | None, split: str = "train", val_fraction: float = 0.1, **kwargs):
    """A user folder (split by a fixed hash-free rule: every k-th file is validation) or the bundled images."""
    if folder is None:
        return bundled_source(split, **kwargs)
    src = ImageFolderSource(folder, **kwargs)
    if split == "all":
        return src
    k = max(2, round(1 / val_fraction))
    keep = [i for i in range(len(src.paths)) if (i % k == k - 1) == (split == "val")]
    if not keep:
        raise ValueError(f"image folder {str(folder)!r}: too few images for a {split} split")
    src.paths = [src.paths[i] for i in keep]
    src.names = [src.names[i] for i in keep]
    return src
