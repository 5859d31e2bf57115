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
from typing import Any, NamedTuple

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


def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float,
                time_axis: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(angles f32[F*h*w, head_dim/2], axis int[head_dim/2]): the rotary angle of every token (row-major) and pair,
    and the axis (0 time, 1 rows, 2 cols) each pair encodes.

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
    axes = np.repeat(np.arange(3), (n_t, n_y, n_x))
    return np.concatenate(angles, -1).astype(np.float32), axes


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float,
                time_axis: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin: f32[F*h*w, head_dim/2] for a (frames, rows, cols) token grid, row-major (see `rope_angles`)."""
    ang, _ = rope_angles(grid, head_dim, theta, time_axis)
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
    if config.text:
        return MMDiT(config).init(key, jnp.zeros(shape), jnp.zeros((1,)),
                                  jnp.zeros((1, config.text_length, config.text_width)),
                                  jnp.zeros((1, config.text_embed)))["params"]
    return DiT(config).init(key, jnp.zeros(shape), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))["params"]


class DiffusionModel(NamedTuple):
    """A trained generator: config, DiT parameters (the EMA), the autoencoder, the class names, and for a
    text-to-image model the frozen CLIP (qrjax.clip.export.ClipModel) whose text tower conditions it."""

    config: DiTConfig
    params: dict
    autoencoder: Autoencoder
    class_names: tuple[str, ...] = ()
    clip: Any = None

    def text_cond(self, prompts) -> "TextCond":
        """TextCond for a list of prompts (words the CLIP tokenizer does not know read as its <unk>; see
        `unknown_words`)."""
        if self.clip is None:
            raise ValueError(f"model {self.config.name!r} is class-conditional; a prompt needs a text-to-image model "
                             f"(e.g. --model t2i-cpu)")
        if isinstance(prompts, str):
            prompts = [prompts]
        states, pooled = self.clip.encode_text_states(list(prompts))
        null_states, null_pooled = self.clip.encode_text_states([""])
        return TextCond(*(jnp.asarray(a) for a in (states, pooled, null_states, null_pooled)))

    def unknown_words(self, prompt: str) -> list[str]:
        """The words of a prompt outside the CLIP tokenizer's vocabulary."""
        from qrjax.clip.tokenizer import words

        vocab = set(self.clip.tokenizer.vocab) if self.clip is not None else set()
        return [w for w in words(prompt) if w not in vocab]

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


# ---------------------------------------------------------------------------------------------------------------
# Text-to-image: an MMDiT over image tokens and the frozen CLIP text tower's caption tokens
# ---------------------------------------------------------------------------------------------------------------

class TextCond(NamedTuple):
    """What a text-to-image model is conditioned on: the CLIP text tower's per-token states f32[B, T, text_width] and
    its unit-norm pooled features f32[B, text_embed], and the same for the empty caption (f32[1, T, w], f32[1, e]),
    the unconditional half of classifier-free guidance."""

    states: jax.Array
    pooled: jax.Array
    null_states: jax.Array
    null_pooled: jax.Array

    def with_null(self) -> "TextCond":
        """The batch of a guided model call: the prompts' rows, then as many rows of the empty caption."""
        return self._replace(states=jnp.concatenate([self.states, jnp.broadcast_to(self.null_states,
                                                                                   self.states.shape)]),
                             pooled=jnp.concatenate([self.pooled, jnp.broadcast_to(self.null_pooled,
                                                                                   self.pooled.shape)]))

    def first(self, b: int) -> "TextCond":
        """The first prompt repeated b times (SuperGen's tiles all read their canvas's prompt)."""
        return self._replace(states=jnp.broadcast_to(self.states[:1], (b, *self.states.shape[1:])),
                             pooled=jnp.broadcast_to(self.pooled[:1], (b, *self.pooled.shape[1:])))


