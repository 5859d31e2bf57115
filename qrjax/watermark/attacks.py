"""Image distortions: differentiable JAX versions for training, exact Pillow/numpy versions for evaluation.

Training attacks act on float32 images in [0, 1], shape [B, H, W, 3]; one is drawn per batch (`draw`), with its
shape-changing parameters (crop fraction, JPEG quality) static so every variant compiles once, and its continuous
parameters (blur sigma, brightness, contrast, noise level) drawn inside the step from a PRNG key.
Evaluation attacks act on one uint8[H, W, 3] image and return uint8, like a real-world edit would.
"""

from __future__ import annotations

import io
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance

from qrjax import tiling

# ----------------------------------------------------------------------------------------------- training attacks


def draw(rng: np.random.Generator, config, step: int | None = None) -> tuple[str, float | int | None]:
    """One training attack for a batch: (name, static parameter) drawn with config.attack_weights
    (identity during the first config.attack_warmup_steps steps)."""
    if step is not None and step < config.attack_warmup_steps:
        return "identity", None
    p = np.asarray(config.attack_weights, np.float64)
    name = config.attacks[int(rng.choice(len(config.attacks), p=p / p.sum()))]
    if name in ("crop", "resized_crop"):
        return name, float(config.crop_fractions[int(rng.integers(len(config.crop_fractions)))])
    if name == "jpeg":
        return name, int(config.jpeg_qualities[int(rng.integers(len(config.jpeg_qualities)))])
    return name, None  # real_jpeg draws its quality inside the step


def apply(attack: tuple[str, float | int | None], key: jax.Array, x: jax.Array, config) -> jax.Array:
    """Apply a drawn training attack to x: f32[B, H, W, 3] in [0, 1]."""
    name, param = attack
    if name == "identity":
        return x
    if name == "flip":
        return x[:, :, ::-1]
    if name in ("crop", "resized_crop"):
        side = crop_side(x.shape[1], param)
        y = random_crop(key, x, side)
        return resize(y, x.shape[1]) if name == "resized_crop" else y
    if name == "blur":
        sigma = jax.random.uniform(key, (), minval=config.blur_sigma[0], maxval=config.blur_sigma[1])
        return gaussian_blur(x, sigma, config.blur_kernel)
    if name == "color":
        kb, kc = jax.random.split(key)
        r = config.color_range
        b = jax.random.uniform(kb, (x.shape[0],), minval=1 - r, maxval=1 + r)
        c = jax.random.uniform(kc, (x.shape[0],), minval=1 - r, maxval=1 + r)
        return contrast(brightness(x, b), c)
    if name == "noise":
        return jnp.clip(x + config.noise_std * jax.random.normal(key, x.shape), 0.0, 1.0)
    if name == "jpeg":
        return jpeg(x, param)
    if name == "real_jpeg":
        lo, hi = config.real_jpeg_qualities
        return real_jpeg(x, jax.random.randint(key, (), lo, hi + 1))
    if name == "jitter":
        return misregister(key, x, config.jitter)
    raise ValueError(f"unknown training attack {name!r}")


def crop_side(size: int, area_fraction: float) -> int:
    """Side of a square crop keeping `area_fraction` of a size x size image (QRMark: floor(s * sqrt(f)))."""
    return max(1, int(size * np.sqrt(area_fraction)))


def random_crop(key: jax.Array, x: jax.Array, side: int) -> jax.Array:
    return tiling.extract(x, tiling.place(key, x.shape[0], x.shape[1], x.shape[2], side, "random"), side)


def resize(x: jax.Array, size: int) -> jax.Array:
    """Bilinear resize of [B, H, W, C] to [B, size, size, C] (antialiased when shrinking)."""
    return jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bilinear")


