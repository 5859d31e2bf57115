"""Embedding and extraction at any resolution with a trained encoder/extractor.

embed: the image is resized to working_size x working_size, cut into the tile grid, each tile gets its residual from the
encoder (the same payload in every tile), the residual is stitched, upsampled back to the original size and added;
the result is rounded to uint8 (TrustMark's resolution-agnostic recipe, QRMark's tile grid). Optionally the residual
is first refined at working size by gradient steps against the extractor (informed embedding, `refine_residual`).
extract: the inverse geometry: an image at least working_size on both sides is resized to working_size x working_size
(where embed computed the residual); a smaller one (a crop, a downscaled copy) is read at its own scale; then the
extractor reads one tile (or the whole image for the full-image baseline).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qrjax import tiling
from qrjax.watermark.config import WatermarkConfig
from qrjax.watermark.losses import bit_loss
from qrjax.watermark.model import encoder_module, extractor_module, to_model_range


class WatermarkModel(NamedTuple):
    """A trained watermarker: its config and {'encoder': vars, 'extractor': vars[, 'whitening': {'w','b'}]}."""

    config: WatermarkConfig
    variables: dict


def encoder_residual(config: WatermarkConfig, enc_vars, images: jax.Array, bits: jax.Array,
                     train: bool = False):
    """images: f32[B, T, T, 3] in [0, 1] -> (residual f32[B, T, T, 3] in [-strength, strength], new batch_stats)."""
    mod = encoder_module(config)
    if train:
        r, upd = mod.apply(enc_vars, to_model_range(images), bits, train=True, mutable=["batch_stats"])
        return config.strength * r, upd["batch_stats"]
    return config.strength * mod.apply(enc_vars, to_model_range(images), bits, train=False), None


def extractor_logits(config: WatermarkConfig, ext_vars, images: jax.Array, train: bool = False, whitening=None):
    """images: f32[B, H, W, 3] in [0, 1] -> (logits f32[B, bits], new batch_stats or None)."""
    if train:
        logits, upd = extractor_module(config).apply(ext_vars, to_model_range(images), train=True,
                                                     mutable=["batch_stats"])
        return logits, upd["batch_stats"]
    return read_logits(config, ext_vars, to_model_range(images), whitening), None


def read_logits(config: WatermarkConfig, ext_vars, x: jax.Array, whitening=None) -> jax.Array:
    """Inference: x f32[B, H, W, 3] already in the model's [-1, 1] -> whitened logits f32[B, bits]."""
    logits = extractor_module(config).apply(ext_vars, x, train=False)
    if whitening is not None:
        logits = logits @ whitening["w"].T + whitening["b"]
    return logits


def quantize(x: jax.Array) -> jax.Array:
    """[0, 1] float -> the nearest uint8 level (straight-through gradient), still float in [0, 1]."""
    y = jnp.clip(x, 0.0, 1.0) * 255.0
    return (y + jax.lax.stop_gradient(jnp.round(y) - y)) / 255.0


def _embed_same_size(config: WatermarkConfig, variables, images_u8, bits, strength_scale, refine_steps: int):
    """Three compiled pieces, so the costly one (encoder + refinement at working size) compiles once per batch size
    whatever the images' size: resize to working size, residual there, upsample and add."""
    work = _to_working(config.working_size, images_u8)
    res = _working_residual(config, variables, work, bits, strength_scale, refine_steps)
    return _add_residual(images_u8, res)


@partial(jax.jit, static_argnums=0)
def _to_working(s: int, images_u8):
    b, h, w, _ = images_u8.shape
    x = images_u8.astype(jnp.float32) / 255.0
    return jax.image.resize(x, (b, s, s, 3), "linear", antialias=True) if (h, w) != (s, s) else x


@partial(jax.jit, static_argnums=(0, 5))
def _working_residual(config: WatermarkConfig, variables, work, bits, strength_scale, refine_steps: int):
    b, s = work.shape[0], work.shape[1]
    enc_vars = variables["encoder"]
    if config.full_image:
        res, _ = encoder_residual(config, enc_vars, work, bits)
    else:
        g = tiling.grid(s, s, config.tile)
        tiles = tiling.extract_grid(work, g).reshape(b * len(g), config.tile, config.tile, 3)
        res, _ = encoder_residual(config, enc_vars, tiles, jnp.repeat(bits, len(g), axis=0))
        res = tiling.stitch(res.reshape(b, len(g), config.tile, config.tile, 3), g)
    amplitude = strength_scale * config.strength
    if refine_steps:
        return refine_residual(config, variables, work, res / config.strength, bits, amplitude, refine_steps)
    return strength_scale * res


