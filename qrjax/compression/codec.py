"""The error-bounded compressor: `compress(x, bound, mode) -> Compressed` and `decompress(c) -> array`.

Error-bound modes (checked per element in float64 after quantising; violators are stored verbatim, so the bound holds
on every element of every input, including float32 rounding cases that break a naive quantiser):
- "abs":    |x_hat - x| <= bound
- "rel":    |x_hat - x| <= bound * (max(x) - min(x))  (SZ's value-range relative bound; finite values)
- "pw_rel": |x_hat - x| <= bound * |x|  (point-wise relative: zeros stay zero, signs are kept)
For complex input the bound is on the complex modulus |a_hat - a|; "rel" takes the larger range of the real and
imaginary parts. NaN and +-Inf are stored exactly (as outliers).

Pipeline (`pallas_kernels.error_bounded` holds each step): pre-quantise to integer codes (log2 domain for pw_rel),
Lorenzo prediction on the codes (1-D over the flattened array; 2-D or 3-D over a field's last axes with
`predictor="lorenzo"` on a 2-D/3-D input), zig-zag, fixed-length packing per block of `block` values as the block's
lowest w bit planes (w = 0: zero block, no payload), outliers stored exactly, then optionally zstd over the whole
stream where it pays. Complex input is two code channels: cartesian (re, im) or polar (log2 |a|, and the phase
modulo a power of two); "auto" picks polar for pw_rel and cartesian otherwise (measured: see
experiments/results/compression_vs_peers.md).

The 1-D path runs the plain-jnp references of the fused Pallas kernels; `use_kernel=True` runs the kernels, which
write the same bytes (tested in interpret mode; they lower to Triton for CUDA, tested without a GPU, but have not
been run on a device yet).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels import error_bounded as eb

MODES = ("abs", "rel", "pw_rel")
PREDICTORS = ("lorenzo", "none")
COMPLEX_AS = ("auto", "cartesian", "polar")
LOSSLESS = ("auto", "zstd", "none")
DTYPES = ("float32", "float64", "complex64", "complex128")
# Internal bounds shrink slightly below the user's so rounding in the rebuild rarely turns a value into an outlier
# (the shrink factors measured to give zero violations on QFT-22 and random-20 states in the brief).
ABS_SHRINK = eb.ABS_SHRINK
LOG_SHRINK = 1.0 - 2.0**-6
POLAR_MIN_BOUND = 1e-8
MAGIC = b"QRJC"
VERSION = 2


@dataclasses.dataclass(frozen=True)
class Meta:
    shape: tuple[int, ...]
    dtype: str
    mode: str
    bound: float
    rep: str  # real | cartesian | polar
    predictor: str  # lorenzo1 | lorenzo2 | lorenzo3 | none
    block: int
    period: int
    scalars: tuple[float, ...]
    lossless: str


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("widths", "payload", "anchors", "zero", "neg", "outlier_index", "outlier_value"),
                   meta_fields=("meta",))
@dataclasses.dataclass(frozen=True, eq=False)
class Compressed:
    """A compressed array (host numpy leaves; a pytree whose metadata is static).

    widths: uint8[C, nblocks] bit width per block and code channel; payload: uint32[words] the kept bit planes;
    anchors: int32[C, nblocks] (1-D Lorenzo) or int32[C, 0]; zero/neg: packed bitmaps uint8[C, ceil(n/8)] (pw_rel) or
    uint8[C, 0]; outlier_index: int64[k] flat positions stored verbatim in outlier_value: dtype[k].
    """

    meta: Meta
    widths: np.ndarray
    payload: np.ndarray
    anchors: np.ndarray
    zero: np.ndarray
    neg: np.ndarray
    outlier_index: np.ndarray
    outlier_value: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.meta.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta.dtype)

    @property
    def raw_nbytes(self) -> int:
        return math.prod(self.meta.shape) * self.dtype.itemsize

    @functools.cached_property
    def serialized(self) -> bytes:
        return _to_bytes(self)

    @property
    def nbytes(self) -> int:
        """Bytes of the serialised stream (what the store holds)."""
        return len(self.serialized)

    @property
    def ratio(self) -> float:
        return self.raw_nbytes / self.nbytes

    @property
    def num_outliers(self) -> int:
        return int(self.outlier_index.size)

    def to_bytes(self) -> bytes:
        return self.serialized

    @classmethod
    def from_bytes(cls, data: bytes) -> "Compressed":
        return _from_bytes(data)


# ---------------------------------------------------------------------------------------------------- validation


def _check_args(x, bound, mode, predictor, block, complex_as, lossless) -> np.dtype:
    dtype = np.dtype(getattr(x, "dtype", None) or np.asarray(x).dtype)
    if dtype.name not in DTYPES:
        raise TypeError(f"compress: input dtype {dtype} is not supported; use one of {', '.join(DTYPES)} "
                        "(cast integer or half-precision data first)")
    if mode not in MODES:
        raise ValueError(f"compress: mode {mode!r} is not one of {MODES}")
    if predictor not in PREDICTORS:
        raise ValueError(f"compress: predictor {predictor!r} is not one of {PREDICTORS}")
    if complex_as not in COMPLEX_AS:
        raise ValueError(f"compress: complex_as {complex_as!r} is not one of {COMPLEX_AS}")
    if lossless not in LOSSLESS:
        raise ValueError(f"compress: lossless {lossless!r} is not one of {LOSSLESS}")
    if not isinstance(block, int) or block < eb.WORD or block % eb.WORD:
        raise ValueError(f"compress: block={block!r} must be a positive multiple of {eb.WORD}")
    try:
        b = float(bound)
    except (TypeError, ValueError):
        raise ValueError(f"compress: bound {bound!r} is not a number") from None
    if not (math.isfinite(b) and b > 0):
        raise ValueError(f"compress: bound must be a finite number > 0, got {bound!r}")
    if b < np.finfo(np.float64).tiny:
        raise ValueError(f"compress: bound {bound!r} is below the smallest normal float64 (XLA flushes it to zero)")
    if mode == "pw_rel" and b >= 1:
        raise ValueError(f"compress: a point-wise relative bound must be < 1 (got {bound!r}): at 1 every value could "
                         "be stored as zero")
    if np.ndim(x) == 0:
        raise ValueError("compress: input must have at least one axis")
    if math.prod(np.shape(x)) == 0:
        raise ValueError(f"compress: input of shape {np.shape(x)} is empty")
    return dtype


# ------------------------------------------------------------------------------------------------------ compress


@jax.jit
def _ranges(parts):
    """Per component: (min, max) over finite values (0, 0 when none is finite)."""
    out = []
    for p in parts:
        fin = jnp.isfinite(p)
        lo = jnp.min(jnp.where(fin, p, jnp.inf))
        hi = jnp.max(jnp.where(fin, p, -jnp.inf))
        ok = jnp.any(fin)
        out.append(jnp.stack([jnp.where(ok, lo, 0), jnp.where(ok, hi, 0)]).astype(jnp.float64))
    return jnp.stack(out)


def _scheme_and_scalars(parts, dtype: np.dtype, bound: float, mode: str, complex_as: str):
    is_complex = dtype.kind == "c"
    rep = "real"
    if is_complex:
        rep = ("polar" if mode == "pw_rel" else "cartesian") if complex_as == "auto" else complex_as
        if complex_as == "auto" and rep == "polar" and bound < POLAR_MIN_BOUND:
            rep = "cartesian"  # the phase period would pass 2^30 codes
        if rep == "polar" and mode == "pw_rel" and bound < POLAR_MIN_BOUND:
            raise ValueError(f"compress: complex_as='polar' needs bound >= {POLAR_MIN_BOUND:g} (the phase code "
                             f"period passes 2^30 below it), got {bound!r}; use complex_as='cartesian'")
        if rep == "polar" and mode != "pw_rel":
            raise ValueError(f"compress: complex_as='polar' needs mode='pw_rel' (an absolute phase error scales with "
                             f"the magnitude), got mode={mode!r}")
    period, step1, centres = 0, 0.0, [0.0, 0.0]
    ulp = float(np.finfo(dtype).eps)  # of the component dtype
    if mode == "pw_rel":
        check = bound
        bound = bound - (eb.ULP_MARGIN + 1) * ulp if bound > 2 * (eb.ULP_MARGIN + 1) * ulp else bound
        if rep == "polar":  # |a_hat - a| <= |a| (eps_m + eps_p (1 + eps_m)) = eps |a|
            eps_m, eps_p = bound / 2, (bound / 2) / (1 + bound / 2)
            period = 1 << math.ceil(math.log2(math.pi / (eps_p * LOG_SHRINK)))
            step1 = 2 * math.pi / period
        else:
            eps_m = bound
        step0 = 2 * math.log2(1 + eps_m) * LOG_SHRINK
    else:
        if mode == "abs":  # codes around a sample's median: keeps offset data's codes in range without a full pass
            check = bound
            stats = np.asarray(_sample(parts))
            centres = [float(v) for v in stats[:, 0]] + [0.0] * (2 - len(parts))
            top = 2 * float(np.max(stats[:, 1]))  # an estimate of max |x|, with room
        else:  # rel: one pass for the range, and codes around its centre
            rng = np.asarray(_ranges(parts))
            check = bound * float(np.max(rng[:, 1] - rng[:, 0]))
            centres = [float((lo + hi) / 2) for lo, hi in rng] + [0.0] * (2 - len(parts))
            top = float(np.max(np.abs(rng)))
        # The rebuilt value is rounded to the input dtype (half an ulp) and verified with a margin of ULP_MARGIN ulps:
        # keep the quantisation's half-step below the bound by both, or most values near |x| = top become outliers.
        half = eb.abs_half_step(check, top, ulp)
        half = half if half > 0 else check * ABS_SHRINK  # bound below the dtype's resolution: outliers decide
        step0 = 2 * (half / math.sqrt(2) if is_complex else half)  # |(de_re, de_im)| <= e
    scheme = eb.Scheme("pw_rel" if mode == "pw_rel" else "abs", rep, dtype.name, period)
    return scheme, (check, step0, step1, centres[0], centres[1], 0.0)


@jax.jit
def _sample(parts):
    """Per component, from up to ~1024 evenly strided finite values: (median, max |value|) (0 when none is
    finite)."""
    out = []
    for p in parts:
        flat = p.reshape(-1)
        sample = flat[::max(1, flat.size // 1024)]
        sample = jnp.where(jnp.isfinite(sample), sample, jnp.nan).astype(jnp.float64)
        out.append(jnp.nan_to_num(jnp.stack([jnp.nanmedian(sample), jnp.nanmax(jnp.abs(sample))])))
    return jnp.stack(out)


@jax.jit
def _components(x):
    return (jnp.real(x), jnp.imag(x)) if jnp.iscomplexobj(x) else (x,)


@functools.partial(jax.jit, static_argnames=("block",))
def _blocks(parts, *, block: int):
    """Components -> float[C_in, nblocks, block], the tail padded with the last value (zero residuals)."""
    pad = -parts[0].size % block
    return jnp.stack([jnp.pad(p.reshape(-1), (0, pad), mode="edge") for p in parts]).reshape(len(parts), -1, block)


@functools.partial(jax.jit, static_argnames=("dims", "block", "period"))
def _field_residuals(codes, *, dims: int, block: int, period: int):
    """N-d Lorenzo (first differences along each of the last `dims` axes, zero outside) -> zig-zag residuals
    uint32[C, nblocks, block], padded with zeros."""
    out = []
    for c, q in enumerate(codes):
        d = q
        for ax in range(q.ndim - dims, q.ndim):
            pad = [(0, 0)] * q.ndim
            pad[ax] = (1, 0)
            d = d - jax.lax.slice_in_dim(jnp.pad(d, pad), 0, d.shape[ax], axis=ax)
        d = eb.wrap(d, period if c == 1 else 0).reshape(-1)
        d = jnp.pad(d, (0, -d.size % block))
        out.append(eb.zigzag(d).reshape(-1, block))
    return jnp.stack(out)


_widths = jax.jit(eb.block_widths)


def _nplanes(widths) -> int:
    """Planes to pack: the largest width, rounded up to a multiple of 4 (fewer compiled variants)."""
    return max(4, -(-int(jnp.max(widths)) // 4) * 4)


def _use_kernel(use_kernel) -> bool:
    """None -> False until the kernels' GPU lowering has been run on a device (see pallas_kernels/error_bounded)."""
    return bool(use_kernel)


