"""The PCA patch autoencoder: space-to-depth against a brute-force loop, PCA against numpy's SVD maths."""

import flax.serialization
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.diffusion.autoencoder import Autoencoder, fit_pca, pixel_autoencoder, shuffle, unshuffle


def _images(rng, n=6, h=8, w=12):
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def _to_unit(images_u8):
    return images_u8.astype(np.float32) / 127.5 - 1.0


@pytest.mark.parametrize("f, shape", [(2, (2, 3, 8, 12, 3)), (4, (8, 16, 5)), (1, (4, 6, 3))])
def test_shuffle_inverts_unshuffle_exactly(rng, f, shape):
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    z = unshuffle(x, f)
    *lead, h, w, c = shape
    assert z.shape == (*lead, h // f, w // f, f * f * c)
    np.testing.assert_array_equal(np.asarray(shuffle(z, f)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(unshuffle(shuffle(z, f), f)), np.asarray(z))


@pytest.mark.parametrize("f, c", [(2, 3), (3, 2)])
def test_unshuffle_matches_a_brute_force_loop(rng, f, c):
    x = rng.normal(size=(2, 2 * f, 3 * f, c)).astype(np.float32)
    want = np.zeros((2, 2, 3, f * f * c), np.float32)
    for n in range(2):
        for i in range(2):
            for j in range(3):
                for a in range(f):  # row inside the block
                    for b in range(f):  # column inside the block
                        for k in range(c):
                            want[n, i, j, (a * f + b) * c + k] = x[n, i * f + a, j * f + b, k]
    np.testing.assert_array_equal(np.asarray(unshuffle(jnp.asarray(x), f)), want)


def test_unshuffle_names_a_size_not_divisible_by_the_factor():
    with pytest.raises(ValueError, match=r"image 7x8 is not divisible by the autoencoder factor 2"):
        unshuffle(jnp.zeros((1, 7, 8, 3)), 2)
    with pytest.raises(ValueError, match=r"image 8x6 is not divisible by the autoencoder factor 4"):
        unshuffle(jnp.zeros((8, 6, 3)), 4)


def test_fit_pca_rejects_impossible_channel_counts(rng):
    with pytest.raises(ValueError, match="13 latent channels for 2x2x3 patches"):
        fit_pca(_images(rng), 2, 13)
    with pytest.raises(ValueError, match="0 latent channels"):
        fit_pca(_images(rng), 2, 0)


def test_full_rank_pca_reconstructs_exactly_with_orthonormal_components(rng):
    images = _images(rng)
    ae = fit_pca(images, 2, 12)
    assert ae.channels == 12 and ae.components.dtype == np.float32
    c = ae.components.astype(np.float64)
    np.testing.assert_allclose(c @ c.T, np.eye(12), atol=1e-5)
    x = jnp.asarray(_to_unit(images))
    z = ae.encode(x)
    assert z.shape == (6, 4, 6, 12)
    np.testing.assert_allclose(np.asarray(ae.decode(z)), np.asarray(x), atol=1e-5)


def _centered_patches(images, f):
    """numpy-only patches (row-major f x f blocks, channels last), independent of `unshuffle`."""
    x = images.astype(np.float64) / 127.5 - 1.0
    n, h, w, c = x.shape
    p = x.reshape(n, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, f * f * c)
    return p - p.mean(0)


@pytest.mark.parametrize("k", [1, 5, 9])
def test_truncated_pca_loses_exactly_the_dropped_singular_energy(rng, k):
    images = _images(rng)
    ae = fit_pca(images, 2, k)
    s = np.linalg.svd(_centered_patches(images, 2), compute_uv=False)
    dropped = float(np.sum(s[k:] ** 2))
    x = _to_unit(images)
    recon = np.asarray(ae.decode(ae.encode(jnp.asarray(x))), np.float64)
    err = float(np.sum((recon - x.astype(np.float64)) ** 2))  # shuffle is a permutation: pixel error = patch error
    assert err == pytest.approx(dropped, rel=1e-4)
    # and the kept components span the top-k right singular subspace: projectors agree
    _, _, vt = np.linalg.svd(_centered_patches(images, 2), full_matrices=False)
    c = ae.components.astype(np.float64)
    np.testing.assert_allclose(c.T @ c, vt[:k].T @ vt[:k], atol=1e-5)


def test_latents_of_the_fitting_set_have_zero_mean_and_unit_variance(rng):
    images = _images(rng, n=8, h=16, w=16)
    ae = fit_pca(images, 2, 6)
    z = np.asarray(ae.encode(jnp.asarray(_to_unit(images))), np.float64).reshape(-1, 6)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.var(0), 1.0, rtol=1e-4)
    # the scales are the singular values over sqrt(N), largest first
    s = np.linalg.svd(_centered_patches(images, 2), compute_uv=False)
    np.testing.assert_allclose(ae.scale, s[:6] / np.sqrt(len(z)), rtol=1e-5)
    assert np.all(np.diff(ae.scale) <= 0)


def test_pixel_autoencoder_is_a_rescaling_to_unit_range(rng):
    ae = pixel_autoencoder()
    x = rng.uniform(-1, 1, size=(2, 4, 6, 3)).astype(np.float32)
    z = np.asarray(ae.encode(jnp.asarray(x)))
    np.testing.assert_allclose(z, 2.0 * x, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(ae.decode(jnp.asarray(z))), x, rtol=1e-6)


def test_to_dict_from_dict_round_trip_through_msgpack(rng):
    images = _images(rng)
    ae = fit_pca(images, 2, 5)
    blob = flax.serialization.msgpack_serialize(ae.to_dict())
    back = Autoencoder.from_dict(flax.serialization.msgpack_restore(blob))
    assert isinstance(back, Autoencoder) and back.factor == 2 and isinstance(back.factor, int)
    for name in ("mean", "components", "scale"):
        got, want = getattr(back, name), getattr(ae, name)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    x = jnp.asarray(_to_unit(images))
    np.testing.assert_array_equal(np.asarray(back.encode(x)), np.asarray(ae.encode(x)))
