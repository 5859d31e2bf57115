"""The fixed-width quantiser: the range-relative bound on every element, checked in float64 by the independent
contract checker (`bound_violations`), on random, bin-edge, constant and extreme blocks."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from qrjax.compression import bound_violations, fixed


def _check_blocks(x, x_hat, eps):
    """Every block [.., i, j, :, :] within eps[i, j] * (max - min), in float64."""
    x, x_hat = np.asarray(x), np.asarray(x_hat)
    eps = np.broadcast_to(eps, x.shape[:-2])
    bad = 0
    for idx in np.ndindex(x.shape[:-2]):
        bad += bound_violations(x[idx], x_hat[idx], float(eps[idx]), "rel")
    return bad


@pytest.mark.parametrize("eps", [0.05, 0.01, 0.002, 1e-4])
def test_bound_holds_on_every_element(eps, rng):
    x = (rng.normal(size=(4, 6, 16, 8)) * rng.lognormal(0, 3, size=(4, 6, 1, 1))).astype(np.float32)
    dtype = fixed.code_dtype_for(eps)
    q = fixed.quantize(jnp.asarray(x), eps, axes=(2, 3), code_dtype=dtype)
    x_hat = fixed.dequantize(q)
    assert q.codes.dtype == np.dtype(dtype) and q.codes.shape == x.shape
    assert _check_blocks(x, x_hat, eps) == 0
    assert int(fixed.violations(jnp.asarray(x), x_hat, q.bound)) == 0
    ratio = (np.abs(x).max(axis=(2, 3)) / np.ptp(x, axis=(2, 3))).max()
    assert int(jnp.max(jnp.abs(q.codes.astype(jnp.int32)))) <= fixed.max_code(eps, ratio)


def test_per_block_bounds_and_bin_edges(rng):
    # values exactly on the rounding edges (k + 1/2) * step of a first pass: the worst case of a naive quantiser
    eps = np.array([[0.01, 0.03, 0.05]], np.float32)
    x = rng.normal(size=(2, 3, 32, 4)).astype(np.float32)
    q = fixed.quantize(jnp.asarray(x), eps, axes=(2, 3))
    k = rng.integers(-20, 20, size=x.shape)
    edges = np.asarray(q.centre + (k + 0.5) * q.step, np.float32)
    lo, hi = x.min(axis=(2, 3), keepdims=True), x.max(axis=(2, 3), keepdims=True)
    edges = np.clip(edges, lo, hi)
    edges[..., 0, 0], edges[..., 0, 1] = lo[..., 0, 0], hi[..., 0, 0]  # keep each block's range
    q2 = fixed.quantize(jnp.asarray(edges), eps, axes=(2, 3))
    assert _check_blocks(edges, fixed.dequantize(q2), eps) == 0


def test_constant_and_zero_blocks_are_exact():
    x = np.zeros((3, 8, 8), np.float32)
    x[1] = 7.25
    x[2] = -1e30
    q = fixed.quantize(jnp.asarray(x), 0.05, axes=(1, 2))
    np.testing.assert_array_equal(np.asarray(fixed.dequantize(q)), x)


def test_unreachable_bound_is_counted_not_hidden():
    # a block whose range is below float32 resolution at its magnitude: no code can meet e = eps * range
    x = np.full((1, 64), 1000.0, np.float32)
    x[0, ::2] = np.nextafter(np.float32(1000.0), np.float32(2000.0))
    q = fixed.quantize(jnp.asarray(x), 0.01, axes=(1,))
    x_hat = fixed.dequantize(q)
    count = int(fixed.violations(jnp.asarray(x), x_hat, q.bound))
    assert count == bound_violations(x, np.asarray(x_hat), 0.01, "rel") > 0


def test_codes_that_overflow_the_dtype_are_counted():
    x = np.linspace(-1, 1, 4096, dtype=np.float32)[None]
    q = fixed.quantize(jnp.asarray(x), 1e-3, axes=(1,), code_dtype="int8")  # needs |code| up to 251
    assert int(fixed.violations(jnp.asarray(x), fixed.dequantize(q), q.bound)) > 0
    q16 = fixed.quantize(jnp.asarray(x), 1e-3, axes=(1,), code_dtype="int16")
    assert int(fixed.violations(jnp.asarray(x), fixed.dequantize(q16), q16.bound)) == 0


def test_code_dtype_for():
    assert fixed.code_dtype_for(0.01) == "int8"
    assert fixed.code_dtype_for(1 / 500) == "int8"
    assert fixed.code_dtype_for(1 / 520) == "int16"
    assert fixed.code_dtype_for(1e-5) == "int16"
    for eps in (5e-6, 1e-7):
        with pytest.raises(ValueError, match="more than 16-bit"):
            fixed.code_dtype_for(eps)
    with pytest.raises(ValueError, match=r"\(0, 0.5\)"):
        fixed.code_dtype_for(0.5)


def test_entropy_bits_matches_the_formula(rng):
    codes = rng.integers(-5, 6, size=1000).astype(np.int8)
    hist = np.asarray(fixed.code_histogram(jnp.asarray(codes)))
    assert hist.shape == (256,) and hist.sum() == 1000
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    assert float(fixed.entropy_bits(hist)) == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-5)
    assert float(fixed.entropy_bits(np.zeros(256))) == 0.0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 64), st.floats(-30, 30), st.floats(-20, 5),
       st.sampled_from([0.05, 0.02, 0.01, 0.004, 0.001]), st.integers(0, 2**31 - 1))
def test_bound_property(blocks, size, log_offset, log_scale, eps, seed):
    r = np.random.default_rng(seed)
    x = (np.sign(log_offset) * np.exp2(abs(log_offset)) * (r.random() < 0.5)
         + r.normal(size=(blocks, size)) * np.exp2(log_scale)).astype(np.float32)
    q = fixed.quantize(jnp.asarray(x), eps, axes=(1,), code_dtype=fixed.code_dtype_for(eps))
    x_hat = np.asarray(fixed.dequantize(q))
    counted = int(fixed.violations(jnp.asarray(x), jnp.asarray(x_hat), q.bound))
    truth = sum(bound_violations(x[i], x_hat[i], eps, "rel") for i in range(blocks))
    span = x.max(axis=1).astype(np.float64) - x.min(axis=1)
    top = np.abs(x).max(axis=1)
    # the documented precondition: the bound above float32's resolution at the block's magnitude
    if np.all((eps * span > 8 * np.finfo(np.float32).eps * top) | (span == 0)):
        assert truth == 0 and counted == 0