def compress(x, bound: float, mode: str = "abs", *, predictor: str = "lorenzo", block: int = 256,
             complex_as: str = "auto", lossless: str = "auto", use_kernel: bool | None = None) -> Compressed:
    """x: float32/float64/complex64/complex128[...] (numpy or jax) -> Compressed; see the module docstring.

    predictor: "lorenzo" (1-D for 1-D input, 2-D/3-D over the last axes of a 2-D/3-D field; a 4-D+ input uses its
    last three axes) or "none" (quantisation only: the choice for embedding-like data). block: values per packed
    block. lossless: "zstd" always, "none" never, "auto" when it makes the stream smaller.
    """
    dtype = _check_args(x, bound, mode, predictor, block, complex_as, lossless)
    if isinstance(x, np.ndarray) and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))  # JAX takes native byte order only
    dtype = np.dtype(dtype.name)
    shape = tuple(int(s) for s in np.shape(x))
    n = math.prod(shape)
    with jax.enable_x64(True):
        parts = _components(jnp.asarray(x))
        scheme, scalars = _scheme_and_scalars(parts, dtype, float(bound), mode, complex_as)
        s = jnp.asarray(scalars, jnp.float64)
        ndim = sum(1 for d in shape if d > 1)
        dims = 0 if predictor == "none" else min(max(ndim, 1), 3)
        if dims == 1:
            xs = _blocks(parts, block=block)
            if _use_kernel(use_kernel):
                planes, widths, anchors, flags = eb.quantize_pack(xs, eb.shift_prev(xs), s, scheme=scheme)
            else:  # pack only the planes the widest block needs (the packing is the costliest step on CPU)
                u, widths, anchors, flags = eb.encode_residuals(xs, s, scheme=scheme)
                planes = eb.bit_planes(u, nplanes=_nplanes(widths))
            flags = flags.reshape(-1)[:n]
        else:
            squeezed = tuple(d for d in shape if d > 1)  # size-1 axes carry no neighbours
            field = tuple(p.reshape(squeezed if len(squeezed) <= 3 else (-1,) + squeezed[-3:]) for p in parts)
            codes, flags = eb.quantize_flat(jnp.stack(field), s, scheme=scheme)
            codes = [q.reshape(field[0].shape) for q in codes]
            u = _field_residuals(codes, dims=dims, block=block, period=scheme.period)
            widths = _widths(u)
            planes = eb.bit_planes(u, nplanes=_nplanes(widths))
            anchors = jnp.zeros((scheme.channels, 0), jnp.int32)
        planes, widths, anchors, flags = (np.asarray(a) for a in (planes, widths, anchors, flags))
    keep = np.arange(planes.shape[-2]) < widths[..., None]
    payload = planes[keep].reshape(-1)
    out_idx = np.flatnonzero(flags & eb.OUTLIER)
    x_np = np.asarray(x).reshape(-1) if out_idx.size else np.zeros(0, dtype)
    zero = np.zeros((scheme.channels, 0), np.uint8)
    neg = zero
    if scheme.mode == "pw_rel":
        zero = _bitmaps(flags, eb.ZERO[:scheme.channels])
        neg = _bitmaps(flags, eb.NEG[:scheme.channels] if scheme.rep != "polar" else ())
    meta = Meta(shape, dtype.name, mode, float(bound), scheme.rep, f"lorenzo{dims}" if dims else "none", block,
                scheme.period, tuple(float(v) for v in scalars), lossless)
    return Compressed(meta, widths.astype(np.uint8), payload, anchors.astype(np.int32), zero, neg,
                      out_idx.astype(np.int64), x_np[out_idx].astype(dtype))


