import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax import tiling


@pytest.mark.parametrize("h,w,tile,stride", [(64, 64, 16, 16), (70, 50, 16, 16), (64, 96, 32, 24), (33, 33, 33, 5)])
def test_grid_covers_image_with_cells_inside(h, w, tile, stride):
    g = tiling.grid(h, w, tile, stride)
    o = g.origins()
    assert o.shape == (len(g), 2) and len(g) == g.rows * g.cols
    assert np.all(o >= 0) and np.all(o[:, 0] + tile <= h) and np.all(o[:, 1] + tile <= w)
    covered = np.zeros((h, w), bool)
    for y, x in o:
        covered[y:y + tile, x:x + tile] = True
    assert covered.all()
    # consecutive starts never step by more than the stride
    assert np.all(np.diff(np.unique(o[:, 0])) <= stride) and np.all(np.diff(np.unique(o[:, 1])) <= stride)


def test_grid_rejects_a_tile_larger_than_the_image():
    with pytest.raises(ValueError, match="does not fit"):
        tiling.grid(32, 64, 48)


def test_extract_matches_numpy_slicing(rng):
    images = rng.normal(size=(5, 40, 30, 3)).astype(np.float32)
    origins = np.stack([rng.integers(0, 40 - 8 + 1, 5), rng.integers(0, 30 - 8 + 1, 5)], -1).astype(np.int32)
    got = np.asarray(jax.jit(tiling.extract, static_argnums=2)(jnp.asarray(images), jnp.asarray(origins), 8))
    want = np.stack([images[i, y:y + 8, x:x + 8] for i, (y, x) in enumerate(origins)])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("placement", ["fixed", "random_grid", "random"])
def test_placements_stay_inside_and_align(placement):
    o = np.asarray(tiling.place(jax.random.key(0), 4096, 64, 96, 16, placement, cell=(2, 3)))
    assert o.shape == (4096, 2) and o.dtype == np.int32
    assert np.all(o >= 0) and np.all(o[:, 0] <= 48) and np.all(o[:, 1] <= 80)
    if placement == "fixed":
        assert np.all(o == [32, 48])
    elif placement == "random_grid":
        assert np.all(o % 16 == 0)
        assert len({tuple(r) for r in o}) == 4 * 6  # every aligned cell is drawn
    else:
        assert len(np.unique(o[:, 0])) == 49 and len(np.unique(o[:, 1])) == 81


def test_place_errors_name_the_problem():
    with pytest.raises(ValueError, match="outside the 4x4 grid"):
        tiling.place(None, 1, 64, 64, 16, "fixed", cell=(4, 0))
    with pytest.raises(ValueError, match="unknown placement"):
        tiling.place(jax.random.key(0), 1, 64, 64, 16, "diagonal")


def test_stitch_inverts_extract_grid_and_averages_overlaps(rng):
    x = jnp.asarray(rng.normal(size=(2, 48, 64, 3)).astype(np.float32))
    g = tiling.grid(48, 64, 16)
    np.testing.assert_array_equal(np.asarray(tiling.stitch(tiling.extract_grid(x, g), g)), np.asarray(x))
    g2 = tiling.grid(48, 64, 16, stride=10)  # overlapping cells of the same image stitch back to it
    np.testing.assert_allclose(np.asarray(tiling.stitch(tiling.extract_grid(x, g2), g2)), np.asarray(x), atol=1e-6)
    tiles = jnp.broadcast_to(jnp.arange(len(g2), dtype=jnp.float32)[None, :, None, None, None], (1, len(g2), 16, 16, 1))
    out = np.asarray(tiling.stitch(tiles, g2))[0, ..., 0]
    # brute force: mean of the ids of the cells covering each pixel
    acc, cnt = np.zeros((48, 64)), np.zeros((48, 64))
    for i, (y, xx) in enumerate(g2.origins()):
        acc[y:y + 16, xx:xx + 16] += i
        cnt[y:y + 16, xx:xx + 16] += 1
    np.testing.assert_allclose(out, acc / cnt, rtol=1e-6)
