"""Error-bounded quantisation + Lorenzo prediction + bit-plane packing, and its inverse.

`quantize_pack(xs: float[C_in, R, B], xs_prev: float[C_in, R, B], scalars: f64[6], *, scheme)` turns R blocks of B
values into, per code channel c and block r: bit planes `uint32[C, R, 32, B/32]`, the block's bit width
`int32[C, R]`, the block's anchor code `int32[C, R]` (the code of the value just before the block), and per-value flags
`uint8[R, B]` (outlier, zero and sign bits). `unpack_reconstruct(planes, anchors, flags, scalars, *, scheme)` gives the
values back as channels `float[C_in, R, B]` (outliers are not patched here: the caller holds their exact values).

The pipeline, per value (the one implementation of each step; `qrjax.compression` composes the same helpers for
N-d fields):
1. pre-transform and quantise to an integer code (cuSZ's dual quantisation: prediction runs on exact integers):
   `abs` q = round((x - centre) / step); `pw_rel` q = round(log2|x| / step) with zero and sign flags;
   complex values as two code channels, cartesian (re, im) or polar (log2 |a|, and the phase as a code modulo a
   power of two, so residuals wrap);
2. verification: the value is rebuilt exactly as decompression will rebuild it, in the output dtype, and compared with
   the input in float64; a value over its bound, a non-finite value and a code out of range are flagged outliers
   (stored verbatim by the caller), so the bound holds on every element;
3. 1-D Lorenzo on the codes, d = q - q_prev, zig-zag to unsigned;
4. fixed-length packing per block: the width w is the bit length of the block's largest residual, and the block is
   stored as its w lowest bit planes (plane p holds bit p of every residual, 32 residuals per word). w = 0 is a
   zero block (all residuals zero: a run of equal codes) and costs no payload.
The decoder rebuilds each block independently: codes = anchor + in-block cumulative sum of residuals.

`scheme` is a static `Scheme`; `scalars` are the traced numbers [bound, step0, step1, centre0, centre1, 0]: bound
is the absolute bound (abs) or epsilon (pw_rel); step0/step1 are the quantisation steps of the code channels;
centre0/1 the abs-mode offsets. float64 maths needs `jax.enable_x64(True)` around the call, as
`qrjax.compression` does. `qrjax.compression` calls the `_reference` functions unless asked for the kernels
(`use_kernel=True`): the kernels match them bit for bit in interpret mode (tested), and they lower to Triton for CUDA
(tested without a GPU; on GPU the block length B must be a power of two), but they have not been run on a device yet
(no GPU was lent while they were written), so they are not the default anywhere.

Public helpers the compressor composes for its N-d path and the tests use: `quantize_flat` (values -> codes, flags),
`bit_planes` (residuals -> planes), `codes_from_planes` (planes, anchors -> codes), with `encode_values`,
`decode_values`, `wrap`, `zigzag`, `unzigzag`, `pack_planes`, `unpack_planes` and `block_widths`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels._backend import compiler_params, resolve_interpret

OUTLIER = 1
ZERO = (2, 8)  # per code channel
NEG = (4, 16)
CODE_LIMIT = 2.0**29  # |code| below this keeps every Lorenzo residual inside int32
ULP_MARGIN = 4  # values are verified against their bound minus this many ulps of the value
# Absolute bounds are shrunk slightly below the user's so rounding in the rebuild rarely turns a value into an outlier
# (measured to give zero violations on QFT-22 and random-20 states in the brief).
ABS_SHRINK = 1.0 - 2.0**-10
WORD = 32


@dataclasses.dataclass(frozen=True)
class Scheme:
    """What the codes mean (static).

    mode: "abs" (absolute bound on the value, or on |a - a_hat| for complex) or "pw_rel" (|x - x_hat| <= eps |x|).
    rep: "real", "cartesian" or "polar" (complex input; polar only with pw_rel).
    dtype: the reconstruction dtype name ("float32", "float64", "complex64", "complex128").
    period: the phase channel's code period (polar only; a power of two), else 0.
    """

    mode: str
    rep: str
    dtype: str
    period: int = 0

    @property
    def channels(self) -> int:
        return 1 if self.rep == "real" else 2

    @property
    def component_dtype(self):
        return jnp.finfo(jnp.dtype(self.dtype)).dtype


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Blocks per grid step. None: every block in one step when interpreting on CPU (each step costs about a full pass
    over the arrays there), and 16 blocks on GPU."""

    block_rows: int | None = None

    @classmethod
    def get_default(cls) -> "BlockSizes":
        return cls()


