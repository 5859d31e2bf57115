"""Fixed-width error-bounded quantisation, for payloads whose size must be known before they are sent.

XLA collectives (`lax.all_to_all`, `psum`, ...) move buffers of static shape, so the codec's variable-length stream
(`qrjax.compression.compress`) cannot cross them. This is the same linear quantiser as the codec's "abs" path
(`pallas_kernels.error_bounded.linear_code` / `linear_value` with the codec's half step `abs_half_step`), applied per
block with a value-range relative bound and written as fixed-width integer codes:

    per block:  e = eps * (max - min),  centre = min + (max - min) / 2,  step = 2 h  (h just below e),
                code = round((x - centre) / step) as int8 or int16,   x_hat = centre + code * step (in float32).

The codes are |code| <= 1 / (4 eps) + 1 (a little more where max |x| is many times max - min: `max_code`), so
int8 holds bounds down to eps ~ 1/500 and int16 to eps ~ 8.3e-6 (`code_dtype_for`). A block's (centre, step)
travel beside its codes; its bound e does not need to.

The bound holds on every element by construction whenever e is above float32's resolution at the block's largest
magnitude (e > 5 ulp(max |x|): `abs_half_step` > 0) and the codes fit the dtype; a constant block is rebuilt exactly.
Anything else (a block so narrow relative to its magnitude that no code can hit it, eps below the dtype's range,
non-finite values) is not repaired -- a fixed-width payload has no room for outliers -- but counted by `violations`,
which every user of this module reports. Checked in float64 by the tests (`qrjax.compression.bound_violations`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import error_bounded as eb

CODE_DTYPES = ("int8", "int16")


@functools.partial(jax.tree_util.register_dataclass, data_fields=("codes", "centre", "step", "bound"),
                   meta_fields=())
@dataclasses.dataclass(frozen=True)
class FixedQuantized:
    """codes: int8|int16[x.shape]; centre, step, bound: float32, x's shape with the block axes kept as size 1."""

    codes: jax.Array
    centre: jax.Array
    step: jax.Array
    bound: jax.Array


def max_code(eps: float, top_over_span: float = 1.0) -> int:
    """The largest |code| a block can get at bound eps: (max - min) / 2 over the step 2 h, h = `abs_half_step` of
    e = eps (max - min) for values up to top = max |x| (h shrinks as top / (max - min) grows), plus a code of
    room for rounding."""
    half = eb.abs_half_step(eps, top_over_span, float(np.finfo(np.float32).eps))
    if half <= 0:
        raise ValueError(f"max_code: eps={eps:g} is below float32's resolution at top/span={top_over_span:g}")
    return math.ceil(1 / (4 * half)) + 1


def code_dtype_for(min_eps: float) -> str:
    """The narrowest code dtype that holds every code of bounds eps >= min_eps in blocks whose max |x| is up to
    their value range (the usual case for embeddings, which straddle zero); wider blocks may clip, and clipped
    codes are counted by `violations`."""
    if not (math.isfinite(min_eps) and 0 < min_eps < 0.5):
        raise ValueError(f"code_dtype_for: a range-relative bound must be in (0, 0.5), got {min_eps!r}")
    try:
        needed = max_code(min_eps)
    except ValueError:
        needed = math.inf
    for name in CODE_DTYPES:
        if needed <= np.iinfo(name).max:
            return name
    raise ValueError(f"code_dtype_for: eps={min_eps:g} needs more than 16-bit codes (int16 holds bounds down to "
                     f"about 8.3e-6)")


def quantize(x: jax.Array, eps, *, axes: tuple[int, ...], code_dtype: str = "int8") -> FixedQuantized:
    """x: float32[...] -> FixedQuantized with one block per index of the axes not in `axes`.

    eps: the range-relative bound of each block, broadcastable to x's shape without `axes` (a scalar, or e.g.
    float32[n_blocks_a, n_blocks_b]); traced, so a bound that changes every step does not recompile."""
    if code_dtype not in CODE_DTYPES:
        raise ValueError(f"quantize: code_dtype {code_dtype!r} is not one of {CODE_DTYPES}")
    axes = tuple(sorted(a % x.ndim for a in axes))
    lo = jnp.min(x, axis=axes, keepdims=True)
    hi = jnp.max(x, axis=axes, keepdims=True)
    span = hi - lo
    reduced = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    eps = jnp.expand_dims(jnp.broadcast_to(jnp.asarray(eps, x.dtype), reduced), axes)
    bound = eps * span
    half = eb.abs_half_step(bound, jnp.maximum(jnp.abs(lo), jnp.abs(hi)), jnp.finfo(x.dtype).eps)
    step = jnp.where(half > 0, 2 * half, 0).astype(x.dtype)
    centre = lo + span / 2
    code, _ = eb.linear_code(x, centre, step)
    limit = np.iinfo(code_dtype).max
    codes = jnp.clip(code, -limit, limit).astype(code_dtype)
    shape = jnp.broadcast_shapes(lo.shape, bound.shape)
    return FixedQuantized(codes, centre, step, jnp.broadcast_to(bound, shape))


def dequantize(q: FixedQuantized, dtype=jnp.float32) -> jax.Array:
    """The rebuilt values float32[codes.shape]."""
    return rebuild(q.codes, q.centre, q.step, dtype)


def rebuild(codes: jax.Array, centre: jax.Array, step: jax.Array, dtype=jnp.float32) -> jax.Array:
    """What a receiver of (codes, centre, step) rebuilds: float32[codes.shape]."""
    return eb.linear_value(codes, centre, step, dtype)


def violations(x: jax.Array, x_hat: jax.Array, bound: jax.Array) -> jax.Array:
    """int32: elements with |x_hat - x| above their block's bound (NaN counts as a violation)."""
    return jnp.sum(~(jnp.abs(x_hat - x) <= bound), dtype=jnp.int32)


def code_histogram(codes: jax.Array) -> jax.Array:
    """int32[2^bits]: how often each code value occurs (index = code - min code of the dtype)."""
    info = np.iinfo(codes.dtype)
    return jnp.bincount((codes.reshape(-1).astype(jnp.int32) - info.min), length=info.max - info.min + 1)


def entropy_bits(histogram) -> jax.Array:
    """float32 scalar: the Shannon entropy in bits per code of a histogram (what an ideal order-0 entropy coder
    would spend; 0 for an empty histogram). Works under jit."""
    h = jnp.asarray(histogram, jnp.float32)
    p = h / jnp.maximum(jnp.sum(h), 1.0)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0))


__all__ = ["CODE_DTYPES", "FixedQuantized", "code_dtype_for", "code_histogram", "dequantize", "entropy_bits",
           "max_code", "quantize", "rebuild", "violations"]
