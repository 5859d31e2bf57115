import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from qrjax.diffusion.metrics import psnr, seam_ratio, ssim


def test_psnr_matches_scikit_image_and_is_inf_on_equal_images(rng):
    a = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-5, 6, a.shape), 0, 255).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)


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
