"""Image decoding for detection: any Pillow mode to RGB, JPEG decoded at reduced scale (draft mode), and decoding that
stops after the rows a tile needs where the format allows it.

Every failure is an `ImageReadError` naming the file and the problem, so a batch job can report it and go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

# 8000 x 6000 photographs are legitimate input; Pillow's default bomb guard (89 Mpx) would let them through, but a
# detector must not be taken down by a 100k x 100k PNG either: refuse above this many pixels.
MAX_PIXELS = 200_000_000


class ImageReadError(ValueError):
    """A file that cannot be read as an image: the message names the path and the reason."""


class Decoded(NamedTuple):
    """rows: uint8[r, W, 3], the first r rows of the image decoded at `size` (W, H) (the whole image when r == H);
    source_size: (W, H) in the file, before any draft-mode reduction."""

    rows: np.ndarray
    size: tuple[int, int]
    source_size: tuple[int, int]


def to_rgb(im: Image.Image) -> np.ndarray:
    """uint8[H, W, 3] from any Pillow mode: grey is replicated, alpha dropped (palette and LA go through RGBA so that
    transparent entries keep their colour), CMYK/YCbCr/LAB converted, 16- and 32-bit integer and float grey scaled
    to 8 bits from their nominal range (Pillow's own convert would clip 16-bit values at 255)."""
    mode = im.mode
    if mode in ("RGBA", "LA", "P", "PA", "RGBa", "La"):
        return np.asarray(im.convert("RGBA").convert("RGB"), np.uint8)
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.int64)
        peak = 65535 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        a = np.clip(a, 0, peak) * 255 // peak
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=-1)
    if mode == "F":
        a = np.asarray(im, np.float64)
        a = np.clip(a if a.max(initial=0) > 1.0 else a * 255.0, 0, 255)
        return np.repeat(np.round(a).astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), np.uint8)


def _looks_truncated(path: Path, fmt: str | None) -> bool:
    """JPEG must end with its EOI marker and PNG with its IEND chunk; a cut-off download lacks them. (Reading only
    the rows a tile needs would otherwise accept a file whose tail is missing.)"""
    if fmt not in ("JPEG", "PNG"):
        return False
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - 64))
        tail = f.read().rstrip(b"\x00\r\n ")
    return not (tail.endswith(b"\xff\xd9") if fmt == "JPEG" else b"IEND" in tail[-12:])


def _can_stop_early(im: Image.Image) -> bool:
    """Formats whose single decoder fills the image top to bottom: stopping after r rows gives exactly those rows.
    (Interlaced PNG and progressive JPEG revisit every row; multi-strip TIFF and others are decoded whole.)"""
    if len(im.tile) != 1 or im.format != "PNG" or im.info.get("interlace"):
        return False
    return im.tile[0][0] == "zip"


def decode(path: str | Path, *, rows: int | Callable[[tuple[int, int]], int] | None = None,
           min_size: int | None = None) -> Decoded:
    """Decode an image file to RGB.

    rows: decode only the first `rows` rows of the (possibly reduced) image, where the format allows it (PNG, not
    interlaced); other formats are decoded whole and then sliced. A callable gets the (W, H) the image will be
    decoded at (read from the header) and returns the rows: a caller can place a tile before any pixel is decoded. min_size: JPEG only, decode at the smallest
    1/2, 1/4 or 1/8 DCT scale that keeps both sides >= min_size (Pillow's draft mode; the reduction happens inside
    the IDCT, so it costs less than decoding full size and resizing).
    """
    path = Path(path)
    name = str(path)
    try:
        if path.is_dir():
            raise ImageReadError(f"image {name!r}: is a directory")
        if os.path.getsize(path) == 0:
            raise ImageReadError(f"image {name!r}: empty file (0 bytes)")
        with Image.open(path) as im:
            source_size = im.size
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise ImageReadError(f"image {name!r}: {im.size[0]}x{im.size[1]} is over the {MAX_PIXELS:,}-pixel "
                                     f"limit")
            if _looks_truncated(path, im.format):
                raise ImageReadError(f"image {name!r}: truncated {im.format} file (no end marker)")
            if min_size is not None and im.format == "JPEG" and im.mode in ("RGB", "L"):
                im.draft(im.mode, (min_size, min_size))
            w, h = im.size
            r = rows((w, h)) if callable(rows) else rows
            r = h if r is None else max(1, min(int(r), h))
            if r < h and _can_stop_early(im):
                tile = im.tile[0]
                im.tile = [tile._replace(extents=(0, 0, w, r))]
                im._size = (w, r)  # the decoder writes into an image of r rows and stops there
            im.load()
            arr = to_rgb(im)
        return Decoded(arr[:r], (w, h), source_size)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"image {name!r}: no such file") from None
    except PermissionError:
        raise ImageReadError(f"image {name!r}: permission denied") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"image {name!r}: not an image file Pillow can identify") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"image {name!r}: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(f"image {name!r}: cannot be decoded ({type(err).__name__}: {err})") from None