@jax.jit
def _add_residual(images_u8, res):
    b, h, w, _ = images_u8.shape
    x = images_u8.astype(jnp.float32) / 255.0
    if (h, w) != res.shape[1:3]:
        res = jax.image.resize(res, (b, h, w, 3), "linear")
    return jnp.round(jnp.clip(x + res, 0.0, 1.0) * 255.0).astype(jnp.uint8)


def refine_residual(config: WatermarkConfig, variables, work, unit_residual, bits, amplitude, steps: int,
                    learning_rate: float = 0.3):
    """Informed embedding: a few Adam steps on the encoder's residual against the extractor's loss.

    work: f32[B, S, S, 3] working-size images; unit_residual: the encoder's output in [-1, 1]. The residual stays
    amplitude * tanh(u) (the same peak bound as the encoder's), u starts at the encoder's output and descends the
    bit BCE of what detection reads: every grid tile (or the whole image for the full-image baseline), through the
    whitening when the model has one. The encoder cannot see how its carriers collide with this particular image;
    the gradient can, and cancels that interference (optimisation-based embedding, as in Fernandez et al. 2022,
    "Watermarking images in self-supervised latent spaces"). Returns the residual f32[B, S, S, 3]."""
    b, s = work.shape[0], work.shape[1]
    g = None if config.full_image else tiling.grid(s, s, config.tile)
    target = bits if g is None else jnp.repeat(bits, len(g), axis=0)

    if config.carrier_band:  # keep what the refinement adds in the carrier's band: below band / period cycles/px
        fy = jnp.abs(jnp.fft.fftfreq(work.shape[1]))[:, None]
        fx = jnp.abs(jnp.fft.fftfreq(work.shape[2]))[None, :]
        cut = config.carrier_band / config.carrier_period + 1e-6
        band = ((fy <= cut) & (fx <= cut)).astype(work.dtype)[None, :, :, None]

    def residual(u):  # a luma model's residual stays one plane, added equally to R, G and B
        if config.carrier_band:  # the encoder's bound: RMS amplitude (see Encoder), and the carrier's band
            u = jnp.real(jnp.fft.ifft2(jnp.fft.fft2(u, axes=(1, 2)) * band, axes=(1, 2)))
            r = amplitude * u * jax.lax.rsqrt(jnp.mean(u ** 2, axis=(1, 2, 3), keepdims=True) + 1e-12)
        else:  # peak amplitude
            r = amplitude * jnp.tanh(u)
        return jnp.broadcast_to(r, work.shape) if config.luma else r

    def loss(u):
        xw = jnp.clip(work + residual(u), 0.0, 1.0)
        read = xw if g is None else tiling.extract_grid(xw, g).reshape(b * len(g), config.tile, config.tile, 3)
        logits, _ = extractor_logits(config, variables["extractor"], read, whitening=variables.get("whitening"))
        return bit_loss(logits, target)

    opt = optax.adam(learning_rate)

    def step(carry, _):
        u, opt_state = carry
        updates, opt_state = opt.update(jax.grad(loss)(u), opt_state, u)
        return (optax.apply_updates(u, updates), opt_state), None

    u0 = unit_residual[..., :1] if config.luma else unit_residual
    u0 = u0 if config.carrier_band else jnp.arctanh(jnp.clip(u0, -0.99, 0.99))
    (u, _), _ = jax.lax.scan(step, (u0, opt.init(u0)), None, length=steps)
    return residual(u)


def check_images(images, name="images") -> list[np.ndarray] | np.ndarray:
    if isinstance(images, np.ndarray | jax.Array):
        arr = np.asarray(images)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8[B, H, W, 3], got {arr.dtype}{list(arr.shape)}")
        return arr
    out = [np.asarray(im) for im in images]
    for i, im in enumerate(out):
        if im.ndim != 3 or im.shape[-1] != 3 or im.dtype != np.uint8:
            raise ValueError(f"{name}[{i}]: expected uint8[H, W, 3], got {im.dtype}{list(im.shape)}")
    return out


