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

Positions (`POSITIONS`), independent of the correction: "interpolate" (the default of TextToImageConfig) scales the
image tokens' RoPE positions by the training grid over the canvas grid, so the canvas spans the position range the
model was trained on; "extend" lets them run on. Measured on the shipped model, extended positions repeat the
prompt's objects all over a 2x or 4x canvas whatever the attention does (the model places objects by their distance
to the picture's edges), so the corrections are compared on interpolated positions, with extended ones reported too
(experiments/text_to_image.py).
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


POSITIONS = ("extend", "interpolate")


@dataclasses.dataclass(frozen=True)
class Correction:
    """A correction's constants; called with the flow time t (a scalar, possibly traced) it gives the step's
    AttentionControl. Frozen and hashable, so jitted samplers take it as a static argument."""

    kind: str
    lam: float  # the full sharpening log(N + T) / log(N_train + T)
    bias: float  # the text anchor log(N / N_train)
    power: float = 1.0
    position_scale: tuple[float, float] = (1.0, 1.0)  # RoPE position factors (rows, cols)

    def __call__(self, t) -> AttentionControl:
        if self.kind == "none":
            return AttentionControl(1.0, 0.0, self.position_scale)
        if self.kind == "fixed":
            return AttentionControl(self.lam, 0.0, self.position_scale)
        dynamic = self.kind in ("tide", "temperature")
        scale = 1.0 + (self.lam - 1.0) * jnp.asarray(t, jnp.float32) ** self.power if dynamic else 1.0
        return AttentionControl(scale, self.bias if self.kind in ("tide", "anchor") else 0.0, self.position_scale)


def attention_control(correction: str, n_image: int, n_train: int, n_text: int, power: float = 1.0,
                      positions: str = "extend", grid: tuple[int, int] | None = None,
                      train_grid: tuple[int, int] | None = None) -> Correction | None:
    """None (no correction and positions extended, or a canvas no larger than the training one) or the step-wise
    Correction. positions: "extend" (RoPE positions continue past the training grid) or "interpolate" (positions
    scaled by train_grid / grid per axis, so the canvas spans the training grid's range; needs both grids)."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction {correction!r}: choose from {CORRECTIONS}")
    if positions not in POSITIONS:
        raise ValueError(f"positions {positions!r}: choose from {POSITIONS}")
    if power <= 0:
        raise ValueError(f"temperature power {power}: must be > 0")
    scale = (1.0, 1.0)
    if positions == "interpolate":
        if grid is None or train_grid is None:
            raise ValueError("positions='interpolate' needs the token grid and the training grid")
        scale = tuple(float(min(1.0, a / b)) for a, b in zip(train_grid, grid))
    if n_image <= n_train or (correction == "none" and scale == (1.0, 1.0)):
        return None
    return Correction(correction, sharpening(n_image, n_train, n_text), math.log(n_image / n_train), float(power),
                      scale)


__all__ = ["CORRECTIONS", "POSITIONS", "Correction", "attention_control", "sharpening"]
