"""The fused quantise+predict+pack and unpack+reconstruct kernels (interpret mode) against their jnp references, and
the bit-plane packing against brute-force numpy. The GPU path: lowered to Triton for CUDA here (no GPU needed), and
run on a GPU under the `gpu` marker."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import error_bounded as eb

SCHEMES = [
    (eb.Scheme("abs", "real", "float32"), (1e-3, 2e-3, 0.0, 0.1, 0.0, 0.0)),
    (eb.Scheme("pw_rel", "real", "float64"), (1e-3, 2 * math.log2(1.001) * 0.98, 0.0, 0.0, 0.0, 0.0)),
    (eb.Scheme("abs", "cartesian", "complex64"), (1e-2, 1e-2, 0.0, 0.0, 0.0, 0.0)),
    (eb.Scheme("pw_rel", "cartesian", "complex64"), (1e-2, 2 * math.log2(1.01) * 0.98, 0.0, 0.0, 0.0, 0.0)),
    (eb.Scheme("pw_rel", "polar", "complex128", 1024), (1e-2, 2 * math.log2(1.005) * 0.98, 2 * math.pi / 1024, 0, 0, 0)),
]


def _inputs(scheme, rows, b, rng):
    n = rows * b
    dt = np.dtype(scheme.dtype)
    x = np.cumsum(rng.standard_normal(n)) * 0.05  # correlated, as fields and states are
    x[rng.integers(0, n, 5)] = [0.0, -0.0, np.nan, np.inf, 1e30]
    if dt.kind == "c":
        x = x + 1j * np.cumsum(rng.standard_normal(n)) * 0.05
        return np.stack([x.real, x.imag]).astype(np.finfo(dt).dtype).reshape(2, rows, b)
    return x.astype(dt).reshape(1, rows, b)


@pytest.mark.parametrize("block_rows", [None, 2])
@pytest.mark.parametrize("scheme, scalars", SCHEMES, ids=lambda v: getattr(v, "rep", "") + getattr(v, "mode", ""))
def test_kernels_match_references(scheme, scalars, block_rows, rng):
    rows, b = 8, 64
    with jax.enable_x64(True):
        xs = jnp.asarray(_inputs(scheme, rows, b, rng))
        s = jnp.asarray(scalars, jnp.float64)
        bs = eb.BlockSizes(block_rows)
        got = eb.quantize_pack(xs, eb.shift_prev(xs), s, scheme=scheme, block_sizes=bs, interpret=True)
        want = eb.quantize_pack_reference(xs, s, scheme=scheme)
        for g, w, name in zip(got, want, ("planes", "widths", "anchors", "flags")):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=name)
        planes, widths, anchors, flags = want
        assert int(np.asarray(flags & eb.OUTLIER).astype(bool).sum()) >= 2  # nan and inf at least
        out = eb.unpack_reconstruct(planes, anchors, flags, s, scheme=scheme, block_sizes=bs, interpret=True)
        ref = eb.unpack_reconstruct_reference(planes, anchors, flags, s, scheme=scheme)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
        # and the decode really inverts the encode: codes rebuilt from the planes are the encoder's codes
        codes, _ = eb.quantize_flat(xs, s, scheme=scheme)
        back = eb.codes_from_planes(planes, anchors, scheme=scheme)
        for q, r in zip(codes, back):
            np.testing.assert_array_equal(np.asarray(q), np.asarray(r).reshape(-1))


def test_planes_match_bruteforce_bit_packing(rng):
    u = rng.integers(0, 2**32, (3, 64), dtype=np.uint64).astype(np.uint32) >> rng.integers(0, 32, (3, 1)).astype(
        np.uint32)
    planes, widths = jax.jit(eb.pack_planes)(jnp.asarray(u))
    planes = np.asarray(planes)
    for r in range(3):
        assert widths[r] == int(u[r].max()).bit_length()
        for p in range(32):
            for w in range(2):
                want = sum(((int(u[r, 32 * w + i]) >> p) & 1) << i for i in range(32))
                assert int(planes[r, p, w]) == want
    np.testing.assert_array_equal(np.asarray(eb.unpack_planes(jnp.asarray(planes))), u)


def test_zigzag_and_wrap_are_exact():
    d = jnp.asarray([0, 1, -1, 2, -2, 2**30, -(2**30), 2**31 - 1, -(2**31)], jnp.int32)
    np.testing.assert_array_equal(np.asarray(eb.unzigzag(eb.zigzag(d))), np.asarray(d))
    np.testing.assert_array_equal(np.asarray(eb.zigzag(d))[:5], [0, 2, 1, 4, 3])
    w = eb.wrap(jnp.asarray([0, 1, 7, 8, 9, -9, -8], jnp.int32), 16)
    np.testing.assert_array_equal(np.asarray(w), [0, 1, 7, -8, -7, 7, -8])


def test_bad_block_shape_is_named():
    scheme = eb.Scheme("abs", "real", "float32")
    with jax.enable_x64(True), pytest.raises(ValueError, match="multiple of 32"):
        eb.quantize_pack_reference(jnp.zeros((1, 2, 40), jnp.float32), jnp.zeros(6, jnp.float64), scheme=scheme)


def _bound_violations(xs, rebuilt, flags, scalars, scheme):
    """Elements whose rebuilt value (outliers patched with their exact values, as the compressor does) breaks the
    bound, checked independently in float64 numpy."""
    x = np.asarray(xs, np.float64)
    finite = np.isfinite(x).all(axis=0)  # NaN and inf are outliers, stored exactly
    x = np.where(finite, x, 0.0)
    r = np.where(np.asarray(flags & eb.OUTLIER, bool) | ~finite, x, np.asarray(rebuilt, np.float64))
    err = np.abs(r[0] - x[0]) if len(x) == 1 else np.hypot(r[0] - x[0], r[1] - x[1])
    mag = np.abs(x[0]) if len(x) == 1 else np.hypot(x[0], x[1])
    limit = scalars[0] * (mag if scheme.mode == "pw_rel" else 1.0)
    return int(np.sum(~(err <= limit)))


def _check_kernels_on_device(scheme, scalars, rows, b, block_rows, interpret, rng):
    """The kernels' round trip keeps every element within its bound, whichever decoder rebuilds it (the kernel or the
    XLA reference: another backend may round a transcendental differently, which the encoder's ulp margin allows
    for), and the kernel's codes are the reference's except where a value sits on a rounding tie (the two may round
    it either way: code off by one) or on the outlier threshold."""
    with jax.enable_x64(True):
        xs = jnp.asarray(_inputs(scheme, rows, b, rng))
        s = jnp.asarray(scalars, jnp.float64)
        bs = eb.BlockSizes(block_rows)
        planes, widths, anchors, flags = eb.quantize_pack(xs, eb.shift_prev(xs), s, scheme=scheme, block_sizes=bs,
                                                          interpret=interpret)
        assert planes.shape == (scheme.channels, rows, eb.WORD, b // eb.WORD) and flags.shape == (rows, b)
        rebuilt = eb.unpack_reconstruct(planes, anchors, flags, s, scheme=scheme, block_sizes=bs, interpret=interpret)
        cross = eb.unpack_reconstruct_reference(planes, anchors, flags, s, scheme=scheme)
        assert _bound_violations(xs, rebuilt, flags, scalars, scheme) == 0
        assert _bound_violations(xs, cross, flags, scalars, scheme) == 0
        np.testing.assert_array_equal(np.asarray(widths), np.asarray(eb.block_widths(eb.unpack_planes(planes))))
        got = [np.asarray(q).reshape(-1).astype(np.int64) for q in eb.codes_from_planes(planes, anchors,
                                                                                       scheme=scheme)]
        codes, ref_flags = eb.quantize_flat(xs, s, scheme=scheme)
        want = [np.asarray(q).astype(np.int64) for q in codes]
    out_k = np.asarray(flags).reshape(-1) & eb.OUTLIER
    out_r = np.asarray(ref_flags) & eb.OUTLIER
    both = (out_k == 0) & (out_r == 0)
    mismatched = out_k != out_r
    for c, (g, w) in enumerate(zip(got, want)):
        d = g - w
        if c == 1 and scheme.period:
            d = (d + scheme.period // 2) % scheme.period - scheme.period // 2
        assert np.all(np.abs(d[both]) <= 1), f"channel {c}: codes differ by more than a rounding tie"
        mismatched |= both & (d != 0)
    assert mismatched.sum() <= 2 + 1e-4 * mismatched.size, mismatched.sum()


def test_device_checks_hold_in_interpret_mode(rng):
    """The GPU test's checks, run on CPU: they pass on the bit-identical interpret path."""
    scheme, scalars = SCHEMES[4]
    _check_kernels_on_device(scheme, scalars, 4, 64, 2, True, rng)


