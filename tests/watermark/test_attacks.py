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
    assert drawn == {a for a, w in zip(cfg.attacks, cfg.attack_weights) if w > 0}  # zero weight: never drawn
    assert attacks.draw(np.random.default_rng(0), cfg.replace(attack_warmup_steps=5), step=4) == ("identity", None)


def test_real_jpeg_is_pillow_forward_and_identity_backward(photo):
    x = jnp.asarray(np.stack([photo[:48, :40], photo[8:56, 16:56]]).astype(np.float32) / 255)
    for q in (50, 95):
        got = np.asarray(jax.jit(attacks.real_jpeg)(x, jnp.int32(q)))
        want = np.stack([attacks.jpeg_pil(np.asarray(im), q) for im in (np.asarray(x) * 255).round().astype(np.uint8)])
        np.testing.assert_array_equal(np.round(got * 255).astype(np.uint8), want)
    w = jax.random.normal(jax.random.key(0), x.shape)
    g = jax.grad(lambda v: jnp.sum(w * attacks.real_jpeg(v, jnp.int32(80))))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))  # straight-through


def test_misregistration_is_a_small_similarity_warp(photo):
    x = jnp.asarray(np.stack([photo[:64, :64]] * 2).astype(np.float32) / 255)
    cfg = get_config("tiny")
    np.testing.assert_allclose(np.asarray(attacks.misregister(jax.random.key(0), x, (0.0, 0.0, 0.0))), np.asarray(x),
                               atol=1e-6)
    y = np.asarray(attacks.apply(("jitter", None), jax.random.key(1), x, cfg))
    assert y.shape == x.shape
    d = np.abs(y - np.asarray(x))[:, 8:-8, 8:-8].mean()
    assert 0 < d < 0.1  # moved, by a little
    # an integer shift with no zoom or turn is exactly that shift (away from the clamped edge)
    from qrjax import tiling
    shifted = np.asarray(tiling.similarity_warp(x[0], 1.0, 0.0, (2.0, -3.0)))
    np.testing.assert_allclose(shifted[4:-4, 4:-4], np.asarray(x)[0, 6:-2, 1:-7], atol=1e-6)


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


# ---- the standard evaluation table (attacks.STANDARD_ATTACKS), each against an independent reference


def _pillow_resize_reference(img, out_h, out_w, widen=True):
    """Pillow's bilinear resize re-derived in numpy: per axis (horizontal pass first, rounded to uint8), a triangle
    filter of support max(in/out, 1) when `widen` (the antialiasing) or 1, taps normalised and held in 22-bit
    fixed point, rounded half up."""
    def axis_pass(x, n_out):
        n_in = x.shape[0]
        scale = n_in / n_out
        support = max(scale, 1.0) if widen else 1.0
        out = np.empty((n_out,) + x.shape[1:], np.int64)
        for o in range(n_out):
            c = (o + 0.5) * scale
            lo, hi = max(0, int(c - support + 0.5)), min(n_in, int(c + support + 0.5))
            w = np.maximum(0.0, 1 - np.abs((np.arange(lo, hi) - c + 0.5) / support))
            fixed = np.floor(0.5 + w / w.sum() * 2**22).astype(np.int64)
            out[o] = (np.tensordot(fixed, x[lo:hi], axes=(0, 0)) + 2**21) >> 22
        return np.clip(out, 0, 255)

    y = axis_pass(img.astype(np.int64).transpose(1, 0, 2), out_w).transpose(1, 0, 2)
    return axis_pass(y, out_h).astype(np.uint8)


