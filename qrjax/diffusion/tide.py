"""TIDE: training-free resolution extrapolation of a text-conditioned DiT, and the baselines it is measured against.

Above the training resolution a joint-attention DiT sees N image tokens where it was trained on N_train, next to the
same T text tokens. Two things drift (TIDE, arXiv 2603.08928):
- the prompt's share of attention shrinks: with logits of similar size, the text keys' share of a query's softmax
  mass falls roughly as T / (T + N), so the prompt loses its grip on the image (colours wash out, objects go astray);
- attention spreads: the softmax entropy grows like log N, so every query averages over more of the canvas.

Corrections (`CORRECTIONS`), each an `AttentionControl` per denoising step (qrjax.diffusion.model):
- "none": the model as trained;
- "fixed": the usual attention scaling, every logit multiplied by log(N + T) / log(N_train + T) at every step
  (fixed sharpening; entropy-matching at all noise levels);
- "tide": text anchoring plus a step-aware temperature:
  * anchoring adds log(N / N_train) to the logits of the text keys, i.e. multiplies the text tokens' unnormalised
    attention weight by N / N_train, which restores the text-to-image weight ratio of the training resolution;
  * the temperature sharpens by 1 + (lambda - 1) * t ** power, lambda = log(N + T) / log(N_train + T), t the flow time
    (1 = noise): full sharpening while the layout forms at high noise, none at the last steps, where attention is
    local and fixed sharpening turns into the grainy artifacts TIDE's paper shows.
- "anchor" and "temperature": one of TIDE's two parts alone (ablations).
At or below the training resolution every correction is the identity (N <= N_train).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from qrjax.diffusion.model import AttentionControl

CORRECTIONS = ("none", "fixed", "tide", "anchor", "temperature")


def sharpening(n_image: int, n_train: int, n_text: int) -> float:
    """lambda = log(N + T) / log(N_train + T): the entropy-matching logit scale (1 at the training size)."""
    return max(1.0, math.log(n_image + n_text) / math.log(n_train + n_text))


@dataclasses.dataclass(frozen=True)
class Correction:
    """A correction's constants; called with the flow time t (a scalar, possibly traced) it gives the step's
    AttentionControl. Frozen and hashable, so jitted samplers take it as a static argument."""

    kind: str
    lam: float  # the full sharpening log(N + T) / log(N_train + T)
    bias: float  # the text anchor log(N / N_train)
    power: float = 1.0

    def __call__(self, t) -> AttentionControl:
        if self.kind == "fixed":
            return AttentionControl(self.lam, 0.0)
        dynamic = self.kind in ("tide", "temperature")
        scale = 1.0 + (self.lam - 1.0) * jnp.asarray(t, jnp.float32) ** self.power if dynamic else 1.0
        return AttentionControl(scale, self.bias if self.kind in ("tide", "anchor") else 0.0)


def attention_control(correction: str, n_image: int, n_train: int, n_text: int,
                      power: float = 1.0) -> Correction | None:
    """None (no correction, or a canvas no larger than the training one) or the step-wise Correction."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction {correction!r}: choose from {CORRECTIONS}")
    if power <= 0:
        raise ValueError(f"temperature power {power}: must be > 0")
    if correction == "none" or n_image <= n_train:
        return None
    return Correction(correction, sharpening(n_image, n_train, n_text), math.log(n_image / n_train), float(power))


__all__ = ["CORRECTIONS", "Correction", "attention_control", "sharpening"]
