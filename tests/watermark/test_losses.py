import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qrjax.watermark import losses


@pytest.mark.parametrize("symbol_bits", [1, 4, 8])
def test_expected_symbol_errors_by_enumeration(rng, symbol_bits):
    logits = rng.normal(scale=2.0, size=(3, 16)).astype(np.float32)
    bits = rng.integers(0, 2, (3, 16))
    got = np.asarray(losses.expected_symbol_errors(jnp.asarray(logits), jnp.asarray(bits), symbol_bits))
    p_wrong = 1 / (1 + np.exp(np.where(bits == 1, logits, -logits)))  # P(bit decided wrong)
    for b in range(3):
        want = 0.0
        for s in range(16 // symbol_bits):
            q = p_wrong[b, s * symbol_bits:(s + 1) * symbol_bits]
            # enumerate every error pattern of the symbol: P(at least one bit wrong)
            for pattern in itertools.product([0, 1], repeat=symbol_bits):
                if any(pattern):
                    want += np.prod([q[i] if e else 1 - q[i] for i, e in enumerate(pattern)])
        assert got[b] == pytest.approx(want, rel=1e-5)


def test_ecc_loss_is_zero_inside_the_radius_and_pushes_outside():
    bits = jnp.ones((2, 8), jnp.int32)
    confident = jnp.full((2, 8), 8.0)
    assert float(losses.ecc_loss(confident, bits, 1, 2)) == pytest.approx(0.0, abs=1e-3)
    g = jax.grad(lambda x: losses.ecc_loss(x, bits, 1, 2))(jnp.zeros((2, 8)))  # E = 4 > t = 2
    assert np.all(np.asarray(g) < 0)  # raising the right logits lowers the loss


def test_bit_and_image_losses(rng):
    logits = rng.normal(size=(4, 6)).astype(np.float32)
    bits = rng.integers(0, 2, (4, 6))
    want = np.mean(np.log1p(np.exp(-logits)) * bits + np.log1p(np.exp(logits)) * (1 - bits))
    assert float(losses.bit_loss(jnp.asarray(logits), jnp.asarray(bits))) == pytest.approx(want, rel=1e-5)
    assert float(losses.image_loss(jnp.full((1, 2, 2, 3), 0.01), 0.01)) == pytest.approx(1.0)