def embed(model: WatermarkModel, images, payload_bits, *, strength: float = 1.0, refine_steps: int | None = None):
    """Watermark images with payload_bits.

    images: uint8[B, H, W, 3] (or a list of uint8[H, W, 3] of different sizes); payload_bits: {0,1}[B, bits] or
    [bits] for all. strength scales the trained residual (1.0 = as trained). refine_steps (default
    config.refine_steps; 0 = the encoder's residual as it is) refines the residual against the extractor, see
    refine_residual. Returns uint8 of the same shape(s).
    """
    config = model.config
    imgs = check_images(images)
    bits = np.asarray(payload_bits)
    if bits.ndim == 1:
        bits = np.broadcast_to(bits, (len(imgs), bits.shape[0]))
    if bits.shape != (len(imgs), config.bits) or not np.all((bits == 0) | (bits == 1)):
        raise ValueError(f"payload_bits: expected 0/1 bits of shape ({len(imgs)}, {config.bits}) or ({config.bits},), "
                         f"got shape {bits.shape}")
    steps = config.refine_steps if refine_steps is None else int(refine_steps)
    if steps < 0:
        raise ValueError(f"refine_steps: expected >= 0, got {steps}")
    bits = jnp.asarray(bits, jnp.int32)
    v = model.variables
    if isinstance(imgs, np.ndarray):
        return np.asarray(_embed_same_size(config, v, jnp.asarray(imgs), bits, strength, steps))
    return [np.asarray(_embed_same_size(config, v, jnp.asarray(im[None]), bits[i:i + 1], strength, steps))[0]
            for i, im in enumerate(imgs)]


@partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _extract_same_size(config, variables, images_u8, read: int | None, placement: str, cell: tuple[int, int], key):
    x = images_u8.astype(jnp.float32) / 255.0
    b, h, w, _ = x.shape
    h, w = tiling.read_shape(h, w, config.working_size, read)
    if (h, w) != x.shape[1:3]:
        x = jax.image.resize(x, (b, h, w, 3), "linear", antialias=True)
    if read is not None:
        x = tiling.extract(x, tiling.place(key, b, h, w, read, placement, cell), read)
    logits, _ = extractor_logits(config, variables["extractor"], x, whitening=variables.get("whitening"))
    return logits


def extract(model: WatermarkModel, images, *, key: jax.Array | None = None, placement: str | None = None,
            full_image: bool | None = None, tile: int | None = None, cell: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Extractor logits f32[B, bits] (bit = logit > 0); images: uint8[B, H, W, 3] or a list of uint8[H, W, 3].

    Tiled models read one tile (config.placement, or `placement`; size `tile`, default config.tile; placement
    "fixed" reads grid cell `cell` = (row, col)); full-image models, or full_image=True, read the whole image.
    """
    config = model.config
    imgs = check_images(images)
    full = config.full_image if full_image is None else full_image
    read = None if full else (tile or config.tile)
    placement = placement or config.placement
    period = config.extractor_period
    if read is not None and period and placement == "random":
        raise ValueError(f"placement 'random': this model demodulates the carrier's phase (extractor_period="
                         f"{period}) and must read a tile on the embedding grid; use 'fixed' or 'random_grid'")
    if read is not None and period and read % period:
        raise ValueError(f"tile {read}: this model demodulates the carrier's phase (extractor_period={period}); "
                         f"grid tiles stay in phase only when the tile is a multiple of {period}")
    key = jax.random.key(0) if key is None else key
    if isinstance(imgs, np.ndarray):
        return np.asarray(_extract_same_size(config, model.variables, jnp.asarray(imgs), read, placement,
                                                 tuple(cell), key))
    keys = jax.random.split(key, len(imgs))
    return np.concatenate([np.asarray(_extract_same_size(config, model.variables, jnp.asarray(im[None]), read,
                                                         placement, tuple(cell), keys[i]))
                           for i, im in enumerate(imgs)])
