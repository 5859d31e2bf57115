import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.tile_preprocess import BlockSizes, tile_preprocess, tile_preprocess_reference
from qrjax import tiling

# (batch, window h, window w, tile, block h, block w); interpret mode keeps the grids small.
CPU_CASES = [
    pytest.param(3, 40, 72, 16, 32, 16, id="non-square-padded-2x5-steps"),
    pytest.param(1, 16, 16, 64, 32, 16, id="tile-larger-than-window"),
    pytest.param(1, 16, 16, 16, None, 16, id="smallest"),
    pytest.param(1, 129, 72, 64, 32, None, id="odd-height-5-row-steps"),
    pytest.param(1, 40, 72, 64, None, None, id="default-blocks-tile64"),
    pytest.param(1, 40, 72, 16, None, None, id="default-blocks-tile16"),
    pytest.param(1, 16, 16, 16, 32, 16, id="block-taller-than-window"),
    pytest.param(3, 16, 72, 16, None, 16, id="wide-window-5-column-steps"),
]


def _inputs(b, h, w, t, seed=0):
    rng = np.random.default_rng(seed)
    win = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
    ry = rng.random((b, t, h), dtype=np.float32) / h
    rx = rng.random((b, t, w), dtype=np.float32) / w
    return jnp.asarray(win), jnp.asarray(ry), jnp.asarray(rx)


def _check(b, h, w, t, bh, bw, interpret):
    win, ry, rx = _inputs(b, h, w, t)
    out = tile_preprocess(win, ry, rx, block_sizes=BlockSizes(bh, bw), interpret=interpret)
    want = tile_preprocess_reference(win, ry, rx)
    assert out.shape == (b, t, t, 3) and out.dtype == jnp.float32
    err = np.abs(np.asarray(out) - np.asarray(want))
    assert err.max() < 1e-5 and err.mean() < 1e-6


@pytest.mark.parametrize("b, h, w, t, bh, bw", CPU_CASES)
def test_kernel_matches_reference_interpret(b, h, w, t, bh, bw):
    _check(b, h, w, t, bh, bw, interpret=True)


@pytest.mark.parametrize("shape, origin", [((512, 512), (0, 0)), ((600, 400), (192, 64)), ((256, 256), (64, 128)),
                                           ((40, 50), (0, 16))])
def test_reference_equals_resize_crop_normalise(shape, origin):
    """Independent check: jax.image.resize of the whole image, crop, x * 2/255 - 1."""
    h, w = shape
    img = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out_hw = tiling.read_shape(h, w, 256, 64)
    src = tiling.tile_source(h, w, out_hw, origin, 64)
    y0, y1, x0, x1 = src.window
    got = tile_preprocess_reference(jnp.asarray(img[None, y0:y1, x0:x1]), jnp.asarray(src.ry[None]),
                                    jnp.asarray(src.rx[None]))[0]
    full = jax.image.resize(jnp.asarray(img, jnp.float32), out_hw + (3,), "linear", antialias=True)
    want = full[origin[0]:origin[0] + 64, origin[1]:origin[1] + 64] * (2 / 255) - 1
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)


def test_kernel_on_padded_windows_ignores_padding():
    win, ry, rx = _inputs(2, 30, 20, 16)
    pad_win = jnp.pad(win, ((0, 0), (0, 34), (0, 12), (0, 0)), constant_values=255)
    pad_ry = jnp.pad(ry, ((0, 0), (0, 0), (0, 34)))
    pad_rx = jnp.pad(rx, ((0, 0), (0, 0), (0, 12)))
    np.testing.assert_allclose(np.asarray(tile_preprocess(pad_win, pad_ry, pad_rx, interpret=True)),
                               np.asarray(tile_preprocess_reference(win, ry, rx)), atol=1e-5)


def test_rejects_bad_inputs():
    win, ry, rx = _inputs(1, 16, 16, 16)
    with pytest.raises(ValueError, match="uint8"):
        tile_preprocess(win.astype(jnp.float32), ry, rx)
    with pytest.raises(ValueError, match="do not match"):
        tile_preprocess(win, ry[:, :, :8], rx)


@pytest.mark.parametrize("b, h, w, t", [pytest.param(64, 192, 192, 64, id="production-512px-image"),
                                         pytest.param(3, 129, 72, 16, id="odd-window-tile16")])
def test_lowers_to_triton_without_gpu(b, h, w, t):
    """The GPU path lowers for CUDA on a CPU-only machine, so Triton lowering errors show up before a GPU run."""
    args = (jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8), jax.ShapeDtypeStruct((b, t, h), jnp.float32),
            jax.ShapeDtypeStruct((b, t, w), jnp.float32))
    fn = jax.jit(lambda win, ry, rx: tile_preprocess(win, ry, rx, interpret=False))
    assert "triton" in fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text().lower()


def test_gpu_path_names_non_power_of_two_tiles():
    win, ry, rx = _inputs(1, 40, 40, 24)
    with pytest.raises(ValueError, match="tile side T must be a power of two >= 16, got 24"):
        tile_preprocess(win, ry, rx, interpret=False)


# GPU, Triton lowering: chosen shapes. Windows are what `qrjax.watermark.pipeline` batches: the source pixels behind
# one 64-pixel tile of the 256-pixel working image, bucketed to multiples of 64.
# (batch, window h, window w, tile, block h, block w)
GPU_CASES = [
    pytest.param(1, 16, 16, 16, None, None, id="smallest"),
    pytest.param(3, 129, 72, 16, 32, 16, id="odd-window-padded-blocks-32x16"),
    pytest.param(3, 40, 16, 64, None, 16, id="non-square-tall-tile-larger-than-window"),
    pytest.param(8, 64, 64, 16, None, None, id="tiny-preset-32px-working-16px-tile"),
    pytest.param(256, 64, 64, 64, None, None, id="production-256px-images"),
    pytest.param(256, 192, 192, 64, None, None, id="production-512px-images"),
    pytest.param(64, 320, 256, 64, 64, 64, id="production-1024x768-images"),
    pytest.param(64, 1024, 768, 64, 128, 128, id="largest-4000x3000-photos"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("b, h, w, t, bh, bw", GPU_CASES)
def test_kernel_matches_reference_gpu(b, h, w, t, bh, bw):
    _check(b, h, w, t, bh, bw, interpret=False)
