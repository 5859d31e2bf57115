"""Tiled (flash-style) softmax attention for the DiT: full bidirectional attention, never an [L, L] matrix.

`flash_attention(q: f32|bf16[B, Lq, H, D], k: [B, Lk, H, D], v: [B, Lk, H, D], *, key_bias: f32[B, Lk] | None)
-> [B, Lq, H, D]` (flax layout: batch, sequence, heads, head_dim; out has q's dtype) computes, per batch element b and
head, `softmax(sm_scale * q @ k.T + key_bias[b]) @ v`, with `sm_scale = 1 / sqrt(D)` unless given. Lq != Lk
(cross-attention) is allowed. The optional key bias is additive on the logits, one value per key, shared by every
query and head of its batch element (e.g. a log-weight per key, or a large negative value / -inf to mask keys out);
None (the default) runs the bias-free kernel, with no bias input at all.

One program per (batch, head, q-block) holds a [block_q, D] slice of q and walks the keys in [block_k, D] blocks in a
`lax.fori_loop`, keeping the online-softmax state in float32: the running row max m, the running sum l of
exp(logit - m), and the unnormalised output, rescaled by exp(m_old - m_new) whenever the max grows; the output is
divided by l once at the end. Working memory is O(block_q * (block_k + D)), independent of Lk. The head dim D is kept
whole in every block. In the probabilities-times-v product the probabilities are cast to v's dtype (bf16 for bf16
inputs, as in FlashAttention); everything else accumulates in float32. The key bias, when given, is held in float32
and each program loads the block_k entries of its batch element's bias row per key block and adds them to the scaled
logits. A key whose bias is -inf gets weight exactly 0, even when a whole key block of a row is -inf (the running max
is then -inf; the exponentials use 0 in its place); a row with every key at -inf is 0/0 = NaN, as in the reference.

Sequence lengths need not be multiples of the blocks: the wrapper zero-pads Lq and Lk up to multiples of block_q and
block_k (the key bias with zeros to the padded key length), the kernel sets the logits of padded keys to -inf after
adding the bias, and the padded query rows are sliced off the output. On GPU, D is also zero-padded to a power of two
(Triton's block sides must be powers of two); zero columns change neither q.k nor the kept output columns. The bias
row's block is the whole padded key length, as k's and v's are; its loads are block_k long, a power of two on GPU.

Gradients: `flash_attention` is a `jax.custom_vjp` whose backward pass is the VJP of `flash_attention_reference`,
the documented acceptable backward; it recomputes the [B, H, Lq, Lk] probabilities, so training memory is that of
plain attention, while inference and the forward pass are tiled. The key bias is differentiable too (its gradient is
the attention-probability gradient summed over heads and queries).

Callers import `flash_attention`. `flash_attention_reference` (plain jnp, float32) is for tests, for the backward pass
above, and is the fallback: it computes the same, and on CPU, where Pallas only interprets, it is also the faster path.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels._backend import compiler_params, resolve_interpret

_CPU_MAX_BLOCK = 128  # interpret mode: each grid step costs about a pass over the arrays, so keep the grid small
_GPU_BLOCK = 64
_GPU_MIN_BLOCK = 16  # Triton's dot needs block sides of at least 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Query rows per program and key rows per loop step. None: when interpreting on CPU, the whole sequence if it is
    at most 128 long, else the fewest equal blocks of at most 128 (least padding); on GPU 64 (16 or 32 for shorter
    sequences). On GPU, given sizes must be powers of two and at least 16."""

    block_q: int | None = None
    block_k: int | None = None

    @classmethod
    def get_default(cls) -> "BlockSizes":
        return cls()


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _default_block(length: int, interpret: bool) -> int:
    if interpret:
        n_blocks = -(-length // _CPU_MAX_BLOCK)
        return -(-length // n_blocks)
    return min(_GPU_BLOCK, max(_GPU_MIN_BLOCK, pl.next_power_of_2(length)))


def _kernel(q_ref, k_ref, v_ref, *refs, sm_scale, block_k, kv_len, has_bias):
    # q_ref: [block_q, D]; k_ref, v_ref: [Lk padded, D] (the whole padded key sequence of this batch element and head;
    # only block_k rows of it are loaded at a time); refs: (bias_ref: f32[Lk padded], o_ref) with a key bias, else
    # (o_ref,); o_ref: [block_q, D].
    bias_ref, o_ref = refs if has_bias else (None, *refs)
    block_q, d = q_ref.shape
    num_k_blocks = k_ref.shape[0] // block_k
    hi = lax.Precision.HIGHEST  # IEEE f32 on GPU, not TF32; bf16 inputs are unaffected
    q = q_ref[...]

    def body(j, carry):
        acc, m_prev, l_prev = carry
        start = j * block_k
        k = k_ref[pl.ds(start, block_k), :]
        v = v_ref[pl.ds(start, block_k), :]
        s = lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=hi,
                            preferred_element_type=jnp.float32) * sm_scale  # [block_q, block_k]
        if has_bias:
            s = s + bias_ref[pl.ds(start, block_k)][None, :]
        if kv_len % block_k:
            # Only the last block holds padded keys, and fewer than block_k of them, so every block keeps at least
            # one real key: without a -inf key bias m stays finite after block 0 and exp(-inf - m) is a clean 0.
            key_idx = start + lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
            s = jnp.where(key_idx < kv_len, s, -jnp.inf)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
        # A -inf key bias can make a row's max -inf (a whole block of its keys at -inf so far); subtracting 0 instead
        # keeps exp(-inf - -inf) = NaN out, and every exponential of those rows is then a clean 0.
        m_exp = jnp.where(m_next == -jnp.inf, 0.0, m_next) if has_bias else m_next
        correction = jnp.exp(m_prev - m_exp)  # exp(-inf) = 0 on the first block
        p = jnp.exp(s - m_exp[:, None])
        l_next = correction * l_prev + jnp.sum(p, axis=1)
        pv = jnp.dot(p.astype(v.dtype), v, precision=hi, preferred_element_type=jnp.float32)
        return correction[:, None] * acc + pv, m_next, l_next

    init = (jnp.zeros((block_q, d), jnp.float32), jnp.full((block_q,), -jnp.inf, jnp.float32),
            jnp.zeros((block_q,), jnp.float32))
    acc, _, l = lax.fori_loop(0, num_k_blocks, body, init)
    o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)


