"""SDiT: region-adaptive computation for a text-to-image DiT (arXiv 2601.12283), training-free.

Each denoising step computes only the image tokens whose region is still changing; the others reuse their cached
velocity, and their keys and values (cached per block) stay visible to the computed tokens' attention:
1. segmentation: Quickshift (scikit-image) over the current clean-image prediction x0 = x_t - t v (the latent, one
   pixel per latent pixel, each channel scaled to 0..100), every `sdit_segment_every` steps; each token takes the
   region of its patch's centre;
2. complexity: per token, the step-to-step change of its velocity, mean |v_new - v_old| divided by the steps between
   the two computations; per region, the mean over its tokens;
3. scheduling: regions in decreasing complexity until `sdit_active` of the tokens are covered are computed at every
   step; every other region is computed when it has waited `sdit_period` steps (calm regions update less often);
4. boundary-aware refinement: tokens of cached regions within `sdit_boundary` tokens of a computed region are
   computed too, so that no seam separates fresh from cached content.
The first `sdit_warmup` and the last `sdit_final` steps compute every token. This module holds the host-side
planning (numpy); qrjax.diffusion.t2i runs the programs.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import quickshift

from qrjax.diffusion.config import TextToImageConfig


def segment(x0: np.ndarray, patch: int, cfg: TextToImageConfig) -> np.ndarray:
    """int32[h/p, w/p] region labels 0..R-1 of the tokens, from Quickshift on a latent f32[h, w, C] (each token
    takes the label of its patch's centre pixel)."""
    x0 = np.asarray(x0, np.float64)
    lo, hi = x0.min(axis=(0, 1)), x0.max(axis=(0, 1))
    # every channel over 0..100, the span of Lab's lightness that Quickshift's parameters are usually set for
    feats = 100.0 * (x0 - lo) / np.maximum(hi - lo, 1e-6)
    labels = quickshift(feats, ratio=cfg.quickshift_ratio, kernel_size=cfg.quickshift_kernel,
                        max_dist=cfg.quickshift_max_dist, convert2lab=False, rng=0, channel_axis=-1)
    c = patch // 2
    tokens = labels[c::patch, c::patch]
    _, dense = np.unique(tokens, return_inverse=True)
    return dense.reshape(tokens.shape).astype(np.int32)


def region_means(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """f64[R]: the mean of per-token values over each region."""
    flat = labels.reshape(-1)
    r = int(flat.max()) + 1
    return np.bincount(flat, values.reshape(-1), r) / np.maximum(np.bincount(flat, minlength=r), 1)


def plan(labels: np.ndarray, rate: np.ndarray, last: np.ndarray, step: int, cfg: TextToImageConfig) -> np.ndarray:
    """bool[h/p, w/p]: the tokens to compute at `step`.

    labels: int32[gh, gw] regions; rate: f[gh, gw] per-token change per step (complexity); last: int[gh, gw] the step
    each token was last computed."""
    n = labels.size
    complexity = region_means(labels, rate)
    sizes = np.bincount(labels.reshape(-1), minlength=len(complexity))
    waited = step - region_means(labels, last)  # a region's tokens are computed together; boundary ones more often
    order = np.argsort(-complexity, kind="stable")
    covered = np.cumsum(sizes[order])
    k = int(np.searchsorted(covered, cfg.sdit_active * n)) + 1  # the smallest prefix covering the share
    chosen = np.zeros(len(complexity), bool)
    chosen[order[:k]] = True
    chosen |= waited >= cfg.sdit_period
    mask = chosen[labels]
    if cfg.sdit_boundary > 0 and mask.any() and not mask.all():
        mask = ndimage.binary_dilation(mask, iterations=cfg.sdit_boundary)
    return mask


def bucket(count: int, n: int, buckets: int) -> int:
    """The padded token count of a partial step: a multiple of n / buckets (one compiled program per size)."""
    unit = max(1, -(-n // max(1, buckets)))
    return min(n, max(unit, -(-count // unit) * unit))


__all__ = ["bucket", "plan", "region_means", "segment"]
