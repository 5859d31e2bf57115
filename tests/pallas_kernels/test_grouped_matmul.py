"""The grouped matmul kernels (interpret mode) against three independent things: their one-hot jnp references,
`jax.lax.ragged_dot` / `ragged_dot_general` (XLA's own grouped ops), and a float64 numpy loop over groups; gradients
through the custom VJPs against the gradients of the reference and of ragged_dot. The GPU path: lowered to Triton for
CUDA here (no GPU needed), and run on a GPU under the `gpu` marker."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.grouped_matmul import (GroupedMatmulBlockSizes, grouped_matmul, grouped_matmul_reference,
                                           grouped_matmul_transposed, grouped_matmul_transposed_reference)

TOL = {jnp.float32: (1e-5, 1e-6), jnp.bfloat16: (2e-2, 2e-3)}  # (max, mean) absolute error
F32, BF16 = jnp.float32, jnp.bfloat16
BS = GroupedMatmulBlockSizes

# Ragged contracting dim: [m, k] x [m, n] -> [g, k, n], out[i] = lhs[rows of i].T @ dy[rows of i].
TRANSPOSED_DN = jax.lax.RaggedDotDimensionNumbers(dot_dimension_numbers=(((0,), (0,)), ((), ())),
                                                  lhs_ragged_dimensions=[0], rhs_group_dimensions=[])

# (m, k, n, group sizes, block sizes); interpret mode: few grid steps (forward m/bm * n/bn, transposed g * k/bk * n/bn).
CPU_CASES = [
    pytest.param(50, 20, 24, [10, 0, 17, 15], BS(16, 8, 16), id="padded-mkn-empty-group-8-rows-beyond-sum"),
    pytest.param(37, 19, 11, [0, 5, 0, 30, 0], BS(), id="default-blocks-leading-trailing-empty-groups"),
    pytest.param(64, 16, 16, [3, 1, 0, 2, 9, 1, 30, 18], BS(32, 16, 16), id="many-groups-per-tile-sum-equals-m"),
    pytest.param(48, 24, 8, [48], BS(16, 8, 8), id="one-group-spans-all-tiles"),
    pytest.param(40, 8, 8, [0, 0, 0], BS(16, 8, 8), id="all-groups-empty-output-zero"),
    pytest.param(20, 8, 5, [7, 9, 30], BS(8, 8, 8), id="sum-beyond-m-last-group-cut"),
    pytest.param(200, 16, 16, [70, 0, 130], BS(), id="default-blocks-above-128-two-of-100"),
]
BF16_CPU_CASES = [CPU_CASES[0]]


def _inputs(m, k, n, g, dtype=F32, seed=0):
    """lhs scaled by 1/sqrt(k) and rhs by 1/2: forward outputs ~N(0, 1/4), so bf16's rounding (one ulp of |x| < 2 is
    at most 2**-7) stays inside the absolute bf16 tolerance."""
    rng = np.random.default_rng(seed)
    lhs = rng.standard_normal((m, k), dtype=np.float32) / np.sqrt(k)
    rhs = rng.standard_normal((g, k, n), dtype=np.float32) / 2
    dy = rng.standard_normal((m, n), dtype=np.float32)
    return tuple(jnp.asarray(x, dtype) for x in (lhs, rhs, dy))


def _assert_close(got, want, dtype):
    max_tol, mean_tol = TOL[dtype]
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    err = np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32))
    assert np.isfinite(err).all()
    assert err.max() < max_tol and err.mean() < mean_tol, (err.max(), err.mean())


def _numpy_forward(lhs, rhs, sizes):
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    out, start = np.zeros((lhs.shape[0], rhs.shape[2])), 0
    for i, size in enumerate(sizes):
        out[start:start + size] = lhs[start:start + size] @ rhs[i]
        start += size
    return out


def _numpy_transposed(lhs, dy, sizes):
    lhs, dy = np.asarray(lhs, np.float64), np.asarray(dy, np.float64)
    out, start = np.zeros((len(sizes), lhs.shape[1], dy.shape[1])), 0
    for i, size in enumerate(sizes):
        out[i] = lhs[start:start + size].T @ dy[start:start + size]
        start += size
    return out


def _check_forward(m, k, n, sizes, bs, dtype):
    lhs, rhs, _ = _inputs(m, k, n, len(sizes), dtype)
    gs = jnp.asarray(sizes, jnp.int32)
    out = grouped_matmul(lhs, rhs, gs, block_sizes=bs, interpret=True)
    assert out.shape == (m, n) and out.dtype == dtype
    _assert_close(out, grouped_matmul_reference(lhs, rhs, gs), dtype)
    _assert_close(out, jax.lax.ragged_dot(lhs, rhs, gs), dtype)
    used = min(sum(sizes), m)
    assert not np.asarray(out[used:], np.float32).any()  # rows beyond the groups: exactly 0
    assert sum(sizes) == 0 or float(jnp.abs(out[:used].astype(F32)).max()) > 0.5  # not trivially zero


@pytest.mark.parametrize("m, k, n, sizes, bs", CPU_CASES)
def test_forward_matches_reference_and_ragged_dot_f32(m, k, n, sizes, bs):
    _check_forward(m, k, n, sizes, bs, F32)


@pytest.mark.parametrize("m, k, n, sizes, bs", BF16_CPU_CASES)
def test_forward_matches_reference_and_ragged_dot_bf16(m, k, n, sizes, bs):
    _check_forward(m, k, n, sizes, bs, BF16)


@pytest.mark.parametrize("m, k, n, sizes, bs", [CPU_CASES[0], CPU_CASES[5]])
def test_transposed_matches_reference_and_ragged_dot_general(m, k, n, sizes, bs):
    lhs, _, dy = _inputs(m, k, n, len(sizes))
    gs = jnp.asarray(sizes, jnp.int32)
    out = grouped_matmul_transposed(lhs, dy, gs, block_sizes=bs, interpret=True)
    assert out.shape == (len(sizes), k, n) and out.dtype == F32
    _assert_close(out, grouped_matmul_transposed_reference(lhs, dy, gs), F32)
    _assert_close(out, jax.lax.ragged_dot_general(lhs, dy, gs, TRANSPOSED_DN), F32)
    for i, size in enumerate(sizes):
        assert (size == 0) == (not np.asarray(out[i]).any())  # empty groups exactly 0, the others not


def test_transposed_bf16():
    m, k, n, sizes, bs = CPU_CASES[0].values
    lhs, _, dy = _inputs(m, k, n, len(sizes), BF16)
    gs = jnp.asarray(sizes, jnp.int32)
    out = grouped_matmul_transposed(lhs, dy, gs, block_sizes=bs, interpret=True)
    # sums of up to 17 products of unit normals: bf16 rounding of the result is ~2e-2 relative, so compare relative
    want = grouped_matmul_transposed_reference(lhs, dy, gs)
    assert out.dtype == BF16
    scale = float(jnp.abs(want.astype(F32)).max())
    _assert_close(out.astype(F32) / scale, want.astype(F32) / scale, BF16)


def test_references_match_numpy_loop():
    """The references against a float64 loop over groups (the definition), including groups cut at row m."""
    for m, sizes in ((50, [10, 0, 17, 15]), (20, [7, 9, 30]), (10, [0, 0])):
        lhs, rhs, dy = _inputs(m, 6, 5, len(sizes), seed=3)
        cut, left = [], m
        for s in sizes:
            cut.append(min(s, left))
            left -= cut[-1]
        gs = jnp.asarray(sizes, jnp.int32)
        np.testing.assert_allclose(grouped_matmul_reference(lhs, rhs, gs), _numpy_forward(lhs, rhs, cut), atol=1e-5)
        np.testing.assert_allclose(grouped_matmul_transposed_reference(lhs, dy, gs), _numpy_transposed(lhs, dy, cut),
                                   atol=1e-5)


def test_gradients_match_reference_and_ragged_dot():
    m, k, n, sizes = 50, 20, 24, [10, 0, 17, 15]
    lhs, rhs, _ = _inputs(m, k, n, len(sizes))
    gs = jnp.asarray(sizes, jnp.int32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((m, n), dtype=np.float32))
    kernel = lambda a, b, c: grouped_matmul(a, b, c, block_sizes=BS(16, 8, 16), interpret=True)  # noqa: E731

    def loss(fn, lhs, rhs):
        return jnp.sum(fn(lhs, rhs, gs) * w)

    got = jax.grad(loss, argnums=(1, 2))(kernel, lhs, rhs)
    for other in (grouped_matmul_reference, jax.lax.ragged_dot):
        want = jax.grad(loss, argnums=(1, 2))(other, lhs, rhs)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    dlhs, drhs = got
    assert not np.asarray(dlhs[42:]).any() and not np.asarray(drhs[1]).any()  # rows beyond the sum, the empty group
    assert float(jnp.abs(dlhs).max()) > 0.5 and float(jnp.abs(drhs).max()) > 0.5


def test_transposed_gradients_match_reference_and_ragged_dot():
    """ragged_dot_general has no VJP for a ragged contracting dim, so the peer is the closed form: for
    loss = sum(out * w), d lhs[r] = dy[r] @ w[i].T and d dy[r] = lhs[r] @ w[i] for row r of group i, two ragged_dots."""
    m, k, n, sizes = 40, 12, 16, [9, 0, 25]
    lhs, _, dy = _inputs(m, k, n, len(sizes))
    gs = jnp.asarray(sizes, jnp.int32)
    w = jnp.asarray(np.random.default_rng(2).standard_normal((len(sizes), k, n), dtype=np.float32))
    kernel = lambda a, b, c: grouped_matmul_transposed(a, b, c, block_sizes=BS(16, 8, 8), interpret=True)  # noqa: E731

    def loss(fn, lhs, dy):
        return jnp.sum(fn(lhs, dy, gs) * w)

    got = jax.grad(loss, argnums=(1, 2))(kernel, lhs, dy)
    wants = [jax.grad(loss, argnums=(1, 2))(grouped_matmul_transposed_reference, lhs, dy),
             (jax.lax.ragged_dot(dy, jnp.swapaxes(w, 1, 2), gs), jax.lax.ragged_dot(lhs, w, gs))]
    for want in wants:
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert not np.asarray(got[0][34:]).any() and float(jnp.abs(got[0]).max()) > 0.5


def test_new_group_sizes_do_not_recompile():
    """group_sizes is traced: new values (an adapter exiting = its group becoming 0) reuse the compiled program, in
    the public jitted op and in a caller's jitted training step that differentiates through it."""
    m, k, n = 40, 8, 8
    lhs, rhs, _ = _inputs(m, k, n, 3)
    bs = BS(16, 8, 8)
    traces = []

    @jax.jit
    def step(lhs, rhs, gs):
        traces.append(1)
        return jax.value_and_grad(lambda r: jnp.sum(grouped_matmul(lhs, r, gs, block_sizes=bs, interpret=True) ** 2))(
            rhs)

    grouped_matmul(lhs, rhs, jnp.asarray([1, 2, 3], jnp.int32), block_sizes=bs, interpret=True)
    compiled = grouped_matmul._cache_size()
    for sizes in ([10, 20, 10], [0, 33, 2], [40, 0, 0]):
        gs = jnp.asarray(sizes, jnp.int32)
        out = grouped_matmul(lhs, rhs, gs, block_sizes=bs, interpret=True)
        _assert_close(out, jax.lax.ragged_dot(lhs, rhs, gs), F32)
        _, drhs = step(lhs, rhs, gs)
        want = jax.grad(lambda r: jnp.sum(jax.lax.ragged_dot(lhs, r, gs) ** 2))(rhs)
        np.testing.assert_allclose(np.asarray(drhs), np.asarray(want), atol=1e-4)
    assert grouped_matmul._cache_size() == compiled
    assert len(traces) == 1