# ---------------------------------------------------------------------------------------------------------- values


def _log_code(ax, step):
    """ax: f64 magnitudes > 0 -> (int32 code, in range)."""
    t = jnp.floor(jnp.log2(ax) / step + 0.5)
    return t, jnp.abs(t) < CODE_LIMIT


def abs_half_step(bound, top, ulp):
    """The quantiser's half step for an absolute bound: below `bound` by the shrink and by the rounding of the
    rebuild, centre + code * step rounded to a dtype with machine epsilon `ulp`, for values up to |top| (a code
    is off by at most half a step, the product and the sum by an ulp of top each; ULP_MARGIN + 1 ulps leave room
    for a decoder that rounds differently, e.g. with a fused multiply-add). <= 0 when the bound is below the
    dtype's resolution at top. Python floats or arrays."""
    return bound * ABS_SHRINK - (ULP_MARGIN + 1) * ulp * top


def linear_code(x, centre, step):
    """The linear quantiser: float code round((x - centre) / step) (0 where step is 0) -> (code, in CODE_LIMIT).
    The rebuilt value is centre + code * step (`linear_value`)."""
    inv = jnp.where(step > 0, 1.0 / jnp.where(step > 0, step, 1.0), 0.0)
    t = jnp.floor((x - centre) * inv + 0.5)
    return t, jnp.abs(t) < CODE_LIMIT


def linear_value(code, centre, step, dtype):
    """The value of a linear code, computed in `dtype` (the codec uses float64 so that large codes keep their low
    bits; the fixed-width collective codes are small and use float32)."""
    return (centre + code.astype(dtype) * step).astype(dtype)


def _subnormal(x):
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32 if x.dtype == jnp.float32 else jnp.uint64)
    nmant = jnp.finfo(x.dtype).nmant
    exponent = bits >> nmant & ((1 << (x.dtype.itemsize * 8 - 1 - nmant)) - 1)
    return (exponent == 0) & ((bits & ((1 << nmant) - 1)) != 0)


def encode_values(xs, scalars, scheme: Scheme):
    """xs: tuple of C_in float arrays (the input's components, same shape) -> (codes: tuple of C int32 arrays,
    flags: uint8 array). See the module docstring; the codes of outliers are 0.

    The log-domain transforms run in the component dtype (float32 transcendentals are an order of magnitude faster
    on CPU than float64 ones, and any code is acceptable: the verification decides); the linear (abs) codes and the
    bound check are in float64."""
    f64, work = jnp.float64, scheme.component_dtype
    bound, step0, step1, c0, c1 = (scalars[i] for i in range(5))
    flags = jnp.zeros(xs[0].shape, jnp.uint8)
    finite = jnp.ones(xs[0].shape, bool)
    for x in xs:  # XLA on CPU flushes subnormals to zero, so they are found by their bits and stored verbatim
        finite &= jnp.isfinite(x) & ~_subnormal(x)
    xs = [jnp.where(finite, x, 0) for x in xs]
    codes, ok = [], finite
    if scheme.mode == "abs":
        for x, centre in zip(xs, (c0, c1)):
            t, inr = linear_code(x.astype(f64), centre, step0)
            codes.append(t)
            ok &= inr
    elif scheme.rep in ("real", "cartesian"):  # pw_rel per component: eps on each component gives eps on |a|
        for c, x in enumerate(xs):
            ax = jnp.abs(x)
            zero = ax == 0
            t, inr = _log_code(jnp.where(zero, 1, ax), step0.astype(work))
            codes.append(jnp.where(zero, 0, t))
            ok &= inr | zero
            flags |= jnp.where(zero, ZERO[c], 0).astype(jnp.uint8)
            flags |= jnp.where(jnp.signbit(x), NEG[c], 0).astype(jnp.uint8)
    else:  # polar pw_rel: log2 |a| and the phase modulo the period
        m = jnp.hypot(xs[0], xs[1])
        zero = m == 0
        t, inr = _log_code(jnp.where(zero, 1, m), step0.astype(work))
        phase = jnp.floor(jnp.arctan2(xs[1], xs[0]) / step1.astype(work) + 0.5)
        codes = [jnp.where(zero, 0, t), jnp.where(zero, 0, phase)]
        ok &= inr | zero
        flags |= jnp.where(zero, ZERO[0], 0).astype(jnp.uint8)
    codes = [jnp.where(ok, t, 0).astype(jnp.int32) for t in codes]
    if scheme.period:
        codes[1] = codes[1] & (scheme.period - 1)
    rebuilt = decode_values(codes, flags, scalars, scheme)
    # Unsquared comparisons (squares of float64 values below ~1e-154 flush to zero and would pass anything), with a
    # margin of a few ulps of the value: a decoder on another backend may round the rebuilt value differently.
    diff = [r.astype(f64) - x.astype(f64) for r, x in zip(rebuilt, xs)]
    err = jnp.abs(diff[0]) if len(diff) == 1 else jnp.hypot(diff[0], diff[1])
    mag = jnp.abs(xs[0].astype(f64)) if len(xs) == 1 else jnp.hypot(xs[0].astype(f64), xs[1].astype(f64))
    slack = ULP_MARGIN * jnp.finfo(work).eps * mag
    if scheme.mode == "abs":
        ok &= err <= bound - slack
    else:  # -0.0 is rebuilt as -0.0 through the sign flag
        ok &= err <= bound * mag - slack
    flags |= jnp.where(ok, 0, OUTLIER).astype(jnp.uint8)
    codes = [jnp.where(ok, q, 0) for q in codes]
    return tuple(codes), flags


