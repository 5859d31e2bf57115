"""The two-tower CLIP in Flax linen: a ViT image encoder and a causal text transformer, both ending in a linear
projection to a shared embedding whose features are L2-normalised.

`CLIP(config).apply({'params': p}, images, tokens) -> (image_features, text_features)`, or one tower alone with
`method="encode_image"` / `method="encode_text"`:
- images: uint8[B, S, S, 3] (or float[B, S, S, 3] in [0, 1]), S = config.image_size; normalised inside the model with
  CLIP's RGB mean and std;
- tokens: int[B, L], L <= config.context_length, ids < config.vocab_size; each row holds one end-of-text token
  (EOT_TOKEN = 2, qrjax.clip.tokenizer's) where the text tower reads its features, as CLIP pools at its end token;
- features: [B, config.embed_dim], unit L2 norm, in the computation's dtype (float32 for float32 parameters; float64
  for float64 parameters or float64 images under `jax.enable_x64`).

Both towers are pre-LN transformers built from one `Block`; the image tower adds a class token, learned positions and
CLIP's `ln_pre`, and projects the class token; the text tower is causal, so the tokens after EOT (padding) never reach
the pooled position and need no mask.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from qrjax.clip.config import CLIPConfig

# OpenAI CLIP's RGB statistics (its preprocessing, kept by OpenCLIP and FastCLIP)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# the tokenizer's end-of-text id (qrjax.clip.tokenizer's EOT): restated so that the model does not depend on the
# tokenizer; a test should assert the two agree
EOT_TOKEN = 2
LN_EPS = 1e-5  # PyTorch's LayerNorm default, as in CLIP


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x||_2 along the last axis (no epsilon: an all-zero feature is a bug upstream and shows as NaN)."""
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


def normalize_images(images: jax.Array) -> jax.Array:
    """uint8[B, H, W, 3] (/255) or float[B, H, W, 3] in [0, 1] -> (x - CLIP_MEAN) / CLIP_STD; uint8 becomes float32,
    float inputs keep their dtype."""
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 255.0
    elif not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images: dtype {images.dtype}; expected uint8 in [0, 255] or float in [0, 1]")
    mean = jnp.asarray(CLIP_MEAN, images.dtype)
    std = jnp.asarray(CLIP_STD, images.dtype)
    return (images - mean) / std


class Block(nn.Module):
    """A pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) with an exact GELU; [B, L, width] -> same."""

    width: int
    heads: int
    mlp_ratio: int
    causal: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        head_dim = self.width // self.heads
        h = nn.LayerNorm(epsilon=LN_EPS, name="ln_1")(x)
        q, k, v = (nn.DenseGeneral((self.heads, head_dim), name=n)(h) for n in ("query", "key", "value"))
        # the fused-attention path keeps the computation's dtype (float64 included) on CPU
        o = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal)  # [B, L, heads, head_dim]
        x = x + nn.DenseGeneral(self.width, axis=(-2, -1), name="out")(o)
        h = nn.LayerNorm(epsilon=LN_EPS, name="ln_2")(x)
        h = nn.Dense(self.width * self.mlp_ratio, name="fc")(h)
        h = nn.Dense(self.width, name="proj")(jax.nn.gelu(h, approximate=False))
        return x + h


class Transformer(nn.Module):
    """`depth` Blocks in sequence."""

    width: int
    depth: int
    heads: int
    mlp_ratio: int
    causal: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = Block(self.width, self.heads, self.mlp_ratio, self.causal, name=f"block_{i}")(x)
        return x


class VisionTransformer(nn.Module):
    """images [B, S, S, 3] -> unnormalised features [B, embed_dim] (the projected class token)."""

    config: CLIPConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.config
        s = c.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"images: shape {tuple(images.shape)}; expected [B, {s}, {s}, 3] "
                             f"(config {c.name!r}: image_size {s})")
        x = normalize_images(images)
        p, w = c.patch_size, c.image_width
        # a stride-p convolution is one matmul per non-overlapping patch (CLIP's conv1, no bias)
        x = nn.Conv(w, (p, p), strides=(p, p), padding="VALID", use_bias=False, name="patch_embed")(x)
        x = x.reshape(x.shape[0], -1, w)  # [B, N, w], patches row-major
        scale = w ** -0.5
        cls = self.param("class_embedding", nn.initializers.normal(scale), (w,))
        pos = self.param("positional_embedding", nn.initializers.normal(scale), (c.num_patches + 1, w))
        cls = jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, w))
        x = jnp.concatenate([cls, x], axis=1) + pos.astype(x.dtype)
        x = nn.LayerNorm(epsilon=LN_EPS, name="ln_pre")(x)
        x = Transformer(w, c.image_depth, c.image_heads, c.mlp_ratio, name="transformer")(x)
        x = nn.LayerNorm(epsilon=LN_EPS, name="ln_post")(x[:, 0])
        return nn.Dense(c.embed_dim, use_bias=False, kernel_init=nn.initializers.normal(scale), name="proj")(x)


