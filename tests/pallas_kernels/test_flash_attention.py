import functools

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


def _bias(b, lk, scale=2.0, seed=2):
    """f32[B, Lk] key bias of a few logit units, so that it visibly moves the softmax."""
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal((b, lk), dtype=np.float32))


def _check(b, lq, lk, h, d, bq, bk, dtype, interpret, sm_scale=None, key_bias=None):
    q, k, v = _inputs(b, lq, lk, h, d, dtype)
    out = flash_attention(q, k, v, key_bias=key_bias, sm_scale=sm_scale, block_sizes=BlockSizes(bq, bk),
                          interpret=interpret)
    assert out.shape == (b, lq, h, d) and out.dtype == dtype
    _assert_close(out, flash_attention_reference(q, k, v, key_bias=key_bias, sm_scale=sm_scale), dtype)


@pytest.mark.parametrize("b, lq, lk, h, d, bq, bk", CPU_CASES)
def test_kernel_matches_reference_f32_interpret(b, lq, lk, h, d, bq, bk):
    _check(b, lq, lk, h, d, bq, bk, jnp.float32, interpret=True)


@pytest.mark.parametrize("b, lq, lk, h, d, bq, bk", BF16_CPU_CASES)
def test_kernel_matches_reference_bf16_interpret(b, lq, lk, h, d, bq, bk):
    _check(b, lq, lk, h, d, bq, bk, jnp.bfloat16, interpret=True)


# Key bias: a sampled subset of CPU_CASES (padded last key block with 2 or 1 real keys, cross, default blocks, one
# query); the bias row of each batch element differs, so a wrong batch index in the bias block spec shows.
BIAS_CPU_CASES = [CPU_CASES[0], CPU_CASES[1], CPU_CASES[2], CPU_CASES[5], CPU_CASES[7]]


@pytest.mark.parametrize("b, lq, lk, h, d, bq, bk", BIAS_CPU_CASES)
def test_key_bias_matches_reference_f32_interpret(b, lq, lk, h, d, bq, bk):
    _check(b, lq, lk, h, d, bq, bk, jnp.float32, interpret=True, key_bias=_bias(b, lk))


def test_key_bias_matches_reference_bf16_interpret():
    b, lq, lk, h, d, bq, bk = CPU_CASES[2].values
    _check(b, lq, lk, h, d, bq, bk, jnp.bfloat16, interpret=True, key_bias=_bias(b, lk))


def test_key_bias_changes_the_output_and_zero_bias_is_no_bias():
    """A zero bias runs the bias kernel and gives exactly the bias-free output (adding 0.0 is exact); a random bias
    moves the output well beyond the tolerances, so the bias tests above can fail."""
    q, k, v = _inputs(2, 24, 50, 2, 16)
    blocks = BlockSizes(8, 16)
    plain = flash_attention(q, k, v, block_sizes=blocks, interpret=True)
    zero = flash_attention(q, k, v, key_bias=jnp.zeros((2, 50), jnp.float32), block_sizes=blocks, interpret=True)
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(plain))
    biased = flash_attention(q, k, v, key_bias=_bias(2, 50), block_sizes=blocks, interpret=True)
    assert float(jnp.abs(biased - plain).max()) > 0.1


def test_no_bias_keeps_the_three_input_kernel():
    """key_bias=None adds no input to the pallas_call (the bias-free code path); a bias adds exactly one."""
    q, k, v = _inputs(1, 8, 8, 2, 4)

    def pallas_call_arity(**kw):
        jaxpr = jax.make_jaxpr(lambda q, k, v: flash_attention(q, k, v, interpret=True, **kw))(q, k, v)
        [eqn] = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == "pallas_call"]
        return len(eqn.invars)

    assert pallas_call_arity() == 3
    assert pallas_call_arity(key_bias=jnp.zeros((1, 8), jnp.float32)) == 4


def _all_eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs nested in its equations' params (jit, custom_vjp)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", param)  # a ClosedJaxpr wraps a Jaxpr
            if hasattr(inner, "eqns"):
                yield from _all_eqns(inner)


