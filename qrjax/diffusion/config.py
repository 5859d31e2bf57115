"""Diffusion configurations: the DiT, its flow-matching training, and SuperGen's tiled generation, as frozen
dataclasses with named presets (`tiny`, `cpu`, `paper`) and `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from qrjax.config import from_preset


@dataclass(frozen=True)
class DiTConfig:
    name: str = "cpu"
    # Latent space: a fixed linear autoencoder (2x2 pixel-unshuffle + PCA to `latent_channels`, fitted on the training
    # images), or "pixel" (the model works on RGB directly).
    autoencoder: str = "pca"  # pca | pixel
    ae_factor: int = 2
    latent_channels: int = 6
    image_size: int = 32  # native resolution in pixels: what the model is trained on and what one tile is
    frames: int = 1  # > 1: video latents [F, H, W, C], one token grid over frames x height x width
    # Transformer.
    patch: int = 2
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: unconditional; else classes 0..n-1 plus a null class n for guidance
    # Text conditioning (text_model set): an MMDiT whose image tokens and the frozen CLIP text tower's caption tokens
    # share one joint attention (separate weights per stream, as in SD3); captions dropped to "" for guidance.
    text_model: str = ""  # "": class-conditional DiT; else a CLIP model (a shipped name or a model file's stem)
    text_width: int = 96  # the CLIP text tower's width (its per-token states)
    text_length: int = 16  # caption tokens (the CLIP context length)
    text_embed: int = 64  # the CLIP pooled feature (added to the timestep conditioning)
    data: str = "photos"  # photos (crops of the bundled photographs, one class each) | scenes (CLIP's captioned
    # synthetic scenes)
    rope_theta: float = 100.0
    attention: str = "auto"  # auto (Pallas flash kernel on GPU, XLA elsewhere) | kernel | xla
    # Flow matching: x_t = (1 - t) x0 + t noise, the model predicts v = noise - x0.
    time_shift: float = 1.0  # SD3's shift of the sampling schedule toward high noise (1: uniform)
    label_dropout: float = 0.1
    # Training.
    batch_size: int = 64
    steps: int = 6000
    learning_rate: float = 5e-4
    end_learning_rate: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    crop_area: tuple[float, float] = (0.05, 1.0)
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    eval_every: int = 1000
    eval_samples: int = 256

    @property
    def latent_size(self) -> int:
        return self.image_size // self.ae_factor if self.autoencoder == "pca" else self.image_size

    @property
    def channels(self) -> int:
        return self.latent_channels if self.autoencoder == "pca" else 3

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def text(self) -> bool:
        return bool(self.text_model)

    @property
    def image_tokens(self) -> int:
        """Image tokens at the training resolution (N_train of TIDE's corrections)."""
        return (self.latent_size // self.patch) ** 2

    def replace(self, **changes) -> "DiTConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class SuperGenConfig:
    """Stage 1 sketches at native size, stage 2 refines the upsampled canvas in native-size tiles."""

    steps: int = 20  # denoising steps of the full schedule (SuperGen: 50)
    sampler: str = "euler"  # euler | heun
    guidance: float = 1.0  # classifier-free guidance scale (1: the conditional prediction alone)
    restart_step: int = 2  # stage 2 starts at this index of the schedule (SuperGen: 5 of 50)
    upsample: str = "pixel"  # pixel (decode, bicubic, encode: SuperGen's choice) | latent (bicubic on the latent)
    # Stage 2 tiling.
    tiling: str = "shifted"  # shifted (torus tiles, grid moves every step) | blended (overlap + average) | none
    shift_divisions: int = 16  # the grid moves by tile / shift_divisions per axis per step (SuperGen: 16; 0: fixed)
    blend_overlap: float = 0.5  # blended: overlap between neighbouring tiles as a fraction of the tile
    # Region-aware cache.
    cache_threshold: float = 0.0  # 0: no cache
    warmup_steps: int = 3  # first stage-2 steps always computed (at least 2: k needs two; SuperGen: ret_steps 5 of 50)
    region_alpha: float = 0.5  # threshold multiplier 1 + a for the most variable tile, 1 + a/2 for the second
    region_interval: int = 5  # steps between refreshes of the per-region variability ranking
    max_batch: int = 1  # tiles per model call: 1 keeps memory at one tile's activations and results bit-identical
    # on any device count; larger batches are faster (about 10% on CPU) and can move results by an ulp

    def replace(self, **changes) -> "SuperGenConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TextToImageConfig:
    """Direct text-to-image generation at any size (the canvas denoised whole from noise), with TIDE's attention
    corrections above the training resolution and SDiT's region-adaptive computation."""

    steps: int = 20
    guidance: float = 4.0  # classifier-free guidance against the empty caption
    correction: str = "none"  # none | fixed | tide | anchor | temperature (qrjax.diffusion.tide)
    temperature_power: float = 1.0  # tide: sharpening 1 + (lambda - 1) t^power over the flow time t
    positions: str = "interpolate"  # interpolate (RoPE positions scaled into the training grid) | extend (run on)
    # SDiT (qrjax.diffusion.sdit): Quickshift regions of the predicted image, complex ones computed every step.
    sdit: bool = False
    # Defaults chosen at 4x the training side on three prompts (seed 5 of qrjax.diffusion.evaluate.prompt_set, not the
    # experiment's): the fewest tokens that kept PSNR above 33 dB against full computation.
    sdit_warmup: int = 3  # first steps computed in full (the layout forms; every token's change gets measured)
    sdit_final: int = 1  # last steps computed in full
    sdit_active: float = 0.1  # share of the image tokens, most complex regions first, updated every step
    sdit_period: int = 5  # every other region is refreshed at least every this many steps
    sdit_boundary: int = 1  # tokens of a cached region next to a computed one also computed (boundary refinement)
    sdit_segment_every: int = 2  # steps between two Quickshift segmentations
    quickshift_ratio: float = 0.5  # Quickshift's colour-space balance (skimage.segmentation.quickshift)
    quickshift_kernel: float = 2.0
    quickshift_max_dist: float = 6.0
    sdit_buckets: int = 16  # computed-token counts are padded to a multiple of N / buckets (one program per size)t)

    def replace(self, **changes) -> "TextToImageConfig":
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, DiTConfig] = {
    # DiT-S/2-like at 256 px in a 32x32x4 latent: what a GPU run of SuperGen's stage 2 would use.
    "paper": DiTConfig(name="paper", image_size=256, ae_factor=8, latent_channels=4, dim=384, depth=12, heads=6,
                       batch_size=256, steps=400_000, learning_rate=1e-4, warmup_steps=0, checkpoint_every=10_000,
                       eval_every=10_000, num_classes=1000),
    # Trained on this 2-core machine in about an hour: 32-px crops of the bundled photographs, one class per photograph.
    "cpu": DiTConfig(name="cpu", num_classes=12),
    # Text-to-image on this machine: CLIP's captioned synthetic scenes at 32 px, conditioned on the shipped CLIP.
    "t2i-cpu": DiTConfig(name="t2i-cpu", text_model="cpu", data="scenes", steps=4000, warmup_steps=200,
                         label_dropout=0.1, eval_samples=128),
    "t2i-tiny": DiTConfig(name="t2i-tiny", image_size=16, dim=32, depth=2, heads=2, text_model="cpu", data="scenes",
                          batch_size=8, steps=4, warmup_steps=1, log_every=1, checkpoint_every=2, eval_every=2,
                          eval_samples=8),
    "tiny": DiTConfig(name="tiny", image_size=16, dim=32, depth=2, heads=2, num_classes=12, batch_size=8, steps=4,
                      warmup_steps=1, log_every=1, checkpoint_every=2, eval_every=2, eval_samples=8),
}


def get_config(preset: str = "cpu", overrides: list[str] | tuple[str, ...] | dict | None = None) -> DiTConfig:
    return from_preset(PRESETS, preset, overrides, "diffusion")


def get_t2i_config(overrides: list[str] | tuple[str, ...] | dict | None = None) -> TextToImageConfig:
    return from_preset({"default": TextToImageConfig()}, "default", overrides, "text-to-image")


def get_supergen_config(overrides: list[str] | tuple[str, ...] | dict | None = None) -> SuperGenConfig:
    return from_preset({"default": SuperGenConfig()}, "default", overrides, "supergen")


__all__ = ["PRESETS", "DiTConfig", "SuperGenConfig", "TextToImageConfig", "get_config", "get_supergen_config",
           "get_t2i_config"]
