import jax
import numpy as np
import pytest

from qrjax.data import bundled_images
from qrjax.ecc import get_code
from qrjax.watermark import WatermarkModel, detect, embed, extract, get_config, load_pretrained
from qrjax.watermark.model import init_variables


@pytest.fixture(scope="module")
def tiny_model():
    config = get_config("tiny")
    return WatermarkModel(config, init_variables(config, jax.random.key(0)))


@pytest.fixture(scope="module")
def photos():
    imgs = bundled_images(("grace_hopper", "coffee"))
    return imgs["grace_hopper"], imgs["coffee"]


def test_embed_any_size_stays_within_the_strength_bound(tiny_model, photos):
    config = tiny_model.config
    bits = np.random.default_rng(0).integers(0, 2, config.bits)
    batch = np.stack([photos[0][:32, :32], photos[1][:32, :32]])
    out = embed(tiny_model, batch, bits)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    bound = np.ceil(config.strength * 255 + 0.5)  # tanh residual times strength, plus rounding to uint8
    sized = embed(tiny_model, [photos[0][:50, :70], photos[1][:40, :33]], bits)
    for src, dst in [(batch[0], out[0]), (batch[1], out[1]), (photos[0][:50, :70], sized[0]),
                     (photos[1][:40, :33], sized[1])]:
        assert dst.shape == src.shape
        assert np.abs(dst.astype(int) - src).max() <= bound
    logits = extract(tiny_model, out)
    assert logits.shape == (2, config.bits)
    assert extract(tiny_model, [out[0], photos[0][:8, :9]]).shape == (2, config.bits)  # small image scaled to a tile


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
    """A real check of the shipped weights on held-out images: a regression floor below the measured 0.80."""
    model = load_pretrained()
    images = _held_out_crops()
    bits = np.random.default_rng(3).integers(0, 2, (len(images), model.config.bits))
    marked = embed(model, images, bits)
    mse = np.mean((marked.astype(float) - images) ** 2, axis=(1, 2, 3))
    assert np.all(10 * np.log10(255**2 / mse) >= 38.0)
    marked_acc = np.mean((extract(model, marked, key=jax.random.key(1)) > 0) == bits)
    clean_acc = np.mean((extract(model, images, key=jax.random.key(1)) > 0) == bits)
    assert marked_acc >= 0.70, marked_acc
    assert abs(clean_acc - 0.5) < 0.06, clean_acc


@pytest.mark.xfail(strict=True, reason="the shipped cpu model reaches 0.80 bit accuracy, not enough for BCH(48,36) "
                                       "to recover a payload (issue 3 targets not met); remove when a model that "
                                       "does is shipped")
def test_shipped_model_recovers_a_payload_from_held_out_images():
    model = load_pretrained()
    code = get_code("qrmark-bch")
    payload = np.random.default_rng(7).integers(0, 2, (1, code.payload_bits)).astype(np.uint8)
    bits = np.asarray(code.encode(payload))[0]
    images = _held_out_crops(4)
    logits = extract(model, embed(model, images, bits), key=jax.random.key(1))
    dec = detect.decode_payload(code, logits, method="chase")
    np.testing.assert_array_equal(np.asarray(dec.payload), np.repeat(payload, len(images), 0))
    assert np.asarray(detect.detect(logits, bits[None], fpr=1e-6)[0]).all()