@pytest.mark.parametrize("masked", ["minus-1e9", "minus-inf"])
def test_very_negative_key_bias_masks_keys(masked):
    """Keys with bias -1e9 (or -inf) get zero weight: the output equals attention over the other keys only
    (computed independently, by dropping them). Batch element 0 masks the whole first key block (16 keys: with -inf
    the running max is -inf after that block) and a key in the last, padded block; element 1 masks every other key."""
    b, lq, lk, h, d = 2, 20, 37, 2, 8
    q, k, v = _inputs(b, lq, lk, h, d)
    bias = np.array(_bias(b, lk, scale=0.5))
    keep = np.ones((b, lk), bool)
    keep[0, :16] = keep[0, 35] = False
    keep[1, ::2] = False
    bias[~keep] = -1e9 if masked == "minus-1e9" else -np.inf
    out = flash_attention(q, k, v, key_bias=jnp.asarray(bias), block_sizes=BlockSizes(8, 16), interpret=True)
    _assert_close(out, flash_attention_reference(q, k, v, key_bias=jnp.asarray(bias)), jnp.float32)
    for n in range(b):
        sel = keep[n]
        want = flash_attention_reference(q[n:n + 1], k[n:n + 1, sel], v[n:n + 1, sel],
                                         key_bias=jnp.asarray(bias[n:n + 1, sel]))
        _assert_close(out[n:n + 1], want, jnp.float32)


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


@pytest.mark.parametrize("sm_scale", [None, 0.3])
def test_gradients_with_key_bias_match_reference(sm_scale):
    """Gradients wrt q, k, v and the key bias (Lk = 27 pads the last of two key blocks)."""
    q, k, v = _inputs(2, 21, 27, 2, 8)
    bias = _bias(2, 27)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape, dtype=np.float32))

    def loss(fn, q, k, v, bias):
        return jnp.sum(fn(q, k, v, key_bias=bias, sm_scale=sm_scale) * g)

    kernel = functools.partial(flash_attention, block_sizes=BlockSizes(8, 16), interpret=True)
    got = jax.grad(loss, argnums=(1, 2, 3, 4))(kernel, q, k, v, bias)
    want = jax.grad(loss, argnums=(1, 2, 3, 4))(flash_attention_reference, q, k, v, bias)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert float(jnp.abs(got[3]).max()) > 0.1  # the bias gradient is not trivially zero


def test_key_bias_gradient_matches_finite_differences():
    """The bias gradient against float32 central differences of the forward kernel (a smooth loss, step 1e-2, a
    loose tolerance): a check independent of the reference's VJP."""
    q, k, v = _inputs(1, 9, 11, 2, 4)
    bias = _bias(1, 11, scale=0.5)
    kernel = functools.partial(flash_attention, block_sizes=BlockSizes(8, 8), interpret=True)
    loss = lambda bias: jnp.sum(kernel(q, k, v, key_bias=bias) ** 2)  # noqa: E731
    grad = np.asarray(jax.grad(loss)(bias))
    eps = 1e-2
    steps = np.eye(11, dtype=np.float32)[:, None, :] * eps  # [11, 1, 11]
    fd = np.array([(float(loss(bias + s)) - float(loss(bias - s))) / (2 * eps) for s in steps])
    np.testing.assert_allclose(grad[0], fd, atol=2e-3, rtol=2e-2)


def test_reference_with_key_bias_matches_peer():
    """jax.nn.dot_product_attention with the bias broadcast to [B, 1, 1, Lk] (its [B, N, T, S] logit bias)."""
    q, k, v = _inputs(2, 13, 19, 3, 8)
    bias = _bias(2, 19)
    ref = np.asarray(flash_attention_reference(q, k, v, key_bias=bias))
    peer = jax.nn.dot_product_attention(q, k, v, bias=bias[:, None, None, :])
    np.testing.assert_allclose(ref, np.asarray(peer), atol=1e-5)
    assert np.abs(ref - np.asarray(flash_attention_reference(q, k, v))).max() > 0.1


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
    with pytest.raises(ValueError, match=r"key_bias\(1, 8, 2\) must be \[B, Lk\]"):
        flash_attention(q, k, v, key_bias=jnp.zeros((1, 8, 2)), interpret=True)
    with pytest.raises(ValueError, match=r"key_bias\(1, 7\) must be \[B, Lk\]"):
        flash_attention(q, k, v, key_bias=jnp.zeros((1, 7)), interpret=True)
    with pytest.raises(ValueError, match="key_bias must be a float array"):
        flash_attention(q, k, v, key_bias=jnp.zeros((1, 8), jnp.int32), interpret=True)


