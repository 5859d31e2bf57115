"""Metrics shared by the systems: image fidelity to a reference (PSNR, SSIM), seams at tile borders, and binary
classifier quality (ROC AUC, log loss: DLRM click prediction).

`psnr` and `ssim` are plain `jnp` (they run under `jit`, inside training steps, and on numpy inputs alike) and take
image batches `[..., H, W, C]` to one value per image `[...]` (a single `[H, W, C]` image gives a scalar); a
grayscale image needs its channel axis of 1. Both match scikit-image (`peak_signal_noise_ratio`,
`structural_similarity`), which the tests check. Arithmetic is float32 at least: integer (e.g. uint8) and
half-precision inputs are converted to float32, float64 inputs stay float64 only when `jax_enable_x64` is on.
scikit-image works in float64, so the values agree to float32 rounding (SSIM ~1e-5, PSNR ~1e-4 dB).

`data_range` has no default on purpose: the systems mix [0, 1] floats (training) and uint8 images (255), and a
wrong range silently shifts PSNR by 48 dB.

`roc_auc` and `log_loss` are numpy (evaluation on the host, over a whole held-out set) and match scikit-learn's
`roc_auc_score` and `log_loss`, which the tests check.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["log_loss", "psnr", "roc_auc", "seam_ratio", "ssim"]


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x.astype(jnp.float32)  # uint8 differences would wrap around
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_images(name: str, x, y) -> None:
    if jnp.shape(x) != jnp.shape(y):
        raise ValueError(f"{name}: the two images differ in shape: {jnp.shape(x)} vs {jnp.shape(y)}")
    if jnp.ndim(x) < 3:
        raise ValueError(f"{name}: images must be [..., H, W, C] (a grayscale image needs a trailing channel axis "
                         f"of 1), got shape {jnp.shape(x)}")


def psnr(x, y, data_range) -> jax.Array:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE) over each image's pixels and channels.

    x, y: images [..., H, W, C] of the same shape, any real dtype (uint8, float32, ...).
    data_range: the value span of the images, e.g. 255.0 for uint8, 1.0 for [0, 1] floats (a scalar; may be traced).
    Returns float32[...] (float64 with x64 and float64 inputs); +inf where the images are identical, as in
    scikit-image."""
    check_images("psnr", x, y)
    return _psnr(_as_float(x), _as_float(y), data_range)


@jax.jit
def _psnr(x, y, data_range):
    d = jnp.square(x - y)
    # rows first, then the rows' means: float32 sums of a million squares keep ~1e-6 relative error this way
    mse = jnp.mean(jnp.mean(d, axis=(-2, -1)), axis=-1)
    return 10.0 * jnp.log10(jnp.asarray(data_range, x.dtype) ** 2 / mse)


def ssim(x, y, data_range, *, win_size: int = 7, gaussian: bool = False, sigma: float = 1.5) -> jax.Array:
    """Mean structural similarity (Wang et al. 2004) of each image, averaged over its channels.

    x, y: images [..., H, W, C] of the same shape, any real dtype.
    data_range: the value span of the images (255.0 for uint8, 1.0 for [0, 1] floats).
    gaussian=False (default): scikit-image's default `structural_similarity(x, y, data_range=..., channel_axis=-1)`:
        uniform win_size x win_size window (win_size odd), sample covariance (normalised by N - 1).
    gaussian=True: Wang et al.'s SSIM, scikit-image's `gaussian_weights=True, sigma=sigma,
        use_sample_covariance=False`: a Gaussian window of `sigma` truncated at 3.5 sigma (11 taps for 1.5),
        population covariance; win_size is ignored.
    As in scikit-image, local statistics come from a separable filter, only windows that lie wholly inside the image
    count (a border of half a window is left out), K1 = 0.01 and K2 = 0.03.
    Returns float32[...] (float64 with x64 and float64 inputs); 1.0 where the images are identical."""
    check_images("ssim", x, y)
    if gaussian:
        if not sigma > 0:
            raise ValueError(f"ssim: sigma must be positive, got {sigma}")
        win_size = 2 * int(3.5 * sigma + 0.5) + 1  # scikit-image's (and scipy.ndimage's) radius for truncate=3.5
    elif win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"ssim: win_size must be a positive odd number, got {win_size}")
    h, w = jnp.shape(x)[-3:-1]
    if win_size > min(h, w):
        raise ValueError(f"ssim: a {win_size}x{win_size} window does not fit a {h}x{w} image")
    return _ssim(_as_float(x), _as_float(y), data_range, win_size, bool(gaussian), float(sigma))


def _window(win_size: int, gaussian: bool, sigma: float) -> np.ndarray:
    if not gaussian:
        return np.full(win_size, 1.0 / win_size)
    r = np.arange(win_size) - win_size // 2
    k = np.exp(-0.5 * r.astype(np.float64) ** 2 / sigma**2)
    return k / k.sum()


def _filter(a: jax.Array, k: np.ndarray) -> jax.Array:
    """Valid separable correlation of a [B, H, W, C] with the 1-D window k along H and W."""
    n = len(k)
    ho, wo = a.shape[1] - n + 1, a.shape[2] - n + 1
    a = sum(float(k[i]) * a[:, i:i + ho] for i in range(n))
    return sum(float(k[i]) * a[:, :, i:i + wo] for i in range(n))


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _ssim(x, y, data_range, win_size: int, gaussian: bool, sigma: float):
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    y = y.reshape(x.shape)
    k = _window(win_size, gaussian, sigma)
    # Variances are E[x^2] - E[x]^2 of values up to 255: centring each channel first keeps float32's cancellation
    # error far below the constants (C2 = 58.5 at 255); the means get the shift back.
    cx = jnp.mean(x, axis=(1, 2), keepdims=True)
    cy = jnp.mean(y, axis=(1, 2), keepdims=True)
    x, y = x - cx, y - cy
    ux, uy = _filter(x, k), _filter(y, k)
    n = win_size**2
    cov_norm = 1.0 if gaussian else n / (n - 1)
    vx = cov_norm * (_filter(x * x, k) - ux * ux)
    vy = cov_norm * (_filter(y * y, k) - uy * uy)
    vxy = cov_norm * (_filter(x * y, k) - ux * uy)
    ux, uy = ux + cx, uy + cy
    r = jnp.asarray(data_range, x.dtype)
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s, axis=(1, 2, 3)).reshape(lead)


def seam_ratio(image: np.ndarray, period: int, offset: tuple[int, int] = (0, 0), phase: int = 1) -> float:
    """Mean squared gradient across tile-border pixel lines (rows and cols at offset + k * period) over that across
    the other lines of the same phase modulo `phase`; 1.0 means the borders are invisible.

    image: [H, W] or [H, W, C] (channels are averaged first), any real dtype; computed in float64 on the host.
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


def _binary(name: str, labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"{name}: {y.size} labels but {s.size} scores")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"{name}: labels must be 0 or 1")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name}: {int((~np.isfinite(s)).sum())} scores are not finite")
    return y.astype(bool), s


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random negative (ties count
    one half), by the rank-sum (Mann-Whitney U) formula with average ranks for ties. labels: {0, 1}[N]."""
    y, s = _binary("roc_auc", labels, scores)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"roc_auc: needs both classes, got {pos} positives and {neg} negatives")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def log_loss(labels, logits) -> float:
    """Mean binary cross-entropy of click logits (natural log), computed stably from the logits."""
    y, z = _binary("log_loss", labels, logits)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))
