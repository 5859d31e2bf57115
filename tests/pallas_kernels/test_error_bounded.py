"""The fused quantise+predict+pack and unpack+reconstruct kernels (interpret mode) against their jnp references, and
the bit-plane packing against brute-force numpy."""

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
        codes, _ = eb._encode_flat(xs, s, scheme=scheme)
        back = eb._codes_from_planes(planes, anchors, scheme=scheme)
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