def _bitmaps(flags, bits) -> np.ndarray:
    """Packed bitmaps of the given flag bits; a bitmap with no bit set is stored empty."""
    maps = [(flags & b) != 0 for b in bits]
    if not any(m.any() for m in maps):
        return np.zeros((len(maps), 0), np.uint8)
    return np.stack([np.packbits(m) for m in maps]) if maps else np.zeros((0, 0), np.uint8)


# ---------------------------------------------------------------------------------------------------- decompress


def decompress(c: Compressed, *, use_kernel: bool | None = None):
    """Compressed -> the array (shape and dtype of the input): a jax.Array, or a numpy array for 64-bit dtypes
    while JAX runs without `jax_enable_x64`."""
    m = c.meta
    scheme = eb.Scheme("pw_rel" if m.mode == "pw_rel" else "abs", m.rep, m.dtype, m.period)
    n = math.prod(m.shape)
    nch, nblocks = c.widths.shape
    nplanes = _nplanes(c.widths) if c.widths.size else 4
    planes = np.zeros((nch, nblocks, nplanes, m.block // eb.WORD), np.uint32)
    planes[np.arange(nplanes) < c.widths[..., None]] = c.payload.reshape(-1, m.block // eb.WORD)
    flags = np.zeros(nblocks * m.block, np.uint8)
    for maps, bits in ((c.zero, eb.ZERO), (c.neg, eb.NEG)):
        for bm, bit in zip(maps, bits):
            if bm.size:  # (np.unpackbits pads an empty input with uninitialised memory, not zeros)
                flags[:n] |= np.unpackbits(bm, count=n) * np.uint8(bit)
    numpy_out = m.dtype in ("float64", "complex128") and not jax.config.jax_enable_x64
    with jax.enable_x64(True):
        s = jnp.asarray(m.scalars, jnp.float64)
        if m.predictor == "lorenzo1":
            args = (jnp.asarray(planes), jnp.asarray(c.anchors), jnp.asarray(flags.reshape(nblocks, m.block)), s)
            if _use_kernel(use_kernel):
                parts = eb.unpack_reconstruct(*args, scheme=scheme)
            else:
                parts = eb.unpack_reconstruct_reference(*args, scheme=scheme)
        else:
            dims = int(m.predictor[-1]) if m.predictor != "none" else 0
            squeezed = tuple(d for d in m.shape if d > 1) or (1,)
            fshape = squeezed if len(squeezed) <= 3 else (-1,) + squeezed[-3:]
            parts = _field_values(jnp.asarray(planes), jnp.asarray(flags), s, scheme=scheme, n=n, fshape=fshape,
                                  dims=dims)
        out = _assemble(parts, jnp.asarray(c.outlier_index), jnp.asarray(c.outlier_value), n=n, shape=m.shape,
                        dtype=m.dtype)
        if numpy_out:
            return np.asarray(out)
    return out


@functools.partial(jax.jit, static_argnames=("scheme", "n", "fshape", "dims"))
def _field_values(planes, flags, scalars, *, scheme, n, fshape, dims):
    codes = []
    for c in range(scheme.channels):
        q = eb.unzigzag(eb.unpack_planes(planes[c])).reshape(-1)[:n].reshape(fshape)
        for ax in range(q.ndim - dims, q.ndim):
            q = jnp.cumsum(q, axis=ax, dtype=jnp.int32)
        codes.append(q & (scheme.period - 1) if (c == 1 and scheme.period) else q)
    return jnp.stack(eb.decode_values([q.reshape(-1) for q in codes], flags[:n], scalars, scheme))


@functools.partial(jax.jit, static_argnames=("n", "shape", "dtype"))
def _assemble(parts, idx, vals, *, n, shape, dtype):
    parts = parts.reshape(parts.shape[0], -1)[:, :n]
    x = jax.lax.complex(parts[0], parts[1]) if len(parts) == 2 else parts[0]
    return x.astype(dtype).at[idx].set(vals.astype(dtype)).reshape(shape)


# ------------------------------------------------------------------------------------------------- serialisation

_ARRAYS = ("widths", "payload", "anchors", "zero", "neg", "outlier_index", "outlier_value")
_NAMES = {"mode": MODES, "rep": ("real", "cartesian", "polar"), "predictor": ("none", "lorenzo1", "lorenzo2",
                                                                               "lorenzo3"),
          "lossless": LOSSLESS, "dtype": DTYPES}
_ARRAY_DTYPES = ("uint8", "uint32", "int32", "int64") + DTYPES


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        byte = buf[pos]
        v |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return v, pos


def _to_bytes(c: Compressed) -> bytes:
    """A compact binary stream (the header is ~100 bytes, so small blocks stay cheap): magic, version, codec, then
    (optionally zstd-compressed) varint metadata, 6 float64 scalars, and each array as dtype, rank, dims, bytes."""
    m = c.meta
    head = bytearray()
    for key in ("mode", "rep", "predictor", "lossless", "dtype"):
        head.append(_NAMES[key].index(getattr(m, key)))
    head += _varint(len(m.shape)) + b"".join(_varint(d) for d in m.shape)
    head += _varint(m.block) + _varint(m.period)
    head += struct.pack("<7d", m.bound, *m.scalars)
    for k in _ARRAYS:
        a = np.ascontiguousarray(getattr(c, k))
        head.append(_ARRAY_DTYPES.index(a.dtype.name))
        head += _varint(a.ndim) + b"".join(_varint(d) for d in a.shape)
    body = bytes(head) + b"".join(np.ascontiguousarray(getattr(c, k)).tobytes() for k in _ARRAYS)
    codec = 0
    if m.lossless != "none":
        import zstandard

        packed = zstandard.ZstdCompressor(level=3).compress(body)
        if m.lossless == "zstd" or len(packed) < len(body):
            body, codec = packed, 1
    return MAGIC + bytes([VERSION, codec]) + body


def _from_bytes(data: bytes) -> Compressed:
    if len(data) < 6 or data[:4] != MAGIC:
        raise ValueError("Compressed.from_bytes: not a qrjax compressed stream (bad magic)")
    if data[4] != VERSION:
        raise ValueError(f"Compressed.from_bytes: stream version {data[4]} is not supported (this is {VERSION})")
    body = data[6:]
    if data[5] == 1:
        import zstandard

        try:
            body = zstandard.ZstdDecompressor().decompress(body)
        except zstandard.ZstdError as err:
            raise ValueError(f"Compressed.from_bytes: the stream is truncated or corrupt ({err})") from None
    elif data[5] != 0:
        raise ValueError(f"Compressed.from_bytes: unknown lossless codec {data[5]}")
    buf = memoryview(body)
    try:
        meta = {key: _NAMES[key][buf[i]] for i, key in enumerate(("mode", "rep", "predictor", "lossless", "dtype"))}
        pos = 5
        ndim, pos = _read_varint(buf, pos)
        shape = []
        for _ in range(ndim):
            d, pos = _read_varint(buf, pos)
            shape.append(d)
        block, pos = _read_varint(buf, pos)
        period, pos = _read_varint(buf, pos)
        bound, *scalars = struct.unpack_from("<7d", buf, pos)
        pos += 56
        specs = []
        for _ in _ARRAYS:
            dt = np.dtype(_ARRAY_DTYPES[buf[pos]])
            rank, pos = _read_varint(buf, pos + 1)
            dims = []
            for _ in range(rank):
                d, pos = _read_varint(buf, pos)
                dims.append(d)
            specs.append((dt, tuple(dims)))
        arrays = {}
        for k, (dt, dims) in zip(_ARRAYS, specs):
            size = dt.itemsize * math.prod(dims)
            if pos + size > len(buf):
                raise IndexError
            arrays[k] = np.frombuffer(buf[pos:pos + size], dt).reshape(dims).copy()
            pos += size
    except (IndexError, struct.error):
        raise ValueError("Compressed.from_bytes: the stream is truncated or corrupt") from None
    meta = Meta(tuple(shape), meta["dtype"], meta["mode"], bound, meta["rep"], meta["predictor"], block, period,
                tuple(scalars), meta["lossless"])
    if not block or block % eb.WORD or arrays["payload"].size != int(arrays["widths"].astype(np.int64).sum()) * (
            block // eb.WORD):
        raise ValueError("Compressed.from_bytes: the stream is truncated or corrupt (payload does not match widths)")
    return Compressed(meta, **arrays)
