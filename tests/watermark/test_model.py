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
    assert r.shape == x.shape
    np.testing.assert_allclose(np.sqrt(np.mean(np.asarray(r) ** 2, axis=(1, 2, 3))), 1.0, rtol=1e-4)  # unit RMS


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


@pytest.mark.parametrize("size", [3, 4, 16])
def test_highpass_prefilter_is_a_zero_padded_box_blur_difference(rng, size):
    from qrjax.watermark.model import box_blur

    x = rng.normal(size=(2, 19, 21, 3)).astype(np.float32)
    lo = size // 2
    xp = np.pad(x, ((0, 0), (lo, size - 1 - lo), (lo, size - 1 - lo), (0, 0)))
    want = sum(xp[:, i:i + 19, j:j + 21] for i in range(size) for j in range(size)) / size ** 2
    np.testing.assert_allclose(np.asarray(box_blur(jnp.asarray(x), size)), want, atol=1e-5)


def test_period_box_passes_every_carrier_harmonic_unchanged():
    """x - box_p(x) keeps a period-p pattern with no DC intact (away from the zero-padded border)."""
    from qrjax.watermark.model import box_blur, harmonic_basis

    p = 16
    pattern = harmonic_basis(p, 3) @ np.random.default_rng(0).normal(size=48)
    x = jnp.asarray(np.tile(pattern, (4, 4))[None, :, :, None], jnp.float32)
    hp = np.asarray(x - box_blur(x, p))
    np.testing.assert_allclose(hp[0, p:-p, p:-p, 0], np.asarray(x)[0, p:-p, p:-p, 0], atol=1e-4)


def test_band_limited_carrier_is_periodic_luma_and_in_band(tiny):
    """Bits enter the carrier path linearly through a band-limited basis: on a blank image the residual is the same
    in R, G and B, repeats every p pixels from the tile origin, and has no energy outside |k|, |l| <= band."""
    config, v = tiny
    assert config.luma and config.carrier_band
    enc = encoder_module(config)
    p = config.carrier_period
    coef = np.asarray(v["encoder"]["params"]["carrier_coef"])
    assert coef.shape == ((2 * config.carrier_band + 1) ** 2 - 1, config.bits, config.channels)
    x = jnp.zeros((1, 4 * p, 4 * p, 3))
    r = np.asarray(enc.apply(v["encoder"], x, jnp.ones((1, config.bits), jnp.int32)))
    np.testing.assert_array_equal(r[..., 0], r[..., 1])
    np.testing.assert_array_equal(r[..., 0], r[..., 2])
    inner = r[0, p:3 * p, p:3 * p, 0]  # away from the zero-padded border
    np.testing.assert_allclose(inner[:p, :p], inner[p:, p:], atol=1e-5)
    spec = np.abs(np.fft.fft2(inner[:p, :p]))
    k = np.abs(np.fft.fftfreq(p) * p)
    outside = (k[:, None] > config.carrier_band) | (k[None, :] > config.carrier_band)
    assert spec[outside].max() < 1e-3 * spec.max()


def test_unrestricted_carrier_is_periodic_from_the_tile_origin():
    """The older, unrestricted carrier (one free p x p pattern per bit and channel) still builds and repeats."""
    config = get_config("tiny", ["carrier_band=0", "luma=false"])
    v = init_variables(config, jax.random.key(0))
    p = config.carrier_period
    assert np.asarray(v["encoder"]["params"]["carrier"]).shape == (p, p, config.bits, config.channels)
    r = np.asarray(encoder_module(config).apply(v["encoder"], jnp.zeros((1, 32, 32, 3)),
                                                jnp.ones((1, config.bits), jnp.int32)))
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
