import jax
import numpy as np
import pytest

from qrjax.data import bundled_images
from qrjax.ecc import get_code
from qrjax.watermark import WatermarkModel, detect, embed, extract, get_config, load_pretrained
from qrjax.watermark.model import init_variables
from tests.xla_mode import optimized


def _init(config):
    # one compiled init: op by op, flax's init compiles every small op apart (12 s here)
    return WatermarkModel(config, jax.jit(init_variables, static_argnums=0)(config, jax.random.key(0)))


@pytest.fixture(scope="module")
def tiny_model():
    return _init(get_config("tiny"))


@pytest.fixture(scope="module")
def photos():
    imgs = bundled_images(("grace_hopper", "coffee"))
    return imgs["grace_hopper"], imgs["coffee"]


def within_strength(config, src, dst) -> bool:
    """A band-limited model's residual has RMS strength (the PSNR is fixed); an unrestricted one's is tanh-bounded
    (a peak bound); plus uint8 rounding, and the linear resampling of the residual only lowers either."""
    d = dst.astype(float) - src
    if config.carrier_band:
        return np.sqrt(np.mean(d ** 2)) <= np.hypot(config.strength * 255, 0.5)
    return np.abs(d).max() <= np.ceil(config.strength * 255 + 0.5)


@pytest.mark.parametrize("band", [True, False])
def test_embed_any_size_stays_within_the_strength_bound(tiny_model, photos, band):
    if not band:
        tiny_model = _init(get_config("tiny", ["carrier_band=0", "luma=false"]))
    config = tiny_model.config
    bits = np.random.default_rng(0).integers(0, 2, config.bits)
    batch = np.stack([photos[0][:32, :32], photos[1][:32, :32]])
    out = embed(tiny_model, batch, bits)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    sized = embed(tiny_model, [photos[0][:50, :70], photos[1][:40, :33]], bits)
    for src, dst in [(batch[0], out[0]), (batch[1], out[1]), (photos[0][:50, :70], sized[0]),
                     (photos[1][:40, :33], sized[1])]:
        assert dst.shape == src.shape
        assert within_strength(config, src, dst)
        if config.luma:  # one luma plane: R, G and B move together (up to clipping at 0 and 255)
            d = dst.astype(int) - src
            inside = (dst > 0).all(-1) & (dst < 255).all(-1)  # not clipped
            assert np.abs(d[..., 0] - d[..., 1])[inside].max() <= 1 and np.abs(d[..., 0] - d[..., 2])[inside].max() <= 1
    logits = extract(tiny_model, out)
    assert logits.shape == (2, config.bits)
    assert extract(tiny_model, [out[0], photos[0][:8, :9]]).shape == (2, config.bits)  # small image scaled to a tile


def test_refinement_lowers_the_extractor_loss_within_the_same_bound(tiny_model, photos):
    """Informed embedding against an independent computation of the loss it descends (bit BCE over every grid tile,
    read back from the uint8 output): more steps give a lower loss, within the same strength bound."""
    from qrjax import tiling
    from qrjax.watermark.embed import extractor_logits

    config = tiny_model.config
    bits = np.random.default_rng(1).integers(0, 2, (2, config.bits))
    batch = np.stack([photos[0][100:132, 200:232], photos[1][50:82, 80:112]])
    g = tiling.grid(32, 32, config.tile)
    sign = np.repeat(2.0 * bits - 1, len(g), axis=0)

    def bce(marked):
        tiles = tiling.extract_grid(marked.astype(np.float32) / 255.0, g).reshape(-1, config.tile, config.tile, 3)
        logits = np.asarray(extractor_logits(config, tiny_model.variables["extractor"], tiles)[0], np.float64)
        return np.mean(np.logaddexp(0.0, -sign * logits))

    losses = []
    for steps in (0, 5, 30):
        out = embed(tiny_model, batch, bits, refine_steps=steps)
        assert all(within_strength(config, batch[i], out[i]) for i in range(2))
        losses.append(bce(out))
    assert losses[0] > losses[1] > losses[2], losses
    with pytest.raises(ValueError, match="refine_steps: expected >= 0"):
        embed(tiny_model, batch, bits, refine_steps=-1)
    with pytest.raises(ValueError, match="placement 'random': this model demodulates"):
        extract(tiny_model, batch, placement="random")
    with pytest.raises(ValueError, match="tile 12: this model demodulates"):
        extract(tiny_model, batch, tile=12)


def test_embed_rejects_bad_input(tiny_model, photos):
    with pytest.raises(ValueError, match=r"payload_bits: expected 0/1 bits of shape \(1, 48\)"):
        embed(tiny_model, photos[0][:32, :32], np.ones(47, int))
    with pytest.raises(ValueError, match="images: expected uint8"):
        embed(tiny_model, photos[0][:32, :32].astype(np.float32), np.ones(48, int))
    with pytest.raises(ValueError, match=r"images\[1\]: expected uint8\[H, W, 3\]"):
        embed(tiny_model, [photos[0][:32, :32], photos[0][:32, :32, 0]], np.ones(48, int))


def _held_out_crops(n=16):
    from qrjax.data import bundled_source

    return bundled_source("val", area=(0.15, 1.0)).sample(np.random.default_rng(11), 256, n)


def test_shipped_model_reads_its_own_marks_and_not_clean_images():
    """A real check of the shipped weights on held-out images: a regression floor below the measured 0.99."""
    model = load_pretrained()
    images = _held_out_crops()
    bits = np.random.default_rng(3).integers(0, 2, (len(images), model.config.bits))
    with optimized():  # the refined embedding: 16 images of 256^2 take minutes unoptimised
        marked = embed(model, images, bits)
    mse = np.mean((marked.astype(float) - images) ** 2, axis=(1, 2, 3))
    assert np.all(10 * np.log10(255**2 / mse) >= 38.0)
    marked_acc = np.mean((extract(model, marked, key=jax.random.key(1)) > 0) == bits)
    clean_acc = np.mean((extract(model, images, key=jax.random.key(1)) > 0) == bits)
    assert marked_acc >= 0.95, marked_acc
    assert abs(clean_acc - 0.5) < 0.06, clean_acc


def test_shipped_model_recovers_a_payload_from_held_out_images():
    model = load_pretrained()
    code = get_code("qrmark-bch")
    payload = np.random.default_rng(7).integers(0, 2, (1, code.payload_bits)).astype(np.uint8)
    bits = np.asarray(code.encode(payload))[0]
    images = _held_out_crops(4)
    with optimized():
        marked = embed(model, images, bits)
    logits = extract(model, marked, key=jax.random.key(1))
    dec = detect.decode_payload(code, logits, method="chase")
    np.testing.assert_array_equal(np.asarray(dec.payload), np.repeat(payload, len(images), 0))
    assert np.asarray(detect.detect(logits, bits[None], fpr=1e-6)[0]).all()
