"""A Flax linen DiT for flow matching: patchify, adaLN-zero blocks, axial RoPE attention, class or null conditioning.

`DiT(config).apply({'params': p}, x, t, y) -> v`
- x: f32[B, H, W, C] image latents or f32[B, F, H, W, C] video latents (config.frames = F);
- t: f32[B] flow time in [0, 1] (1 = pure noise); y: int32[B] class labels (config.null_class = unconditional);
- v: the predicted velocity noise - x0, shaped like x.
Positions enter only through rotary embeddings over (frame, row, column), which are relative: the same weights read
any H x W (any number of tokens), which is what lets SuperGen run them on tiles of a larger canvas. Attention goes
through the Pallas flash kernel on GPU (config.attention = "auto") and XLA's fused attention elsewhere.

`DiffusionModel` is a trained generator as inference uses it: config, DiT parameters, autoencoder, class names.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from qrjax.diffusion.autoencoder import Autoencoder
from qrjax.diffusion.config import DiTConfig


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """f32[B] in [0, 1] -> f32[B, dim] sinusoidal features of 1000 t."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float,
                time_axis: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin: f32[F*h*w, head_dim/2] for a (frames, rows, cols) token grid, row-major.

    The rotary pairs are split between axes: rows and columns share them equally; a video model (time_axis) gives a
    quarter to time. The split is the model's, not the input's: an image model reading several frames keeps its
    spatial encoding and sees frames without positions."""
    f, h, w = grid
    pairs = head_dim // 2
    n_t = pairs // 4 if time_axis else 0
    n_y = (pairs - n_t) // 2
    n_x = pairs - n_t - n_y
    pos = np.stack(np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 3)
    angles = []
    for axis, n in enumerate((n_t, n_y, n_x)):
        if n:
            inv = theta ** (-np.arange(n) / n)
            angles.append(pos[:, axis:axis + 1] * inv[None])
    ang = np.concatenate(angles, -1).astype(np.float32)
    return np.cos(ang), np.sin(ang)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, L, H, D] rotated pairwise (first half with second half of D)."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], -1).astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mode: str = "auto") -> jax.Array:
    """[B, L, H, D] softmax attention: the Pallas flash kernel (mode 'kernel', or 'auto' on GPU) or XLA's."""
    if mode not in ("auto", "kernel", "xla"):
        raise ValueError(f"attention mode {mode!r}: choose auto, kernel or xla")
    if mode == "kernel" or (mode == "auto" and jax.default_backend() == "gpu"):
        from pallas_kernels.flash_attention import flash_attention

        return flash_attention(q, k, v)
    return jax.nn.dot_product_attention(q, k, v)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    dim: int
    heads: int
    mlp_ratio: float
    attention: str = "auto"

    @nn.compact
    def __call__(self, x, c, cos, sin):
        mod = nn.Dense(6 * self.dim, kernel_init=nn.initializers.zeros, name="adaLN")(nn.silu(c))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, -1)
        h = modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(x), shift_a, scale_a)
        b, n, _ = h.shape
        qkv = nn.Dense(3 * self.dim, name="qkv")(h).reshape(b, n, 3, self.heads, self.dim // self.heads)
        q, k, v = apply_rope(qkv[:, :, 0], cos, sin), apply_rope(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
        a = attention(q, k, v, self.attention).reshape(b, n, self.dim)
        x = x + gate_a[:, None] * nn.Dense(self.dim, name="proj")(a)
        h = modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(x), shift_m, scale_m)
        h = nn.Dense(int(self.dim * self.mlp_ratio), name="fc1")(h)
        h = nn.Dense(self.dim, name="fc2")(nn.gelu(h, approximate=True))
        return x + gate_m[:, None] * h


class DiT(nn.Module):
    config: DiTConfig

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        video = x.ndim == 5
        if not video:
            x = x[:, None]
        b, f, hh, ww, c = x.shape
        p = cfg.patch
        if hh % p or ww % p:
            raise ValueError(f"DiT: latent {hh}x{ww} is not divisible by the patch size {p}")
        if c != cfg.channels:
            raise ValueError(f"DiT: latent has {c} channels, the model {cfg.channels}")
        gh, gw = hh // p, ww // p
        tokens = x.reshape(b, f, gh, p, gw, p, c).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, f * gh * gw, p * p * c)
        h = nn.Dense(cfg.dim, name="patch_embed")(tokens)
        cond = nn.Dense(cfg.dim, name="t_mlp1")(timestep_embedding(t, 256))
        cond = nn.Dense(cfg.dim, name="t_mlp2")(nn.silu(cond))
        if cfg.num_classes:
            y = jnp.full((b,), cfg.null_class, jnp.int32) if y is None else y
            cond = cond + nn.Embed(cfg.num_classes + 1, cfg.dim, name="y_embed")(y)
        cos, sin = (jnp.asarray(a) for a in rope_tables((f, gh, gw), cfg.dim // cfg.heads, cfg.rope_theta,
                                                        time_axis=cfg.frames > 1))
        for i in range(cfg.depth):
            h = DiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.attention, name=f"block{i}")(h, cond, cos, sin)
        shift, scale = jnp.split(nn.Dense(2 * cfg.dim, kernel_init=nn.initializers.zeros, name="final_adaLN")(
            nn.silu(cond)), 2, -1)
        h = modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(h), shift, scale)
        out = nn.Dense(p * p * c, kernel_init=nn.initializers.zeros, name="out")(h)
        out = out.reshape(b, f, gh, gw, p, p, c).transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, f, hh, ww, c)
        return out if video else out[:, 0]


def init_params(config: DiTConfig, key: jax.Array) -> dict:
    s = config.latent_size
    shape = (1, config.frames, s, s, config.channels) if config.frames > 1 else (1, s, s, config.channels)
    return DiT(config).init(key, jnp.zeros(shape), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]


class DiffusionModel(NamedTuple):
    """A trained generator: config, DiT parameters (the EMA), the autoencoder, and the class names."""

    config: DiTConfig
    params: dict
    autoencoder: Autoencoder
    class_names: tuple[str, ...] = ()

    def label(self, name_or_index: str | int) -> int:
        """A class index from a name (a training photograph) or index; the null class for 'none'."""
        if isinstance(name_or_index, str) and not name_or_index.lstrip("-").isdigit():
            if name_or_index == "none":
                return self.config.null_class
            if name_or_index not in self.class_names:
                raise ValueError(f"unknown class {name_or_index!r}; choose from {list(self.class_names)} or none")
            return self.class_names.index(name_or_index)
        i = int(name_or_index)
        if not 0 <= i <= self.config.null_class:
            raise ValueError(f"class index {i} is outside 0..{self.config.null_class} (the last is unconditional)")
        return i