LOWERING_SHAPES = [
    pytest.param(4096, 256, None, id="compressor-default-block256-1M-values"),
    pytest.param(3, 32, None, id="smallest-block32-odd-rows"),
    pytest.param(24, 128, 8, id="block_rows-8"),
]


@pytest.mark.parametrize("rows, b, block_rows", LOWERING_SHAPES)
@pytest.mark.parametrize("scheme, scalars", SCHEMES, ids=lambda v: getattr(v, "rep", "") + getattr(v, "mode", ""))
def test_lowers_to_triton_without_gpu(scheme, scalars, rows, b, block_rows):
    """Both kernel entry points lower for CUDA on a CPU-only machine (as `test_flash_attention`'s lowering test), so
    Triton lowering errors show up here before a GPU run: float64 maths, clz, cumsum, channel loads and stores."""
    del scalars
    bs = eb.BlockSizes(block_rows)
    with jax.enable_x64(True):
        xs = jax.ShapeDtypeStruct((scheme.channels, rows, b), scheme.component_dtype)
        s = jax.ShapeDtypeStruct((6,), jnp.float64)
        pack = jax.jit(lambda x, xp, s: eb.quantize_pack(x, xp, s, scheme=scheme, block_sizes=bs, interpret=False))
        text = pack.trace(xs, xs, s).lower(lowering_platforms=("cuda",)).as_text()
        assert "triton" in text.lower()
        planes = jax.ShapeDtypeStruct((scheme.channels, rows, 16, b // eb.WORD), jnp.uint32)
        anchors = jax.ShapeDtypeStruct((scheme.channels, rows), jnp.int32)
        flags = jax.ShapeDtypeStruct((rows, b), jnp.uint8)
        unpack = jax.jit(lambda p, a, f, s: eb.unpack_reconstruct(p, a, f, s, scheme=scheme, block_sizes=bs,
                                                                  interpret=False))
        text = unpack.trace(planes, anchors, flags, s).lower(lowering_platforms=("cuda",)).as_text()
        assert "triton" in text.lower()


def test_gpu_path_names_non_power_of_two_blocks():
    scheme, _ = SCHEMES[0]
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match="block length B must be a power of two, got 96"):
            eb.quantize_pack(jnp.zeros((1, 4, 96), jnp.float32), jnp.zeros((1, 4, 96), jnp.float32),
                             jnp.zeros(6, jnp.float64), scheme=scheme, interpret=False)
        with pytest.raises(ValueError, match="block_rows must be a power of two, got 3"):
            eb.unpack_reconstruct(jnp.zeros((1, 6, 4, 2), jnp.uint32), jnp.zeros((1, 6), jnp.int32),
                                  jnp.zeros((6, 64), jnp.uint8), jnp.zeros(6, jnp.float64), scheme=scheme,
                                  block_sizes=eb.BlockSizes(3), interpret=False)


# (scheme index in SCHEMES, blocks R, block length B, block_rows)
GPU_CASES = [
    pytest.param(0, 1, 32, None, id="smallest-one-block-of-32-abs-f32"),
    pytest.param(1, 3, 64, None, id="odd-rows-3-one-row-per-step-pw_rel-f64"),
    pytest.param(2, 24, 128, 8, id="block_rows-8-abs-cartesian-c64"),
    pytest.param(0, 4096, 256, None, id="compressor-default-block256-1M-f32-abs"),
    pytest.param(3, 1024, 256, None, id="compressor-default-block256-pw_rel-cartesian-c64"),
    pytest.param(4, 4096, 256, None, id="bmqsim-state-2^20-amplitudes-polar-c128"),
    pytest.param(1, 256, 1024, 4, id="block1024-pw_rel-f64"),
    pytest.param(0, 65536, 256, 16, id="largest-2^24-f32-abs"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("scheme_index, rows, b, block_rows", GPU_CASES)
def test_kernels_on_gpu(scheme_index, rows, b, block_rows, rng):
    scheme, scalars = SCHEMES[scheme_index]
    _check_kernels_on_device(scheme, scalars, rows, b, block_rows, False, rng)