def test_rejects_bad_inputs():
    lhs, rhs, dy = _inputs(16, 8, 4, 3)
    gs = jnp.asarray([4, 4, 4], jnp.int32)
    with pytest.raises(ValueError, match="rhs contracting dim k = 6"):
        grouped_matmul(lhs, rhs[:, :6], gs, interpret=True)
    with pytest.raises(ValueError, match="group_sizes has 2 entries but rhs has g = 3"):
        grouped_matmul(lhs, rhs, gs[:2], interpret=True)
    with pytest.raises(ValueError, match=r"group_sizes must be int32\[g\], got float32"):
        grouped_matmul(lhs, rhs, gs.astype(F32), interpret=True)
    with pytest.raises(ValueError, match=r"group_sizes must be int32\[g\]"):
        grouped_matmul(lhs, rhs, gs[None], interpret=True)
    with pytest.raises(ValueError, match=r"group_sizes must be int32\[g\], got list"):
        grouped_matmul(lhs, rhs, [4, 4, 4], interpret=True)
    with pytest.raises(ValueError, match="lhs must be 2-D"):
        grouped_matmul(lhs[None], rhs, gs, interpret=True)
    with pytest.raises(ValueError, match="rhs must be 3-D"):
        grouped_matmul(lhs, rhs[0], gs, interpret=True)
    with pytest.raises(ValueError, match="share one dtype"):
        grouped_matmul(lhs, rhs.astype(BF16), gs, interpret=True)
    with pytest.raises(ValueError, match="lhs must be float32 or bfloat16, got float16"):
        grouped_matmul(lhs.astype(jnp.float16), rhs, gs, interpret=True)
    with pytest.raises(ValueError, match="block_sizes.block_m must be a power of two"):
        grouped_matmul(lhs, rhs, gs, block_sizes=BS(block_m=24), interpret=False)
    with pytest.raises(ValueError, match="dy has 15 rows"):
        grouped_matmul_transposed(lhs, dy[:15], gs, interpret=True)
    with pytest.raises(ValueError, match=r"grouped_matmul_transposed: group_sizes must be int32\[g\], got int8"):
        grouped_matmul_transposed(lhs, dy, gs.astype(jnp.int8), interpret=True)


