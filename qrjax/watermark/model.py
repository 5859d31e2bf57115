"""HiDDeN-style watermark encoder and extractor (Flax linen, NHWC, pure-functional init/apply).

Images enter both networks as float32 in [-1, 1]. The encoder returns a residual in [-1, 1] (tanh); the caller scales
it by the strength, so the mark's peak amplitude, and with it a floor on PSNR, is a knob rather than a training outcome.
The extractor is fully convolutional with global average pooling, so it reads a 16-pixel tile and a 1024-pixel image
with the same weights. BatchNorm statistics live in the `batch_stats` collection and are threaded explicitly.

Three additions over HiDDeN, all off in the `paper` preset, on in `cpu`:
* a high-pass prefilter in the extractor (the image's smooth content is thousands of times the mark's energy);
* a learned periodic carrier in the encoder: one p x p pattern per bit and channel, modulated by the +-1 bits (a
  message path linear in the bits, beside HiDDeN's broadcast);
* periodic demodulation in the extractor: global average pooling of the features times a learned p x p pattern per
  bit, in phase with the carrier when the tile is cut on the embedding grid (QRMark's random-grid placement).
Why: a plain GAP extractor cannot tell a zero-mean texture from its negative, so it must discover odd local statistics
or use the zero-padded tile border as a phase reference; the first `cpu` model (16-pixel tiles, HiDDeN pooling, 34 min
of training) reached 0.80 bit accuracy and got worse the more pixels it read (0.69 at 64 pixels). With the carrier and
demodulation the phase reference is explicit and every extra period read averages the host image down: in a
1,500-step probe on 64-pixel tiles, held-out bit accuracy reached 0.89 (the rank-16 carrier tried first: 0.75 at step
400, against 0.87). The price: crops and flips that move the grid's phase are not survived (see the robustness table).
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

# Stable Signature's BatchNorm (PyTorch eps 1e-3, momentum 0.01) and exact-erf GELU.
_BatchNorm = partial(nn.BatchNorm, epsilon=1e-3, momentum=0.99)


def box_blur3(x):
    """Per-channel 3x3 mean with zero padding: f32[B, H, W, C] -> same shape."""
    c = x.shape[-1]
    k = jnp.full((3, 3, 1, c), 1.0 / 9.0, x.dtype)
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)


class ConvBlock(nn.Module):
    """Conv3x3 -> BatchNorm -> GELU (exact)."""

    features: int

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(x)
        x = _BatchNorm(use_running_average=not train)(x)
        return nn.gelu(x, approximate=False)


class Encoder(nn.Module):
    """images: f32[B, H, W, 3] in [-1, 1], bits: {0,1}[B, L] -> residual f32[B, H, W, 3] in [-1, 1].

    HiDDeN broadcasts the +-1 message over every pixel; after a convolution that is a per-sample constant, which
    only the nonlinearity can turn into texture, and training is slow. With carrier_period > 0 the message also
    modulates a learned periodic texture bank, one p x p pattern per bit and channel (tiled from the image origin:
    with tiles a multiple of p the texture runs on seamlessly across the tile grid), a message path that is linear
    in the bits and of full rank.
    """

    channels: int
    blocks: int
    carrier_period: int = 0

    @nn.compact
    def __call__(self, images, bits, train: bool = False):
        x = images
        for _ in range(self.blocks):
            x = ConvBlock(self.channels)(x, train)
        b, h, w, _ = images.shape
        pm = 2.0 * bits.astype(images.dtype) - 1.0
        parts = [jnp.broadcast_to(pm[:, None, None, :], (b, h, w, bits.shape[-1]))]
        if self.carrier_period:
            p, n_bits = self.carrier_period, bits.shape[-1]
            carrier = self.param("carrier", nn.initializers.normal(1.0 / n_bits ** 0.5),
                                 (p, p, n_bits, self.channels))
            period = jnp.einsum("bl,ijlc->bijc", pm, carrier)  # one learned pattern per bit and channel
            modulated = jnp.tile(period, (1, -(-h // p), -(-w // p), 1))[:, :h, :w]
            parts.append(modulated)
        x = ConvBlock(self.channels)(jnp.concatenate(parts + [x, images], axis=-1), train)
        out = nn.Conv(3, (1, 1))(x)
        if self.carrier_period:  # and a direct, linear path from the modulated texture to the residual
            out = out + nn.Conv(3, (1, 1), use_bias=False)(modulated)
        return jnp.tanh(out)


class Extractor(nn.Module):
    """images: f32[B, H, W, 3] in [-1, 1] (any H, W) -> logits f32[B, L]; bit = logit > 0."""

    channels: int
    blocks: int
    bits: int
    highpass: bool = False
    period: int = 0

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images
        if self.highpass:  # remove the image's smooth content, which dwarfs a faint mark (SRM-style prefilter)
            x = x - box_blur3(x)
        for _ in range(self.blocks):  # HiDDeN depth: 3->C, then depth-1 blocks C->C
            x = ConvBlock(self.channels)(x, train)
        if not self.period:  # HiDDeN: a last block to `bits` channels, global average pooling, linear head
            x = ConvBlock(self.bits)(x, train)
            return nn.Dense(self.bits)(jnp.mean(x, axis=(1, 2)))
        p = self.period  # periodic demodulation: a learned period-p pattern per bit weights the pooled features
        demod = self.param("demod", nn.initializers.normal(1.0 / (p * (self.channels ** 0.5))),
                           (p, p, x.shape[-1], self.bits))
        return nn.Dense(self.bits)(fold_mean(x, p, demod))


def fold_mean(x, p: int, pattern):
    """mean over (h, w) of sum_c x[b, h, w, c] * pattern[h % p, w % p, c, k]: f32[B, H, W, C] -> f32[B, K].

    The pattern is tiled from the input's origin, so for a tile cut on the embedding grid it is in phase with the
    encoder's carrier. Any H, W: the input is zero-padded to a multiple of p, folded into one period and summed."""
    b, h, w, c = x.shape
    hp, wp = -(-h // p) * p, -(-w // p) * p
    x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    folded = x.reshape(b, hp // p, p, wp // p, p, c).sum(axis=(1, 3))
    return jnp.einsum("bijc,ijck->bk", folded, pattern) / (h * w)


def to_model_range(images_u8_or_unit):
    """uint8 [0, 255] or float [0, 1] images -> float32 [-1, 1]."""
    x = jnp.asarray(images_u8_or_unit)
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32) * 2.0 - 1.0


def init_variables(config, key: jax.Array):
    """{'encoder': vars, 'extractor': vars} for a WatermarkConfig; each vars has 'params' and 'batch_stats'."""
    k_enc, k_ext = jax.random.split(key)
    img = jnp.zeros((1, config.read_size, config.read_size, 3), jnp.float32)
    bits = jnp.zeros((1, config.bits), jnp.int32)
    return {
        "encoder": encoder_module(config).init(k_enc, img, bits, train=False),
        "extractor": extractor_module(config).init(k_ext, img, train=False),
    }


def encoder_module(config) -> Encoder:
    return Encoder(channels=config.channels, blocks=config.encoder_blocks, carrier_period=config.carrier_period)


def extractor_module(config) -> Extractor:
    return Extractor(channels=config.channels, blocks=config.extractor_blocks, bits=config.bits,
                     highpass=config.extractor_highpass, period=config.extractor_period)
