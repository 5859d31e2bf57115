"""Peer image watermarks the experiments compare qrjax against (experiments only; qrjax never imports this).

DwtDctPeer: the `dwtDct` method of the `invisible-watermark` package (import name `imwatermark`), the watermark
Stable Diffusion's reference scripts put on their outputs. Install it with `make peers`, which runs

    pip install --no-deps invisible-watermark==0.2.0
    pip install PyWavelets opencv-python-headless

because the package's declared dependencies also pull torch and onnxruntime for its RivaGAN method, which dwtDct
does not use. `imwatermark/__init__.py` imports that method (and torch) unconditionally, so this module loads the
dwtDct implementation (`imwatermark/maxDct.py`, which needs only numpy, OpenCV and PyWavelets) straight from its
file, without running the package's __init__. The calls are those of `WatermarkEncoder.encode(bgr, "dwtDct")` and
`WatermarkDecoder("bits", 48).decode(bgr, "dwtDct")`, with their default settings (U channel, scale 36, 4x4 blocks),
minus one guard: the public encoder and decoder raise RuntimeError on images under 256 x 256 pixels of area. The
table's attacks (crop 0.55, resize 0.5) make such images and a user would get an exception there; the peer is read
anyway (its best case), and `below_api_minimum` says how many images the public API would have refused.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import warnings
from pathlib import Path

import numpy as np

API_MIN_AREA = 256 * 256  # WatermarkEncoder.encode / WatermarkDecoder.decode refuse images with H * W below this


def _load_max_dct():
    """The EmbedMaxDct class from imwatermark/maxDct.py, or None when the package (or OpenCV/PyWavelets) is missing."""
    spec = importlib.util.find_spec("imwatermark")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "maxDct.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("_imwatermark_maxdct", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError:  # cv2 or pywt missing
        return None
    return module.EmbedMaxDct


def dwtdct_status() -> dict:
    """{"available": bool, "version": str | None, "note": str}: whether DwtDctPeer can run here, and why not."""
    try:
        version = importlib.metadata.version("invisible-watermark")
    except importlib.metadata.PackageNotFoundError:
        return {"available": False, "version": None,
                "note": "invisible-watermark is not installed (make peers; see experiments/peers.py)"}
    if _load_max_dct() is None:
        return {"available": False, "version": version,
                "note": "invisible-watermark is installed but its dwtDct needs opencv-python(-headless) and "
                        "PyWavelets (make peers)"}
    return {"available": True, "version": version, "note": "dwtDct loaded from imwatermark/maxDct.py (no torch)"}


class DwtDctPeer:
    """invisible-watermark's dwtDct at its defaults, for `bits`-bit payloads (48, the qrjax payload size).

    Embedding: Haar DWT of the U channel (YUV of the BGR image), in each 4x4 block of the LL band the largest-|.|
    non-DC coefficient is quantised to carry one bit, bits repeated cyclically over the blocks. Decoding reads the
    same blocks of whatever image it is given, at that image's own size, and votes per bit.
    """

    name = "dwtDct"

    def __init__(self, bits: int = 48):
        self._cls = _load_max_dct()
        if self._cls is None:
            raise ImportError(dwtdct_status()["note"])
        self.bits = int(bits)

    def embed(self, images_u8, bits) -> np.ndarray:
        """images_u8: uint8[B, H, W, 3] RGB; bits: {0,1}[B, self.bits] (or [self.bits] for all) -> uint8[B, H, W, 3]."""
        images = np.asarray(images_u8)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images_u8: expected uint8[B, H, W, 3], got {images.dtype}{list(images.shape)}")
        bits = np.broadcast_to(np.asarray(bits), (len(images), self.bits))
        if not np.all((bits == 0) | (bits == 1)):
            raise ValueError("bits: expected 0/1 values")
        out = np.empty_like(images)
        for i, (img, b) in enumerate(zip(images, bits)):
            encoder = self._cls([int(v) for v in b], wmLen=self.bits)
            bgr = np.ascontiguousarray(img[..., ::-1])  # the package works in OpenCV's BGR order
            out[i] = encoder.encode(bgr)[..., ::-1]
        return out

    def decode(self, image_u8: np.ndarray) -> np.ndarray:
        """image_u8: uint8[H, W, 3] RGB, any size -> {0,1} uint8[self.bits]. An image too small to hold a block for
        every bit reads the missing bits as 0 (the package would average an empty list to NaN, which reads as 0)."""
        img = np.asarray(image_u8)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"image_u8: expected uint8[H, W, 3], got {img.dtype}{list(img.shape)}")
        if min(img.shape[:2]) < 8:  # below one 4x4 block of the half-resolution band: nothing to read
            return np.zeros(self.bits, np.uint8)
        decoder = self._cls(watermarks=[], wmLen=self.bits)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty list, as above
            bits = decoder.decode(np.ascontiguousarray(img[..., ::-1]))
        return np.asarray(bits, np.uint8)
