"""The frozen backbone in Flax linen: a decoder-only transformer with Llama's layout, and ALTO's multi-LoRA layer in
every projection.

`Llama(config).apply({'params': p}, tokens, lora) -> logits`:
- tokens: int32[S, L], S sequences of L tokens (right-padded; attention is causal, so padding after a sequence's end
  never reaches its tokens);
- lora: `LoraInputs` or None (the plain backbone). With adapters, the S·L tokens, flattened sequence-major, are
  grouped contiguously by adapter: `group_sizes[i]` tokens (whole sequences) for adapter i, tokens beyond their sum
  belong to none; every projection named in `lora.adapters` computes X W plus the grouped LoRA term
  (`qrjax.lora.multilora.lora_delta`): one base matmul over all tokens and two grouped matmuls;
- logits: float32[S, L, vocab_size].

The parameter tree mirrors Hugging Face's LlamaForCausalLM names (qrjax.lora.backbone maps between them):
embed_tokens/embedding, layers_<i>/{input_layernorm, post_attention_layernorm}/weight,
layers_<i>/self_attn/{q,k,v,o}_proj/kernel, layers_<i>/mlp/{gate,up,down}_proj/kernel, norm/weight, lm_head/kernel
(absent with tie_word_embeddings). Kernels are [d_in, d_out] (the transpose of PyTorch's weight).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from qrjax.lora.config import LlamaConfig
from qrjax.lora.multilora import lora_delta


class LoraInputs(flax.struct.PyTreeNode):
    """The adapters one forward pass applies.

    adapters: {layer: {"self_attn"|"mlp": {projection: {"a": [N, d_in, r], "b": [N, r, d_out]}}}}, the backbone's
      tree down to the projections that carry LoRA (any subset of them);
    group_sizes: int32[N], tokens of each adapter (0 = an empty slot);
    scale: float[N], each adapter's s_i = alpha_i / r_i;
    block: tokens per sequence when every group is whole sequences (lets the CPU path batch per sequence), else 1.
    """

    adapters: dict
    group_sizes: jax.Array
    scale: jax.Array
    block: int = flax.struct.field(pytree_node=False, default=1)  # static: it picks the program


class RMSNorm(nn.Module):
    eps: float

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * weight).astype(x.dtype)


class Projection(nn.Module):
    """x[T, d_in] @ kernel[d_in, d_out], plus the grouped LoRA term when adapters for it are given."""

    features: int
    impl: str

    @nn.compact
    def __call__(self, x, lora: LoraInputs | None, adapter: dict | None):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        y = x @ kernel.astype(x.dtype)
        if adapter is not None:
            y = y + lora_delta(x, adapter["a"], adapter["b"], lora.group_sizes, lora.scale, impl=self.impl,
                               block=lora.block)
        return y


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding in Hugging Face Llama's rotate-half form; x: [S, L, heads, head_dim]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
    angles = positions[:, None].astype(jnp.float32) * inv_freq[None, :]  # [L, half]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[None, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[None, :, None, :]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


def _sub(tree: dict | None, *keys: str):
    for key in keys:
        if tree is None:
            return None
        tree = tree.get(key)
    return tree


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary positions; x: [S·L, d] -> [S·L, d]."""

    config: LlamaConfig
    impl: str

    @nn.compact
    def __call__(self, x, shape, lora: LoraInputs | None, adapters: dict | None):
        c = self.config
        s, length = shape
        h_dim = c.dim_per_head

        def proj(name, features, inp):
            return Projection(features, self.impl, name=name)(inp, lora, _sub(adapters, name))

        positions = jnp.arange(length)
        q = proj("q_proj", c.num_heads * h_dim, x).reshape(s, length, c.num_heads, h_dim)
        k = proj("k_proj", c.num_kv_heads * h_dim, x).reshape(s, length, c.num_kv_heads, h_dim)
        v = proj("v_proj", c.num_kv_heads * h_dim, x).reshape(s, length, c.num_kv_heads, h_dim)
        q, k = rotary(q, positions, c.rope_theta), rotary(k, positions, c.rope_theta)
        # grouped-query attention: dot_product_attention shares each K/V head across num_heads / num_kv_heads heads
        o = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(s * length, c.num_heads * h_dim)
        return proj("o_proj", c.hidden_size, o)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); x: [S·L, d] -> [S·L, d]."""

    config: LlamaConfig
    impl: str

    @nn.compact
    def __call__(self, x, lora: LoraInputs | None, adapters: dict | None):
        c = self.config

        def proj(name, features, inp):
            return Projection(features, self.impl, name=name)(inp, lora, _sub(adapters, name))

        gated = jax.nn.silu(proj("gate_proj", c.intermediate_size, x)) * proj("up_proj", c.intermediate_size, x)
        return proj("down_proj", c.hidden_size, gated)


class DecoderLayer(nn.Module):
    config: LlamaConfig
    impl: str

    @nn.compact
    def __call__(self, x, shape, lora: LoraInputs | None, adapters: dict | None):
        c = self.config
        h = RMSNorm(c.rms_norm_eps, name="input_layernorm")(x)
        x = x + Attention(c, self.impl, name="self_attn")(h, shape, lora, _sub(adapters, "self_attn"))
        h = RMSNorm(c.rms_norm_eps, name="post_attention_layernorm")(x)
        return x + MLP(c, self.impl, name="mlp")(h, lora, _sub(adapters, "mlp"))


class Llama(nn.Module):
    config: LlamaConfig
    impl: str = "auto"  # the grouped matmul of the LoRA term (qrjax.lora.multilora.IMPLS)

    @nn.compact
    def __call__(self, tokens: jax.Array, lora: LoraInputs | None = None) -> jax.Array:
        c = self.config
        s, length = tokens.shape
        if length > c.max_position_embeddings:
            raise ValueError(f"tokens: length {length} exceeds max_position_embeddings {c.max_position_embeddings}")
        adapters = None if lora is None else lora.adapters
        embed = nn.Embed(c.vocab_size, c.hidden_size, name="embed_tokens",
                         embedding_init=nn.initializers.normal(0.02))
        x = embed(tokens).reshape(s * length, c.hidden_size)
        for i in range(c.num_layers):
            name = f"layers_{i}"
            x = DecoderLayer(c, self.impl, name=name)(x, (s, length), lora, _sub(adapters, name))
        x = RMSNorm(c.rms_norm_eps, name="norm")(x)
        if c.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = Projection(c.vocab_size, self.impl, name="lm_head")(x, None, None)
        return logits.astype(jnp.float32).reshape(s, length, c.vocab_size)


def init_backbone(config: LlamaConfig, key: jax.Array) -> Any:
    """Random backbone parameters (the `params` collection)."""
    return Llama(config).init(key, jnp.zeros((1, 8), jnp.int32))["params"]
