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


@pytest.mark.parametrize("n_in, n_out", [(512, 256), (600, 256), (256, 256), (40, 64), (333, 256), (7, 3)])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matrix_is_jax_image_resize(n_in, n_out, antialias):
    x = np.random.default_rng(n_in).random((n_in, 5)).astype(np.float32)
    want = jax.image.resize(jnp.asarray(x), (n_out, 5), "linear", antialias=antialias)
    got = tiling.resize_matrix(n_in, n_out, antialias) @ x.astype(np.float64)
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("h, w, origin", [(512, 512, (0, 0)), (600, 400, (192, 64)), (1000, 333, (64, 192)),
                                          (300, 200, (64, 0)), (40, 50, (0, 16))])
def test_tile_source_reads_only_its_window(h, w, origin):
    img = np.random.default_rng(0).random((h, w, 3))
    out_hw = tiling.read_shape(h, w, 256, 64)
    src = tiling.tile_source(h, w, out_hw, origin, 64)
    y0, y1, x0, x1 = src.window
    want = np.asarray(jax.image.resize(jnp.asarray(img, jnp.float32), out_hw + (3,), "linear"))
    want = want[origin[0]:origin[0] + 64, origin[1]:origin[1] + 64]
    got = np.einsum("ty,yxc,sx->tsc", src.ry, img[y0:y1, x0:x1], src.rx)
    np.testing.assert_allclose(got, want, atol=1e-5)
    poisoned = img.copy()  # pixels outside the window do not matter
    poisoned[y1:] = poisoned[:y0] = poisoned[:, x1:] = poisoned[:, :x0] = 1e6
    np.testing.assert_allclose(np.einsum("ty,yxc,sx->tsc", src.ry, poisoned[y0:y1, x0:x1], src.rx), got)
    for size, out, (a, b) in ((h, out_hw[0], (y0, y1)), (w, out_hw[1], (x0, x1))):
        scale = max(1.0, size / out)  # the tile's pixels plus the (widened) triangle's reach on each side
        assert b - a <= int(np.ceil(64 * size / out + 2 * scale)) + 1


def test_read_shape():
    assert tiling.read_shape(512, 768, 256, 64) == (256, 256)
    assert tiling.read_shape(200, 300, 256, 64) == (200, 300)  # below the working size: its own scale
    assert tiling.read_shape(32, 48, 256, 64) == (64, 96)  # below one tile: scaled up to one tile
    assert tiling.read_shape(32, 48, 256, None) == (32, 48)
    with pytest.raises(ValueError, match="does not fit"):
        tiling.tile_source(100, 100, (100, 100), (50, 0), 64)


def test_extract_grid_and_stitch_on_an_exact_partition_match_slicing(rng):
    # the reshape path (cells partition the image) against plain slicing, and stitch against writing slices back
    x = jnp.asarray(rng.normal(size=(2, 48, 32, 3)), jnp.float32)
    g = tiling.grid(48, 32, 16)
    tiles = np.asarray(tiling.extract_grid(x, g))
    want = np.stack([np.asarray(x)[:, y:y + 16, c:c + 16] for y, c in g.origins()], 1)
    np.testing.assert_array_equal(tiles, want)
    canvas = np.zeros((2, 48, 32, 3), np.float32)
    for n, (y, c) in enumerate(g.origins()):
        canvas[:, y:y + 16, c:c + 16] = 2.0 * want[:, n]
    np.testing.assert_array_equal(np.asarray(tiling.stitch(jnp.asarray(2.0 * want), g)), canvas)
