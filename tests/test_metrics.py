"""qrjax.metrics against scikit-image (PSNR, SSIM in both of its modes) and brute force (seam ratio)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from qrjax.metrics import psnr, seam_ratio, ssim

WANG = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}  # scikit-image's Wang et al. mode


def _noisy(rng, a, amp):
    return np.clip(a.astype(int) + rng.integers(-amp, amp + 1, a.shape), 0, 255).astype(np.uint8)


def _sk_ssim(a, b, data_range, gaussian):
    return structural_similarity(a, b, data_range=data_range, channel_axis=-1, **(WANG if gaussian else {}))


@pytest.fixture(scope="module")
def natural():
    """Two photographs cropped to one size, and noisy / blurred copies: uint8[2, 96, 128, 3] each."""
    rng = np.random.default_rng(1)
    a = np.stack([skimage.data.astronaut()[100:196, 150:278], skimage.data.coffee()[50:146, 200:328]])
    blurred = ((a[:, :-1].astype(int) + a[:, 1:]) // 2).astype(np.uint8)  # a structural change, not just noise
    b = np.concatenate([blurred, a[:, -1:]], axis=1)
    return a, _noisy(rng, b, 6)


@pytest.mark.parametrize("gaussian", [False, True])
def test_ssim_matches_scikit_image_on_photographs_uint8_and_float(natural, gaussian):
    a, b = natural
    want = np.array([_sk_ssim(x, y, 255, gaussian) for x, y in zip(a, b)])
    assert 0.3 < want.min() and want.max() < 0.95  # a regime where the windows and constants matter
    got = ssim(a, b, 255, gaussian=gaussian)
    assert got.shape == (2,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    # a single image gives a scalar; [0, 1] floats with data_range 1 give the same value
    single = ssim(a[0], b[0], 255.0, gaussian=gaussian)
    assert single.shape == () and single == pytest.approx(want[0], abs=2e-5)
    af, bf = a[1].astype(np.float32) / 255, b[1].astype(np.float32) / 255
    assert ssim(af, bf, 1.0, gaussian=gaussian) == pytest.approx(_sk_ssim(af, bf, 1.0, gaussian), abs=2e-5)


@pytest.mark.parametrize("gaussian", [False, True])
def test_ssim_matches_scikit_image_on_random_images_with_batch_axes(rng, gaussian):
    a = rng.random((2, 3, 20, 17, 2))  # float64 on the host, leading batch axes [2, 3], two channels
    b = np.clip(a + 0.2 * rng.normal(size=a.shape), 0, 1)
    want = np.array([[_sk_ssim(x, y, 1.0, gaussian) for x, y in zip(xs, ys)] for xs, ys in zip(a, b)])
    got = ssim(a, b, 1.0, gaussian=gaussian)
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_ssim_window_size_and_identical_images(rng):
    a = rng.integers(0, 256, (2, 24, 24, 3)).astype(np.uint8)
    b = _noisy(rng, a, 40)
    want = [structural_similarity(x, y, data_range=255, channel_axis=-1, win_size=11) for x, y in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b, 255, win_size=11), want, atol=2e-5)
    np.testing.assert_allclose(ssim(a, a, 255), 1.0, atol=1e-6)
    np.testing.assert_allclose(ssim(a, a, 255, gaussian=True), 1.0, atol=1e-6)
    for bad, match in (({"win_size": 4}, "odd"), ({"win_size": 25}, "does not fit")):
        with pytest.raises(ValueError, match=match):
            ssim(a, b, 255, **bad)
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(a, b[:, 1:], 255)
    with pytest.raises(ValueError, match="channel axis"):
        ssim(a[0, ..., 0], b[0, ..., 0], 255)


def test_psnr_matches_scikit_image_uint8_float_single_and_batch(rng, natural):
    a, b = natural
    want = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)]
    got = psnr(a, b, 255)
    assert got.shape == (2,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert psnr(a[0], b[0], 255.0).shape == ()
    # uint8 differences must not wrap around: b - a < 0 somewhere
    assert (b.astype(int) < a).any()
    af, bf = a / 255.0, b / 255.0
    np.testing.assert_allclose(psnr(af, bf, 1.0), [peak_signal_noise_ratio(x, y, data_range=1.0)
                                                   for x, y in zip(af, bf)], rtol=1e-6)
    c = rng.random((3, 1, 5, 7, 1)).astype(np.float32)
    d = c + rng.normal(scale=0.01, size=c.shape).astype(np.float32)
    want = [[peak_signal_noise_ratio(x, y, data_range=1.0)] for x, y in zip(c[:, 0], d[:, 0])]
    np.testing.assert_allclose(psnr(c, d, 1.0), want, rtol=1e-5)


def test_identical_images_give_inf_and_one_also_under_jit(rng):
    a = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
    b = _noisy(rng, a, 5)
    b[1] = a[1]
    p = psnr(a, b, 255)
    assert np.isfinite(p[0]) and p[1] == np.inf
    assert float(psnr(a[0], a[0], 255)) == float("inf")

    @jax.jit
    def both(x, y, data_range):
        return psnr(x, y, data_range), ssim(x, y, data_range, gaussian=True)

    jp, js = both(jnp.asarray(a), jnp.asarray(b), 255.0)  # data_range traced
    np.testing.assert_allclose(jp, p, rtol=1e-6)
    np.testing.assert_allclose(js, ssim(a, b, 255, gaussian=True), rtol=1e-6)
    assert js[1] == pytest.approx(1.0, abs=1e-6)
    assert js[0] == pytest.approx(_sk_ssim(a[0], b[0], 255, True), abs=2e-5)


def test_seam_ratio_sees_steps_at_the_borders_only(rng):
    smooth = rng.normal(size=(64, 64)) * 2 + np.add.outer(np.arange(64), np.arange(64)) * 0.5
    assert seam_ratio(smooth, 16) == pytest.approx(1.0, abs=0.3)
    seams = smooth.copy()
    seams[:, 16:] += 20.0
    seams[:, 48:] -= 20.0  # jumps between columns 15|16 and 47|48: border lines of period 16
    assert seam_ratio(seams, 16) > 10
    assert seam_ratio(seams, 16, offset=(0, 8)) < 1  # a grid shifted by 8 counts the jumps among the other lines
    # brute force for one image: border lines are between k*16-1 and k*16
    g = seams
    border = [(g[i] - g[i - 1]) ** 2 for i in (16, 32, 48)] + [(g[:, i] - g[:, i - 1]) ** 2 for i in (16, 32, 48)]
    inner = [(g[i] - g[i - 1]) ** 2 for i in range(1, 64) if i % 16] + \
        [(g[:, i] - g[:, i - 1]) ** 2 for i in range(1, 64) if i % 16]
    assert seam_ratio(seams, 16) == pytest.approx(np.mean(border) / np.mean(inner))


def test_seam_ratio_phase_compares_like_lines():
    # 2x2 blocks: gradients only between blocks; with phase 2 the borders are compared with other block edges
    blocks = np.kron(np.arange(32 * 32).reshape(32, 32) % 7, np.ones((2, 2)))
    assert seam_ratio(blocks, 16, phase=2) == pytest.approx(1.0, abs=0.5)
    assert seam_ratio(blocks, 16) > 1.5
    with pytest.raises(ValueError, match="no border"):
        seam_ratio(np.zeros((8, 8)), 16)


def test_roc_auc_and_log_loss_match_sklearn(rng):
    from sklearn.metrics import log_loss as sk_log_loss, roc_auc_score

    from qrjax.metrics import log_loss, roc_auc

    y = rng.random(2000) < 0.3
    scores = np.round(rng.normal(size=2000) + y, 1)  # rounded: many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)
    assert roc_auc(y, -scores) == pytest.approx(1 - roc_auc_score(y, scores), abs=1e-12)
    assert log_loss(y, scores) == pytest.approx(sk_log_loss(y, 1 / (1 + np.exp(-scores))), rel=1e-9)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(4), np.arange(4.0))
    with pytest.raises(ValueError, match="2 labels but 3 scores"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