def gaussian_kernel(sigma, size: int) -> jax.Array:
    r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
    k = jnp.exp(-0.5 * (r / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: jax.Array, sigma, size: int) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] with a size-tap kernel, mirror (reflect) padding; sigma may be traced."""
    k = gaussian_kernel(sigma, size)
    pad = size // 2
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    rows = sum(k[i] * xp[:, i:i + h] for i in range(size))
    return sum(k[i] * rows[:, :, i:i + w] for i in range(size))


def _gray_mean(x: jax.Array) -> jax.Array:
    gray = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return gray.mean(axis=(1, 2))


def brightness(x: jax.Array, factor) -> jax.Array:
    """PIL ImageEnhance.Brightness: blend with black. factor: scalar or f32[B]."""
    f = jnp.reshape(jnp.asarray(factor, x.dtype), (-1, 1, 1, 1))
    return jnp.clip(x * f, 0.0, 1.0)


def contrast(x: jax.Array, factor) -> jax.Array:
    """PIL ImageEnhance.Contrast: blend with the mean grey level. factor: scalar or f32[B]."""
    f = jnp.reshape(jnp.asarray(factor, x.dtype), (-1, 1, 1, 1))
    mean = _gray_mean(x)[:, None, None, None]
    return jnp.clip(mean + f * (x - mean), 0.0, 1.0)


# --- differentiable JPEG: YCbCr, 4:2:0 chroma, 8x8 DCT, quantise with a straight-through round, inverse.

LUMA_Q = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float32).reshape(8, 8)
CHROMA_Q = np.full((8, 8), 99, np.float32)
CHROMA_Q[:4, :4] = np.array([17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 99, 47, 66, 99, 99]).reshape(4, 4)


def quant_table(base: np.ndarray, quality: int) -> np.ndarray:
    """The IJG quality scaling libjpeg (and Pillow) applies to the standard tables."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality {quality} outside 1..100")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255).astype(np.float32)


def _dct_matrix() -> np.ndarray:
    n = np.arange(8)
    d = np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / 16) * np.sqrt(2 / 8)
    d[0] /= np.sqrt(2)
    return d.astype(np.float32)


def _round_ste(x):
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def _blockwise(plane: jax.Array, q: np.ndarray) -> jax.Array:
    """DCT -> quantise -> dequantise -> IDCT on every 8x8 block of [B, H, W] (H, W multiples of 8)."""
    b, h, w = plane.shape
    d = jnp.asarray(_dct_matrix())
    blocks = plane.reshape(b, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)
    coef = d @ blocks @ d.T
    coef = _round_ste(coef / q) * q
    out = d.T @ coef @ d
    return out.transpose(0, 1, 3, 2, 4).reshape(b, h, w)


