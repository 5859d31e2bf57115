"""A fixed linear autoencoder for latent diffusion on this machine: 2x2 (or f x f) pixel-unshuffle followed by PCA.

It plays the VAE's role in SuperGen's pipeline (decode -> bicubic upscale in pixel space -> encode) without any
training: the PCA is fitted on patches of the training images, so it is exact on its span and loses only the
smallest patch components. Latent channels are scaled to unit variance over the fitting set.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Autoencoder(NamedTuple):
    """factor: pixels per latent pixel per side; mean: f32[f*f*3]; components: f32[k, f*f*3] (orthonormal rows);
    scale: f32[k]. factor 1 with identity components is the pixel-space 'autoencoder'."""

    factor: int
    mean: np.ndarray
    components: np.ndarray
    scale: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.components.shape[0])

    def encode(self, images: jax.Array) -> jax.Array:
        """images: f32[..., H, W, 3] in [-1, 1] -> latents f32[..., H/f, W/f, k]."""
        patches = unshuffle(images, self.factor)
        return (patches - self.mean) @ jnp.asarray(self.components).T / self.scale

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents: f32[..., h, w, k] -> images f32[..., h*f, w*f, 3] (not clipped)."""
        patches = (latents * self.scale) @ jnp.asarray(self.components) + self.mean
        return shuffle(patches, self.factor)

    def to_dict(self) -> dict:
        return {"factor": self.factor, "mean": np.asarray(self.mean), "components": np.asarray(self.components),
                "scale": np.asarray(self.scale)}

    @classmethod
    def from_dict(cls, d: dict) -> "Autoencoder":
        return cls(int(d["factor"]), *(np.asarray(d[k], np.float32) for k in ("mean", "components", "scale")))


def unshuffle(x: jax.Array, f: int) -> jax.Array:
    """[..., H, W, C] -> [..., H/f, W/f, f*f*C] (space-to-depth)."""
    *lead, h, w, c = x.shape
    if h % f or w % f:
        raise ValueError(f"unshuffle: image {h}x{w} is not divisible by the autoencoder factor {f}")
    x = x.reshape(*lead, h // f, f, w // f, f, c)
    x = jnp.moveaxis(x, -4, -3)  # [..., h, w, f, f, c]
    return x.reshape(*lead, h // f, w // f, f * f * c)


def shuffle(x: jax.Array, f: int) -> jax.Array:
    """Inverse of `unshuffle`."""
    *lead, h, w, d = x.shape
    c = d // (f * f)
    x = x.reshape(*lead, h, w, f, f, c)
    x = jnp.moveaxis(x, -3, -4)  # [..., h, f, w, f, c]
    return x.reshape(*lead, h * f, w * f, c)


def pixel_autoencoder() -> Autoencoder:
    return Autoencoder(1, np.zeros(3, np.float32), np.eye(3, dtype=np.float32), np.full(3, 0.5, np.float32))


def fit_pca(images_u8: np.ndarray, factor: int, channels: int) -> Autoencoder:
    """PCA of the f x f patches of uint8[N, H, W, 3] images mapped to [-1, 1]."""
    d = factor * factor * 3
    if not 1 <= channels <= d:
        raise ValueError(f"fit_pca: {channels} latent channels for {factor}x{factor}x3 patches (at most {d})")
    x = images_u8.astype(np.float64) / 127.5 - 1.0
    patches = np.asarray(unshuffle(jnp.asarray(x), factor)).reshape(-1, d)
    mean = patches.mean(0)
    _, s, vt = np.linalg.svd(patches - mean, full_matrices=False)
    components = vt[:channels]
    components *= np.sign(components.sum(1, keepdims=True) + 1e-12)  # a fixed sign convention
    scale = s[:channels] / np.sqrt(len(patches))
    return Autoencoder(factor, mean.astype(np.float32), components.astype(np.float32), scale.astype(np.float32))
