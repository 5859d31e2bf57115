"""Direct text-to-image generation at any size with the MMDiT: the canvas denoised whole from noise, with TIDE's
attention corrections above the training resolution (qrjax.diffusion.tide) and SDiT's region-adaptive computation
(qrjax.diffusion.sdit). SuperGen's tiled pipeline reads prompts too (qrjax.diffusion.supergen.generate(prompt=...)).

    from qrjax.diffusion import load_pretrained, generate_image, TextToImageConfig
    model = load_pretrained("t2i-cpu")
    image, stats = generate_image(model, TextToImageConfig(correction="tide", sdit=True),
                                  "a photo of two red circles on the left.", scale=4)

Every call is Euler over the flow-matching schedule with classifier-free guidance against the empty caption. Without
SDiT the whole loop is one compiled program; with SDiT each step is one program (full, or partial at one of
`sdit_buckets` token counts) plus the host's planning (Quickshift, region complexity), whose time is counted.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from qrjax.diffusion import sdit, tide
from qrjax.diffusion.config import DiTConfig, TextToImageConfig
from qrjax.diffusion.model import MMDiT, DiffusionModel, TextCond, patchify, unpatchify
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


def _halves(cond: TextCond, guidance: float) -> tuple[jax.Array, jax.Array]:
    """(states, pooled) of the model's batch: the prompt, then the empty caption when guided."""
    if guidance == 1.0:
        return cond.states, cond.pooled
    return (jnp.concatenate([cond.states, jnp.broadcast_to(cond.null_states, cond.states.shape)]),
            jnp.concatenate([cond.pooled, jnp.broadcast_to(cond.null_pooled, cond.pooled.shape)]))


def _guide(out: jax.Array, guidance: float) -> jax.Array:
    if guidance == 1.0:
        return out
    b = out.shape[0] // 2
    return out[b:] + guidance * (out[:b] - out[b:])


def _full_step(config: DiTConfig, guidance: float, control, params, cond, x, v_tok, t, t_next):
    """Every token: (x_next, v_tokens [1, N, p*p*C], kv, per-token change |v_new - v_old| [N])."""
    states, pooled = _halves(cond, guidance)
    reps = states.shape[0] // x.shape[0]
    xx = jnp.concatenate([x] * reps)
    tt = jnp.full((xx.shape[0],), t, jnp.float32)
    v, kv = MMDiT(config).apply({"params": params}, xx, tt, states, pooled, None if control is None else control(t),
                                return_kv=True)
    v = _guide(v, guidance)
    new_tok = patchify(v, config.patch)
    change = jnp.mean(jnp.abs(new_tok - v_tok), axis=(0, 2))
    return x + (t_next - t) * v, new_tok, kv, change


def _partial_step(config: DiTConfig, guidance: float, control, params, cond, x, v_tok, kv, idx, t, t_next):
    """The tokens idx (int32[M], entries >= N padding) computed against every token's cached keys and values; the
    rest keep their cached velocity. Returns what _full_step returns (change 0 for tokens not computed)."""
    states, pooled = _halves(cond, guidance)
    reps = states.shape[0] // x.shape[0]
    xx = jnp.concatenate([x] * reps)
    tt = jnp.full((xx.shape[0],), t, jnp.float32)
    out, kv = MMDiT(config).apply({"params": params}, xx, tt, states, pooled,
                                  None if control is None else control(t), kv=kv, idx=idx)
    out = _guide(out, guidance)
    n = v_tok.shape[1]
    old = v_tok[:, jnp.minimum(idx, n - 1)]
    change = jnp.zeros((n,), jnp.float32).at[idx].set(jnp.mean(jnp.abs(out - old), axis=(0, 2)), mode="drop")
    v_tok = v_tok.at[:, idx].set(out, mode="drop")
    v = unpatchify(v_tok, config.patch, x.shape[1:])
    return x + (t_next - t) * v, v_tok, kv, change


class _Programs:
    """AOT-compiled programs of one (model config, canvas, guidance, correction), compile time kept apart."""

    def __init__(self):
        self.compiled: dict = {}
        self.compile_seconds = 0.0

    def get(self, name, fn, args, donate=()):
        if name not in self.compiled:
            start = time.perf_counter()
            self.compiled[name] = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self.compiled[name]


