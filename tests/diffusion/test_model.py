"""The DiT: shapes on any grid, adaLN-zero at init, conditioning, RoPE maths, the Pallas attention path."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.diffusion.config import get_config
from qrjax.diffusion.model import DiT, apply_rope, attention, init_params, rope_tables, timestep_embedding


# Model calls run jitted: op-by-op dispatch of a flax module costs seconds per new shape on this CPU. init_params
# runs as the library calls it (eagerly), which costs seconds once per process and then hits the dispatch cache.


@functools.partial(jax.jit, static_argnums=0)
def _apply(config, params, x, t, y=None):
    return DiT(config).apply({"params": params}, x, t, y)


def perturb(params, seed, scale=0.1):
    """Random offsets on every leaf (numpy draws: no compile), so the zero-initialised layers stop hiding the rest of
    the network. Larger offsets make the random network chaotic enough that f32 rounding grows to ~1e-4."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params)


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny")
    params = init_params(config, jax.random.key(0))
    return config, params, perturb(params, 1)


def _latent(key, *shape):
    return jax.random.normal(jax.random.key(key), shape)


def test_tiny_preset_geometry():
    config = get_config("tiny")
    assert (config.latent_size, config.channels, config.null_class) == (8, 6, 12)
    assert get_config("tiny", ["autoencoder=pixel"]).channels == 3
    assert get_config("tiny", ["autoencoder=pixel"]).latent_size == 16


def test_the_same_params_read_any_latent_grid(tiny):
    """Shapes on a square and a non-square grid; then a patch-periodic input: all tokens equal, so every attention
    output is the common value row (whatever the RoPE angles) and the output must be the same patch everywhere,
    independent of the grid size: 8x8 and 16x24 agree patch by patch."""
    config, _, params = tiny
    t, y = jnp.array([0.4]), jnp.array([2])
    for h, w in ((8, 8), (16, 24)):
        x = _latent(2, 1, h, w, config.channels)
        v = _apply(config, params, x, t, y)
        assert v.shape == x.shape and v.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(v))) and float(jnp.abs(v).max()) > 1e-3
    patch = _latent(3, 1, 2, 2, config.channels)
    small = _apply(config, params, jnp.tile(patch, (1, 4, 4, 1)), t, y)
    big = _apply(config, params, jnp.tile(patch, (1, 8, 12, 1)), t, y)
    np.testing.assert_allclose(np.asarray(big), np.tile(np.asarray(small[:, :2, :2]), (1, 8, 12, 1)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(small), np.tile(np.asarray(small[:, :2, :2]), (1, 4, 4, 1)), atol=1e-5)
    assert float(jnp.abs(small).max()) > 1e-3


def test_video_latents_keep_their_shape(tiny):
    config, _, params = tiny
    video = config.replace(frames=3)
    def shapes(c):
        return jax.tree.map(lambda a: a.shape, jax.eval_shape(lambda: init_params(c, jax.random.key(0))))

    assert shapes(video) == shapes(config)  # positions live in RoPE only: one set of weights for any frame count
    x = _latent(4, 2, 3, 8, 8, config.channels)
    t, y = jnp.array([0.2, 0.9]), jnp.array([1, 12])
    v = _apply(video, params, x, t, y)
    assert v.shape == (2, 3, 8, 8, config.channels)
    # the frames talk to each other: changing frame 0 changes the output in frame 2
    v2 = _apply(video, params, x.at[:, 0].add(1.0), t, y)
    assert float(jnp.abs(v2[:, 2] - v[:, 2]).max()) > 1e-4
    # a single frame given as video to the image model is the image path
    np.testing.assert_allclose(np.asarray(_apply(config, params, x[:, :1], t, y))[:, 0],
                               np.asarray(_apply(config, params, x[:, 0], t, y)), atol=1e-5)
    # an image model has no time positions: permuting the frames permutes its outputs; a video model's do not
    perm = jnp.array([2, 0, 1])
    np.testing.assert_allclose(np.asarray(_apply(config, params, x[:, perm], t, y)),
                               np.asarray(_apply(config, params, x, t, y))[:, perm], atol=1e-5)
    assert float(jnp.abs(_apply(video, params, x[:, perm], t, y) - v[:, perm]).max()) > 1e-4


def test_output_is_exactly_zero_at_init_and_not_after_perturbing(tiny):
    config, init, params = tiny
    x = _latent(5, 2, 8, 8, config.channels)
    t, y = jnp.array([0.1, 0.7]), jnp.array([3, 12])
    v0 = np.asarray(_apply(config, init, x, t, y))
    assert np.all(v0 == 0.0)
    v = np.asarray(_apply(config, params, x, t, y))
    assert np.abs(v).max() > 1e-2


def test_class_label_changes_the_output_and_none_is_the_null_class(tiny):
    config, _, params = tiny
    x = _latent(6, 2, 8, 8, config.channels)
    t = jnp.array([0.5, 0.5])
    a = _apply(config, params, x, t, jnp.array([0, 0]))
    b = _apply(config, params, x, t, jnp.array([1, 1]))
    assert float(jnp.abs(a - b).max()) > 1e-3
    none = _apply(config, params, x, t, None)
    null = _apply(config, params, x, t, jnp.full((2,), config.null_class, jnp.int32))
    np.testing.assert_array_equal(np.asarray(none), np.asarray(null))
    # the time enters too
    c = _apply(config, params, x, jnp.array([0.1, 0.1]), jnp.array([0, 0]))
    assert float(jnp.abs(a - c).max()) > 1e-3


def test_unconditional_model_has_no_class_embedding():
    config = get_config("tiny", {"num_classes": 0})
    params = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    assert "y_embed" not in params and params["t_mlp1"]["kernel"].shape == (256, config.dim)


def test_latent_errors_name_the_problem(tiny):
    config, _, params = tiny
    with pytest.raises(ValueError, match=r"latent 9x8 is not divisible by the patch size 2"):
        _apply(config, params, jnp.zeros((1, 9, 8, 6)), jnp.zeros((1,)), None)
    with pytest.raises(ValueError, match=r"latent has 4 channels, the model 6"):
        _apply(config, params, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), None)


