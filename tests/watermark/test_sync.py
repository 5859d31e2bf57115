"""Synchronisation: geometry estimation against known edits of a synthetic lattice, the per-shift demodulation
against brute-force rolls, the cascade's statistics, and the shipped model through real edits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from qrjax import tiling
from qrjax.data import bundled_source
from qrjax.watermark import WatermarkModel, attacks, detect, embed, get_config, sync
from qrjax.watermark.model import cyclic_correlation, fold, fold_mean, harmonic_basis, harmonics, init_variables


def test_harmonic_basis_orthonormal_and_band_limited():
    p, band = 16, 3
    b = harmonic_basis(p, band)
    assert b.shape == (p, p, 48) and len(harmonics(band)) == 24
    np.testing.assert_allclose(np.einsum("ijn,ijm->nm", b, b) / p ** 2, np.eye(48), atol=1e-5)
    spec = np.abs(np.fft.fft2(b, axes=(0, 1))).max(-1)
    k = np.fft.fftfreq(p) * p
    outside = (np.abs(k)[:, None] > band) | (np.abs(k)[None, :] > band)
    assert spec[outside].max() < 1e-3 and spec[0, 0] < 1e-3


def test_cyclic_correlation_is_every_rolled_fold_mean():
    rng = np.random.default_rng(0)
    p = 8
    x = jnp.asarray(rng.normal(size=(2, 32, 24, 3)), jnp.float32)
    pattern = jnp.asarray(rng.normal(size=(p, p, 3, 5)), jnp.float32)
    got = np.asarray(cyclic_correlation(fold(x, p) / (32 * 24), pattern))
    for dy, dx in [(0, 0), (3, 5), (7, 1)]:
        want = np.asarray(fold_mean(jnp.roll(x, (-dy, -dx), axis=(1, 2)), p, pattern))
        np.testing.assert_allclose(got[:, dy, dx], want, rtol=1e-4, atol=1e-5)


def test_similarity_warp_undoes_pillow_rotate_and_matches_resize():
    im = bundled_source("val").sample(np.random.default_rng(0), 128, 1)[0]
    rot = np.asarray(Image.fromarray(im).rotate(6.0, resample=Image.BILINEAR)).astype(np.float32)
    back = np.asarray(tiling.similarity_warp(jnp.asarray(rot), 1.0, 6.0))
    c = slice(32, 96)
    assert np.abs(back[c, c] - im[c, c]).mean() < 4.0  # two bilinear resamplings of a photograph
    assert np.abs(np.asarray(tiling.similarity_warp(jnp.asarray(rot), 1.0, -6.0))[c, c] - im[c, c]).mean() > 10
    up = np.asarray(Image.fromarray(im).resize((256, 256), Image.BILINEAR)).astype(np.float32)
    zoomed = np.asarray(tiling.similarity_warp(jnp.asarray(im, jnp.float32), 2.0, 0.0, out_shape=(256, 256)))
    assert np.abs(zoomed - up)[4:-4, 4:-4].mean() < 1.0


def _lattice_image(period=16, size=256, seed=0):
    """A photograph plus a faint sum of the band-3 sinusoids with random signs (the carrier's spectrum)."""
    rng = np.random.default_rng(seed)
    im = bundled_source("val").sample(rng, size, 1)[0].astype(np.float64)
    pattern = harmonic_basis(period, 3) @ rng.choice([-1.0, 1.0], 48)
    mark = np.tile(pattern, (size // period, size // period)) * 1.5 / np.sqrt(48)
    return np.clip(np.round(im + mark[..., None]), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("edit, scale, angle", [
    ("none", 1.0, 0.0), ("rotate", 1.0, 5.0), ("rotate", 1.0, -8.0), ("resize", 0.6, 0.0), ("resize", 1.7, 0.0),
    ("both", 1.3, 3.0)])
def test_estimate_geometry_recovers_known_edits(edit, scale, angle):
    im = Image.fromarray(_lattice_image())
    if edit in ("resize", "both"):
        im = im.resize((round(256 * scale),) * 2, Image.BILINEAR)
    if edit in ("rotate", "both"):
        im = im.rotate(angle, resample=Image.BILINEAR)
    y = np.asarray(im, np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    hs = np.asarray(harmonics(3))
    w = np.where((hs[:, 0] % 2 == 0) & (hs[:, 1] % 2 == 0), 0.0, np.hypot(hs[:, 0], hs[:, 1]))
    s, a, score = sync.estimate_geometry(y / 255.0, hs, w / w.sum(), 16)
    assert abs(np.log(s / scale)) < 0.006 and abs(a - angle) < sync.COARSE_ANGLE_STEP


def test_no_lattice_gives_a_low_score():
    im = bundled_source("val").sample(np.random.default_rng(3), 256, 1)[0]
    y = im.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32) / 255.0
    hs = np.asarray(harmonics(3))
    marked = _lattice_image(seed=3).astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32) / 255.0
    w = np.ones(len(hs)) / len(hs)
    assert sync.estimate_geometry(y, hs, w, 16)[2] < sync.estimate_geometry(marked, hs, w, 16)[2]


def _tiny_model():
    config = get_config("tiny")
    return WatermarkModel(config, init_variables(config, jax.random.key(0)))


def test_cascade_stages_and_budget():
    model = _tiny_model()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), np.uint8), rng.integers(0, 256, (50, 36, 3), np.uint8)]
    key = rng.integers(0, 2, 48)
    recs = sync.detect_cascade(model, images, key, fpr=1e-3, candidates=8)
    tau = {"tile": detect.threshold(48, 5e-4), "sync": detect.threshold(48, 5e-4 / 8)}  # Bonferroni
    for r, im in zip(recs, images):
        assert r["stage"] in ("tile", "sync") and r["detected"] == (r["matches"] >= tau[r["stage"]])
        assert r["logits"].shape == (48,) and r["p_value"] == pytest.approx(detect.p_value(r["matches"], 48))
        if r["stage"] == "sync":  # the shortlist's alignment agreeing best with the key
            cands = sync.read_candidates(model, im, 8)
            m = np.sum((cands.logits > 0) == (key > 0), axis=1)
            assert r["matches"] == m.max() and len(cands.logits) == 8
    assert all(r["stage"] == "sync" for r in recs if not r["detected"])
    only_tile = sync.detect_cascade(model, images, key, fpr=1e-3, sync=False)
    assert all(r["stage"] == "tile" for r in only_tile)
    with pytest.raises(ValueError, match="key_bits"):
        sync.detect_cascade(model, images, np.zeros((3, 48)))


