"""HiDDeN-style watermark encoder and extractor (Flax linen, NHWC, pure-functional init/apply).

Images enter both networks as float32 in [-1, 1]. The encoder returns a residual in [-1, 1] (tanh); the caller scales
it by the strength, so the mark's peak amplitude, and with it a floor on PSNR, is a knob rather than a training outcome.
The extractor is fully convolutional with global average pooling, so it reads a 16-pixel tile and a 1024-pixel image
with the same weights. BatchNorm statistics live in the `batch_stats` collection and are threaded explicitly.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

# Stable Signature's BatchNorm (PyTorch eps 1e-3, momentum 0.01) and exact-erf GELU.
_BatchNorm = partial(nn.BatchNorm, epsilon=1e-3, momentum=0.99)


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
    modulates a learned periodic texture bank (period p, tiled from the image origin: with tiles a multiple of p
    the texture runs on seamlessly across the tile grid), a message path that is linear in the bits.
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
            p = self.carrier_period
            carrier = self.param("carrier", nn.initializers.normal(1.0), (p, p, self.channels))
            texture = jnp.tile(carrier, (-(-h // p), -(-w // p), 1))[:h, :w]
            parts.append(texture[None] * nn.Dense(self.channels)(pm)[:, None, None, :])
        x = ConvBlock(self.channels)(jnp.concatenate(parts + [x, images], axis=-1), train)
        return jnp.tanh(nn.Conv(3, (1, 1))(x))


class Extractor(nn.Module):
    """images: f32[B, H, W, 3] in [-1, 1] (any H, W) -> logits f32[B, L]; bit = logit > 0."""

    channels: int
    blocks: int
    bits: int
    highpass: bool = False

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images
        if self.highpass:  # remove the image's smooth content, which dwarfs a faint mark (SRM-style prefilter)
            k = jnp.full((3, 3, 1, 1), 1.0 / 9.0, x.dtype)
            smooth = jax.lax.conv_general_dilated(x[..., :, None].transpose(0, 3, 1, 2, 4).reshape(-1, *x.shape[1:3], 1),
                                                  k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = x - smooth.reshape(x.shape[0], 3, *x.shape[1:3]).transpose(0, 2, 3, 1)
        for _ in range(self.blocks):  # HiDDeN depth: 3->C, then depth-1 blocks C->C
            x = ConvBlock(self.channels)(x, train)
        x = ConvBlock(self.bits)(x, train)
        return nn.Dense(self.bits)(jnp.mean(x, axis=(1, 2)))


def to_model_range(images_u8_or_unit):
    """uint8 [0, 255] or float [0, 1] images -> float32 [-1, 1]."""
    x = jnp.asarray(images_u8_or_unit)
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32) * 2.0 - 1.0


def init_variables(config, key: jax.Array):
    """{'encoder': vars, 'extractor': vars} for a WatermarkConfig; each vars has 'params' and 'batch_stats'."""
    k_enc, k_ext = jax.random.split(key)
    t = config.tile if not config.full_image else config.working_size
    img = jnp.zeros((1, t, t, 3), jnp.float32)
    bits = jnp.zeros((1, config.bits), jnp.int32)
    return {
        "encoder": encoder_module(config).init(k_enc, img, bits, train=False),
        "extractor": extractor_module(config).init(k_ext, img, train=False),
    }


def encoder_module(config) -> Encoder:
    return Encoder(channels=config.channels, blocks=config.encoder_blocks, carrier_period=config.carrier_period)


def extractor_module(config) -> Extractor:
    return Extractor(channels=config.channels, blocks=config.extractor_blocks, bits=config.bits,
                     highpass=config.extractor_highpass)
