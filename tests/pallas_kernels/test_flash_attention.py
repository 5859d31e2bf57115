import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.flash_attention import BlockSizes, flash_attention, flash_attention_reference

TOL = {jnp.float32: (1e-5, 1e-6), jnp.bfloat16: (2e-2, 2e-3)}  # (max, mean) absolute error

# (batch, Lq, Lk, heads, head_dim, block_q, block_k); interpret mode: at most 64 grid steps (B * H * Lq / block_q).
CPU_CASES = [
    pytest.param(1, 37, 37, 2, 16, 16, 16, id="padded-q-and-k-3-key-blocks"),
    pytest.param(2, 37, 37, 2, 8, None, None, id="default-blocks-whole-sequence"),
    pytest.param(2, 24, 50, 2, 16, 8, 16, id="cross-Lq<Lk-4-key-blocks-2-real-keys-in-last"),
    pytest.param(2, 50, 20, 3, 8, 32, 8, id="cross-Lq>Lk"),
    pytest.param(1, 64, 64, 4, 32, 16, 32, id="no-padding-2-key-blocks-dit-cpu-preset-D32"),
    pytest.param(1, 17, 33, 2, 8, 16, 32, id="last-key-block-1-real-31-padded"),
    pytest.param(1, 130, 130, 1, 8, None, None, id="default-blocks-above-128-two-of-65"),
    pytest.param(1, 1, 5, 1, 4, None, None, id="one-query"),
]
BF16_CPU_CASES = [CPU_CASES[0], CPU_CASES[2], CPU_CASES[4]]


def _inputs(b, lq, lk, h, d, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32), dtype)
               for shape in [(b, lq, h, d), (b, lk, h, d), (b, lk, h, d)])
    return q, k, v


def _assert_close(got, want, dtype):
    max_tol, mean_tol = TOL[dtype]
    assert got.shape == want.shape and got.dtype == want.dtype
    err = np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32))
    assert np.isfinite(err).all()
    assert err.max() < max_tol and err.mean() < mean_tol, (err.max(), err.mean())


def _check(b, lq, lk, h, d, bq, bk, dtype, interpret, sm_scale=None):
    q, k, v = _inputs(b, lq, lk, h, d, dtype)
    out = flash_attention(q, k, v, sm_scale=sm_scale, block_sizes=BlockSizes(bq, bk), interpret=interpret)
    assert out.shape == (b, lq, h, d) and out.dtype == dtype
    _assert_close(out, flash_attention_reference(q, k, v, sm_scale=sm_scale), dtype)


@pytest.mark.parametrize("b, lq, lk, h, d, bq, bk", CPU_CASES)
def test_kernel_matches_reference_f32_interpret(b, lq, lk, h, d, bq, bk):
    _check(b, lq, lk, h, d, bq, bk, jnp.float32, interpret=True)


@pytest.mark.parametrize("b, lq, lk, h, d, bq, bk", BF16_CPU_CASES)
def test_kernel_matches_reference_bf16_interpret(b, lq, lk, h, d, bq, bk):
    _check(b, lq, lk, h, d, bq, bk, jnp.bfloat16, interpret=True)


def test_sm_scale_is_used():
    _check(1, 37, 37, 2, 16, 16, 16, jnp.float32, interpret=True, sm_scale=0.7)


def test_large_logits_are_stable():
    """Logits of magnitude ~100 overflow a softmax that does not subtract the running max; the max also moves
    between key blocks, so the rescaling of the running sum and output is exercised."""
    q, k, v = _inputs(2, 37, 45, 2, 16)
    q = q * 10.0
    k = k.at[:, 40].multiply(5.0)  # the largest logits sit in the last (padded) key block
    out = flash_attention(q, k, v, block_sizes=BlockSizes(16, 16), interpret=True)
    want = flash_attention_reference(q, k, v)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
    assert float(logits.max()) > 90.0  # exp of these overflows float32
    _assert_close(out, want, jnp.float32)  # also checks finiteness


@pytest.mark.parametrize("sm_scale", [None, 0.3])
def test_gradients_match_reference(sm_scale):
    q, k, v = _inputs(1, 21, 27, 2, 8)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape, dtype=np.float32))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, sm_scale=sm_scale) * g)

    kernel = lambda q, k, v, sm_scale: flash_attention(q, k, v, sm_scale=sm_scale,  # noqa: E731
                                                       block_sizes=BlockSizes(8, 16), interpret=True)
    got = jax.grad(loss, argnums=(1, 2, 3))(kernel, q, k, v)
    want = jax.grad(loss, argnums=(1, 2, 3))(flash_attention_reference, q, k, v)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert max(float(jnp.abs(a).max()) for a in got) > 0.1  # the gradients are not trivially zero