def _brute_force_blur(img, k, sigma):
    """2-D (not separable) convolution with the k x k Gaussian, reflect padding (edge pixel not repeated)."""
    r = np.arange(k) - k // 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    g2 = np.outer(g, g) / np.outer(g, g).sum()
    p = k // 2
    x = np.pad(img.astype(np.float64), ((p, p), (p, p), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    out = sum(g2[i, j] * x[i:i + h, j:j + w] for i in range(k) for j in range(k))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_standard_attacks_are_registered_in_order_with_exact_shapes():
    img = bundled_images(("astronaut",))["astronaut"][:256, :256]
    assert list(attacks.EVAL_ATTACKS)[:len(attacks.STANDARD_ATTACKS)] == list(attacks.STANDARD_ATTACKS)
    assert len(set(attacks.STANDARD_ATTACKS)) == 22
    sides = {"crop0.55": 141, "crop0.71": 182, "resize0.5": 128, "resize0.71": 182, "resize1.5": 384,
             "resize2.0": 512, "jpeg80+crop0.71+brightness0.5": 182}
    for name in attacks.STANDARD_ATTACKS:
        out = attacks.eval_attack(name, img)
        side = sides.get(name, 256)
        assert out.shape == (side, side, 3) and out.dtype == np.uint8, name
        assert (name == "none") == np.array_equal(out, img), name


def test_crop_keeps_a_side_fraction_and_center_crop_an_area_fraction(photo):  # photo: 64 x 80
    np.testing.assert_array_equal(attacks.eval_attack("crop0.55", photo), photo[14:49, 18:62])  # 35 x 44
    np.testing.assert_array_equal(attacks.eval_attack("crop0.71", photo), photo[9:54, 11:68])  # 45 x 57
    np.testing.assert_array_equal(attacks.center_crop(photo, 0.25), photo[16:48, 20:60])  # area 1/4: half sides


@pytest.mark.parametrize("scale", [0.5, 0.71, 1.5, 2.0])
def test_resize_is_pillows_antialiased_bilinear(photo, scale):
    out = attacks.eval_attack(f"resize{scale}", photo)
    assert out.shape == (round(64 * scale), round(80 * scale), 3)
    np.testing.assert_array_equal(out, _pillow_resize_reference(photo, *out.shape[:2]))
    if scale < 1:  # the downscale is antialiased: a triangle of fixed support 1 gives another image
        assert not np.array_equal(out, _pillow_resize_reference(photo, *out.shape[:2], widen=False))


@pytest.mark.parametrize("degrees", [2, 5, 10])
def test_rotate_matches_scipy_bilinear_rotation(photo, degrees):
    out = attacks.eval_attack(f"rotate{degrees}", photo)
    assert out.shape == photo.shape and out[0, 0].sum() == 0 and out[-1, -1].sum() == 0  # black corners
    ref = np.stack([scipy.ndimage.rotate(photo[..., c].astype(np.float64), degrees, reshape=False, order=1,
                                         mode="constant", cval=0.0) for c in range(3)], -1)
    # Pillow truncates its bilinear result; away from the border (where the two treat the outside differently)
    # the rotations agree exactly, and a rotation the other way does not
    np.testing.assert_array_equal(out[6:-6, 6:-6], np.floor(ref)[6:-6, 6:-6])
    assert not np.array_equal(attacks.rotate_pil(photo, -degrees)[6:-6, 6:-6], out[6:-6, 6:-6])


@pytest.mark.parametrize("k,sigma", [(3, 0.8), (5, 1.1)])  # OpenCV's default sigma, 0.3 ((k - 1) / 2 - 1) + 0.8
def test_blur_is_a_k_tap_gaussian_at_opencv_default_sigma(photo, k, sigma):
    out = attacks.eval_attack(f"blur{k}", photo)
    np.testing.assert_array_equal(out, _brute_force_blur(photo, k, sigma))
    assert not np.array_equal(out, _brute_force_blur(photo, k, sigma * 1.3))


@pytest.mark.parametrize("k,sigma", [(3, 0.8), (5, 1.1)])
def test_blur_matches_opencv_if_installed(photo, k, sigma):
    cv2 = pytest.importorskip("cv2")
    out = attacks.eval_attack(f"blur{k}", photo).astype(int)
    # with an explicit sigma (OpenCV's own k <= 7 default is a fixed binomial table, not the formula); OpenCV
    # rounds in fixed point, hence one grey level
    want = cv2.GaussianBlur(photo, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101).astype(int)
    assert np.max(np.abs(out - want)) <= 1


@pytest.mark.parametrize("factor", [0.5, 1.5])
def test_brightness_and_contrast_are_pillow_blends(photo, factor):
    p = photo.astype(np.int64)
    np.testing.assert_allclose(attacks.eval_attack(f"brightness{factor}", photo), np.clip(p * factor, 0, 255),
                               atol=1.0)
    grey = np.floor((p[..., 0] * 299 + p[..., 1] * 587 + p[..., 2] * 114) / 1000 + 0.5)  # ITU-R 601 luma
    mean = np.floor(grey.mean() + 0.5)
    np.testing.assert_allclose(attacks.eval_attack(f"contrast{factor}", photo),
                               np.clip(mean + factor * (p - mean), 0, 255), atol=1.0)


@pytest.mark.parametrize("quality", [50, 60, 70, 80, 90])
def test_jpeg_levels_are_libjpeg_at_that_quality(photo, quality):
    out = attacks.eval_attack(f"jpeg{quality}", photo)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=quality)
    np.testing.assert_array_equal(out, np.asarray(Image.open(buf)))
    assert out.shape == photo.shape and not np.array_equal(out, photo)


def test_combined_attack_is_jpeg_then_crop_then_brightness_like_videoseal(photo):
    out = attacks.eval_attack("jpeg80+crop0.71+brightness0.5", photo)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=80)
    jpeg = np.asarray(Image.open(buf))[9:54, 11:68]
    np.testing.assert_array_equal(out, np.asarray(ImageEnhance.Brightness(Image.fromarray(jpeg)).enhance(0.5)))
    buf = io.BytesIO()  # the other order (JPEG last) is a different image
    Image.fromarray(np.asarray(ImageEnhance.Brightness(Image.fromarray(photo[9:54, 11:68])).enhance(0.5))).save(
        buf, format="JPEG", quality=80)
    assert not np.array_equal(out, np.asarray(Image.open(buf)))
