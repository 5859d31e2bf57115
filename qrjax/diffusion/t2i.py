"""Direct text-to-image generation at any size with the MMDiT: the canvas denoised whole from noise, with TIDE's
attention corrections above the training resolution (qrjax.diffusion.tide) and SDiT's region-adaptive computation
(qrjax.diffusion.sdit). SuperGen's tiled pipeline reads prompts too (qrjax.diffusion.supergen.generate(prompt=...)).

    from qrjax.diffusion import load_pretrained, generate_image, TextToImageConfig
    model = load_pretrained("t2i-cpu")
    image, stats = generate_image(model, TextToImageConfig(correction="tide", sdit=True),
                                  "a photo of two red circles on the left.", scale=4)

Every call is Euler over the flow-matching schedule with classifier-free guidance against the empty caption. Above the
training size the RoPE positions are interpolated into the training grid by default (`positions`; see tide.py). Without
SDiT the whole loop is one compiled program; with SDiT each step is one program (full, or partial at one of
`sdit_buckets` token counts) plus the host's planning (Quickshift, region complexity), whose time is counted.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from qrjax.diffusion import sdit, tide
from qrjax.diffusion.config import TextToImageConfig
from qrjax.diffusion.model import DiffusionModel
from qrjax.diffusion.sampler import sample, schedule
from qrjax.diffusion.supergen import canvas_shape, to_uint8


@dataclasses.dataclass
class T2IStats:
    seconds: float = 0.0  # wall time of the generation without compilation (SDiT's host planning included)
    compile_seconds: float = 0.0
    plan_seconds: float = 0.0  # SDiT: segmentation and scheduling on the host
    steps: int = 0
    canvas: tuple = ()  # latent (h, w, C)
    image_tokens: int = 0  # N per model call
    train_tokens: int = 0  # N_train
    correction: str = "none"
    sdit: bool = False
    tokens_computed: int = 0  # image tokens the model computed, summed over steps (per image; guidance doubles it
    # for both halves alike)
    tokens_executed: int = 0  # the same with the padding of SDiT's buckets
    full_tokens: int = 0  # steps x N: what full computation computes
    tokens_per_step: list = dataclasses.field(default_factory=list)
    regions_per_step: list = dataclasses.field(default_factory=list)

    @property
    def token_ratio(self) -> float:
        """Full computation's tokens over the tokens computed here (>= 1)."""
        return self.full_tokens / max(1, self.tokens_computed)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["canvas"], d["token_ratio"] = list(self.canvas), self.token_ratio
        return d


def generate_image(model: DiffusionModel, cfg: TextToImageConfig, prompt: str, *, scale: int | tuple[int, int] = 1,
                   size: tuple[int, int] | None = None, key: jax.Array | None = None, progress: bool = True,
                   return_latent: bool = False):
    """(uint8[H, W, 3] image, T2IStats) [, latent f32[h, w, C]] for one prompt. scale: per-side factor over the
    training size (int or (rows, cols)), or size: (H, W) in pixels (multiples of autoencoder factor x patch)."""
    mc = model.config
    if not mc.text:
        raise ValueError(f"model {mc.name!r} is class-conditional; text-to-image needs a text model (t2i-cpu)")
    if cfg.steps < 1:
        raise ValueError(f"steps={cfg.steps}: must be >= 1")
    h, w = canvas_shape(model, size, scale)
    if h % mc.patch or w % mc.patch:
        raise ValueError(f"canvas {h}x{w} latent pixels is not a whole number of {mc.patch}-pixel patches")
    n = (h // mc.patch) * (w // mc.patch)
    side = mc.latent_size // mc.patch
    control = tide.attention_control(cfg.correction, n, mc.image_tokens, mc.text_length, cfg.temperature_power,
                                     cfg.positions, (h // mc.patch, w // mc.patch), (side, side))
    cond = model.text_cond([prompt])
    key = jax.random.key(0) if key is None else key
    shape = (h, w, mc.channels)
    guidance = float(cfg.guidance)
    stats = T2IStats(steps=cfg.steps, canvas=shape, image_tokens=n, train_tokens=mc.image_tokens,
                     correction=cfg.correction, sdit=cfg.sdit, full_tokens=n * cfg.steps)
    if not cfg.sdit:
        progs = sdit.programs("sample", mc, shape, guidance, control, cfg.steps)
        compiled_before = progs.compile_seconds
        args = (model.params, key, cond)
        fn = progs.get("sample", functools.partial(sample, mc, shape=shape, steps=cfg.steps, guidance=guidance,
                                                   control=control), args)
        start = time.perf_counter()
        latent = jax.block_until_ready(fn(*args))[0]
        stats.seconds = time.perf_counter() - start
        stats.compile_seconds = progs.compile_seconds - compiled_before
        stats.tokens_computed = stats.tokens_executed = stats.full_tokens
        stats.tokens_per_step = [n] * cfg.steps
    else:
        x = jax.random.normal(key, (1, *shape), jnp.float32)
        start = time.perf_counter()
        x, counters = sdit.denoise(mc, model.params, cfg, cond, x, schedule(cfg.steps, mc.time_shift),
                                   guidance=guidance, control=control, progress=progress)
        stats.compile_seconds = counters.compile_seconds
        stats.seconds = time.perf_counter() - start - counters.compile_seconds
        for f in ("tokens_computed", "tokens_executed", "plan_seconds", "tokens_per_step", "regions_per_step"):
            setattr(stats, f, getattr(counters, f))
        latent = x[0]
    image = to_uint8(model, latent[None])[0]
    return (image, stats, latent) if return_latent else (image, stats)


__all__ = ["T2IStats", "generate_image"]