def test_reference_matches_peer_and_numpy():
    """Independent checks of the reference: jax.nn.dot_product_attention (same [B, L, H, D] layout) and float64
    numpy, which also pins the default sm_scale = 1/sqrt(D)."""
    q, k, v = _inputs(2, 13, 19, 3, 8)
    ref = np.asarray(flash_attention_reference(q, k, v))
    np.testing.assert_allclose(ref, np.asarray(jax.nn.dot_product_attention(q, k, v)), atol=1e-5)
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", qn, kn) / np.sqrt(8)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(ref, np.einsum("bhqk,bkhd->bqhd", p, vn), atol=1e-5)


def test_rejects_bad_inputs():
    q, k, v = _inputs(1, 8, 8, 2, 4)
    with pytest.raises(ValueError, match=r"\[B, L, H, D\]"):
        flash_attention(q[0], k, v, interpret=True)
    with pytest.raises(ValueError, match="matching q"):
        flash_attention(q, k[..., :2], v[..., :2], interpret=True)
    with pytest.raises(ValueError, match="one float dtype"):
        flash_attention(q, k.astype(jnp.bfloat16), v, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        flash_attention(q, k, v, block_sizes=BlockSizes(24, 16), interpret=False)


@pytest.mark.parametrize("lq, lk, d, bq, bk, dtype", [
    pytest.param(37, 37, 72, 16, 16, jnp.float32, id="padded-L-and-head-dim-f32"),
    pytest.param(256, 300, 64, None, None, jnp.bfloat16, id="default-blocks-cross-bf16"),
])
def test_lowers_to_triton_without_gpu(lq, lk, d, bq, bk, dtype):
    """The GPU path (padded head dim, power-of-two blocks, Triton params) lowers for CUDA on a CPU-only machine, so
    Triton lowering errors show up here before a GPU run."""
    q = jax.ShapeDtypeStruct((2, lq, 4, d), dtype)
    k = jax.ShapeDtypeStruct((2, lk, 4, d), dtype)
    fn = jax.jit(lambda q, k, v: flash_attention(q, k, v, block_sizes=BlockSizes(bq, bk), interpret=False))
    text = fn.trace(q, k, k).lower(lowering_platforms=("cuda",)).as_text()
    assert "triton" in text.lower()


# GPU, Triton lowering: chosen shapes. f32 dots run at IEEE precision; tiled reductions at Lk ~1k get ~1e-4.
# (batch, Lq, Lk, heads, head_dim, block_q, block_k, dtype)
F32, BF16 = jnp.float32, jnp.bfloat16
GPU_CASES = [
    pytest.param(1, 1, 1, 1, 16, None, None, F32, id="smallest-one-query-one-key"),
    pytest.param(2, 37, 37, 4, 72, None, None, F32, id="padded-L37-head-dim-72-padded-to-128"),
    pytest.param(2, 100, 300, 4, 64, 32, 64, F32, id="cross-Lq<Lk-blocks-32x64"),
    pytest.param(2, 300, 100, 4, 72, 128, 32, BF16, id="cross-Lq>Lk-blocks-128x32-bf16"),
    pytest.param(8, 16, 16, 2, 16, None, None, F32, id="dit-tiny-preset-16-tokens-D16"),
    pytest.param(64, 256, 256, 6, 64, None, None, F32, id="dit-paper-preset-256-tokens-6-heads-D64"),
    pytest.param(64, 256, 256, 6, 64, None, None, BF16, id="dit-paper-preset-bf16"),
    pytest.param(1, 1024, 1024, 4, 64, None, None, F32, id="tiled-reduction-K1k-f32"),
    pytest.param(1, 4096, 4096, 8, 128, 128, 64, BF16, id="largest-L4096-D128-bf16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("b, lq, lk, h, d, bq, bk, dtype", GPU_CASES)
def test_kernel_matches_reference_gpu(b, lq, lk, h, d, bq, bk, dtype):
    q, k, v = _inputs(b, lq, lk, h, d, dtype)
    out = flash_attention(q, k, v, block_sizes=BlockSizes(bq, bk), interpret=False)
    want = flash_attention_reference(q, k, v)
    max_tol, mean_tol = TOL[dtype] if dtype == jnp.bfloat16 else (1e-4, 1e-5)
    err = np.abs(np.asarray(out, np.float32) - np.asarray(want, np.float32))
    assert out.shape == want.shape and out.dtype == dtype
    assert err.max() < max_tol and err.mean() < mean_tol, (err.max(), err.mean())


@pytest.mark.gpu
def test_gradients_match_reference_gpu():
    q, k, v = _inputs(2, 256, 256, 4, 64)
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)  # noqa: E731
    kernel = lambda q, k, v: flash_attention(q, k, v, interpret=False)  # noqa: E731
    got = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(flash_attention_reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