@functools.lru_cache(maxsize=8)
def _programs(config: DiTConfig, canvas: tuple, guidance: float, control, steps: int) -> _Programs:
    del config, canvas, guidance, control, steps  # the cache key
    return _Programs()


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
    control = tide.attention_control(cfg.correction, n, mc.image_tokens, mc.text_length, cfg.temperature_power)
    cond = model.text_cond([prompt])
    key = jax.random.key(0) if key is None else key
    shape = (h, w, mc.channels)
    guidance = float(cfg.guidance)
    stats = T2IStats(steps=cfg.steps, canvas=shape, image_tokens=n, train_tokens=mc.image_tokens,
                     correction=cfg.correction, sdit=cfg.sdit, full_tokens=n * cfg.steps)
    progs = _programs(mc, shape, guidance, control, cfg.steps)
    compile_before = progs.compile_seconds
    if not cfg.sdit:
        args = (model.params, key, cond)
        fn = progs.get("sample", functools.partial(sample, mc, shape=shape, steps=cfg.steps, guidance=guidance,
                                                   control=control), args)
        start = time.perf_counter()
        latent = jax.block_until_ready(fn(*args))[0]
        stats.seconds = time.perf_counter() - start
        stats.tokens_computed = stats.tokens_executed = stats.full_tokens
        stats.tokens_per_step = [n] * cfg.steps
    else:
        latent = _run_sdit(model, cfg, cond, key, shape, control, progs, stats, progress)
    stats.compile_seconds = progs.compile_seconds - compile_before
    image = to_uint8(model, latent[None])[0]
    return (image, stats, latent) if return_latent else (image, stats)


def _run_sdit(model: DiffusionModel, cfg: TextToImageConfig, cond, key, shape, control, progs: _Programs,
              stats: T2IStats, progress: bool):
    mc = model.config
    for name in ("sdit_warmup", "sdit_final", "sdit_period", "sdit_segment_every", "sdit_buckets"):
        if getattr(cfg, name) < (0 if name in ("sdit_warmup", "sdit_final") else 1):
            raise ValueError(f"{name}={getattr(cfg, name)}: out of range")
    if not 0.0 <= cfg.sdit_active <= 1.0:
        raise ValueError(f"sdit_active={cfg.sdit_active}: must be in [0, 1]")
    p = mc.patch
    gh, gw = shape[0] // p, shape[1] // p
    n = gh * gw
    guidance = float(cfg.guidance)
    ts = schedule(cfg.steps, mc.time_shift)
    x = jax.random.normal(key, (1, *shape), jnp.float32)
    v_tok = jnp.zeros((1, n, p * p * shape[2]), jnp.float32)
    full = functools.partial(_full_step, mc, guidance, control)
    part = functools.partial(_partial_step, mc, guidance, control)
    warm = max(1, cfg.sdit_warmup)
    rate = np.zeros((gh, gw))
    last = np.zeros((gh, gw))
    labels = None
    kv = None
    compiled_before = progs.compile_seconds
    start = time.perf_counter()
    for j in tqdm(range(cfg.steps), desc=f"sdit {shape[0]}x{shape[1]}", disable=not progress or None,
                  dynamic_ncols=True, leave=False):
        t, t_next = np.float32(ts[j]), np.float32(ts[j + 1])
        if j < warm or j >= cfg.steps - cfg.sdit_final or kv is None:
            args = (model.params, cond, x, v_tok, t, t_next)
            fn = progs.get("full", full, args)
            x, v_tok, kv, change = fn(*args)
            mask = np.ones((gh, gw), bool)
            count = executed = n
        else:
            t0 = time.perf_counter()
            if labels is None or (j - warm) % cfg.sdit_segment_every == 0:
                x0 = np.asarray(x[0] - t * unpatchify(v_tok, p, shape)[0])
                labels = sdit.segment(x0, p, cfg)
            mask = sdit.plan(labels, rate, last, j, cfg)
            stats.regions_per_step.append(int(labels.max()) + 1)
            count = int(mask.sum())
            executed = sdit.bucket(count, n, cfg.sdit_buckets)
            idx = np.full((executed,), n, np.int32)
            idx[:count] = np.flatnonzero(mask.reshape(-1))
            stats.plan_seconds += time.perf_counter() - t0
            args = (model.params, cond, x, v_tok, kv, idx, t, t_next)
            fn = progs.get(f"partial{executed}", part, args, donate=(3, 4))
            x, v_tok, kv, change = fn(*args)
        # the host's view of complexity: per-token change per step since the token's last computation
        change = np.asarray(change).reshape(gh, gw)
        if j > 0:
            rate = np.where(mask, change / np.maximum(j - last, 1), rate)
        last = np.where(mask, j, last)
        stats.tokens_computed += count
        stats.tokens_executed += executed
        stats.tokens_per_step.append(count)
    x = jax.block_until_ready(x)
    stats.seconds = time.perf_counter() - start - (progs.compile_seconds - compiled_before)
    return x[0]


__all__ = ["T2IStats", "generate_image"]
