"""Bit packing: m-bit symbols <-> their bits, most significant bit first.

`pack_bits(bits: int[..., n*m], m) -> int32[..., n]` and `unpack_bits(symbols: int[..., n], m) -> uint8[..., n*m]`.
Symbol s at position i owns bits [i*m, (i+1)*m), bit j weighing 2^(m-1-j): the order QRMark uses to turn its 48
extracted bits into 6 Reed-Solomon bytes. The kernels work on a (rows, n_pad, m_pad) view padded to powers of two,
which Triton needs for its block shapes; padded bits are zero and weigh nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._backend import compiler_params, resolve_interpret


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Rows of the batch per grid step. None: the whole (padded) batch in one step when interpreting on CPU, where
    each grid step costs about a full pass over the arrays, and 128 rows on GPU."""

    block_rows: int | None = None

    @classmethod
    def get_default(cls) -> "BlockSizes":
        return cls()


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _weights(m: int, m_pad: int):
    j = jax.lax.broadcasted_iota(jnp.int32, (1, 1, m_pad), 2)
    return jnp.where(j < m, jnp.left_shift(1, jnp.maximum(m - 1 - j, 0)), 0)


def _pack_kernel(bits_ref, out_ref, *, m):
    bits = bits_ref[...].astype(jnp.int32)
    out_ref[...] = jnp.sum(bits * _weights(m, bits.shape[-1]), axis=-1)


def _unpack_kernel(sym_ref, out_ref, *, m):
    m_pad = out_ref.shape[-1]
    j = jax.lax.broadcasted_iota(jnp.int32, (1, 1, m_pad), 2)
    shift = jnp.maximum(m - 1 - j, 0)
    bits = jnp.right_shift(sym_ref[...][:, :, None], shift) & 1
    out_ref[...] = jnp.where(j < m, bits, 0).astype(out_ref.dtype)


def _grid(rows: int, block_sizes: BlockSizes | None, interpret: bool):
    block = (block_sizes or BlockSizes.get_default()).block_rows
    if block is None:
        block = _next_pow2(rows) if interpret else 128
    block = max(1, min(block, _next_pow2(rows)))
    return block, -(-rows // block)


def _call(kernel, x, out_shape, in_block, out_block, steps, interpret):
    return pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(steps,),
        in_specs=[pl.BlockSpec(in_block, lambda i: (i,) + (0,) * (len(in_block) - 1))],
        out_specs=pl.BlockSpec(out_block, lambda i: (i,) + (0,) * (len(out_block) - 1)),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(num_warps=4, num_stages=1),
    )(x)


@functools.partial(jax.jit, static_argnames=("m", "block_sizes", "interpret"))
def pack_bits(bits: jax.Array, m: int, *, block_sizes: BlockSizes | None = None,
              interpret: bool | None = None) -> jax.Array:
    """bits: int/bool/uint8[..., n*m] (values 0/1) -> int32[..., n] symbols, MSB first.

    Fallback: `pack_bits_reference` computes the same in plain jnp.
    """
    if bits.shape[-1] % m:
        raise ValueError(f"pack_bits: last axis {bits.shape[-1]} is not a multiple of m={m}")
    interpret = resolve_interpret(interpret)
    lead, n = bits.shape[:-1], bits.shape[-1] // m
    rows = math.prod(lead)
    block, steps = _grid(rows, block_sizes, interpret)
    n_pad, m_pad = _next_pow2(n), _next_pow2(m)
    x = bits.reshape(-1, n, m).astype(jnp.int32)
    x = jnp.pad(x, ((0, block * steps - x.shape[0]), (0, n_pad - n), (0, m_pad - m)))
    out = _call(functools.partial(_pack_kernel, m=m), x,
                jax.ShapeDtypeStruct((block * steps, n_pad), jnp.int32),
                (block, n_pad, m_pad), (block, n_pad), steps, interpret)
    return out[:rows, :n].reshape(lead + (n,))


@functools.partial(jax.jit, static_argnames=("m", "block_sizes", "interpret"))
def unpack_bits(symbols: jax.Array, m: int, *, block_sizes: BlockSizes | None = None,
                interpret: bool | None = None) -> jax.Array:
    """symbols: int[..., n] in [0, 2^m) -> uint8[..., n*m] bits, MSB first.

    Fallback: `unpack_bits_reference` computes the same in plain jnp.
    """
    interpret = resolve_interpret(interpret)
    lead, n = symbols.shape[:-1], symbols.shape[-1]
    rows = math.prod(lead)
    block, steps = _grid(rows, block_sizes, interpret)
    n_pad, m_pad = _next_pow2(n), _next_pow2(m)
    x = jnp.pad(symbols.reshape(-1, n).astype(jnp.int32), ((0, 0), (0, n_pad - n)))
    x = jnp.pad(x, ((0, block * steps - x.shape[0]), (0, 0)))
    out = _call(functools.partial(_unpack_kernel, m=m), x,
                jax.ShapeDtypeStruct((block * steps, n_pad, m_pad), jnp.uint8),
                (block, n_pad), (block, n_pad, m_pad), steps, interpret)
    return out[:rows, :n, :m].reshape(lead + (n * m,))


def pack_bits_reference(bits: jax.Array, m: int) -> jax.Array:
    """Plain-jnp `pack_bits`."""
    x = bits.reshape(bits.shape[:-1] + (-1, m)).astype(jnp.int32)
    return jnp.sum(x << jnp.arange(m - 1, -1, -1, dtype=jnp.int32), axis=-1)


def unpack_bits_reference(symbols: jax.Array, m: int) -> jax.Array:
    """Plain-jnp `unpack_bits`."""
    bits = (symbols[..., None].astype(jnp.int32) >> jnp.arange(m - 1, -1, -1, dtype=jnp.int32)) & 1
    return bits.reshape(symbols.shape[:-1] + (-1,)).astype(jnp.uint8)