class TextTransformer(nn.Module):
    """tokens int[B, L] -> unnormalised features [B, embed_dim] (the projected state at each row's EOT token)."""

    config: CLIPConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, return_states: bool = False):
        """return_states: also return the per-token states after ln_final, [B, L, text_width] (what a text-to-image
        model attends to; SD3 reads a large CLIP's penultimate layer, this small tower's last one serves here)."""
        c = self.config
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= c.context_length:
            raise ValueError(f"tokens: shape {tuple(tokens.shape)}; expected [B, L] with 1 <= L <= "
                             f"{c.context_length} (config {c.name!r}: context_length)")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens: dtype {tokens.dtype}; expected integer token ids")
        w, length = c.text_width, tokens.shape[1]
        x = nn.Embed(c.vocab_size, w, embedding_init=nn.initializers.normal(0.02), name="token_embedding")(tokens)
        pos = self.param("positional_embedding", nn.initializers.normal(0.01), (c.context_length, w))
        x = x + pos[:length].astype(x.dtype)
        x = Transformer(w, c.text_depth, c.text_heads, c.mlp_ratio, causal=True, name="transformer")(x)
        states = nn.LayerNorm(epsilon=LN_EPS, name="ln_final")(x)
        # a row without EOT pools at position 0 (argmax of all-False); the tokenizer always writes one
        eot = jnp.argmax(tokens == EOT_TOKEN, axis=1)
        x = jnp.take_along_axis(states, eot[:, None, None], axis=1)[:, 0]
        pooled = nn.Dense(c.embed_dim, use_bias=False, kernel_init=nn.initializers.normal(w ** -0.5),
                          name="proj")(x)
        return (states, pooled) if return_states else pooled


class CLIP(nn.Module):
    """Both towers; `init` through __call__ creates the parameters {'visual': ..., 'text': ...}."""

    config: CLIPConfig

    def setup(self):
        self.visual = VisionTransformer(self.config)
        self.text = TextTransformer(self.config)

    def encode_image(self, images: jax.Array) -> jax.Array:
        """uint8[B, S, S, 3] (or float in [0, 1]) -> unit-norm [B, embed_dim]."""
        return l2_normalize(self.visual(images))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """int[B, L] token ids with one EOT per row -> unit-norm [B, embed_dim]."""
        return l2_normalize(self.text(tokens))

    def encode_text_states(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """int[B, L] -> (per-token states [B, L, text_width] after ln_final, unit-norm features [B, embed_dim])."""
        states, pooled = self.text(tokens, return_states=True)
        return states, l2_normalize(pooled)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encode_image(images), self.encode_text(tokens)


def _dummy_inputs(config: CLIPConfig) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    s = config.image_size
    return (jax.ShapeDtypeStruct((1, s, s, 3), jnp.uint8), jax.ShapeDtypeStruct((1, config.context_length), jnp.int32))


def init_params(config: CLIPConfig, key: jax.Array, dtype: Any = jnp.float32) -> dict:
    """The 'params' collection of CLIP(config), initialised from `key`, every leaf cast to `dtype` (float64 needs
    `jax.enable_x64`). Deterministic in (config, key)."""
    images, tokens = (jnp.zeros(t.shape, t.dtype) for t in _dummy_inputs(config))

    @jax.jit
    def init(k):
        params = CLIP(config).init(k, images, tokens)["params"]
        return jax.tree.map(lambda a: a.astype(dtype), params)

    return init(key)


@functools.cache  # tracing the paper preset's towers takes seconds; the result is a small tree of shapes
def params_shape(config: CLIPConfig, dtype: Any = jnp.float32) -> dict:
    """init_params's shapes and dtypes (jax.ShapeDtypeStruct leaves), without allocating."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), dtype))


def num_params(config: CLIPConfig, tower: str | None = None) -> int:
    """The number of parameters of both towers (tower None), or of one: 'visual' or 'text' (the text tower's count
    includes its vocab_size x text_width token embedding). Computed from shapes alone."""
    shapes = params_shape(config)
    if tower is not None:
        if tower not in shapes:
            raise ValueError(f"tower {tower!r}: choose 'visual', 'text' or None (both)")
        shapes = shapes[tower]
    return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))


__all__ = ["CLIP", "CLIP_MEAN", "CLIP_STD", "EOT_TOKEN", "Block", "TextTransformer", "Transformer",
           "VisionTransformer", "init_params", "l2_normalize", "normalize_images", "num_params", "params_shape"]