def test_rope_tables_are_unit_rotations_split_between_axes():
    theta, head_dim = 100.0, 16
    cos, sin = rope_tables((1, 3, 5), head_dim, theta)
    assert cos.shape == sin.shape == (15, 8) and cos.dtype == np.float32
    np.testing.assert_allclose(cos**2 + sin**2, 1.0, atol=1e-6)
    ang = np.arctan2(sin, cos).reshape(3, 5, 8)
    # moving along x (a column step) changes only the x pairs (the last 4); along y only the first 4
    np.testing.assert_array_equal(ang[:, 1:, :4], ang[:, :-1, :4])
    assert np.all(np.abs(ang[:, 1:, 4:] - ang[:, :-1, 4:]) > 1e-3)
    np.testing.assert_array_equal(ang[1:, :, 4:], ang[:-1, :, 4:])
    assert np.all(np.abs(ang[1:, :, :4] - ang[:-1, :, :4]) > 1e-3)
    # brute force: pair i of an axis turns by position * theta^(-i/4)
    for r in range(3):
        for c in range(5):
            for i in range(4):
                assert cos[r * 5 + c, i] == pytest.approx(math.cos(r * theta ** (-i / 4)), abs=1e-6)
                assert sin[r * 5 + c, 4 + i] == pytest.approx(math.sin(c * theta ** (-i / 4)), abs=1e-6)


def test_rope_tables_give_a_quarter_of_the_pairs_to_time_for_video():
    cos, sin = rope_tables((2, 2, 3), 16, 100.0, time_axis=True)
    assert cos.shape == (12, 8)
    ang = np.arctan2(sin, cos).reshape(2, 2, 3, 8)
    # 8 pairs: 2 for time, 3 for rows, 3 for columns
    np.testing.assert_array_equal(ang[1, ..., 2:], ang[0, ..., 2:])
    assert np.all(np.abs(ang[1, ..., :2] - ang[0, ..., :2]) > 1e-3)
    np.testing.assert_array_equal(ang[:, 1, :, :2], ang[:, 0, :, :2])
    np.testing.assert_array_equal(ang[:, 1, :, 5:], ang[:, 0, :, 5:])
    np.testing.assert_array_equal(ang[:, :, 1:, :5], ang[:, :, :-1, :5])