class AttentionControl(NamedTuple):
    """Inference-time corrections of the joint attention (TIDE's, qrjax.diffusion.tide): logits are multiplied by
    `logit_scale` (1: unchanged; > 1 sharpens) and `text_bias` is added to the logits of every text key (log of a
    factor on the text tokens' unnormalised attention weight): scalars, possibly traced (step-dependent).
    `position_scale` (rows, cols) multiplies the image tokens' RoPE positions (position interpolation)."""

    logit_scale: jax.Array | float = 1.0
    text_bias: jax.Array | float = 0.0
    position_scale: tuple[float, float] = (1.0, 1.0)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C] tokens, row-major."""
    b, hh, ww, c = x.shape
    return x.reshape(b, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)


def unpatchify(tokens: jax.Array, p: int, shape: tuple[int, int, int]) -> jax.Array:
    """Inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C] for shape (H, W, C)."""
    hh, ww, c = shape
    b = tokens.shape[0]
    return tokens.reshape(b, hh // p, ww // p, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)


def joint_attention(q: jax.Array, k: jax.Array, v: jax.Array, n_text: int, control: AttentionControl | None,
                    mode: str = "auto") -> jax.Array:
    """[B, L, H, D] attention whose first `n_text` keys are text tokens, with `control`'s logit scale and text-key
    bias (the scale is folded into q, so the Pallas kernel keeps its static softmax scale)."""
    if control is None:
        return attention(q, k, v, mode)
    q = q * jnp.asarray(control.logit_scale, q.dtype)
    bias = jnp.where(jnp.arange(k.shape[1]) < n_text, jnp.asarray(control.text_bias, jnp.float32), 0.0)
    bias = jnp.broadcast_to(bias, (k.shape[0], k.shape[1]))
    if mode not in ("auto", "kernel", "xla"):
        raise ValueError(f"attention mode {mode!r}: choose auto, kernel or xla")
    if mode == "kernel" or (mode == "auto" and jax.default_backend() == "gpu"):
        from pallas_kernels.flash_attention import flash_attention

        return flash_attention(q, k, v, key_bias=bias)
    return jax.nn.dot_product_attention(q, k, v, bias=bias[:, None, None, :].astype(q.dtype))


class MMDiTBlock(nn.Module):
    """SD3's joint block: image and text streams with their own adaLN, qkv, projection and MLP weights, one attention
    over [text; image]. With `kv` (the image keys and values of every token, from earlier steps) and `idx` (the
    tokens x holds), only those tokens are computed; the others are read from kv (SDiT's cached regions)."""

    dim: int
    heads: int
    mlp_ratio: float
    attention: str = "auto"

    def _stream(self, name, h, y):
        mod = nn.Dense(6 * self.dim, kernel_init=nn.initializers.zeros, name=f"{name}_adaLN")(nn.silu(y))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, -1)
        hn = modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6, name=f"{name}_ln1")(h),
                      shift_a, scale_a)
        b, n, _ = h.shape
        qkv = nn.Dense(3 * self.dim, name=f"{name}_qkv")(hn).reshape(b, n, 3, self.heads, self.dim // self.heads)
        return qkv, (gate_a, shift_m, scale_m, gate_m)

    def _finish(self, name, h, a, mods):
        gate_a, shift_m, scale_m, gate_m = mods
        h = h + gate_a[:, None] * nn.Dense(self.dim, name=f"{name}_proj")(a)
        hn = modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6, name=f"{name}_ln2")(h),
                      shift_m, scale_m)
        hn = nn.Dense(int(self.dim * self.mlp_ratio), name=f"{name}_fc1")(hn)
        return h + gate_m[:, None] * nn.Dense(self.dim, name=f"{name}_fc2")(nn.gelu(hn, approximate=True))

    @nn.compact
    def __call__(self, x, c, y, rope, control=None, kv=None, idx=None):
        """rope: (cos, sin) of the tokens x holds, and (cos, sin) of every token (the same without idx). kv holds
        keys before their rotation, so a token's cache stays valid when its position changes (SuperGen's tiles move
        by whole tokens between steps)."""
        (cos, sin), (cos_all, sin_all) = rope
        qkv_x, mods_x = self._stream("img", x, y)
        qkv_c, mods_c = self._stream("txt", c, y)
        kx, vx = qkv_x[:, :, 1], qkv_x[:, :, 2]
        if kv is not None:  # write this step's keys and values of the computed tokens over the cached ones
            kx = kv[0].at[:, idx].set(kx, mode="drop")
            vx = kv[1].at[:, idx].set(vx, mode="drop")
        q = jnp.concatenate([qkv_c[:, :, 0], apply_rope(qkv_x[:, :, 0], cos, sin)], 1)
        k = jnp.concatenate([qkv_c[:, :, 1], apply_rope(kx, cos_all, sin_all)], 1)
        v = jnp.concatenate([qkv_c[:, :, 2], vx], 1)
        t = c.shape[1]
        a = joint_attention(q, k, v, t, control, self.attention).reshape(q.shape[0], q.shape[1], self.dim)
        c = self._finish("txt", c, a[:, :t], mods_c)
        x = self._finish("img", x, a[:, t:], mods_x)
        return x, c, (kx, vx)