def decode_values(codes, flags, scalars, scheme: Scheme):
    """codes: C int32 arrays, flags: uint8 -> tuple of C_in arrays in the component dtype (outliers not patched)."""
    f64, work = jnp.float64, scheme.component_dtype
    step0, step1, c0, c1 = scalars[1], scalars[2], scalars[3], scalars[4]
    if scheme.mode == "abs":  # float64: centre + q * step must not lose the code's low bits
        return tuple(linear_value(q, centre, step0, f64).astype(work) for q, centre in zip(codes, (c0, c1)))
    if scheme.rep in ("real", "cartesian"):
        vals = []
        for c, q in enumerate(codes):
            mag = jnp.where(flags & ZERO[c], 0, jnp.exp2(q.astype(work) * step0.astype(work)))
            vals.append(jnp.where(flags & NEG[c], -mag, mag))
        return tuple(vals)
    mag = jnp.where(flags & ZERO[0], 0, jnp.exp2(codes[0].astype(work) * step0.astype(work)))
    phase = codes[1].astype(work) * step1.astype(work)
    return mag * jnp.cos(phase), mag * jnp.sin(phase)


# ------------------------------------------------------------------------------------------- residuals and planes


def wrap(d, period: int):
    """Residuals of a periodic code channel, folded into [-period/2, period/2)."""
    if not period:
        return d
    half = period // 2
    return ((d + half) & (period - 1)) - half


def zigzag(d):
    return (jnp.left_shift(d, 1) ^ jnp.right_shift(d, 31)).astype(jnp.uint32)


def unzigzag(u):
    return (jnp.right_shift(u, 1) ^ (jnp.uint32(0) - (u & 1))).astype(jnp.int32)