@partial(jax.jit, static_argnames="quality")
def jpeg(x: jax.Array, quality: int) -> jax.Array:
    """Differentiable JPEG approximation of f32[B, H, W, 3] in [0, 1] (baseline JPEG with 4:2:0 chroma, as Pillow)."""
    b, h, w, _ = x.shape
    ph, pw = -h % 16, -w % 16
    v = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") * 255.0
    r, g, bl = v[..., 0], v[..., 1], v[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl
    hh, ww = y.shape[1:]

    def sub(c):
        return c.reshape(b, hh // 2, 2, ww // 2, 2).mean(axis=(2, 4))

    def up(c):
        return jnp.repeat(jnp.repeat(c, 2, axis=1), 2, axis=2)

    y = _blockwise(y - 128.0, quant_table(LUMA_Q, quality)) + 128.0
    cb = up(_blockwise(sub(cb), quant_table(CHROMA_Q, quality)))
    cr = up(_blockwise(sub(cr), quant_table(CHROMA_Q, quality)))
    rgb = jnp.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    rgb = _round_ste(jnp.clip(rgb, 0.0, 255.0)) / 255.0
    return rgb[:, :h, :w]


# --- real JPEG (libjpeg through Pillow) in the forward pass, identity in the backward pass.


def _jpeg_batch_host(x: np.ndarray, quality) -> np.ndarray:
    q = int(quality)
    u8 = np.clip(np.round(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)
    return np.stack([jpeg_pil(im, q) for im in u8]).astype(np.float32) / 255.0


@jax.custom_vjp
def real_jpeg(x: jax.Array, quality: jax.Array) -> jax.Array:
    """Pillow's JPEG at `quality` (a traced int32 scalar, so every quality shares one compiled step) of
    f32[B, H, W, 3] in [0, 1], through a host callback; the gradient passes straight through (Zhang et al., ACM
    MM'21; Stable Signature's `x + (jpeg(x) - x).detach()`), so the forward pass is the exact codec."""
    return jax.pure_callback(_jpeg_batch_host, jax.ShapeDtypeStruct(x.shape, jnp.float32), x, quality)


def _real_jpeg_fwd(x, quality):
    return real_jpeg(x, quality), quality


def _real_jpeg_bwd(quality, g):
    return g, np.zeros(np.shape(quality), jax.dtypes.float0)


real_jpeg.defvjp(_real_jpeg_fwd, _real_jpeg_bwd)


def misregister(key: jax.Array, x: jax.Array, amount: tuple[float, float, float]) -> jax.Array:
    """A small per-image similarity warp of f32[B, H, W, C] (bilinear, edge-clamped): shift up to amount[0] px,
    zoom within 1 +- amount[1], rotation up to amount[2] degrees, about the centre. Trains the extractor to read
    through the residual error the detector's synchronisation leaves."""
    b = x.shape[0]
    ks, kz, kr = jax.random.split(key, 3)
    shift = jax.random.uniform(ks, (b, 2), minval=-amount[0], maxval=amount[0])
    zoom = 1.0 + jax.random.uniform(kz, (b,), minval=-amount[1], maxval=amount[1])
    degrees = jax.random.uniform(kr, (b,), minval=-amount[2], maxval=amount[2])
    return jax.vmap(lambda im, z, d, sh: tiling.similarity_warp(im, z, d, sh))(x, zoom, degrees, shift)


# --------------------------------------------------------------------------------------------- evaluation attacks


def jpeg_pil(img: np.ndarray, quality: int) -> np.ndarray:
    """uint8[H, W, 3] through libjpeg (Pillow's defaults: 4:2:0 chroma, standard tables at IJG `quality`)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def center_crop_sides(img: np.ndarray, side_fraction: float) -> np.ndarray:
    """The centred round(side_fraction * H) x round(side_fraction * W) window of uint8[H, W, 3], not resized back
    (OmniSealBench's crop "edge ratio"; VideoSeal floors the size and places the window at random)."""
    h, w = img.shape[:2]
    ch, cw = max(1, round(h * side_fraction)), max(1, round(w * side_fraction))
    y, x = (h - ch) // 2, (w - cw) // 2
    return img[y:y + ch, x:x + cw]


def center_crop(img: np.ndarray, area_fraction: float) -> np.ndarray:
    """The centred window keeping `area_fraction` of the AREA (each side scaled by sqrt(area_fraction))."""
    return center_crop_sides(img, float(np.sqrt(area_fraction)))


def resize_pil(img: np.ndarray, scale: float) -> np.ndarray:
    """Both sides scaled by `scale` (rounded), Pillow bilinear. Pillow's resize is a separable convolution whose
    triangle filter is widened by the reduction factor, so downscales are antialiased (like torchvision's
    antialias=True) with or without `reducing_gap`; its default reducing_gap=None skips the box pre-reduction."""
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                  Image.BILINEAR))


def blur_np(img: np.ndarray, sigma: float, kernel_size: int | None = None) -> np.ndarray:
    """Exact separable Gaussian blur of uint8[H, W, 3] with mirror padding that excludes the edge pixel (numpy
    "reflect", torch "reflect", OpenCV BORDER_REFLECT_101), rounded back to uint8. kernel_size (odd; default
    2 * round(4 sigma) + 1, radius 4 sigma) taps of exp(-x^2 / 2 sigma^2), normalised."""
    radius = int(4 * sigma + 0.5) if kernel_size is None else kernel_size // 2
    if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
        raise ValueError(f"kernel_size {kernel_size}: expected a positive odd number")
    r = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (r / sigma) ** 2)
    k /= k.sum()
    x = np.pad(img.astype(np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    x = sum(k[i] * x[i:i + h] for i in range(len(k)))
    x = sum(k[i] * x[:, i:i + w] for i in range(len(k)))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def opencv_sigma(kernel_size: int) -> float:
    """The sigma OpenCV's getGaussianKernel (and torchvision's GaussianBlur with sigma=None, hence VideoSeal and
    OmniSealBench) uses for a kernel_size-tap kernel: 0.3 * ((k - 1) / 2 - 1) + 0.8."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def blur_kernel(img: np.ndarray, kernel_size: int) -> np.ndarray:
    """Gaussian blur with a kernel_size-tap kernel at OpenCV's default sigma (torchvision GaussianBlur(k))."""
    return blur_np(img, opencv_sigma(kernel_size), kernel_size)


def brightness_pil(img: np.ndarray, factor: float) -> np.ndarray:
    """Pillow ImageEnhance.Brightness: blend with black (img * factor, clipped)."""
    return np.asarray(ImageEnhance.Brightness(Image.fromarray(img)).enhance(factor))


def contrast_pil(img: np.ndarray, factor: float) -> np.ndarray:
    """Pillow ImageEnhance.Contrast: blend with the image's mean grey level (rounded to an integer)."""
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(img)).enhance(factor))


def rotate_pil(img: np.ndarray, degrees: float) -> np.ndarray:
    """Counter-clockwise rotation about the image centre, same size, bilinear, black corners (PIL's rotate;
    torchvision's F.rotate does the same with nearest-neighbour sampling by default)."""
    return np.asarray(Image.fromarray(img).rotate(degrees, resample=Image.BILINEAR))


def _combined(img: np.ndarray, quality: int, side_fraction: float, factor: float) -> np.ndarray:
    # VideoSeal's Sequential(JPEG(), Crop(), Brightness()) applies its members in order: JPEG first.
    return brightness_pil(center_crop_sides(jpeg_pil(img, quality), side_fraction), factor)


# The table: OmniSealBench / VideoSeal validation attacks (rotations, edge ratios, blur kernels, the combined
# attack) with the JPEG and resize levels the QRMark targets name. Order = the table's row order.
STANDARD_ATTACKS = (
    "none", "jpeg50", "jpeg60", "jpeg70", "jpeg80", "jpeg90", "crop0.55", "crop0.71",
    "resize0.5", "resize0.71", "resize1.5", "resize2.0", "rotate2", "rotate5", "rotate10", "blur3", "blur5",
    "brightness0.5", "brightness1.5", "contrast0.5", "contrast1.5", "jpeg80+crop0.71+brightness0.5",
)


def _standard() -> dict:
    out = {"none": lambda im: im}
    for q in (50, 60, 70, 80, 90):
        out[f"jpeg{q}"] = partial(jpeg_pil, quality=q)
    for f in (0.55, 0.71):
        out[f"crop{f}"] = partial(center_crop_sides, side_fraction=f)
    for f in (0.5, 0.71, 1.5, 2.0):
        out[f"resize{f}"] = partial(resize_pil, scale=f)
    for d in (2, 5, 10):
        out[f"rotate{d}"] = partial(rotate_pil, degrees=float(d))
    for k in (3, 5):
        out[f"blur{k}"] = partial(blur_kernel, kernel_size=k)
    for f in (0.5, 1.5):
        out[f"brightness{f}"] = partial(brightness_pil, factor=f)
        out[f"contrast{f}"] = partial(contrast_pil, factor=f)
    out["jpeg80+crop0.71+brightness0.5"] = partial(_combined, quality=80, side_fraction=0.71, factor=0.5)
    if set(out) != set(STANDARD_ATTACKS):
        raise AssertionError(f"STANDARD_ATTACKS and their functions differ: {set(out) ^ set(STANDARD_ATTACKS)}")
    return {name: out[name] for name in STANDARD_ATTACKS}


# STANDARD_ATTACKS first, then the older names the demo, notebook and tests use (crop/resize in AREA percent).
EVAL_ATTACKS = {
    **_standard(),
    "crop50": lambda im: center_crop(im, 0.5),
    "crop10": lambda im: center_crop(im, 0.1),
    "resize50": lambda im: resize_pil(im, 0.5),
    "blur2": lambda im: blur_np(im, 2.0),
    "crop50+bright1.5+jpeg80": lambda im: jpeg_pil(brightness_pil(center_crop(im, 0.5), 1.5), 80),
}


def eval_attack(name: str, img: np.ndarray) -> np.ndarray:
    """Apply the evaluation attack `name` (a key of EVAL_ATTACKS) to uint8[H, W, 3]."""
    if name not in EVAL_ATTACKS:
        raise ValueError(f"unknown evaluation attack {name!r}; choose from {list(EVAL_ATTACKS)}")
    return EVAL_ATTACKS[name](img)