class MMDiT(nn.Module):
    """The text-conditioned DiT. `MMDiT(config).apply({'params': p}, x, t, states, pooled) -> v`
    - x: f32[B, H, W, C] latents; t: f32[B] flow time; states: f32[B, T, text_width] CLIP token states; pooled:
      f32[B, text_embed] CLIP's unit-norm feature (added to the timestep conditioning, as SD3 adds its pooled CLIP);
    - control: AttentionControl (TIDE) or None;
    - SDiT's partial computation: `idx` int32[M] (the image tokens to compute, row-major; entries >= N are padding)
      with `kv` (per block, the image keys before RoPE and the values, [B, N, H, D] each, of every token); returns
      (tokens f32[B, M, p*p*C] of the computed tokens, the updated kv). `return_kv=True` on a full call returns
      (v, kv).
    Image tokens carry 2-D axial RoPE; text tokens carry no position, so the same weights read any image size."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, t, states, pooled, control: AttentionControl | None = None, kv=None, idx=None,
                 return_kv: bool = False):
        cfg = self.config
        b, hh, ww, c = x.shape
        p = cfg.patch
        if hh % p or ww % p:
            raise ValueError(f"MMDiT: latent {hh}x{ww} is not divisible by the patch size {p}")
        if c != cfg.channels:
            raise ValueError(f"MMDiT: latent has {c} channels, the model {cfg.channels}")
        if states.shape[1:] != (cfg.text_length, cfg.text_width) or pooled.shape[1:] != (cfg.text_embed,):
            raise ValueError(f"MMDiT: text states {tuple(states.shape)} / pooled {tuple(pooled.shape)}; the model "
                             f"reads [B, {cfg.text_length}, {cfg.text_width}] and [B, {cfg.text_embed}]")
        gh, gw = hh // p, ww // p
        n = gh * gw
        tokens = patchify(x, p)
        ang, axis = rope_angles((1, gh, gw), cfg.dim // cfg.heads, cfg.rope_theta)
        if control is not None:  # position interpolation: each pair's angle scales with its axis's positions
            sy, sx = control.position_scale
            ang = jnp.asarray(ang) * jnp.stack([jnp.ones(()), jnp.asarray(sy, jnp.float32),
                                                jnp.asarray(sx, jnp.float32)])[axis]
        cos_all, sin_all = jnp.cos(jnp.asarray(ang)), jnp.sin(jnp.asarray(ang))
        cos, sin = cos_all, sin_all
        if idx is not None:
            safe = jnp.minimum(idx, n - 1)
            tokens, cos, sin = tokens[:, safe], cos[safe], sin[safe]
        h = nn.Dense(cfg.dim, name="patch_embed")(tokens)
        ctx = nn.Dense(cfg.dim, name="text_embed")(states.astype(h.dtype))
        y = nn.Dense(cfg.dim, name="t_mlp1")(timestep_embedding(t, 256))
        y = nn.Dense(cfg.dim, name="t_mlp2")(nn.silu(y))
        y = y + nn.Dense(cfg.dim, name="pooled_mlp2")(nn.silu(nn.Dense(cfg.dim, name="pooled_mlp1")(pooled)))
        new_kv = []
        for i in range(cfg.depth):
            h, ctx, kv_i = MMDiTBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.attention, name=f"block{i}")(
                h, ctx, y, ((cos, sin), (cos_all, sin_all)), control, None if kv is None else kv[i], idx)
            new_kv.append(kv_i)
        shift, scale = jnp.split(nn.Dense(2 * cfg.dim, kernel_init=nn.initializers.zeros, name="final_adaLN")(
            nn.silu(y)), 2, -1)
        h = modulate(nn.LayerNorm(use_scale=False, use_bias=False, epsilon=1e-6)(h), shift, scale)
        out = nn.Dense(p * p * c, kernel_init=nn.initializers.zeros, name="out")(h)
        if idx is not None:
            return out, tuple(new_kv)
        v = unpatchify(out, p, (hh, ww, c))
        return (v, tuple(new_kv)) if return_kv else v


def make_model(config: DiTConfig) -> nn.Module:
    """The network a config describes: the class-conditional DiT or, with a text_model, the MMDiT."""
    return MMDiT(config) if config.text else DiT(config)


def apply_model(config: DiTConfig, params, x: jax.Array, t: jax.Array, cond, control: AttentionControl | None = None):
    """v for a batch: cond is int32[B] labels (or None) for the DiT, a TextCond whose rows match x for the MMDiT
    (control: its AttentionControl; the DiT takes none)."""
    if config.text:
        return MMDiT(config).apply({"params": params}, x, t, cond.states, cond.pooled, control)
    return DiT(config).apply({"params": params}, x, t, cond)