def test_lowers_to_triton_without_gpu():
    """The GPU path (padded m, k, n; power-of-two blocks; Triton params) lowers for CUDA on a CPU-only machine, forward,
    transposed and the backward pass, so Triton lowering errors show up here before a GPU run."""
    for dtype in (F32, BF16):
        lhs, dy = jax.ShapeDtypeStruct((100, 72), dtype), jax.ShapeDtypeStruct((100, 40), dtype)
        rhs, gs = jax.ShapeDtypeStruct((3, 72, 40), dtype), jax.ShapeDtypeStruct((3,), jnp.int32)
        fns = [
            (lambda a, b, c: grouped_matmul(a, b, c, interpret=False), (lhs, rhs, gs)),
            (lambda a, b, c: grouped_matmul_transposed(a, b, c, interpret=False), (lhs, dy, gs)),
            (jax.grad(lambda a, b, c: jnp.sum(grouped_matmul(a, b, c, interpret=False).astype(F32)), argnums=(0, 1)),
             (lhs, rhs, gs)),
        ]
        for fn, args in fns:
            text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
            assert "triton" in text.lower()


# GPU, Triton lowering: chosen shapes (m, k, n, g, block sizes, dtype); group sizes drawn per case, some empty.
GPU_CASES = [
    pytest.param(1, 16, 16, 1, BS(), F32, id="smallest"),
    pytest.param(300, 72, 40, 5, BS(), F32, id="padded-all-dims"),
    pytest.param(1000, 256, 128, 8, BS(), BF16, id="lora-down-bf16"),
    pytest.param(1000, 16, 512, 8, BS(), BF16, id="lora-up-rank16-bf16"),
    pytest.param(4096, 1024, 64, 32, BS(128, 64, 64), F32, id="32-adapters-K1k-f32"),
    pytest.param(4096, 1024, 64, 32, BS(128, 64, 64), BF16, id="32-adapters-K1k-bf16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("m, k, n, g, bs, dtype", GPU_CASES)
def test_kernels_match_ragged_dot_gpu(m, k, n, g, bs, dtype):
    """The peers run in float32 at HIGHEST precision (XLA's GPU default for f32 is TF32) on the same (bf16-rounded)
    inputs; errors are relative to the largest output."""
    rng = np.random.default_rng(m + g)
    sizes = rng.multinomial(m - m // 10, np.ones(g) / g) * (rng.random(g) > 0.2)
    gs = jnp.asarray(sizes, jnp.int32)
    lhs, rhs, dy = _inputs(m, k, n, g, dtype)
    f32 = lambda x: x.astype(F32)  # noqa: E731
    hi = jax.lax.Precision.HIGHEST
    max_tol, mean_tol = (1e-4, 1e-5) if dtype == F32 else TOL[BF16]  # tiled reductions at K ~1k
    pairs = [(grouped_matmul(lhs, rhs, gs, block_sizes=bs, interpret=False),
              jax.lax.ragged_dot(f32(lhs), f32(rhs), gs, precision=hi)),
             (grouped_matmul_transposed(lhs, dy, gs, block_sizes=bs, interpret=False),
              jax.lax.ragged_dot_general(f32(lhs), f32(dy), gs, TRANSPOSED_DN, precision=hi))]
    for got, want in pairs:
        assert got.shape == want.shape and got.dtype == dtype
        err = np.abs(np.asarray(got, np.float32) - np.asarray(want))
        scale = max(1.0, float(np.abs(np.asarray(want)).max()))
        assert err.max() / scale < max_tol and err.mean() / scale < mean_tol, (err.max(), err.mean(), scale)


@pytest.mark.gpu
def test_gradients_match_ragged_dot_gpu():
    m, k, n, g = 1000, 256, 64, 8
    lhs, rhs, _ = _inputs(m, k, n, g)
    gs = jnp.asarray([100, 0, 250, 50, 300, 0, 200, 50], jnp.int32)
    loss = lambda fn: lambda a, b: jnp.sum(fn(a, b, gs) ** 2)  # noqa: E731
    got = jax.grad(loss(lambda a, b, c: grouped_matmul(a, b, c, interpret=False)), argnums=(0, 1))(lhs, rhs)
    with jax.default_matmul_precision("highest"):
        want = jax.grad(loss(jax.lax.ragged_dot), argnums=(0, 1))(lhs, rhs)
    for a, b in zip(got, want):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=1e-4)
    assert not np.asarray(got[1][1]).any() and not np.asarray(got[0][950:]).any()
