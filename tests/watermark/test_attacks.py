import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from PIL import Image, ImageEnhance

from qrjax.data import bundled_images
from qrjax.watermark import attacks
from qrjax.watermark.config import get_config


@pytest.fixture(scope="module")
def photo():
    return bundled_images(("astronaut",))["astronaut"][100:164, 180:260]  # 64 x 80, odd multiple of 16 in width


def _f(img):
    return jnp.asarray(img[None].astype(np.float32) / 255.0)


@pytest.mark.parametrize("quality", [50, 80])
def test_quant_tables_match_libjpeg(quality):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="JPEG", quality=quality)
    q = Image.open(io.BytesIO(buf.getvalue())).quantization  # Pillow reports the tables in natural (row) order
    for table, base in ((0, attacks.LUMA_Q), (1, attacks.CHROMA_Q)):
        np.testing.assert_array_equal(attacks.quant_table(base, quality).ravel(), np.asarray(q[table]))


@pytest.mark.parametrize("quality", [50, 80])
def test_differentiable_jpeg_is_close_to_pillow(photo, quality):
    pil = attacks.jpeg_pil(photo, quality).astype(np.float64)
    ours = np.asarray(attacks.jpeg(_f(photo), quality))[0] * 255
    err_vs_pil = np.abs(ours - pil).mean()
    jpeg_err = np.abs(pil - photo).mean()
    # the approximation differs from libjpeg (integer DCT, fancy upsampling) far less than JPEG changes the image
    assert err_vs_pil < 0.45 * jpeg_err, (err_vs_pil, jpeg_err)
    assert ours.shape == photo.shape


def test_jpeg_gradient_is_straight_through_and_finite(photo):
    g = jax.grad(lambda x: jnp.sum(attacks.jpeg(x, 50) * jnp.linspace(0, 1, x.size).reshape(x.shape)))(_f(photo))
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.abs(g).mean() > 1e-3


@pytest.mark.parametrize("sigma,size", [(0.8, 5), (2.0, 9)])
def test_blur_matches_scipy_gaussian(photo, sigma, size):
    x = photo.astype(np.float32) / 255
    ours = np.asarray(attacks.gaussian_blur(jnp.asarray(x[None]), sigma, size))[0]
    want = scipy.ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0), mode="mirror", truncate=(size // 2) / sigma)
    np.testing.assert_allclose(ours, want, atol=2e-6)
    exact = attacks.blur_np(photo, 2.0)  # the evaluation blur: radius 4 sigma
    want8 = scipy.ndimage.gaussian_filter(photo.astype(np.float64), sigma=(2, 2, 0), mode="mirror", truncate=4.0)
    assert np.max(np.abs(exact.astype(float) - np.clip(np.round(want8), 0, 255))) <= 1


@pytest.mark.parametrize("factor", [0.6, 1.5])
def test_brightness_and_contrast_match_pillow(photo, factor):
    img = Image.fromarray(photo)
    b = np.asarray(attacks.brightness(_f(photo), factor))[0] * 255
    np.testing.assert_allclose(b, np.asarray(ImageEnhance.Brightness(img).enhance(factor)), atol=1.0)
    c = np.asarray(attacks.contrast(_f(photo), factor))[0] * 255
    # Pillow rounds the grey mean to an integer level before blending
    np.testing.assert_allclose(c, np.asarray(ImageEnhance.Contrast(img).enhance(factor)), atol=1.0 + factor)


def test_shape_attacks_and_draw(photo):
    cfg = get_config("tiny")
    x = jnp.asarray(np.stack([photo[:, :64]] * 3).astype(np.float32) / 255)
    np.testing.assert_array_equal(np.asarray(attacks.apply(("flip", None), jax.random.key(0), x, cfg)),
                                  np.asarray(x)[:, :, ::-1])
    crop = attacks.apply(("crop", 0.3), jax.random.key(1), x, cfg)
    assert crop.shape == (3, 35, 35, 3)  # QRMark: floor(64 * sqrt(0.3))
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(x), (35, 35), axis=(1, 2))
    for i in range(3):  # each crop is some 35 x 35 window of its own image
        assert np.any(np.all(windows[i].transpose(0, 1, 3, 4, 2) == np.asarray(crop)[i], axis=(2, 3, 4)))
    assert attacks.apply(("resized_crop", 0.7), jax.random.key(2), x, cfg).shape == x.shape
    noisy = attacks.apply(("noise", None), jax.random.key(3), x, cfg)
    assert 0.5 * cfg.noise_std < float(jnp.std(noisy - x)) < 1.1 * cfg.noise_std
    drawn = {attacks.draw(np.random.default_rng(s), cfg)[0] for s in range(200)}
    assert drawn == set(cfg.attacks)
    assert attacks.draw(np.random.default_rng(0), cfg.replace(attack_warmup_steps=5), step=4) == ("identity", None)


def test_eval_attacks_are_exact_image_operations(photo):
    assert attacks.eval_attack("crop10", photo).shape == (20, 25, 3)
    np.testing.assert_array_equal(attacks.eval_attack("crop50", photo), photo[9:54, 11:68])
    assert attacks.eval_attack("resize50", photo).shape == (32, 40, 3)
    np.testing.assert_array_equal(attacks.eval_attack("none", photo), photo)
    rot = attacks.eval_attack("rotate10", photo)
    assert rot.shape == photo.shape and rot[0, 0].sum() == 0  # corners filled with black
    for name in attacks.EVAL_ATTACKS:
        out = attacks.eval_attack(name, photo)
        assert out.dtype == np.uint8 and out.ndim == 3
    with pytest.raises(ValueError, match="unknown evaluation attack"):
        attacks.eval_attack("jpeg10", photo)
