"""Watermark configurations: frozen dataclasses with named presets (`paper`, `cpu`, `tiny`) and `--set` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from qrjax.config import from_preset

ATTACKS = ("identity", "flip", "crop", "resized_crop", "blur", "color", "noise", "jpeg", "real_jpeg", "jitter")


@dataclass(frozen=True)
class WatermarkConfig:
    name: str = "cpu"
    # Networks.
    bits: int = 48
    channels: int = 16
    encoder_blocks: int = 3
    extractor_blocks: int = 4  # HiDDeN depth: conv blocks before the final block to `bits` channels
    extractor_highpass: bool = True
    carrier_period: int = 16  # 0: plain HiDDeN message broadcast (the paper preset)
    extractor_period: int = 0  # 0: HiDDeN pooling; p: periodic demodulation in phase with the tile grid
    carrier_band: int = 0  # > 0: carrier and demodulation in harmonics |k|, |l| <= band of the period (JPEG keeps them)
    luma: bool = False  # embed and read the luma plane only (JPEG subsamples and coarsely quantises chroma)
    highpass_size: int = 3  # box side of the extractor's prefilter (the period: box nulls on every carrier harmonic)
    # Geometry: images are brought to working_size, cut into tile x tile cells; the extractor reads one tile.
    working_size: int = 256
    tile: int = 64
    placement: str = "random_grid"  # fixed | random_grid | random
    full_image: bool = False  # the sequential baseline: train and read whole working-size images
    train_tile: int = 16  # tile side the networks are trained on (fully convolutional: they read `tile` at test time)
    # Embedding: residual = strength * tanh(...), in [0, 1] pixel units, so PSNR >= -20 log10(strength); with a
    # band-limited carrier the residual has RMS strength per tile instead, so PSNR = -20 log10(strength) (+ rounding).
    strength: float = 3.0 / 255.0
    refine_steps: int = 0  # embed-time Adam steps on the residual against the extractor (embed.refine_residual)
    # Training curriculum: the mark starts strength_start_scale times stronger and shrinks linearly to `strength`
    # over strength_warmup_steps, so the extractor finds it before it becomes faint.
    strength_start_scale: float = 4.0
    strength_warmup_steps: int = 5000
    # Training distortions, one drawn per batch, with their weights.
    attacks: tuple[str, ...] = ATTACKS
    attack_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 0.0, 0.0)
    crop_fractions: tuple[float, ...] = (0.3, 0.7)  # kept area fractions (QRMark: RandomCrop to floor(s*sqrt(f)))
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    blur_kernel: int = 9
    color_range: float = 0.5  # brightness and contrast factors drawn from [1 - r, 1 + r]
    noise_std: float = 0.02
    jpeg_qualities: tuple[int, ...] = (50, 80)  # the differentiable approximation's qualities
    real_jpeg_qualities: tuple[int, int] = (50, 95)  # Pillow's codec, quality uniform in [lo, hi], straight-through
    jitter: tuple[float, float, float] = (1.0, 0.02, 0.5)  # misregistration: px shift, scale, degrees
    attack_warmup_steps: int = 1500  # identity only at first: the extractor must find the mark before it is attacked
    # Losses.
    lambda_bits: float = 1.0
    lambda_image: float = 0.0
    lambda_ecc: float = 0.0
    ecc_code: str = "qrmark-bch"
    # Whitening (Stable Signature): fit W, b on the extractor's logits of clean training images so clean bits become
    # fair, uncorrelated coins, freeze the extractor and train the encoder against the whitened extractor.
    whiten: bool = False
    whiten_samples: int = 4096
    # Optimisation.
    optimizer: str = "adamw"  # adamw | lamb
    learning_rate: float = 2e-3
    end_learning_rate: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    batch_size: int = 64
    steps: int = 12000
    seed: int = 0
    # Bookkeeping.
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_every: int = 1000
    eval_images: int = 64

    # Fields added after models were saved, and the values that reproduce what older model files meant (JSON form).
    ADDED_FIELDS: ClassVar[dict] = {"carrier_band": 0, "luma": False, "highpass_size": 3,
                                    "real_jpeg_qualities": [50, 95], "jitter": [1.0, 0.02, 0.5]}

    @property
    def read_size(self) -> int:
        """Side of what the networks see in training: one train_tile, or the whole image for the baseline."""
        return self.working_size if self.full_image else self.train_tile

    def replace(self, **changes) -> "WatermarkConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, WatermarkConfig] = {
    # QRMark's extractor: 64 channels, encoder 4 blocks, extractor 8 blocks, 48 bits, 64-pixel tiles of 256-pixel
    # images, LAMB, 400 epochs of COCO at batch 16/GPU.
    "paper": WatermarkConfig(name="paper", channels=64, encoder_blocks=4, extractor_blocks=8, carrier_period=0,
                             extractor_highpass=False, train_tile=64,
                             optimizer="lamb",
                             learning_rate=2.5e-3, batch_size=64, steps=100_000, warmup_steps=2000,
                             checkpoint_every=2000, eval_every=2000, log_every=100, eval_images=256),
    # A 16-px periodic luma carrier restricted to harmonics |k|, |l| <= 3 (where JPEG keeps it and a 0.5x downscale
    # does not alias it), one basis sinusoid per bit at init, scaled by a per-pixel gain the encoder chooses;
    # periodic demodulation in the same band after a 16-px box high-pass (whose nulls fall on every harmonic),
    # in phase on the 64-pixel tile grid, or after the detector's synchronisation search. Trained against real
    # JPEG (straight-through, 40% of batches) and small misregistrations (what synchronisation leaves).
    "cpu": WatermarkConfig(name="cpu", channels=16, encoder_blocks=2, extractor_blocks=2, carrier_period=16,
                           extractor_period=16, carrier_band=3, luma=True, highpass_size=16, tile=64, train_tile=64,
                           batch_size=32, steps=2000,
                           attacks=("identity", "blur", "color", "noise", "jpeg", "real_jpeg", "jitter"),
                           attack_weights=(1.0, 1.0, 1.0, 0.5, 1.0, 4.0, 1.5), blur_sigma=(0.5, 1.2),
                           attack_warmup_steps=100, strength_warmup_steps=400, strength_start_scale=2.0,
                           learning_rate=1e-3, warmup_steps=50, log_every=50, checkpoint_every=250,
                           eval_every=250, refine_steps=10),
    "tiny": WatermarkConfig(name="tiny", bits=48, channels=8, encoder_blocks=1, extractor_blocks=1, working_size=32,
                            tile=16, train_tile=16, carrier_period=8, extractor_period=8, carrier_band=2, luma=True,
                            highpass_size=8, batch_size=8, steps=4, warmup_steps=1, attack_warmup_steps=0,
                            strength_warmup_steps=0, blur_kernel=5, log_every=1,
                            checkpoint_every=2, eval_every=2, eval_images=8),
}


def get_config(preset: str = "cpu", overrides: list[str] | tuple[str, ...] | dict | None = None) -> WatermarkConfig:
    """A preset with `key=value` overrides (the CLI's --set); values are parsed to the field's type."""
    return from_preset(PRESETS, preset, overrides, "watermark")


__all__ = ["ATTACKS", "PRESETS", "WatermarkConfig", "get_config"]
