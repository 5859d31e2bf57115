"""The compressor's contract: every element within its bound (checked independently in float64 by
`qrjax.compression.bounds`), across modes, dtypes, shapes and adversarial data; streams round-trip; bad input is named."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from qrjax.compression import Compressed, bound_violations, compress, decompress, max_error_ratio

DTYPES = ["float32", "float64", "complex64", "complex128"]
MODES = ["abs", "rel", "pw_rel"]
SHAPES = [(1,), (37,), (300,), (700,), (9, 40), (5, 6, 7)]


def _special(kind, n, dtype, bound, rng):
    """Adversarial data: zeros, ties on quantisation-bin edges, spikes, subnormals, signed zeros, smooth runs."""
    real = np.dtype(dtype).kind == "f"
    fdt = np.dtype(dtype) if real else np.finfo(np.dtype(dtype)).dtype
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "zeros":
        x = np.where(rng.random(n) < 0.7, 0.0, rng.standard_normal(n))
        x[::5] = -0.0
    elif kind == "ties":  # values on (k + 1/2) * 2e for the abs bound, and on exact powers of two for pw_rel
        k = rng.integers(-1000, 1000, n)
        x = np.where(rng.random(n) < 0.5, (k + 0.5) * 2 * bound, np.ldexp(1.0, rng.integers(-20, 20, n)))
    elif kind == "spikes":
        x = rng.standard_normal(n)
        x[rng.integers(0, n, max(1, n // 50))] = rng.choice([1e30, -1e30, 1e-30, 3e38 if fdt == np.float32 else 1e300])
    elif kind == "subnormal":
        tiny = np.finfo(fdt).smallest_subnormal
        x = rng.integers(-50, 50, n) * float(tiny)
    elif kind == "smooth":
        x = np.sin(np.linspace(0, 20, n)) * 3
    elif kind == "constant":
        x = np.full(n, 1.2345)
    elif kind == "near_tiny":  # just above the smallest normal: squares and rebuilt values underflow
        x = np.finfo(fdt).tiny * rng.uniform(1, 4, n) * rng.choice([-1, 1], n)
    x = x.astype(fdt)
    if not real:
        y = _special(kind, n, fdt.name, bound, rng).astype(fdt)
        x = (x + 1j * y).astype(dtype)
    return x


# Each (dtype, mode, shape) is a separate compile, which is what the time goes to: 40 random draws, plus explicit
# cases that pin every dtype, every mode, every shape class (one element, a partial block, several blocks, 2-D, 3-D)
# and the adversarial kinds with non-finite values mixed in.
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(dtype="float32", mode="pw_rel", shape=(37,), bound=1e-5, kind="subnormal", nonfinite=True, seed=0)
@example(dtype="float64", mode="abs", shape=(5, 6, 7), bound=1e-1, kind="ties", nonfinite=False, seed=1)
@example(dtype="complex64", mode="pw_rel", shape=(9, 40), bound=1e-3, kind="near_tiny", nonfinite=True, seed=2)
@example(dtype="complex128", mode="rel", shape=(1,), bound=1e-2, kind="spikes", nonfinite=True, seed=3)
@example(dtype="float32", mode="rel", shape=(700,), bound=1e-3, kind="zeros", nonfinite=True, seed=4)
@example(dtype="float64", mode="pw_rel", shape=(300,), bound=1e-3, kind="ties", nonfinite=False, seed=5)
@given(dtype=st.sampled_from(DTYPES), mode=st.sampled_from(MODES), shape=st.sampled_from(SHAPES),
       bound=st.sampled_from([1e-1, 1e-2, 1e-3, 1e-5]),
       kind=st.sampled_from(["normal", "zeros", "ties", "spikes", "subnormal", "smooth", "constant", "near_tiny"]),
       nonfinite=st.booleans(), seed=st.integers(0, 2**16))
def test_bound_holds_on_every_element(dtype, mode, shape, bound, kind, nonfinite, seed):
    rng = np.random.default_rng(seed)
    x = _special(kind, math.prod(shape), dtype, bound, rng)
    if nonfinite:
        x[rng.integers(0, x.size, 3)] = rng.choice([np.nan, np.inf, -np.inf], 3)
    x = x.reshape(shape)
    c = compress(x, bound, mode)
    y = np.asarray(decompress(c))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert bound_violations(x, y, bound, mode) == 0, max_error_ratio(x, y, bound, mode)
    y2 = np.asarray(decompress(Compressed.from_bytes(c.to_bytes())))
    np.testing.assert_array_equal(y2, y)


@pytest.mark.parametrize("complex_as", ["cartesian", "polar"])
@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_representations_keep_the_modulus_bound(complex_as, dtype, rng):
    n = 2048
    phase = 2 * np.pi * 0.3137 * np.arange(n)  # a plane wave: what QFT outputs look like
    x = (np.exp(1j * phase) * (1 + rng.random(n)) / 40).astype(dtype)
    x[::17] = 0
    for bound in (1e-2, 1e-3, 1e-4):
        c = compress(x, bound, "pw_rel", complex_as=complex_as)
        y = np.asarray(decompress(c))
        assert c.meta.rep == complex_as
        assert bound_violations(x, y, bound, "pw_rel") == 0
        assert np.all(y[::17] == 0)
        assert max_error_ratio(x, y, bound, "pw_rel") > 0.2  # the bound is used, not wasted


def test_errors_are_bounded_and_not_trivially_zero(rng):
    """An independent statistical check: uniform quantisation error is spread over the whole bin."""
    x = rng.standard_normal(20000).astype(np.float64)
    for mode, bound in (("abs", 1e-3), ("rel", 1e-4), ("pw_rel", 1e-3)):
        y = np.asarray(decompress(compress(x, bound, mode)))
        r = max_error_ratio(x, y, bound, mode)
        assert 0.9 < r <= 1.0


def test_rel_mode_uses_the_value_range(rng):
    x = rng.uniform(100, 101, 5000)
    y = np.asarray(decompress(compress(x, 1e-3, "rel")))
    assert np.max(np.abs(y - x)) <= 1e-3 * np.ptp(x)
    assert np.max(np.abs(y - x)) > 0.5e-3 * np.ptp(x)


def test_zero_blocks_and_ratio_on_sparse_data():
    x = np.zeros(1 << 16, np.complex64)
    x[0] = x[-1] = 1 / np.sqrt(2)  # a GHZ state
    c = compress(x, 1e-3, "pw_rel")
    assert np.asarray(c.widths).max(axis=0).astype(bool).sum() <= 2  # only the blocks at the two spikes
    assert c.ratio > 1000
    y = np.asarray(decompress(c))
    assert bound_violations(x, y, 1e-3, "pw_rel") == 0 and np.count_nonzero(y) == 2


def test_lorenzo_field_beats_flattened_prediction_on_a_smooth_field():
    i, j, k = np.meshgrid(*(np.linspace(0, 2, 24),) * 3, indexing="ij")
    field = (np.sin(3 * i) * np.cos(2 * j) + k**2).astype(np.float32)
    c3 = compress(field, 1e-4, "abs")
    c1 = compress(field.reshape(-1), 1e-4, "abs")
    assert c3.meta.predictor == "lorenzo3" and c1.meta.predictor == "lorenzo1"
    assert c3.nbytes < c1.nbytes
    for c in (c3, c1):
        assert bound_violations(field.reshape(c.shape), np.asarray(decompress(c)), 1e-4, "abs") == 0


def test_no_prediction_and_lossless_options(rng):
    x = rng.uniform(-1, 1, (64, 32)).astype(np.float32)
    for predictor in ("none", "lorenzo"):
        for lossless in ("none", "zstd", "auto"):
            c = compress(x, 1e-2, "rel", predictor=predictor, lossless=lossless)
            y = np.asarray(decompress(Compressed.from_bytes(c.to_bytes())))
            assert bound_violations(x, y, 1e-2, "rel") == 0
            raw_size = len(compress(x, 1e-2, "rel", predictor=predictor, lossless="none").to_bytes())
            codec_byte = c.to_bytes()[5]
            if lossless == "auto":  # zstd is kept exactly when it makes the stream smaller
                assert codec_byte == (1 if c.nbytes < raw_size else 0) and c.nbytes <= raw_size
            else:
                assert codec_byte == {"none": 0, "zstd": 1}[lossless]


def test_stream_size_is_the_packed_payload(rng):
    """Independent size accounting: payload words = sum of block widths x block/32."""
    x = rng.standard_normal(4096).astype(np.float32)
    c = compress(x, 1e-3, "abs", block=128, lossless="none")
    assert c.payload.size == int(c.widths.astype(int).sum()) * 128 // 32
    assert c.nbytes >= c.payload.nbytes


@pytest.mark.parametrize("bad, match", [
    (dict(x=np.arange(10)), "dtype int64 is not supported"),
    (dict(x=np.ones(10, np.float16)), "dtype float16"),
    (dict(bound=0.0), "bound must be a finite number > 0"),
    (dict(bound=float("nan")), "bound must be"),
    (dict(bound="big"), "is not a number"),
    (dict(mode="relative"), "mode 'relative'"),
    (dict(mode="pw_rel", bound=1.5), "must be < 1"),
    (dict(x=np.zeros((0,), np.float32)), "empty"),
    (dict(block=100), "multiple of 32"),
    (dict(x=np.ones(8, np.complex64), complex_as="polar"), "needs mode='pw_rel'"),
    (dict(predictor="interp"), "predictor 'interp'"),
    (dict(bound=1e-310), "smallest normal float64"),
    (dict(x=np.ones(8, np.complex64), mode="pw_rel", bound=1e-9, complex_as="polar"), "bound >= 1e-08"),
])
def test_bad_input_is_named(bad, match):
    args = dict(x=np.ones(10, np.float32), bound=1e-3, mode="abs")
    args.update(bad)
    x, bound, mode = args.pop("x"), args.pop("bound"), args.pop("mode")
    with pytest.raises((ValueError, TypeError), match=match):
        compress(x, bound, mode, **args)


def test_bad_stream_is_named():
    with pytest.raises(ValueError, match="bad magic"):
        Compressed.from_bytes(b"nonsense")


def test_truncated_stream_is_named(rng):
    blob = compress(rng.standard_normal(1000).astype(np.float32), 1e-3, "abs", lossless="none").to_bytes()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Compressed.from_bytes(blob[:-10])


@pytest.mark.parametrize("dtype, mode", [("float32", "abs"), ("complex64", "pw_rel")])
def test_kernel_path_writes_the_same_stream(dtype, mode, rng):
    """compress/decompress through the Pallas kernels (in interpret mode on CPU) = the jnp path."""
    x = _special("smooth", 8 * 256, dtype, 1e-3, rng)
    a = compress(x, 1e-3, mode, use_kernel=False)
    b = compress(x, 1e-3, mode, use_kernel=True)
    np.testing.assert_array_equal(np.asarray(decompress(a, use_kernel=True)), np.asarray(decompress(b)))
    assert a.to_bytes() == b.to_bytes()


def test_tiny_float64_values_keep_their_bound():
    tiny = np.finfo(np.float64).tiny
    for x in (np.full(64, tiny * (1 + 1j)), tiny * np.linspace(1, 1.5, 256)):
        y = np.asarray(decompress(compress(x, 1e-2, "pw_rel")))
        assert bound_violations(x, y, 1e-2, "pw_rel") == 0


def test_abs_mode_on_offset_data_compresses(rng):
    x = 2000 + np.cumsum(rng.normal(0, 1e-4, 4096))
    c = compress(x, 1e-6, "abs")
    assert c.num_outliers == 0 and c.ratio > 3
    assert bound_violations(x, np.asarray(decompress(c)), 1e-6, "abs") == 0


def test_big_endian_and_size_one_axes(rng):
    x = rng.standard_normal((64, 64)).cumsum(axis=0).cumsum(axis=1).astype(">f4")
    c = compress(x, 1e-3, "abs")
    assert bound_violations(x, np.asarray(decompress(c)), 1e-3, "abs") == 0
    c3 = compress(x.astype(np.float32).reshape(64, 64, 1), 1e-3, "abs")
    assert c3.meta.predictor == "lorenzo2" and abs(c3.nbytes - c.nbytes) <= 2  # the header's extra axis
    assert c.num_outliers == 0


def test_corrupt_zstd_stream_is_named(rng):
    blob = compress(rng.standard_normal(4096).astype(np.float32), 1e-3, "abs", lossless="zstd").to_bytes()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Compressed.from_bytes(blob[:-20])


# (dtype, mode, number of values, data kind): the compressor's GPU path, through the Pallas kernels, on the shapes its
# callers use (BMQSim state blocks, embedding tables) and on a ragged size whose last block is padded.
GPU_CASES = [
    pytest.param("float32", "abs", 37, "spikes", id="ragged-37-values-one-padded-block"),
    pytest.param("float32", "abs", 1 << 20, "smooth", id="float32-abs-2^20"),
    pytest.param("float64", "rel", 300_001, "ties", id="float64-rel-ties-ragged"),
    pytest.param("complex64", "pw_rel", 1 << 20, "zeros", id="complex64-pw_rel-zeros-polar"),
    pytest.param("complex128", "pw_rel", 1 << 22, "normal", id="bmqsim-22-qubit-state-complex128-polar"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, mode, n, kind", GPU_CASES)
def test_kernel_path_keeps_the_bound_on_gpu(dtype, mode, n, kind, rng):
    """On GPU the kernels may round a transcendental differently from XLA; the bound must hold regardless, whichever
    path rebuilds the values."""
    x = _special(kind, n, dtype, 1e-3, rng)
    c = compress(x, 1e-3, mode, use_kernel=True)
    assert bound_violations(x, decompress(c, use_kernel=True), 1e-3, mode) == 0
    assert bound_violations(x, decompress(c, use_kernel=False), 1e-3, mode) == 0
