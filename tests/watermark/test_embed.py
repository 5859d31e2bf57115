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


def test_shipped_model_recovers_a_payload_from_held_out_images(photos):
    """A real check of the shipped weights on images never used in training."""
    model = load_pretrained()
    code = get_code("qrmark-bch")
    rng = np.random.default_rng(7)
    payload = rng.integers(0, 2, (1, code.payload_bits)).astype(np.uint8)
    bits = np.asarray(code.encode(payload))[0]
    crops = np.stack([photos[0][100:356, 100:356], photos[1][60:316, 200:456]])
    marked = embed(model, crops, bits)
    mse = np.mean((marked.astype(float) - crops) ** 2)
    assert 10 * np.log10(255**2 / mse) >= 38.0
    logits = extract(model, marked, key=jax.random.key(1))
    dec = detect.decode_payload(code, logits, method="chase")
    assert np.asarray(dec.ok).all()
    np.testing.assert_array_equal(np.asarray(dec.payload), np.repeat(payload, 2, 0))
    found, _, _ = detect.detect(logits, bits[None], fpr=1e-6)
    assert np.asarray(found).all()
    # the full-resolution photograph: residual computed at 256 px, upsampled; detection resizes back
    big = embed(model, photos[0], bits)
    dec = detect.decode_payload(code, extract(model, big[None]), method="chase")
    np.testing.assert_array_equal(np.asarray(dec.payload)[0], payload[0])
    # and clean images are not detected
    clean, _, _ = detect.detect(extract(model, crops), bits[None], fpr=1e-6)
    assert not np.asarray(clean).any()