def pack_planes(u, nplanes: int = WORD):
    """u: uint32[..., B] (B a multiple of 32) -> (planes uint32[..., nplanes, B/32], widths int32[...]).

    Plane p, word j holds bit p of residuals 32j..32j+31 (residual 32j+i at bit i). Planes from nplanes up are
    left out: the caller passes at least the largest width (planes at or above a block's width are zero)."""
    v = u.reshape(u.shape[:-1] + (u.shape[-1] // WORD, WORD))
    p = jnp.arange(WORD, dtype=jnp.uint32)
    # iotas of the needed length rather than slices of one: Triton's Pallas lowering has no `slice`
    bits = (v[..., None, :, :] >> jnp.arange(nplanes, dtype=jnp.uint32)[:, None, None]) & 1
    return jnp.sum(bits << p, axis=-1, dtype=jnp.uint32), block_widths(u)


def block_widths(u):
    """u: uint32[..., B] -> int32[...]: the bit length of each block's largest residual (0: a zero block)."""
    return WORD - jax.lax.clz(jnp.max(u, axis=-1)).astype(jnp.int32)


def unpack_planes(planes):
    """planes: uint32[..., P, B/32] (P <= 32 lowest planes) -> u: uint32[..., B] (inverse of `pack_planes`)."""
    p = jnp.arange(WORD, dtype=jnp.uint32)
    bits = (planes[..., None] >> p) & 1  # [..., plane, word, i]
    u = jnp.sum(bits << jnp.arange(planes.shape[-2], dtype=jnp.uint32)[:, None, None], axis=-3, dtype=jnp.uint32)
    return u.reshape(u.shape[:-2] + (-1,))


# --------------------------------------------------------------------------------------------------- the kernels


def _residual(q, prev, period: int):
    """codes and their predecessors int32[..., B] -> (zig-zag residuals uint32[..., B], widths int32[...],
    anchors int32[...]: the predecessor of each block's first value)."""
    u = zigzag(wrap(q - prev, period))
    return u, block_widths(u), _first(prev)


def _first(a):
    """a: int32[..., B] -> int32[...], a[..., 0] as a masked sum: Triton's Pallas lowering has no `slice`."""
    lane = jax.lax.broadcasted_iota(jnp.int32, a.shape, a.ndim - 1)
    return jnp.sum(jnp.where(lane == 0, a, 0), axis=-1, dtype=a.dtype)


# The kernels read and write channels and scalars one at a time through their refs (`ref[i]` is a load or a store)
# rather than indexing or stacking arrays: Triton's Pallas lowering has no `slice` and stacks only two arrays along
# the last axis. The helpers take per-channel sequences either way.


def _scalars(s_ref):
    return tuple(s_ref[i] for i in range(s_ref.shape[0]))


def _quantize_pack_kernel(x_ref, xp_ref, s_ref, planes_ref, widths_ref, anchors_ref, flags_ref, *, scheme):
    scalars = _scalars(s_ref)
    codes, flags = encode_values(tuple(x_ref[i] for i in range(x_ref.shape[0])), scalars, scheme)
    prev, _ = encode_values(tuple(xp_ref[i] for i in range(xp_ref.shape[0])), scalars, scheme)
    for c, (q, qp) in enumerate(zip(codes, prev)):
        u, widths, anchors = _residual(q, qp, scheme.period if c == 1 else 0)
        planes_ref[c] = pack_planes(u)[0]
        widths_ref[c] = widths
        anchors_ref[c] = anchors
    flags_ref[...] = flags


def _unpack_reconstruct_kernel(planes_ref, anchors_ref, flags_ref, s_ref, out_ref, *, scheme):
    channels = range(planes_ref.shape[0])
    codes = _codes([planes_ref[c] for c in channels], [anchors_ref[c] for c in channels], scheme)
    for i, v in enumerate(decode_values(codes, flags_ref[...], _scalars(s_ref), scheme)):
        out_ref[i] = v


def _rows(rows: int, block_sizes: BlockSizes | None, interpret: bool) -> int:
    r = (block_sizes or BlockSizes.get_default()).block_rows
    if r is None:  # every block at once when interpreting; else the largest power of two <= 16 dividing rows
        return rows if interpret else math.gcd(rows, 16)
    if rows % r:
        raise ValueError(f"error_bounded: {rows} blocks are not a multiple of block_rows={r}")
    return r


def _check(xs, scheme):
    if xs.ndim != 3 or xs.shape[0] != (1 if scheme.rep == "real" else 2) or xs.shape[-1] % WORD:
        raise ValueError(f"error_bounded: values must be float[C_in, R, B] with C_in = {scheme.channels} and B a "
                         f"multiple of {WORD}, got {xs.shape}")


def _check_gpu_blocks(b: int, r: int, interpret: bool) -> None:
    for name, size in (("the block length B", b), ("block_rows", r)):
        if not interpret and size & (size - 1):  # Triton's arrays must have power-of-two sizes
            raise ValueError(f"error_bounded: on GPU {name} must be a power of two, got {size}")


def shift_prev(xs):
    """xs: [C_in, R, B] -> each value's predecessor in the flattened order (the first value is its own)."""
    flat = xs.reshape(xs.shape[0], -1)
    return jnp.concatenate([flat[:, :1], flat[:, :-1]], axis=1).reshape(xs.shape)


@functools.partial(jax.jit, static_argnames=("scheme", "block_sizes", "interpret"))
def quantize_pack(xs: jax.Array, xs_prev: jax.Array, scalars: jax.Array, *, scheme: Scheme,
                  block_sizes: BlockSizes | None = None, interpret: bool | None = None):
    """xs, xs_prev: float[C_in, R, B]; scalars: f64[6] -> (planes uint32[C, R, 32, B/32], widths int32[C, R],
    anchors int32[C, R], flags uint8[R, B]).

    xs_prev holds each value's predecessor in the flattened input (the first value is its own predecessor):
    `shift_prev(xs)`.
    Fallback: `quantize_pack_reference` (plain jnp, bit-identical; the path `qrjax.compression` takes on CPU).
    """
    _check(xs, scheme)
    interpret = resolve_interpret(interpret)
    c_in, rows, b = xs.shape
    c, w = scheme.channels, b // WORD
    r = _rows(rows, block_sizes, interpret)
    _check_gpu_blocks(b, r, interpret)
    spec_x = pl.BlockSpec((c_in, r, b), lambda i: (0, i, 0))
    return pl.pallas_call(
        functools.partial(_quantize_pack_kernel, scheme=scheme),
        out_shape=(jax.ShapeDtypeStruct((c, rows, WORD, w), jnp.uint32),
                   jax.ShapeDtypeStruct((c, rows), jnp.int32),
                   jax.ShapeDtypeStruct((c, rows), jnp.int32),
                   jax.ShapeDtypeStruct((rows, b), jnp.uint8)),
        grid=(rows // r,),
        in_specs=[spec_x, spec_x, pl.BlockSpec((8,), lambda i: (0,))],
        out_specs=(pl.BlockSpec((c, r, WORD, w), lambda i: (0, i, 0, 0)), pl.BlockSpec((c, r), lambda i: (0, i)),
                   pl.BlockSpec((c, r), lambda i: (0, i)), pl.BlockSpec((r, b), lambda i: (i, 0))),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(num_warps=4, num_stages=1),
    )(xs, xs_prev, jnp.pad(scalars, (0, 2)))  # 8 scalars: Triton block shapes are powers of two


@functools.partial(jax.jit, static_argnames=("scheme", "block_sizes", "interpret"))
def unpack_reconstruct(planes: jax.Array, anchors: jax.Array, flags: jax.Array, scalars: jax.Array, *,
                       scheme: Scheme, block_sizes: BlockSizes | None = None, interpret: bool | None = None):
    """planes uint32[C, R, P, B/32] (the P <= 32 lowest planes), anchors int32[C, R], flags uint8[R, B], scalars
    f64[6] -> float[C_in, R, B] (component dtype; outliers not patched).

    Fallback: `unpack_reconstruct_reference` (plain jnp, bit-identical)."""
    interpret = resolve_interpret(interpret)
    c, rows, nplanes, w = planes.shape
    b = w * WORD
    r = _rows(rows, block_sizes, interpret)
    _check_gpu_blocks(b, r, interpret)
    return pl.pallas_call(
        functools.partial(_unpack_reconstruct_kernel, scheme=scheme),
        out_shape=jax.ShapeDtypeStruct((c, rows, b), scheme.component_dtype),
        grid=(rows // r,),
        in_specs=[pl.BlockSpec((c, r, nplanes, w), lambda i: (0, i, 0, 0)), pl.BlockSpec((c, r), lambda i: (0, i)),
                  pl.BlockSpec((r, b), lambda i: (i, 0)), pl.BlockSpec((8,), lambda i: (0,))],
        out_specs=pl.BlockSpec((c, r, b), lambda i: (0, i, 0)),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(num_warps=4, num_stages=1),
    )(planes, anchors, flags, jnp.pad(scalars, (0, 2)))


@functools.partial(jax.jit, static_argnames=("scheme",))
def quantize_flat(xs: jax.Array, scalars: jax.Array, *, scheme: Scheme):
    """xs: float[C_in, ...] (the input's components, any shape); scalars: f64[6] -> (codes: tuple of C int32[N],
    flags: uint8[N]) with N = prod(...), in row-major order: `encode_values` over the flattened components, as one
    XLA program. The codes of outliers are 0. Needs `jax.enable_x64(True)` around the call."""
    return encode_values(tuple(x.reshape(-1) for x in xs), scalars, scheme)


@functools.partial(jax.jit, static_argnames=("rows", "scheme"))
def _residuals(codes, *, rows: int, scheme: Scheme):
    """codes: C int32[N] -> zig-zag residuals uint32[C, R, B], widths int32[C, R], anchors int32[C, R]."""
    out = [_residual(q.reshape(rows, -1), jnp.concatenate([q[:1], q[:-1]]).reshape(rows, -1),
                     scheme.period if c == 1 else 0) for c, q in enumerate(codes)]
    return tuple(jnp.stack(a) for a in zip(*out))


@functools.partial(jax.jit, static_argnames=("nplanes",))
def bit_planes(u: jax.Array, *, nplanes: int = WORD) -> jax.Array:
    """u: uint32[..., B] (B a multiple of 32) -> uint32[..., nplanes, B/32]: the lowest nplanes bit planes of each
    block, as `pack_planes` without the widths, as one XLA program. Pass nplanes >= the largest block width."""
    return pack_planes(u, nplanes)[0]


def encode_residuals(xs, scalars, *, scheme: Scheme):
    """The first half of `quantize_pack_reference`: -> (residuals uint32[C, R, B], widths, anchors, flags[R, B]).
    Three XLA programs: fused, XLA recomputed the quantisation for each consumer (about 3x slower on CPU)."""
    _check(xs, scheme)
    _, rows, b = xs.shape
    codes, flags = quantize_flat(xs, scalars, scheme=scheme)
    u, widths, anchors = _residuals(codes, rows=rows, scheme=scheme)
    return u, widths, anchors, flags.reshape(rows, b)


def quantize_pack_reference(xs, scalars, *, scheme: Scheme, nplanes: int = WORD):
    """Plain-jnp `quantize_pack`, quantising each value once and shifting the codes (the kernel cannot reach across
    its block, so it quantises the shifted input instead). With nplanes < 32 only the lowest planes are returned
    (`qrjax.compression` passes the largest width, which cuts the packing work on CPU)."""
    u, widths, anchors, flags = encode_residuals(xs, scalars, scheme=scheme)
    return bit_planes(u, nplanes=nplanes), widths, anchors, flags


def _codes(planes, anchors, scheme: Scheme):
    """planes uint32[C, R, P, W], anchors int32[C, R] (arrays, or per-channel sequences as the kernel passes) -> C
    int32 code arrays [R, B]: anchor + in-block cumulative sum."""
    codes = []
    for c in range(scheme.channels):
        d = unzigzag(unpack_planes(planes[c]))
        q = anchors[c][:, None] + jnp.cumsum(d, axis=-1, dtype=jnp.int32)
        codes.append(q & (scheme.period - 1) if (c == 1 and scheme.period) else q)
    return codes


@functools.partial(jax.jit, static_argnames=("scheme",))
def codes_from_planes(planes: jax.Array, anchors: jax.Array, *, scheme: Scheme) -> list[jax.Array]:
    """planes uint32[C, R, P, B/32] (the P <= 32 lowest planes), anchors int32[C, R] -> C int32 code arrays [R, B]:
    the first half of `unpack_reconstruct_reference`, the inverse of the quantisation's Lorenzo + packing steps."""
    return _codes(planes, anchors, scheme)


@functools.partial(jax.jit, static_argnames=("scheme",))
def _values_from_codes(codes, flags, scalars, *, scheme: Scheme):
    return jnp.stack(decode_values(codes, flags, scalars, scheme))


def unpack_reconstruct_reference(planes, anchors, flags, scalars, *, scheme: Scheme):
    """Plain-jnp `unpack_reconstruct` (two XLA programs, as `quantize_pack_reference`)."""
    return _values_from_codes(codes_from_planes(planes, anchors, scheme=scheme), flags, scalars, scheme=scheme)
