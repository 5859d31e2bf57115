"""Image metrics for tiled generation: fidelity to a reference output (PSNR, SSIM) and seams at tile borders."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of uint8-range images (inf when equal)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity of two [H, W, 3] images (scikit-image's, over colour channels)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(np.asarray(a), np.asarray(b), channel_axis=-1, data_range=data_range))


def seam_ratio(image: np.ndarray, period: int, offset: tuple[int, int] = (0, 0), phase: int = 1) -> float:
    """Mean squared gradient across tile-border pixel lines (rows and cols at offset + k * period) over that across
    the other lines of the same phase modulo `phase`; 1.0 means the borders are invisible.

    phase: the autoencoder's patch size: lines between latent pixels are compared only with lines between latent
    pixels, since lines inside one patch differ systematically."""
    g = np.asarray(image, np.float64)
    g = g.mean(-1) if g.ndim == 3 else g
    dy, dx = np.diff(g, axis=0) ** 2, np.diff(g, axis=1) ** 2  # dy[i] lies between rows i and i + 1
    py, px = np.arange(1, g.shape[0]) - offset[0], np.arange(1, g.shape[1]) - offset[1]
    ry, rx = py % period == 0, px % period == 0
    oy, ox = (py % phase == 0) & ~ry, (px % phase == 0) & ~rx
    border = np.concatenate([dy[ry].ravel(), dx[:, rx].ravel()])
    inner = np.concatenate([dy[oy].ravel(), dx[:, ox].ravel()])
    if not border.size or not inner.size:
        raise ValueError(f"seam_ratio: a {g.shape[0]}x{g.shape[1]} image has no border or no other lines for "
                         f"period {period}")
    return float(border.mean() / inner.mean())
