"""Watermark training losses.

- `bit_loss`: binary cross-entropy of extractor logits against the embedded bits.
- `image_loss`: mean squared residual, normalised by strength^2 so 1.0 means a saturated mark everywhere.
- `ecc_loss`: a differentiable stand-in for "more symbol errors than the code corrects". QRMark's RS-aware loss counts
  errors under no_grad and so has zero gradient; here a symbol's error probability is
  1 - prod_bits(1 - sigmoid(-y * logit)) (y = +-1 the true bit), the expected number of wrong symbols E is their sum,
  and the loss is mean(relu(E - t)): zero while the word is comfortably decodable, pushing only on words that are not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def bit_loss(logits: jax.Array, bits: jax.Array) -> jax.Array:
    """logits: f32[B, L], bits: {0,1}[B, L] -> scalar BCE."""
    return optax.sigmoid_binary_cross_entropy(logits, bits.astype(logits.dtype)).mean()


def image_loss(residual: jax.Array, strength: float) -> jax.Array:
    """residual: f32[B, H, W, 3] in [0, 1] units -> mean(residual^2) / strength^2."""
    return jnp.mean(jnp.square(residual)) / strength**2


def expected_symbol_errors(logits: jax.Array, bits: jax.Array, symbol_bits: int) -> jax.Array:
    """f32[B]: expected number of wrong symbols when bits are grouped MSB-first into symbol_bits-bit symbols."""
    y = 2.0 * bits.astype(logits.dtype) - 1.0
    log_right = jax.nn.log_sigmoid(y * logits)  # log P(bit decided correctly)
    b, n = logits.shape
    if n % symbol_bits:
        raise ValueError(f"{n} bits do not split into {symbol_bits}-bit symbols")
    p_symbol_right = jnp.exp(log_right.reshape(b, n // symbol_bits, symbol_bits).sum(-1))
    return jnp.sum(1.0 - p_symbol_right, axis=-1)


def ecc_loss(logits: jax.Array, bits: jax.Array, symbol_bits: int, t: int) -> jax.Array:
    """mean(relu(E - t)), E = expected wrong symbols per word; symbol_bits=8 for RS over GF(2^8), 1 for binary BCH."""
    return jnp.mean(jax.nn.relu(expected_symbol_errors(logits, bits, symbol_bits) - t))