def test_rope_scores_depend_only_on_the_relative_position(rng):
    h, w, d = 4, 5, 16
    cos, sin = (jnp.asarray(a) for a in rope_tables((1, h, w), d, 100.0))
    q, k = rng.normal(size=(2, d)).astype(np.float32)
    qr = np.asarray(apply_rope(jnp.broadcast_to(jnp.asarray(q), (1, h * w, 1, d)), cos, sin))[0, :, 0]
    kr = np.asarray(apply_rope(jnp.broadcast_to(jnp.asarray(k), (1, h * w, 1, d)), cos, sin))[0, :, 0]
    # a rotation keeps norms
    np.testing.assert_allclose(np.linalg.norm(qr, axis=-1), np.linalg.norm(q), rtol=1e-5)
    scores = {}
    for m in range(h * w):
        for n in range(h * w):
            offset = (m // w - n // w, m % w - n % w)
            s = float(qr[m] @ kr[n])
            scores.setdefault(offset, []).append(s)
    for offset, values in scores.items():
        np.testing.assert_allclose(values, values[0], atol=1e-5, err_msg=str(offset))
    distinct = np.array([v[0] for v in scores.values()])
    assert np.ptp(distinct) > 1e-2  # and it does depend on the offset
    np.testing.assert_allclose(scores[(0, 0)][0], q @ k, rtol=1e-5)


def test_timestep_embedding_matches_the_sinusoid_formula():
    t = np.array([0.0, 1e-3, 0.25, 1.0], np.float32)
    dim = 256
    emb = np.asarray(timestep_embedding(jnp.asarray(t), dim))
    assert emb.shape == (4, dim) and emb.dtype == np.float32
    want = np.zeros((4, dim))
    for b in range(4):
        for i in range(dim // 2):
            arg = 1000.0 * float(t[b]) * math.exp(-math.log(10_000.0) * i / (dim // 2))
            want[b, i], want[b, dim // 2 + i] = math.cos(arg), math.sin(arg)
    np.testing.assert_array_equal(emb[0, :128], 1.0)
    np.testing.assert_array_equal(emb[0, 128:], 0.0)
    # f32 arguments up to 1000 carry an absolute rounding error of about 1000 * 2^-24 * a few ~ 1e-4
    np.testing.assert_allclose(emb[:2], want[:2], atol=1e-6)
    np.testing.assert_allclose(emb, want, atol=3e-4)


def test_kernel_attention_gives_the_same_dit_output_as_xla(tiny):
    config, _, params = tiny
    x = _latent(8, 2, 8, 12, config.channels)
    t, y = jnp.array([0.3, 0.6]), jnp.array([4, 12])
    xla = _apply(config.replace(attention="xla"), params, x, t, y)
    kernel = _apply(config.replace(attention="kernel"), params, x, t, y)
    assert float(jnp.abs(xla).max()) > 1e-2
    np.testing.assert_allclose(np.asarray(kernel), np.asarray(xla), atol=1e-5, rtol=1e-5)


def test_attention_modes_against_plain_softmax_and_invalid_mode(rng, tiny):
    q, k, v = (jnp.asarray(rng.normal(size=(1, 6, 2, 4)).astype(np.float32)) for _ in range(3))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)
    for mode in ("xla", "kernel"):
        np.testing.assert_allclose(np.asarray(attention(q, k, v, mode)), want, atol=1e-5)
    with pytest.raises(ValueError, match=r"attention mode 'flash': choose auto, kernel or xla"):
        attention(q, k, v, "flash")
    config, _, params = tiny
    with pytest.raises(ValueError, match=r"attention mode 'flash'"):
        _apply(config.replace(attention="flash"), params, jnp.zeros((1, 8, 8, 6)), jnp.zeros((1,)))