@pytest.mark.parametrize("lq, lk, d, bq, bk, dtype, with_bias", [
    pytest.param(37, 37, 72, 16, 16, jnp.float32, False, id="padded-L-and-head-dim-f32"),
    pytest.param(256, 300, 64, None, None, jnp.bfloat16, False, id="default-blocks-cross-bf16"),
    pytest.param(37, 37, 72, 16, 16, jnp.float32, True, id="key-bias-padded-L-and-head-dim-f32"),
    pytest.param(256, 300, 64, None, None, jnp.bfloat16, True, id="key-bias-default-blocks-cross-bf16"),
])
def test_lowers_to_triton_without_gpu(lq, lk, d, bq, bk, dtype, with_bias):
    """The GPU path (padded head dim, power-of-two blocks, Triton params; with a key bias its padded [Lk] row and
    block_k-long loads) lowers for CUDA on a CPU-only machine, so Triton lowering errors show up here before a GPU
    run."""
    q = jax.ShapeDtypeStruct((2, lq, 4, d), dtype)
    k = jax.ShapeDtypeStruct((2, lk, 4, d), dtype)
    bias = jax.ShapeDtypeStruct((2, lk), jnp.float32) if with_bias else None
    fn = jax.jit(lambda q, k, v, bias: flash_attention(q, k, v, key_bias=bias, block_sizes=BlockSizes(bq, bk),
                                                       interpret=False))
    text = fn.trace(q, k, k, bias).lower(lowering_platforms=("cuda",)).as_text()
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
@pytest.mark.parametrize("b, lq, lk, h, d, bq, bk, dtype", [GPU_CASES[1], GPU_CASES[2], GPU_CASES[3], GPU_CASES[6]])
def test_key_bias_matches_reference_gpu(b, lq, lk, h, d, bq, bk, dtype):
    q, k, v = _inputs(b, lq, lk, h, d, dtype)
    bias = np.array(_bias(b, lk))
    bias[:, 1::3] = -1e9  # masked keys in every key block, including the padded last one
    bias = jnp.asarray(bias)
    out = flash_attention(q, k, v, key_bias=bias, block_sizes=BlockSizes(bq, bk), interpret=False)
    want = flash_attention_reference(q, k, v, key_bias=bias)
    max_tol, mean_tol = TOL[dtype] if dtype == jnp.bfloat16 else (1e-4, 1e-5)
    err = np.abs(np.asarray(out, np.float32) - np.asarray(want, np.float32))
    assert out.shape == want.shape and out.dtype == dtype
    assert err.max() < max_tol and err.mean() < mean_tol, (err.max(), err.mean())


@pytest.mark.gpu
def test_gradients_with_key_bias_match_reference_gpu():
    q, k, v = _inputs(2, 256, 200, 4, 64)
    bias = _bias(2, 200)
    loss = lambda fn: lambda q, k, v, bias: jnp.sum(fn(q, k, v, key_bias=bias) ** 2)  # noqa: E731
    kernel = functools.partial(flash_attention, interpret=False)
    got = jax.grad(loss(kernel), argnums=(0, 1, 2, 3))(q, k, v, bias)
    want = jax.grad(loss(flash_attention_reference), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


@pytest.mark.gpu
def test_gradients_match_reference_gpu():
    q, k, v = _inputs(2, 256, 256, 4, 64)
    loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)  # noqa: E731
    kernel = lambda q, k, v: flash_attention(q, k, v, interpret=False)  # noqa: E731
    got = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(flash_attention_reference), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