def test_shortlist_is_key_blind_and_ranked_by_the_sign_invariant_score():
    """The shortlist is the same whatever the key, flipping every logit's sign leaves the ranking, and the ranking
    is by L1 / L2 computed here from scratch over all p x p shifts."""
    import jax.numpy as jnp

    model = _tiny_model()
    im = np.random.default_rng(2).integers(0, 256, (48, 40, 3), np.uint8)
    cands = sync.read_candidates(model, im, 10)
    c = model.config
    frame = sync.to_frame(im, c)
    canvas = sync.canvas_shape(round(frame.shape[0] / cands.scale), round(frame.shape[1] / cands.scale))
    full = np.asarray(sync._warped_logits(c, model.variables["extractor"], jnp.asarray(frame),
                                          jnp.asarray([cands.scale, cands.angle], jnp.float32), canvas, None))
    like = np.abs(full).sum(-1) / np.linalg.norm(full, axis=-1)
    best = np.argsort(-like.ravel(), kind="stable")[:10]
    np.testing.assert_array_equal(cands.shifts, np.stack(np.unravel_index(best, like.shape), -1))
    np.testing.assert_allclose(cands.logits, full.reshape(-1, c.bits)[best], rtol=1e-6)
    assert sync.choose(cands) == (0, 1)
    i, spent = sync.choose(cands, np.zeros(c.bits, np.uint8))
    assert spent == 10 and i == int(np.argmax(np.sum(cands.logits <= 0, axis=1)))
    with pytest.raises(ValueError, match="candidates"):
        sync.read_candidates(model, im, 0)


def test_sync_needs_a_band_limited_carrier():
    config = get_config("tiny", ["carrier_band=0", "luma=false"])
    model = WatermarkModel(config, init_variables(config, jax.random.key(0)))
    with pytest.raises(ValueError, match="band-limited periodic carrier"):
        sync.detect_cascade(model, [np.zeros((32, 32, 3), np.uint8)], np.zeros(48, np.int64))
