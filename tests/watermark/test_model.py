import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.watermark.config import PRESETS, get_config
from qrjax.watermark.model import encoder_module, extractor_module, init_variables


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny")
    return config, init_variables(config, jax.random.key(0))


@pytest.mark.parametrize("h,w", [(16, 16), (32, 32), (24, 40), (81, 81)])
def test_extractor_reads_any_size_and_encoder_keeps_shape(tiny, h, w):
    config, v = tiny
    x = jax.random.uniform(jax.random.key(1), (2, h, w, 3), minval=-1, maxval=1)
    bits = jnp.ones((2, config.bits), jnp.int32)
    logits = extractor_module(config).apply(v["extractor"], x)
    assert logits.shape == (2, config.bits) and logits.dtype == jnp.float32
    r = encoder_module(config).apply(v["encoder"], x, bits)
    assert r.shape == x.shape and float(jnp.max(jnp.abs(r))) <= 1.0  # tanh residual


def test_batchnorm_state_is_functional(tiny):
    config, v = tiny
    x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
    _, upd = extractor_module(config).apply(v["extractor"], x, train=True, mutable=["batch_stats"])
    before, after = jax.tree.leaves(v["extractor"]["batch_stats"]), jax.tree.leaves(upd["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    # inference uses the running statistics: the output does not depend on the rest of the batch
    ext = extractor_module(config)
    np.testing.assert_allclose(ext.apply(v["extractor"], x)[:1], ext.apply(v["extractor"], x[:1]), rtol=1e-5,
                               atol=1e-6)


def test_paper_preset_matches_qrmark_and_overrides_parse():
    p = PRESETS["paper"]
    assert (p.channels, p.encoder_blocks, p.extractor_blocks, p.bits, p.tile, p.working_size) == (64, 4, 8, 48, 64, 256)
    v = init_variables(p, jax.random.key(0))
    n = sum(x.size for x in jax.tree.leaves(v["extractor"]["params"]))
    assert 285_000 < n < 300_000  # the brief's ~291k-parameter HiDDeN extractor
    c = get_config("cpu", ["tile=32", "jpeg_qualities=60,90", "full_image=true", "strength=0.01"])
    assert (c.tile, c.jpeg_qualities, c.full_image, c.strength) == (32, (60, 90), True, 0.01)
    with pytest.raises(ValueError, match="no field 'tiles'"):
        get_config("cpu", ["tiles=3"])
    with pytest.raises(ValueError, match="cannot parse"):
        get_config("cpu", ["steps=many"])
    with pytest.raises(ValueError, match="unknown watermark preset"):
        get_config("gpu")


def test_highpass_prefilter_is_a_zero_padded_box_blur_difference(rng):
    from qrjax.watermark.model import box_blur3

    x = rng.normal(size=(2, 9, 7, 3)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(xp[:, i:i + 9, j:j + 7] for i in range(3) for j in range(3)) / 9
    np.testing.assert_allclose(np.asarray(box_blur3(jnp.asarray(x))), want, atol=1e-6)


def test_carrier_texture_is_periodic_from_the_tile_origin(tiny):
    """Bits enter the carrier path linearly: the residual difference of two messages repeats with the period."""
    config, v = tiny
    enc = encoder_module(config)
    x = jnp.zeros((1, 32, 32, 3))
    params = jax.tree.map(lambda a: a, v["encoder"])
    p = config.carrier_period
    carrier = np.asarray(params["params"]["carrier"])
    assert carrier.shape == (p, p, config.bits, config.channels)
    r = np.asarray(enc.apply(params, x, jnp.ones((1, config.bits), jnp.int32)))
    # on a blank image away from the zero-padded border, the residual repeats every p pixels
    np.testing.assert_allclose(r[0, 4:12, 4:12], r[0, 4 + p:12 + p, 4 + p:12 + p], atol=1e-5)


@pytest.mark.parametrize("h,w", [(16, 16), (24, 40), (13, 29)])
def test_periodic_demodulation_is_the_mean_of_features_times_the_tiled_pattern(rng, h, w):
    from qrjax.watermark.model import fold_mean

    p, c, k = 8, 3, 5
    x = rng.normal(size=(2, h, w, c)).astype(np.float32)
    pattern = rng.normal(size=(p, p, c, k)).astype(np.float32)
    tiled = np.tile(pattern, (-(-h // p), -(-w // p), 1, 1))[:h, :w]  # from the origin, cut at the far edges
    want = np.einsum("bhwc,hwck->bk", x, tiled) / (h * w)
    np.testing.assert_allclose(np.asarray(fold_mean(jnp.asarray(x), p, jnp.asarray(pattern))), want, rtol=1e-5,
                               atol=1e-6)