def _check_inputs(q: jax.Array, k: jax.Array, v: jax.Array, key_bias: jax.Array | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"flash_attention: q, k, v must be [B, L, H, D], got q{q.shape} k{k.shape} v{v.shape}")
    b, lq, h, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[2:] != (h, d):
        raise ValueError(f"flash_attention: k{k.shape} and v{v.shape} must be [B, Lk, H, D] matching q{q.shape}")
    if lq == 0 or k.shape[1] == 0:
        raise ValueError(f"flash_attention: empty sequence, q{q.shape} k{k.shape}")
    if not jnp.issubdtype(q.dtype, jnp.floating) or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if key_bias is not None:
        if key_bias.shape != (b, k.shape[1]):
            raise ValueError(f"flash_attention: key_bias{key_bias.shape} must be [B, Lk] = {(b, k.shape[1])}")
        if not jnp.issubdtype(key_bias.dtype, jnp.floating):
            raise ValueError(f"flash_attention: key_bias must be a float array, got {key_bias.dtype}")


def _forward(q, k, v, key_bias, sm_scale: float, block_sizes: BlockSizes, interpret: bool) -> jax.Array:
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bq = block_sizes.block_q or _default_block(lq, interpret)
    bk = block_sizes.block_k or _default_block(lk, interpret)
    if not interpret:
        for name, size in (("block_q", bq), ("block_k", bk)):
            if size < _GPU_MIN_BLOCK or size & (size - 1):
                raise ValueError(f"flash_attention: on GPU {name} must be a power of two >= 16, got {size}")
    dp = d if interpret else max(_GPU_MIN_BLOCK, pl.next_power_of_2(d))
    lqp, lkp = _round_up(lq, bq), _round_up(lk, bk)
    q = jnp.pad(q, ((0, 0), (0, lqp - lq), (0, 0), (0, dp - d)))
    k = jnp.pad(k, ((0, 0), (0, lkp - lk), (0, 0), (0, dp - d)))
    v = jnp.pad(v, ((0, 0), (0, lkp - lk), (0, 0), (0, dp - d)))
    sq = pl.squeezed
    q_spec = pl.BlockSpec((sq, bq, sq, dp), lambda n, hh, i: (n, i, hh, 0))
    kv_spec = pl.BlockSpec((sq, lkp, sq, dp), lambda n, hh, i: (n, 0, hh, 0))
    in_specs, inputs = [q_spec, kv_spec, kv_spec], [q, k, v]
    if key_bias is not None:
        # The whole padded row of this batch element, as for k and v; the kernel loads block_k (a power of two on
        # GPU) entries of it per key block.
        in_specs.append(pl.BlockSpec((sq, lkp), lambda n, hh, i: (n, 0)))
        inputs.append(jnp.pad(key_bias.astype(jnp.float32), ((0, 0), (0, lkp - lk))))
    out = pl.pallas_call(
        functools.partial(_kernel, sm_scale=sm_scale, block_k=bk, kv_len=lk, has_bias=key_bias is not None),
        out_shape=jax.ShapeDtypeStruct((b, lqp, h, dp), q.dtype),
        # q-blocks innermost: neighbouring programs read the same k and v (L2 reuse on GPU).
        grid=(b, h, lqp // bq),
        in_specs=in_specs,
        out_specs=q_spec,
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(num_warps=4, num_stages=2),
        name="flash_attention",
    )(*inputs)
    return out[:, :lq, :, :d]


# key_bias is a differentiable argument that may be None (an empty pytree: its cotangent is None too).
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _flash_attention(q, k, v, key_bias, sm_scale, block_sizes, interpret):
    return _forward(q, k, v, key_bias, sm_scale, block_sizes, interpret)


def _flash_attention_fwd(q, k, v, key_bias, sm_scale, block_sizes, interpret):
    return _forward(q, k, v, key_bias, sm_scale, block_sizes, interpret), (q, k, v, key_bias)


def _flash_attention_bwd(sm_scale, block_sizes, interpret, residuals, g):
    del block_sizes, interpret

    def reference(q, k, v, key_bias):
        return flash_attention_reference(q, k, v, key_bias=key_bias, sm_scale=sm_scale)

    _, vjp = jax.vjp(reference, *residuals)
    return vjp(g)


_flash_attention.defvjp(_flash_attention_fwd, _flash_attention_bwd)


@functools.partial(jax.jit, static_argnames=("sm_scale", "block_sizes", "interpret"))
def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, key_bias: jax.Array | None = None,
                    sm_scale: float | None = None, block_sizes: BlockSizes | None = None,
                    interpret: bool | None = None) -> jax.Array:
    """q: f32|bf16[B, Lq, H, D]; k, v: same dtype [B, Lk, H, D]; key_bias: f32[B, Lk] or None -> q.dtype[B, Lq, H, D].

    softmax(sm_scale * q k^T + key_bias[b]) v per batch element b and head, sm_scale = 1/sqrt(D) by default. key_bias
    (traced; any float dtype, added in float32) is the same for every query and head of batch element b; -inf entries
    mask keys out exactly (a row with every key at -inf gives NaN); None means no bias and runs the bias-free kernel.
    Differentiable in q, k, v and key_bias: the backward pass is the VJP of `flash_attention_reference`
    (O(Lq * Lk) memory); key_bias's gradient has its dtype. Fallback: `flash_attention_reference` computes the same in
    plain jnp.
    """
    _check_inputs(q, k, v, key_bias)
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return _flash_attention(q, k, v, key_bias, scale, block_sizes or BlockSizes.get_default(),
                            resolve_interpret(interpret))


def flash_attention_reference(q: jax.Array, k: jax.Array, v: jax.Array, *, key_bias: jax.Array | None = None,
                              sm_scale: float | None = None) -> jax.Array:
    """Plain-jnp `flash_attention` (key_bias: f32[B, Lk] | None): the full [B, H, Lq, Lk] softmax in float32, cast back
    to q.dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    hi = lax.Precision.HIGHEST
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32), precision=hi) * scale
    if key_bias is not None:
        logits = logits + key_bias.astype(jnp.float32)[:, None, None, :]
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(jnp.float32), precision=hi).astype(q.dtype)
